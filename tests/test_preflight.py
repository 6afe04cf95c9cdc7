"""preflight: an ONNX checked against each TensorRT generation's parser tables, without TensorRT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtforge.errors import StageError
from trtforge.preflight import preflight, run_preflight
from trtforge.recipe import InputSpec, ModelSource
from trtforge.stages.export import export_onnx
from trtforge.stages.passes import fold_constants
from trtforge.trt_version import GENERATIONS


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # a model ORT runs
    onnx.save(model, str(path))
    return path


def graph_model(nodes, inputs, outputs, initializers=(), opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "planted", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def mod_model(path: Path) -> Path:
    """y = x mod 3, the way an end-to-end YOLO head computes class ids (Mod arrives in 8.5)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    three = numpy_helper.from_array(np.array([3.0], dtype=np.float32), "three")
    node = helper.make_node("Mod", ["x", "three"], ["y"], name="/model.22/Mod", fmod=1)
    return save(graph_model([node], [x], [y], [three]), path)


def errors(findings) -> list:
    return [f for f in findings if f.severity == "error"]


@pytest.mark.slow
def test_yolov8n_export_passes_every_generation(tmp_path):
    # 160 px: the operators and types of the graph do not depend on the input size.
    out = tmp_path / "export.onnx"
    export_onnx(ModelSource("ultralytics", arch="yolov8n.yaml"), InputSpec("images", (1, 3, 160, 160)), 17,
                tmp_path, out)
    for generation in GENERATIONS:
        assert errors(preflight(out, generation)) == [], generation
    # Opset 17 is above what 8.2's operator table documents (13): said, not refused.
    assert [f.kind for f in preflight(out, "8.2")] == ["model"]
    assert preflight(out, "10") == []


def test_mod_is_named_with_its_node_on_8_2_only(tmp_path):
    model = mod_model(tmp_path / "mod.onnx")
    [finding] = errors(preflight(model, "8.2"))
    assert (finding.node, finding.op_type, finding.domain) == ("/model.22/Mod", "Mod", "")
    assert "TensorRT 8.2's ONNX parser does not support" in finding.message
    assert finding.fix == "nms"
    for generation in ("8.6", "10", "11"):  # the 8.5 changelog adds Mod
        assert errors(preflight(model, generation)) == []


def test_stage_writes_report_and_fails_in_one_line(tmp_path):
    model = mod_model(tmp_path / "mod.onnx")
    report = tmp_path / "out" / "preflight.json"
    with pytest.raises(StageError) as failure:
        run_preflight(model, "8.2", report, "preflight:m-fp32")
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("preflight:m-fp32: node '/model.22/Mod' uses Mod, which TensorRT 8.2's ONNX parser")
    saved = json.loads(report.read_text())
    assert saved["generation"] == "8.2" and saved["errors"] == 1
    assert saved["findings"][0]["node"] == "/model.22/Mod"
    assert [p.name for p in report.parent.iterdir()] == ["preflight.json"]  # no temporaries left


def test_stage_passes_and_writes_report_when_supported(tmp_path):
    report = tmp_path / "preflight.json"
    run_preflight(mod_model(tmp_path / "mod.onnx"), "10", report, "preflight:m-fp32")
    assert json.loads(report.read_text())["errors"] == 0


