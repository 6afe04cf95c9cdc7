"""Task-aware gates (trtforge.gates): each task's figure on realistic synthesized head outputs,
through the gate itself, through real ONNX Runtime and check.run_check, and on a real exported
classifier and real photographs.

Scenes: two 160 px images (the gates' logic does not depend on size) with six objects each
among background anchors scoring 0.01, in the layouts the Ultralytics exports give. One object
per image scores 0.255, just above verify.conf 0.25, as borderline objects do in real outputs.
The "perturbed" copy is what a reduced precision does to a head: boxes and keypoints jittered
by a fraction of a pixel and scores shifted down by 0.02 (so the borderline objects drop out);
the "damaged" copy is what a broken variant does (classes swapped, masks gone, keypoints moved,
boxes turned by 90 degrees, class rankings rotated).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from trtforge.errors import StageError  # noqa: E402
from trtforge.gates import GateSetting, LayoutError, run_gate  # noqa: E402
from trtforge.gates.detect import decode_end2end, decode_rtdetr, decode_yolo, decode_yolov5  # noqa: E402
from trtforge.recipe import CheckSpec, VerifySpec  # noqa: E402
from trtforge.stages.check import CheckJob, run_check  # noqa: E402
from trtforge.stages.reference import RUNNER  # noqa: E402

SIZE, BATCH, ANCHORS, NC, MASKS, KEYPOINTS = 160, 2, 64, 3, 32, 17
SCORES = (0.92, 0.85, 0.7, 0.6, 0.45, 0.255)  # the last one is borderline
FLOOR = 0.9


def objects(width: float, height: float, rows: int = 2, cols: int = 3) -> list[list[tuple]]:
    """Per image, (cx, cy, w, h, class, score) on a grid: apart, so no match is ambiguous."""
    cell_w, cell_h = SIZE / cols, SIZE / rows
    return [[(cell_w * (i % cols + 0.5) + image, cell_h * (i // cols + 0.5), width, height, (i + image) % NC, s)
             for i, s in enumerate(SCORES)] for image in range(BATCH)]


def anchor_head(scene: list[list[tuple]], extra: int, classes: int = NC) -> np.ndarray:
    """[B, 4+classes+extra, ANCHORS]: the objects first, then small background boxes scoring 0.01."""
    head = np.zeros((BATCH, 4 + classes + extra, ANCHORS), np.float32)
    head[:, :4] = np.array([80, 80, 6, 6], np.float32)[:, None]
    head[:, 4:4 + classes] = 0.01
    for image, objs in enumerate(scene):
        for i, (cx, cy, w, h, cls, score) in enumerate(objs):
            head[image, :4, i] = cx, cy, w, h
            head[image, 4 + cls % classes, i] = score
    return head


def jitter(array: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    return array + np.random.default_rng(seed).normal(0, scale, array.shape).astype(np.float32)


def lower_scores(head: np.ndarray, rows: slice) -> np.ndarray:
    head = head.copy()
    head[:, rows] = np.clip(head[:, rows] - 0.02, 0, 1)
    return head


def roll_classes(head: np.ndarray, classes: int = NC) -> np.ndarray:
    head = head.copy()
    head[:, 4:4 + classes] = np.roll(head[:, 4:4 + classes], 1, axis=1)
    return head


# --- one scene per task: (reference outputs, perturbed, damaged), each {name: [B, ...]} ---

def detect_scene():
    head = anchor_head(objects(30, 20), 0)
    perturbed = lower_scores(np.concatenate([jitter(head[:, :4], 0.3), head[:, 4:]], 1), slice(4, None))
    return {"output0": head}, {"output0": perturbed}, {"output0": roll_classes(head)}


def segment_scene():
    scene = objects(40, 36)
    head = anchor_head(scene, MASKS)
    protos = np.full((BATCH, MASKS, SIZE // 4, SIZE // 4), -1.0, np.float32)  # smooth, as trained ones are
    ys, xs = np.mgrid[0:SIZE // 4, 0:SIZE // 4] * 4.0 + 2  # prototype pixel centres in input pixels
    for image, objs in enumerate(scene):
        for i, (cx, cy, w, h, _, _) in enumerate(objs):
            head[image, 4 + NC + i, i] = 1.0  # object i is prototype i: positive on an ellipse inside its box
            protos[image, i] = np.clip(1 - ((xs - cx) / (w * 0.4)) ** 2 - ((ys - cy) / (h * 0.4)) ** 2, -1, 1)
    perturbed = lower_scores(np.concatenate([jitter(head[:, :4], 0.3), head[:, 4:]], 1), slice(4, 4 + NC))
    return ({"output0": head, "output1": protos}, {"output0": perturbed, "output1": jitter(protos, 0.05)},
            {"output0": head, "output1": np.zeros_like(protos)})


def pose_scene():
    scene = [[(cx, cy, w, h, 0, s) for cx, cy, w, h, _, s in image] for image in objects(24, 60)]
    head = anchor_head(scene, KEYPOINTS * 3, classes=1)
    for image, objs in enumerate(scene):
        for i, (cx, cy, w, h, _, _) in enumerate(objs):
            angles = np.linspace(0, 2 * np.pi, KEYPOINTS, endpoint=False)
            kpts = np.stack([cx + 0.4 * w * np.cos(angles), cy + 0.4 * h * np.sin(angles),
                             np.where(np.arange(KEYPOINTS) % 5 == 4, 0.3, 0.9)], 1)  # some not visible
            head[image, 5:, i] = kpts.reshape(-1)
    perturbed = head.copy()
    perturbed[:, :4] = jitter(head[:, :4], 0.3)
    perturbed[:, 5:] = jitter(head[:, 5:], 0.3, seed=1)
    damaged = head.copy()
    damaged[:, 5::3] += 12  # every keypoint 12 px to the right; the boxes stay
    return {"output0": head}, {"output0": lower_scores(perturbed, slice(4, 5))}, {"output0": damaged}


def obb_scene():
    scene = objects(40, 10)
    head = anchor_head(scene, 1)
    head[:, -1, :len(SCORES)] = 0.2 * np.arange(len(SCORES))  # angles in radians
    perturbed = np.concatenate([jitter(head[:, :4], 0.3), head[:, 4:-1], jitter(head[:, -1:], 0.01)], 1)
    damaged = head.copy()
    damaged[:, -1] += np.pi / 2
    return {"output0": head}, {"output0": lower_scores(perturbed, slice(4, 4 + NC))}, {"output0": damaged}


def classify_scene(classes: int = 10, count: int = 8):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, (count, classes))
    logits[np.arange(count), rng.integers(0, classes, count)] += 3  # clear winners
    logits[0] = 0
    logits[0, :2] = [2.0, 1.999]  # one near tie, which small noise can reorder
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    return ({"output0": probs}, {"output0": jitter(probs, 0.002, seed=1)},
            {"output0": np.roll(probs, 1, axis=1)})


SCENES = {"detect": detect_scene, "segment": segment_scene, "pose": pose_scene, "obb": obb_scene,
          "classify": classify_scene}
FIGURES = {"detect": "mAP50", "segment": "mask mAP50", "pose": "OKS mAP50", "obb": "OBB mAP50", "classify": "top-1"}


def setting(task: str, head: str = "yolo") -> GateSetting:
    return GateSetting(task=task, head=head, conf=0.25, iou=0.7, floor=FLOOR, image_hw=(SIZE, SIZE))


def gate(task: str, reference: dict, candidate: dict, head: str = "yolo"):
    return run_gate([reference], [candidate], setting(task, head))


# --- every task: identical, perturbed, damaged ------------------------------------------------

@pytest.mark.parametrize("task", SCENES)
def test_identical_outputs_agree_perfectly(task):
    reference, _, _ = SCENES[task]()
    result = gate(task, reference, reference)
    assert (result.task, result.head, result.figure, result.value, result.floor, result.status) == (
        task, "yolo", FIGURES[task], 1.0, FLOOR, "passed")
    if task != "classify":
        assert result.details["matched"] == result.details["reference_detections"] == 2 * len(SCORES)
    assert json.loads(json.dumps(result.as_json())) == result.as_json()


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_small_noise_drops_borderline_objects_below_the_operating_point_but_keeps_them_ranked(task):
    """Two objects just above verify.conf in FP32 fall just below it in the variant: at the
    operating point they are missed (recall 10/12), but the variant still finds them, ranked
    below every other, so its AP (decoded down to gates.CANDIDATE_CONF, as `yolo val` does)
    stays whole: a score that moved a little costs the operating point, not the ranking."""
    reference, perturbed, _ = SCENES[task]()
    result = gate(task, reference, perturbed)
    d = result.details
    assert (d["matched"], d["candidate_detections"], d["reference_detections"]) == (10, 10, 12)
    assert d["precision"] == 1.0 and d["recall"] == pytest.approx(10 / 12)
    assert result.value == 1.0 and result.status == "passed"
    similarity = next(v for k, v in d.items() if k.startswith("mean_matched_"))
    assert 0.9 < similarity < 1.0  # the agreeing instances are close, not identical


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_recall_and_precision_have_floors_of_their_own(task):
    """The same perturbed variant keeps mAP50 1.0 but finds 10 of 12 objects at verify.conf:
    a recall floor of 0.9 fails it (mAP50 alone would pass it), 0.8 lets it through; its
    precision (1.0) holds any floor. Every instance gate holds them, not only detect."""
    reference, perturbed, _ = SCENES[task]()
    floors = GateSetting(task, "yolo", 0.25, 0.7, FLOOR, (SIZE, SIZE), min_recall=0.9, min_precision=1.0)
    strict = run_gate([reference], [perturbed], floors)
    assert (strict.value, strict.status, strict.floors) == (1.0, "failed", {"recall": 0.9, "precision": 1.0})
    assert strict.as_json()["floors"] == {"recall": 0.9, "precision": 1.0}
    lenient = run_gate([reference], [perturbed], replace(floors, min_recall=0.8))
    assert lenient.status == "passed"


def test_small_noise_reorders_a_near_tie_of_the_classifier():
    reference, perturbed, _ = classify_scene()  # seed 1 of the noise reorders the tie (most seeds do)
    result = gate("classify", reference, perturbed)
    assert result.value == 7 / 8 and result.status == "failed"  # below the 0.9 floor: one image in eight
    assert result.details == {"top-5": 1.0, "images": 8, "agreeing": 7}


@pytest.mark.parametrize("task", SCENES)
def test_damaged_outputs_fail(task):
    reference, _, damaged = SCENES[task]()
    result = gate(task, reference, damaged)
    assert result.status == "failed" and result.value < 0.1, result


def test_pose_damage_is_caught_by_keypoints_alone():
    """The damaged pose keeps every box: a box gate would pass it, OKS does not."""
    reference, _, damaged = pose_scene()
    boxes_only = {"output0": reference["output0"][:, :5]}, {"output0": damaged["output0"][:, :5]}
    assert gate("detect", *boxes_only).value == 1.0
    assert gate("pose", reference, damaged).details["mean_matched_oks"] == 0.0


def test_keypoints_the_reference_does_not_see_do_not_count():
    """Keypoints FP32 scores below 0.5 are not visible to Ultralytics (results.Keypoints); where
    the variant puts them does not matter, as for unlabelled COCO keypoints."""
    reference = pose_scene()[0]
    moved = reference["output0"].copy()
    hidden = 5 + 3 * np.flatnonzero(np.arange(KEYPOINTS) % 5 == 4)  # the x rows of the 0.3-visibility points
    moved[:, hidden] += 40
    result = gate("pose", reference, {"output0": moved})
    assert result.value == 1.0 and result.details["mean_matched_oks"] == pytest.approx(1.0)


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_a_reference_that_detects_nothing_is_skipped_never_passed(task):
    reference, _, _ = SCENES[task]()
    untrained = {name: a.copy() for name, a in reference.items()}
    classes = 1 if task == "pose" else NC
    untrained["output0"][:, 4:4 + classes] = 0.01
    result = gate(task, untrained, untrained)
    assert result.value is None and result.status.startswith("skipped: the FP32 reference detects nothing at "
                                                              "verify.conf 0.25")


def test_an_untrained_classifier_still_has_a_figure():
    flat = {"output0": np.full((4, 1000), 1e-3, np.float32) + np.linspace(0, 1e-6, 1000, dtype=np.float32)}
    result = gate("classify", flat, flat)
    assert result.value == 1.0 and result.status == "passed"


def test_raw_has_no_task_gate():
    result = run_gate([{}], [{}], GateSetting("raw", "yolo", 0.25, 0.7, None, (SIZE, SIZE)))
    assert result.as_json() == {"task": "raw", "head": "yolo", "figure": None, "value": None, "floor": None,
                                "status": "skipped: verify.task raw has no task-aware gate (raw tensors only)",
                                "details": {}, "floors": {}}


@pytest.mark.parametrize("task, outputs, message", [
    ("segment", {"output0": np.zeros((1, 84, 8), np.float32)}, "expected two outputs, the head"),
    ("classify", {"output0": np.zeros((1, 84, 8), np.float32)}, r"expected class probabilities \[B, nc\]"),
    ("pose", {"output0": np.zeros((1, 84, 8), np.float32)}, r"expected a pose output \[B, 4\+1\+K\*3, N\]"),
    ("detect", {"a": np.zeros((1, 84, 8), np.float32), "b": np.zeros(1)}, "expected one output"),
])
def test_outputs_of_another_task_are_a_layout_error(task, outputs, message):
    with pytest.raises(LayoutError, match=message):
        run_gate([outputs], [outputs], setting(task))


# --- detector heads: each decodes to the detections of the equivalent Ultralytics head ----------

def as_rows(detections) -> list[np.ndarray]:
    return [np.concatenate([d.boxes, d.scores[:, None], d.classes[:, None]], 1) for d in detections]


def yolov5_output(head: np.ndarray, objectness: float = 0.8) -> np.ndarray:
    """[B, N, 5+nc] with the same products obj x cls as `head`'s class scores."""
    rows = head.transpose(0, 2, 1)
    return np.concatenate([rows[..., :4], np.full(rows[..., :1].shape, objectness, np.float32),
                           rows[..., 4:] / objectness], 2)


