"""Which GPU this host builds on, for keying engines and timing caches.

An engine and a timing cache are only valid on one GPU model with one TensorRT version, so
both are keyed by the GPU this query names: NVML first, then nvidia-smi, else none. The
device asked about is the first one CUDA sees: the first entry of CUDA_VISIBLE_DEVICES (an
index or a `GPU-...` UUID) when it is set, else device 0. (NVML and nvidia-smi number GPUs
in PCI bus order, CUDA fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID; the engine stage
compares the answer with the device trtexec's log names, so a disagreement fails loudly
instead of mis-keying an engine.)
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys

from doit.tools import config_changed


def gpu_name() -> str | None:
    """The build GPU's product name, or None when no NVIDIA GPU is visible."""
    details = gpu_details()
    return details["name"] if details else None


def gpu_slug(name: str | None) -> str:
    """`NVIDIA GeForce RTX 3090` -> `nvidia-geforce-rtx-3090`; None -> `no-gpu`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") if name else "no-gpu"


def gpu_identity() -> dict[str, str] | None:
    """{"name", "compute_capability"} of the build GPU, or None: what an engine is keyed by."""
    details = gpu_details()
    return {"name": details["name"], "compute_capability": details["compute capability"]} if details else None


@functools.lru_cache(maxsize=1)
def gpu_details() -> dict[str, str] | None:
    """Name, compute capability and driver of the build GPU (NVML, else nvidia-smi), or None.

    Asked once per process: the engine key, the timing cache key and doctor agree."""
    device = _cuda_first_device()
    return (_nvml_details(device) if _nvidia_driver_loaded() else None) or _smi_details(device)


def _nvml_details(device: str) -> dict[str, str] | None:
    """gpu_details through NVML, or None when it cannot answer (no library, driver or device)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = (pynvml.nvmlDeviceGetHandleByUUID(device) if device.startswith("GPU-")
                      else pynvml.nvmlDeviceGetHandleByIndex(int(device)))
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name, driver = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlSystemGetDriverVersion()
            return {"name": _text(name), "compute capability": f"{major}.{minor}", "driver": _text(driver)}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # pynvml's errors are its own classes, and an old pynvml raises others
        return None


def _smi_details(device: str) -> dict[str, str] | None:
    """gpu_details through nvidia-smi, or None when there is none or it cannot answer."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, f"--id={device}", "--query-gpu=name,compute_cap,driver_version",
                              "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()[0]
        name, cc, driver = (part.strip() for part in out.rsplit(",", 2))
    except (subprocess.SubprocessError, OSError, IndexError, ValueError):
        return None
    return {"name": name, "compute capability": cc, "driver": driver}


# Device nodes of a loaded NVIDIA driver: desktop and data-centre GPUs, WSL2, Jetson (Tegra).
_DRIVER_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu",
                 "/dev/nvmap")


def _nvidia_driver_loaded() -> bool:
    """False only on a Linux host where NVML cannot answer: no NVIDIA driver node exists.
    Importing pynvml to learn that cost about 10 ms of CPU on every no-op build (issue 15);
    nvidia-smi is still asked, as before."""
    return not sys.platform.startswith("linux") or any(os.path.exists(node) for node in _DRIVER_NODES)


def _cuda_first_device() -> str:
    """The device CUDA numbers 0, as NVML can look it up: an index or a `GPU-` UUID."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return first if first.isdigit() or first.startswith("GPU-") else "0"


class gpu_config_changed(config_changed):
    """doit's `config_changed` with the build GPU (`gpu_identity()`) added under "gpu".

    The GPU is asked for when doit checks the task, not when tasks are generated, so
    `doit list` and runs that check no engine never pay for the query (importing pynvml
    alone takes about 0.1 s here)."""

    def __call__(self, task, values) -> bool:
        self.config = {**self.config, "gpu": gpu_identity()}
        return super().__call__(task, values)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
