"""The detection gate: every detector head decoded to Detections, then mAP50 agreement with FP32.

Each verify.head (recipe.VERIFY_HEADS) has a decoder that turns its outputs into per-image
Detections (xyxy input pixels, score, class) the way Ultralytics' predictor does; the variant's
detections are then scored against the FP32 detections (`detection_agreement`: same class,
box IoU >= 0.5, Ultralytics' matching and AP). torch and Ultralytics are imported inside the
functions: this module imports without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import require
from ..stages.nms import OUTPUT_NAMES as NMS_OUTPUTS
from . import (DecodeCutShort, GateResult, GateSetting, LayoutError, Outputs, instance_verdict, single_output,
               stacked)
from .matching import ImagePair, agreement

MAX_DET = 300  # Ultralytics' predictor default


@dataclass(frozen=True)
class Detections:
    """The detections of one image."""

    boxes: np.ndarray  # [n, 4] float32, xyxy in input-image pixels
    scores: np.ndarray  # [n] float32
    classes: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.scores)


def judge(reference: Outputs, candidate: Outputs, setting: GateSetting) -> GateResult:
    """mAP50 of the variant's detections against the reference's."""
    result = detection_agreement(detections(reference, setting), detections(candidate, setting.for_candidate()),
                                 operating_conf=setting.conf)
    return instance_verdict(setting, "mAP50", result, "box_iou")


def distance(reference: Outputs, candidate: Outputs, setting: GateSetting) -> float | None:
    """For the anchor-free head [B, 4+nc, N]: at every anchor where either side scores a class
    above a fifth of verify.conf, the class scores' absolute differences plus the box's L1
    difference over the reference box's larger side, summed; None for other heads.

    The raw outputs' relative error is dominated by box coordinates in pixels at 8,400
    anchors, nearly all background, while what INT8 costs a trained detector is mostly the
    class scores of the few anchors that hold objects (Normal/Fall flips on the people demo).
    Measured there at 640 px with 16 ranking images: 16 of 88 nodes reverted (78% of Conv
    layers INT8) for mAP50 0.992, against 37 (61%) when ranked by the raw outputs."""
    if setting.head != "yolo":
        return None
    name = single_output(reference, LAYOUTS["yolo"])
    relevant = setting.conf / 5
    total = 0.0
    for ref, cand in zip(reference, candidate):
        r, c = np.asarray(ref[name], np.float64), np.asarray(cand[name], np.float64)
        if r.shape != c.shape or r.ndim != 3 or r.shape[1] < 5:
            raise LayoutError(f"expected a raw YOLO output [B, 4+nc, N] on both sides, got {list(r.shape)} "
                              f"and {list(c.shape)}")
        held = (r[:, 4:].max(1) >= relevant) | (c[:, 4:].max(1) >= relevant)  # [B, N]
        scores = np.abs(c[:, 4:] - r[:, 4:]).sum(1)
        boxes = np.abs(c[:, :4] - r[:, :4]).sum(1) / np.maximum(r[:, 2:4].max(1), 1.0)
        total += float((scores + boxes)[held].sum())
    return total


def detection_agreement(reference: list[Detections], candidate: list[Detections], iou_threshold: float = 0.5,
                        operating_conf: float = 0.0) -> dict:
    """`matching.agreement` on box IoU (`ultralytics.utils.metrics.box_iou`); ValueError if the
    image counts differ."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate images")
    torch = require("torch", "yolo")
    metrics = require("ultralytics.utils.metrics", "yolo")
    pairs = [ImagePair(ref.classes, cand.classes, cand.scores,
                       metrics.box_iou(torch.from_numpy(np.asarray(ref.boxes, np.float32).reshape(-1, 4)),
                                       torch.from_numpy(np.asarray(cand.boxes, np.float32).reshape(-1, 4))).numpy())
             for ref, cand in zip(reference, candidate)]
    return agreement(pairs, iou_threshold, operating_conf)


