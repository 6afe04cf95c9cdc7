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


@dataclass(frozen=True)
class Matches:
    """Every candidate of every image in one flat list (each image's in descending score order)."""

    correct: np.ndarray  # [m] bool: claimed a reference instance
    scores: np.ndarray  # [m] float64
    classes: np.ndarray  # [m] int64
    reference_classes: np.ndarray  # [n] int64, all images
    best_similarity: np.ndarray  # [m]: to the candidate's best reference instance of its class


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
    - class_agnostic_map50: map50 with every class taken as one, and class_flips: the
      candidates at the operating point that match a reference instance only once classes are
      ignored. Reduced precision often keeps an object's box but flips its class between two
      close classes (measured: INT8 person detectors trading Normal and Fall); these two tell
      that apart from a lost object, which lowers both figures.

    Edge cases, by convention: both sides empty on every image -> precision = recall = map50
    = 1.0; reference empty but candidate not -> 0, 1.0, 0.0; candidate empty but reference
    not -> 0, 0, 0. Returns a JSON-able dict (floats and ints).
    """
    same, anyclass = match(pairs, threshold), match(pairs, threshold, ignore_classes=True)
    operating = same.scores > operating_conf
    n_ref, n_cand, matched = len(same.reference_classes), int(operating.sum()), int(same.correct[operating].sum())
    return {
        "precision": matched / n_cand if n_cand else (0.0 if n_ref else 1.0),
        "recall": matched / n_ref if n_ref else 1.0,
        "map50": map50(same, operating_conf),
        "mean_matched_similarity": float(same.best_similarity[same.correct & operating].mean()) if matched else 0.0,
        "reference_detections": n_ref,
        "candidate_detections": n_cand,
        "matched": matched,
        "class_agnostic_map50": map50(anyclass, operating_conf),
        "class_flips": int((anyclass.correct & ~same.correct)[operating].sum()),
    }


def match(pairs: list[ImagePair], threshold: float, ignore_classes: bool = False) -> Matches:
    """Ultralytics' `BaseValidator.match_predictions` on every image; with `ignore_classes`,
    every instance of both sides is given class 0 first."""
    torch = require("torch", "yolo")
    validator = require("ultralytics.engine.validator", "yolo")
    # match_predictions only reads self.iouv: a stand-in spares building a whole validator.
    matcher = SimpleNamespace(iouv=torch.tensor([float(threshold)]))

    correct, scores, best = [np.zeros(0, bool)], [np.zeros(0)], [np.zeros(0)]  # seeds: zero images is valid
    classes, reference_classes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for pair in pairs:
        order = np.argsort(-np.asarray(pair.candidate_scores), kind="stable")  # match_predictions wants this
        cand = np.asarray(pair.candidate_classes, np.int64)[order]
        ref = np.asarray(pair.reference_classes, np.int64)
        if ignore_classes:
            cand, ref = np.zeros_like(cand), np.zeros_like(ref)
        similarity = np.asarray(pair.similarity, np.float32).reshape(len(ref), len(cand))[:, order]
        claimed = validator.BaseValidator.match_predictions(
            matcher, torch.from_numpy(cand), torch.from_numpy(ref), torch.from_numpy(similarity))
        correct.append(claimed.numpy().reshape(-1))
        best.append(np.where(ref[:, None] == cand[None], similarity, 0.0).max(0, initial=0.0))
        scores.append(np.asarray(pair.candidate_scores, np.float64)[order])
        classes.append(cand)
        reference_classes.append(ref)
    return Matches(*(np.concatenate(parts) for parts in (correct, scores, classes, reference_classes, best)))


def map50(matches: Matches, operating_conf: float) -> float:
    """`ap_per_class` AP over all candidates, per reference class, over Ultralytics' 0.995
    ceiling; the empty cases by `agreement`'s conventions."""
    if not len(matches.reference_classes) or not len(matches.classes):
        return 0.0 if len(matches.reference_classes) or (matches.scores > operating_conf).any() else 1.0
    metrics = require("ultralytics.utils.metrics", "yolo")
    ap = metrics.ap_per_class(matches.correct[:, None], matches.scores, matches.classes,
                              matches.reference_classes)[5]  # [classes in reference, 1]
    ceiling = metrics.compute_ap(np.ones(1), np.ones(1))[0]
    return float(np.minimum(ap[:, 0] / ceiling, 1.0).mean())  # per class first: a perfect score is exactly 1
