"""The oriented-box gate: rotated boxes matched by probabilistic IoU.

The export gives [B, 4+nc+1, N]: xywh pixels, class scores, then the angle in radians. Both
sides are decoded as Ultralytics' OBBValidator does: `non_max_suppression(rotated=True)` (NMS
on `batch_probiou`), boxes kept as xywh with the angle appended, then `batch_probiou` between
reference and candidate boxes (the similarity Ultralytics' OBB validation matches on) and the
shared matching and AP. The figure is OBB mAP50.
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from . import GateResult, GateSetting, LayoutError, Outputs, instance_verdict, single_output, stacked
from .matching import ImagePair, agreement
from .detect import yolo_nms


def judge(reference: Outputs, candidate: Outputs, setting: GateSetting) -> GateResult:
    metrics = require("ultralytics.utils.metrics", "yolo")
    pairs = [ImagePair(ref[:, 5], cand[:, 5], cand[:, 4], metrics.batch_probiou(xywhr(ref), xywhr(cand)).numpy())
             for ref, cand in zip(rotated_boxes(reference, setting), rotated_boxes(candidate, setting.for_candidate()))]
    return instance_verdict(setting, "OBB mAP50", agreement(pairs, operating_conf=setting.conf), "probiou")


def rotated_boxes(outputs: Outputs, setting: GateSetting) -> list[np.ndarray]:
    """Per image [n, 7] rows: x y w h (pixels), score, class, angle (radians)."""
    head = stacked(outputs, single_output(outputs, "[B, 4+nc+1, N]"))
    if head.ndim != 3 or head.shape[1] < 6:
        raise LayoutError(f"expected an oriented-box output [B, 4+nc+1, N], got shape {list(head.shape)}")
    return yolo_nms(head, setting.conf, setting.iou, nc=head.shape[1] - 5, rotated=True)


def xywhr(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate([rows[:, :4], rows[:, 6:7]], 1))