def detections(outputs: Outputs, setting: GateSetting) -> list[Detections]:
    """Per-image detections of a model's outputs, decoded by verify.head."""
    if setting.head == "nms" and NMS_OUTPUTS[0] in outputs[0]:
        return decode_nms({name: stacked(outputs, name) for name in NMS_OUTPUTS}, setting.conf)
    # head nms without the nms outputs: the FP32 reference, which is the export before surgery
    head = "yolo" if setting.head == "nms" else setting.head
    output = stacked(outputs, single_output(outputs, LAYOUTS[head]))
    if head == "rtdetr":
        return decode_rtdetr(output, setting.image_hw, setting.conf)
    return DECODERS[head](output, setting.conf, setting.iou)


def yolo_nms(output: np.ndarray, conf: float, iou: float, nc: int = 0, rotated: bool = False,
             max_det: int = MAX_DET) -> list[np.ndarray]:
    """Ultralytics' `non_max_suppression` on an export-mode head [B, 4+nc+extra, N] as its
    predictors call it (best class per box, `conf` strictly exceeded, classes never suppress
    each other; `iou` 0.7 is the predictor's default, not NMS's own 0.45). Per image an array
    [n, 6+extra]: x1 y1 x2 y2 (xywh when `rotated`), score, class, extra rows (mask
    coefficients, keypoints, angle), sorted by descending score.

    One image per call and no time limit: over a batch, `non_max_suppression` stops after
    `2.0 + max_time_img x batch` seconds and leaves the images it did not reach empty, with
    only a log warning (Ultralytics 8.4 utils/nms.py), so a gate decoding every verification
    image at conf 0.001 in one batch scored by machine load (measured: INT8 mAP50 0.224 under
    load, 0.520 without). An image that still comes back empty while a box scores above
    `conf` raises DecodeCutShort: NMS always keeps the best box."""
    torch = require("torch", "yolo")
    nms = require("ultralytics.utils.nms", "yolo")
    result = []
    for index, image in enumerate(np.ascontiguousarray(output, np.float32)):
        (kept,) = nms.non_max_suppression(torch.from_numpy(image[None]), conf_thres=conf, iou_thres=iou,
                                          max_det=max_det, nc=nc, rotated=rotated, max_time_img=math.inf)
        rows = kept.numpy().astype(np.float32)
        if not len(rows) and image[4:4 + (nc or len(image) - 4)].max(initial=-np.inf) > conf:
            raise DecodeCutShort(f"NMS returned no detection for verification image {index + 1} of {len(output)}, "
                                 f"although boxes score above {conf:g}: decoding was cut short")
        result.append(rows)
    return result


def from_rows(rows: np.ndarray) -> Detections:
    """Detections from [n, 6+] rows x1 y1 x2 y2 score class."""
    return Detections(boxes=rows[:, :4].astype(np.float32), scores=rows[:, 4].astype(np.float32),
                      classes=rows[:, 5].astype(np.int64))


def decode_yolo(output: np.ndarray, conf: float = 0.25, iou: float = 0.7, max_det: int = MAX_DET) -> list[Detections]:
    """Ultralytics detect head [B, 4+nc, N]: xywh input pixels, then sigmoid class scores (no
    objectness row), exactly `non_max_suppression`'s input convention."""
    if output.ndim != 3 or output.shape[1] < 5:
        raise LayoutError(f"expected a raw YOLO output [B, 4+nc, N], got shape {list(output.shape)}")
    return [from_rows(rows) for rows in yolo_nms(output, conf, iou, max_det=max_det)]


def decode_yolov5(output: np.ndarray, conf: float = 0.25, iou: float = 0.7) -> list[Detections]:
    """Anchor-based YOLOv5 [B, N, 5+nc]: xywh pixels, objectness, class scores. YOLOv5's own NMS
    scores a class by objectness x class score (ultralytics/yolov5 utils/general.py
    non_max_suppression: `x[:, 5:] *= x[:, 4:5]  # conf = obj_conf * cls_conf`); its objectness
    prefilter `obj > conf` is implied, as obj x cls <= obj. So that product, laid out as the
    anchor-free head, goes through the same Ultralytics NMS."""
    if output.ndim != 3 or output.shape[2] < 6:
        raise LayoutError(f"expected a YOLOv5 output [B, N, 5+nc], got shape {list(output.shape)}")
    scores = output[..., 5:] * output[..., 4:5]
    return decode_yolo(np.concatenate([output[..., :4], scores], 2).transpose(0, 2, 1), conf, iou)


