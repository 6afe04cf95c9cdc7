"""Finding trtexec, learning its version, and reading what it prints.

The version decides the grammar (render.py), so it is known when tasks are generated.
Probing costs a process start, so the answer is cached under artifacts/cache/ for a
trtexec that is an ELF binary (keyed by resolved path, device, inode, size and mtime): a
no-op `doit` run never starts it. A script (a container's or module system's wrapper that
picks TensorRT from the environment) can change what it runs without its bytes changing
(issue 13), so it is probed again on every run. Either way the probe is only a guess
until the build's own log confirms it (`read_build_log`, checked by the engine stage).

Commands that only read (`doit list`, `info`, ...) build nothing, so they never start
trtexec: they take the last answer it gave in this project, a script's included, and
without one they list the tasks as on a host without trtexec. A trtexec that hangs
before its banner therefore stalls only the commands that would run it, and says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomic import read_json_object, write_text_atomic
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


PROBE_CACHE = "trtexec-probe.json"  # under artifacts/cache/
PROBE_TIMEOUT_S = 30.0  # a real trtexec prints its banner first thing; a slow disk may delay its libraries
PROBE_PATIENCE_S = 3.0  # after this, say what the wait is for


def probe_version(path: Path, cache_file: Path) -> TrtVersion:
    """trtexec's version from its `--help` banner; cached only for an ELF binary (see above)."""
    from .console import info
    from .proc import ToolTimeout, read_until
    from .trt_version import BANNER

    key = _probe_key(path.resolve())
    cached = read_json_object(cache_file)
    if key in cached:
        return TrtVersion(*cached[key])
    try:
        output = read_until([str(path), "--help"], lambda line: bool(BANNER.match(line.strip())),
                            timeout_s=PROBE_TIMEOUT_S,
                            patience=(PROBE_PATIENCE_S, lambda: info(
                                f"waiting for {path} --help to print its TensorRT version "
                                f"(at most {PROBE_TIMEOUT_S:.0f} s)")))
    except ToolTimeout:
        raise ToolError(f"{path} --help printed no version banner within {PROBE_TIMEOUT_S:.0f} s; "
                        "is it really trtexec?") from None
    except OSError as exc:
        raise ToolError(f"cannot run {path}: {exc.strerror}; check it is a trtexec for this machine") from None
    version = version_from_banner(output)
    if version is None:
        raise ToolError(_no_banner_message(path, output))
    try:
        version.generation  # refuse unsupported versions before caching them
    except ToolError as exc:
        raise ToolError(f"{path}: {exc}") from None
    kept = _without_probes_of(cached, path) | {key or _last_answer_key(path): [version.major, version.minor,
                                                                            version.patch]}
    if kept != cached:
        _write_probe_cache(cache_file, kept)
    return version


def _last_answer_key(path: Path) -> str:
    """Where a script's last answer is kept: only for commands that build nothing (see above)."""
    return f"{path.resolve()}:last-answer"


def last_probed_version(path: Path, cache_file: Path) -> TrtVersion | None:
    """What probing `path` last answered in this project, without starting it; None if never."""
    cached = read_json_object(cache_file)
    answer = cached.get(_probe_key(path.resolve()) or _last_answer_key(path))
    try:
        return TrtVersion(*answer) if answer else None
    except TypeError:
        return None  # a cache edited by hand: the next command that builds probes again


