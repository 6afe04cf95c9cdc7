"""fleet: engines built on machines of their GPU class, through Ray (issue 16).

An engine runs only on the GPU model and TensorRT it was built with, so a recipe's
`targets:` names classes of build machines. Each class is a Ray custom resource that its
machines advertise, one unit per GPU (`ray start --resources '{"trt:sm_86-trt10": 1}'`), so
a machine runs one build per GPU at a time and Ray, not trtforge, places the work.

`engine:R-V@T` is one doit task; its action submits one Ray task pinned by T's resource
and waits for it (several at once with `doit -n N -P thread`). The Ray task runs the very
engine stage a local build runs (stages/engine.py `build_engine`), in a scratch folder laid
out like the project, with that machine's own trtexec, whose version must be of the class's
generation. The inputs travel by content: each file is put into Ray's object store once per
sha256 per driver process. What comes back is every output with its sha256, checked again
here and published as a local build publishes (atomically, engine last); the engine's
identity is what the remote build's own log says, recorded in summary.json.

The class's timing cache lives here (artifacts/cache/timing/fleet/), verified as a local
one is (SharedTimingCache). Its lock is held only to read it and to write it back, never
across a build, so the machines of a class build at once. A build is submitted only when a
GPU of its class is free (one slot per unit the class's live machines advertise, per doit
process), and it reads the cache then: builds that follow one another on a machine each
start from the cache the one before published, so none loses another's timings. Builds
that run side by side on two machines start from the same cache; the first to finish
publishes its cache, and the later ones' new entries are left out (one line says so):
merging two TensorRT timing caches takes TensorRT's own API, which this driver does not
have, and a left-out timing only costs a later build its time.

Failure is one line naming the task: a class no live node advertises (checked before
submitting, and again while waiting: Ray would wait forever for a class whose last machine
was lost), a machine whose trtexec is of another generation, a build over `build.timeout`
(cancelled), a machine lost twice (Ray retries once on a machine of the class), Ctrl-C or
SIGTERM (every remote build is cancelled and its trtexec stopped, also under
`doit -P thread`, where the signal reaches the main thread, not the waiting ones).

Ray is imported only here, only inside an engine task of a recipe with targets: never when
dodo.py loads, and never in a process that doit then forks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_output, remove_path
from .errors import StageError, ToolError, TrtforgeError, require
from .recipe import PassSpec
from .render import KEEP_FP32_CACHE
from .stages.engine import ENGINE, LOG, SCRIPT, SUMMARY, EngineJob, SharedTimingCache, build_engine

ADDRESS_ENV = "TRTFORGE_RAY_ADDRESS"  # where the cluster's head is; default: the one `ray start` left here
OUTPUTS = (ENGINE, LOG, SUMMARY, SCRIPT, KEEP_FP32_CACHE)
TRANSFER_GRACE_S = 300  # beyond build.timeout: shipping inputs and outputs, starting a worker
CANCEL_GRACE_S = 10  # a cancelled build gets this long to stop its trtexec before its worker is killed


@dataclass(frozen=True)
class FleetJob:
    """One engine of a target class. `engine` is the job as planned here: paths under `root`,
    rendered for the class's declared generation (the machine renders again for its own)."""

    engine: EngineJob
    target: str
    resource: str
    generation: str
    root: Path
    passes: tuple[PassSpec, ...] = ()


class FleetError(StageError):
    """A fleet build that cannot start or did not finish: one line."""


