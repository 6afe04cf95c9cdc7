"""Bad models (issue 8's catalogue): every one ends in one line naming the recipe field and
the file, leaves no export.onnx / export.json under its real name, and after the cause is
fixed a plain rerun finishes.

Checkpoints are real: Ultralytics saves them (`YOLO(arch).save`, the same dict
`torch.save` writes for a trained best.pt) from architecture yamls, offline. Inputs are
160 px: only loading and refusing is under test, and size changes neither.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import make_project, run_doit
from trtforge.errors import StageError
from trtforge.recipe import InputSpec, ModelSource
from trtforge.stages import export
from trtforge.stages.export import export_onnx

SPEC = InputSpec("images", (1, 3, 160, 160), "float32", (0,))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained Ultralytics checkpoints of three tasks, saved the way Ultralytics saves them;
    semantic segmentation (YOLO26's per-pixel classes) is a task trtforge does not build."""
    import ultralytics

    folder = tmp_path_factory.mktemp("checkpoints")
    saved = {}
    for task, arch in (("detect", "yolov8n.yaml"), ("classify", "yolov8n-cls.yaml"), ("semantic", "yolo26n-sem.yaml")):
        saved[task] = folder / f"{task}.pt"
        ultralytics.YOLO(arch).save(saved[task])
    return saved


def _ultralytics(weights: str) -> ModelSource:
    return ModelSource("ultralytics", arch="yolov8n.yaml", weights=Path(weights))


def _refusal(model: ModelSource, root: Path, spec: InputSpec = SPEC) -> str:
    """The one line export_onnx refuses `model` with; checks nothing was written."""
    out = root / "artifacts"
    with pytest.raises(StageError) as caught:
        export_onnx(model, spec, 17, root, out / "export.onnx", out / "export.json")
    message = str(caught.value)
    assert "\n" not in message
    assert not out.exists() or list(out.iterdir()) == []  # no output, no temporary
    return message


def _tiny_onnx(path: Path, opset: int = 17, input_name: str = "images") -> Path:
    """A one-convolution ONNX with a dynamic batch, exported by torch."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    torch.onnx.export(net, torch.zeros(SPEC.shape), str(path), opset_version=opset, input_names=[input_name],
                      dynamic_axes={input_name: {0: "batch"}}, dynamo=False)
    return path


# ----------------------------------------------------------------------------- doit runs

SMALL_WEIGHTS_RECIPE = """\
model: {source: ultralytics, arch: yolov8n.yaml, weights: models/best.pt}
input: {name: images, shape: [1, 3, 160, 160]}
variants:
  fp32: {precision: fp32}
"""

ONNX_RECIPE = """\
model: {source: onnx, path: models/model.onnx}
input: {name: images, shape: [1, 3, 160, 160]}
variants:
  fp32: {precision: fp32}
"""


def _assert_one_error_line(result, line: str) -> None:
    """doit printed `line` once as the whole reason, with no traceback and no replay of the
    task's output after it (a status line drawn live once left an empty `<stdout>:` block)."""
    assert "Traceback" not in result.stdout + result.stderr
    assert (result.stdout + result.stderr).splitlines().count(line) == 1
    assert "<stdout>:" not in result.stdout and "#" * 40 not in result.stdout, result.stdout


