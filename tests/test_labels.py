"""verify.labels: FP32's and each variant's boxes scored against YOLO labels, as `yolo val` scores them.

Measured here (trained person detector, 320 px, the three photos of the `people` project):
FP32 P 0.652, R 0.667, mAP50 0.688, mAP50-95 0.219, and Ultralytics' own `YOLO(...).val()` of the
.pt on the same dataset yaml prints the same four figures.

The labels of bus.jpg and zidane.jpg (Ultralytics' own sample photos) were written for these
tests: the people's boxes in original pixels, drawn on the photos and checked by eye, then
normalised (bus.jpg 810x1080: four people, one cut by the left edge; zidane.jpg 1280x720: two).
All are class 0 (Normal) of the trained person detector (tests/test_trained_detector.py).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import make_project, run_doit
from test_check import job, reference  # noqa: F401 - reference is a fixture: a synthetic detector's check

from trtforge.gates.detect import Detections
from trtforge.gates.labels import GroundTruth, LabelError, figures, input_pixels, label_path, read_labels

ASSETS = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets"
SKIMAGE = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
PIXEL_BOXES = {"bus.jpg": [(48, 398, 245, 902), (670, 380, 809, 875), (221, 405, 344, 857), (0, 550, 63, 873)],
               "zidane.jpg": [(747, 41, 1143, 710), (123, 193, 714, 719)]}
BUS_LABELS = """\
0 0.1809 0.6019 0.2432 0.4667
0 0.9130 0.5810 0.1716 0.4583
0 0.3488 0.5843 0.1519 0.4185
0 0.0389 0.6588 0.0778 0.2991
"""
ZIDANE_LABELS = """\
0 0.7383 0.5215 0.3094 0.9292
0 0.3270 0.6333 0.4617 0.7306
"""


# ----------------------------------------------------------------------------- where labels are

@pytest.mark.parametrize("image", ["data/people/images/val/a.jpg", "data/images/people/images/b.png",
                                   "calib/people/c.jpeg", "package:ultralytics/assets/bus.jpg", "/abs/images/d.v2.jpg"])
def test_label_files_are_where_ultralytics_looks_for_them(image):
    from ultralytics.data.utils import img2label_paths

    assert label_path(image) == img2label_paths([image])[0]


# ----------------------------------------------------------------------------- where boxes land

@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
@pytest.mark.parametrize("input_hw", [(320, 320), (160, 160), (256, 320)])  # small: the arithmetic is the same at 640
def test_labels_land_where_scale_boxes_takes_the_models_boxes_back_from(photo, input_hw):
    """ops.scale_boxes is how Ultralytics' predictor maps boxes from the model's input back to
    the photo: mapping a label into the input and back with it returns the photo's box."""
    import cv2
    import torch
    from ultralytics.utils import ops

    h0, w0 = cv2.imread(str(ASSETS / photo)).shape[:2]
    boxes = np.array(PIXEL_BOXES[photo], np.float64)
    xywhn = ops.xyxy2xywh(boxes) / [w0, h0, w0, h0]
    mapped = input_pixels(xywhn, h0, w0, *input_hw)
    back = ops.scale_boxes(input_hw, torch.from_numpy(mapped.astype(np.float64)), (h0, w0)).numpy()
    np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_labels_land_on_the_letterboxed_pixels_they_label():
    """A block painted on the real photo at a label's box is found, after the preprocessing's
    letterbox, where the mapping puts the label (to a pixel: the resize blurs the edges)."""
    import cv2

    from trtforge.images import letterbox

    photo = cv2.imread(str(ASSETS / "zidane.jpg"))
    x1, y1, x2, y2 = PIXEL_BOXES["zidane.jpg"][0]
    photo[y1:y2, x1:x2] = (0, 255, 0)
    boxed = letterbox(photo, 320, 320)
    green = np.argwhere((boxed[..., 1] > 200) & (boxed[..., 0] < 60) & (boxed[..., 2] < 60))
    found = [green[:, 1].min(), green[:, 0].min(), green[:, 1].max() + 1, green[:, 0].max() + 1]
    h0, w0 = photo.shape[:2]
    label = [(x1 + x2) / 2 / w0, (y1 + y2) / 2 / h0, (x2 - x1) / w0, (y2 - y1) / h0]
    np.testing.assert_allclose(input_pixels([label], h0, w0, 320, 320)[0], found, atol=1.0)


