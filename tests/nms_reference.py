"""A reference of TensorRT's EfficientNMS_TRT plugin in numpy, runnable as an ONNX Runtime custom op.

For tests only: it lets the `efficient_nms` backend of the nms pass be checked numerically on a
machine without TensorRT. It follows the plugin's FP32 path as NVIDIA's source defines it
(plugin/efficientNMSPlugin in NVIDIA/TensorRT: efficientNMSInference.cu, .cuh, efficientNMSPlugin.cpp):

- candidates are the (box, class) pairs with score >= score_threshold (EfficientNMSFilter's
  gte_mp), the background class excluded; with score_activation the threshold is compared in
  logit space and the sigmoid applied to the kept scores only;
- candidates are sorted by descending score (FP32 sorts full keys: scoreBits is -1) and only the
  first `selected_boxes` go into NMS: 5000 on most GPUs, 2000 on Jetson TX1/TX2
  (EfficientNMSPlugin::initialize);
- greedy NMS in that order: a candidate survives unless a kept one of the same class (any class
  with class_agnostic) overlaps it with IoU >= iou_threshold; at most max_output_boxes are kept;
- IoU is computed on corner boxes with coordinates reordered (min, max), 0 when the
  intersection or union area is <= 0; box_coding=1 boxes (x, y, w, h) become corners as
  x -+ w * 0.5;
- outputs are zeroed first, so entries past num_detections are 0; boxes are corners, unclipped.

Ties (equal scores) are ordered by element index here; on the GPU their order is whatever the
atomic filter wrote, so a test should not depend on it.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx

CONTRIB_DOMAIN = "ai.onnx.contrib"  # where onnxruntime-extensions looks up Python ops


def corners(boxes: np.ndarray, box_coding: int) -> np.ndarray:
    """[..., 4] boxes in the plugin's coding -> corners (BoxCenterSize -> BoxCorner conversion)."""
    boxes = np.asarray(boxes, np.float32)
    if box_coding == 0:
        return boxes
    half = boxes[..., 2:] * np.float32(0.5)
    return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def _area(box: np.ndarray) -> np.ndarray:
    w, h = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    return np.where((w > 0) & (h > 0), h * w, np.float32(0))


def iou_one_to_many(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The plugin's IOU(): reordered corners, 0 for empty intersection or union, float32 throughout."""
    a = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])
    b = np.concatenate([np.minimum(others[:, :2], others[:, 2:]), np.maximum(others[:, :2], others[:, 2:])], axis=1)
    inter = _area(np.concatenate([np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])], axis=1))
    union = _area(a) + _area(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((inter > 0) & (union > 0), inter / union, np.float32(0)).astype(np.float32)


def efficient_nms(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, iou_threshold: float,
                  max_output_boxes: int, background_class: int = -1, score_activation: int = 0,
                  class_agnostic: int = 0, box_coding: int = 0, selected_boxes: int = 5000):
    """boxes [B, N, 4], scores [B, N, C] -> (num_detections [B, 1] int32, boxes [B, max, 4] float32,
    scores [B, max] float32, classes [B, max] int32), as the plugin computes them."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"reference supports boxes [B, N, 4] with scores [B, N, C], got {boxes.shape}, {scores.shape}")
    batch, _, num_classes = scores.shape
    threshold = np.float32(score_threshold)
    if score_activation:
        threshold = np.float32(np.log(score_threshold / (1 - score_threshold)) if score_threshold > 0 else -(1 << 15))
    count = np.zeros((batch, 1), np.int32)
    out_boxes = np.zeros((batch, max_output_boxes, 4), np.float32)
    out_scores = np.zeros((batch, max_output_boxes), np.float32)
    out_classes = np.zeros((batch, max_output_boxes), np.int32)
    for image in range(batch):
        flat = scores[image].reshape(-1)  # element = anchor * C + class, as EfficientNMSFilter unpacks it
        elements = np.flatnonzero(flat >= threshold)
        elements = elements[elements % num_classes != background_class]
        elements = elements[np.argsort(-flat[elements], kind="stable")][:selected_boxes]
        anchors, classes = elements // num_classes, elements % num_classes
        candidates = corners(boxes[image][anchors], box_coding)
        alive = np.ones(len(elements), bool)
        kept = 0
        for i in range(len(elements)):
            if not alive[i]:
                continue
            if kept >= max_output_boxes:
                break
            score = flat[elements[i]]
            out_scores[image, kept] = 1 / (1 + np.exp(-score)) if score_activation else score
            out_boxes[image, kept], out_classes[image, kept] = candidates[i], classes[i]
            kept += 1
            later = np.arange(i + 1, len(elements))
            if not class_agnostic:
                later = later[classes[later] == classes[i]]
            later = later[alive[later]]
            alive[later[iou_one_to_many(candidates[i], candidates[later]) >= np.float32(iou_threshold)]] = False
        count[image, 0] = kept
    return count, out_boxes, out_scores, out_classes


@functools.cache
def register_custom_op() -> str:
    """Register `efficient_nms` as the Python op EfficientNMS_TRT of onnxruntime-extensions, once
    per process; returns the custom-op library to pass to SessionOptions.register_custom_ops_library."""
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    dt = PyCustomOpDef
    ints = ("max_output_boxes", "background_class", "score_activation", "class_agnostic", "box_coding")
    attrs = {"score_threshold": dt.dt_float, "iou_threshold": dt.dt_float, **{k: dt.dt_int64 for k in ints},
             "plugin_version": dt.dt_string, "plugin_namespace": dt.dt_string}

    @onnx_op(op_type="EfficientNMS_TRT", inputs=[dt.dt_float, dt.dt_float],
             outputs=[dt.dt_int32, dt.dt_float, dt.dt_float, dt.dt_int32], attrs=attrs)
    def efficient_nms_op(boxes, scores, **kwargs):
        params = {k: kwargs[k] for k in ("score_threshold", "iou_threshold", *ints) if k in kwargs}
        return efficient_nms(boxes, scores, **params)

    return get_library_path()


def with_plugin_in_contrib_domain(model: onnx.ModelProto, op_type: str = "EfficientNMS_TRT") -> onnx.ModelProto:
    """A copy of `model` whose `op_type` nodes are in onnxruntime-extensions' domain."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.op_type == op_type:
            node.domain = CONTRIB_DOMAIN
    if not any(op.domain == CONTRIB_DOMAIN for op in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return copy


def plugin_session(model: onnx.ModelProto):
    """An ONNX Runtime CPU session that runs `model`'s EfficientNMS_TRT node through the reference."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(register_custom_op())
    return ort.InferenceSession(with_plugin_in_contrib_domain(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