def end2end_output(head: np.ndarray, slots: int = 20) -> np.ndarray:
    """[B, slots, 6] x1 y1 x2 y2 score class: the decoded detections, zero rows after them."""
    out = np.zeros((BATCH, slots, 6), np.float32)
    for image, rows in enumerate(as_rows(decode_yolo(head, conf=0.01))):
        out[image, :len(rows)] = rows
    return out


def rtdetr_output(head: np.ndarray, scored: bool) -> np.ndarray:
    """RT-DETR's [B, queries, 6] (score, class) or [B, queries, 4+nc] (class scores), boxes normalised."""
    rows = head.transpose(0, 2, 1).copy()
    rows[..., :4] /= SIZE
    if not scored:
        return rows
    return np.concatenate([rows[..., :4], rows[..., 4:].max(2, keepdims=True),
                           rows[..., 4:].argmax(2)[..., None].astype(np.float32)], 2)


def test_every_head_decodes_to_the_yolo_detections():
    head = detect_scene()[0]["output0"]
    expected = as_rows(decode_yolo(head))
    for got in (decode_yolov5(yolov5_output(head)), decode_end2end(end2end_output(head)),
                decode_rtdetr(rtdetr_output(head, scored=True), (SIZE, SIZE)),
                decode_rtdetr(rtdetr_output(head, scored=False), (SIZE, SIZE))):
        for g, e in zip(as_rows(got), expected):
            order = np.argsort(-g[:, 4], kind="stable")
            np.testing.assert_allclose(g[order], e, rtol=1e-5, atol=1e-4)


