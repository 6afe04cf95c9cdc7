"""Pins the grammar and behaviour of the trtexec conformance double (tests/doubles/trtexec.py).

Models are built with onnx.helper and kept tiny (one Relu, shapes like 1x3x32x32) so every
test runs the double in well under a second.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

DOUBLE = Path(__file__).resolve().parent / "doubles" / "trtexec.py"
_spec = importlib.util.spec_from_file_location("trtexec_double", DOUBLE)
dbl = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = dbl
_spec.loader.exec_module(dbl)

STATIC = [1, 3, 32, 32]
DYNAMIC = ["N", 3, 32, 32]
SHAPES = ["--minShapes=x:1x3x32x32", "--optShapes=x:2x3x32x32", "--maxShapes=x:4x3x32x32"]


def make_model(path: Path, dims=DYNAMIC, input_name="x", producer="pytest") -> Path:
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    node = helper.make_node("Relu", [input_name], ["y"], name="relu0")
    model = helper.make_model(helper.make_graph([node], "tiny", [x], [y]), producer_name=producer,
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def trtexec(*args, version="10.8", cwd=None, fault=None, seconds=None, background=False):
    """Run the double directly (no wrapper); background=True returns the Popen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRTEXEC_DOUBLE_")}
    env["TRTEXEC_DOUBLE_VERSION"] = version
    if fault:
        env["TRTEXEC_DOUBLE_FAULT"] = fault
    if seconds is not None:
        env["TRTEXEC_DOUBLE_BUILD_SECONDS"] = str(seconds)
    cmd = [sys.executable, str(DOUBLE), *map(str, args)]
    if background:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=20)


@pytest.fixture
def dyn(tmp_path) -> Path:
    return make_model(tmp_path / "dyn.onnx")


@pytest.fixture
def static(tmp_path) -> Path:
    return make_model(tmp_path / "static.onnx", STATIC)


def last_line(r) -> str:
    return r.stdout.rstrip("\n").splitlines()[-1]


# ------------------------------------------------------------------------------ command line
def test_space_separated_value_is_rejected(tmp_path, static):
    r = trtexec("--onnx", static, f"--saveEngine={tmp_path / 'e.engine'}")
    assert r.returncode == 1
    assert f"[E] Unknown option: {static} " in r.stderr
    assert last_line(r).startswith("&&&& FAILED TensorRT.trtexec [TensorRT v100800] # ")
    assert not (tmp_path / "e.engine").exists()


def test_fp16_removed_in_11(static):
    r = trtexec(f"--onnx={static}", "--fp16", version="11.0")
    assert r.returncode == 1
    assert "[E] Unknown option: --fp16 " in r.stderr
    assert "&&&& FAILED" in last_line(r)


@pytest.mark.parametrize("flag", ["--int8", "--calib=c.cache", "--best", "--precisionConstraints=obey",
                                  "--layerPrecisions=relu0:fp16", "--bf16"])
def test_precision_flags_removed_in_11(static, flag):
    r = trtexec(f"--onnx={static}", flag, version="11.0")
    assert r.returncode == 1 and f"Unknown option: {flag.split('=')[0]} " in r.stderr


def test_fp16_deprecated_but_working_in_10_8(tmp_path, static):
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={static}", "--fp16", f"--saveEngine={engine}", "--skipInference")
    assert r.returncode == 0, r.stderr
    assert "[W] Weakly-typed networks have been deprecated in TensorRT." in r.stderr
    assert "Precision: FP32+FP16" in r.stdout
    assert dbl.read_engine(engine)["precision"] == ["fp16"]


def test_strongly_typed_is_a_no_op_in_11(tmp_path, static):
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={static}", "--stronglyTyped", f"--saveEngine={engine}", version="11.0")
    assert r.returncode == 0, r.stderr
    assert "Precision: Strongly Typed" in r.stdout
    desc = dbl.read_engine(engine)
    assert desc["strongly_typed"] is True and desc["precision"] == []


