"""The accuracy gate: Polygraphy comparisons of real ONNX models under ONNX Runtime, the
task-aware gate in check.json, the report files, and one-line failures (every task's gate:
tests/test_gates.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtforge.errors import StageError
from trtforge.recipe import CheckSpec, VerifySpec
from trtforge.stages.check import CheckJob, run_check
from trtforge.stages.reference import RUNNER

ANCHORS = 64  # a small synthetic detect head: [1, 84, 64]


def raw_head(boxes: list[tuple[float, float, float, float, int, float]]) -> np.ndarray:
    """[1, 84, ANCHORS] like YOLOv8's export output: xywh rows, then 80 class-score rows."""
    raw = np.zeros((1, 84, ANCHORS), np.float32)
    for i, (x, y, w, h, cls, score) in enumerate(boxes):
        raw[0, :4, i] = (x, y, w, h)
        raw[0, 4 + cls, i] = score
    return raw


REFERENCE_BOXES = [(40 + 60 * i, 50 + 40 * (i % 3), 30, 30, i % 5, 0.9 - 0.05 * i) for i in range(8)]


def constant_head_model(head: np.ndarray, path: Path) -> Path:
    """A real ONNX model whose output0 is `head` (plus 0 x the input, so the input is used)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
         helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Add", ["head", "z"], ["output0"])],
        "head", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(head.shape))],
        [numpy_helper.from_array(head, "head"), numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def reference(tmp_path) -> tuple[Path, Path]:
    """Polygraphy inputs/outputs JSON of the reference head, written by the real stage code."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    feeds = [{"images": np.full((1, 3, 8, 8), 0.5, np.float32)}]
    results = RunResults()
    results.add([{"output0": raw_head(REFERENCE_BOXES)}], runner_name=RUNNER)
    save_json(feeds, str(tmp_path / "inputs.json"))
    results.save(str(tmp_path / "outputs.json"))
    model = constant_head_model(raw_head(REFERENCE_BOXES), tmp_path / "reference.onnx")
    return model, tmp_path


def job(folder: Path, candidate: Path, **tolerances) -> CheckJob:
    spec = {"atol": 1e-3, "rtol": 1e-3, "statistic": "max", "min_agreement_vs_fp32": 0.9, **tolerances}
    return CheckJob(task="check:t-v", variant_onnx=candidate, engine=folder / "engine.plan",
                    reference_inputs=folder / "inputs.json", reference_outputs=folder / "outputs.json",
                    check=CheckSpec(**spec), verify=VerifySpec(images=Path("x"), conf=0.25, iou=0.7),
                    report_json=folder / "check.json", report_png=folder / "check.png")


