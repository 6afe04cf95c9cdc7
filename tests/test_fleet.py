"""Fleet builds on Ray (fleet.py), CPU only: a real local Ray cluster of a head and two build
machines, each advertising one fake GPU class and running the trtexec double of a different
TensorRT generation with a different fake GPU, so an engine built on the wrong class cannot
pass. Every node is bound to 127.0.0.1, usage statistics and token authentication are off,
and the cluster has its own Ray temp folder. The models are tiny ONNX files (1x3x32x32): the
dispatch is under test, not the network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import executed, make_project, run_doit
from doubles.trtexec import decode_timing_cache, make_wrapper, read_engine, running_through

pytestmark = pytest.mark.slow
pytest.importorskip("ray")

TEN, EIGHT = "trt:fake_t4-trt10", "trt:fake_a10-trt8.6"
GPUS = {TEN: ("NVIDIA T4", "7.5"), EIGHT: ("NVIDIA A10", "8.6")}
QUIET = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_process_group_cleanup_enabled": "1",
         "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


def _loopback_namespace() -> subprocess.Popen:
    """A process holding a network namespace of our own with only loopback, up. Ray resolves
    127.0.0.1 to the machine's routable address when it can; in here it cannot, so every node
    and driver is on loopback and nothing of the cluster is reachable from outside."""
    command = ["unshare", "--net", *([] if os.geteuid() == 0 else ["--map-root-user"]), "sleep", "infinity"]
    holder = subprocess.Popen(command)
    time.sleep(0.3)
    subprocess.run([*_inside(holder), "ip", "link", "set", "lo", "up"], check=True)
    return holder


def _inside(holder: subprocess.Popen) -> list[str]:
    return ["nsenter", f"--target={holder.pid}", "--net", *([] if os.geteuid() == 0 else ["--user",
                                                                                        "--preserve-credentials"])]


def _controlled_wrapper(folder: Path, version: str) -> Path:
    """The double's wrapper, whose builds take as many seconds as `folder/slow` says (if it
    exists), and which appends each call's arguments to `folder/calls`."""
    wrapper = make_wrapper(folder, version)
    slow = folder / "slow"
    wrapper.write_text(wrapper.read_text().replace(
        "unset TRTEXEC_DOUBLE_BUILD_SECONDS",
        f'if [ -f {slow} ]; then export TRTEXEC_DOUBLE_BUILD_SECONDS="$(cat {slow})"; '
        f'else unset TRTEXEC_DOUBLE_BUILD_SECONDS; fi; echo "$*" >> {folder / "calls"}'))
    return wrapper


def _builds_started(wrapper: Path) -> int:
    calls = wrapper.parent / "calls"
    return sum("--saveEngine" in line for line in calls.read_text().splitlines()) if calls.exists() else 0


def _live_nodes(cluster: dict) -> list[dict]:
    probe = (f"import json, ray; ray.init(address={cluster['address']!r}, log_to_driver=False); "
             "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))")
    result = subprocess.run([*cluster["inside"], sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **QUIET}, check=False)
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else []


def _wait_for(cluster: dict, nodes: list, resource: str | None, log: Path) -> None:
    deadline = time.monotonic() + 120
    while not any(resource is None or resource in n["Resources"] for n in _live_nodes(cluster)):
        assert time.monotonic() < deadline and nodes[-1].poll() is None, log.read_text()[-3000:]
        time.sleep(2)


