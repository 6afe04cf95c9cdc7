"""The recipe loader: valid recipes become frozen dataclasses; every bad one is one line
naming file:line:col, the field and what to do."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest

from trtforge.errors import RecipeError
from trtforge.recipe import load_recipe, load_recipes
from trtforge.surgery import builtin_pass_names

REPO = Path(__file__).resolve().parents[1]
PASSES = {name: None for name in builtin_pass_names()}

VALID = """\
model: {source: ultralytics, arch: yolov8n.yaml}
input: {name: images, shape: [1, 3, 640, 640]}
variants:
  fp16: {precision: fp16}
"""


def load_text(tmp_path: Path, text: str, name: str = "r.yaml"):
    (tmp_path / "recipes").mkdir(exist_ok=True)
    (tmp_path / "calib").mkdir(exist_ok=True)
    file = tmp_path / "recipes" / name
    file.write_text(text)
    return load_recipe(file, tmp_path, PASSES)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(RecipeError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    return message


def test_builtin_recipe_loads_with_its_documented_values():
    recipe = load_recipe(REPO / "recipes" / "yolov8n.yaml", REPO, PASSES)
    assert recipe.name == "yolov8n"
    assert recipe.input.shape == (1, 3, 640, 640)
    assert [v.name for v in recipe.variants] == ["fp32", "fp16", "int8"]
    assert recipe.variant("int8").calibration.images == Path("calib/demo-calibration.txt")
    assert recipe.variant("fp16").build.keep_fp32 == ("/model.22/dfl/*",)
    assert recipe.variant("fp32").build.keep_fp32 == ()
    assert recipe.build.workspace_bytes == 4 << 30
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.name = "other"


def test_variant_build_overrides_only_the_fields_it_names(tmp_path):
    recipe = load_text(tmp_path, VALID.replace("fp16: {precision: fp16}",
                                               "fp16: {precision: fp16, build: {workspace: 512MiB}}")
                       + "build: {optimization_level: 5, workspace: 2GiB}\n")
    build = recipe.variant("fp16").build
    assert build.workspace_bytes == 512 << 20
    assert build.optimization_level == 5


@pytest.mark.parametrize("text, where, fragment", [
    ("model: [unclosed\n", ":1:", "YAML syntax error"),
    (VALID.replace("input:", "inptu:"), ":2:1: inptu", "did you mean 'input'"),
    (VALID + "variants:\n  fp32: {precision: fp32}\n", ":5:1", "duplicate key 'variants'"),
    (VALID.replace("shape: [1, 3, 640, 640]", "shape: [1, 3, 640, 0]"), ":2:", "input.shape[3]"),
    (VALID.replace("[1, 3, 640, 640]", "[1, 3, 640, 640]}\nbuild: {timing_cache: no"),
     "build.timing_cache", "YAML reads unquoted 'no' as false"),
    (VALID + "build: {workspace: 4GB}\n", "build.workspace", "4GiB or 512MiB"),
    (VALID + "build: {workspace: " + "1" * 700 + "GiB}\n", "build.workspace", "4GiB or 512MiB"),  # no int() of 700 digits
    (VALID + "build: {workspace: 1536KiB}\n", "build.workspace", "whole, positive number of MiB"),
    (VALID + "build: {optimization_level: 1e3}\n", "build.optimization_level", "write the number out"),
    (VALID + "build: {optimization_level: 0755}\n", "build.optimization_level", "plain decimal"),
    (VALID.replace("fp16}", "int4}"), "variants.fp16.precision", "allowed: fp32, fp16"),
    (VALID + "surgery: [fold_constant]\n", "surgery", "did you mean 'fold_constants'"),
    (VALID + "build: {plugins: [plugins/missing.so]}\n", "build.plugins[0]", "does not exist"),
    (VALID + "build: {extra_args: ['--fp16']}\n", "build.extra_args[0]", "set by trtforge"),
    (VALID + "build: {extra_args: ['--verbose now']}\n", "build.extra_args[0]", "no spaces"),
    (VALID.replace("arch: yolov8n.yaml", "arch: yolov8n.yaml, weights: models/none.pt"),
     "model.weights", "does not exist"),
    (VALID + "x: &a [1]\ny: *a\n", ":6:", "aliases"),
    (VALID + "build:\n  profiles:\n    - images: {min: [1,3,640,640], opt: [8,3,640,640], max: [4,3,640,640]}\n",
     "build.profiles[0].images", "min <= opt <= max"),
    (VALID + "build:\n  profiles:\n    - image: {min: [1,3,640,640], opt: [1,3,640,640], max: [1,3,640,640]}\n",
     "build.profiles[0].image", "did you mean 'images'"),
    (VALID + "build:\n  profiles:\n    - images: {min: [1,3,320,320], opt: [1,3,640,640], max: [1,3,640,640]}\n",
     "build.profiles[0].images.min", "add 2 to input.dynamic_axes"),
    (VALID + "released: 2024-01-01\n", "released", "unknown key"),
    (VALID + "verify: {images: calib, task: pose, head: rtdetr}\n", "verify.head", "it needs task: detect"),
    (VALID + "verify: {images: calib, task: segmentation}\n", "verify.task", "allowed: detect, segment, classify"),
    (VALID.replace("fp16: {precision: fp16}", "fp16: {precision: fp16, check: {min_agreement_vs_fp32: 0.5}}")
     + "verify: {images: calib, task: raw}\n", "variants.fp16.check.min_agreement_vs_fp32", "no task-aware gate"),
    (VALID.replace("fp16: {precision: fp16}", "fp16: {precision: fp16, check: {min_recall_vs_fp32: 0.5}}")
     + "verify: {images: calib, task: classify}\n", "recipes/r.yaml:4:55: variants.fp16.check.min_recall_vs_fp32",
     "verify.task classify has no recall or precision; its floor is min_agreement_vs_fp32"),
    (VALID.replace("fp16: {precision: fp16}", "fp16: {precision: fp16, check: {min_precision_vs_fp32: 1.5}}")
     + "verify: {images: calib}\n", "variants.fp16.check.min_precision_vs_fp32", "1.5 is out of range"),
    (VALID.replace("fp16: {precision: fp16}", "fp16: {precision: fp16, check: {min_recall_vs_fp32: high}}")
     + "verify: {images: calib}\n", "variants.fp16.check.min_recall_vs_fp32", "expected a number from 0 to 1"),
    ("", "", "file is empty"),
    ("\n  \n", "", "file is empty"),
    # a copy of my-model.yaml.example whose fields were never uncommented is not "empty" (issue 14)
    ("# A recipe for your own model.\n#\n# model:\n#   source: ultralytics\n", "recipes/r.yaml: ",
     ("file holds only comments; uncomment its fields (model, input and variants at least, as "
      "recipes/my-model.yaml.example shows them) and fix their values; docs/recipes.md in the trtforge repository "
      "lists every field")),
    (VALID.replace("name: images", "name: 123"), "input.name", "expected text, got int 123"),
])
def test_bad_recipe_is_one_line_naming_the_place(tmp_path, text, where, fragment):
    message = error_of(tmp_path, text)
    assert message.startswith("recipes/r.yaml"), message
    assert where in message and fragment in message, message


def test_a_copy_of_the_commented_example_says_to_uncomment_it_not_that_it_is_empty(tmp_path):
    from importlib import resources

    example = (resources.files("trtforge") / "examples" / "my-model.yaml.example").read_text()
    assert error_of(tmp_path, example).startswith("recipes/r.yaml: file holds only comments; uncomment its fields")


CLASSIFIER = """\
model: {source: torch, factory: torchvision.models:resnet18}
input: {name: x, shape: [1, 3, 224, 224]}
verify: {images: calib, task: classify}
variants:
  fp16: {precision: fp16}
