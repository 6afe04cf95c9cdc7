"""engine: ONNX -> TensorRT engine through trtexec, as a location-independent job.

The job runs in a work folder of its own: the inputs (ONNX, plugins, calibration cache, a
copy of the timing cache) are linked in under fixed names, trtexec runs there with
relative paths only, and the outputs (engine, log, parsed summary, updated timing cache)
are moved out when it succeeded. Success is what trtexec's log says, not its exit code: the
log must show a finished build (banner, device block, "Engine built in", PASSED) by the
TensorRT version that was probed and on the GPU the task is keyed by, and summary.json
records the version and GPU the log names (issue 13). On TensorRT 8.2 an INT8 job with
`build.keep_fp32` derives its own calibration cache there, without the kept layers' output
scales (`kept_tensors`), and publishes it beside the engine. Nothing absolute is baked into the
argv or the artifacts, so the same job can later be shipped to a machine with the target
GPU.

One timing cache per (GPU, TensorRT version) lives in artifacts/cache/timing/. It is a
side input, never a doit file_dep, and never trusted unverified (see SharedTimingCache).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import WORK_MARK, atomic_output, remove_path, write_text_atomic
from ..calib_cache import without_tensors
from ..console import info, warn
from ..errors import StageError, ToolError, require
from ..recipe import BuildOptions
from ..render import KEEP_FP32_CACHE, EngineIntent, io_route, keep_fp32_route, render_argv
from ..trt_version import TrtVersion
from ..trtexec import BuildLog

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
    work = job.out_dir / f"{WORK_MARK}{os.getpid()}"
    remove_path(work)
    work.mkdir()
    try:
        intent, dropped = _prepare_inputs(job, work)
        argv = render_argv(intent, job.version)
        write_text_atomic(job.out_dir / SCRIPT, _script(job, argv, intent, dropped))
        if intent.timing_cache:
            with SharedTimingCache(job) as cache:
                cache.copy_to(work / intent.timing_cache)
                built = _run_trtexec(job, argv, work)
                cache.update_from(work / intent.timing_cache)  # only after the log confirmed the build
        else:
            built = _run_trtexec(job, argv, work)
        _publish(job, argv, work, intent, dropped, built)
    finally:
        remove_path(work)


def engine_intent(job: EngineJob, keep_fp32_layers: tuple[str, ...] = (),
                  io_types: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())) -> EngineIntent:
    """The job as render.py sees it: work-folder names only."""
    cache = KEEP_FP32_CACHE if keep_fp32_route_of(job) == "calibration_cache" else "calib.cache"
    return EngineIntent(precision=job.precision, mode=job.mode, build=job.build,
                        timing_cache="timing.cache" if job.build.timing_cache else None,
                        keep_fp32_layers=keep_fp32_layers, io_types=io_types,
                        plugin_files=tuple(p.name for p in job.plugin_files), calibration_cache=cache)


def keep_fp32_route_of(job: EngineJob) -> str | None:
    """How the job's `build.keep_fp32` reaches its TensorRT (render.keep_fp32_route); None if it keeps nothing."""
    if not job.build.keep_fp32:
        return None
    return keep_fp32_route(job.precision, job.mode, job.version.generation)


def keep_fp32_layers(job: EngineJob, onnx_path: Path) -> tuple[str, ...]:
    """The layers for --layerPrecisions where the job's TensorRT renders `build.keep_fp32` that
    way (globs expanded against `onnx_path`), else ()."""
    if keep_fp32_route_of(job) != "layer_precisions":
        return ()
    return expand_layer_globs(onnx_path, job.build.keep_fp32)


def fp16_io_flags_apply(job: EngineJob) -> bool:
    """Whether the job's `build.io: fp16` is rendered as trtexec I/O format flags (render.io_route)."""
    return job.build.io == "fp16" and io_route(job.precision, job.mode, job.version.generation) == "flags"


