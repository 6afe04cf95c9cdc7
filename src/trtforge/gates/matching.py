"""Agreement of candidate instances with reference instances, whatever the similarity measure.

Every instance-level gate (boxes, masks, keypoints, rotated boxes) reduces to the same step
once it has, per image, the similarity matrix between reference and candidate instances (box
IoU, mask IoU, OKS, probabilistic IoU): Ultralytics' validator matching
(`BaseValidator.match_predictions`) and AP (`ap_per_class`), the code behind `yolo val`, so
the figures mean what Ultralytics means by them. Only the similarity differs per task, and it
comes from `ultralytics.utils.metrics` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..errors import require


@dataclass(frozen=True)
class ImagePair:
    """One image: the classes of both sides, the candidate's scores, and similarity[ref, cand]."""

    reference_classes: np.ndarray  # [n] int
    candidate_classes: np.ndarray  # [m] int
    candidate_scores: np.ndarray  # [m] float
    similarity: np.ndarray  # [n, m] in 0..1


def agreement(pairs: list[ImagePair], threshold: float = 0.5, operating_conf: float = 0.0) -> dict:
    """Agreement of the candidates with the reference taken as ground truth, over all images.

    Matching is Ultralytics' validator matching: per image, candidates in descending score
    order each claim the unclaimed reference instance of the same class with the highest
    similarity, if that similarity is >= `threshold`. `matched` counts the candidates that found one.

    - precision = matched / candidate_detections and recall = matched / reference_detections:
      plain counts at the operating point, over the candidates scoring above `operating_conf`
      (verify.conf; the candidates may be decoded lower, for AP: gates.CANDIDATE_CONF). Not
      the max-F1 P and R of `ap_per_class`, which re-choose a confidence threshold on
      interpolated curves: an agreement gate should judge the detections actually produced.
    - map50: `ap_per_class` AP at `threshold`, averaged over the classes present in the
      reference (a reference class the candidate never predicts scores 0; candidates of classes
      absent from the reference lower precision only, as in COCO). It is divided by
      Ultralytics' own ceiling, the AP of a perfect detector (0.995: its 101-point integration
      drops the last half step), so that identical outputs score exactly 1.0, on the same scale
      as the empty cases below and the floors.
    - mean_matched_similarity: over the matched candidates, the similarity to their best
      same-class reference instance (how close the agreeing instances are, e.g. mean mask IoU).

    Edge cases, by convention: both sides empty on every image -> precision = recall = map50
    = 1.0; reference empty but candidate not -> 0, 1.0, 0.0; candidate empty but reference
    not -> 0, 0, 0. Returns a JSON-able dict (floats and ints).
    """
    torch = require("torch", "yolo")
    metrics = require("ultralytics.utils.metrics", "yolo")
    validator = require("ultralytics.engine.validator", "yolo")
    # match_predictions only reads self.iouv: a stand-in spares building a whole validator.
    matcher = SimpleNamespace(iouv=torch.tensor([float(threshold)]))

    tp, conf, best = [np.zeros((0, 1), bool)], [np.zeros(0)], [np.zeros(0)]  # seeds: zero images is valid
    pred_cls, target_cls = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for pair in pairs:
        order = np.argsort(-np.asarray(pair.candidate_scores), kind="stable")  # match_predictions wants this
        classes = np.asarray(pair.candidate_classes, np.int64)[order]
        reference = np.asarray(pair.reference_classes, np.int64)
        similarity = np.asarray(pair.similarity, np.float32).reshape(len(reference), len(classes))[:, order]
        correct = validator.BaseValidator.match_predictions(
            matcher, torch.from_numpy(classes), torch.from_numpy(reference), torch.from_numpy(similarity))
        correct = correct.numpy().reshape(-1, 1)
        same_class = np.where(reference[:, None] == classes[None], similarity, 0.0)
        best.append(same_class.max(0, initial=0.0))
        tp.append(correct)
        conf.append(np.asarray(pair.candidate_scores, np.float64)[order])
        pred_cls.append(classes)
        target_cls.append(reference)
    tp, conf, best = np.concatenate(tp), np.concatenate(conf), np.concatenate(best)
    pred_cls, target_cls = np.concatenate(pred_cls), np.concatenate(target_cls)
    operating = conf > operating_conf
    n_ref, n_cand, matched = len(target_cls), int(operating.sum()), int(tp[operating].sum())

    if n_ref and len(pred_cls):
        ap = metrics.ap_per_class(tp, conf, pred_cls, target_cls)[5]  # [classes in reference, 1]
        ceiling = metrics.compute_ap(np.ones(1), np.ones(1))[0]
        map50 = float(np.minimum(ap[:, 0] / ceiling, 1.0).mean())  # per class first: a perfect score is exactly 1
    else:
        map50 = 1.0 if not n_ref and not n_cand else 0.0
    return {
        "precision": matched / n_cand if n_cand else (0.0 if n_ref else 1.0),
        "recall": matched / n_ref if n_ref else 1.0,
        "map50": map50,
        "mean_matched_similarity": float(best[tp[:, 0] & operating].mean()) if matched else 0.0,
        "reference_detections": n_ref,
        "candidate_detections": n_cand,
        "matched": matched,
    }
