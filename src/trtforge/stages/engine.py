"""engine: ONNX -> TensorRT engine through trtexec, as a location-independent job.

The job runs in a work folder of its own: the inputs (ONNX, plugins, a copy of the timing
cache) are linked in under fixed names, trtexec runs there with relative paths only, and
the outputs (engine, log, parsed summary, updated timing cache) are moved out when it
succeeded. Nothing absolute is baked into the argv or the artifacts, so the same job can
later be shipped to a machine with the target GPU.

One timing cache per (GPU, TensorRT version) lives in artifacts/cache/timing/. It is a
side input, never a doit file_dep. Builds that share it take its lock for the whole
build: they run one at a time (autotuning timings taken while another build loads the
same GPU are skewed anyway), and each publishes its updated cache atomically, so the
cache keeps every build's entries and is never seen half-written.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import TEMP_MARK, atomic_output, remove_path, write_text_atomic
from ..console import info
from ..errors import StageError, ToolError, require
from ..recipe import BuildOptions
from ..render import EngineIntent, render_argv
from ..trt_version import TrtVersion

ENGINE, LOG, SCRIPT, SUMMARY = "engine.plan", "trtexec.log", "trtexec.sh", "summary.json"


@dataclass(frozen=True)
class EngineJob:
    """Everything one engine build reads. `trtexec` None means none was found."""

    task: str
    trtexec: Path | None
    version: TrtVersion | None
    onnx: Path
    precision: str
    mode: str
    build: BuildOptions
    plugin_files: tuple[Path, ...]  # absolute paths of build.plugins
    calibration_cache: Path | None  # implicit INT8 only
    out_dir: Path
    timing_cache_dir: Path


def build_engine(job: EngineJob, not_found: str) -> None:
    """Run trtexec for `job` and publish engine, log, command and summary into out_dir."""
    if job.trtexec is None or job.version is None:
        raise ToolError(not_found)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    work = job.out_dir / f"{TEMP_MARK}work-{os.getpid()}"
    remove_path(work)
    work.mkdir()
    try:
        intent = _prepare_inputs(job, work)
        argv = render_argv(intent, job.version)
        write_text_atomic(job.out_dir / SCRIPT, _script(job, argv))
        if intent.timing_cache:
            with _timing_cache_lock(job) as shared_cache:
                _copy_if_exists(shared_cache, work / intent.timing_cache)
                _run_trtexec(job, argv, work)
                _publish_timing_cache(work / intent.timing_cache, shared_cache)
        else:
            _run_trtexec(job, argv, work)
        _publish(job, argv, work)
    finally:
        remove_path(work)


def engine_intent(job: EngineJob, keep_fp32_layers: tuple[str, ...] = ()) -> EngineIntent:
    """The job as render.py sees it: work-folder names only."""
    return EngineIntent(precision=job.precision, mode=job.mode, build=job.build,
                        timing_cache="timing.cache" if job.build.timing_cache else None,
                        keep_fp32_layers=keep_fp32_layers,
                        plugin_files=tuple(p.name for p in job.plugin_files))


def renders_layer_precisions(job: EngineJob, mode: str) -> bool:
    """Whether `keep_fp32` becomes --layerPrecisions (builder flags), rather than being carried
    by the AutoCast / Q-DQ ONNX, or meaning nothing (FP32)."""
    return bool(job.build.keep_fp32) and job.precision != "fp32" and mode == "implicit"


def _prepare_inputs(job: EngineJob, work: Path) -> EngineIntent:
    _link(job.onnx, work / "model.onnx")
    if job.calibration_cache is not None:
        _link(job.calibration_cache, work / "calib.cache")
    for plugin in job.plugin_files:
        _link(plugin, work / plugin.name)
    keep = ()
    if renders_layer_precisions(job, job.mode):
        keep = expand_layer_globs(job.onnx, job.build.keep_fp32)
    return engine_intent(job, keep)


def expand_layer_globs(onnx_path: Path, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """Exact ONNX node names matching the recipe's globs (TensorRT names layers after them).

    A glob that matches nothing is an error: it is almost always a typo, and silently
    keeping nothing in FP32 is the failure it was meant to prevent.
    """
    onnx = require("onnx", "core")
    names = [node.name for node in onnx.load(str(onnx_path), load_external_data=False).graph.node if node.name]
    selected: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise StageError(f"build.keep_fp32: '{pattern}' matches no node of {onnx_path.name}; "
                             "node names look like " + ", ".join(names[:3]))
        selected += [n for n in hits if n not in selected]
    for name in selected:
        if "," in name or ":" in name:
            raise StageError(f"build.keep_fp32: node '{name}' has a ',' or ':' that trtexec's "
                             "--layerPrecisions cannot express; rename it in a surgery pass")
    return tuple(selected)


def _link(source: Path, dest: Path) -> None:
    """Hard-link an input into the work folder (copy across filesystems)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _copy_if_exists(source: Path, dest: Path) -> None:
    if source.is_file() and source.stat().st_size > 0:
        shutil.copyfile(source, dest)