package: {ultralytics_engine: true}
"""
ULTRALYTICS_CLS = CLASSIFIER.replace("{source: torch, factory: torchvision.models:resnet18}",
                                     "{source: ultralytics, arch: yolov8n-cls.yaml}")
ENGINE_FIELD = "recipes/r.yaml:6:31: package.ultralytics_engine: Ultralytics' YOLO() "


NOT_ULTRALYTICS = "runs Ultralytics models, and model.source {} is not one; remove it (the release's " \
                  "engine.plan loads in TensorRT directly)"
CLASSIFY_FEED = ("feeds the engine as its own predictor does, not as input.preprocess says; set input.preprocess: "
                 "{preset: ultralytics, resize: shortest_edge, resize_to: 224} (classify), or remove "
                 "package.ultralytics_engine")


@pytest.mark.parametrize("text, fragment", [
    (CLASSIFIER, NOT_ULTRALYTICS.format("torch")),
    (CLASSIFIER.replace("source: torch, factory: torchvision.models:resnet18", "source: yolov5, arch: yolov5s.yaml"),
     NOT_ULTRALYTICS.format("yolov5")),
    # an Ultralytics classifier fed as Ultralytics feeds detectors (trtforge's default), or as torchvision does
    (ULTRALYTICS_CLS, CLASSIFY_FEED),
    (ULTRALYTICS_CLS.replace("224]}", "224], preprocess: imagenet}"), CLASSIFY_FEED),
    (ULTRALYTICS_CLS.replace("task: classify}", "head: nms}"),
     "cannot decode verify.head nms's outputs; remove it (the release's engine.plan loads in TensorRT directly)"),
])
def test_an_ultralytics_engine_is_refused_where_yolo_would_feed_or_decode_it_otherwise(tmp_path, text, fragment):
    """`YOLO("x.engine")` feeds the engine as Ultralytics' predictor feeds its task and decodes
    Ultralytics' heads only: a torchvision classifier fed ImageNet's mean/std would be fed wrongly."""
    assert error_of(tmp_path, text) == ENGINE_FIELD + fragment


def test_an_ultralytics_engine_is_allowed_where_the_recipe_feeds_as_ultralytics_does(tmp_path):
    classify = "224], preprocess: {resize: shortest_edge, resize_to: 224}}"
    assert load_text(tmp_path, ULTRALYTICS_CLS.replace("224]}", classify)).package.ultralytics_engine
    # without verify.task the task is not known here: either of Ultralytics' own feeds loads (the
    # package stage checks it against the model's task), anything else is refused
    no_verify = ULTRALYTICS_CLS.replace("verify: {images: calib, task: classify}\n", "")
    assert load_text(tmp_path, no_verify).package.ultralytics_engine
    assert load_text(tmp_path, no_verify.replace("224]}", classify)).package.ultralytics_engine
    message = error_of(tmp_path, no_verify.replace("224]}", "224], preprocess: imagenet}"))
    assert message.startswith("recipes/r.yaml:5:31: package.ultralytics_engine: ") and message.endswith(
        "set input.preprocess: ultralytics (detect) or {preset: ultralytics, resize: shortest_edge, resize_to: 224} "
        "(classify), or remove package.ultralytics_engine"), message


FLOORS = ("min_agreement_vs_fp32", "min_recall_vs_fp32", "min_precision_vs_fp32")


@pytest.mark.parametrize("task, expected", [
    ("detect", {"fp32": (0.99, 0.99, 0.99), "fp16": (0.9, 0.5, 0.97), "int8": (0.8, 0.9, 0.9)}),
    ("pose", {"fp32": (0.99, 0.99, 0.99), "fp16": (0.9, 0.5, 0.97), "int8": (0.8, 0.9, 0.9)}),
    ("classify", {"fp32": (0.99, None, None), "fp16": (0.9, None, None), "int8": (0.8, None, None)}),
    ("raw", {"fp32": (None, None, None), "fp16": (None, None, None), "int8": (None, None, None)}),
])
def test_gate_floors_default_per_precision_where_the_task_has_the_figure(tmp_path, task, expected):
    recall = "{min_recall_vs_fp32: 0.5}" if task in ("detect", "pose") else "{}"
    recipe = load_text(tmp_path, f"""\