HEAD_OUTPUTS = {
    "yolov5": lambda head: {"output0": yolov5_output(head)},
    "end2end": lambda head: {"output0": end2end_output(head)},
    "rtdetr": lambda head: {"output0": rtdetr_output(head, scored=True)},
}


@pytest.mark.parametrize("head", HEAD_OUTPUTS)
def test_each_head_passes_identical_and_fails_swapped_classes(head):
    raw = detect_scene()[0]["output0"]
    reference, swapped = HEAD_OUTPUTS[head](raw), HEAD_OUTPUTS[head](roll_classes(raw))
    assert gate("detect", reference, reference, head).value == 1.0
    failed = gate("detect", reference, swapped, head)
    assert failed.status == "failed" and failed.head == head and failed.details["matched"] == 0


# --- through real ONNX Runtime and check.run_check ------------------------------------------

def constant_model(outputs: dict[str, np.ndarray], path: Path, input_shape=(BATCH, 3, SIZE, SIZE)) -> Path:
    """A real ONNX model whose outputs are `outputs` (Identity of initializers); its input is unused."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"{name}_value"], [name]) for name in outputs], "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
         for name, a in outputs.items()],
        [numpy_helper.from_array(a, f"{name}_value") for name, a in outputs.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def write_reference(folder: Path, outputs: dict[str, np.ndarray], batch: int = BATCH) -> None:
    """Polygraphy inputs/outputs JSON as the reference stage writes them."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    save_json([{"images": np.full((batch, 3, SIZE, SIZE), 0.5, np.float32)}], str(folder / "inputs.json"))
    results = RunResults()
    results.add([outputs], runner_name=RUNNER)
    results.save(str(folder / "outputs.json"))


