"""The classification gate: does the variant pick the class FP32 picks?

The export gives [B, nc] class probabilities. With FP32's top-1 class taken as each image's
label, Ultralytics' `ClassifyMetrics.process` (the code behind `yolo val` for classifiers)
gives top-1 agreement (the variant's best class is FP32's) and top-5 agreement (FP32's class is
among the variant's five best). The gate holds top-1 to the floor. There is always a figure:
an untrained classifier still ranks its classes.
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from . import GateResult, GateSetting, LayoutError, Outputs, single_output, stacked, verdict

TOP_K = 5


def judge(reference: Outputs, candidate: Outputs, setting: GateSetting) -> GateResult:
    figures = class_agreement(probabilities(reference), probabilities(candidate))
    return verdict(setting, "top-1", figures.pop("top-1"), figures)


def probabilities(outputs: Outputs) -> np.ndarray:
    scores = stacked(outputs, single_output(outputs, "class probabilities [B, nc]"))
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise LayoutError(f"expected class probabilities [B, nc], got shape {list(scores.shape)}")
    return scores


def class_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """top-1 and top-5 agreement of `candidate` [images, nc] with `reference`'s best classes."""
    torch = require("torch", "yolo")
    metrics = require("ultralytics.utils.metrics", "yolo")
    labels = torch.from_numpy(reference.argmax(1))
    # ClassificationValidator ranks with argsort(descending); stable, so a tie keeps argmax's choice
    ranked = torch.sort(torch.from_numpy(candidate), dim=1, descending=True, stable=True).indices[:, :TOP_K]
    figures = metrics.ClassifyMetrics()
    figures.process([labels], [ranked])
    return {"top-1": float(figures.top1), "top-5": float(figures.top5), "images": len(labels),
            "agreeing": int((ranked[:, 0] == labels).sum())}