def _probe_key(real: Path) -> str | None:
    """The cache key of an ELF executable; None for anything else (a script is probed every run)."""
    try:
        with open(real, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
        stat = real.stat()
    except OSError:
        return None
    return f"{real}:{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def forget_probe(path: Path, cache_file: Path) -> None:
    """Drop every cached probe of `path`, so the next run asks it again."""
    cached = read_json_object(cache_file)
    kept = _without_probes_of(cached, path)
    if kept != cached:
        _write_probe_cache(cache_file, kept)


def _without_probes_of(cached: dict, path: Path) -> dict:
    """The probe cache without the entries of `path` (keys start with its resolved path)."""
    return {k: v for k, v in cached.items() if not k.startswith(f"{path.resolve()}:")}


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


def _write_probe_cache(cache_file: Path, data: dict) -> None:
    try:
        write_text_atomic(cache_file, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a cache: failing to keep it only costs the next probe


def find_trtexec(cache_file: Path) -> Trtexec | None:
    """The trtexec this host would use, or None when there is none anywhere."""
    path = locate_trtexec()
    return Trtexec(path, probe_version(path, cache_file)) if path else None


def recall_trtexec(cache_file: Path) -> Trtexec | None:
    """find_trtexec for commands that build nothing: the last answer, never a probe (see above).
    None when there is no trtexec or it was never probed here."""
    path = locate_trtexec()
    version = last_probed_version(path, cache_file) if path else None
    return Trtexec(path, version) if version else None

def host_trtexec(artifacts: Path, probe: bool = True) -> tuple[Trtexec | None, str | None]:
    """(the trtexec this host would use, None) or (None, why there is no usable one).
    `probe` False takes the last answer (`recall_trtexec`), for commands that build nothing."""
    try:
        found = (find_trtexec if probe else recall_trtexec)(artifacts / "cache" / PROBE_CACHE)
    except ToolError as exc:
        return None, str(exc)
    if found is None:
        return None, not_found_message() if probe else "trtexec was not asked for its version"
    return found, None


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


# Every parser below reads only `&&&&` banner lines and `[I]`/`[E]` lines. A `--verbose` log
# is mostly `[V]` lines and can reach hundreds of MB (measured: a 300 MB log took 769 MB to
# read whole), so the engine stage reads the evidence, not the log.
_EVIDENCE_LINE = re.compile(rb"^&&&& |\[[IE]\] ")
_EVIDENCE_LINE_BYTES = 2048
_EVIDENCE_KEPT = 4000  # lines from each end: the device block opens a log, the summary ends it


def read_log_evidence(path: Path) -> str:
    """The lines of a trtexec log any parser here reads, in memory bounded by a few MB
    whatever the log's size: the first and last `_EVIDENCE_KEPT` of them, each cut to
    `_EVIDENCE_LINE_BYTES`."""
    import collections

    head: list[bytes] = []
    tail: collections.deque[bytes] = collections.deque(maxlen=_EVIDENCE_KEPT)
    at_line_start = True
    with open(path, "rb") as log:
        while chunk := log.readline(_EVIDENCE_LINE_BYTES):  # bounded even for one endless line
            starts_a_line, at_line_start = at_line_start, chunk.endswith(b"\n")
            if starts_a_line and _EVIDENCE_LINE.search(chunk):
                (head if len(head) < _EVIDENCE_KEPT else tail).append(chunk.rstrip(b"\r\n"))
    return b"\n".join([*head, *tail]).decode(errors="replace") + "\n"


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


@dataclass(frozen=True)
class BuildLog:
    """What a trtexec build log says about who built the engine and whether the build finished."""

    version: TrtVersion | None  # from the `&&&& RUNNING ... [TensorRT vN]` banner
    library: TrtVersion | None  # from the `TensorRT version: X.Y.Z` line, when printed
    device: dict  # parse_device_info
    missing: tuple[str, ...]  # what a finished build prints that this log lacks
    engine_mib: float | None  # `Created engine with size: <MiB> MiB`, when printed


# What every finished build prints, 8.2 to 11.x (trtexec.cpp, sampleEngines.cpp, sampleDevice.h):
# setCudaDevice's device block before any work, "Engine built in <s> sec." once the plan is
# serialized, and "&&&& PASSED" last. 10.x and later also print "Created engine with size:
# <MiB> MiB" (the bytes serialized, std::ostream's 6 significant digits); it is checked where
# present, not required, since the 8.x and early 10.x sources could not be read here.
_FINISHED_BUILD = (
    ("'Selected Device:' line", re.compile(r"\[I\] Selected Device: \S")),
    ("'Compute Capability:' line", re.compile(r"\[I\] Compute Capability: \d+\.\d+")),
    ("'Engine built in <s> sec.' line", re.compile(r"\[I\] Engine built in " + _FLOAT + r" sec\.")),
    ("'&&&& PASSED' line", re.compile(r"^&&&& PASSED TensorRT\.trtexec", re.MULTILINE)),
)


def read_build_log(log: str) -> BuildLog:
    """The identity (TensorRT version, GPU) and the completion evidence of one trtexec build."""
    library = re.search(r"\[I\] TensorRT version: (\d+)\.(\d+)(?:\.(\d+))?", log)
    size = re.search(r"\[I\] Created engine with size: " + _FLOAT + " MiB", log)
    missing = tuple(what for what, pattern in _FINISHED_BUILD if not pattern.search(log))
    version = version_from_banner(log)
    return BuildLog(
        version=version,
        library=TrtVersion(int(library[1]), int(library[2]), int(library[3] or 0)) if library else None,
        device=parse_device_info(log),
        missing=(("'&&&& RUNNING TensorRT.trtexec [TensorRT vN]' banner",) if version is None else ()) + missing,
        engine_mib=float(size[1]) if size else None,
    )


def size_matches(engine_bytes: int, reported_mib: float) -> bool:
    """Whether a file of `engine_bytes` is the one trtexec reported as `reported_mib` MiB
    (printed with 6 significant digits)."""
    actual = engine_bytes / (1 << 20)
    return abs(actual - reported_mib) <= max(abs(reported_mib), actual) * 1e-5 + 1e-9


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
