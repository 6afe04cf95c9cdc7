"""The build GPU's query (src/trtforge/gpu.py): NVML first, nvidia-smi when NVML cannot answer,
and no NVML import at all on a Linux host with no NVIDIA driver node. pynvml is a stand-in
module here (no machine has NVML); nvidia-smi is the test double on PATH."""

from __future__ import annotations

import os
import sys
import types

import pytest
from doubles.nvidia_smi import make_nvidia_smi

from trtforge import gpu


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host whose nvidia-smi names a T4; gpu_details is asked afresh in each test."""
    smi = make_nvidia_smi(tmp_path / "smi")
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DOUBLE_GPU", "Tesla T4, 7.5")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu.gpu_details.cache_clear()
    yield monkeypatch
    gpu.gpu_details.cache_clear()


def fake_nvml(monkeypatch, init) -> list[str]:
    """A pynvml whose nvmlInit is `init`, naming an A100; returns the calls it saw."""
    calls: list[str] = []

    def called(name, value):
        def record(*args):
            calls.append(name)
            return value(*args) if callable(value) else value
        return record

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(
        nvmlInit=called("init", init), nvmlShutdown=called("shutdown", None),
        nvmlDeviceGetHandleByIndex=called("by_index", 0), nvmlDeviceGetHandleByUUID=called("by_uuid", 0),
        nvmlDeviceGetCudaComputeCapability=called("cc", (8, 0)),
        nvmlDeviceGetName=called("name", b"NVIDIA A100-SXM4-40GB"), nvmlSystemGetDriverVersion=called("driver", "570.1")))
    return calls


def test_nvml_answers_when_a_driver_is_loaded(host):
    calls = fake_nvml(host, None)
    host.setattr(gpu, "_nvidia_driver_loaded", lambda: True)
    assert gpu.gpu_details() == {"name": "NVIDIA A100-SXM4-40GB", "compute capability": "8.0", "driver": "570.1"}
    assert calls[0] == "init" and calls[-1] == "shutdown"


def test_nvidia_smi_answers_when_nvml_cannot(host):
    def init():
        raise RuntimeError("NVML Shared Library Not Found")

    fake_nvml(host, init)
    host.setattr(gpu, "_nvidia_driver_loaded", lambda: True)
    assert gpu.gpu_details() == {"name": "Tesla T4", "compute capability": "7.5", "driver": "550.54.15"}


def test_nvml_is_not_asked_without_a_driver_node_but_nvidia_smi_is(host):
    calls = fake_nvml(host, None)
    host.setattr(gpu, "_nvidia_driver_loaded", lambda: False)
    assert gpu.gpu_identity() == {"name": "Tesla T4", "compute_capability": "7.5"}
    assert calls == []


def test_no_gpu_at_all_is_none(host):
    host.setenv("PATH", "/nonexistent")
    host.setattr(gpu, "_nvidia_driver_loaded", lambda: False)
    assert gpu.gpu_details() is None and gpu.gpu_slug(gpu.gpu_name()) == "no-gpu"
