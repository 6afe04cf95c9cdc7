"""build.keep_fp32 on an INT8 variant, on every TensorRT generation, through doit: the yolov5s
recipe (its Detect head's decode arithmetic kept in FP32) as the TX2 kit and as engine builds
against the trtexec double.

TensorRT 8.2 has no --layerPrecisions; an implicit INT8 layer runs above INT8 when a tensor it
produces has no scale in the calibration cache (DESIGN.md, "INT8 quality facts"), so there the
engine reads the cache without the kept nodes' outputs. The expectations below are computed
from the ONNX with onnx and fnmatch, not with trtforge's own helpers.

The recipe is shrunk to 160 px, calibrated on 4 photos and checked on 2: node and tensor
names, and every stage's plumbing, are the same at 640 px.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import REPO, copied, executed, make_project, run_doit, sha256, with_demo_sets
from doubles.trtexec import make_wrapper, read_engine
from test_zoo import shrunk

pytestmark = pytest.mark.slow

HEAD_CONVS = ["/model.24/m.0/Conv", "/model.24/m.1/Conv", "/model.24/m.2/Conv"]


@pytest.fixture(scope="module")
def yolov5s(tmp_path_factory) -> Path:
    """The yolov5s recipe at 160 px after `doit kit:yolov5s-int8` (export, surgery, calibration,
    ModelOpt Q/DQ with the kept nodes excluded, references): no trtexec on this host."""
    text = shrunk("yolov5s", (REPO / "recipes" / "yolov5s.yaml").read_text())
    project = with_demo_sets(make_project(tmp_path_factory.mktemp("yolov5s") / "proj", {"yolov5s": text}))
    result = run_doit(project, "kit:yolov5s-int8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project


def recipe_keep_fp32(project: Path) -> list[str]:
    import yaml

    return yaml.safe_load((project / "recipes" / "yolov5s.yaml").read_text())["variants"]["int8"]["build"]["keep_fp32"]


def kept(onnx_path: Path, globs: list[str]) -> tuple[list[str], list[str]]:
    """(nodes matching the globs, the tensors they produce), in graph order."""
    import onnx

    nodes = [n for n in onnx.load(str(onnx_path)).graph.node if any(fnmatch.fnmatchcase(n.name, g) for g in globs)]
    return [n.name for n in nodes], [t for n in nodes for t in n.output]


def readers(onnx_path: Path, tensors: list[str]) -> set[str]:
    import onnx

    return {n.name for n in onnx.load(str(onnx_path)).graph.node if set(n.input) & set(tensors)}


def cache_tensors(path: Path) -> set[str]:
    return {line.split(": ")[0] for line in path.read_text().splitlines()[1:]}


def extracted(yolov5s: Path, folder: Path) -> Path:
    with tarfile.open(yolov5s / "artifacts" / "kit" / "yolov5s-int8-kit.tar.gz", "r:gz") as tar:
        tar.extractall(folder, filter="data")
    return folder / "yolov5s-int8-kit"


def build_on_device(kit: Path, version: str, bin_dir: Path) -> dict:
    """`sh build.sh` in the kit with the double of `version`; returns the engine it wrote."""
    trtexec = make_wrapper(bin_dir, version)
    build = subprocess.run(["sh", str(kit / "build.sh")], env={"TRTEXEC": str(trtexec), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    return read_engine(kit / "engine.plan")


def test_the_tx2_kit_of_yolov5s_builds_with_the_detect_decode_above_int8(yolov5s, tmp_path):
    kit = extracted(yolov5s, tmp_path / "tx2")
    nodes, tensors = kept(kit / "model.onnx", recipe_keep_fp32(yolov5s))
    assert len(nodes) == 28 and "output0" in tensors  # 3 levels x (Sigmoid, Split, 4 Mul, Add, Pow, Concat) + Concat

    command = re.search(r"  8\.2\)\n    (.*) ;;", (kit / "build.sh").read_text())[1]
    assert "--int8 --calib=calib.keep-fp32.cache" in command and "--layerPrecisions" not in command
    assert "--fp16" not in command  # with --fp16 the kept layers would fall back to FP16, not FP32
    engine = build_on_device(kit, "8.2.1", tmp_path / "bin")
    assert engine["grammar"] == "8.2" and engine["precision"] == ["int8"]
    assert engine["onnx_sha256"] == sha256(kit / "model.onnx")

    calibration = engine["calibration"]
    assert calibration["source"] == "cache" and calibration["sha256"] == sha256(kit / "calib.keep-fp32.cache")
    assert set(tensors) <= cache_tensors(kit / "calib.cache")  # the full cache still has them (8.6 reads it)
    assert not set(tensors) & set(calibration["tensors"])  # the cache TensorRT 8.2 read lacks every one
    assert cache_tensors(kit / "calib.cache") - set(tensors) == set(calibration["tensors"])  # and only those
    assert calibration["missing_scales"] == tensors
    # above INT8: the kept nodes and the layers reading their outputs (the reshapes after each level's
    # Concat), nothing else; the head's convs, which feed the kept nodes, stay INT8
    assert set(calibration["layers_above_int8"]) == set(nodes) | readers(kit / "model.onnx", tensors)
    assert not set(calibration["layers_above_int8"]) & set(HEAD_CONVS)


def test_the_same_kit_obeys_layer_precisions_on_86_and_keeps_nodes_out_of_qdq_on_11(yolov5s, tmp_path):
    import onnx

    kit = extracted(yolov5s, tmp_path / "device")
    nodes, _ = kept(kit / "model.onnx", recipe_keep_fp32(yolov5s))

    engine = build_on_device(kit, "8.6", tmp_path / "bin86")
    assert engine["layer_precisions"] == {n: "fp32" for n in nodes}
    assert engine["calibration"]["sha256"] == sha256(kit / "calib.cache")
    assert engine["calibration"]["missing_scales"] == []

    engine = build_on_device(kit, "11.0", tmp_path / "bin11")
    assert engine["onnx_sha256"] == sha256(kit / "qdq.onnx") and engine["strongly_typed"]
    graph = onnx.load(str(kit / "qdq.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert dequantized, "ModelOpt placed no Q/DQ at all"
    fed = {n.name for n in graph.node if n.op_type != "DequantizeLinear" and dequantized & set(n.input)}
    assert set(HEAD_CONVS) <= fed and not fed & set(nodes)  # the convs quantized, the decode not


def test_engine_on_82_publishes_the_cache_it_read_and_reruns_when_keep_fp32_changes(yolov5s, tmp_path):
    project = copied(yolov5s, tmp_path)
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "8.2.1"))}
    first = run_doit(project, "package:yolov5s-int8", env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = project / "artifacts" / "yolov5s" / "int8"
    nodes, tensors = kept(project / "artifacts" / "yolov5s" / "model.onnx", recipe_keep_fp32(project))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["argv"][2:4] == ["--int8", "--calib=calib.keep-fp32.cache"]
    assert summary["calibration_cache_without"] == tensors
    engine = read_engine(out / "engine.plan")
    assert engine["calibration"]["sha256"] == sha256(out / "calib.keep-fp32.cache")
    assert not set(tensors) & cache_tensors(out / "calib.keep-fp32.cache")

    # the release carries that cache, so its reproduce.sh runs what the engine stage ran
    (archive,) = (project / "artifacts" / "release").glob("*.tar.gz")
    release = extracted_release(archive, tmp_path / "release")
    assert (release / "calib.keep-fp32.cache").read_bytes() == (out / "calib.keep-fp32.cache").read_bytes()
    (release / "engine.plan").unlink()
    elsewhere = tmp_path / "elsewhere"  # reproduce.sh moves into its own folder: run it from another one
    elsewhere.mkdir()
    reproduce = subprocess.run(["sh", str(release / "reproduce.sh")], cwd=elsewhere, capture_output=True, text=True,
                               env={"TRTEXEC": env["TRTEXEC"], "PATH": "/usr/bin:/bin"}, timeout=120)
    assert reproduce.returncode == 0, reproduce.stderr[-2000:]
    assert list(elsewhere.iterdir()) == []
    assert read_engine(release / "engine.plan")["calibration"]["missing_scales"] == tensors

    assert executed(run_doit(project, "engine:yolov5s-int8", env=env)) == []
    recipe = project / "recipes" / "yolov5s.yaml"
    recipe.write_text(recipe.read_text().replace('"/model.24/Concat*"]', '"/model.24/Concat_9"]'))
    rerun = run_doit(project, "engine:yolov5s-int8", env=env)
    assert executed(rerun) == ["engine:yolov5s-int8"], rerun.stdout  # calibration and export untouched
    left_out = json.loads((out / "summary.json").read_text())["calibration_cache_without"]
    assert "/model.24/Concat_1_output_0" not in left_out and "output0" in left_out


def extracted_release(archive: Path, folder: Path) -> Path:
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(folder, filter="data")
    (stem,) = folder.iterdir()
    return stem
