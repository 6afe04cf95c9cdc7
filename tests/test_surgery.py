"""Surgery passes: each one keeps ONNX Runtime's outputs (within 1e-4) on a real YOLOv8n
export; plugin passes are found without importing them and run when listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trtforge.recipe import InputSpec, ModelSource
from trtforge.stages.export import export_onnx
from trtforge.stages.surgery import run_surgery
from trtforge.surgery import builtin_pass_names, discover_plugin_passes

# 160x160: the graph has the same operators as at 640, at a sixteenth of the cost.
SPEC = InputSpec("images", (1, 3, 160, 160), "float32", (0,))


@pytest.fixture(scope="module")
def yolov8n_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "export.onnx"
    export_onnx(ModelSource("ultralytics", arch="yolov8n.yaml"), SPEC, 17, out.parent, out)
    return out


def ort_outputs(path: Path, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": batch})


def test_export_and_surgery_give_the_single_yolov8_detection_head(yolov8n_onnx, tmp_path):
    out_file = tmp_path / "surgered.onnx"
    run_surgery(yolov8n_onnx, out_file, [(name, {}) for name in ("fold_constants", "slim", "infer_shapes")], [])
    (out,) = onnx.load(str(out_file)).graph.output
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims == ["batch", 84, 525]  # 4 box + 80 classes, (20^2 + 10^2 + 5^2) anchors at 160 px


# nms replaces the detect head's output by design (tests/test_nms.py checks what it gives).
OUTPUT_KEEPING = [name for name in builtin_pass_names() if name != "nms"]


@pytest.mark.parametrize("passes", [[name] for name in OUTPUT_KEEPING] + [OUTPUT_KEEPING])
def test_builtin_passes_keep_outputs(yolov8n_onnx, tmp_path, passes):
    out = tmp_path / "surgered.onnx"
    run_surgery(yolov8n_onnx, out, [(name, {}) for name in passes], [])
    batch = np.random.default_rng(0).random((2, 3, 160, 160), dtype=np.float32)  # batch 2: dynamic axis kept
    for before, after in zip(ort_outputs(yolov8n_onnx, batch), ort_outputs(out, batch)):
        assert before.shape == after.shape
        np.testing.assert_allclose(after, before, atol=1e-4, rtol=1e-4)


def test_fold_and_slim_shrink_the_graph(yolov8n_onnx, tmp_path):
    out = tmp_path / "surgered.onnx"
    run_surgery(yolov8n_onnx, out, [("fold_constants", {}), ("slim", {})], [])
    assert len(onnx.load(str(out)).graph.node) < len(onnx.load(str(yolov8n_onnx)).graph.node)


PLUGIN = '''
from trtforge.surgery import surgery_pass

@surgery_pass("rename_output")
def rename_output(model, name="detections"):
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    model.graph.output[0].name = name
    return model
'''


def test_plugin_pass_is_discovered_without_import_and_runs(yolov8n_onnx, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "rename.py").write_text(PLUGIN + "\nraise SystemExit('imported at discovery')\n")
    assert discover_plugin_passes(plugins) == {"rename_output": plugins / "rename.py"}
    (plugins / "rename.py").write_text(PLUGIN)
    out = tmp_path / "renamed.onnx"
    run_surgery(yolov8n_onnx, out, [("rename_output", {"name": "dets"})], [plugins / "rename.py"])
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["dets"]