def test_identical_model_passes_and_the_report_is_complete(reference):
    model, folder = reference
    run_check(job(folder, model))
    report = json.loads((folder / "check.json").read_text())
    assert report["passed"] and report["onnx"]["outputs"]["output0"]["max_absdiff"] == 0
    assert report["engine"] == {"status": "skipped: TensorRT not installed"}  # never "passed" here
    gate = report["gate"]
    assert (gate["task"], gate["head"], gate["figure"], gate["value"], gate["floor"], gate["status"]) == (
        "detect", "yolo", "mAP50", 1.0, 0.9, "passed")
    assert gate["details"]["matched"] == gate["details"]["reference_detections"] == 8
    assert (folder / "check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zero_tolerance_fails_in_one_line_naming_output_and_statistic(reference, tmp_path):
    model, folder = reference
    nudged = raw_head(REFERENCE_BOXES)
    nudged[0, :4] += 0.01  # boxes move by a hundredth of a pixel
    candidate = constant_head_model(nudged, tmp_path / "nudged.onnx")
    with pytest.raises(StageError) as info:
        run_check(job(folder, candidate, atol=0.0, rtol=0.0))
    message = str(info.value)
    assert "\n" not in message
    assert re.match(r"check:t-v: onnx output 'output0': max abs error 0\.01\d* exceeds atol 0 and max rel "
                    r"error \S+ exceeds rtol 0 \(report: .*check.json\)$", message), message
    assert json.loads((folder / "check.json").read_text())["passed"] is False  # report written anyway


def test_detection_gate_fails_when_classes_change(reference, tmp_path):
    model, folder = reference
    swapped = [(x, y, w, h, (c + 1) % 5 if i % 2 else c, s) for i, (x, y, w, h, c, s) in enumerate(REFERENCE_BOXES)]
    candidate = constant_head_model(raw_head(swapped), tmp_path / "swapped.onnx")
    with pytest.raises(StageError, match=r"check:t-v: mAP50 agreement with FP32: 0\.\d{3} is below "
                                         r"min_agreement_vs_fp32 0.9 \(report: "):
        run_check(job(folder, candidate, atol=100.0, rtol=100.0))  # raw tensors pass; detections do not
    gate = json.loads((folder / "check.json").read_text())["gate"]
    assert gate["status"] == "failed" and gate["details"]["recall"] == 0.5
    # the boxes all stayed: class-agnostic agreement is whole, and the four flips are counted
    assert gate["details"]["class_agnostic_map50"] == 1.0 and gate["details"]["class_flips"] == 4


# Two of the eight people fall just below verify.conf 0.25 (still ranked, so mAP50 stays 1.0).
LOST_TWO = [(x, y, w, h, c, 0.2 if i in (2, 5) else s) for i, (x, y, w, h, c, s) in enumerate(REFERENCE_BOXES)]


def test_a_variant_that_loses_people_fails_on_recall_though_its_map50_passes(reference, tmp_path, capsys,
                                                                             monkeypatch):
    model, folder = reference
    monkeypatch.setenv("COLUMNS", "200")  # the table's cells unwrapped
    candidate = constant_head_model(raw_head(LOST_TWO), tmp_path / "lost.onnx")
    run_check(job(folder, candidate, atol=100.0, rtol=100.0, min_recall_vs_fp32=0.75))  # 6 of 8 is enough here
    with pytest.raises(StageError) as info:
        run_check(job(folder, candidate, atol=100.0, rtol=100.0, min_recall_vs_fp32=0.9))
    assert re.fullmatch(r"check:t-v: recall against FP32 at verify.conf: 0\.750 \(6 of 8 FP32 detections found\) "
                        r"is below min_recall_vs_fp32 0\.9 \(report: .*check\.json\)", str(info.value))
    report = json.loads((folder / "check.json").read_text())
    gate = report["gate"]
    assert (report["passed"], gate["status"], gate["value"], gate["floors"]) == (False, "failed", 1.0, {"recall": 0.9})
    assert "R 0.750 < 0.9 6/8; class-agnostic mAP50 1.000, 0 class flips" in capsys.readouterr().err


def test_a_variant_that_invents_people_fails_on_precision(reference, tmp_path):
    model, folder = reference
    invented = [*REFERENCE_BOXES, (500, 300, 40, 40, 0, 0.8), (550, 350, 40, 40, 1, 0.7)]
    candidate = constant_head_model(raw_head(invented), tmp_path / "invented.onnx")
    with pytest.raises(StageError, match=r"check:t-v: precision against FP32 at verify.conf: 0\.800 \(8 of 10 "
                                         r"variant detections are FP32's\) is below min_precision_vs_fp32 0\.9 "):
        run_check(job(folder, candidate, atol=100.0, rtol=100.0, min_recall_vs_fp32=0.9, min_precision_vs_fp32=0.9))
    details = json.loads((folder / "check.json").read_text())["gate"]["details"]
    assert (details["recall"], details["precision"]) == (1.0, 0.8)


def test_a_decode_cut_short_fails_the_check_in_one_line(reference, monkeypatch):
    """Empty detections from an NMS that stopped early would score as a lossy (or a perfect)
    variant; the check fails instead (the decoder's own tests: tests/test_detection.py)."""
    import torch
    import ultralytics.utils.nms as nms

    model, folder = reference
    monkeypatch.setattr(nms, "non_max_suppression", lambda prediction, *a, **k: [torch.zeros((0, 6))])
    with pytest.raises(StageError, match=r"^check:t-v: NMS returned no detection for verification image 1 of 1, "
                                         r"although boxes score above 0\.25: decoding was cut short; the gate "
                                         r"judges no variant on incomplete detections$"):
        run_check(job(folder, model))


def test_no_reference_detections_is_reported_as_skipped_not_passed(tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    empty = raw_head([])
    save_json([{"images": np.zeros((1, 3, 8, 8), np.float32)}], str(tmp_path / "inputs.json"))
    results = RunResults()
    results.add([{"output0": empty}], runner_name=RUNNER)
    results.save(str(tmp_path / "outputs.json"))
    run_check(job(tmp_path, constant_head_model(empty, tmp_path / "m.onnx")))
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["gate"]["status"].startswith("skipped: the FP32 reference detects nothing")
    assert report["gate"]["value"] is None and report["passed"] is True  # raw tensors agree; the gate could not judge


@pytest.mark.slow
def test_build_runs_the_engine_before_a_failing_check_and_package_stays_blocked(tmp_path):
    """Real doit runs against the trtexec double of TensorRT 11, where the engine builds from
    the AutoCast ONNX after its parser preflight: the check, ready sooner, used to run first
    and stop the build with no engine. Now the engine comes first and stays when the gate
    fails; `engine:` alone builds whatever the check says; `package:` waits for a passing gate."""
    from conftest import REPO, SMALL_RECIPE, executed, make_project, run_doit
    from doubles.trtexec import make_wrapper

    failing = SMALL_RECIPE.replace('build: {keep_fp32: ["/model.22/dfl/*"]}',
                                   'build: {keep_fp32: ["/model.22/dfl/*"]}\n    check: {atol: 0, rtol: 0}')
    project = make_project(tmp_path / "proj", {"yolov8n": failing + "verify: {images: calib/demo-verification.txt, "
                                                                    "count: 1}\n"})
    (project / "calib").mkdir()
    shutil.copy(REPO / "calib" / "demo-verification.txt", project / "calib")
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "11.0"))}
    engine = project / "artifacts" / "yolov8n" / "fp16" / "engine.plan"

    build = run_doit(project, "build:yolov8n-fp16", env=env)
    order = executed(build)
    assert build.returncode != 0 and order.index("engine:yolov8n-fp16") < order.index("check:yolov8n-fp16"), order
    assert order[-1] == "check:yolov8n-fp16" and engine.is_file()
    assert [line for line in build.stdout.splitlines() if line.startswith("check:yolov8n-fp16: onnx output")]

    engine.unlink()
    again = run_doit(project, "engine:yolov8n-fp16", env=env)
    assert again.returncode == 0 and executed(again) == ["engine:yolov8n-fp16"] and engine.is_file(), again.stdout

    package = run_doit(project, "package:yolov8n-fp16", env=env)
    assert package.returncode != 0 and "package:yolov8n-fp16" not in executed(package)
    assert not (project / "artifacts" / "release").exists()