def test_repeated_flag_leaves_one_unknown(static):
    r = trtexec(f"--onnx={static}", "--fp16", "--fp16")
    assert r.returncode == 1 and "Unknown option: --fp16 " in r.stderr


def test_log_streams_and_prefixes(static):
    r = trtexec(f"--onnx={static}", "--fp16", "--skipInference")
    assert all(line.startswith("&&&& ") or " [I] " in line for line in r.stdout.splitlines())
    assert " [V] " not in r.stdout and " [V] " in trtexec(f"--onnx={static}", "--verbose").stdout
    assert all(" [W] " in line or " [E] " in line for line in r.stderr.splitlines())
    assert r.stdout.splitlines()[1][:23].count("/") == 2  # [MM/DD/YYYY-HH:MM:SS]


# -------------------------------------------------------------------------------- workspace
def test_workspace_refused_on_10_8(static):
    r = trtexec(f"--onnx={static}", "--workspace=64")
    assert r.returncode == 1 and "Unknown option: --workspace 64" in r.stderr


def test_workspace_accepted_on_8_2_and_mempool_refused(tmp_path, static):
    engine = tmp_path / "e.engine"
    ok = trtexec(f"--onnx={static}", "--workspace=64", f"--saveEngine={engine}", "--buildOnly", version="8.2")
    assert ok.returncode == 0, ok.stderr
    assert "Workspace: 64 MiB" in ok.stdout
    assert dbl.read_engine(engine)["workspace_bytes"] == 64 << 20
    bad = trtexec(f"--onnx={static}", "--memPoolSize=workspace:64", version="8.2")
    assert bad.returncode == 1 and "Unknown option: --memPoolSize workspace:64" in bad.stderr


def test_workspace_deprecated_on_8_6(tmp_path, static):
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={static}", "--workspace=32", f"--saveEngine={engine}", "--skipInference", version="8.6")
    assert r.returncode == 0 and "--workspace flag has been deprecated by --memPoolSize flag." in r.stderr
    assert dbl.read_engine(engine)["workspace_bytes"] == 32 << 20


@pytest.mark.parametrize("version,spec,expected", [
    ("10.8", "4GiB", 4),            # last character 'B' -> bytes, leading number 4
    ("10.8", "4G", 4 << 30),
    ("10.8", "4096", 4096 << 20),   # no suffix = MiB
    ("10.8", "512k", 512 << 10),
    ("10.8", "0.25M", 1 << 18),
    ("8.6", "4G", 4 << 20),         # 8.6 ignores the suffix: stod("4G") MiB
    ("8.6", "1024", 1024 << 20),
])
def test_mem_pool_units(tmp_path, static, version, spec, expected):
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={static}", f"--memPoolSize=workspace:{spec}", f"--saveEngine={engine}",
                "--skipInference", version=version)
    assert r.returncode == 0, r.stderr
    assert dbl.read_engine(engine)["workspace_bytes"] == expected


def test_mem_pool_bad_unit_and_pool(static):
    r = trtexec(f"--onnx={static}", "--memPoolSize=workspace:4X")
    assert r.returncode == 1 and "invalid unit specifier 'X'" in r.stderr
    r = trtexec(f"--onnx={static}", "--memPoolSize=scratch:4")
    assert r.returncode == 1 and "Unknown memory pool: scratch" in r.stderr


# --------------------------------------------------------------------------------- profiles
def test_multiple_profiles_refused_on_8_6(dyn):
    r = trtexec(f"--onnx={dyn}", "--profile=0", *SHAPES, "--profile=1", *SHAPES, version="8.6")
    assert r.returncode == 1
    assert "Unknown option: --profile 0" in r.stderr and "Unknown option: --minShapes" in r.stderr


