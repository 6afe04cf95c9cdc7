"""The pose gate: people matched by keypoint similarity (OKS).

The export gives [B, 4+1+K*3, N]: xywh pixels, the person score, then K keypoints (x, y,
visibility score) (COCO: K = 17). Both sides are decoded as Ultralytics' PoseValidator does:
`non_max_suppression` with the keypoint rows as extra rows, then `metrics.kpt_iou` (OKS) with
the reference person's box area x 0.53 as its scale (PoseValidator, after xtcocotools'
cocoeval) and Ultralytics' sigmas (`OKS_SIGMA`, COCO's, for 17 keypoints; equal weights
otherwise, as PoseValidator does), then the shared matching and AP. The figure is OKS mAP50.

A reference keypoint whose visibility score is below 0.5 counts as not labelled, as
Ultralytics' `Keypoints` treats it as not visible ("points with conf < 0.5 (not visible)",
engine/results.py): OKS then ignores it, like an unlabelled COCO keypoint.
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from . import GateResult, GateSetting, LayoutError, Outputs, instance_verdict, single_output, stacked
from .matching import ImagePair, agreement
from .detect import yolo_nms

PERSON_CLASSES = 1  # Ultralytics pose models detect one class, person
KEYPOINT_DIMS = 3  # x, y, visibility score
VISIBLE = 0.5  # ultralytics.engine.results.Keypoints: conf < 0.5 is not visible
AREA_SCALE = 0.53  # PoseValidator._process_batch, from xtcocotools cocoeval


def judge(reference: Outputs, candidate: Outputs, setting: GateSetting) -> GateResult:
    pairs = [ImagePair(ref[:, 5], cand[:, 5], cand[:, 4], keypoint_similarity(ref, cand))
             for ref, cand in zip(people(reference, setting), people(candidate, setting.for_candidate()))]
    return instance_verdict(setting, "OKS mAP50", agreement(pairs, operating_conf=setting.conf), "oks")


def people(outputs: Outputs, setting: GateSetting) -> list[np.ndarray]:
    """Per image [n, 6+K*3] rows: x1 y1 x2 y2, score, class, keypoints."""
    head = stacked(outputs, single_output(outputs, "[B, 4+1+K*3, N]"))
    if head.ndim != 3 or head.shape[1] <= 4 + PERSON_CLASSES or (head.shape[1] - 4 - PERSON_CLASSES) % KEYPOINT_DIMS:
        raise LayoutError(f"expected a pose output [B, 4+1+K*3, N] (one person class, K keypoints x y "
                          f"visibility), got shape {list(head.shape)}")
    return yolo_nms(head, setting.conf, setting.iou, nc=PERSON_CLASSES)


def keypoint_similarity(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """OKS [n, m] between every reference and candidate person, through `metrics.kpt_iou`."""
    torch = require("torch", "yolo")
    metrics = require("ultralytics.utils.metrics", "yolo")
    count = (reference.shape[1] - 6) // KEYPOINT_DIMS
    ref_kpts = reference[:, 6:].reshape(len(reference), count, KEYPOINT_DIMS).copy()
    ref_kpts[..., 2] = (ref_kpts[..., 2] >= VISIBLE).astype(np.float32)  # kpt_iou counts nonzero ones
    sigma = metrics.OKS_SIGMA if count == len(metrics.OKS_SIGMA) else np.ones(count) / count
    area = (reference[:, 2] - reference[:, 0]) * (reference[:, 3] - reference[:, 1]) * AREA_SCALE
    cand_kpts = candidate[:, 6:].reshape(len(candidate), count, KEYPOINT_DIMS)
    return metrics.kpt_iou(torch.from_numpy(ref_kpts), torch.from_numpy(np.ascontiguousarray(cand_kpts)),
                           torch.from_numpy(area.astype(np.float32)), sigma).numpy()
