"""Finding trtexec, learning its version, and reading what it prints.

The version decides the grammar (render.py), so it is known when tasks are generated.
Probing costs a process start, so the answer is cached per executable (resolved path,
size and mtime) under artifacts/cache/: a no-op `doit` run never starts trtexec.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolError
from .trt_version import TrtVersion, version_from_banner

DEFAULT_LOCATION = Path("/usr/src/tensorrt/bin/trtexec")


@dataclass(frozen=True)
class Trtexec:
    path: Path
    version: TrtVersion


def search_locations() -> list[str]:
    """Where trtexec is looked for, in order, as a user would describe it."""
    return ["$TRTEXEC", "trtexec on PATH", str(DEFAULT_LOCATION)]


def locate_trtexec() -> Path | None:
    """`$TRTEXEC`, then PATH, then the TensorRT package's default location."""
    env = os.environ.get("TRTEXEC")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ToolError(f"TRTEXEC={env} does not exist; point TRTEXEC at the trtexec executable "
                            "or unset it")
        if not os.access(path, os.X_OK):
            raise ToolError(f"TRTEXEC={env} is not executable; chmod +x it or point TRTEXEC elsewhere")
        return path.absolute()
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    if DEFAULT_LOCATION.is_file() and not os.access(DEFAULT_LOCATION, os.X_OK):
        raise ToolError(f"{DEFAULT_LOCATION} is not executable; chmod +x it or set TRTEXEC")
    return DEFAULT_LOCATION if DEFAULT_LOCATION.is_file() else None


def not_found_message() -> str:
    return ("trtexec not found (looked at " + ", ".join(search_locations()) + "); install TensorRT "
            "or run `TRTEXEC=/path/to/trtexec doit ...`; on a host without a GPU use `doit cpu:<recipe>`")


def probe_version(path: Path, cache_file: Path) -> TrtVersion:
    """trtexec's version from its banner, cached by (resolved path, size, mtime)."""
    from .proc import ToolTimeout, read_until
    from .trt_version import BANNER

    real = path.resolve()
    stat = real.stat()
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    cached = _read_probe_cache(cache_file)
    if key in cached:
        return TrtVersion(*cached[key])
    try:
        output = read_until([str(path), "--help"], lambda line: bool(BANNER.match(line.strip())))
    except ToolTimeout:
        raise ToolError(f"{path} --help printed no version banner within 30 s; is it really trtexec?") from None
    except OSError as exc:
        raise ToolError(f"cannot run {path}: {exc.strerror}; check it is a trtexec for this machine") from None
    version = version_from_banner(output)
    if version is None:
        raise ToolError(_no_banner_message(path, output))
    try:
        version.generation  # refuse unsupported versions before caching them
    except ToolError as exc:
        raise ToolError(f"{path}: {exc}") from None
    cached[key] = [version.major, version.minor, version.patch]
    _write_probe_cache(cache_file, cached)
    return version


def _no_banner_message(path: Path, output: str) -> str:
    """Why `path` is not a usable trtexec, with the first thing it printed as evidence."""
    first = next((line.strip() for line in output.splitlines() if line.strip()), "")
    said = f" (it printed: {first[:160]})" if first else " (it printed nothing)"
    # A real trtexec whose TensorRT libraries are not on the loader path fails before its banner.
    if "error while loading shared libraries" in first:
        return (f"{path} cannot start{said}; add TensorRT's lib folder to LD_LIBRARY_PATH "
                "or point TRTEXEC at a trtexec that runs")
    return (f"{path} printed no '&&&& RUNNING TensorRT.trtexec [TensorRT vNNNN]' banner{said}; "
            "it is not trtexec (point TRTEXEC at TensorRT's bin/trtexec)")


def _read_probe_cache(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_probe_cache(cache_file: Path, data: dict) -> None:
    from .atomic import write_text_atomic

    try:
        write_text_atomic(cache_file, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a cache: failing to keep it only costs the next probe


def find_trtexec(cache_file: Path) -> Trtexec | None:
    """The trtexec this host would use, or None when there is none anywhere."""
    path = locate_trtexec()
    return Trtexec(path, probe_version(path, cache_file)) if path else None


# ----------------------------------------------------------------------------- log parsing

_FLOAT = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_STAT_LINES = ("Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency")
_DEVICE_FIELDS = {
    "gpu": r"Selected Device: (.+)",
    "compute_capability": r"Compute Capability: (\d+\.\d+)",
    "tensorrt": r"TensorRT version: ([\d.]+)",
    "cuda_runtime": r"CUDA Runtime Version: ([\d.]+)",
    "cuda_driver": r"CUDA Driver Version: ([\d.]+)",
    "driver": r"Driver Version: ([\d.]+)",
}


def parse_perf_summary(log: str) -> dict:
    """The `=== Performance summary ===` figures, as {name: {stat: value}} plus throughput.

    Works for 8.2 (a single percentile(99%)) and later versions (several percentiles);
    returns {} when trtexec ran no inference.
    """
    summary: dict = {}
    for line in log.splitlines():
        body = re.sub(r"^\[[^\]]*\] \[\w\] ", "", line.strip())
        match = re.match(r"Throughput: " + _FLOAT + " qps", body)
        if match:
            summary["throughput_qps"] = float(match.group(1))
            continue
        for name in _STAT_LINES:
            if body.startswith(name + ": "):
                stats = re.findall(r"(\w+(?:\(\d+(?:\.\d+)?%\))?) = " + _FLOAT + " ms", body)
                summary[_key(name) + "_ms"] = {_key(stat): float(v) for stat, v in stats}
    return summary


def parse_device_info(log: str) -> dict:
    """GPU name, compute capability and version fields from trtexec's device block."""
    info = {}
    for key, pattern in _DEVICE_FIELDS.items():
        match = re.search(r"\[\w\] " + pattern, log)
        if match and key not in info:
            info[key] = match.group(1).strip()
    return info


# Markers of trtexec's phases, as its log prints them (8.x to 10.x logs agree on these).
PHASES = (
    ("Start parsing network model", "parsing the ONNX"),
    ("Finished parsing network model", "building (autotuning kernels)"),
    ("Starting Calibration", "calibrating"),
    ("Engine built in", "engine built"),
    ("Starting inference", "timing inference"),
    ("=== Performance summary ===", "summarising"),
)


def phase_of(line: str) -> str | None:
    """The phase a trtexec log line starts, if it starts one."""
    return next((phase for marker, phase in PHASES if marker in line), None)


def first_error(log: str) -> str | None:
    """The first `[E]` line of a trtexec log, without its timestamp."""
    for line in log.splitlines():
        if re.search(r"\[E\] ", line):
            return re.sub(r"^.*?\[E\] ", "", line).strip()
    return None


def _key(name: str) -> str:
    """`GPU Compute Time` -> gpu_compute_time, `percentile(99%)` -> p99."""
    match = re.fullmatch(r"percentile\((\d+(?:\.\d+)?)%\)", name)
    if match:
        return "p" + match.group(1).replace(".", "_")
    return re.sub(r"\W+", "_", name.lower()).strip("_")
