"""trtexec and timing-cache faults, end to end through doit with the trtexec double.

Each fault ends in one line and a documented exit code (1: the engine task failed; 0: the
build went on with a warning), leaves nothing a later run would trust, and a plain rerun
after the fix finishes the build. The trtexec cases test_build_e2e.py already pins (missing,
not executable, no banner, a version older than 8.2, [E] lines, SIGSEGV, hang, no or empty
engine) are not repeated here; this file adds the cases it lacks and the timing cache.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from conftest import SMALL_RECIPE, copied, executed, make_project, prepared_project, run_doit, sha256
from doubles.trtexec import decode_timing_cache, make_wrapper, read_engine

from trtforge.errors import ToolError
from trtforge.trtexec import (
    first_error,
    parse_perf_summary,
    probe_version,
    read_build_log,
    read_log_evidence,
)


@pytest.fixture(scope="module")
def surgered(tmp_path_factory) -> Path:
    """A project whose export and surgery ran; each test works on a copy (doit's records are
    relative to the project, so a copy elsewhere is up to date)."""
    return prepared_project(tmp_path_factory.mktemp("faults"), "surgery:yolov8n")


@pytest.fixture
def project(surgered, tmp_path) -> Path:
    return copied(surgered, tmp_path)


def output_lines_with(result, text: str) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if text in line]


def the_line_with(result, text: str) -> str:
    """The one output line holding `text`: a fault is told once, not repeated or scattered."""
    lines = output_lines_with(result, text)
    assert len(lines) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def working_trtexec(tmp_path: Path) -> dict:
    return {"TRTEXEC": str(make_wrapper(tmp_path / "ok", "10.8"))}


def shared_timing_cache(project: Path) -> Path:
    (cache,) = (project / "artifacts" / "cache" / "timing").glob("*.cache")
    return cache


def recorded_sha256(cache: Path) -> str:
    return cache.with_name(cache.name + ".sha256").read_text().split()[0]


def timing_folder_names(cache: Path) -> set[str]:
    return {p.name for p in cache.parent.iterdir()}


def variant_out(project: Path, variant: str) -> Path:
    return project / "artifacts" / "yolov8n" / variant


# ----------------------------------------------------------------------------- trtexec

@pytest.mark.slow
def test_a_trtexec_newer_than_any_known_version_is_refused_naming_it_and_the_supported_ones(project, tmp_path):
    """A TensorRT 13 banner (v130000) used to be rendered as 11.x; 11.0 itself dropped flags
    10.x had, so an unknown major is refused rather than guessed at."""
    future = make_wrapper(tmp_path / "future", "13.0")
    result = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(future)})
    assert result.returncode == 1
    line = the_line_with(result, "is not supported")
    assert f"{future}: TensorRT 13.0.0 is not supported" in line
    assert "8.2 (Jetson TX2/Nano), 8.4/8.5 (JetPack 5), 8.6, 10.x and 11.x" in line and "point TRTEXEC at" in line
    out = variant_out(project, "fp32")
    assert not (out / "engine.plan").exists()

    rerun = run_doit(project, "build:yolov8n-fp32", env=working_trtexec(tmp_path))
    assert rerun.returncode == 0 and read_engine(out / "engine.plan")["trt_version"] == "10.8.0"


BANNER_THEN_SIGKILL = """#!/bin/sh
echo '&&&& RUNNING TensorRT.trtexec [TensorRT v100800] # trtexec'
[ "$1" = --help ] && exit 0
kill -KILL $$
"""


@pytest.mark.slow
def test_a_trtexec_killed_by_sigkill_names_the_signal_and_the_out_of_memory_killer(project, tmp_path):
    """SIGKILL is what the kernel's out-of-memory killer sends to a large engine build; it
    says so only in the kernel log, so the line points there."""
    killed = tmp_path / "killed" / "trtexec"
    killed.parent.mkdir()
    killed.write_text(BANNER_THEN_SIGKILL)
    killed.chmod(0o755)
    result = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(killed)})
    assert result.returncode == 1
    line = the_line_with(result, "killed by signal 9 (SIGKILL)")
    assert "out-of-memory killer" in line and "dmesg" in line and "trtexec.failed.log" in line
    assert not (variant_out(project, "fp32") / "engine.plan").exists()


@pytest.mark.parametrize("fault", ["build_error", "crash", "hang", "no_engine", "empty_engine"])
@pytest.mark.slow
def test_after_a_trtexec_fault_a_plain_rerun_finishes_from_the_untouched_timing_cache(project, tmp_path, fault):
    """Recovery from the faults whose one-line message test_build_e2e.py pins: the failed build
    publishes nothing (no engine, no temporary, the shared timing cache and its record as they
    were), so the rerun with a working trtexec trusts the cache and finishes the build."""
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("workspace: 1GiB", "workspace: 1GiB\n  timeout: 2s"))
    assert run_doit(project, "build:yolov8n-fp16", env=working_trtexec(tmp_path)).returncode == 0
    cache = shared_timing_cache(project)
    before, record_before = cache.read_bytes(), recorded_sha256(cache)

    broken = make_wrapper(tmp_path / "broken", "10.8", fault=fault, build_seconds=0.5)
    failed = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(broken)})
    assert failed.returncode == 1
    assert "&&&& RUNNING" not in failed.stdout  # the one line names the kept log; doit does not replay it
    out = variant_out(project, "fp32")
    assert not (out / "engine.plan").exists() and not list(project.rglob("*trtforge-tmp*"))
    assert cache.read_bytes() == before and recorded_sha256(cache) == record_before

    rerun = run_doit(project, "build:yolov8n-fp32", env=working_trtexec(tmp_path))
    assert rerun.returncode == 0 and "engine:yolov8n-fp32" in executed(rerun)
    assert read_engine(out / "engine.plan") and not (out / "trtexec.failed.log").exists()
    assert f"Loaded {len(before)} bytes of timing cache" in (out / "trtexec.log").read_text()
    assert len(decode_timing_cache(cache.read_bytes())) == 2


def silent_trtexec(folder: Path) -> tuple[Path, Path]:
    """(tool, starts): a trtexec that hangs before its banner and notes each start in `starts`."""
    folder.mkdir(parents=True, exist_ok=True)
    tool, starts = folder / "trtexec", folder / "starts"
    tool.write_text(f"#!/bin/sh\necho started >> {starts}\nexec sleep 600\n")
    tool.chmod(0o755)
    return tool, starts


def test_a_trtexec_silent_before_its_banner_is_waited_for_aloud_then_refused(tmp_path, monkeypatch, capsys):
    import trtforge.trtexec as trtexec

    monkeypatch.setattr(trtexec, "PROBE_TIMEOUT_S", 2.5)
    monkeypatch.setattr(trtexec, "PROBE_PATIENCE_S", 0.5)
    tool, _ = silent_trtexec(tmp_path / "bin")
    with pytest.raises(ToolError, match=r"trtexec --help printed no version banner within 2 s; is it really"):
        probe_version(tool, tmp_path / "probe.json")
    said = capsys.readouterr()
    assert (said.out + said.err).count(f"waiting for {tool} --help to print its TensorRT version (at most 2 s)") == 1


def test_doit_list_never_starts_trtexec(tmp_path):
    """A trtexec that hangs before its banner stalled `doit list` for 30 s (issue 13):
    commands that build nothing take the last answer trtexec gave, or none."""
    project = make_project(tmp_path / "proj", {"yolov8n": SMALL_RECIPE})
    tool, starts = silent_trtexec(tmp_path / "bin")
    listed = run_doit(project, "list", "--all", env={"TRTEXEC": str(tool)}, timeout=20)
    assert listed.returncode == 0 and "build:yolov8n-fp16" in listed.stdout, listed.stdout + listed.stderr
    assert not starts.exists()
    answered = make_wrapper(tmp_path / "bin86", "8.6")
    assert run_doit(project, "forget", env={"TRTEXEC": str(answered)}).returncode == 0  # probes: it may build
    info = run_doit(project, "info", "lint:yolov8n-fp16", env={"TRTEXEC": str(answered)}, timeout=20)
    assert "preflight-8.6.json" in info.stdout and "preflight-10.json" not in info.stdout, info.stdout  # its answer


def test_a_trtexec_that_cannot_load_tensorrt_says_so_and_names_ld_library_path(tmp_path):
    """The usual way a real trtexec prints no banner: its libraries are not on the loader path."""
    tool = tmp_path / "trtexec"
    tool.write_text("#!/bin/sh\necho 'trtexec: error while loading shared libraries: libnvinfer.so.10: cannot "
                    "open shared object file: No such file or directory' >&2\nexit 127\n")
    tool.chmod(0o755)
    with pytest.raises(ToolError, match=r"cannot start \(it printed: trtexec: error while loading shared "
                                        r"libraries: libnvinfer\.so\.10.*LD_LIBRARY_PATH"):
        probe_version(tool, tmp_path / "probe.json")
    assert not (tmp_path / "probe.json").exists()  # a failed probe is never cached


def test_a_trtexec_at_the_default_location_that_is_not_executable_is_named_not_reported_missing(
        tmp_path, monkeypatch):
    import trtforge.trtexec as trtexec

    default = tmp_path / "tensorrt" / "bin" / "trtexec"
    default.parent.mkdir(parents=True)
    default.write_text("#!/bin/sh\n")
    default.chmod(0o644)
    monkeypatch.setattr(trtexec, "DEFAULT_LOCATION", default)
    monkeypatch.delenv("TRTEXEC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolError, match=f"^{default} is not executable; chmod \\+x it or set TRTEXEC$"):
        trtexec.locate_trtexec()


# ----------------------------------------------------------------------------- timing cache

def scramble(cache: Path) -> None:
    cache.write_bytes(random.Random(0).randbytes(cache.stat().st_size))


def truncate(cache: Path) -> None:
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])


def unrecord(cache: Path) -> None:
    cache.with_name(cache.name + ".sha256").unlink()


@pytest.mark.parametrize("damage, says, label", [
    pytest.param(scramble, "does not match the sha256 trtforge recorded", "corrupt", id="random-bytes"),
    pytest.param(truncate, "does not match the sha256 trtforge recorded", "corrupt", id="truncated"),
    pytest.param(unrecord, "has no checksum record beside it", "unverified", id="not-written-by-trtforge"),
])
@pytest.mark.slow
def test_a_corrupt_timing_cache_is_moved_aside_before_trtexec_sees_it_and_the_build_goes_on(
        project, tmp_path, damage, says, label):
    good = working_trtexec(tmp_path)
    assert run_doit(project, "build:yolov8n-fp32", env=good).returncode == 0
    cache = shared_timing_cache(project)
    damage(cache)
    damaged = cache.read_bytes()

    result = run_doit(project, "build:yolov8n-fp16", env=good)
    assert result.returncode == 0, result.stdout + result.stderr
    (aside,) = cache.parent.glob(f"{cache.name}.{label}-*")
    line = the_line_with(result, "moved it to")
    assert f"WARNING: engine:yolov8n-fp16: timing cache {cache} {says}" in line
    assert f"moved it to {aside} and building with a fresh cache" in line
    assert aside.read_bytes() == damaged
    log = (variant_out(project, "fp16") / "trtexec.log").read_text()
    assert "Could not read timing cache from: timing.cache" in log  # trtexec started fresh
    assert len(decode_timing_cache(cache.read_bytes())) == 1
    assert recorded_sha256(cache) == sha256(cache)

    assert run_doit(project, "forget", "engine:yolov8n-fp32").returncode == 0
    rerun = run_doit(project, "build:yolov8n-fp32", env=good)
    assert rerun.returncode == 0 and not output_lines_with(rerun, "timing cache /")  # the fresh cache is trusted
    assert len(decode_timing_cache(cache.read_bytes())) == 2
    assert timing_folder_names(cache) == {cache.name, f"{cache.name}.sha256", f"{cache.name}.trtforge-lock",
                                          aside.name}  # nothing more was moved aside


def cache_is_a_directory(cache: Path) -> None:
    cache.unlink()
    cache.mkdir()


def cache_folder_is_a_file(cache: Path) -> None:
    shutil.rmtree(cache.parent)
    cache.parent.write_text("")


def undo(cache: Path) -> None:
    if cache.is_dir():
        cache.rmdir()
    elif cache.parent.is_file():
        cache.parent.unlink()


# Tests run as root, for whom a read-only mode stops nothing: a directory where the cache file
# goes (rename onto it fails with EISDIR) and a file where its folder goes (ENOTDIR) fail for
# root as a read-only or foreign folder fails for a user.
@pytest.mark.parametrize("block, says", [
    pytest.param(cache_is_a_directory, "not saved: Is a directory; the engine is built, but later builds cannot "
                 "reuse", id="cache-file-is-a-directory"),
    pytest.param(cache_folder_is_a_file, "not used or saved: {folder} is not a folder; the engine is built without "
                 "it", id="cache-folder-is-a-file"),
])
@pytest.mark.slow
def test_an_unwritable_timing_cache_costs_a_warning_not_the_engine(project, tmp_path, block, says):
    good = working_trtexec(tmp_path)
    assert run_doit(project, "build:yolov8n-fp32", env=good).returncode == 0
    cache = shared_timing_cache(project)
    block(cache)

    result = run_doit(project, "build:yolov8n-fp16", env=good)
    assert result.returncode == 0, result.stdout + result.stderr
    line = the_line_with(result, f"timing cache {cache}")
    assert "WARNING: engine:yolov8n-fp16:" in line and says.format(folder=cache.parent) in line
    out = variant_out(project, "fp16")
    assert read_engine(out / "engine.plan") and (out / "summary.json").is_file()
    assert not list(project.rglob("*trtforge-tmp*"))

    undo(cache)
    assert run_doit(project, "forget", "engine:yolov8n-fp16").returncode == 0
    rerun = run_doit(project, "build:yolov8n-fp16", env=good)
    assert rerun.returncode == 0 and not output_lines_with(rerun, "WARNING: engine")
    assert len(decode_timing_cache(cache.read_bytes())) == 1
    assert recorded_sha256(cache) == sha256(cache)


# Four engines of the 160 px recipe (the size does not matter to the cache bookkeeping) whose
# timing-cache keys all differ: the double keys entries by ONNX, precision and workspace.
FOUR_VARIANTS = """\
variants:
  fp32-1g: {precision: fp32}
  fp32-2g: {precision: fp32, build: {workspace: 2GiB}}
  fp16-1g: {precision: fp16}
  fp16-2g: {precision: fp16, build: {workspace: 2GiB}}