@pytest.mark.slow
def test_weights_missing_then_truncated_each_fail_in_one_line_and_a_rerun_finishes(tmp_path, checkpoints):
    """One user's story: the checkpoint is not there yet, then half copied, then complete."""
    project = make_project(tmp_path / "proj", {"yolov8n": SMALL_WEIGHTS_RECIPE})
    result = run_doit(project, "export:yolov8n")
    assert result.returncode == 3  # refused while doit loads the recipes, before any task
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == [f"ERROR: recipes/yolov8n.yaml:1:59: model.weights: file 'models/best.pt' does not exist "
                      f"(relative paths start at the project root, {project})"]
    assert "Traceback" not in result.stderr

    (project / "models").mkdir()
    whole = checkpoints["detect"].read_bytes()
    (project / "models" / "best.pt").write_bytes(whole[:len(whole) // 2])  # a copy cut off halfway
    result = run_doit(project, "export:yolov8n")
    assert result.returncode == 1
    _assert_one_error_line(result, f"model.weights: models/best.pt is not a PyTorch checkpoint or is truncated "
                                   f"({len(whole) // 2} bytes, without the zip directory every torch.save file "
                                   "ends with); copy or save it again")
    assert list((project / "artifacts" / "yolov8n").glob("*")) == []

    shutil.copy(checkpoints["detect"], project / "models" / "best.pt")
    result = run_doit(project, "export:yolov8n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (project / "artifacts" / "yolov8n").iterdir()) == ["export.json", "export.onnx"]


@pytest.mark.slow
def test_onnx_without_its_external_data_fails_in_one_line_and_a_rerun_finishes(tmp_path):
    project = make_project(tmp_path / "proj", {"yolov8n": ONNX_RECIPE})
    models = project / "models"
    models.mkdir()
    onnx.save_model(onnx.load(str(_tiny_onnx(tmp_path / "whole.onnx"))), str(models / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    (models / "model.onnx.data").rename(tmp_path / "model.onnx.data")  # the copy forgot the data file
    result = run_doit(project, "export:yolov8n")
    assert result.returncode == 1
    _assert_one_error_line(result, "model.path: models/model.onnx keeps its weights in external data "
                                   f"model.onnx.data, missing from {models}: copy it next to the model")
    assert list((project / "artifacts" / "yolov8n").glob("*")) == []
    (tmp_path / "model.onnx.data").rename(models / "model.onnx.data")
    assert run_doit(project, "export:yolov8n").returncode == 0


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.slow
def test_a_real_detection_checkpoint_passes_every_check(tmp_path, checkpoints):
    (tmp_path / "best.pt").write_bytes(checkpoints["detect"].read_bytes())
    out = tmp_path / "artifacts"
    export_onnx(_ultralytics("best.pt"), SPEC, 17, tmp_path, out / "export.onnx", out / "export.json")
    meta = json.loads((out / "export.json").read_text())
    assert meta["task"] == "detect" and meta["stride"] == 32 and len(meta["names"]) == 80


def _zip_without_torch(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "a zip archive, but no torch.save file")


def _zip_with_a_bogus_pickle(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("best/data.pkl", os.urandom(256))


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(os.urandom(4096)), r"is not a PyTorch checkpoint or is truncated \(4096 bytes"),
    (lambda p: p.write_text("epochs: 100\nlr0: 0.01\n"), r"is not a PyTorch checkpoint or is truncated \(22 bytes"),
    (lambda p: p.write_bytes(b""), r"is not a PyTorch checkpoint or is truncated \(0 bytes"),
    (_zip_without_torch, r"is a zip archive but not a PyTorch checkpoint \(it has no data.pkl\)"),
    (_zip_with_a_bogus_pickle, r"is not a readable PyTorch checkpoint \(torch: "),
], ids=["random-bytes", "text", "empty", "zip-not-torch", "zip-bogus-pickle"])
def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path, make, reason):
    make(tmp_path / "best.pt")
    assert _refusal(_ultralytics("best.pt"), tmp_path).startswith("model.weights: best.pt ")
    with pytest.raises(StageError, match=f"^model.weights: best.pt {reason}.*; copy or save it again$"):
        export_onnx(_ultralytics("best.pt"), SPEC, 17, tmp_path, tmp_path / "x.onnx")


def test_a_flipped_byte_inside_a_checkpoint_is_caught_by_its_crc(tmp_path, checkpoints):
    data = bytearray(checkpoints["detect"].read_bytes())
    data[len(data) // 2] ^= 1  # inside a tensor: torch.load would load it silently
    (tmp_path / "best.pt").write_bytes(bytes(data))
    assert re.fullmatch(r"model.weights: best.pt is damaged \(detect/data/\d+ inside it fails its CRC check\); "
                        "copy or save it again", _refusal(_ultralytics("best.pt"), tmp_path))


def test_weights_that_are_not_a_pt_file_are_one_line(tmp_path):
    _tiny_onnx(tmp_path / "best.onnx")
    assert _refusal(_ultralytics("best.onnx"), tmp_path) == (
        "model.weights: best.onnx is not a .pt file; Ultralytics reads checkpoints from .pt files only "
        "(an ONNX model goes in model.path with model.source: onnx)")


def test_torch_factory_weights_that_are_no_checkpoint_are_one_line(tmp_path):
    (tmp_path / "faults_factory.py").write_text("import torch\n\ndef conv():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    (tmp_path / "w.pt").write_text("not a state dict\n")
    message = _refusal(ModelSource("torch", factory="faults_factory:conv", weights=Path("w.pt")), tmp_path)
    assert message.startswith("model.weights: w.pt is not a PyTorch checkpoint or is truncated (17 bytes")


# ----------------------------------------------------------------------------- unsupported tasks

@pytest.mark.slow
def test_checkpoint_of_an_unsupported_task_names_it_and_the_supported_ones(tmp_path, checkpoints):
    shutil.copy(checkpoints["semantic"], tmp_path / "sem.pt")
    assert _refusal(_ultralytics("sem.pt"), tmp_path) == (
        "model.weights: sem.pt is an Ultralytics 'semantic' model; trtforge builds detect, segment, classify, "
        "pose, obb models: give a model of a supported task")


@pytest.mark.slow
def test_architecture_of_an_unsupported_task_is_refused_the_same_way(tmp_path):
    model = ModelSource("ultralytics", arch="yolo26n-depth.yaml")
    assert _refusal(model, tmp_path).startswith("model.arch: yolo26n-depth.yaml is an Ultralytics 'depth' model;")


@pytest.mark.slow
def test_supported_tasks_is_the_one_place_a_task_is_enabled(tmp_path, checkpoints, monkeypatch):
    shutil.copy(checkpoints["classify"], tmp_path / "cls.pt")
    monkeypatch.setattr(export, "SUPPORTED_TASKS", ("detect",))
    assert _refusal(_ultralytics("cls.pt"), tmp_path).startswith(
        "model.weights: cls.pt is an Ultralytics 'classify' model; trtforge builds detect models:")
    monkeypatch.undo()
    out = tmp_path / "artifacts" / "export.onnx"
    export_onnx(_ultralytics("cls.pt"), SPEC, 17, tmp_path, out)
    (probs,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"images": np.zeros(SPEC.shape, np.float32)})
    assert probs.shape == (1, 1000)


# ----------------------------------------------------------------------------- YOLOv5 sources

def _yolov5(weights: str | None = None, arch: str = "yolov5s.yaml") -> ModelSource:
    return ModelSource("yolov5", arch=arch, weights=Path(weights) if weights else None)


def test_yolov5_architecture_that_is_neither_in_the_project_nor_bundled_is_one_line(tmp_path):
    assert _refusal(_yolov5(arch="yolov5q.yaml"), tmp_path) == (
        "model.arch: 'yolov5q.yaml' is neither a file in the project nor a YOLOv5 architecture the yolov5 package "
        "bundles (yolov5l.yaml, yolov5m.yaml, yolov5n.yaml, yolov5s.yaml, yolov5x.yaml)")


def test_an_ultralytics_checkpoint_given_as_yolov5_weights_is_one_line(tmp_path, checkpoints):
    shutil.copy(checkpoints["detect"], tmp_path / "best.pt")
    assert re.fullmatch(r"model.weights: best.pt is a PyTorch file but not a YOLOv5 checkpoint \(it names [^)]+\); "
                        r"give a checkpoint YOLOv5 saved \(its best.pt\), or load a state dict with "
                        r"model.source: torch and model.factory", _refusal(_yolov5("best.pt"), tmp_path))


def test_a_yolov5_pickle_without_a_network_is_one_line(tmp_path):
    from yolov5.models.common import Conv  # a class of the package, so the pickle names yolov5

    torch.save({"epoch": 3, "layer": Conv}, tmp_path / "best.pt")
    assert _refusal(_yolov5("best.pt"), tmp_path) == (
        "model.weights: best.pt holds no YOLOv5 network (no 'model' or 'ema' entry); give the best.pt "
        "YOLOv5's train.py saved")


@pytest.mark.parametrize("content, found", [
    ({"conv.weight": torch.zeros(4, 3, 3, 3)}, "it holds only tensors and plain values"),
    (torch.nn.Conv2d(3, 4, 3), "it names torch.nn.modules.conv.Conv2d"),
], ids=["state-dict", "pickled-torch-module"])
def test_a_torch_file_that_is_not_an_ultralytics_checkpoint_is_one_line(tmp_path, content, found):
    torch.save(content, tmp_path / "best.pt")
    assert _refusal(_ultralytics("best.pt"), tmp_path) == (
        f"model.weights: best.pt is a PyTorch file but not an Ultralytics checkpoint ({found}); give a "
        "checkpoint Ultralytics saved (its best.pt), or load a state dict with model.source: torch and "
        "model.factory")


def test_a_checkpoint_needing_a_module_that_is_not_installed_is_refused_before_anything_installs_it(
        tmp_path, checkpoints, monkeypatch):
    # Ultralytics' loader answers a missing module with `pip install <module>` mid-build.
    (tmp_path / "vanished_module.py").write_text("class Extra:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanished_module

    checkpoint = torch.load(checkpoints["detect"], map_location="cpu", weights_only=False)
    torch.save({**checkpoint, "extra": vanished_module.Extra()}, tmp_path / "best.pt")
    monkeypatch.delitem(sys.modules, "vanished_module")
    (tmp_path / "vanished_module.py").unlink()
    # A module outside the network's own packages is refused, not worth installing.
    assert _refusal(_ultralytics("best.pt"), tmp_path).startswith(
        "model.weights: best.pt names vanished_module.Extra, which a checkpoint never needs")


# ----------------------------------------------------------------------------- ONNX sources

def _onnx_source(name: str) -> ModelSource:
    return ModelSource("onnx", path=Path(name))


def test_truncated_onnx_is_one_line(tmp_path):
    whole = _tiny_onnx(tmp_path / "whole.onnx").read_bytes()
    (tmp_path / "model.onnx").write_bytes(whole[:len(whole) // 2])
    assert _refusal(_onnx_source("model.onnx"), tmp_path) == (
        f"model.path: model.onnx cannot be read as ONNX ({len(whole) // 2} bytes; Error parsing message with "
        "type 'onnx.ModelProto'): it is truncated or not an ONNX model; copy or export it again")


def test_empty_onnx_is_one_line(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")  # protobuf parses zero bytes as an empty model: the checker refuses it
    assert _refusal(_onnx_source("model.onnx"), tmp_path) == (
        "model.path: model.onnx is not a valid ONNX model (The model does not have an ir_version set properly): "
        "it is truncated or was written wrongly; copy or export it again")


def test_onnx_with_missing_external_data_names_the_data_file(tmp_path):
    onnx.save_model(onnx.load(str(_tiny_onnx(tmp_path / "whole.onnx"))), str(tmp_path / "model.onnx"),
                    save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    assert _refusal(_onnx_source("model.onnx"), tmp_path) == (
        f"model.path: model.onnx keeps its weights in external data weights.bin, missing from {tmp_path}: "
        "copy it next to the model")


def test_onnx_with_external_data_is_copied_as_one_self_contained_file(tmp_path):
    onnx.save_model(onnx.load(str(_tiny_onnx(tmp_path / "whole.onnx"))), str(tmp_path / "model.onnx"),
                    save_as_external_data=True, location="weights.bin", size_threshold=0)
    out = tmp_path / "artifacts" / "export.onnx"
    export_onnx(_onnx_source("model.onnx"), SPEC, 17, tmp_path, out)
    (tmp_path / "weights.bin").unlink()  # the copy must not need the source's data file
    x = np.random.default_rng(0).random(SPEC.shape, np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
           for p in (out, tmp_path / "whole.onnx")]
    np.testing.assert_array_equal(run[0], run[1])


def test_onnx_whose_inputs_do_not_include_the_recipe_input_names_them(tmp_path):
    _tiny_onnx(tmp_path / "model.onnx", input_name="input.1")
    assert _refusal(_onnx_source("model.onnx"), tmp_path) == (
        "model.path: model.onnx has input(s) input.1, not 'images', which input.name sets and build.profiles "
        "use: set input.name to the model's input")


@pytest.mark.parametrize("opset", [12, 22])
def test_onnx_with_an_opset_outside_the_supported_range_is_one_line(tmp_path, opset):
    model = onnx.load(str(_tiny_onnx(tmp_path / "whole.onnx", opset=17)))
    model.opset_import[0].version = opset  # Conv and Relu are unchanged from opset 12 to 22, so it stays valid
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "model.onnx"))
    assert _refusal(_onnx_source("model.onnx"), tmp_path) == (
        f"model.path: model.onnx uses ONNX opset {opset}; trtforge supports opsets 13..21: convert it "
        "(onnx.version_converter) or export it again with an opset in that range")


def test_onnx_opset_range_edges_are_accepted(tmp_path):
    for opset in (13, 21):
        model = onnx.load(str(_tiny_onnx(tmp_path / "whole.onnx", opset=17)))
        model.opset_import[0].version = opset
        onnx.save(model, str(tmp_path / "model.onnx"))
        export_onnx(_onnx_source("model.onnx"), SPEC, 17, tmp_path, tmp_path / f"out{opset}.onnx")
        assert onnx.load(str(tmp_path / f"out{opset}.onnx")).opset_import[0].version == opset


def test_torch_factory_module_with_its_own_tuple_stride_exports(tmp_path):
    # Metadata reads Ultralytics' stride tensor; a Conv2d's `stride` is a tuple and once raised TypeError.
    (tmp_path / "faults_conv.py").write_text("import torch\n\ndef conv():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    out = tmp_path / "artifacts"
    export_onnx(ModelSource("torch", factory="faults_conv:conv"), SPEC, 17, tmp_path, out / "export.onnx",
                out / "export.json")
    assert "stride" not in (out / "export.json").read_text()