def test_multiple_profiles_accepted_on_10_8(tmp_path, dyn):
    engine = tmp_path / "e.engine"
    big = ["--minShapes=x:4x3x32x32", "--optShapes=x:8x3x32x32", "--maxShapes=x:16x3x32x32"]
    r = trtexec(f"--onnx={dyn}", f"--saveEngine={engine}", "--profile=0", *SHAPES, "--profile=1", *big,
                "--skipInference")
    assert r.returncode == 0, r.stderr
    assert "Input build shape (profile 1): x=4x3x32x32+8x3x32x32+16x3x32x32" in r.stdout
    profiles = dbl.read_engine(engine)["profiles"]
    assert profiles == [{"x": {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [4, 3, 32, 32]}},
                        {"x": {"min": [4, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [16, 3, 32, 32]}}]


def test_profile_grammar_errors_on_10_8(dyn):
    r = trtexec(f"--onnx={dyn}", *SHAPES, *SHAPES)
    assert r.returncode == 1 and "Multiple --minShapes/--optShapes/--maxShapes without --profile" in r.stderr
    r = trtexec(f"--onnx={dyn}", "--profile=0", *SHAPES, "--profile=0", *SHAPES)
    assert r.returncode == 1 and "Optimization profile index cannot be the same." in r.stderr
    r = trtexec(f"--onnx={dyn}", "--profile=1", *SHAPES)
    assert r.returncode == 1 and "Found invalid or missing shape spec at profile index 0." in r.stderr


def test_wrong_input_name_refused(dyn):
    r = trtexec(f"--onnx={dyn}", *(s.replace("x:", "image:") for s in SHAPES))
    assert r.returncode == 1
    assert 'Cannot find input tensor with name "image" in the network inputs!' in r.stderr
    assert "[E] Engine set up failed" in r.stderr and "&&&& FAILED" in last_line(r)


@pytest.mark.parametrize("version", ["8.2", "10.8"])
def test_min_greater_than_opt_refused(dyn, version):
    r = trtexec(f"--onnx={dyn}", "--minShapes=x:4x3x32x32", "--optShapes=x:2x3x32x32",
                "--maxShapes=x:8x3x32x32", version=version)
    assert r.returncode == 1 and "must satisfy MIN<=OPT<=MAX" in r.stderr


def test_rank_mismatch_refused(dyn):
    r = trtexec(f"--onnx={dyn}", "--minShapes=x:1x3", "--optShapes=x:1x3", "--maxShapes=x:1x3")
    assert r.returncode == 1 and "Error in set dimensions to profile MIN" in r.stderr


def test_partial_shapes_8_x_vs_10_x(tmp_path, dyn):
    r = trtexec(f"--onnx={dyn}", "--minShapes=x:1x3x32x32", "--optShapes=x:2x3x32x32", version="8.6")
    assert r.returncode == 1
    assert "Must specify only --optShapes or all of --minShapes, --optShapes, --maxShapes" in r.stderr
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={dyn}", "--minShapes=x:1x3x32x32", "--optShapes=x:2x3x32x32",
                f"--saveEngine={engine}", "--skipInference")
    assert r.returncode == 0 and "optShapes is being broadcasted to maxShapes for tensor x" in r.stderr
    assert dbl.read_engine(engine)["profiles"][0]["x"]["max"] == [2, 3, 32, 32]


def test_dynamic_input_without_shapes_is_overridden(tmp_path, dyn):
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={dyn}", f"--saveEngine={engine}", "--skipInference")
    assert r.returncode == 0
    assert ("Dynamic dimensions required for input: x, but no shapes were provided. "
            "Automatically overriding shape to: 1x3x32x32") in r.stderr
    assert dbl.read_engine(engine)["profiles"] == [{"x": {s: [1, 3, 32, 32] for s in ("min", "opt", "max")}}]


def test_shapes_on_static_model_refused(static):
    r = trtexec(f"--onnx={static}", "--shapes=x:1x3x32x32")
    assert r.returncode == 1 and "Static model does not take explicit shapes" in r.stderr