def _as_a_background_job() -> None:
    """A build machine started as a shell's background job (`ray start ... &` in a script, a CI
    runner, nohup) has SIGINT ignored, and so has every Ray worker it starts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """{address, inside, wrappers: {resource: trtexec wrapper}}: a head (no build class) and two
    build machines, in a network namespace of their own."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    ray_cli = str(Path(sys.executable).parent / "ray")
    env, logs = {**os.environ, **QUIET}, tmp_path_factory.mktemp("ray-logs")
    holder = _loopback_namespace()
    cluster = {"address": "127.0.0.1:6379", "inside": _inside(holder), "wrappers": {}, "scratch": {}}
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--block"]
    nodes = []
    try:
        nodes.append(subprocess.Popen([*cluster["inside"], ray_cli, "start", "--head", "--port=6379",
                                       "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
                                       *common], env=env, stdout=open(logs / "head.log", "w"), stderr=subprocess.STDOUT))
        _wait_for(cluster, nodes, None, logs / "head.log")
        for resource, version in ((TEN, "10.8"), (EIGHT, "8.6")):
            wrapper = cluster["wrappers"][resource] = _controlled_wrapper(tmp_path_factory.mktemp("bin"), version)
            scratch = cluster["scratch"][resource] = tmp_path_factory.mktemp("machine-tmp")  # its builds' folders
            name, cc = GPUS[resource]
            nodes.append(subprocess.Popen(
                [*cluster["inside"], ray_cli, "start", f"--address={cluster['address']}",
                 f"--resources={json.dumps({resource: 1})}", "--include-log-monitor=false", "--min-worker-port=0",
                 "--max-worker-port=0", "--dashboard-agent-listen-port=0", *common],
                env={**env, "TRTEXEC": str(wrapper), "DOUBLE_GPU": f"{name}, {cc}", "TMPDIR": str(scratch)},
                stdout=open(logs / f"{version}.log", "w"), stderr=subprocess.STDOUT,
                preexec_fn=_as_a_background_job))
            _wait_for(cluster, nodes, resource, logs / f"{version}.log")
        assert {n["NodeManagerAddress"] for n in _live_nodes(cluster)} == {"127.0.0.1"}  # loopback only
        yield cluster
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
        holder.kill()
        shutil.rmtree(temp, ignore_errors=True)


def tiny_onnx(path: Path, seed: int) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="/conv", pads=[1] * 4),
                               helper.make_node("Relu", ["c"], ["y"], name="/relu")], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 32, 32])], [weight])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def recipe(model: str, targets: dict) -> str:
    lines = "\n".join(f"  {name}: {{resource: '{resource}', tensorrt: '{trt}'}}"
                      for name, (resource, trt) in targets.items())
    return f"""\
model: {{source: onnx, path: models/{model}.onnx}}
input: {{name: x, shape: [1, 3, 32, 32], dynamic_axes: [0]}}
surgery: []
build:
  profiles:
    - x: {{min: [1, 3, 32, 32], opt: [1, 3, 32, 32], max: [2, 3, 32, 32]}}
  workspace: 256MiB
variants:
  fp32: {{precision: fp32}}
  fp16: {{precision: fp16}}
targets:
{lines}
"""


CLASSES = {"t4": (TEN, "10"), "a10": (EIGHT, "8.6")}


@pytest.fixture(scope="module")
def fleet_project(tmp_path_factory) -> Path:
    """Two recipes (two models) whose engines go to both classes."""
    root = tmp_path_factory.mktemp("fleet") / "proj"
    project = make_project(root, {"alpha": recipe("alpha", CLASSES), "beta": recipe("beta", CLASSES)})
    tiny_onnx(project / "models" / "alpha.onnx", 1)
    tiny_onnx(project / "models" / "beta.onnx", 2)
    return project


def fleet_env(cluster) -> dict:
    return {**QUIET, "TRTFORGE_RAY_ADDRESS": cluster["address"], "TRTEXEC": "/nonexistent/trtexec"}


def doit_inside(cluster: dict, project: Path, *args: str) -> subprocess.CompletedProcess:
    """doit as the fleet's driver: in the cluster's network namespace, where its head is."""
    from conftest import doit_env

    return subprocess.run([*cluster["inside"], sys.executable, "-m", "doit", *args], cwd=project,
                          env=doit_env(fleet_env(cluster)), capture_output=True, text=True, timeout=600)


