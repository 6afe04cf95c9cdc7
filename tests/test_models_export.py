"""Every recipe in recipes/ exports to ONNX from its architecture yaml (and from a trained
checkpoint in model.weights, with no other change), and ONNX Runtime runs it at batch 2 with
the output layout its verify.head names (issue 7).

Inputs are shrunk where size does not matter: a head's layout scales with the input (a YOLO
head has one anchor per cell of its stride-8, 16 and 32 grids) and is the same at any size,
while a full-size export and run take minutes per model on 2 cores. Detectors run at 160 px
(RT-DETR's 300 queries still find 525 encoder positions there), the classifier at 64 px and
the oriented-box model at 256 px (its 1024 px would be the slowest of all). The full-size
layouts are in the comments of LAYOUTS.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trtforge.recipe import load_recipe
from trtforge.stages.export import export_onnx
from trtforge.surgery import builtin_pass_names

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
PASSES = {name: None for name in builtin_pass_names()}  # recipes name passes; none runs here

# recipe -> (test input size, {output: shape at batch 2 and that size}); a new recipe needs an entry.
LAYOUTS = {
    "yolov8n": (160, {"output0": (2, 84, 525)}),  # 640: [B, 84, 8400]
    "yolo11n": (160, {"output0": (2, 84, 525)}),  # 640: [B, 84, 8400]
    "yolov8n-seg": (160, {"output0": (2, 116, 525), "output1": (2, 32, 40, 40)}),  # [B,116,8400] + [B,32,160,160]
    "yolov8n-cls": (64, {"output0": (2, 1000)}),  # 224: [B, 1000]
    "yolov8n-pose": (160, {"output0": (2, 56, 525)}),  # 640: [B, 56, 8400]
    "yolov8n-obb": (256, {"output0": (2, 85, 1344)}),  # 1024: [B, 85, 21504]
    "yolov5s": (160, {"output0": (2, 1575, 85)}),  # 640: [B, 25200, 85] (3 anchors per cell)
    "rtdetr-l": (160, {"output0": (2, 300, 6)}),  # any size: [B, 300, 6]
    "yolo26n": (160, {"output0": (2, 300, 6)}),  # any size: [B, 300, 6]
    "yolov8s-people": (160, {"output0": (2, 6, 525)}),  # trained, 2 classes; 640: [B, 6, 8400]
}


def _export_small(recipe_file: Path, out: Path, root: Path = ROOT, weights: Path | None = None):
    """Export the recipe at its test size; returns the recipe, the ONNX path and export.json."""
    recipe = load_recipe(recipe_file, ROOT, PASSES)
    size = LAYOUTS[recipe.name][0]
    spec = replace(recipe.input, shape=(1, 3, size, size))
    model = recipe.model if weights is None else replace(recipe.model, weights=weights)
    export_onnx(model, spec, recipe.opset, root, out / "export.onnx", out / "export.json")
    return recipe, out / "export.onnx", json.loads((out / "export.json").read_text())


def _run(onnx_path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip((o.name for o in session.get_outputs()), session.run(None, {"images": batch})))


def _check_values(head: str, task: str, y: np.ndarray, classes: int) -> None:
    """What the gates decode from each layout: probabilities, ranked detections, angles."""
    if task == "classify":
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-4)  # softmax in the graph
    elif head in ("end2end", "rtdetr"):  # [score, class] last, best first
        assert np.all(np.diff(y[..., 4], axis=1) <= 0)
        assert np.array_equal(y[..., 5], np.round(y[..., 5])) and 0 <= y[..., 5].min() <= y[..., 5].max() < classes
    elif head == "yolov5":
        assert 0 <= y[..., 4:].min() and y[..., 4:].max() <= 1  # objectness and class scores are sigmoids
    elif task == "obb":
        assert -math.pi / 4 <= y[:, -1].min() and y[:, -1].max() <= 3 * math.pi / 4  # the angle row, last


@pytest.mark.slow
@pytest.mark.parametrize("recipe_file", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_exports_and_runs_at_batch_two_with_its_head_layout(tmp_path, recipe_file):
    recipe, onnx_path, meta = _export_small(recipe_file, tmp_path)
    size, layout = LAYOUTS[recipe.name]
    images = np.random.default_rng(0).random((2, 3, size, size), np.float32)
    outputs = _run(onnx_path, images)
    assert {name: y.shape for name, y in outputs.items()} == layout
    assert list(outputs) == sorted(layout)  # output0, output1, ... in Ultralytics' order
    _check_values(recipe.verify.head, recipe.verify.task, outputs["output0"], len(meta["names"]))
    alone = _run(onnx_path, images[1:])  # the batch axis is dynamic and images do not mix
    for name, y in outputs.items():
        np.testing.assert_allclose(y[1:], alone[name], atol=1e-4)
    assert meta["task"] == recipe.verify.task and meta["imgsz"] == [size, size]
    assert meta["stride"] == (1 if recipe.verify.task == "classify" else 32)
    # the packaging and the pose gate read keypoints' count and values per keypoint (x, y, visibility) here
    assert meta.get("kpt_shape") == ([17, 3] if recipe.verify.task == "pose" else None)


@pytest.mark.slow
@pytest.mark.parametrize("recipe_name", ["yolov8n-pose", "yolo26n"])
def test_a_trained_ultralytics_checkpoint_in_model_weights_exports_the_same_head(tmp_path, recipe_name, capsys):
    # Ultralytics saves an untrained model exactly as its trainer saves best.pt (the dict, the class path).
    import ultralytics

    recipe = load_recipe(ROOT / "recipes" / f"{recipe_name}.yaml", ROOT, PASSES)
    ultralytics.YOLO(recipe.model.arch).save(tmp_path / "best.pt")
    capsys.readouterr()
    _, onnx_path, meta = _export_small(recipe.file, tmp_path / "out", tmp_path, Path("best.pt"))
    assert "UNTRAINED" not in capsys.readouterr().err
    size, layout = LAYOUTS[recipe_name]
    outputs = _run(onnx_path, np.zeros((2, 3, size, size), np.float32))
    assert {name: y.shape for name, y in outputs.items()} == layout
    assert meta["task"] == recipe.verify.task


@pytest.mark.slow
def test_a_trained_yolov5_checkpoint_in_model_weights_exports_the_decoded_head(tmp_path, capsys):
    # The keys and the half-precision network YOLOv5's train.py saves in best.pt.
    import yolov5
    from yolov5.models.yolo import Model

    net = Model(str(Path(yolov5.__file__).parent / "models" / "yolov5s.yaml"), nc=3)
    net.names = ["car", "bus", "truck"]
    torch.save({"epoch": -1, "model": net.half(), "ema": None, "optimizer": None}, tmp_path / "best.pt")
    capsys.readouterr()
    _, onnx_path, meta = _export_small(ROOT / "recipes" / "yolov5s.yaml", tmp_path / "out", tmp_path, Path("best.pt"))
    assert "UNTRAINED" not in capsys.readouterr().err
    outputs = _run(onnx_path, np.zeros((2, 3, 160, 160), np.float32))
    assert {name: y.shape for name, y in outputs.items()} == {"output0": (2, 1575, 8)}  # xywh, objectness, 3 classes
    assert meta["names"] == {"0": "car", "1": "bus", "2": "truck"} and meta["task"] == "detect"


@pytest.mark.slow
@pytest.mark.parametrize("arch, size", [("yolo26n.yaml", 160), ("yolov8n-seg.yaml", 160), ("yolov8n-obb.yaml", 256)])
def test_export_computes_what_ultralytics_own_onnx_export_computes(tmp_path, monkeypatch, arch, size):
    # The heads whose export attributes differ most (end-to-end top-k, two outputs, angle), same seed,
    # against Ultralytics' exporter with nms=False (the NMS-free head where there is one).
    import ultralytics
    from ultralytics.utils import checks

    from trtforge.recipe import InputSpec, ModelSource

    monkeypatch.setattr(checks, "AUTOINSTALL", False)  # its requirement checks must not pip install mid-test
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    theirs = ultralytics.YOLO(arch).export(format="onnx", nms=False, imgsz=size, simplify=False, opset=17)
    export_onnx(ModelSource("ultralytics", arch=arch, seed=0), InputSpec("images", (1, 3, size, size)), 17,
                tmp_path, tmp_path / "ours.onnx")
    images = np.random.default_rng(0).random((1, 3, size, size), np.float32)
    for mine, reference in zip(_run(tmp_path / "ours.onnx", images).values(), _run(Path(theirs), images).values(),
                               strict=True):
        np.testing.assert_allclose(mine, reference, atol=1e-5)
