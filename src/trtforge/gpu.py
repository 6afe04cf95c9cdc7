"""Which GPU this host has, for keying timing caches (a cache is only valid on one GPU
model with one TensorRT version). NVML first, then nvidia-smi, else "no-gpu"."""

from __future__ import annotations

import re
import shutil
import subprocess


def gpu_name() -> str | None:
    """The first GPU's product name, or None when no NVIDIA GPU is visible."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            return name.decode() if isinstance(name, bytes) else name
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: all mean "ask the next source"
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20, check=True).stdout
            return out.splitlines()[0].strip() or None
        except (subprocess.SubprocessError, OSError, IndexError):
            return None
    return None


def gpu_slug(name: str | None) -> str:
    """`NVIDIA GeForce RTX 3090` -> `nvidia-geforce-rtx-3090`; None -> `no-gpu`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") if name else "no-gpu"