# ----------------------------------------------------------------------------- what a line is

def write(tmp_path: Path, text: str, name: str = "a.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_label_files_read_as_ultralytics_reads_them(tmp_path):
    from ultralytics.utils.ops import segments2boxes

    rows = read_labels(write(tmp_path, "\ufeff0 0.5 0.5 0.2 0.4\n\n   \n1 0.25 0.75 0.1 0.1\n0 0.5 0.5 0.2 0.4\n"),
                       "a.txt")
    np.testing.assert_allclose(rows, [[0, 0.5, 0.5, 0.2, 0.4], [1, 0.25, 0.75, 0.1, 0.1]])  # BOM, blanks, duplicate
    polygon = [0.1, 0.2, 0.5, 0.1, 0.4, 0.6, 0.2, 0.5]
    rows = read_labels(write(tmp_path, "2 " + " ".join(map(str, polygon)) + "\n", "p.txt"), "p.txt")
    np.testing.assert_allclose(rows[0, 1:], segments2boxes([np.array(polygon).reshape(-1, 2)])[0])
    assert rows[0, 0] == 2
    assert read_labels(write(tmp_path, "", "empty.txt"), "empty.txt").shape == (0, 5)


@pytest.mark.parametrize("line, says", [
    ("0 0.5 0.5 0.2", "4 values"),
    ("0 0.5 0.5 0.2 0.4 0.9", "6 values"),  # a prediction file (save_conf) is not a label file
    ("person 0.5 0.5 0.2 0.4", "'person' is not a number"),
    ("1.5 0.5 0.5 0.2 0.4", "class '1.5' is not a class index"),
    ("-1 0.5 0.5 0.2 0.4", "class '-1' is not a class index"),
    ("nan 0.5 0.5 0.2 0.4", "class 'nan' is not a class index"),
    ("0 0.5 inf 0.2 0.4", "inf is not a normalised coordinate"),
    ("0 320 240 50 80", "320 is not a normalised coordinate"),
    ("0 0.5 0.5 -0.2 0.4", "-0.2 is not a normalised coordinate"),
    ("0 0.1 0.2 0.5 0.1 0.4 0.6", "a polygon line in a file of box lines"),
    ("5 0.5 0.5 0.2 0.4", "class 5, but the dataset names 2 classes"),
])
def test_a_bad_line_is_one_line_naming_file_and_line(tmp_path, line, says):
    path = write(tmp_path, f"0 0.5 0.5 0.2 0.4\n\n{line}\n")
    with pytest.raises(LabelError) as caught:
        read_labels(path, "calib/people/labels/a.txt", names=("Normal", "Fall"))
    message = str(caught.value)
    assert message.startswith("calib/people/labels/a.txt:3: ") and says in message and "\n" not in message, message


# ----------------------------------------------------------------------------- how they are scored

def ultralytics_validation(found: list[Detections], truths: list[GroundTruth], names: tuple[str, ...],
                           input_hw: tuple[int, int], save_dir: Path) -> dict:
    """Ultralytics' DetectionValidator itself (update_metrics, get_stats) on these detections and
    labels, fed as its dataloader would feed it (labels normalised to the letterboxed input)."""
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import ops

    validator = DetectionValidator(save_dir=save_dir, args={"plots": False, "save_json": False, "save_txt": False})
    # what init_metrics sets from a model and a dataloader
    validator.names = validator.metrics.names = dict(enumerate(names))
    validator.nc, validator.seen, validator.end2end = len(names), 0, False
    validator.is_custom_json = validator.build_gdict = False
    h, w = input_hw
    for index, (image, truth) in enumerate(zip(found, truths)):
        batch = {"cls": torch.from_numpy(truth.classes).float()[:, None],
                 "bboxes": (ops.xyxy2xywh(torch.from_numpy(truth.boxes)) / torch.tensor([w, h, w, h])).float(),
                 "batch_idx": torch.zeros(len(truth.classes)), "img": torch.zeros(1, 3, h, w),
                 "ori_shape": [input_hw], "ratio_pad": [None], "im_file": [f"{index}.jpg"]}
        prediction = {"bboxes": torch.from_numpy(image.boxes), "conf": torch.from_numpy(image.scores),
                      "cls": torch.from_numpy(image.classes).float(), "extra": torch.zeros(len(image), 0)}
        validator.update_metrics([prediction], batch)
    return validator.get_stats()


def same_as_yolo_val(figures_: dict, stats: dict) -> None:
    for ours, theirs in (("precision", "precision(B)"), ("recall", "recall(B)"), ("map50", "mAP50(B)"),
                         ("map50_95", "mAP50-95(B)")):
        assert figures_[ours] == pytest.approx(stats[f"metrics/{theirs}"], abs=1e-9), ours


def test_figures_are_ultralytics_validators_on_the_same_detections(tmp_path):
    """Random boxes over three classes, images with no label, with no detection, with both."""
    rng = np.random.default_rng(0)
    found, truths = [], []
    for _ in range(8):
        n, m = rng.integers(0, 5, 2)
        corner = rng.uniform(0, 250, (n, 2))
        labelled = np.concatenate([corner, corner + rng.uniform(10, 70, (n, 2))], 1).astype(np.float32)
        classes = rng.integers(0, 3, n)
        truths.append(GroundTruth(classes.astype(np.int64), labelled))
        kept = min(m, n)
        strays = np.concatenate([rng.uniform(0, 250, (m - kept, 2))] * 2, 1) + [0, 0, 30, 30]
        boxes = np.concatenate([labelled[:kept] + rng.normal(0, 6, (kept, 4)), strays]).astype(np.float32)
        order = np.argsort(-rng.uniform(size=m))
        found.append(Detections(boxes[order], rng.uniform(0.001, 1, m).astype(np.float32)[order],
                                np.concatenate([classes[:kept], rng.integers(0, 3, m - kept)])[order].astype(np.int64)))
    names = ("a", "b", "c")
    ours = figures(found, truths, names)
    same_as_yolo_val(ours, ultralytics_validation(found, truths, names, (320, 320), tmp_path / "val"))
    assert 0 < ours["map50_95"] < ours["map50"] < 1 and set(ours["per_class"]) <= set(names)


def test_segment_boxes_are_scored_without_their_masks():
    """A segment head [B, 4+nc+32, N] with its prototypes: the boxes are decoded from the head
    (2 classes, 32 coefficients) and a box on its label scores Ultralytics' full 0.995."""
    from trtforge.gates import GateSetting
    from trtforge.gates.labels import boxes_of

    head = np.zeros((1, 4 + 2 + 32, 10), np.float32)
    head[0, :4, 0] = [100, 80, 40, 60]  # xywh input pixels
    head[0, 5, 0] = 0.9  # class 1
    outputs = [{"output0": head, "output1": np.zeros((1, 32, 40, 40), np.float32)}]
    setting = GateSetting("segment", "yolo", conf=0.001, iou=0.7, floor=0.9, image_hw=(160, 160))
    (found,) = boxes_of(outputs, setting)
    np.testing.assert_allclose(found.boxes, [[80, 50, 120, 110]])
    result = figures([found], [GroundTruth(np.array([1]), np.array([[80, 50, 120, 110]], np.float32))], ())
    assert result["map50"] == pytest.approx(0.995) and result["map50_95"] == pytest.approx(0.995)
    assert list(result["per_class"]) == ["1"]


# ----------------------------------------------------------------------------- in the check

def photo_with_labels(folder: Path, labels: str | None) -> Path:
    """A 48x32 image under folder/images/ and, unless None, its label file under folder/labels/."""
    import cv2

    (folder / "images").mkdir(parents=True)
    cv2.imwrite(str(folder / "images" / "a.png"), np.full((32, 48, 3), 90, np.uint8))
    if labels is not None:
        (folder / "labels").mkdir()
        (folder / "labels" / "a.txt").write_text(labels)
    return folder / "images"


def test_images_without_label_files_give_no_figures_and_say_where_labels_were_looked_for(tmp_path):
    from trtforge.errors import StageError
    from trtforge.gates import GateSetting
    from trtforge.gates.labels import label_set, labels_report
    from trtforge.images import list_image_set

    images = list_image_set(photo_with_labels(tmp_path / "set", None), tmp_path)
    setting = GateSetting("detect", "yolo", conf=0.25, iou=0.7, floor=0.9, image_hw=(32, 32))
    report = labels_report(label_set(images, "yolo"), ["set/images/a.png"], [], [], setting)
    assert report == {"source": "yolo", "images": 1, "labelled_images": 0, "instances": 0,
                      "status": "skipped: no label file for any of the 1 verification images (the first would be "
                                "set/labels/a.txt)"}
    # a reference on other images (doit -s check:... after verify.images changed) is refused in one line
    with pytest.raises(StageError, match="^set/images/b.png is a reference image but no longer among verify.images; "
                                         "rerun the reference$"):
        labels_report(label_set(images, "yolo"), ["set/images/b.png"], [], [], setting)


def test_a_variant_without_the_reference_outputs_is_not_scored_against_labels(reference, tmp_path):
    """The check fails on the missing output, naming it; the labels section still scores FP32."""
    import onnx

    from trtforge.errors import StageError
    from trtforge.gates.labels import label_set
    from trtforge.images import list_image_set
    from trtforge.stages.check import run_check

    model, folder = reference
    renamed = onnx.load(str(model))
    renamed.graph.node[-1].output[0] = renamed.graph.output[0].name = "scores"
    onnx.save(renamed, str(tmp_path / "renamed.onnx"))
    images = list_image_set(photo_with_labels(tmp_path / "set", "0 0.5 0.5 0.5 0.5\n"), tmp_path)
    (folder / "images.json").write_text(json.dumps([images[0].name]))
    checked = replace(job(folder, tmp_path / "renamed.onnx"), labels=label_set(images, "yolo"),
                      reference_images=folder / "images.json")
    with pytest.raises(StageError, match="onnx output 'output0': the variant has no such output"):
        run_check(checked)
    labels = json.loads((folder / "check.json").read_text())["labels"]
    assert labels["status"] == "measured" and labels["instances"] == 1 and "map50" in labels["reference"]
    assert labels["variant"] == {"status": "skipped: the variant lacks the reference's outputs"}


# ----------------------------------------------------------------------------- in a recipe

def recipe_with(tmp_path: Path, verify: str, dataset: str | None = None):
    from test_recipe import load_text

    if dataset is not None:
        (tmp_path / "data" / "people" / "images").mkdir(parents=True)
        (tmp_path / "data" / "people.yaml").write_text(dataset)
    return load_text(tmp_path, f"""\
model: {{source: ultralytics, arch: yolov8n.yaml}}
input: {{name: images, shape: [1, 3, 640, 640]}}
verify: {verify}
variants:
  fp16: {{precision: fp16}}
""")


def test_labels_yolo_or_a_dataset_yaml_whose_val_split_is_the_default_images(tmp_path):
    recipe = recipe_with(tmp_path, "{images: calib, labels: yolo}")
    assert recipe.verify.labels.dataset is None and recipe.verify.images == Path("calib")
    recipe = recipe_with(tmp_path, "{labels: data/people.yaml}",
                         "path: data/people\nval: images\nnames: {0: Normal, 1: Fall}\n")
    assert recipe.verify.labels.names == ("Normal", "Fall") and recipe.verify.images == Path("data/people/images")


@pytest.mark.parametrize("verify, dataset, says", [
    ("{images: calib, task: pose, labels: yolo}", None,
     "r.yaml:3:45: verify.labels: labels score boxes: task detect or segment only (verify.task is pose)"),
    ("{images: calib, labels: true}", None, "verify.labels: boolean true is neither `yolo`"),
    ("{images: calib, labels: data/missing.yaml}", None, "verify.labels: 'data/missing.yaml' is neither `yolo`"),
    ("{labels: data/people.yaml}", "path: ../elsewhere\nval: images\nnames: [person]\n",
     "data/people.yaml: val: 'images' is no folder or image list (looked at "),
    ("{labels: data/people.yaml}", "val: [people/images, more/images]\nnames: [person]\n",
     "data/people.yaml: val: give one folder or image list"),
    ("{labels: data/people.yaml}", "val: people/images\nnames: {1: person}\n", "data/people.yaml: names: expected"),
    ("{labels: data/people.yaml}", "names: [person]\n", "verify: missing required key 'images'"),
])
def test_a_bad_verify_labels_is_one_line(tmp_path, verify, dataset, says):
    from trtforge.errors import RecipeError

    with pytest.raises(RecipeError) as caught:
        recipe_with(tmp_path, verify, dataset)
    assert says in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


# ----------------------------------------------------------------------------- in a real project

RECIPE = """\
model: {source: ultralytics, arch: yolov8n.yaml, weights: models/people.pt}
input: {name: images, shape: [1, 3, 320, 320], dynamic_axes: [0]}
surgery: [fold_constants, slim, infer_shapes]
verify: {labels: calib/people.yaml, count: 3, task: detect}
variants:
  fp32: {precision: fp32}
  fp16: {precision: fp16}
"""
DATASET = "path: calib/people\ntrain: images\nval: images\nnames: {0: Normal, 1: Fall}\n"  # as Ultralytics writes them


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> tuple[Path, dict]:
    """A project verifying the trained detector at 320 px on an Ultralytics dataset: bus.jpg and
    zidane.jpg with their labels in the parallel labels/ folder, and scikit-image's coffee cup
    with no label file (no object), after `doit cpu:people package:people-fp32` against the
    TensorRT 10.8 double; with the environment its doit runs need (the tests only read it)."""
    from doubles.trtexec import make_wrapper
    from test_trained_detector import trained_checkpoint

    base = tmp_path_factory.mktemp("labels")
    project = make_project(base / "proj", {"people": RECIPE})
    (project / "models").mkdir()
    shutil.copy(trained_checkpoint(), project / "models" / "people.pt")
    folder = project / "calib" / "people"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for photo in (ASSETS / "bus.jpg", ASSETS / "zidane.jpg", SKIMAGE / "coffee.png"):
        shutil.copy(photo, folder / "images")
    (folder / "labels" / "bus.txt").write_text(BUS_LABELS)
    (folder / "labels" / "zidane.txt").write_text(ZIDANE_LABELS)
    (project / "calib" / "people.yaml").write_text(DATASET)
    env = {"TRTEXEC": str(make_wrapper(base / "bin", "10.8"))}
    result = run_doit(project, "cpu:people", "package:people-fp32", env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return project, env


def check_report(project: Path, variant: str) -> dict:
    return json.loads((project / "artifacts/people" / variant / "check.json").read_text())


@pytest.mark.slow
def test_fp32_against_labels_is_what_ultralytics_validator_gives_for_the_same_detections(people, tmp_path):
    from polygraphy.comparator import RunResults

    from trtforge.gates import GateSetting
    from trtforge.gates.labels import boxes_of, ground_truth, label_set
    from trtforge.images import list_image_set

    people, _ = people
    labels = check_report(people, "fp32")["labels"]
    assert (labels["images"], labels["labelled_images"], labels["instances"]) == (3, 2, 6)
    assert labels["status"] == "measured" and labels["source"] == "calib/people.yaml"
    # the same detections, decoded from the reference's outputs, and the same labels, in images.json's order
    (_, outputs), = RunResults.load(str(people / "artifacts/people/reference/outputs.json")).items()
    setting = GateSetting("detect", "yolo", conf=0.001, iou=0.7, floor=None, image_hw=(320, 320))
    found = boxes_of([dict(iteration) for iteration in outputs], setting)
    order = json.loads((people / "artifacts/people/reference/images.json").read_text())
    images = list_image_set(people / "calib/people/images", people)
    items = {i.image.name: i for i in label_set(images, "calib/people.yaml").images}
    truths = [ground_truth(items[name], (320, 320), ()) for name in order]
    same_as_yolo_val(labels["reference"], ultralytics_validation(found, truths, ("Normal", "Fall"), (320, 320),
                                                                 tmp_path))
    # FP32 after surgery and FP16 score as the reference does
    for variant in ("fp32", "fp16"):
        scored = check_report(people, variant)["labels"]
        assert scored["variant"]["map50"] == pytest.approx(scored["reference"]["map50"], abs=0.02), scored


@pytest.mark.slow
def test_fp32_against_labels_is_what_yolo_val_prints_for_the_checkpoint(people, tmp_path):
    """End to end, independently of trtforge: Ultralytics loads the dataset yaml and the labels
    itself, letterboxes the photos square (rect=False: the ONNX input is square) and runs the
    .pt under torch; the ONNX Runtime reference agrees to rounding."""
    from ultralytics import YOLO

    people, _ = people
    dataset = shutil.copytree(people / "calib", tmp_path / "calib")  # Ultralytics writes a labels.cache there
    (dataset / "people.yaml").write_text(DATASET.replace("calib/people", str(dataset / "people")))
    metrics = YOLO(people / "models/people.pt").val(data=str(dataset / "people.yaml"), imgsz=320, rect=False,
                                                     batch=1, plots=False, device="cpu", workers=0,
                                                     project=str(tmp_path / "runs"), verbose=False)
    reference = check_report(people, "fp32")["labels"]["reference"]
    yolo_val = {"precision": metrics.box.mp, "recall": metrics.box.mr, "map50": metrics.box.map50,
                "map50_95": metrics.box.map}
    assert {k: round(reference[k], 3) for k in yolo_val} == {k: round(v, 3) for k, v in yolo_val.items()}


@pytest.mark.slow
def test_compare_carries_each_variants_figures_against_labels(people):
    people, _ = people
    report = json.loads((people / "artifacts/people/compare.json").read_text())
    for row in report["variants"]:
        scored = check_report(people, row["variant"])["labels"]["variant"]
        assert row["labels"]["map50"] == round(scored["map50"], 4)
        assert row["labels"]["map50_95"] == round(scored["map50_95"], 4)
    table = (people / "artifacts/people/compare.md").read_text()
    assert "vs labels mAP50 / 50-95" in table and "Against verify.labels, the FP32 reference" in table


@pytest.mark.slow
def test_the_release_manifest_carries_the_figures_against_labels(people):
    project, _ = people
    record = json.loads((project / "artifacts/release/people-fp32.release.json").read_text())
    with tarfile.open(project / "artifacts/release" / record["archive"]) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("/manifest.json"))
        manifest = json.load(archive.extractfile(member))
    labels = manifest["verification"]["labels"]
    scored = check_report(project, "fp32")["labels"]
    assert labels["instances"] == 6 and labels["status"] == "measured"
    for side in ("reference", "variant"):
        assert labels[side] == {k: scored[side][k] for k in ("precision", "recall", "map50", "map50_95")}


@pytest.mark.slow
def test_a_malformed_label_fails_the_check_in_one_line(people):
    project, env = people
    labels = project / "calib/people/labels/bus.txt"
    labels.write_text(BUS_LABELS + "0 0.5 0.5 0.2\n")
    try:
        result = run_doit(project, "check:people-fp32", env=env)
    finally:
        labels.write_text(BUS_LABELS)  # the check's last success read these: it is up to date again
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "bus.txt:5" in line]
    assert lines == ["check:people-fp32: verify.labels: calib/people/labels/bus.txt:5: 4 values; a YOLO label line "
                     "is `class x_center y_center width height` normalised to 0..1, or `class x1 y1 x2 y2 x3 y3 ...` "
                     "(a polygon)"], result.stdout + result.stderr


@pytest.mark.slow
def test_a_label_edit_reruns_only_the_checks_and_what_reads_them(people):
    """Last in this file: it leaves the project with other labels (the other tests read the figures)."""
    from conftest import executed

    project, env = people
    (project / "calib/people/labels/zidane.txt").write_text(ZIDANE_LABELS.splitlines()[0] + "\n")  # a person fewer
    result = run_doit(project, "cpu:people", "package:people-fp32", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert sorted(executed(result)) == ["check:people-fp16", "check:people-fp32", "compare:people",
                                        "package:people-fp32"]  # and what reads check.json
    assert check_report(project, "fp32")["labels"]["instances"] == 5

    (project / "calib/people/labels/coffee.txt").write_text("")  # a new label file, empty: no object
    result = run_doit(project, "check:people-fp32", env=env)
    assert executed(result) == ["check:people-fp32"], result.stdout
    assert check_report(project, "fp32")["labels"]["labelled_images"] == 3