def test_every_engine_is_built_by_its_class_and_a_rerun_does_nothing(cluster, fleet_project):
    builds = [f"build:{r}-{v}" for r in ("alpha", "beta") for v in ("fp32", "fp16")]
    result = doit_inside(cluster, fleet_project, "-n", "4", "-P", "thread", *builds)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for r in ("alpha", "beta"):
        for v in ("fp32", "fp16"):
            for target, (resource, generation) in CLASSES.items():
                out = fleet_project / "artifacts" / r / v / "targets" / target
                engine = read_engine(out / "engine.plan")
                assert engine["trt_version"].startswith("10.8" if generation == "10" else "8.6"), (r, v, target)
                assert engine["device"]["name"] == GPUS[resource][0]  # the class's machine built it
                summary = json.loads((out / "summary.json").read_text())
                assert summary["tensorrt"] == engine["trt_version"]
                workspace = "--memPoolSize=workspace:256M" if generation == "10" else "--memPoolSize=workspace:256"
                assert workspace in summary["argv"] and ("--fp16" in summary["argv"]) == (v == "fp16")
                assert "/tmp/" not in (out / "trtexec.sh").read_text()  # nothing of the machine's scratch folder
    for resource, version in ((TEN, "10.8"), (EIGHT, "8.6")):
        slug = resource.replace(":", "_")
        cache = decode_timing_cache((fleet_project / "artifacts/cache/timing/fleet" / f"{slug}.cache").read_bytes())
        assert len(cache) == 4 and {e["trt_version"][:len(version)] for e in cache.values()} == {version}
        assert {e["device"] for e in cache.values()} == {GPUS[resource][0]}  # only its class's entries

    again = doit_inside(cluster, fleet_project, "-n", "4", "-P", "thread", *builds)
    assert again.returncode == 0 and executed(again) == [], again.stdout

    package = doit_inside(cluster, fleet_project, "package:alpha-fp16@t4")
    assert package.returncode == 0, package.stdout + package.stderr
    (archive,) = (fleet_project / "artifacts" / "release").glob("alpha-fp16@t4-trt10.8.0-sm75-*.tar.gz")
    assert json.loads((fleet_project / "artifacts/release/alpha-fp16@t4.release.json").read_text())["archive"] == \
        archive.name