def test_operator_no_generation_supports_is_an_error_everywhere(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.INT32, [4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [4])
    node = helper.make_node("BitwiseNot", ["x"], ["y"], name="flip")
    model = save(graph_model([node], [x], [y], opset=18), tmp_path / "bitwise.onnx")
    for generation in GENERATIONS:
        assert [(f.node, f.op_type) for f in errors(preflight(model, generation))] == [("flip", "BitwiseNot")]


def test_builtin_plugin_node_is_accepted_and_unknown_custom_op_is_not(tmp_path):
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 100, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 100, 80])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("num", "det_boxes", "det_scores",
                                                                                 "det_classes")]
    nms = helper.make_node("EfficientNMS_TRT", ["boxes", "scores"], [o.name for o in outs], name="/end2end/NMS",
                           domain="TRT", plugin_version="1", max_output_boxes=100, score_threshold=0.25,
                           iou_threshold=0.45, background_class=-1, score_activation=0, box_coding=0)
    graph = helper.make_graph([nms], "plugin", [boxes, scores], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("TRT", 1)])
    onnx.save(model, str(tmp_path / "plugin.onnx"))
    for generation in GENERATIONS:
        assert preflight(tmp_path / "plugin.onnx", generation) == [], generation

    custom = helper.make_node("MyFancyOp", ["boxes"], ["num"], name="fancy", domain="com.example")
    graph = helper.make_graph([custom], "custom", [boxes], [outs[0]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "custom.onnx"))
    [finding] = preflight(tmp_path / "custom.onnx", "10")
    assert (finding.severity, finding.node, finding.domain) == ("error", "fancy", "com.example")
    assert "build.plugins" in finding.message
    [finding] = preflight(tmp_path / "custom.onnx", "10", plugin_libraries=True)
    assert finding.severity == "warning"


def test_computed_slice_axes_need_fold_constants_on_8_2(tmp_path):
    """8.x wants Slice's axes as an initializer; a shape computation that folds is fixed by a pass."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), n)
             for n, v in (("starts", [0]), ("ends", [3]), ("one", [1]))]
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Size", ["shape"], ["rank"], name="rank"),
             helper.make_node("Sub", ["rank", "one"], ["last"], name="last"),  # axes = [rank - 1] = [1]
             helper.make_node("Slice", ["x", "starts", "ends", "last"], ["y"], name="/head/Slice")]
    model = save(graph_model(nodes, [x], [y], inits), tmp_path / "slice.onnx")
    [finding] = errors(preflight(model, "8.2"))
    assert (finding.node, finding.op_type, finding.fix) == ("/head/Slice", "Slice", "fold_constants")
    assert errors(preflight(model, "10")) == []  # 10.x folds static shape arithmetic itself

    folded = tmp_path / "folded.onnx"
    onnx.save(fold_constants(onnx.load(str(model))), str(folded))
    assert errors(preflight(folded, "8.2")) == []


def test_nonmaxsuppression_is_experimental_on_8_2(tmp_path):
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 10])
    keep = helper.make_tensor_value_info("keep", TensorProto.INT64, [None, 3])
    inits = [numpy_helper.from_array(np.array([5], dtype=np.int64), "max_out"),
             numpy_helper.from_array(np.array([0.5], dtype=np.float32), "iou"),
             numpy_helper.from_array(np.array([0.1], dtype=np.float32), "score")]
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score"], ["keep"], name="nms")
    model = save(graph_model([node], [boxes, scores], [keep], inits), tmp_path / "nms.onnx")
    on_8_2 = preflight(model, "8.2")
    assert [(f.severity, f.node, f.fix) for f in on_8_2 if f.kind == "node"] == [("warning", "nms", "nms")]
    assert [f.node for f in on_8_2 if f.kind == "tensor"] == ["keep"]  # INT64 output: an INT32 binding
    assert [f for f in preflight(model, "8.6") if f.kind == "node"] == []


def test_types_a_generation_lacks_are_errors(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    node = helper.make_node("Cast", ["x"], ["y"], name="from_bf16", to=TensorProto.FLOAT)
    model = save(graph_model([node], [x], [y]), tmp_path / "bf16.onnx")
    [finding] = errors(preflight(model, "8.6"))  # BF16 arrives in 9.0 (onnx-tensorrt changelog)
    assert (finding.kind, finding.node) == ("tensor", "x")
    assert "BFLOAT16" in finding.message
    assert errors(preflight(model, "10")) == []


def test_unknown_generation_is_one_line(tmp_path):
    with pytest.raises(Exception, match="unknown TensorRT generation '9'"):
        preflight(mod_model(tmp_path / "m.onnx"), "9")


def test_parser_tables_import_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, trtforge.parser_ops; print(sorted(m for m in ('onnx', 'torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_damaged_onnx_is_one_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(StageError, match="model.onnx: not a readable ONNX model"):
        preflight(bad, "10")