def decode_end2end(output: np.ndarray, conf: float = 0.25, iou: float | None = None) -> list[Detections]:
    """NMS-free end-to-end head [B, max_det, 6]: x1 y1 x2 y2 pixels, score, class (YOLO26,
    YOLOv10, or an export with embedded NMS). Only a score filter, as Ultralytics'
    `non_max_suppression` does for this layout (that branch has no time limit, unlike
    `yolo_nms`'s); `iou` does not apply."""
    if output.ndim != 3 or output.shape[2] != 6:
        raise LayoutError(f"expected an end-to-end output [B, max_det, 6], got shape {list(output.shape)}")
    torch = require("torch", "yolo")
    nms = require("ultralytics.utils.nms", "yolo")
    kept = nms.non_max_suppression(torch.from_numpy(np.ascontiguousarray(output)), conf_thres=conf,
                                   max_det=output.shape[1], end2end=True)
    return [from_rows(k.numpy()) for k in kept]


def decode_rtdetr(output: np.ndarray, image_hw: tuple[int, int], conf: float = 0.25) -> list[Detections]:
    """RT-DETR decoder output, boxes cx cy w h normalised to the input size, in either layout:
    [B, 300, 6] with score and class (Ultralytics 8.4 selects the top queries in the head:
    RTDETRDecoder.postprocess) or [B, 300, 4+nc] with class scores (earlier exports, whose
    RTDETRPredictor took each query's best class). Both become the end-to-end layout in pixels,
    then the predictor's score filter."""
    if output.ndim != 3 or output.shape[2] < 5:
        raise LayoutError(f"expected an RT-DETR output [B, queries, 4+nc] or [B, queries, 6], "
                          f"got shape {list(output.shape)}")
    ops = require("ultralytics.utils.ops", "yolo")
    torch = require("torch", "yolo")
    if not _scored_queries(output):
        output = np.concatenate([output[..., :4], output[..., 4:].max(2, keepdims=True),
                                 output[..., 4:].argmax(2)[..., None].astype(np.float32)], 2)
    height, width = image_hw
    boxes = ops.xywh2xyxy(torch.from_numpy(np.ascontiguousarray(output[..., :4]))).numpy()
    return decode_end2end(np.concatenate([boxes * np.float32([width, height, width, height]), output[..., 4:6]], 2),
                          conf)


def _scored_queries(output: np.ndarray) -> bool:
    """True for Ultralytics 8.4's [B, q, 6] layout (score, class index): its last column holds
    whole class indices, where the other layout holds sigmoid scores strictly between 0 and 1
    (a 2-class model is the only one whose widths coincide)."""
    return output.shape[2] == 6 and bool(np.all(output[..., 5] == np.round(output[..., 5])))


def decode_nms(outputs: dict[str, np.ndarray], conf: float = 0.25) -> list[Detections]:
    """The four outputs of the `nms` surgery pass (stages/nms.py): per image the first
    num_detections rows, and of those the ones scoring above verify.conf (the same threshold
    as the reference's decoding, whatever `conf` the pass was given)."""
    count, boxes, scores, classes = (outputs[name] for name in NMS_OUTPUTS)
    result = []
    for n, b, s, c in zip(count.reshape(-1).astype(int), boxes, scores, classes):
        keep = s[:n] > conf
        result.append(Detections(b[:n][keep].astype(np.float32), s[:n][keep].astype(np.float32),
                                 c[:n][keep].astype(np.int64)))
    return result


DECODERS = {"yolo": decode_yolo, "yolov5": decode_yolov5, "end2end": decode_end2end}
LAYOUTS = {"yolo": "[B, 4+nc, N]", "yolov5": "[B, N, 5+nc]", "end2end": "[B, max_det, 6]",
           "rtdetr": "[B, queries, 6] or [B, queries, 4+nc]"}