def check_job(folder: Path, candidate: Path, task: str, head: str = "yolo") -> CheckJob:
    # tolerances wide open: the raw tensors pass, so only the task gate can fail
    spec = CheckSpec(atol=100.0, rtol=100.0, statistic="median", min_agreement_vs_fp32=FLOOR)
    return CheckJob(task="check:t-int8", variant_onnx=candidate, engine=folder / "engine.plan",
                    reference_inputs=folder / "inputs.json", reference_outputs=folder / "outputs.json",
                    check=spec, verify=VerifySpec(images=Path("x"), task=task, head=head),
                    report_json=folder / "check.json", report_png=folder / "check.png")


@pytest.mark.parametrize("task", SCENES)
def test_run_check_passes_identical_and_fails_damaged_with_one_line(task, tmp_path):
    reference, _, damaged = SCENES[task]()
    batch = len(reference["output0"])
    write_reference(tmp_path, reference, batch)
    shape = (batch, 3, SIZE, SIZE)
    run_check(check_job(tmp_path, constant_model(reference, tmp_path / "same.onnx", shape), task))
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] and "detection" not in report
    assert (report["gate"]["figure"], report["gate"]["value"], report["gate"]["status"]) == (
        FIGURES[task], 1.0, "passed")

    with pytest.raises(StageError) as info:
        run_check(check_job(tmp_path, constant_model(damaged, tmp_path / "damaged.onnx", shape), task))
    figure = re.escape(FIGURES[task])
    assert "\n" not in str(info.value)
    assert re.fullmatch(rf"check:t-int8: {figure} agreement with FP32: 0\.\d{{3}} is below "
                        rf"min_agreement_vs_fp32 0\.9 \(report: .*check\.json\)", str(info.value))
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] is False and report["gate"]["status"] == "failed"
    assert (tmp_path / "check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_check_names_a_task_that_does_not_fit_the_model(tmp_path):
    reference = detect_scene()[0]
    write_reference(tmp_path, reference)
    with pytest.raises(StageError, match=r"^check:t-int8: verify.task segment \(head yolo\): expected two outputs.*"
                                         r"set verify.task / verify.head to the model's outputs$"):
        run_check(check_job(tmp_path, constant_model(reference, tmp_path / "m.onnx"), "segment"))


def test_nms_head_variant_is_gated_against_the_raw_reference(tmp_path):
    """The reference is the export before surgery (raw head); the variant carries the `nms`
    pass's four outputs. The raw comparison is skipped as impossible; the gate decodes each side."""
    from trtforge.stages.nms import nms

    raw = detect_scene()[0]
    write_reference(tmp_path, raw)
    for name, head in (("same", raw["output0"]), ("swapped", roll_classes(raw["output0"]))):
        model = onnx.load(str(constant_model({"output0": head}, tmp_path / f"{name}-raw.onnx")))
        onnx.save(nms(model, backend="onnx", conf=0.25, iou=0.7, max_det=20), str(tmp_path / f"{name}.onnx"))

    run_check(check_job(tmp_path, tmp_path / "same.onnx", "detect", head="nms"))
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["onnx"]["status"].startswith("skipped: head nms outputs ranked detections (num_detections, "
                                               "detection_boxes")
    assert (report["gate"]["head"], report["gate"]["value"], report["gate"]["details"]["matched"]) == ("nms", 1.0, 12)
    with pytest.raises(StageError, match="mAP50 agreement with FP32: 0.000 is below"):
        run_check(check_job(tmp_path, tmp_path / "swapped.onnx", "detect", head="nms"))


@pytest.mark.parametrize("head", ["end2end", "rtdetr"])
def test_ranked_heads_are_judged_by_the_gate_not_row_by_row(tmp_path, head):
    """Top-k outputs list detections by score: a variant whose scores moved lists the same
    detections in another order. Row-by-row statistics would call that a failure; the gate,
    which matches detections, calls it agreement."""
    reference = HEAD_OUTPUTS[head](detect_scene()[0]["output0"])
    write_reference(tmp_path, reference)
    reordered = {"output0": np.ascontiguousarray(reference["output0"][:, ::-1])}  # same rows, other ranks
    run_check(check_job(tmp_path, constant_model(reordered, tmp_path / "m.onnx"), "detect", head=head))
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["onnx"]["status"].startswith(f"skipped: head {head} outputs ranked detections (output0)")
    assert report["passed"] and report["gate"]["value"] == 1.0


def test_a_variant_missing_an_output_fails(tmp_path):
    reference, _, _ = segment_scene()
    write_reference(tmp_path, reference)
    with pytest.raises(StageError, match="onnx output 'output1': the variant has no such output"):
        run_check(check_job(tmp_path, constant_model({"output0": reference["output0"]}, tmp_path / "m.onnx"),
                            "detect"))


# --- a real classifier on real photographs ----------------------------------------------------

def noisy_copy(model_path: Path, scale: float, out: Path) -> Path:
    """The model with every float weight tensor scaled by (1 + N(0, scale)), seeded."""
    model = onnx.load(str(model_path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype == np.float32 and weights.size > 1:
            noise = (1 + rng.normal(0, scale, weights.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(weights * noise, init.name))
    onnx.save(model, str(out))
    return out


@pytest.mark.slow
def test_real_untrained_classifier_on_real_photos(tmp_path, monkeypatch):
    """yolov8n-cls built from its yaml (untrained, seeded) and exported at 64 px (size does not
    matter here), gated on the demo verification photos against itself, against a copy with 5 %
    weight noise (its ranking holds) and one with 20 % (its best class moves: the gate fails).
    An untrained classifier ranks its classes nearly the same for every photo, which is why a
    figure here is all or nothing; it is still computed from real outputs of real images."""
    import torch
    from ultralytics import YOLO

    from trtforge.images import list_image_set
    from trtforge.stages.reference import make_reference

    monkeypatch.chdir(tmp_path)  # the export writes next to the working directory
    torch.manual_seed(0)
    exported = Path(YOLO("yolov8n-cls.yaml").export(format="onnx", imgsz=64, opset=17, dynamic=False))
    root = Path(__file__).resolve().parents[1]
    photos = list_image_set(root / "calib" / "demo-verification.txt", root)
    make_reference(exported, tuple(photos), "images", 64, 64, 1, tmp_path / "inputs.json",
                   tmp_path / "outputs.json", tmp_path / "images.json")

    for candidate in (exported, noisy_copy(exported, 0.05, tmp_path / "noise5.onnx")):
        run_check(check_job(tmp_path, candidate, "classify"))
        gate = json.loads((tmp_path / "check.json").read_text())["gate"]
        assert (gate["value"], gate["status"], gate["details"]) == (
            1.0, "passed", {"top-5": 1.0, "images": len(photos), "agreeing": len(photos)})
    with pytest.raises(StageError, match=r"top-1 agreement with FP32: 0\.000 is below min_agreement_vs_fp32 0\.9"):
        run_check(check_job(tmp_path, noisy_copy(exported, 0.2, tmp_path / "noise20.onnx"), "classify"))
    assert json.loads((tmp_path / "check.json").read_text())["gate"]["details"]["agreeing"] == 0


# --- the distance accuracy control ranks reverts by -------------------------------------------

def test_the_detect_ranking_distance_weighs_a_class_flip_above_background_noise():
    """The raw outputs' relative error ranks noise on thousands of background boxes (pixels)
    above one object changing class; the detect gate's distance reads what the gate reads."""
    from trtforge.gates import output_distance, ranking_distance

    reference, _, _ = detect_scene()
    head = reference["output0"]
    background = head.copy()
    background[:, :4, len(SCORES):] += 8.0  # every background box moves 8 px; no score changes
    flipped = head.copy()
    flipped[0, 4:4 + NC, 0] = np.roll(flipped[0, 4:4 + NC, 0], 1)  # one object trades its class
    noisy, flip = {"output0": background}, {"output0": flipped}
    assert output_distance([reference], [noisy]) > output_distance([reference], [flip])
    detect = setting("detect")
    assert ranking_distance([reference], [flip], detect) > ranking_distance([reference], [noisy], detect) == 0.0
    assert ranking_distance([reference], [reference], detect) == 0.0


def test_heads_without_a_distance_of_their_own_are_ranked_by_the_raw_outputs():
    from trtforge.gates import output_distance, ranking_distance

    reference, perturbed, _ = detect_scene()
    yolov5 = setting("detect", "yolov5")
    assert ranking_distance([reference], [perturbed], yolov5) == output_distance([reference], [perturbed]) > 0