# ------------------------------------------------------------------------------ calibration
def _calib(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


@pytest.mark.parametrize("version", ["8.6", "10.8"])
def test_valid_calibration_cache_is_used_read_only(tmp_path, static, version):
    cache = _calib(tmp_path / "c.cache", "TRT-8601-EntropyCalibration2\nx: 3c010a14\ny: 3d23ac36\n")
    before = cache.read_bytes()
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={static}", "--int8", f"--calib={cache}", f"--saveEngine={engine}", "--skipInference",
                version=version)
    assert r.returncode == 0, r.stderr
    calib = dbl.read_engine(engine)["calibration"]
    assert calib["source"] == "cache" and calib["algorithm"] == "EntropyCalibration2"
    assert cache.read_bytes() == before


@pytest.mark.parametrize("body", ["x: 3c010a14\n",                                # no header
                                  "TRT-8601-EntropyCalibration2\nx: 3C010A14\n",  # uppercase hex
                                  "TRT-8601-EntropyCalibration2\nx:  3c010a14\n",  # two spaces
                                  "TRT-8601-EntropyCalibration2\nx: 3c010a1\n",   # 7 digits
                                  "TRT-8601-Entropy\nx: 3c010a14\n"])
def test_malformed_calibration_cache_fails(tmp_path, static, body):
    cache = _calib(tmp_path / "c.cache", body)
    r = trtexec(f"--onnx={static}", "--int8", f"--calib={cache}", f"--saveEngine={tmp_path / 'e.engine'}")
    assert r.returncode == 1
    assert "[E] Error[1]: Calibration cache" in r.stderr and "&&&& FAILED" in last_line(r)


def test_missing_calibration_cache_is_not_created(tmp_path, static):
    engine, cache = tmp_path / "e.engine", tmp_path / "missing.cache"
    r = trtexec(f"--onnx={static}", "--int8", f"--calib={cache}", f"--saveEngine={engine}", "--skipInference")
    assert r.returncode == 0
    assert dbl.read_engine(engine)["calibration"]["source"] == "random"
    assert not cache.exists()


# ----------------------------------------------------------------- engine and timing cache
def test_engine_and_timing_cache_written(tmp_path, dyn):
    engine, cache = tmp_path / "e.engine", tmp_path / "tc.cache"
    args = [f"--onnx={dyn}", f"--saveEngine={engine}", f"--timingCacheFile={cache}", *SHAPES, "--skipInference"]
    first = trtexec(*args)
    assert first.returncode == 0, first.stderr
    assert f"[W] [TRT] Could not read timing cache from: {cache}. A new timing cache will be generated" \
           in first.stderr
    assert engine.read_bytes().startswith(dbl.ENGINE_MAGIC)
    desc = dbl.read_engine(engine)
    assert desc["trt_version"] == "10.8.0" and desc["timing_cache"] == str(cache)
    assert len(desc["onnx_sha256"]) == 64 and desc["inputs"] == {"x": [-1, 3, 32, 32]}
    text = cache.read_text()
    assert text.splitlines()[0] == dbl.TIMING_CACHE_MAGIC
    assert len(dbl.decode_timing_cache(cache.read_bytes())) == 1
    second = trtexec(*args)
    assert f"Loaded {len(text.encode())} bytes of timing cache from {cache}" in second.stdout
    assert cache.read_text() == text  # same key: merged, not duplicated


def test_corrupt_timing_cache_is_reset(tmp_path, static):
    cache = tmp_path / "tc.cache"
    cache.write_bytes(b"\x00garbage")
    r = trtexec(f"--onnx={static}", f"--timingCacheFile={cache}", "--skipInference")
    assert r.returncode == 0 and "Detected invalid timing cache, setup a local cache instead" in r.stderr
    assert len(dbl.decode_timing_cache(cache.read_bytes())) == 1


def test_concurrent_timing_cache_updates_keep_all_entries(tmp_path):
    cache = tmp_path / "tc.cache"
    procs = []
    for i, flags in enumerate([[], ["--fp16"], [], ["--fp16"]]):
        model = make_model(tmp_path / f"m{i // 2}.onnx", STATIC, producer=f"p{i // 2}")
        procs.append(trtexec(f"--onnx={model}", f"--timingCacheFile={cache}", "--skipInference", *flags,
                             background=True))
    assert [p.wait(timeout=20) for p in procs] == [0, 0, 0, 0]
    assert len(dbl.decode_timing_cache(cache.read_bytes())) == 4
    assert (tmp_path / "tc.cache.lock").exists()