def binding_types(job: EngineJob, onnx_path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ONNX element types of `onnx_path`'s inputs and outputs, in order, where the job's
    FP16 I/O is rendered as format flags (one entry per binding), else empty."""
    if not fp16_io_flags_apply(job):
        return (), ()
    onnx = require("onnx", "core")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}  # old exporters list weights as inputs too

    def types(values) -> tuple[str, ...]:  # values: ValueInfoProto list
        return tuple(onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in values
                     if v.name not in initializers)

    return types(graph.input), types(graph.output)


def _prepare_inputs(job: EngineJob, work: Path) -> tuple[EngineIntent, tuple[str, ...]]:
    """Put the inputs into `work`; returns the intent and the tensors its calibration cache lacks."""
    _link(job.onnx, work / "model.onnx")
    for plugin in job.plugin_files:
        _link(plugin, work / plugin.name)
    intent = engine_intent(job, keep_fp32_layers(job, job.onnx), binding_types(job, job.onnx))
    if job.calibration_cache is None:
        return intent, ()
    if intent.calibration_cache != KEEP_FP32_CACHE:
        _link(job.calibration_cache, work / intent.calibration_cache)
        return intent, ()
    tensors = set(kept_tensors(job.onnx, job.build.keep_fp32))
    try:
        text, dropped = without_tensors(job.calibration_cache.read_text(errors="replace"), tensors)
    except StageError as exc:
        raise StageError(f"{job.task}: {job.calibration_cache}: {exc}; rerun its calib task") from None
    (work / KEEP_FP32_CACHE).write_text(text)
    info(f"{job.task}: TensorRT {job.version} has no --layerPrecisions; build.keep_fp32's layers run above INT8 "
         f"because {KEEP_FP32_CACHE} leaves out the scales of their {len(dropped)} output tensor(s)")
    return intent, dropped


def _kept_nodes(onnx_path: Path, patterns: tuple[str, ...]) -> list:
    """The ONNX nodes whose names match the recipe's `build.keep_fp32` globs, in graph order.

    A glob that matches nothing is an error: it is almost always a typo, and silently
    keeping nothing in FP32 is the failure it was meant to prevent.
    """
    onnx = require("onnx", "core")
    nodes = [node for node in onnx.load(str(onnx_path), load_external_data=False).graph.node if node.name]
    selected: dict[str, object] = {}
    for pattern in patterns:
        hits = [n for n in nodes if fnmatch.fnmatchcase(n.name, pattern)]
        if not hits:
            raise StageError(f"build.keep_fp32: '{pattern}' matches no node of {onnx_path.name}; "
                             "node names look like " + ", ".join(n.name for n in nodes[:3]))
        selected.update((n.name, n) for n in hits if n.name not in selected)
    return list(selected.values())


def expand_layer_globs(onnx_path: Path, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """Exact ONNX node names matching the recipe's globs (TensorRT names layers after them)."""
    selected = tuple(node.name for node in _kept_nodes(onnx_path, patterns))
    for name in selected:
        if "," in name or ":" in name:
            raise StageError(f"build.keep_fp32: node '{name}' has a ',' or ':' that trtexec's "
                             "--layerPrecisions cannot express; rename it in a surgery pass")
    return selected


def kept_tensors(onnx_path: Path, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The tensors whose scales TensorRT 8.2 must not get, so that the kept nodes run above INT8.

    These are the outputs of the matching nodes, and only the outputs. TensorRT runs a layer
    above INT8 when a tensor it *produces* or consumes has no scale (the builder's "Missing
    scale and zero-point ... fall back to non-int8 implementation for any layer consuming or
    producing given tensor"), so an unscaled output alone makes its producer fall back: every
    kept node is certain to, whatever it consumes. Dropping the inputs too would add nothing
    for the kept nodes and would push their producers out of INT8, which the recipe did not
    ask for (to keep a region's inputs unquantized, keep its producers too: their outputs
    then go). The one cost is that layers consuming a kept output run above INT8 as well.
    This matches --layerPrecisions on 8.6/10.x, which also sets what a layer computes in,
    not how its inputs arrive. Graph outputs of kept nodes are dropped like any other.
    """
    tensors: dict[str, None] = {}
    for node in _kept_nodes(onnx_path, patterns):
        tensors.update((name, None) for name in node.output if name)
    return tuple(tensors)


def _link(source: Path, dest: Path) -> None:
    """Hard-link an input into the work folder (copy across filesystems)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _script(job: EngineJob, argv: list[str], intent: EngineIntent, dropped: tuple[str, ...]) -> str:
    """The exact command, for a person to read and rerun (inputs named as in the work folder)."""
    cache = os.path.relpath(job.calibration_cache, job.out_dir) if job.calibration_cache else None
    filtered = intent.calibration_cache == KEEP_FP32_CACHE
    lines = [
        "#!/bin/sh",
        f"# {job.task}: the trtexec command trtforge ran (TensorRT {job.version} grammar).",
        "# It runs in a work folder holding these inputs under these names:",
        f"#   model.onnx    <- {os.path.relpath(job.onnx, job.out_dir)}",
        *(f"#   {p.name:<13} <- {os.path.relpath(p, job.out_dir)}" for p in job.plugin_files),
        *([f"#   calib.cache   <- {cache}"] if cache and not filtered else []),
        *([f"#   {KEEP_FP32_CACHE} <- {cache} without the scales of the {len(dropped)} tensor(s) that "
           "build.keep_fp32's layers produce (kept beside the engine)"] if cache and filtered else []),
        *(["#   timing.cache  <- the timing cache for this GPU and TensorRT version"] if job.build.timing_cache else []),
        'exec "${TRTEXEC:-trtexec}" ' + " ".join(shlex.quote(a) for a in argv),
        "",
    ]
    return "\n".join(lines)


class SharedTimingCache:
    """The timing cache of one (GPU, TensorRT version), shared by every engine build here.

    TensorRT's timing cache is an opaque blob with no checksum of its own: depending on the
    version, a truncated or overwritten one is reset with a warning ("Detected invalid
    timing cache"), fed to the builder or fails the build, and trtforge cannot parse it to
    tell. So trtforge trusts only the bytes it published: beside each cache it writes
    `<cache>.sha256` (sha256sum's format), and a cache that does not match that record is
    moved aside before trtexec could read it. The cache only saves build time: one that
    cannot be read or saved costs a one-line warning, never the engine.

    Builds that share it hold its lock for the whole build: they run one at a time
    (autotuning timings taken while another build loads the same GPU are skewed anyway), and
    each publishes its updated cache atomically, so the cache keeps every build's entries
    and is never seen half-written.
    """

    def __init__(self, job: EngineJob, path: Path | None = None) -> None:
        """`path`: the cache of another (GPU, TensorRT) than this host's (a fleet class's, fleet.py)."""
        from ..gpu import gpu_name, gpu_slug

        self.path = path or job.timing_cache_dir / f"{gpu_slug(gpu_name())}-trt{job.version}.cache"
        self.record = self.path.with_name(self.path.name + ".sha256")
        self.task = job.task
        self.lock = None  # held while usable; None when the cache folder cannot be used

    def __enter__(self) -> "SharedTimingCache":
        from filelock import FileLock, Timeout

        try:
            _make_folder(self.path.parent)
            lock = FileLock(str(self.path) + ".trtforge-lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                info(f"{self.task}: waiting for the timing cache {self.path.name} (another engine build holds it)")
                lock.acquire()
            self.lock = lock
        except OSError as exc:
            self._warn_unusable("not used or saved", exc, "the engine is built without it")
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()

    def copy_to(self, dest: Path) -> None:
        """Put the shared cache at `dest` for trtexec, if it is exactly what trtforge saved."""
        if self.lock is None or not self.path.is_file():
            return
        try:
            digest = _copy_hashing(self.path, dest)
        except OSError as exc:
            remove_path(dest)
            self._warn_unusable("not used", exc, "the engine is built without it")
            return
        recorded = self._recorded_sha256()
        if recorded is None:
            remove_path(dest)
            self._move_aside("has no checksum record beside it", "unverified")
        elif digest != recorded:
            remove_path(dest)
            self._move_aside(f"does not match the sha256 trtforge recorded when it saved it ({self.record.name})",
                             "corrupt")

    def update_from(self, built: Path) -> None:
        """Publish the cache trtexec updated, then its record (a crash between the two leaves a
        mismatch, which the next build moves aside: never a cache trusted unverified)."""
        if self.lock is None or not built.is_file() or built.stat().st_size == 0:
            return
        try:
            with atomic_output(self.path) as temp:
                digest = _copy_hashing(built, temp)
            write_text_atomic(self.record, f"{digest}  {self.path.name}\n")
        except OSError as exc:
            self._warn_unusable("not saved", exc, "the engine is built, but later builds cannot reuse its timings")

    def published_as(self, data: bytes | None) -> bool:
        """Whether the cache trtforge last published here is `data` (None: none was)."""
        recorded = self._recorded_sha256() if self.path.is_file() else None
        return recorded == (hashlib.sha256(data).hexdigest() if data is not None else None)

    def _recorded_sha256(self) -> str | None:
        try:
            return self.record.read_text().split()[0]
        except (OSError, UnicodeDecodeError, IndexError):
            return None

    def _move_aside(self, why: str, label: str) -> None:
        """Rename the cache to `<name>.<label>-<time>`: kept for a person to inspect, unseen by builds."""
        aside = self.path.with_name(f"{self.path.name}.{label}-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self.lock.release()
            self.lock = None  # neither trust nor overwrite what could not be moved aside
            warn(f"{self.task}: timing cache {self.path} {why} and could not be moved aside "
                 f"({exc.strerror}); building without it: move or delete it")
            return
        remove_path(self.record)
        warn(f"{self.task}: timing cache {self.path} {why}; moved it to {aside} and building with a fresh cache")

    def _warn_unusable(self, what: str, exc: OSError, consequence: str) -> None:
        warn(f"{self.task}: timing cache {self.path} {what}: {exc.strerror}; {consequence} "
             "(fix that path so later builds reuse and update the cache)")


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        import errno

        raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a folder", str(folder))
    folder.mkdir(parents=True, exist_ok=True)


def _copy_hashing(source: Path, dest: Path) -> str:
    """Copy `source` to `dest` and return the sha256 of exactly the bytes copied."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _doit_streams_stdout() -> bool:
    """Whether this action's stdout is shown live (`doit -v 2`, or no doit at all).

    doit 0.37 routes an action's stdout through a `Writer` whose `orig_stream` is the
    terminal only at verbosity 2; below that it captures stdout and replays it after a
    failure, where trtexec's whole log would bury the one-line error that names the kept
    log (trtexec.failed.log)."""
    return getattr(sys.stdout, "orig_stream", sys.stdout) is not None


def _run_trtexec(job: EngineJob, argv: list[str], work: Path) -> BuildLog:
    """Run trtexec in `work`; returns what its log says about the build, once it confirms one."""
    from ..console import StatusLine
    from ..proc import ToolTimeout, run_logged
    from ..trtexec import first_error, phase_of, read_build_log, read_log_evidence

    log = work / LOG
    info(f"{job.task}: trtexec (TensorRT {job.version}) building; log: {job.out_dir / LOG}")
    started = time.monotonic()
    stream = _doit_streams_stdout()

    def on_line(line: str) -> None:
        if stream:
            print(line, flush=True)
        status.update(phase_of(line), line)

    try:
        with StatusLine(f"{job.task}: trtexec") as status:
            code = run_logged(job.trtexec, ["trtexec", *argv], cwd=work, log_file=log,
                              timeout_s=job.build.timeout_s, on_line=on_line)
    except ToolTimeout as exc:
        _keep_failed_log(job, log)
        raise StageError(f"{job.task}: trtexec was stopped after {exc.seconds:.0f} s (build.timeout); "
                         f"raise build.timeout or see {job.out_dir / 'trtexec.failed.log'}") from None
    text = read_log_evidence(log) if log.exists() else ""
    if code != 0:
        _keep_failed_log(job, log)
        cause = _failure_cause(code, first_error(text))
        raise StageError(f"{job.task}: trtexec failed: {cause} (full log: {job.out_dir / 'trtexec.failed.log'})")
    engine = work / ENGINE
    if not engine.is_file() or engine.stat().st_size == 0:
        _keep_failed_log(job, log)
        raise StageError(f"{job.task}: trtexec exited 0 but wrote {'an empty' if engine.is_file() else 'no'} "
                         f"engine (log: {job.out_dir / 'trtexec.failed.log'})")
    built = read_build_log(text)
    problem = _unconfirmed_build(job, built, engine.stat().st_size)
    if problem:
        _keep_failed_log(job, log)
        raise StageError(f"{job.task}: {problem} (log: {job.out_dir / 'trtexec.failed.log'})")
    info(f"{job.task}: engine built in {time.monotonic() - started:.1f} s")
    return built


# trtexec's printPlanVersion reads a 28-byte plan header and calls anything shorter
# "Plan file is incorrect" (sampleEngines.cpp, 10.x).
MIN_PLAN_BYTES = 28


def _unconfirmed_build(job: EngineJob, built: BuildLog, engine_bytes: int) -> str | None:
    """Why trtexec's exit 0 does not make this build a success, or None when its log confirms it.

    The engine's identity is what built it (issue 13): the TensorRT version is the one the
    build's own banner reports, which must be the probed one whose grammar rendered the argv
    and whose name keys the task and the timing cache; the GPU is the one its device block
    names, which must be the one the task is keyed by."""
    from ..gpu import gpu_identity
    from ..trtexec import PROBE_CACHE, forget_probe, size_matches

    if built.version is not None and built.version != job.version:
        forget_probe(job.trtexec, job.timing_cache_dir.parent / PROBE_CACHE)
        return (f"trtexec reported TensorRT {built.version} but was probed as {job.version}; its TensorRT changed "
                "after the probe (a wrapper that picks TensorRT from the environment?), so nothing was published "
                "and its probe is forgotten: rerun")
    if built.version is not None and built.library is not None and built.library != built.version:
        return (f"trtexec {built.version} ran with the TensorRT {built.library} library; nothing was published: "
                "point LD_LIBRARY_PATH at the TensorRT that trtexec came with, or use that TensorRT's own trtexec")
    if built.missing:
        return (f"trtexec exited 0 but its log shows no finished build (no {', no '.join(built.missing)}); "
                "nothing was published")
    if engine_bytes < MIN_PLAN_BYTES:
        return (f"trtexec exited 0 but wrote a {engine_bytes}-byte engine, too small to be a TensorRT plan; "
                "nothing was published")
    if built.engine_mib is not None and not size_matches(engine_bytes, built.engine_mib):
        return (f"trtexec reported an engine of {built.engine_mib:g} MiB but {ENGINE} holds {engine_bytes} bytes; "
                "nothing was published")
    host = gpu_identity()
    if host and built.device.get("compute_capability") != host["compute_capability"]:
        return (f"trtexec built on {built.device.get('gpu')} (compute capability "
                f"{built.device.get('compute_capability')}) but the engine is keyed by {host['name']} "
                f"({host['compute_capability']}), the first GPU CUDA sees as NVML numbers them; nothing was "
                "published: set CUDA_DEVICE_ORDER=PCI_BUS_ID (and CUDA_VISIBLE_DEVICES) so both agree, and rerun")
    return None


def _failure_cause(code: int, error_line: str | None) -> str:
    """Why trtexec failed, in a few words: the signal that killed it, else its first [E] line."""
    if code > 0:
        return error_line or f"exit code {code} and no [E] line"
    try:
        cause = f"killed by signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        cause = f"killed by signal {-code}"
    if error_line:
        cause += f" after: {error_line}"
    if -code == signal.SIGKILL:  # the kernel's out-of-memory killer uses SIGKILL and says so only in its log
        cause += "; if nobody stopped it, the out-of-memory killer may have (see `dmesg`)"
    return cause


def _keep_failed_log(job: EngineJob, log: Path) -> None:
    if log.exists():
        os.replace(log, job.out_dir / "trtexec.failed.log")


def _publish(job: EngineJob, argv: list[str], work: Path, intent: EngineIntent, dropped: tuple[str, ...],
             built: BuildLog) -> None:
    """Move the confirmed build's outputs out of `work`; its summary records what the log says built it."""
    from ..trtexec import parse_perf_summary, read_log_evidence

    text = read_log_evidence(work / LOG)
    engine = work / ENGINE
    summary = {
        "task": job.task,
        "tensorrt": str(built.version),
        "argv": argv,
        "device": built.device,
        "performance": parse_perf_summary(text),
        "engine_bytes": engine.stat().st_size,
        "engine_sha256": _sha256(engine),
        **({"calibration_cache_without": list(dropped)} if intent.calibration_cache == KEEP_FP32_CACHE else {}),
    }
    with atomic_output(job.out_dir / SUMMARY) as temp:
        temp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(work / LOG, job.out_dir / LOG)
    if intent.calibration_cache == KEEP_FP32_CACHE:  # reproduce.sh and a release need the cache trtexec read
        os.replace(work / KEEP_FP32_CACHE, job.out_dir / KEEP_FP32_CACHE)
    else:
        remove_path(job.out_dir / KEEP_FP32_CACHE)
    os.replace(engine, job.out_dir / ENGINE)
    remove_path(job.out_dir / "trtexec.failed.log")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