def test_loading_dodo_or_planning_a_fleet_recipe_imports_no_ray(fleet_project, tmp_path):
    trap = tmp_path / "trap" / "ray"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("raise ImportError('ray was imported while loading dodo.py')\n")
    result = run_doit(fleet_project, "list", "--all", env={"PYTHONPATH": str(tmp_path / "trap")})
    assert result.returncode == 0, result.stderr
    assert "engine:alpha-fp16@t4" in result.stdout and "engine:alpha-fp16@a10" in result.stdout

    from conftest import doit_env

    plan = subprocess.run([str(Path(sys.executable).parent / "trtforge"), "plan", "alpha-fp16", "--project",
                           str(fleet_project)], env=doit_env({"PYTHONPATH": str(tmp_path / "trap")}),
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stdout + plan.stderr  # where each engine would build, with no Ray at all
    assert f"trtexec for alpha-fp16@t4 (on a {TEN} machine of the fleet, TensorRT 10 grammar;" in plan.stdout
    assert f"trtexec for alpha-fp16@a10 (on a {EIGHT} machine of the fleet, TensorRT 8.6 grammar;" in plan.stdout
    assert "--memPoolSize=workspace:256M" in plan.stdout and "--memPoolSize=workspace:256 " in plan.stdout


def test_a_class_nobody_advertises_fails_in_seconds_and_a_wrong_machine_in_one_line(cluster, tmp_path):
    project = make_project(tmp_path / "proj", {"gamma": recipe("gamma", {
        "t4": (TEN, "10"), "ghost": ("trt:nowhere", "10"), "mislabelled": (EIGHT, "10")})})
    tiny_onnx(project / "models" / "gamma.onnx", 3)
    result = doit_inside(cluster, project, "-c", "build:gamma-fp32")  # --continue: the good class still builds
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in text
    assert "engine:gamma-fp32@ghost: no live machine of the fleet advertises trt:nowhere (targets.ghost)" in text
    assert (f"engine:gamma-fp32@mislabelled on {EIGHT}: machine 127.0.0.1 advertises {EIGHT} but its trtexec is "
            "TensorRT 8.6.1 (grammar 8.6, not 10)") in text
    assert read_engine(project / "artifacts/gamma/fp32/targets/t4/engine.plan")["trt_version"].startswith("10.8")
    assert not (project / "artifacts/gamma/fp32/targets/mislabelled/engine.plan").exists()

    started = time.monotonic()  # export and lint are done: what is left is doit, Ray's connection and the check
    ghost = doit_inside(cluster, project, "engine:gamma-fp32@ghost")
    assert ghost.returncode == 1 and time.monotonic() - started < 10, ghost.stdout + ghost.stderr


def _doit_in_background(cluster: dict, project: Path, *args: str) -> subprocess.Popen:
    from conftest import doit_env

    return subprocess.Popen([*cluster["inside"], sys.executable, "-m", "doit", *args], cwd=project,
                            env=doit_env(fleet_env(cluster)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_build(wrapper: Path, doit: subprocess.Popen, seconds: float = 60) -> int:
    """The pid of the double building an engine through `wrapper` (not the one answering the
    machine's version probe, which runs first)."""
    deadline = time.monotonic() + seconds
    while not (builds := [pid for pid in running_through(wrapper) if b"--saveEngine" in _cmdline(pid)]):
        assert doit.poll() is None and time.monotonic() < deadline, doit.communicate()
        time.sleep(0.2)
    return builds[0]


def test_a_machine_worker_killed_mid_build_is_retried(cluster, tmp_path):
    project = make_project(tmp_path / "proj", {"delta": recipe("delta", {"t4": (TEN, "10")})})
    tiny_onnx(project / "models" / "delta.onnx", 4)
    wrapper = cluster["wrappers"][TEN]
    slow = wrapper.parent / "slow"
    slow.write_text("30")
    started = _builds_started(wrapper)
    try:
        doit = _doit_in_background(cluster, project, "build:delta-fp32")
        double = _wait_for_build(wrapper, doit)
        slow.unlink()  # the retry builds at once
        worker = int(Path(f"/proc/{double}/stat").read_text().split(")")[1].split()[1])  # its parent: Ray's worker
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        out, err = doit.communicate(timeout=120)
    finally:
        slow.unlink(missing_ok=True)
    assert doit.returncode == 0, out[-2000:] + err[-2000:]
    assert time.monotonic() - killed < 25, "the killed build (30 s to go) finished: no retry"
    assert _builds_started(wrapper) - started == 2
    assert read_engine(project / "artifacts/delta/fp32/targets/t4/engine.plan")["device"]["name"] == "NVIDIA T4"
    assert not running_through(wrapper)
    assert not list(cluster["scratch"][TEN].glob("trtforge-fleet-*"))  # the killed build's, removed by the retry


def test_a_class_whose_last_machine_is_lost_mid_build_fails_in_one_line(cluster, tmp_path):
    """A third machine joins with a class of its own, starts a build and dies (its raylet is
    killed): Ray would keep the retry waiting for a machine of the class forever."""
    lone = "trt:fake_l4-trt10"
    wrapper = _controlled_wrapper(tmp_path / "bin", "10.8")
    (wrapper.parent / "slow").write_text("120")
    node = subprocess.Popen(
        [*cluster["inside"], str(Path(sys.executable).parent / "ray"), "start", f"--address={cluster['address']}",
         f"--resources={json.dumps({lone: 1})}", "--include-log-monitor=false", "--min-worker-port=0",
         "--max-worker-port=0", "--dashboard-agent-listen-port=0", "--num-cpus=1",
         "--object-store-memory=100000000", "--block"],
        env={**os.environ, **QUIET, "TRTEXEC": str(wrapper), "DOUBLE_GPU": "NVIDIA L4, 8.9"},
        stdout=open(tmp_path / "node.log", "w"), stderr=subprocess.STDOUT)
    try:
        _wait_for(cluster, [node], lone, tmp_path / "node.log")
        project = make_project(tmp_path / "proj", {"eta": recipe("eta", {"l4": (lone, "10")})})
        tiny_onnx(project / "models" / "eta.onnx", 7)
        doit = _doit_in_background(cluster, project, "build:eta-fp32")
        _wait_for_build(wrapper, doit)
        raylets = [pid for pid in _pids_with_env(f"TRTEXEC={wrapper}") if b"raylet" in _cmdline(pid)]
        assert raylets
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        lost = time.monotonic()
        out, err = doit.communicate(timeout=120)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
    lines = [line for line in (out + err).splitlines() if "engine:eta-fp32@l4" in line and "lost" in line]
    assert doit.returncode == 1 and "Traceback" not in out + err, out[-2000:] + err[-2000:]
    assert lines == [(f"engine:eta-fp32@l4: no live machine of the fleet advertises {lone} any more (the one "
                      "building it was lost); nothing was published: rerun once a machine of the class is back")]
    assert time.monotonic() - lost < 60
    assert not (project / "artifacts/eta/fp32/targets/l4/engine.plan").exists()


def _pids_with_env(entry: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("how", [("build:eps-fp16", signal.SIGINT),
                                 ("-n 2 -P thread build:eps-fp16 build:eps-fp32", signal.SIGTERM)],
                         ids=["ctrl-c", "sigterm-under-threads"])
def test_ctrl_c_during_a_remote_build_cancels_it_and_publishes_nothing(cluster, tmp_path, how):
    """Under `-P thread` the signal reaches doit's main thread, not the ones waiting on Ray;
    with one machine of the class, one build runs and the other waits for it. A build that is
    cancelled, not killed with its driver, ends its trtexec and removes its scratch folder."""
    args, stop = how
    project = make_project(tmp_path / "proj", {"eps": recipe("eps", {"a10": (EIGHT, "8.6")})})
    tiny_onnx(project / "models" / "eps.onnx", 5)
    wrapper = cluster["wrappers"][EIGHT]
    (wrapper.parent / "slow").write_text("60")
    try:
        doit = _doit_in_background(cluster, project, *args.split())
        _wait_for_build(wrapper, doit)
        doit.send_signal(stop)
        doit.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while running_through(wrapper) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        (wrapper.parent / "slow").unlink(missing_ok=True)
    assert doit.returncode == 128 + stop
    assert not running_through(wrapper), "the remote trtexec is still running"
    assert not list(cluster["scratch"][EIGHT].glob("trtforge-fleet-*")), "the build was killed, not cancelled"
    for variant in ("fp16", "fp32"):
        out = project / f"artifacts/eps/{variant}/targets/a10"
        assert not (out / "engine.plan").exists() and not (out / "summary.json").exists()


def test_a_build_over_its_timeout_is_stopped_and_its_log_comes_back(cluster, tmp_path):
    text = recipe("zeta", {"t4": (TEN, "10")}).replace("tensorrt: '10'}", "tensorrt: '10', build: {timeout: 2s}}")
    project = make_project(tmp_path / "proj", {"zeta": text})
    tiny_onnx(project / "models" / "zeta.onnx", 6)
    wrapper = cluster["wrappers"][TEN]
    (wrapper.parent / "slow").write_text("30")
    try:
        result = doit_inside(cluster, project, "build:zeta-fp32")
    finally:
        (wrapper.parent / "slow").unlink(missing_ok=True)
    out = project / "artifacts/zeta/fp32/targets/t4"
    assert result.returncode == 1
    assert (f"engine:zeta-fp32@t4: trtexec was stopped after 2 s (build.timeout); raise build.timeout or see "
            f"artifacts/zeta/fp32/targets/t4/trtexec.failed.log (on 127.0.0.1, {TEN})") in result.stdout + result.stderr
    assert "&&&& RUNNING TensorRT.trtexec" in (out / "trtexec.failed.log").read_text()
    assert not (out / "engine.plan").exists() and not running_through(wrapper)


def test_fleet_commands_and_doctor_see_the_classes_and_stop_only_their_own_node(cluster, fleet_project, tmp_path):
    cli = [*cluster["inside"], str(Path(sys.executable).parent / "trtforge")]
    env = {**os.environ, **fleet_env(cluster), "TRTFORGE_FLEET_STATE": str(tmp_path / "state")}

    def trtforge(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)

    up = trtforge("fleet", "up", "--join", cluster["address"], "--class", "trt:extra=2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.startswith(f"fleet: joined {cluster['address']} (pid ") and "trt:extra=2" in up.stdout
        status = trtforge("fleet", "status")
        assert status.returncode == 0, status.stderr
        assert "trt:extra (0 of 2 building)" in status.stdout and f"{TEN} (0 of 1 building)" in status.stdout
        assert "building engine:" not in status.stdout

        busy = make_project(tmp_path / "busy", {"iota": recipe("iota", {"t4": (TEN, "10")})})
        tiny_onnx(busy / "models" / "iota.onnx", 9)
        (cluster["wrappers"][TEN].parent / "slow").write_text("60")
        doit = _doit_in_background(cluster, busy, "build:iota-fp32")
        try:
            _wait_for_build(cluster["wrappers"][TEN], doit)
            status = trtforge("fleet", "status").stdout
        finally:
            (cluster["wrappers"][TEN].parent / "slow").unlink()
            doit.send_signal(signal.SIGINT)
            doit.communicate(timeout=60)
        rows = status.split("\n127.0.0.1")
        t4 = next(row for row in rows if TEN in row)
        assert f"{TEN} (1 of 1 building)" in t4 and "building engine:iota-fp32@t4" in t4, status
        assert "trt:extra (0 of 2 building)" in status and f"{EIGHT} (0 of 1 building)" in status
        assert status.count("building engine:") == 1, status

        doctor = trtforge("doctor", "--project", str(fleet_project))
        assert "every target class has a live machine" in doctor.stdout, doctor.stdout
        ghost = make_project(tmp_path / "ghost", {"ghost": recipe("ghost", {"g": ("trt:nowhere", "10")})})
        tiny_onnx(ghost / "models" / "ghost.onnx", 7)
        refused = trtforge("doctor", "--project", str(ghost))
        assert refused.returncode == 1
        assert "no live machine advertises trt:nowhere (ghost: targets.g)" in refused.stdout, refused.stdout
    finally:
        down = trtforge("fleet", "down")
    assert down.returncode == 0 and down.stdout.startswith("fleet: stopped 1 node(s) started here"), down.stdout
    deadline = time.monotonic() + 60
    while any("trt:extra" in n["Resources"] for n in _live_nodes(cluster)):
        assert time.monotonic() < deadline, "the node fleet up started is still alive"
        time.sleep(2)
    assert {TEN, EIGHT} <= {r for n in _live_nodes(cluster) for r in n["Resources"]}  # the others run on


def test_fleet_up_starts_a_head_that_requires_the_token_it_generated(cluster, tmp_path):
    """Authentication stays on outside tests: a head `fleet up` starts is in token mode, with a
    token generated where Ray looks (here a private HOME), and a driver without it is refused."""
    cli = [*cluster["inside"], str(Path(sys.executable).parent / "trtforge")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # this head's own Ray temp folder, short
    env |= {"HOME": str(tmp_path / "home"), "TRTFORGE_FLEET_STATE": str(tmp_path / "state"),
            "TRTFORGE_RAY_ADDRESS": "127.0.0.1:6390", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(temp)}

    def trtforge(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], env={**env, **extra}, capture_output=True, text=True, timeout=180)

    up = trtforge("fleet", "up", "--port", "6390", "--class", "trt:head=1")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert (tmp_path / "home" / ".ray" / "auth_token").is_file()
        assert "trt:head (0 of 1 building)" in trtforge("fleet", "status").stdout
        refused = trtforge("fleet", "status", RAY_AUTH_MODE="disabled")
        assert refused.returncode != 0 and "trt:head" not in refused.stdout
    finally:
        trtforge("fleet", "down")
        shutil.rmtree(temp, ignore_errors=True)


def test_int8_reaches_each_class_in_the_form_its_generation_builds(cluster, tmp_path):
    """8.6 builds INT8 from the calibration cache (shipped with the ONNX); 10.x from the Q/DQ ONNX."""
    from conftest import sha256, with_demo_sets

    text = recipe("eta", CLASSES).replace("  fp16: {precision: fp16}\n", "  int8:\n    precision: int8\n"
                                          "    calibration: {images: calib/demo-calibration.txt, count: 4, batch: 2}\n")
    project = with_demo_sets(make_project(tmp_path / "proj", {"eta": text}))
    tiny_onnx(project / "models" / "eta.onnx", 8)
    result = doit_inside(cluster, project, "-n", "2", "-P", "thread", "build:eta-int8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = project / "artifacts" / "eta" / "int8"
    implicit = read_engine(out / "targets" / "a10" / "engine.plan")
    assert implicit["precision"] == ["int8"] and implicit["calibration"]["source"] == "cache"
    assert implicit["calibration"]["sha256"] == sha256(out / "calib.cache")
    assert implicit["onnx_sha256"] == sha256(project / "artifacts" / "eta" / "model.onnx")
    explicit = read_engine(out / "targets" / "t4" / "engine.plan")
    assert explicit["strongly_typed"] and explicit["onnx_sha256"] == sha256(out / "qdq.onnx")
    assert explicit["calibration"] is None


def test_a_targets_build_overrides_reach_its_command_and_a_bad_target_is_one_line(tmp_path):
    """No cluster: what `trtforge plan` renders per class, and the recipe's refusals."""
    from conftest import doit_env

    targets = """targets:
  t4: {resource: 'trt:sm_75-trt10', tensorrt: '10', build: {workspace: 1GiB, timeout: 5m,
       profiles: [{x: {min: [1, 3, 32, 32], opt: [2, 3, 32, 32], max: [8, 3, 32, 32]}}]}}
  orin: {resource: 'trt:sm_87-trt8.5', tensorrt: '8.5', build: {dla_core: 0}}
"""
    text = recipe("omega", CLASSES).split("targets:")[0] + targets
    project = make_project(tmp_path / "proj", {"omega": text})
    tiny_onnx(project / "models" / "omega.onnx", 8)

    def plan() -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "trtforge"), "plan", "omega-fp16", "--project",
                               str(project)], env=doit_env(), capture_output=True, text=True, timeout=120)

    shown = plan()
    assert shown.returncode == 0, shown.stdout + shown.stderr
    blocks = {block.split(" ", 3)[2]: block for block in shown.stdout.split("\n\n") if block.startswith("trtexec for")}
    t4, orin = blocks["omega-fp16@t4"], blocks["omega-fp16@orin"]
    assert "--memPoolSize=workspace:1G" in t4 and "--maxShapes=x:8x3x32x32" in t4 and "--useDLACore" not in t4
    assert "--useDLACore=0" in orin and "--maxShapes=x:2x3x32x32" in orin  # the recipe's own profile
    assert "--memPoolSize=workspace:256" in orin

    for bad, field, says in (("'trt:sm_75-trt10'", "resource", "is not a Ray resource name"),
                             ("'trt:sm_75-trt10', precision: fp16", "precision", "")):
        broken = text.replace("'trt:sm_75-trt10'", bad.replace("'trt:sm_75-trt10'", "'trt sm75'")
                              if field == "resource" else bad)
        (project / "recipes" / "omega.yaml").write_text(broken)
        refused = plan()
        lines = [line for line in (refused.stdout + refused.stderr).splitlines() if line.strip()]
        assert refused.returncode != 0 and len(lines) == 1, lines
        assert "recipes/omega.yaml" in lines[0] and f"targets.t4.{field}" in lines[0] and says in lines[0]
