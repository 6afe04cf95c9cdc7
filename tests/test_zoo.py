"""Every recipe in recipes/, through doit as a user runs it: the GPU-free stages with their
accuracy gates on real photos, then FP16 and INT8 engines against the trtexec double of
every TensorRT generation (issue 7).

Inputs are shrunk where size does not matter (a head's layout and every stage's plumbing
are the same at any size; full size costs minutes per model on 2 cores): 160 px for the
detectors, 64 px for the classifier, 256 px for the oriented-box model; calibration on 4
photos in batches of 2 and checks on 2. `doit -n 2 cpu build` on the full recipes is the
full-size run (README).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO, make_project, run_doit, sha256
from doubles.trtexec import make_wrapper, read_engine

pytestmark = pytest.mark.slow

RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
SIZES = {"yolov8n-cls": (224, 64), "yolov8n-obb": (1024, 256)}  # recipe -> (full, test); others 640 -> 160
GENERATIONS = {"8.2": "8.2.1", "8.6": "8.6.1", "10": "10.8", "11": "11.0"}
# What a generation refuses, by design, and the words of its one line.
REFUSED = {
    ("yolov8n", "fp16", "8.2"): "has no --layerPrecisions",  # keep_fp32 needs builder flags 8.2 lacks
    ("yolo26n", "fp16", "8.2"): "uses Mod, which TensorRT 8.2's ONNX parser does not support",
    ("yolo26n", "int8", "8.2"): "uses Mod, which TensorRT 8.2's ONNX parser does not support",
    ("rtdetr-l", "fp16", "8.2"): "uses LayerNormalization, which TensorRT 8.2's ONNX parser does not support",
    ("rtdetr-l", "int8", "8.2"): "uses LayerNormalization, which TensorRT 8.2's ONNX parser does not support",
}


def shrunk(name: str, text: str) -> str:
    full, small = SIZES.get(name, (640, 160))
    text = re.sub(rf"\b{full}\b", str(small), text)
    text = text.replace("      batch: 8\n", "      batch: 2\n      count: 4\n")
    return text.replace("  count: 4\n", "  count: 2\n", 1)  # verify.count


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """All recipes, shrunk, after `doit cpu`: exports, surgery, lint, calibration, quantization,
    references, accuracy gates and comparison tables, all on CPU."""
    project = make_project(tmp_path_factory.mktemp("zoo") / "proj",
                           {name: shrunk(name, (REPO / "recipes" / f"{name}.yaml").read_text()) for name in RECIPES})
    (project / "calib").mkdir()
    for manifest in (REPO / "calib").glob("demo-*.txt"):
        shutil.copy(manifest, project / "calib")
    result = run_doit(project, "-n", "2", "cpu", timeout=3000)  # both cores: the longest fixture of the suite
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project


def test_every_recipe_is_checked_on_cpu_with_its_task_gate(zoo):
    for name in RECIPES:
        for variant in ("fp32", "fp16", "int8"):
            report = json.loads((zoo / "artifacts" / name / variant / "check.json").read_text())
            gate = report["gate"]
            assert report["passed"], (name, variant, gate)
            assert gate["task"] in {"detect", "segment", "classify", "pose", "obb"}
            # untrained weights: detectors find nothing and say so; the classifier always has a figure
            assert gate["status"] == "passed" or gate["status"].startswith("skipped: the FP32 reference"), gate
        table = (zoo / "artifacts" / name / "compare.md").read_text()
        assert all(f"| {v} |" in table for v in ("fp32", "fp16", "int8")), table


def test_the_classifier_gate_has_real_figures_on_real_photos(zoo):
    gate = json.loads((zoo / "artifacts/yolov8n-cls/int8/check.json").read_text())["gate"]
    assert gate["figure"] == "top-1" and 0 <= gate["value"] <= 1 and gate["details"]["images"] == 2


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_fp16_and_int8_engines_of_every_recipe_on_every_generation(zoo, tmp_path, generation):
    version = GENERATIONS[generation]
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", version))}
    targets = [f"build:{name}-{v}" for name in RECIPES for v in ("fp16", "int8")]
    result = run_doit(zoo, "--continue", "-n", "2", *targets, env=env, timeout=3000)
    text = result.stdout + result.stderr
    for name in RECIPES:
        for variant in ("fp16", "int8"):
            out = zoo / "artifacts" / name / variant
            refusal = REFUSED.get((name, variant, generation))
            if refusal:
                assert refusal in text, (name, variant, text[-2000:])
                assert not (out / "engine.plan").exists() or read_engine(out / "engine.plan")["trt_version"] != version
                continue
            engine = read_engine(out / "engine.plan")
            assert engine["trt_version"].startswith(version), (name, variant)
            summary = json.loads((out / "summary.json").read_text())
            assert summary["argv"][0] == "--onnx=model.onnx"
            explicit = generation in ("10", "11") and variant == "int8" or generation == "11"
            built_from = {"fp16": "autocast.onnx", "int8": "qdq.onnx"}[variant] if explicit else "model.onnx"
            assert engine["onnx_sha256"] == sha256(out / built_from if explicit else out.parent / "model.onnx")
    # --continue: a refused variant fails (1), and a task it blocks is reported UnmetDependency (2)
    refused_here = any(k[2] == generation for k in REFUSED)
    assert result.returncode in ((1, 2) if refused_here else (0,)) and "Traceback" not in text, text[-3000:]


def test_the_jetson_tx2_kit_of_yolov5s_builds_with_tensorrt_8_2_grammar(zoo, tmp_path):
    """The classic TX2 deployment: a kit made on a laptop (no trtexec) built on JetPack 4.6."""
    import subprocess
    import tarfile

    result = run_doit(zoo, "kit:yolov5s-int8")
    assert result.returncode == 0, result.stdout + result.stderr
    with tarfile.open(zoo / "artifacts" / "kit" / "yolov5s-int8-kit.tar.gz", "r:gz") as tar:
        tar.extractall(tmp_path / "tx2", filter="data")
    folder = tmp_path / "tx2" / "yolov5s-int8-kit"
    trtexec = make_wrapper(tmp_path / "bin", "8.2.1")
    build = subprocess.run(["sh", str(folder / "build.sh")], env={"TRTEXEC": str(trtexec), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    engine = read_engine(folder / "engine.plan")
    assert engine["trt_version"] == "8.2.1" and engine["grammar"] == "8.2"
    assert engine["precision"] == ["int8"] and engine["calibration"]["source"] == "cache"
    assert engine["workspace_bytes"] == 4 << 30 and "--workspace=4096" in (folder / "build.sh").read_text()
    assert engine["onnx_sha256"] == sha256(folder / "model.onnx")