model: {{source: ultralytics, arch: yolov8n.yaml}}
input: {{name: images, shape: [1, 3, 640, 640]}}
verify: {{images: calib, task: {task}}}
variants:
  fp32: {{precision: fp32}}
  fp16: {{precision: fp16, check: {recall}}}
  int8: {{precision: int8, calibration: {{images: calib}}}}
""")
    assert {v.name: tuple(getattr(v.check, f) for f in FLOORS) for v in recipe.variants} == expected


def test_dates_are_text_in_text_fields(tmp_path):
    recipe = load_text(tmp_path, VALID + "description: 2024-01-01\n")
    assert recipe.description == "2024-01-01"


def test_alias_bomb_is_refused_quickly(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
    started = time.monotonic()
    assert "aliases" in error_of(tmp_path, bomb)
    assert time.monotonic() - started < 1.0


def test_oversized_recipe_is_refused_before_parsing(tmp_path):
    assert "larger than" in error_of(tmp_path, "# " + "x" * (300 * 1024) + "\n")


def test_two_recipes_with_one_name_are_both_set_aside_and_a_broken_one_alone(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "a.yaml").write_text("name: same\n" + VALID)
    (tmp_path / "recipes" / "b.yaml").write_text("name: same\n" + VALID)
    (tmp_path / "recipes" / "c.yaml").write_text(VALID + "bogus: 1\n")
    (tmp_path / "recipes" / "d.yaml").write_text(VALID)
    loaded, broken = load_recipes(tmp_path / "recipes", tmp_path, PASSES)
    assert [r.name for r in loaded] == ["d"]
    assert [str(b.error) for b in broken] == [
        "recipes/a.yaml: name: recipe name 'same' is also used by b.yaml; rename one",
        "recipes/b.yaml: name: recipe name 'same' is also used by a.yaml; rename one",
        error_of(tmp_path, VALID + "bogus: 1\n").replace("r.yaml", "c.yaml")]
    assert [sorted(b.names) for b in broken] == [["a", "same"], ["b", "same"], ["c"]]


def test_error_location_points_at_the_offending_value(tmp_path):
    text = VALID + "build:\n  workspace: lots\n"
    message = error_of(tmp_path, text)
    assert re.match(r"recipes/r.yaml:6:14: build.workspace: ", message), message
