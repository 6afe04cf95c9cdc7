"""Issue 13, trust boundaries: the engine's identity is what built it, and a build is only a
success when trtexec's log says so.

Real doit runs in a copy of a project whose export already ran, with the trtexec double as
TRTEXEC and, where a GPU matters, the nvidia-smi double first on PATH (no machine here has
NVML, so trtforge's GPU query falls back to nvidia-smi). DOUBLE_GPU names the fake host's GPU
to both doubles.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import copied, executed, prepared_project, run_doit, sha256
from doubles.nvidia_smi import make_nvidia_smi
from doubles.trtexec import make_wrapper, read_engine

from trtforge import proc
from trtforge.trtexec import last_probed_version, probe_version

A100 = "NVIDIA A100-SXM4-80GB, 8.0"
H100 = "NVIDIA H100 80GB HBM3, 9.0"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One SMALL_RECIPE project whose export and surgery ran; each test builds in a copy."""
    return prepared_project(tmp_path_factory.mktemp("identity"), "surgery:yolov8n")


@pytest.fixture
def project(exported, tmp_path) -> Path:
    return copied(exported, tmp_path)


def out_dir(project: Path) -> Path:
    return project / "artifacts" / "yolov8n" / "fp32"


def summary(project: Path) -> dict:
    return json.loads((out_dir(project) / "summary.json").read_text())


def the_line_with(result, text: str) -> str:
    """The one output line holding `text`: a fault is told once, without a traceback."""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if text in line]
    assert len(lines) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def assert_nothing_published(project: Path) -> None:
    out = out_dir(project)
    assert not (out / "engine.plan").exists() and not (out / "summary.json").exists()
    assert not list(out.glob("*trtforge-tmp*"))
    assert not list((project / "artifacts").glob("release/*.tar.gz"))


def on_host_with(gpu: str, tmp_path: Path, trtexec: Path) -> dict:
    """The environment of a host whose GPU is `gpu` (as NVML-less trtforge sees it: nvidia-smi)."""
    smi = make_nvidia_smi(tmp_path / "smi")
    return {"TRTEXEC": str(trtexec), "DOUBLE_GPU": gpu, "PATH": f"{smi.parent}{os.pathsep}{os.environ['PATH']}"}


# ----------------------------------------------------------------------------- the engine's identity

@pytest.mark.slow
def test_a_wrapper_that_picks_tensorrt_from_the_environment_reruns_the_engine_with_the_version_it_ran(
        project, tmp_path):
    """A container's or module system's trtexec wrapper switches TensorRT without its bytes
    changing: the probe may not be trusted by path, size and mtime, and summary.json records
    the version the build's own log reports."""
    wrapper = make_wrapper(tmp_path / "bin", "10.8", version_from="TRT_PICK")
    wrapper_bytes = sha256(wrapper)
    first = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(wrapper), "TRT_PICK": "10.8"})
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(project)["tensorrt"] == "10.8.0"
    again = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(wrapper), "TRT_PICK": "10.8"})
    assert again.returncode == 0 and executed(again) == [], again.stdout

    switched = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(wrapper), "TRT_PICK": "8.6"})
    assert switched.returncode == 0, switched.stdout + switched.stderr
    assert "engine:yolov8n-fp32" in executed(switched), switched.stdout
    assert sha256(wrapper) == wrapper_bytes
    assert summary(project)["tensorrt"] == "8.6.1"
    assert read_engine(out_dir(project) / "engine.plan")["trt_version"] == "8.6.1"
    assert "[TensorRT v8601]" in (out_dir(project) / "trtexec.log").read_text()


def test_a_script_trtexec_is_probed_every_run_and_a_binary_once(tmp_path, monkeypatch):
    """The probe cache holds only what cannot change behind its key: an ELF binary (its path,
    inode, size and mtime), never a script, whose behaviour can change with the environment."""
    probes = []

    def banner(argv, wanted, **_):
        probes.append(argv[0])
        return "&&&& RUNNING TensorRT.trtexec [TensorRT v100800] # trtexec --help"

    monkeypatch.setattr(proc, "read_until", banner)
    cache = tmp_path / "trtexec-probe.json"
    script = make_wrapper(tmp_path / "script", "10.8")
    binary = tmp_path / "binary" / "trtexec"
    binary.parent.mkdir()
    shutil.copy(shutil.which("true"), binary)  # any ELF executable: the probe itself is faked
    for _ in range(2):
        assert str(probe_version(script, cache)) == "10.8.0"
        assert str(probe_version(binary, cache)) == "10.8.0"
    assert probes == [str(script), str(binary), str(script)]
    # commands that build nothing recall both answers without starting either
    assert [str(last_probed_version(t, cache)) for t in (script, binary)] == ["10.8.0", "10.8.0"]
    assert last_probed_version(tmp_path / "never-probed", cache) is None