def test_saved_reference_loads_in_the_real_polygraphy_cli(reference):
    model, folder = reference
    polygraphy = Path(sys.executable).parent / "polygraphy"  # the console script pip installs
    result = subprocess.run([str(polygraphy), "run", str(model), "--onnxrt",
                             "--load-inputs", str(folder / "inputs.json"),
                             "--load-outputs", str(folder / "outputs.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "PASSED" in result.stdout + result.stderr


def test_an_output_of_another_shape_fails_clearly(reference, tmp_path):
    model, folder = reference
    candidate = constant_head_model(raw_head(REFERENCE_BOXES)[:, :, :32], tmp_path / "short.onnx")
    with pytest.raises(StageError, match="onnx output 'output0': its shape differs from the reference's"):
        run_check(job(folder, candidate))


@pytest.mark.parametrize("quiet, hint", [(True, False), (False, True)], ids=["quieted", "polygraphy's default"])
def test_polygraphy_warnings_carry_no_install_hint_for_colored(quiet, hint):
    """Without the `colored` module, Polygraphy's first coloured warning printed an install
    hint on stdout, which doit replayed after a failed check's one line (issue 14)."""
    import importlib.util

    if hint and importlib.util.find_spec("colored") is not None:
        pytest.skip("the `colored` module is installed here: Polygraphy has no hint to print")
    code = ("from polygraphy.logger import G_LOGGER\nfrom trtforge.stages.check import quiet_polygraphy\n"
            f"{'quiet_polygraphy()' if quiet else 'G_LOGGER.module_severity = G_LOGGER.WARNING'}\n"
            "G_LOGGER.warning('a warning')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert ("'colored' module is not installed" in run.stdout + run.stderr) is hint, run.stdout + run.stderr
    assert "a warning" in run.stdout + run.stderr


def test_report_tables_in_a_log_are_wide_unless_columns_says_otherwise(monkeypatch):
    from trtforge.console import LOG_WIDTH, report_console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert report_console().width == LOG_WIDTH  # rich alone: 80, which wrapped every cell in CI logs
    monkeypatch.setenv("COLUMNS", "100")
    assert report_console().width == 100