"""


@pytest.mark.slow
def test_four_parallel_builders_leave_a_loadable_timing_cache_with_every_entry(project, tmp_path):
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().split("variants:")[0] + FOUR_VARIANTS)
    names = ["fp32-1g", "fp32-2g", "fp16-1g", "fp16-2g"]
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8", build_seconds=1))}
    result = run_doit(project, "-n", "4", *(f"build:yolov8n-{n}" for n in names), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert output_lines_with(result, "waiting for the timing cache")  # the builds really overlapped

    cache = shared_timing_cache(project)
    entries = decode_timing_cache(cache.read_bytes())
    assert entries is not None, "the double cannot load the timing cache"
    built = [read_engine(variant_out(project, n) / "engine.plan") for n in names]

    def key(build: dict) -> tuple:
        return tuple(build["precision"]), build["workspace_bytes"]

    assert len(entries) == 4 and sorted(map(key, entries.values())) == sorted(map(key, built))
    assert recorded_sha256(cache) == sha256(cache)
    assert timing_folder_names(cache) == {cache.name, f"{cache.name}.sha256", f"{cache.name}.trtforge-lock"}
    assert not list(project.rglob("*trtforge-tmp*"))


def test_a_huge_verbose_log_is_read_in_bounded_memory_and_still_confirms_the_build(tmp_path):
    """A `--verbose` build log of 60 MB (mostly [V] lines, one 8 MB line with no end) is read
    with a few MB, and what the engine stage checks is still found. Measured before: a 300 MB
    log took 769 MB to read whole. The size is small for the suite's sake; memory is flat in it."""
    import tracemalloc

    stamp = "[12/03/2026-08:00:00]"
    log = tmp_path / "trtexec.log"
    with open(log, "wb") as f:
        f.write("&&&& RUNNING TensorRT.trtexec [TensorRT v100800] # trtexec --onnx=model.onnx --verbose\n"
                f"{stamp} [I] Selected Device: NVIDIA A10\n{stamp} [I] Compute Capability: 8.6\n"
                f"{stamp} [I] TensorRT version: 10.8.0\n".encode())
        verbose = f"{stamp} [V] [TRT] Tactic: 0x0000000000000001 Time: 0.0123\n".encode() * 1000
        f.writelines(verbose for _ in range(60_000_000 // len(verbose)))
        # One endless line whose far end looks like an error: only a line's start is evidence.
        f.write(f"{stamp} [V] ".encode() + b"x" * 8_000_000 + f" {stamp} [E] not a real error\n".encode())
        f.write(f"{stamp} [I] Engine built in 12.5 sec.\n{stamp} [I] Throughput: 812.3 qps\n"
                f"{stamp} [I] Latency: min = 1.1 ms, max = 1.9 ms, mean = 1.2 ms, median = 1.2 ms\n"
                "&&&& PASSED TensorRT.trtexec [TensorRT v100800] # trtexec --onnx=model.onnx\n".encode())
    tracemalloc.start()
    text = read_log_evidence(log)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20, f"{peak / 2**20:.1f} MiB to read a {log.stat().st_size / 2**20:.0f} MiB log"
    built = read_build_log(text)
    assert built.missing == () and str(built.version) == "10.8.0"
    assert built.device["compute_capability"] == "8.6" and built.device["gpu"] == "NVIDIA A10"
    assert parse_perf_summary(text)["throughput_qps"] == 812.3
    assert first_error(text) is None
