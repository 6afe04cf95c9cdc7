"""Task-aware accuracy gate for YOLO detectors: compare detections, not raw tensors.

A reduced-precision engine (FP16, INT8) can drift on raw tensors in ways that do not matter
(a background score moving from 0.001 to 0.003) and be wrong in ways a tensor statistic
hides (one box losing its class). So both outputs are decoded and NMS'd the way Ultralytics
does it, and the variant's detections are scored against the FP32 detections taken as
ground truth: same class, IoU >= 0.5, greedy one-to-one in descending confidence order.

All decoding, IoU, matching and AP come from Ultralytics itself (`non_max_suppression`,
`box_iou`, `BaseValidator.match_predictions`, `ap_per_class`), so the numbers mean what
`yolo val` means by them. torch and ultralytics are imported inside the functions: this
module imports without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from .errors import require


@dataclass(frozen=True)
class Detections:
    """The detections of one image, sorted by descending score when they come from `decode_yolo`."""

    boxes: np.ndarray  # [n, 4] float32, xyxy in input-image pixels
    scores: np.ndarray  # [n] float32
    classes: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.scores)


def decode_yolo(output: np.ndarray, conf: float = 0.25, iou: float = 0.7, max_det: int = 300) -> list[Detections]:
    """Raw Ultralytics detect-head output -> per-image detections after class-aware NMS.

    `output` is [B, 4+nc, N] as exported in Ultralytics export mode: rows 0-3 are box centres
    and sizes (xywh) in input pixels, rows 4.. the class scores, already sigmoid-ed (there is
    no objectness row). This is exactly the input convention of
    `ultralytics.utils.nms.non_max_suppression`, which is called as the predictor calls it
    (best class per box, `conf` strictly exceeded, boxes of different classes never suppress
    each other); the default `iou` 0.7 is the predictor's, not NMS's own 0.45. An FP16 output
    is upcast to float32 first so both sides of a comparison go through the same arithmetic.
    """
    torch = require("torch", "yolo")
    nms = require("ultralytics.utils.nms", "yolo")
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 3 or output.shape[1] < 5:
        raise ValueError(f"expected a raw YOLO output [B, 4+nc, N], got shape {output.shape}")
    kept = nms.non_max_suppression(torch.from_numpy(np.ascontiguousarray(output)), conf_thres=conf,
                                   iou_thres=iou, max_det=max_det)
    return [Detections(boxes=k[:, :4].numpy().astype(np.float32), scores=k[:, 4].numpy().astype(np.float32),
                       classes=k[:, 5].numpy().astype(np.int64)) for k in kept]


def detection_agreement(reference: list[Detections], candidate: list[Detections], iou_threshold: float = 0.5) -> dict:
    """Agreement of `candidate` with `reference` taken as ground truth, over all images.

    Matching is Ultralytics' validator matching: per image, candidates in descending score
    order each claim the unclaimed reference box of the same class with the highest IoU, if
    that IoU is >= `iou_threshold`. `matched` counts the candidates that found one.

    - precision = matched / candidate_detections and recall = matched / reference_detections:
      plain counts at the operating point both sides were decoded at (their NMS `conf`). Not
      the max-F1 P and R of `ap_per_class`, which re-choose a confidence threshold on
      interpolated curves: an agreement gate should judge the detections actually produced.
    - map50: `ap_per_class` AP at `iou_threshold` (0.5 by default), averaged over the classes
      present in the reference (a reference class the candidate never predicts scores 0;
      candidate boxes of classes absent from the reference lower precision only, as in COCO).
      It is divided by Ultralytics' own ceiling, the AP of a perfect detector (0.995: its
      101-point integration drops the last half step), so that identical detections score
      exactly 1.0 on the same scale as the empty cases below and the gate thresholds.

    Edge cases, by convention: both sides empty on every image -> precision = recall = map50
    = 1.0 (nothing detected by either is perfect agreement); reference empty but candidate
    not -> 0, 1.0, 0.0; candidate empty but reference not -> 0, 0, 0.

    Returns a JSON-able dict: precision, recall, map50 (floats), reference_detections,
    candidate_detections, matched (ints). Raises ValueError if the image counts differ.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate images")
    torch = require("torch", "yolo")
    metrics = require("ultralytics.utils.metrics", "yolo")
    validator = require("ultralytics.engine.validator", "yolo")
    # match_predictions only reads self.iouv: a stand-in spares building a whole validator.
    matcher = SimpleNamespace(iouv=torch.tensor([float(iou_threshold)]))

    tp, conf = [np.zeros((0, 1), bool)], [np.zeros(0)]  # seeds: zero images is a valid input
    pred_cls, target_cls = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for ref, cand in zip(reference, candidate):
        order = np.argsort(-np.asarray(cand.scores), kind="stable")  # match_predictions wants this order
        cand_boxes, cand_classes = np.asarray(cand.boxes, np.float32)[order], np.asarray(cand.classes)[order]
        iou = metrics.box_iou(torch.from_numpy(np.asarray(ref.boxes, np.float32).reshape(-1, 4)),
                              torch.from_numpy(cand_boxes.reshape(-1, 4)))
        correct = validator.BaseValidator.match_predictions(
            matcher, torch.from_numpy(cand_classes.astype(np.int64)),
            torch.from_numpy(np.asarray(ref.classes, np.int64)), iou)
        tp.append(correct.numpy().reshape(-1, 1))
        conf.append(np.asarray(cand.scores, np.float64)[order])
        pred_cls.append(cand_classes)
        target_cls.append(np.asarray(ref.classes))
    tp, conf = np.concatenate(tp), np.concatenate(conf)
    pred_cls, target_cls = np.concatenate(pred_cls), np.concatenate(target_cls)
    n_ref, n_cand, matched = len(target_cls), len(pred_cls), int(tp.sum())

    if n_ref and n_cand:
        ap = metrics.ap_per_class(tp, conf, pred_cls, target_cls)[5]  # [classes in reference, 1]
        ceiling = metrics.compute_ap(np.ones(1), np.ones(1))[0]
        map50 = min(1.0, float(ap[:, 0].mean() / ceiling))
    else:
        map50 = 1.0 if not n_ref and not n_cand else 0.0
    return {
        "precision": matched / n_cand if n_cand else (0.0 if n_ref else 1.0),
        "recall": matched / n_ref if n_ref else 1.0,
        "map50": map50,
        "reference_detections": n_ref,
        "candidate_detections": n_cand,
        "matched": matched,
    }