def _script(job: EngineJob, argv: list[str]) -> str:
    """The exact command, for a person to read and rerun (inputs named as in the work folder)."""
    lines = [
        "#!/bin/sh",
        f"# {job.task}: the trtexec command trtforge ran (TensorRT {job.version} grammar).",
        "# It runs in a work folder holding these inputs under these names:",
        f"#   model.onnx    <- {os.path.relpath(job.onnx, job.out_dir)}",
        *(f"#   {p.name:<13} <- {os.path.relpath(p, job.out_dir)}" for p in job.plugin_files),
        *([f"#   calib.cache   <- {os.path.relpath(job.calibration_cache, job.out_dir)}"]
          if job.calibration_cache else []),
        *(["#   timing.cache  <- the timing cache for this GPU and TensorRT version"] if job.build.timing_cache else []),
        'exec "${TRTEXEC:-trtexec}" ' + " ".join(shlex.quote(a) for a in argv),
        "",
    ]
    return "\n".join(lines)


class _timing_cache_lock:
    """Hold the shared timing cache of this (GPU, TensorRT version) for one build."""

    def __init__(self, job: EngineJob) -> None:
        from ..gpu import gpu_name, gpu_slug

        job.timing_cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = job.timing_cache_dir / f"{gpu_slug(gpu_name())}-trt{job.version}.cache"
        self.task = job.task

    def __enter__(self) -> Path:
        from filelock import FileLock, Timeout

        self.lock = FileLock(str(self.path) + ".trtforge-lock")
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            info(f"{self.task}: waiting for the timing cache {self.path.name} (another engine build holds it)")
            self.lock.acquire()
        return self.path

    def __exit__(self, *exc) -> None:
        self.lock.release()


def _publish_timing_cache(updated: Path, shared: Path) -> None:
    if updated.is_file() and updated.stat().st_size > 0:
        with atomic_output(shared) as temp:
            shutil.copyfile(updated, temp)


def _run_trtexec(job: EngineJob, argv: list[str], work: Path) -> None:
    from ..console import StatusLine
    from ..proc import ToolTimeout, run_logged
    from ..trtexec import first_error, phase_of

    log = work / LOG
    info(f"{job.task}: trtexec (TensorRT {job.version}) building; log: {job.out_dir / LOG}")
    started = time.monotonic()

    def on_line(line: str) -> None:
        print(line, flush=True)  # doit shows it live with `doit -v 2`, and on failure otherwise
        status.update(phase_of(line), line)

    try:
        with StatusLine(f"{job.task}: trtexec") as status:
            code = run_logged(job.trtexec, ["trtexec", *argv], cwd=work, log_file=log,
                              timeout_s=job.build.timeout_s, on_line=on_line)
    except ToolTimeout as exc:
        _keep_failed_log(job, log)
        raise StageError(f"{job.task}: trtexec was stopped after {exc.seconds:.0f} s (build.timeout); "
                         f"raise build.timeout or see {job.out_dir / 'trtexec.failed.log'}") from None
    text = log.read_text(errors="replace") if log.exists() else ""
    if code != 0:
        _keep_failed_log(job, log)
        cause = first_error(text) or (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        raise StageError(f"{job.task}: trtexec failed: {cause} (full log: {job.out_dir / 'trtexec.failed.log'})")
    engine = work / ENGINE
    if not engine.is_file() or engine.stat().st_size == 0:
        _keep_failed_log(job, log)
        raise StageError(f"{job.task}: trtexec exited 0 but wrote {'an empty' if engine.is_file() else 'no'} "
                         f"engine (log: {job.out_dir / 'trtexec.failed.log'})")
    info(f"{job.task}: engine built in {time.monotonic() - started:.1f} s")


def _keep_failed_log(job: EngineJob, log: Path) -> None:
    if log.exists():
        os.replace(log, job.out_dir / "trtexec.failed.log")


def _publish(job: EngineJob, argv: list[str], work: Path) -> None:
    from ..trtexec import parse_device_info, parse_perf_summary

    text = (work / LOG).read_text(errors="replace")
    engine = work / ENGINE
    summary = {
        "task": job.task,
        "tensorrt": str(job.version),
        "argv": argv,
        "device": parse_device_info(text),
        "performance": parse_perf_summary(text),
        "engine_bytes": engine.stat().st_size,
        "engine_sha256": _sha256(engine),
    }
    with atomic_output(job.out_dir / SUMMARY) as temp:
        temp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(work / LOG, job.out_dir / LOG)
    os.replace(engine, job.out_dir / ENGINE)
    remove_path(job.out_dir / "trtexec.failed.log")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