def build_on_target(job: FleetJob) -> None:
    """Build the engine on a machine of the job's class and publish what it returns."""
    ray = connect()
    task = job.engine.task
    _require_class(ray, job, task)
    inputs = {_relative(job, path): _shipped(ray, path) for path in _input_files(job.engine)}
    if not job.engine.build.timing_cache:
        result = _run_remote(ray, job, inputs, None)
    else:
        cache_path = job.engine.timing_cache_dir / f"{_slug(job.resource)}.cache"
        with _class_slot(ray, job.resource):
            with SharedTimingCache(job.engine, path=cache_path) as cache:
                started_from = _verified_bytes(cache)
            result = _run_remote(ray, job, inputs, started_from)
            if result.get("timing_cache"):
                _publish_timing_cache(job, cache_path, started_from, result["timing_cache"])
    if "failed" in result:
        if result["failed_log"] is not None:
            job.engine.out_dir.mkdir(parents=True, exist_ok=True)
            with atomic_output(job.engine.out_dir / "trtexec.failed.log") as temp:
                temp.write_bytes(result["failed_log"])
        raise FleetError(f"{result['failed']} (on {result['node']}, {job.resource})")
    _publish(job, result["files"], result["sha256"], result["node"])


def _run_remote(ray, job: FleetJob, inputs: dict, timing: bytes | None) -> dict:
    """Submit the build to a machine of the job's class (Ray retries once elsewhere if the
    machine is lost) and wait for what it returns."""
    remote = ray.remote(_build_here).options(resources={job.resource: 1}, num_cpus=0, max_retries=1,
                                             retry_exceptions=False, name=job.engine.task)
    ref = remote.remote(_payload(job, timing), inputs)
    _IN_FLIGHT[ref] = job.engine.task
    try:
        return _wait(ray, ref, job)
    finally:
        _IN_FLIGHT.pop(ref, None)


_SLOTS: dict[str, threading.BoundedSemaphore] = {}


def _class_slot(ray, resource: str) -> threading.BoundedSemaphore:
    """The slot a build of `resource` holds while it runs: as many as the class's live
    machines advertise units when its first build here starts (at least one)."""
    with _CONNECT_LOCK:
        if resource not in _SLOTS:
            _SLOTS[resource] = threading.BoundedSemaphore(max(1, int(live_classes(ray).get(resource, 1))))
        return _SLOTS[resource]


def _publish_timing_cache(job: FleetJob, path: Path, started_from: bytes | None, updated: bytes) -> None:
    """Publish the cache a build returned, unless another build of the class published one
    after this build read it: that newer cache is kept (see the module's docstring)."""
    with SharedTimingCache(job.engine, path=path) as cache:
        if not cache.published_as(started_from):
            from .console import info

            info(f"{job.engine.task}: another {job.resource} build updated the class's timing cache meanwhile; "
                 "it is kept, and this build's new timings are left out of it")
            return
        with tempfile.TemporaryDirectory() as scratch:
            built = Path(scratch) / "timing.cache"
            built.write_bytes(updated)
            cache.update_from(built)


# ----------------------------------------------------------------------------- the driver side

_CONNECT_LOCK = threading.Lock()
_IN_FLIGHT: dict = {}  # ObjectRef -> engine task, of the builds this process waits for (one per doit thread)
LIVENESS_CHECK_S = 5  # how often a waiting build asks whether a machine of its class is still alive


def connect():  # -> the ray module, connected
    """Ray, connected to the cluster at $TRTFORGE_RAY_ADDRESS (else the one started on this
    machine), once per process; never a cluster started implicitly."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # as `fleet up` starts nodes (auth_env); read at import
    ray = require("ray", "fleet")
    with _CONNECT_LOCK:
        if ray.is_initialized():
            return ray
        address = os.environ.get(ADDRESS_ENV, "auto")
        handlers = _signal_handlers()
        logging.getLogger("ray").setLevel(logging.ERROR)  # its warnings are about its own setup; failures are ours to say
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False, include_dashboard=False)
            from .session import on_stop

            on_stop(lambda: _cancel(ray, dict(_IN_FLIGHT)))
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ToolError(f"cannot join the Ray cluster at {address} ({str(exc).splitlines()[0]}): start one with "
                            f"`trtforge fleet up`, set {ADDRESS_ENV} to its head (host:port), and give this "
                            "machine the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN; docs/fleet.md)") from None
        finally:
            _restore_signal_handlers(handlers)  # trtforge's own: Ctrl-C and SIGTERM stop doit cleanly
    return ray


def _signal_handlers() -> dict:
    import signal

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: dict) -> None:
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def live_classes(ray) -> dict[str, float]:
    """{resource: total units} over the cluster's live nodes."""
    totals: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for name, amount in node.get("Resources", {}).items():
                totals[name] = totals.get(name, 0) + amount
    return totals


