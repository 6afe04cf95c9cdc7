"""Which GPU this host has, for keying timing caches (a cache is only valid on one GPU
model with one TensorRT version). NVML first, then nvidia-smi, else "no-gpu"."""

from __future__ import annotations

import re
import shutil
import subprocess


def gpu_name() -> str | None:
    """The first GPU's product name, or None when no NVIDIA GPU is visible."""
    details = gpu_details()
    return details["name"] if details else None


def gpu_slug(name: str | None) -> str:
    """`NVIDIA GeForce RTX 3090` -> `nvidia-geforce-rtx-3090`; None -> `no-gpu`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") if name else "no-gpu"


def gpu_details() -> dict[str, str] | None:
    """Name, compute capability and driver of the first GPU (NVML, else nvidia-smi), or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name, driver = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlSystemGetDriverVersion()
            return {"name": _text(name), "compute capability": f"{major}.{minor}", "driver": _text(driver)}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: ask nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()[0]
    except (subprocess.SubprocessError, OSError, IndexError):
        return None
    name, cc, driver = (part.strip() for part in out.split(","))
    return {"name": name, "compute capability": cc, "driver": driver}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