@pytest.mark.slow
def test_another_gpu_reruns_the_engine_and_names_the_package_after_it(project, tmp_path):
    """The same project on an A100, then an H100: the engine is rebuilt for the H100 and
    packaged as sm90, not kept "up to date" from the A100."""
    trtexec = make_wrapper(tmp_path / "bin", "10.8")
    on_a100 = run_doit(project, "package:yolov8n-fp32", env=on_host_with(A100, tmp_path, trtexec))
    assert on_a100.returncode == 0, on_a100.stdout + on_a100.stderr
    assert summary(project)["device"]["compute_capability"] == "8.0"
    assert list((project / "artifacts" / "release").glob("yolov8n-fp32-trt10.8.0-sm80-*.tar.gz"))
    timing = project / "artifacts" / "cache" / "timing"
    assert (timing / "nvidia-a100-sxm4-80gb-trt10.8.0.cache").is_file()

    on_h100 = run_doit(project, "package:yolov8n-fp32", env=on_host_with(H100, tmp_path, trtexec))
    assert on_h100.returncode == 0, on_h100.stdout + on_h100.stderr
    assert {"engine:yolov8n-fp32", "package:yolov8n-fp32"} <= set(executed(on_h100)), on_h100.stdout
    device = summary(project)["device"]
    assert device["gpu"] == "NVIDIA H100 80GB HBM3" and device["compute_capability"] == "9.0"
    assert read_engine(out_dir(project) / "engine.plan")["device"]["compute_capability"] == "9.0"
    assert list((project / "artifacts" / "release").glob("yolov8n-fp32-trt10.8.0-sm90-*.tar.gz"))
    assert (timing / "nvidia-h100-80gb-hbm3-trt10.8.0.cache").is_file()


@pytest.mark.slow
def test_a_build_on_another_gpu_than_the_engine_is_keyed_by_fails_in_one_line(project, tmp_path):
    """trtexec's device block names an H100 while the GPU query (what the engine task and the
    timing cache are keyed by) names an A100: nothing is published under the wrong key."""
    inner = make_wrapper(tmp_path / "bin", "10.8")
    on_h100 = tmp_path / "h100" / "trtexec"
    on_h100.parent.mkdir()
    on_h100.write_text(f"#!/bin/sh\nDOUBLE_GPU='{H100}' exec {inner} \"$@\"\n")
    on_h100.chmod(0o755)
    result = run_doit(project, "package:yolov8n-fp32", env=on_host_with(A100, tmp_path, on_h100))
    assert result.returncode == 1
    line = the_line_with(result, "trtexec built on NVIDIA H100 80GB HBM3 (compute capability 9.0)")
    assert "keyed by NVIDIA A100-SXM4-80GB (8.0)" in line and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in line
    assert_nothing_published(project)


@pytest.mark.slow
def test_a_banner_that_disagrees_with_the_probe_fails_in_one_line_and_forgets_the_probe(project, tmp_path):
    """The probe (`trtexec --help`) said 10.8.0, the build's banner says 8.6.1: the argv was
    rendered, and the task and timing cache keyed, for the wrong TensorRT."""
    trtexec = make_wrapper(tmp_path / "bin", "10.8", build_version="8.6")
    cache = project / "artifacts" / "cache" / "trtexec-probe.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({f"{trtexec.resolve()}:1:2:3:4": [10, 8, 0], "/elsewhere/trtexec:1:2:3:4": [8, 6, 1]}))
    result = run_doit(project, "package:yolov8n-fp32", env={"TRTEXEC": str(trtexec)})
    assert result.returncode == 1
    line = the_line_with(result, "trtexec reported TensorRT 8.6.1 but was probed as 10.8.0")
    assert line.startswith("engine:yolov8n-fp32: ") and "rerun" in line
    assert str(out_dir(project) / "trtexec.failed.log") in line
    assert_nothing_published(project)
    assert not list((project / "artifacts" / "cache" / "timing").glob("*.cache"))  # no 8.6 timings under 10.8
    assert json.loads(cache.read_text()) == {"/elsewhere/trtexec:1:2:3:4": [8, 6, 1]}


# ----------------------------------------------------------------------------- only the log says success

@pytest.mark.slow
@pytest.mark.parametrize("fault, says", [
    ("garbage", "trtexec exited 0 but its log shows no finished build (no '&&&& RUNNING TensorRT.trtexec"),
    ("tiny_engine", "trtexec exited 0 but wrote a 16-byte engine, too small to be a TensorRT plan"),
])
def test_a_trtexec_exiting_0_without_a_finished_build_publishes_nothing(project, tmp_path, fault, says):
    """Random bytes on stdout and in the engine file with exit 0, or a plan too short to hold
    a plan header: refused in one line naming the kept log; no engine, no summary, no package."""
    trtexec = make_wrapper(tmp_path / "bin", "10.8", fault=fault)
    result = run_doit(project, "package:yolov8n-fp32", env={"TRTEXEC": str(trtexec)})
    assert result.returncode == 1
    line = the_line_with(result, says)
    assert line.startswith("engine:yolov8n-fp32: ") and "nothing was published" in line
    assert str(out_dir(project) / "trtexec.failed.log") in line
    assert (out_dir(project) / "trtexec.failed.log").is_file()
    assert_nothing_published(project)
