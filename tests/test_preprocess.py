"""input.preprocess: how images become a model's input for calibration, references and gates.

Ultralytics' letterbox stays the default for YOLO sources; a torch factory (torchvision's
classifiers) gets ImageNet's transforms, pinned here against torchvision's own on a real
photograph; the recipe can name a preset or change any field, in one line per mistake."""

from __future__ import annotations

import numpy as np
import pytest
from test_calibration import demo_images
from test_recipe import error_of, load_text

from trtforge.images import (
    IMAGENET,
    ULTRALYTICS,
    Preprocess,
    decode_image,
    preprocess,
    read_image_bytes,
)

VALID = """\
model: {source: torch, factory: "torchvision.models:resnet18"}
input: {name: x, shape: [1, 3, 224, 224]}
variants: {fp32: {precision: fp32}}
"""


def photo():
    """A real photograph (not square), decoded as every stage decodes it: BGR uint8."""
    ref = demo_images()[0]
    return decode_image(read_image_bytes(ref), ref.name)


def test_imagenet_preprocessing_is_what_torchvision_feeds_its_classifiers():
    from PIL import Image
    from torchvision.models import ResNet18_Weights

    image = photo()
    theirs = ResNet18_Weights.IMAGENET1K_V1.transforms()(Image.fromarray(image[..., ::-1].copy())).numpy()
    ours = preprocess(image, 224, 224, IMAGENET)
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours[0] - theirs).max() < 1e-5


def test_the_default_is_ultralytics_letterbox_for_yolo_sources_and_imagenet_for_torch_factories(tmp_path):
    assert load_text(tmp_path, VALID).input.preprocess == IMAGENET
    yolo = VALID.replace('source: torch, factory: "torchvision.models:resnet18"', "source: ultralytics, arch: yolov8n.yaml")
    assert load_text(tmp_path, yolo).input.preprocess == ULTRALYTICS
    changed = load_text(tmp_path, VALID.replace("shape: [1, 3, 224, 224]", "shape: [1, 3, 224, 224], preprocess: "
                                                "{preset: imagenet, resize_to: 232, channels: bgr}"))
    assert changed.input.preprocess == Preprocess(resize="shortest_edge", resize_to=232, channels="bgr",
                                                  mean=IMAGENET.mean, std=IMAGENET.std)
    stretched = preprocess(photo(), 64, 96, Preprocess(resize="stretch", scale=1.0, mean=(1, 2, 3)))
    assert stretched.shape == (1, 3, 64, 96) and stretched.max() > 200  # 0..255 minus the mean: scale 1


@pytest.mark.parametrize("field, says", [
    ("preprocess: imagenett", "input.preprocess.preset: got str 'imagenett'; allowed: ultralytics, imagenet"),
    ("preprocess: {mean: [0.5, 0.5]}", "input.preprocess.mean: give 3 numbers, one per channel"),
    ("preprocess: {std: [0.2, 0, 0.2]}", "input.preprocess.std[1]: 0 is out of range"),
    ("preprocess: {resize_to: 200}", "input.preprocess.resize_to: 200 is smaller than the input's 224x224 crop"),
    ("preprocess: {resize: squash}", "input.preprocess.resize: got str 'squash'; allowed: letterbox, shortest_edge"),
])
def test_a_bad_preprocess_field_is_one_line(tmp_path, field, says):
    text = VALID.replace("shape: [1, 3, 224, 224]}", "shape: [1, 3, 224, 224], " + field + "}")
    assert says in error_of(tmp_path, text)


def test_labels_need_the_letterbox_their_boxes_are_placed_through(tmp_path):
    text = VALID.replace("model: {source: torch", "verify: {images: calib, labels: yolo}\nmodel: {source: torch")
    assert "verify.labels: label boxes are placed through Ultralytics' letterbox" in error_of(tmp_path, text)


CLASSIFIER = """\
model: {source: torch, factory: "torchvision.models:resnet18"}
input: {name: x, shape: [1, 3, 96, 96]}
verify: {images: calib/verify, count: 2, task: classify}
variants:
  fp32: {precision: fp32}
  int8:
    precision: int8
    calibration: {images: calib/imgs, batch: 2}
"""


@pytest.mark.slow
def test_a_torchvision_classifier_is_calibrated_and_verified_on_imagenet_inputs(tmp_path):
    """The whole CPU chain of a torchvision classifier (96 px: the preprocessing, not the
    size, is under test): references hold exactly the ImageNet-preprocessed photos, the
    untrained factory is named, and calibration and the gate run on those inputs."""
    import json
    import shutil
    from pathlib import Path

    from conftest import executed, make_project, run_doit
    from polygraphy.json import load_json

    project = make_project(tmp_path / "proj", {"cls": CLASSIFIER})
    photos = demo_images()
    for sub, chosen in (("imgs", photos[:4]), ("verify", photos[6:8])):
        (project / "calib" / sub).mkdir(parents=True)
        for ref in chosen:
            shutil.copy(ref.path, project / "calib" / sub / Path(ref.name).name)
    result = run_doit(project, "cpu:cls")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"calib:cls-int8", "reference:cls", "check:cls-fp32", "check:cls-int8"} <= set(executed(result))
    assert "exporting what torchvision.models:resnet18() builds, which is UNTRAINED" in result.stderr
    out = project / "artifacts" / "cls" / "reference"
    names = json.loads((out / "images.json").read_text())
    feeds = load_json(str(out / "inputs.json"))
    for name, feed in zip(names, feeds):
        image = decode_image((project / name).read_bytes(), name)
        assert np.array_equal(feed["x"], preprocess(image, 96, 96, IMAGENET)), name