def _require_class(ray, job: FleetJob, task: str) -> None:
    classes = live_classes(ray)
    if classes.get(job.resource, 0) < 1:
        known = sorted(name for name in classes if ":" in name)
        raise FleetError(f"{task}: no live machine of the fleet advertises {job.resource} (targets.{job.target}); "
                         f"it has {', '.join(known) or 'no trt: classes'}: start one with "
                         f"`ray start --address=<head> --resources '{{\"{job.resource}\": 1}}'`")


_SHIPPED: dict[str, object] = {}  # sha256 -> ObjectRef: each content goes into the object store once


def _shipped(ray, path: Path):
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _SHIPPED:
        _SHIPPED[digest] = ray.put(data)
    return _SHIPPED[digest]


def _input_files(job: EngineJob) -> list[Path]:
    return [job.onnx, *job.plugin_files, *([job.calibration_cache] if job.calibration_cache else [])]


def _relative(job: FleetJob, path: Path) -> str:
    """The input's place in the scratch project on the build machine: where it is here, for a
    file in the project; under inputs/ for one from elsewhere (an absolute plugin path)."""
    try:
        return path.resolve().relative_to(job.root.resolve()).as_posix()
    except ValueError:
        return f"inputs/{hashlib.sha256(str(path).encode()).hexdigest()[:12]}/{path.name}"


def _payload(job: FleetJob, timing: bytes | None) -> dict:
    engine = job.engine
    return {"task": engine.task, "generation": job.generation, "resource": job.resource, "precision": engine.precision,
            "build": engine.build, "passes": job.passes, "onnx": _relative(job, engine.onnx),
            "plugins": [_relative(job, p) for p in engine.plugin_files],
            "calibration_cache": _relative(job, engine.calibration_cache) if engine.calibration_cache else None,
            "out_dir": _relative(job, engine.out_dir), "timing_cache": timing}


def _verified_bytes(cache: SharedTimingCache) -> bytes | None:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "timing.cache"
        cache.copy_to(copy)
        return copy.read_bytes() if copy.is_file() else None


def _wait(ray, ref, job: FleetJob) -> dict:
    """The remote build's result; cancelled on timeout, Ctrl-C or SIGTERM, one line on failure."""
    task, timeout = job.engine.task, job.engine.build.timeout_s
    deadline = time.monotonic() + timeout + TRANSFER_GRACE_S
    next_check = time.monotonic() + LIVENESS_CHECK_S
    try:
        while not ray.wait([ref], timeout=0.5)[0]:
            if time.monotonic() > deadline:
                _cancel(ray, {ref: task})
                raise FleetError(f"{task}: no result from the {job.resource} machine within build.timeout "
                                 f"({timeout} s) and {TRANSFER_GRACE_S} s for transfers; the build was cancelled")
            if time.monotonic() > next_check:
                next_check = time.monotonic() + LIVENESS_CHECK_S
                if live_classes(ray).get(job.resource, 0) < 1:
                    _cancel(ray, {ref: task})
                    raise FleetError(f"{task}: no live machine of the fleet advertises {job.resource} any more "
                                     "(the one building it was lost); nothing was published: rerun once a machine "
                                     "of the class is back")
        return ray.get(ref)
    except (KeyboardInterrupt, SystemExit):
        _cancel(ray, {ref: task})
        raise
    except FleetError:
        raise
    except Exception as exc:  # noqa: BLE001 - every Ray failure becomes the task's one line
        raise FleetError(_failure_line(ray, exc, job)) from None