def test_load_engine_round_trip_and_version_mismatch(tmp_path, static):
    engine = tmp_path / "e.engine"
    assert trtexec(f"--onnx={static}", f"--saveEngine={engine}", "--skipInference").returncode == 0
    ok = trtexec(f"--loadEngine={engine}")
    assert ok.returncode == 0 and "=== Performance summary ===" in ok.stdout
    bad = trtexec(f"--loadEngine={engine}", version="10.9")
    assert bad.returncode == 1
    assert "expecting library version 10.9.0 got 10.8.0, please rebuild." in bad.stderr


def test_layer_precisions_applied_to_known_nodes_only(tmp_path, static):
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={static}", "--fp16", "--precisionConstraints=obey",
                "--layerPrecisions=relu0:fp16,nosuchlayer:fp32", f"--saveEngine={engine}", "--skipInference")
    assert r.returncode == 0
    assert "Set layer relu0 to precision fp16" in r.stdout
    desc = dbl.read_engine(engine)
    assert desc["layer_precisions"] == {"relu0": "fp16"} and desc["precision_constraints"] == "obey"
    assert trtexec(f"--onnx={static}", "--layerPrecisions=relu0:fp16", version="8.2").returncode == 1


def test_onnx_errors(tmp_path):
    missing = trtexec(f"--onnx={tmp_path / 'nope.onnx'}")
    assert missing.returncode == 1 and "Input is not a regular file" in missing.stderr
    garbage = tmp_path / "bad.onnx"
    garbage.write_bytes(b"this is not a protobuf \xff\xfe")
    r = trtexec(f"--onnx={garbage}")
    assert r.returncode == 1
    assert "[E] [TRT] ModelImporter.cpp" in r.stderr and "[E] Failed to parse onnx file" in r.stderr


def test_missing_plugin_and_dla_fail(tmp_path, static):
    r = trtexec(f"--onnx={static}", f"--staticPlugins={tmp_path / 'libnope.so'}")
    assert r.returncode == 1 and "libnope.so" in r.stderr
    r = trtexec(f"--onnx={static}", "--useDLACore=0", "--allowGPUFallback")
    assert r.returncode == 1 and "Cannot create DLA engine, 0 not available" in r.stderr


def test_summary_percentiles_per_version(static):
    r82 = trtexec(f"--onnx={static}", version="8.2")
    line = next(x for x in r82.stdout.splitlines() if "] Latency: " in x)
    assert "percentile(99%)" in line and "percentile(90%)" not in line
    r10 = trtexec(f"--onnx={static}")
    line = next(x for x in r10.stdout.splitlines() if "] Latency: " in x)
    assert "median = " in line and "percentile(90%) = " in line and "percentile(95%) = " in line
    assert "Total GPU Compute Time: " in r10.stdout and "=== Device Information ===" in r10.stdout
    assert "Skipped inference" not in r10.stdout


# ---------------------------------------------------------------------------------- faults
def test_fault_no_engine_and_empty_engine(tmp_path, static):
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={static}", f"--saveEngine={engine}", fault="no_engine")
    assert r.returncode == 0 and "&&&& PASSED" in last_line(r) and not engine.exists()
    r = trtexec(f"--onnx={static}", f"--saveEngine={engine}", fault="empty_engine")
    assert r.returncode == 0 and engine.stat().st_size == 0


def test_fault_crash_leaves_partial_engine(tmp_path, static):
    engine = tmp_path / "e.engine"
    r = trtexec(f"--onnx={static}", f"--saveEngine={engine}", fault="crash")
    assert r.returncode == -signal.SIGSEGV
    assert "&&&& PASSED" not in r.stdout
    data = engine.read_bytes()
    assert data.startswith(dbl.ENGINE_MAGIC[:8]) and 0 < len(data)
    with pytest.raises(ValueError):
        dbl.read_engine(engine)


