"""The `nms` surgery pass: its `onnx` backend keeps exactly the detections of Ultralytics'
predictor, its `efficient_nms` backend (run through a Python reference of TensorRT's plugin as
an ONNX Runtime custom op) keeps the same ones, and both give the plugin's four outputs.

An untrained YOLOv8n export gives every anchor the same class score (its class convolutions
start at zero), so NMS has nothing to decide on it. The detections are checked on synthesized
raw head tensors instead, shaped like YOLOv8n's at 160 px ([B, 84, 525]), wrapped as an ONNX
model whose output is that tensor; the real export is checked for the stage plumbing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from ultralytics.utils.nms import non_max_suppression

import nms_reference
from trtforge.errors import StageError
from trtforge.recipe import InputSpec, ModelSource
from trtforge.stages.export import export_onnx
from trtforge.stages.nms import CLASS_OFFSET, OUTPUT_NAMES, PLUGIN_DOMAIN, nms
from trtforge.stages.surgery import run_surgery

NUM_CLASSES, ANCHORS, SIZE = 80, 525, 160  # YOLOv8n at 160 px: (20^2 + 10^2 + 5^2) anchors
# (conf, iou, max_det): the predictor's defaults, and stricter ones with max_det below the
# number of detections of the crowded image, so the per-image cut is exercised.
SETTINGS = [(0.25, 0.7, 300), (0.4, 0.5, 20)]


def head_model(num_classes: int = NUM_CLASSES, anchors: int = ANCHORS, opset: int = 17) -> onnx.ModelProto:
    """An ONNX model whose only output `output0` is its input: a detect head we choose the values of."""
    shape = ["batch", 4 + num_classes, anchors]
    graph = helper.make_graph([helper.make_node("Identity", ["raw"], ["output0"])], "head",
                              [helper.make_tensor_value_info("raw", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def synthetic_head(seed: int = 0) -> np.ndarray:
    """Raw detect-head output [3, 84, 525] as a trained YOLOv8n gives it (xywh pixels, sigmoid scores).

    Background anchors: random boxes with low scores (logits ~ N(-7, 1.5): a few cross 0.25 alone).
    Objects: a cluster of 3-14 anchors with jittered boxes (8 % noise, so many pairs overlap near
    the IoU thresholds) scoring one class 0.2-0.95 and a runner-up class a little lower (a
    multi-label NMS would keep both). Image 0 has 12 objects, image 1 none above any threshold,
    image 2 has 30 (more detections than the smaller max_det).
    """
    rng = np.random.default_rng(seed)
    batch = 3
    logits = rng.normal(-7, 1.5, (batch, NUM_CLASSES, ANCHORS))
    boxes = np.stack([rng.uniform(0, SIZE, (batch, ANCHORS)), rng.uniform(0, SIZE, (batch, ANCHORS)),
                      rng.uniform(4, SIZE / 2, (batch, ANCHORS)), rng.uniform(4, SIZE / 2, (batch, ANCHORS))], 1)
    for image, objects in enumerate((12, 0, 30)):
        free = iter(rng.permutation(ANCHORS))
        for _ in range(objects):
            best, runner_up = rng.choice(NUM_CLASSES, 2, replace=False)
            box = np.concatenate([rng.uniform(20, SIZE - 20, 2), rng.uniform(10, 60, 2)])
            members = [next(free) for _ in range(rng.integers(3, 15))]
            boxes[image, :, members] = box * (1 + rng.normal(0, 0.08, (len(members), 4)))
            p_best = rng.uniform(0.2, 0.95, len(members))
            p_runner_up = p_best * rng.uniform(0.5, 0.99, len(members))
            logits[image, best, members] = np.log(p_best / (1 - p_best))
            logits[image, runner_up, members] = np.log(p_runner_up / (1 - p_runner_up))
    logits[1] = np.minimum(logits[1], -3)  # image 1: nothing above 0.05
    return np.concatenate([boxes, 1 / (1 + np.exp(-logits))], 1).astype(np.float32)


def run_onnx_backend(raw: np.ndarray, **params) -> list[np.ndarray]:
    model = nms(head_model(), backend="onnx", **params)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"raw": raw})


def run_plugin_backend(raw: np.ndarray, **params) -> list[np.ndarray]:
    model = nms(head_model(), backend="efficient_nms", **params)
    return nms_reference.plugin_session(model).run(None, {"raw": raw})


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return synthetic_head()


@pytest.mark.parametrize("conf, iou, max_det", SETTINGS)
def test_onnx_backend_keeps_exactly_ultralytics_detections(raw, conf, iou, max_det):
    count, boxes, scores, classes = run_onnx_backend(raw, conf=conf, iou=iou, max_det=max_det)
    # As Ultralytics' predictor calls it: best class per box, class-aware, at most max_det.
    expected = non_max_suppression(torch.from_numpy(raw), conf_thres=conf, iou_thres=iou, max_det=max_det)
    assert count[:, 0].tolist() == [len(e) for e in expected]
    assert count[0, 0] > 0 and count[1, 0] == 0 and count[2, 0] > 0
    for image, kept in enumerate(expected):
        n, kept = count[image, 0], kept.numpy()
        np.testing.assert_allclose(boxes[image, :n], kept[:, :4], rtol=0, atol=1e-4)
        np.testing.assert_allclose(scores[image, :n], kept[:, 4], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(classes[image, :n], kept[:, 5].astype(np.int32))
        assert not boxes[image, n:].any() and not scores[image, n:].any() and not classes[image, n:].any()


def test_the_crowded_image_is_cut_at_max_det(raw):
    count = run_onnx_backend(raw, conf=0.4, iou=0.5, max_det=20)[0]
    assert count[2, 0] == 20 < len(non_max_suppression(torch.from_numpy(raw[2:]), 0.4, 0.5, max_det=300)[0])


@pytest.mark.parametrize("conf, iou, max_det", SETTINGS)
def test_plugin_backend_agrees_with_onnx_backend_through_the_plugin_reference(raw, conf, iou, max_det):
    params = {"conf": conf, "iou": iou, "max_det": max_det}
    (count, boxes, scores, classes), plugin = run_onnx_backend(raw, **params), run_plugin_backend(raw, **params)
    assert [o.dtype for o in plugin] == [np.int32, np.float32, np.float32, np.int32]
    assert count.any()
    np.testing.assert_array_equal(plugin[0], count)
    np.testing.assert_array_equal(plugin[2], scores)
    np.testing.assert_array_equal(plugin[3], classes)
    # The plugin returns the class-shifted boxes it ran NMS on; shifting back is exact up to
    # the float32 spacing at the largest shifted coordinate.
    largest = np.float32(CLASS_OFFSET * (NUM_CLASSES - 1) + np.abs(raw[:, :4]).max() * 1.5)
    np.testing.assert_allclose(plugin[1], boxes, rtol=0, atol=float(np.spacing(largest)))


def test_both_backends_declare_the_plugin_outputs():
    for backend in ("onnx", "efficient_nms"):
        outputs = nms(head_model(), backend=backend, max_det=100).graph.output
        declared = [(o.name, o.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in outputs]
        assert declared == [("num_detections", TensorProto.INT32, ["batch", 1]),
                            ("detection_boxes", TensorProto.FLOAT, ["batch", 100, 4]),
                            ("detection_scores", TensorProto.FLOAT, ["batch", 100]),
                            ("detection_classes", TensorProto.INT32, ["batch", 100])], backend


def test_plugin_node_has_the_inputs_and_attributes_the_plugin_documents():
    model = onnx.shape_inference.infer_shapes(nms(head_model(), backend="efficient_nms", conf=0.3, iou=0.6,
                                                  max_det=50), strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert node.domain == PLUGIN_DOMAIN and (PLUGIN_DOMAIN, 1) in [(o.domain, o.version) for o in model.opset_import]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"score_threshold": pytest.approx(0.3), "iou_threshold": pytest.approx(0.6),
                     "max_output_boxes": 50, "background_class": -1, "score_activation": 0,
                     "class_agnostic": 0, "box_coding": 0, "plugin_version": b"1", "plugin_namespace": b""}
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info}
    assert shapes[node.input[0]] == ["batch", ANCHORS, 4]
    assert shapes[node.input[1]] == ["batch", ANCHORS, NUM_CLASSES]
    assert list(node.output) != list(OUTPUT_NAMES)  # the boxes are shifted back after the plugin


def test_reference_follows_the_plugin_source_semantics():
    # Class 0: a; b inside a (IoU exactly 0.5); c overlapping a with IoU 0.25. Class 1: d, apart.
    boxes = np.array([[[0, 0, 10, 10], [0, 5, 10, 10], [0, 5, 10, 20], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.8, 0.0], [0.5, 0.0], [0.0, 0.6]]], np.float32)
    count, out_boxes, out_scores, out_classes = nms_reference.efficient_nms(
        boxes, scores, score_threshold=0.5, iou_threshold=0.5, max_output_boxes=4)
    # b is suppressed (IoU >= iou_threshold); c is kept at exactly the score threshold (>=).
    assert count.tolist() == [[3]]
    np.testing.assert_array_equal(out_scores, np.float32([[0.9, 0.6, 0.5, 0]]))
    np.testing.assert_array_equal(out_classes, [[0, 1, 0, 0]])
    np.testing.assert_array_equal(out_boxes[0], [[0, 0, 10, 10], [50, 50, 60, 60], [0, 5, 10, 20], [0, 0, 0, 0]])
    centre_size = np.array([[[5, 5, 10, 10], [5, 7.5, 10, 5], [5, 12.5, 10, 15], [55, 55, 10, 10]]], np.float32)
    same = nms_reference.efficient_nms(centre_size, scores, score_threshold=0.5, iou_threshold=0.5,
                                       max_output_boxes=4, box_coding=1)
    np.testing.assert_array_equal(same[1], out_boxes)
    agnostic = nms_reference.efficient_nms(boxes, scores, score_threshold=0.5, iou_threshold=0.2,
                                           max_output_boxes=4, class_agnostic=1)
    assert agnostic[0].tolist() == [[2]]  # c (IoU 0.25 with a) goes too; d overlaps nothing
    capped = nms_reference.efficient_nms(boxes, scores, score_threshold=0.5, iou_threshold=0.5, max_output_boxes=1)
    assert capped[0].tolist() == [[1]] and capped[2][0, 0] == np.float32(0.9)


@pytest.mark.parametrize("params, message", [
    ({"backend": "trt"}, "backend 'trt' is unknown; use one of: onnx, efficient_nms"),
    ({"conf": 0}, "conf must be a number between 0 and 1"),
    ({"conf": "0.25"}, "conf must be a number between 0 and 1"),
    ({"iou": 1.5}, "iou must be a number in (0, 1]"),
    ({"max_det": 0}, "max_det must be a positive whole number"),
    ({"max_det": 600}, "max_det 600 is more than the head's 525 boxes; set nms.max_det to at most 525"),
])
def test_bad_parameters_are_refused_in_one_line(params, message):
    with pytest.raises(StageError, match="^surgery pass 'nms': ") as err:
        nms(head_model(), **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_models_it_cannot_handle_are_refused_in_one_line():
    two_outputs = head_model()
    two_outputs.graph.output.append(helper.make_tensor_value_info("protos", TensorProto.FLOAT, ["batch", 32, 40, 40]))
    with pytest.raises(StageError, match="this model has 2 \\(output0, protos\\); nms applies to detection"):
        nms(two_outputs)
    with pytest.raises(StageError, match="opset is 12; nms needs 13 or later"):
        nms(head_model(opset=12))
    with pytest.raises(StageError, match="not a YOLO detect head"):
        nms(head_model(num_classes=0))


@pytest.mark.slow
def test_surgery_stage_appends_nms_to_a_real_yolov8n_export(tmp_path):
    # 160 px: the head has the same layout as at 640 (N = 525 instead of 8400).
    export = tmp_path / "export.onnx"
    export_onnx(ModelSource("ultralytics", arch="yolov8n.yaml"), InputSpec("images", (1, 3, 160, 160), "float32", (0,)),
                17, tmp_path, export)
    batch = np.random.default_rng(0).random((2, 3, 160, 160), dtype=np.float32)  # batch 2: dynamic axis kept
    raw = ort.InferenceSession(str(export), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    expected = [len(k) for k in non_max_suppression(torch.from_numpy(raw), 0.25, 0.7)]
    for backend in ("onnx", "efficient_nms"):
        out = tmp_path / f"{backend}.onnx"
        run_surgery(export, out, [("fold_constants", {}), ("slim", {}), ("infer_shapes", {}),
                                  ("nms", {"backend": backend})], [])
        model = onnx.load(str(out))
        session = (nms_reference.plugin_session(model) if backend == "efficient_nms"
                   else ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]))
        count, boxes, scores, classes = session.run(None, {"images": batch})
        assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
        assert (boxes.shape, scores.shape, classes.shape) == ((2, 300, 4), (2, 300), (2, 300))
        assert count[:, 0].tolist() == expected  # untrained: no score reaches 0.25, for either


def test_registering_the_pass_imports_no_heavy_library():
    import subprocess
    import sys

    code = "import sys, trtforge.stages.passes; print(sorted({'onnx', 'numpy', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent)
    assert result.stdout.strip() == "[]"