def _cancel(ray, builds: dict) -> None:
    """Ask the builds ({ObjectRef: engine task}) to stop, each ending its trtexec as on a local
    Ctrl-C and removing its scratch folder, and wait for that; end the workers of those not
    done within CANCEL_GRACE_S.

    A cancelled build's result can be settled before its worker has finished cleaning up, and
    a driver that exits then takes its workers with it (Ray ends a job's workers with its
    driver): the build's entry in BUILDS_NAMESPACE, removed last, says when it is done."""
    if not builds:
        return
    refs = list(builds)
    deadline = time.monotonic() + CANCEL_GRACE_S
    with contextlib.suppress(Exception):  # a cluster already gone has nothing left to cancel
        from ray.experimental.internal_kv import _internal_kv_list

        for ref in refs:
            ray.cancel(ref)
        _, running = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
        for ref in running:
            ray.cancel(ref, force=True)
        tasks, live = set(builds.values()), {node["NodeID"] for node in ray.nodes() if node.get("Alive")}

        def cleaning_up() -> bool:
            entries = (key.decode().split("/", 1) for key in _internal_kv_list("", namespace=BUILDS_NAMESPACE))
            return any(node in live and task in tasks for node, task in entries)

        while time.monotonic() < deadline and cleaning_up():
            time.sleep(0.1)


def _failure_line(ray, exc: Exception, job: FleetJob) -> str:
    task = job.engine.task
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception) and isinstance(cause, (StageError, ToolError)):
        return f"{task} on {job.resource}: {cause}"
    lost = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError)
    if isinstance(exc, lost):
        return (f"{task}: the {job.resource} machine building it was lost, and so was the retry on another "
                f"machine of the class ({type(exc).__name__}); nothing was published: rerun")
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return f"{task}: the build on {job.resource} was cancelled; nothing was published"
    first = str(cause or exc).strip().splitlines()
    return f"{task} on {job.resource}: {type(cause or exc).__name__}: {first[-1] if first else ''}"


def _publish(job: FleetJob, files: dict[str, bytes], sha256: dict[str, str], node: str) -> None:
    """Check what came back against the sha256 the machine sent, then publish like a local
    build: everything but the engine first, the engine last, each atomically."""
    out = job.engine.out_dir
    for name, data in files.items():
        if hashlib.sha256(data).hexdigest() != sha256.get(name):
            raise FleetError(f"{job.engine.task}: {name} from {node} does not match the sha256 it was sent with; "
                             "nothing was published: rerun")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        if name != ENGINE and name not in files:
            remove_path(out / name)  # a file an earlier build of another kind left
    for name in sorted(files, key=lambda n: n == ENGINE):
        with atomic_output(out / name) as temp:
            temp.write_bytes(files[name])
    from .console import info

    info(f"{job.engine.task}: built on {node} ({job.resource})")


def _slug(resource: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in resource)


# ----------------------------------------------------------------------------- fleet up / status / down

def auth_env() -> dict[str, str]:
    """Ray's token authentication, on unless RAY_AUTH_MODE says otherwise: every node `fleet up`
    starts and every driver requires the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token), so a cluster reachable on the network does not run whoever's code."""
    return {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}


def _ensure_token() -> None:
    """A token where Ray looks for one, generated into ~/.ray/auth_token if there is none."""
    import subprocess

    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
            (Path.home() / ".ray" / "auth_token").is_file():
        return
    result = subprocess.run([_ray_command(), "get-auth-token", "--generate"], capture_output=True, text=True,
                            check=False, env={**os.environ, **auth_env()})
    if result.returncode != 0:
        raise ToolError(f"could not generate a Ray token: {(result.stderr or result.stdout).strip()[-200:]}")


def state_dir() -> Path:
    """Where `fleet up` records the nodes it started, so `fleet down` stops those and nothing else."""
    return Path(os.environ.get("TRTFORGE_FLEET_STATE", Path.home() / ".cache" / "trtforge" / "fleet"))