def test_fault_build_error(tmp_path, static):
    r = trtexec(f"--onnx={static}", f"--saveEngine={tmp_path / 'e.engine'}", fault="build_error")
    assert r.returncode == 1
    assert "Could not find any implementation for node relu0" in r.stderr
    assert "[E] Engine could not be created from network" in r.stderr and "&&&& FAILED" in last_line(r)


def test_fault_hang_after_banner(static):
    p = trtexec(f"--onnx={static}", fault="hang", background=True)
    try:
        assert p.stdout.readline().startswith("&&&& RUNNING TensorRT.trtexec")
        time.sleep(0.3)
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_build_leaves_partial_engine(tmp_path, static, sig):
    engine = tmp_path / "e.engine"
    p = trtexec(f"--onnx={static}", f"--saveEngine={engine}", seconds=3, background=True)
    try:
        deadline = time.monotonic() + 5
        while (not engine.exists() or engine.stat().st_size == 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        p.send_signal(sig)
        assert p.wait(timeout=5) == -sig
        assert "Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    assert 0 < engine.stat().st_size
    with pytest.raises(ValueError):
        dbl.read_engine(engine)


# ------------------------------------------------------------------------- banner and help
@pytest.mark.parametrize("version,tag,full", [
    ("8.2", "v8201", "8.2.1"), ("8.6", "v8601", "8.6.1"), ("10.8", "v100800", "10.8.0"),
    ("11.0", "v110000", "11.0.0"), ("8.5.3", "v8503", "8.5.3"), ("10.13.3", "v101303", "10.13.3")])
def test_banner_and_passed_lines_exact(static, version, tag, full):
    r = trtexec(f"--onnx={static}", version=version)
    assert r.returncode == 0, r.stderr
    expected = f"TensorRT.trtexec [TensorRT {tag}] # trtexec --onnx={static}"
    assert r.stdout.splitlines()[0] == f"&&&& RUNNING {expected}"
    assert last_line(r) == f"&&&& PASSED {expected}"
    assert f"] [I] TensorRT version: {full}\n" in r.stdout


def test_help_prints_banner_and_exits_zero_without_passed():
    r = trtexec("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("&&&& RUNNING") and "&&&& PASSED" not in r.stdout and "--onnx" in r.stdout


def test_wrapper_sets_environment(tmp_path, static):
    wrapper = dbl.make_wrapper(tmp_path / "bin", "8.6", build_number=7)
    assert os.access(wrapper, os.X_OK)
    env = {**os.environ, "TRTEXEC_DOUBLE_FAULT": "build_error"}  # must not leak through the wrapper
    r = subprocess.run([str(wrapper), f"--onnx={static}", "--skipInference"], capture_output=True, text=True,
                       env=env, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (f"&&&& RUNNING TensorRT.trtexec [TensorRT v8601] [b7] # {wrapper} "
                                        f"--onnx={static} --skipInference")
    crash = dbl.make_wrapper(tmp_path / "crash", "10.8", fault="crash")
    r = subprocess.run([str(crash), f"--onnx={static}"], capture_output=True, timeout=20)
    assert r.returncode == -signal.SIGSEGV


def test_bad_double_configuration_exits_2(static):
    assert trtexec(f"--onnx={static}", version="7.2").returncode == 2
    assert trtexec(f"--onnx={static}", fault="explode").returncode == 2


# ------------------------------------------------------------------ JetPack 5 (8.4, 8.5) grammar
@pytest.mark.parametrize("version, tag", [("8.4", "v8401"), ("8.5", "v8502")])
def test_jetpack5_grammar_sits_between_82_and_86(tmp_path, static, version, tag):
    ok = trtexec(f"--onnx={static}", f"--saveEngine={tmp_path / 'e.plan'}", "--memPoolSize=workspace:512",
                 "--int8", "--precisionConstraints=obey", "--layerPrecisions=relu0:fp32", "--plugins=", version=version)
    assert ok.returncode == 1 and "Unable to open library" in ok.stderr  # --plugins parsed, its file missing
    ok = trtexec(f"--onnx={static}", f"--saveEngine={tmp_path / 'e.plan'}", "--memPoolSize=workspace:512",
                 "--fp16", "--precisionConstraints=obey", "--layerPrecisions=relu0:fp32", version=version)
    assert ok.returncode == 0, ok.stderr
    assert f"[TensorRT {tag}]" in ok.stdout.splitlines()[0]
    engine = dbl.read_engine(tmp_path / "e.plan")
    assert engine["grammar"] == "8.5" and engine["workspace_bytes"] == 512 << 20  # MiB, as 8.6
    assert engine["layer_precisions"] == {"relu0": "fp32"}
    for later in ("--builderOptimizationLevel=3", "--staticPlugins=a.so", "--versionCompatible",
                  "--hardwareCompatibilityLevel=ampere+", "--stronglyTyped", "--profile=0"):
        refused = trtexec(f"--onnx={static}", later, version=version)
        assert refused.returncode == 1 and f"Unknown option: {later.split('=')[0]}" in refused.stderr, later
    heuristic = trtexec(f"--onnx={static}", "--heuristic", "--buildOnly", version=version)
    assert heuristic.returncode == (1 if version == "8.4" else 0)  # 8.5 added it
    assert ("Unknown option: --heuristic" in heuristic.stderr) == (version == "8.4")


# ---------------------------------------------------------------------------- I/O formats
def make_mixed_model(path: Path) -> Path:
    """x (float) -> y (float) and n (int32): an EfficientNMS-like mix of output types."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, STATIC)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, STATIC)
    n = helper.make_tensor_value_info("n", TensorProto.INT32, [4])
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu0"),
             helper.make_node("Shape", ["x"], ["s"], name="shape0"),
             helper.make_node("Cast", ["s"], ["n"], name="cast0", to=TensorProto.INT32)]
    model = helper.make_model(helper.make_graph(nodes, "mixed", [x], [y, n]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("version", ["8.2", "8.5", "8.6", "10.8"])
def test_io_formats_set_each_binding_type(tmp_path, version):
    model = make_mixed_model(tmp_path / "mixed.onnx")
    ok = trtexec(f"--onnx={model}", f"--saveEngine={tmp_path / 'e.plan'}", "--inputIOFormats=fp16:chw",
                 "--outputIOFormats=fp16:chw,int32:chw", version=version)
    assert ok.returncode == 0, ok.stderr
    assert dbl.read_engine(tmp_path / "e.plan")["io_types"] == {"inputs": {"x": "fp16"},
                                                                "outputs": {"y": "fp16", "n": "int32"}}
    broadcast = trtexec(f"--onnx={model}", "--outputIOFormats=fp16:chw", version=version)
    assert broadcast.returncode == 1 and "Cannot set output tensor n of type int32 to fp16" in broadcast.stderr
    counted = trtexec(f"--onnx={model}", "--inputIOFormats=fp16:chw,fp16:chw", version=version)
    assert "The number of inputIOFormats must match network's inputs or be one for broadcasting." in counted.stderr
    for bad, error in (("half:chw", "Invalid DataType half"), ("fp16:nchw", "Invalid TensorFormat nchw")):
        refused = trtexec(f"--onnx={model}", f"--inputIOFormats={bad}", version=version)
        assert refused.returncode == 1 and error in refused.stderr


def test_io_formats_cannot_retype_a_strongly_typed_network(tmp_path, static):
    refused = trtexec(f"--onnx={static}", "--stronglyTyped", "--inputIOFormats=fp16:chw", version="10.8")
    assert refused.returncode == 1 and "strongly typed" in refused.stderr
    assert trtexec(f"--onnx={static}", "--stronglyTyped", "--inputIOFormats=fp32:chw", "--skipInference",
                   version="10.8").returncode == 0  # the ONNX's own type is no change
