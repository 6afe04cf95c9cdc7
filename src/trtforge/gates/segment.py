"""The segmentation gate: instance masks from prototypes and coefficients, matched by mask IoU.

The export gives the detect head with 32 mask coefficients per anchor [B, 4+nc+32, N] and the
prototypes [B, 32, H/4, W/4]. Both sides are decoded as Ultralytics' SegmentationValidator
does: `non_max_suppression` with the coefficient rows as extra rows, `ops.process_mask` at
prototype resolution (each mask cropped to its box, binarised), `metrics.mask_iou` between
flattened masks, then the shared matching and AP. The figure is mask mAP50.
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from . import GateResult, GateSetting, LayoutError, Outputs, instance_verdict, stacked
from .matching import ImagePair, agreement
from .detect import yolo_nms


def judge(reference: Outputs, candidate: Outputs, setting: GateSetting) -> GateResult:
    result = agreement([ImagePair(ref[1], cand[1], cand[2], mask_similarity(ref[0], cand[0]))
                        for ref, cand in zip(instances(reference, setting),
                                             instances(candidate, setting.for_candidate()))],
                       operating_conf=setting.conf)
    return instance_verdict(setting, "mask mAP50", result, "mask_iou")


def instances(outputs: Outputs, setting: GateSetting) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image (masks [n, h, w] uint8 at prototype resolution, classes [n], scores [n])."""
    torch = require("torch", "yolo")
    ops = require("ultralytics.utils.ops", "yolo")
    head, protos = head_and_protos(outputs)
    masks = protos.shape[1]
    if head.shape[1] <= 4 + masks:
        raise LayoutError(f"the head {list(head.shape)} has no class rows besides 4 box rows and the "
                          f"{masks} mask coefficients the prototypes {list(protos.shape)} call for")
    shape = [4 * s for s in protos.shape[2:]]  # the input size, as SegmentationValidator.postprocess infers it
    result = []
    for rows, proto in zip(yolo_nms(head, setting.conf, setting.iou, nc=head.shape[1] - 4 - masks), protos):
        rows_t = torch.from_numpy(rows)
        image_masks = ops.process_mask(torch.from_numpy(proto), rows_t[:, 6:], rows_t[:, :4], shape)
        result.append((image_masks.numpy(), rows[:, 5].astype(np.int64), rows[:, 4]))
    return result


def head_and_protos(outputs: Outputs) -> tuple[np.ndarray, np.ndarray]:
    """The [B, 4+nc+nm, N] head and the [B, nm, h, w] prototypes, told apart by rank."""
    by_rank = {np.ndim(array): name for name, array in outputs[0].items()}
    if len(outputs[0]) != 2 or set(by_rank) != {3, 4}:
        shapes = ", ".join(f"{n} {list(np.shape(a))}" for n, a in outputs[0].items())
        raise LayoutError(f"expected two outputs, the head [B, 4+nc+32, N] and the prototypes [B, 32, H/4, W/4]; "
                          f"the model has {shapes}")
    return stacked(outputs, by_rank[3]), stacked(outputs, by_rank[4])


def mask_similarity(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """`ultralytics.utils.metrics.mask_iou` between every reference and candidate mask, [n, m]."""
    if not len(reference) or not len(candidate):  # mask_iou cannot multiply an empty side
        return np.zeros((len(reference), len(candidate)), np.float32)
    torch = require("torch", "yolo")
    metrics = require("ultralytics.utils.metrics", "yolo")
    flat = [torch.from_numpy(m.reshape(len(m), m[0].size).astype(np.float32)) for m in (reference, candidate)]
    return metrics.mask_iou(*flat).numpy()