def start_node(classes: dict[str, int], address: str | None, port: int, node_ip: str | None) -> dict:
    """Start a Ray node here, in the background: a head (address None) or a build machine joining
    `address`, advertising `classes` ({resource: GPUs}). It is `ray start --block`, so stopping
    that one process stops exactly this node (`stop_nodes`); its record and log go to state_dir().
    Returns the record; raises ToolError, with Ray's last line, when the node does not come up."""
    import subprocess

    command = [_ray_command(), "start", "--disable-usage-stats", "--block",
               *([f"--node-ip-address={node_ip}"] if node_ip else [])]
    command += ["--head", f"--port={port}", "--include-dashboard=false"] if address is None else [f"--address={address}"]
    if classes:
        command.append("--resources=" + json.dumps(classes, sort_keys=True))
    if auth_env()["RAY_AUTH_MODE"] == "token" and address is None:
        _ensure_token()  # a machine joining must be given the head's token (docs/fleet.md)
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"node-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    with open(log, "w") as out:
        node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                env={**os.environ, **auth_env(), "RAY_USAGE_STATS_ENABLED": "0"})
    deadline = time.monotonic() + 120
    while "will now block forever" not in log.read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            node.kill()
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            raise ToolError(f"`ray start` did not bring the node up: {lines[-1] if lines else 'no output'} "
                            f"(log: {log})")
        time.sleep(0.5)
    record = {"pid": node.pid, "command": command, "log": str(log), "head": address or f"{node_ip or 'this host'}:{port}"}
    (folder / f"node-{node.pid}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


BUILDS_NAMESPACE = "trtforge-builds"  # Ray's key-value store: "<node id>/<engine task>" while it builds


def status_rows(ray) -> list[dict]:
    """One row per live node: its address, the build classes it advertises with the units in
    use on it, and the engine tasks it is building.

    Ray's per-node figures and key-value store are developer APIs, steady within the Ray
    version the fleet extra pins. A build whose machine lost its worker outright leaves its
    entry behind; it is shown only while its node has a unit of a class in use."""
    from ray._private.state import available_resources_per_node
    from ray.experimental.internal_kv import _internal_kv_list

    available = available_resources_per_node()
    building: dict[str, list[str]] = {}
    for key in _internal_kv_list("", namespace=BUILDS_NAMESPACE):
        node_id, task = key.decode().split("/", 1)
        building.setdefault(node_id, []).append(task)
    rows = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        classes = {name: int(amount) for name, amount in node.get("Resources", {}).items() if name.startswith("trt:")}
        free = available.get(node["NodeID"], {})
        busy = {name: units - int(free.get(name, 0)) for name, units in classes.items()}
        rows.append({"address": node.get("NodeManagerAddress"), "classes": classes, "busy": busy,
                     "builds": sorted(building.get(node["NodeID"], [])) if any(busy.values()) else []})
    return rows


@contextlib.contextmanager
def _announced(ray, task: str):
    """While a build runs on this machine, its entry in BUILDS_NAMESPACE (for `fleet status`)."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    key = f"{ray.get_runtime_context().get_node_id()}/{task}"
    _internal_kv_put(key, str(time.time()), namespace=BUILDS_NAMESPACE)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the cluster may be going down with the build
            _internal_kv_del(key, namespace=BUILDS_NAMESPACE)


def stop_nodes(grace_s: float = 60) -> list[int]:
    """Stop the nodes `fleet up` started here (SIGTERM to each `ray start --block`, which ends its
    own node's processes); returns their pids. Other Ray processes are left alone."""
    import signal

    stopped = []
    for record_file in sorted(state_dir().glob("node-*.json")):
        pid = json.loads(record_file.read_text())["pid"]
        if _is_ray_start(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _is_ray_start(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _is_ray_start(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(pid)
        record_file.unlink()
    return stopped


def _is_ray_start(pid: int) -> bool:
    """Whether `pid` is still a `ray start` (not a reused pid, not a zombie)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return status != "Z" and b"start" in cmdline and any(part.endswith(b"ray") for part in cmdline)


def _ray_command() -> str:
    """The `ray` command installed beside this Python (the fleet extra), else the one on PATH."""
    import shutil
    import sys

    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        require("ray", "fleet")  # says which extra to install
        raise ToolError("the `ray` command is not on PATH beside this Python; reinstall trtforge[fleet]")
    return ray_cli


# ----------------------------------------------------------------------------- the machine side

SCRATCH_PREFIX, SCRATCH_OWNER = "trtforge-fleet-", ".trtforge-owner"  # a build's folder on its machine, its pid


def _interruptible() -> None:
    """Let Ray's cancel interrupt this build. It raises KeyboardInterrupt through Python's
    SIGINT handler (`_thread.interrupt_main`), which does nothing while SIGINT is ignored, and
    a worker inherits SIGINT ignored from a node started in a shell's background job (a CI
    runner's, `nohup`): its builds were then only ever killed, trtexec and scratch left to
    the parent-death signal (measured on CI)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _remove_abandoned_scratch() -> None:
    """Remove the scratch folders of builds whose worker is gone (killed outright, or ended
    with its driver before it had cleaned up): they hold a copy of the model. A folder whose
    recorded pid runs (or that records none yet) is left alone."""
    import shutil

    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            pid = int((folder / SCRATCH_OWNER).read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _build_here(payload: dict, inputs: dict) -> dict:
    """Runs on a build machine: the engine stage in a scratch project laid out like the
    driver's, with this machine's trtexec; returns every output with its sha256."""
    import ray

    from .render import check_intent
    from .trtexec import locate_trtexec, not_found_message, probe_version

    _interruptible()
    _remove_abandoned_scratch()
    with _announced(ray, payload["task"]), tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as scratch:
        root = Path(scratch)
        (root / SCRATCH_OWNER).write_text(str(os.getpid()))
        for relative, ref in inputs.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(ray.get(ref))
        node = ray.util.get_node_ip_address()
        trtexec = locate_trtexec()
        if trtexec is None:
            raise ToolError(f"machine {node}: {not_found_message()}")
        version = probe_version(trtexec, root / "probe.json")
        if version.generation != payload["generation"]:
            raise ToolError(f"machine {node} advertises {payload['resource']} but its trtexec is TensorRT {version} "
                            f"(grammar {version.generation}, not {payload['generation']}): fix its resources or "
                            "its TRTEXEC")
        mode = check_intent(payload["precision"], payload["build"], version, payload["passes"])
        job = EngineJob(task=payload["task"], trtexec=trtexec, version=version, onnx=root / payload["onnx"],
                        precision=payload["precision"], mode=mode, build=payload["build"],
                        plugin_files=tuple(root / p for p in payload["plugins"]),
                        calibration_cache=root / payload["calibration_cache"] if payload["calibration_cache"] else None,
                        out_dir=root / payload["out_dir"], timing_cache_dir=root / "timing")
        cache = SharedTimingCache(job).path
        if payload["timing_cache"] and job.build.timing_cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(payload["timing_cache"])
            cache.with_name(cache.name + ".sha256").write_text(
                f"{hashlib.sha256(payload['timing_cache']).hexdigest()}  {cache.name}\n")
        try:
            build_engine(job, not_found_message())
        except TrtforgeError as exc:  # trtexec failed here: its log goes back beside the engine's place
            failed = job.out_dir / "trtexec.failed.log"
            return {"failed": str(exc).replace(f"{root}/", ""), "node": node,
                    "failed_log": failed.read_bytes() if failed.is_file() else None}
        files = {name: (job.out_dir / name).read_bytes() for name in OUTPUTS if (job.out_dir / name).is_file()}
        return {"files": files, "sha256": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
                "timing_cache": cache.read_bytes() if cache.is_file() else None, "node": node}

