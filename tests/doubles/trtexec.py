#!/usr/bin/env python3
"""TEST DOUBLE for NVIDIA ``trtexec`` -- used only by trtforge's tests, never by the product.

No machine here has TensorRT or a GPU.  This executable emulates trtexec's command-line
grammar, log format and failure modes for four grammar generations, writes a JSON "engine"
and a timing cache, and fails like trtexec would.  Run it through a wrapper made with
``make_wrapper()`` and point the product at it with ``TRTEXEC=<wrapper>``.

Environment
  TRTEXEC_DOUBLE_VERSION        "8.2" | "8.6" | "10.8" (default) | "11.0" | any MAJOR.MINOR[.PATCH]
                                8.0-8.2 -> 8.2 grammar, 8.3-8.4 -> 8.4, 8.5, 8.6, 9.x/10.x -> 10,
                                >=11 -> 11 (8.4 is the 8.5 grammar without --heuristic/--preview).
  TRTEXEC_DOUBLE_FAULT          hang (sleep forever after the banner) | no_engine (PASSED, exit 0,
                                no file) | empty_engine (0-byte file, exit 0) | tiny_engine (a
                                16-byte file, an otherwise normal build) | crash (SIGSEGV after
                                half the engine is written) | build_error ([E] lines, FAILED,
                                exit 1) | garbage (a build prints 4 KiB of random bytes and no
                                banner, writes 8 KiB of random bytes as the engine, exits 0;
                                --help still answers).  A bad version or fault value exits 2.
  TRTEXEC_DOUBLE_BUILD_VERSION  optional: the version a build (anything but --help) reports and
                                speaks, as a trtexec whose TensorRT changed after it was probed.
  DOUBLE_GPU                    the fake host's GPU, "<name>, <compute capability>" (default
                                "NVIDIA GeForce RTX 3090, 8.6"); tests/doubles/nvidia_smi.py
                                reports the same one.  A host's GPU is no trtexec setting, so
                                make_wrapper() passes it through from the caller.
  TRTEXEC_DOUBLE_BUILD_SECONDS  float, default 0: "build" time; the engine is written in chunks
                                meanwhile, so a kill leaves a partial file (as real 10.x, which
                                streams the plan into --saveEngine while building).
  TRTEXEC_DOUBLE_BUILD_NUMBER   optional n: banner gets " [b<n>]" as 10.4+ builds print.
  TRTEXEC_DOUBLE_ARGV0          argv[0] shown in the banner (the wrapper sets it to itself).

Engine file (--saveEngine): ENGINE_MAGIC (b"trtforge-double-engine\\n") followed by one JSON
object (sorted keys) with: format, trt_version, grammar, device, onnx_sha256, inputs, io_types
({"inputs": {name: type}, "outputs": {...}}: fp32/fp16/int32/..., after --*IOFormats),
precision (sorted list of fp16/bf16/int8/fp8/int4), tf32, strongly_typed,
precision_constraints, layer_precisions (layer -> type, as applied to node names),
workspace_bytes (int or null = TensorRT default), mem_pools_bytes, profiles (list of
{input: {min, opt, max}}), calibration (null or {file, source: cache|random|dynamic_range,
sha256?, algorithm?}), plugins, builder_optimization_level, hardware_compatibility_level,
version_compatible, sparsity, timing_cache.  A calibration read from a cache also lists its tensors, the
network's float activations without a scale there (missing_scales) and the layers that
consume or produce one (layers_above_int8: TensorRT runs them above INT8, warning per
tensor).  Use ``read_engine(path)`` to decode.

Timing cache (--timingCacheFile), the DOUBLE'S OWN FORMAT: first line TIMING_CACHE_MAGIC
("trtforge-double-timing-cache v1"), then JSON {"entries": {key: entry}} where entry =
{onnx_sha256, precision, strongly_typed, workspace_bytes, trt_version, device} and key = sha256
of the entry's sorted-key JSON (so: ONNX bytes + precision flags + workspace + version; the
workspace is in the key because tactics that need more than the pool allows are not timed,
so a build with another budget adds timings).  Decode with
``decode_timing_cache(bytes)``.  Each build takes fcntl.lockf on "<F>.lock" (as NVIDIA's
FileLock; the lock file is left in place), re-reads, merges, writes a temp file and renames.  A file not in this format
is treated as corrupt: "[W] [TRT] Detected invalid timing cache, setup a local cache instead"
(message seen in real 10.x logs) and the file is rewritten fresh -- the reset is our choice.

Verified against NVIDIA/TensorRT sources (samples/common/sampleOptions.cpp for 8.2, 8.6 and a
late 10.x; samples/trtexec/trtexec.cpp; sampleEngines.cpp; sampleDevice.cpp; timingCache.cpp;
logging.h) and pasted logs in GitHub issues:
  * only "--name=value" / bare "--flag" are parsed (argsToArgumentsMap); anything left over is
    "[E] Unknown option: <name> <value>" -> help, FAILED, exit 1.  A repeated non-repeatable
    option leaves one occurrence over, which is also "Unknown option".
  * [I]/[V] and &&&& lines go to stdout, [W]/[E] to stderr (logging.h severityOstream).
  * --help/-h: banner + help, exit 0, no PASSED line.  10.x prints help before the errors,
    8.x after.  Option tables below follow the sources (late-10.x list used for all 10.x).
  * memPoolSize: 8.6 = stod(N) MiB (suffix ignored); 10.x = stod * unit of LAST char, default
    M, so "4GiB" is 4 bytes; unknown unit -> "invalid unit specifier".
  * 10.x multi-profile grammar (--profile=N then min/opt/max at the following positions) and its
    error strings; a missing min/opt/max is broadcast with [W] in 10.x; 8.x allows opt-only or
    all three.  Dynamic input without shapes: [W] "... Automatically overriding shape to: ..."
    (a warning, not an error, in the source).  Shapes on a static model are an [E].
  * --calib is read-only (writeCalibrationCache is empty); a missing cache file is NOT an error
    (random calibration data; also NVIDIA/TensorRT#1703).  DLA on a GPU without DLA:
    "Cannot create DLA engine, N not available" even with --allowGPUFallback.
  * unknown --layerPrecisions names are silently ignored (setLayerPrecisions); one '*' wildcard.
Assumed / approximate (double's choices): 11.x option removals (team facts); exact TRT-library
error texts (ModelImporter, profile MIN<=OPT<=MAX, deserialization); the malformed calibration
cache error (TensorRT's real behaviour was not verified); help text; the subset of option-dump
lines; 8.2 summary layout; fake GPU (RTX 3090, CC 8.6, no DLA) and all timing numbers.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import random
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_MAGIC = b"trtforge-double-engine\n"
TIMING_CACHE_MAGIC = "trtforge-double-timing-cache v1"
DEFAULT_VERSION = "10.8"
FAULTS = ("hang", "no_engine", "empty_engine", "tiny_engine", "crash", "build_error", "garbage")
DEFAULT_GPU = "NVIDIA GeForce RTX 3090, 8.6"
GPU = {"name": "NVIDIA GeForce RTX 3090", "uuid": "GPU-5a7c0f4e-3d1b-4c2a-9e8f-0b1d2c3e4f50",
       "cc": "8.6", "sms": 82, "mem_mib": 24259}


def host_gpu(text: str | None) -> tuple[str, str]:
    """DOUBLE_GPU "<name>, <compute capability>" -> (name, cc)."""
    name, _, cc = (text or DEFAULT_GPU).rpartition(",")
    if not name.strip() or not re.fullmatch(r"\d+\.\d+", cc.strip()):
        raise ValueError(f"bad DOUBLE_GPU {text!r}: use '<name>, <major>.<minor>'")
    return name.strip(), cc.strip()

# ----------------------------------------------------------------------------- option tables
# kind: flag (value ignored), str, int (stoi), float (stof), repeat (str, may repeat)


def _k(kind: str, names: str) -> dict[str, str]:
    return {n: kind for n in names.split()}


_OPTS_82 = {
    **_k("str", "--onnx --uff --model --deploy --output --uffInput --inputIOFormats --outputIOFormats"
                " --minShapes --optShapes --maxShapes --minShapesCalib --optShapesCalib --maxShapesCalib"
                " --calib --nvtxMode --profilingVerbosity --loadEngine --saveEngine --tacticSources"
                " --timingCacheFile --sparsity --loadInputs --shapes --exportTimes --exportOutput"
                " --exportProfile --exportLayerInfo"),
    **_k("int", "--maxBatch --workspace --minTiming --avgTiming --device --useDLACore --streams"
                " --iterations --duration --warmUp --sleepTime --batch --avgRuns"),
    **_k("float", "--percentile"),
    **_k("flag", "--uffNHWC --explicitBatch --explicitPrecision --best --refit --noTF32 --fp16 --int8"
                 " --safe --consistency --restricted --strictTypes --noBuilderCache --allowGPUFallback"
                 " --exposeDMA --noDataTransfers --useManagedMemory --useSpinWait --threads --useCudaGraph"
                 " --separateProfileRun --buildOnly --timeDeserialize --timeRefit --verbose --dumpRefit"
                 " --dumpOutput --dumpProfile --dumpLayerInfo"),
    **_k("repeat", "--plugins"),
}
_OPTS_85 = {  # 8.5 sampleOptions.cpp (JetPack 5.1); 8.4 (JetPack 5.0.2) lacks --heuristic and --preview
    **{k: v for k, v in _OPTS_82.items() if k not in ("--strictTypes", "--percentile")},
    **_k("str", "--memPoolSize --precisionConstraints --layerPrecisions --layerOutputTypes --preview --percentile"),
    **_k("int", "--idleTime"),
    **_k("float", "--persistentCacheRatio"),
    **_k("flag", "--directIO --heuristic"),
}
_OPTS_84 = {k: v for k, v in _OPTS_85.items() if k not in ("--heuristic", "--preview")}
_OPTS_86 = {
    **{k: v for k, v in _OPTS_82.items() if k not in ("--strictTypes", "--percentile")},
    **_k("str", "--memPoolSize --precisionConstraints --layerPrecisions --layerOutputTypes"
                " --layerDeviceTypes --hardwareCompatibilityLevel --preview --tempdir --tempfileControls"
                " --useRuntime --leanDLLPath --percentile"),
    **_k("int", "--builderOptimizationLevel --maxAuxStreams --infStreams --idleTime"),
    **_k("float", "--persistentCacheRatio"),
    **_k("flag", "--vc --versionCompatible --excludeLeanRuntime --fp8 --buildDLAStandalone --skipInference"
                 " --directIO --heuristic --ignoreParsedPluginLibs --dumpRawBindingsToFile"),
    **_k("repeat", "--staticPlugins --setPluginsToSerialize --dynamicPlugins"),
}
_OPTS_10 = {  # late 10.x sampleOptions.cpp (UFF/Caffe, --workspace, --maxBatch, --buildOnly gone)
    **{k: v for k, v in _OPTS_86.items() if k not in (
        "--uff --model --deploy --output --uffInput --uffNHWC --workspace --maxBatch --minTiming --batch"
        " --explicitBatch --explicitPrecision --nvtxMode --buildOnly --heuristic".split())},
    **_k("str", "--decomposableAttentions --markDebug --runtimePlatform --saveDebugTensors"
                " --saveAllDebugTensors --refitFromOnnx --allocationStrategy --weightStreamingBudget"
                " --remoteAutoTuningConfig"),
    **_k("int", "--calibProfile --maxTactics --useProfile --tilingOptimizationLevel --l2LimitForTiling"),
    **_k("flag", "--bf16 --int4 --stronglyTyped --distributiveIndependence --weightless --stripWeights"
                 " --stripAllWeights --pi --pluginInstanceNorm --uint8AsymmetricQuantizationDLA"
                 " --noCompilationCache --monitorMemory --dumpKernelText --asyncFileReader"
                 " --getPlanVersionOnly --errorOnTimingCacheMiss --allowWeightStreaming"
                 " --markUnfusedTensorsAsDebugTensors --dumpOptimizationProfile"),
    **_k("repeat", "--profile"),
}
_REMOVED_11 = ("--fp16 --bf16 --int8 --fp8 --int4 --best --calib --precisionConstraints"
               " --layerPrecisions --layerOutputTypes").split()
_OPTS_11 = {k: v for k, v in _OPTS_10.items() if k not in _REMOVED_11}

_DEPRECATED_82 = {
    "--explicitBatch": ["--explicitBatch flag has been deprecated and has no effect!",
                        "Explicit batch dim is automatically enabled if input model is ONNX or if "
                        "dynamic shapes are provided when the engine is built."],
    "--explicitPrecision": ["--explicitPrecision flag has been deprecated and has no effect!"],
    "--nvtxMode": ["--nvtxMode flag has been deprecated by --profilingVerbosity flag."],
}
_DEPRECATED_10 = {
    "--plugins": ["--plugins flag has been deprecated, use --staticPlugins flag instead."],
    "--streams": ["--streams flag has been deprecated, use --infStreams flag instead."],
}
_DEPRECATED_86 = {**_DEPRECATED_82, **_DEPRECATED_10,
                  "--workspace": ["--workspace flag has been deprecated by --memPoolSize flag."],
                  "--buildOnly": ["--buildOnly flag has been deprecated by --skipInference flag."],
                  "--heuristic": ["--heuristic flag has been deprecated, use --builderOptimizationLevel=<N> "
                                  "flag instead (N <= 2 enables heuristic)."]}
_WEAK_TYPING = ("Weakly-typed networks have been deprecated in TensorRT. You can use the AutoCast tool "
                "(https://nvidia.github.io/TensorRT-Model-Optimizer/guides/8_autocast.html) to convert "
                "the network to be strongly typed.")


@dataclass(frozen=True)
class Grammar:
    name: str
    options: dict
    deprecated: dict
    precisions: tuple  # builder precision flags this generation accepts
    dtypes: tuple      # accepted by --layerPrecisions
    io_types: tuple = ("fp32", "fp16", "int8", "int32")  # accepted by --inputIOFormats/--outputIOFormats
    io_layouts: tuple = ("chw", "chw2", "chw4", "hwc8", "chw16", "chw32", "dhwc8", "cdhw32", "hwc", "dla_linear",
                         "dla_hwc4")


_DEPRECATED_85 = {**_DEPRECATED_82, "--workspace": ["--workspace flag has been deprecated by --memPoolSize flag."]}
_IO_10 = {"io_types": ("fp32", "fp16", "bf16", "int32", "int64", "int8", "uint8", "bool", "fp8", "int4"),
          "io_layouts": ("chw", "chw2", "chw4", "hwc8", "chw16", "chw32", "dhwc8", "cdhw32", "hwc", "dla_linear",
                         "dla_hwc4", "hwc16", "dhwc")}
GRAMMARS = {
    "8.2": Grammar("8.2", _OPTS_82, _DEPRECATED_82, ("fp16", "int8"), ()),
    "8.4": Grammar("8.5", _OPTS_84, _DEPRECATED_85, ("fp16", "int8"), ("fp32", "fp16", "int8", "int32")),
    "8.5": Grammar("8.5", _OPTS_85, _DEPRECATED_85, ("fp16", "int8"), ("fp32", "fp16", "int8", "int32")),
    "8.6": Grammar("8.6", _OPTS_86, _DEPRECATED_86, ("fp16", "int8", "fp8"), ("fp32", "fp16", "int8", "int32")),
    "10": Grammar("10", _OPTS_10, {**_DEPRECATED_10, "--directIO": ["--directIO flag has been deprecated"]},
                  ("fp16", "bf16", "int8", "fp8", "int4"),
                  ("fp32", "fp16", "bf16", "int8", "fp8", "int32", "int64", "bool", "uint8", "int4"), **_IO_10),
    "11": Grammar("11", _OPTS_11, {**_DEPRECATED_10, "--directIO": ["--directIO flag has been deprecated"]},
                  (), (), **_IO_10),
}


def resolve_version(text: str) -> tuple[tuple[int, int, int], Grammar]:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not m:
        raise ValueError(f"bad TRTEXEC_DOUBLE_VERSION {text!r}")
    major, minor = int(m[1]), int(m[2])
    patch = int(m[3]) if m[3] else {(8, 2): 1, (8, 4): 1, (8, 5): 2, (8, 6): 1}.get((major, minor), 0)
    if major < 8:
        raise ValueError(f"TensorRT {text} is older than any emulated grammar")
    key = ("8.2" if minor <= 2 else "8.4" if minor <= 4 else "8.5" if minor == 5 else "8.6") if major == 8 \
        else "10" if major < 11 else "11"
    return (major, minor, patch), GRAMMARS[key]


def banner_tag(v: tuple[int, int, int]) -> str:
    """8.x: v8201 / v8601;  10+: v100800 / v110000 (seen in real banners)."""
    n = v[0] * 1000 + v[1] * 100 + v[2] if v[0] < 10 else v[0] * 10000 + v[1] * 100 + v[2]
    return f"v{n}"


# ------------------------------------------------------------------------------------ logging
class ParseError(Exception):
    pass


class Log:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose

    def _emit(self, sev: str, msg: str, trt: bool) -> None:
        stamp = datetime.datetime.now().strftime("[%m/%d/%Y-%H:%M:%S]")
        stream = sys.stderr if sev in "WE" else sys.stdout
        for line in msg.split("\n"):
            stream.write(f"{stamp} [{sev}] {'[TRT] ' if trt else ''}{line}\n")
        stream.flush()

    def i(self, msg: str = "", trt: bool = False) -> None: self._emit("I", msg, trt)
    def w(self, msg: str, trt: bool = False) -> None: self._emit("W", msg, trt)
    def e(self, msg: str, trt: bool = False) -> None: self._emit("E", msg, trt)

    def v(self, msg: str, trt: bool = False) -> None:
        if self.verbose:
            self._emit("V", msg, trt)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _cfmt(x: float) -> str:  # std::ostream default formatting of a double
    return format(x, ".6g")


def _dims(d) -> str:
    return "x".join(str(x) for x in d)


# ------------------------------------------------------------------------------------ parsing
def _stoi(s: str, what: str = "stoi") -> int:
    m = re.match(r"\s*[+-]?\d+", s)
    if not m:
        raise ParseError(what)
    return int(m[0])


def _stod(s: str, what: str = "stod") -> float:
    m = re.match(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", s)
    if not m:
        raise ParseError(what)
    return float(m[0])


def split_args(argv: list[str]) -> list[tuple[str, str, int]]:
    """argsToArgumentsMap: split at the first '='; no '=' means an empty value."""
    return [(a.split("=", 1)[0], a.split("=", 1)[1] if "=" in a else "", i)
            for i, a in enumerate(argv, 1)]


@dataclass
class Opts:
    raw: dict = field(default_factory=dict)   # name -> list[(value, pos)]
    unknown: list = field(default_factory=list)

    def has(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, default=None):
        return self.raw[name][0][0] if name in self.raw else default

    def all(self, name: str) -> list[str]:
        return [v for v, _ in self.raw.get(name, [])]


_SHAPE_OPTS = ("--minShapes", "--optShapes", "--maxShapes")


def collect(args, g: Grammar) -> Opts:
    o = Opts()
    for name, value, pos in args:
        kind = g.options.get(name)
        multi = kind == "repeat" or (g.name in ("10", "11") and name in _SHAPE_OPTS)
        if kind is None or (name in o.raw and not multi):
            o.unknown.append((name, value))
            continue
        if kind == "int":
            _stoi(value)
        elif kind == "float":
            _stod(value, "stof")
        o.raw.setdefault(name, []).append((value, pos))
    return o


def parse_shape_list(text: str) -> dict[str, list[int]]:
    shapes = {}
    for item in filter(None, text.split(",")):
        name, _, dims = item.rpartition(":")
        name = name.replace("'", "")
        shapes[name] = [] if dims in ("", "scalar") else [_stoi(d) for d in dims.split("x")]
    return shapes


def _process_profile(sel: dict, g: Grammar, warn) -> dict:
    """sel: selector -> {name: dims}.  Returns {name: {min, opt, max}}."""
    have = {s: s in sel for s in ("min", "opt", "max")}
    if g.name in ("8.2", "8.5", "8.6"):  # opt only (expanded to min/max) or all three
        if not (have["opt"] and (have["min"] == have["max"])):
            raise ParseError("Must specify only --optShapes or all of --minShapes, --optShapes, --maxShapes")
        fallback = {"min": ("opt",), "opt": (), "max": ("opt",)}
    else:  # 10.x: a selector that was not given at all is broadcast from another, with a warning
        fallback = {"min": ("opt", "max"), "opt": ("max", "min"), "max": ("opt", "min")}
    order = {s: (s,) if have[s] else fallback[s] for s in ("min", "opt", "max")}
    prof = {}
    for n in dict.fromkeys(n for d in sel.values() for n in d):
        prof[n] = {}
        for s in ("min", "opt", "max"):
            src = next((c for c in order[s] if n in sel.get(c, {})), None)
            if src is not None and src != s and g.name in ("10", "11"):
                warn(f"{src}Shapes is being broadcasted to {s}Shapes for tensor {n}")
            prof[n][s] = sel[src][n] if src is not None else None
    return prof


def parse_profiles(o: Opts, g: Grammar, warn) -> list[dict]:
    if g.name in ("8.2", "8.5", "8.6"):
        sel = {s[2:5]: parse_shape_list(o.get(s)) for s in _SHAPE_OPTS if o.has(s)}
        return [_process_profile(sel, g, warn)] if sel else [{}]
    entries = {s: list(o.raw.get(s, [])) for s in _SHAPE_OPTS}
    profiles: dict[int, dict] = {}
    for value, pos in o.raw.get("--profile", []):
        idx, sel = _stoi(value), {}
        for p in range(pos + 1, pos + 4):  # getAndDelOptionBehind: the very next positions
            hit = next(((s, v) for s in _SHAPE_OPTS for v in entries[s] if v[1] == p and s[2:5] not in sel),
                       None)
            if hit is None:
                break
            entries[hit[0]].remove(hit[1])
            sel[hit[0][2:5]] = parse_shape_list(hit[1][0])
        if idx in profiles:
            raise ParseError("Optimization profile index cannot be the same.")
        profiles[idx] = _process_profile(sel, g, warn) if sel else {}
    if profiles:
        for i in range(max(profiles) + 1):
            if not profiles.get(i):
                raise ParseError(f"Found invalid or missing shape spec at profile index {i}. ")
        result = [profiles[i] for i in range(len(profiles))]
    else:
        sel = {}
        for s in _SHAPE_OPTS:
            if entries[s]:
                sel[s[2:5]] = parse_shape_list(entries[s].pop(0)[0])
        result = [_process_profile(sel, g, warn) if sel else {}]
    if any(entries[s] for s in _SHAPE_OPTS):
        raise ParseError("Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed. ")
    return result


def parse_mem_pool(spec: str, g: Grammar) -> dict[str, int]:
    pools = {}
    for item in filter(None, spec.split(",")):
        name, _, size = item.rpartition(":")
        if g.name in ("8.5", "8.6"):
            mib = _stod(size)
        else:
            suffix = "" if size[-1:].isdigit() else size[-1:].upper()
            ctx = " conversion failure: failed to parse --memPoolSize. Please double check your input string."
            try:
                num = _stod(size)
            except ParseError as e:
                raise ParseError(str(e) + ctx) from None
            units = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "": 1 << 20}
            if suffix not in units:
                raise ParseError(f'Error parsing "{size}": invalid unit specifier \'{suffix}\'. Valid base-2 unit '
                                 "suffixes include: B (Bytes), G (Gibibytes), K (Kibibytes), M (Mebibytes)." + ctx)
            mib = num * units[suffix] / (1 << 20)
        if mib < 0:
            raise ParseError(f"Negative memory pool size: {mib:f}")
        if name not in ("workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem"):
            raise ParseError(f"Unknown memory pool: {name}")
        pools[name] = int(mib * (1 << 20))
    return pools


@dataclass
class Build:
    onnx: str | None = None
    load: str | None = None
    save: str | None = None
    precision: set = field(default_factory=set)
    strongly_typed: bool = False
    tf32: bool = True
    constraints: str = "none"
    layer_precisions: dict = field(default_factory=dict)
    pools: dict = field(default_factory=dict)
    profiles: list = field(default_factory=lambda: [{}])
    inference_shapes: dict = field(default_factory=dict)
    calib: str | None = None
    plugins: list = field(default_factory=list)
    timing_cache: str | None = None
    no_builder_cache: bool = False
    dla: int | None = None
    device: int = 0
    skip_inference: bool = False
    percentiles: list = field(default_factory=lambda: [90.0, 95.0, 99.0])
    opt_level: int | None = None
    hw_compat: str = "none"
    version_compatible: bool = False
    sparsity: str = "disable"
    input_formats: list = field(default_factory=list)  # [(type, [layouts])] from --inputIOFormats
    output_formats: list = field(default_factory=list)


def parse_io_formats(text: str, g: Grammar) -> list[tuple[str, list[str]]]:
    """stringToValue<IOFormat> over a comma list: "type:layout[+layout]" each."""
    formats = []
    for item in filter(None, text.split(",")):
        dtype, _, layouts = item.partition(":")
        if dtype not in g.io_types:
            raise ParseError(f"Invalid DataType {dtype}")
        for layout in layouts.split("+"):
            if layout.lower() not in g.io_layouts:
                raise ParseError(f"Invalid TensorFormat {layout}")
        formats.append((dtype, [layout.lower() for layout in layouts.split("+")]))
    return formats


def interpret(o: Opts, g: Grammar, log: Log) -> Build:
    """The semantic half of AllOptions::parse; raises ParseError like std::invalid_argument."""
    b = Build(onnx=o.get("--onnx"), load=o.get("--loadEngine"), save=o.get("--saveEngine"))
    for name in o.raw:
        for line in g.deprecated.get(name, []):
            log.w(line)
    b.profiles = parse_profiles(o, g, log.w)
    b.input_formats = parse_io_formats(o.get("--inputIOFormats", ""), g)
    b.output_formats = parse_io_formats(o.get("--outputIOFormats", ""), g)
    b.inference_shapes = parse_shape_list(o.get("--shapes", ""))
    use = _stoi(o.get("--useProfile", "0"))
    for n, d in b.inference_shapes.items() if use < len(b.profiles) else ():  # --shapes fills the profile
        b.profiles[use].setdefault(n, {"min": d, "opt": d, "max": d})
    if g.name == "8.2":
        b.pools = {"workspace": _stoi(o.get("--workspace", "16")) << 20}
        b.percentiles = [_stod(o.get("--percentile", "99"), "stof")]
    else:
        if o.has("--workspace"):
            b.pools["workspace"] = _stoi(o.get("--workspace")) << 20
        b.pools.update(parse_mem_pool(o.get("--memPoolSize", ""), g))
        if o.has("--percentile"):
            b.percentiles = [_stod(p, "stof") for p in o.get("--percentile").split(",") if p]
    b.precision = {p for p in g.precisions if o.has("--" + p)}
    if o.has("--best"):
        b.precision |= {"fp16", "int8"} | ({"bf16"} if g.name == "10" else set())
    b.strongly_typed = o.has("--stronglyTyped") or g.name == "11"
    if g.name == "10" and o.has("--best") and o.has("--stronglyTyped"):
        raise ParseError("--best and --stronglyTyped cannot be both set. --best enables implicit precisions, "
                         "while --stronglyTyped enforces explicit precisions.")
    if g.name == "10" and b.strongly_typed:
        for p in sorted(b.precision):
            log.w(f"Invalid usage, setting {p} mode is not allowed if graph is strongly typed. "
                  f"Disabling BuilderFlag::k{p.upper()}.")
        b.precision = set()
    if g.name == "10" and (b.precision or o.has("--best")):
        log.w(_WEAK_TYPING)
    if "fp8" in b.precision and "int8" in b.precision:
        raise ParseError("Invalid usage, fp8 and int8 aren't allowed to be enabled together.")
    b.tf32 = not o.has("--noTF32")
    b.constraints = o.get("--precisionConstraints", "") or "none"
    if b.constraints not in ("none", "obey", "prefer"):
        raise ParseError(f"Unknown precision constraints: {b.constraints}")
    for item in filter(None, o.get("--layerPrecisions", "").split(",")):
        layer, _, dtype = item.rpartition(":")
        if dtype not in g.dtypes:
            raise ParseError(f"Invalid DataType {dtype}")
        b.layer_precisions[layer.replace("'", "")] = dtype
    if b.layer_precisions and b.constraints == "none":
        log.w('--layerPrecision/--layerOutputTypes flags have no effect when --precisionConstraints flag is set '
              'to "none".')
    elif not b.layer_precisions and b.constraints != "none":
        log.w('When --precisionConstraints flag is set to "obey" or "prefer", please add --layerPrecision/'
              '--layerOutputTypes flags to set layer-wise precisions and output types.')
    b.calib = o.get("--calib")
    b.plugins = [p for n in ("--plugins", "--staticPlugins", "--dynamicPlugins", "--setPluginsToSerialize")
                 for p in o.all(n)]
    b.timing_cache = o.get("--timingCacheFile") or None
    b.no_builder_cache = o.has("--noBuilderCache")
    b.dla = _stoi(o.get("--useDLACore")) if o.has("--useDLACore") else None
    b.device = _stoi(o.get("--device", "0"))
    b.skip_inference = o.has("--skipInference") or o.has("--buildOnly")
    b.opt_level = _stoi(o.get("--builderOptimizationLevel")) if o.has("--builderOptimizationLevel") else None
    b.version_compatible = o.has("--vc") or o.has("--versionCompatible")
    b.sparsity = o.get("--sparsity", "disable") or "disable"
    if b.sparsity not in ("disable", "enable", "force"):
        raise ParseError(f"Unknown sparsity mode: {b.sparsity}")
    hw = o.get("--hardwareCompatibilityLevel", "") or "none"
    valid_hw = ("none", "ampere+") if g.name == "8.6" else ("none", "ampere+", "samecomputecapability")
    if hw.lower() not in valid_hw:
        raise ParseError(f"Unknown hardwareCompatibilityLevel: {hw}. Valid options: none, ampere+"
                         + ("." if g.name == "8.6" else ", sameComputeCapability."))
    b.hw_compat = hw
    if b.load and b.save:
        raise ParseError("Incompatible load and save engine options selected")
    if b.load is None and b.onnx is None and not (o.has("--uff") or o.has("--model")):
        raise ParseError("Model missing or format not recognized")
    return b


# --------------------------------------------------------------------------------- model side
def load_onnx(path: str, log: Log) -> dict | None:
    """Parse like the ONNX parser would; None after logging the parser's complaint."""
    if not path or not os.path.isfile(path):
        log.e(f"ModelImporter.cpp:780: Input is not a regular file: {path}", trt=True)  # seen in real logs
        return None
    import onnx  # lazy: only builds need it
    data = Path(path).read_bytes()
    try:
        model = onnx.load_from_string(data)
        if model.ir_version <= 0 or not model.HasField("graph"):
            raise ValueError("not an ONNX ModelProto")
    except Exception:
        log.e(f"ModelImporter.cpp:735: Failed to parse ONNX model from file: {path}", trt=True)
        return None
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = {}
    for vi in graph.input:
        if vi.name not in inits:
            dims = vi.type.tensor_type.shape.dim
            inputs[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims]
    type_name = onnx.TensorProto.DataType.Name
    input_types = {vi.name: type_name(vi.type.tensor_type.elem_type) for vi in graph.input if vi.name not in inits}
    output_types = {vi.name: type_name(vi.type.tensor_type.elem_type) for vi in graph.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes = [n.name or f"node_of_{(list(n.output) or [''])[0]}" for n in graph.node]
    return {"sha256": hashlib.sha256(data).hexdigest(), "inputs": inputs, "n_outputs": len(graph.output),
            "input_types": input_types, "output_types": output_types,
            "nodes": nodes, "ir": model.ir_version, "opset": opset,
            "producer": (model.producer_name, model.producer_version),
            "io": [(name, [t for t in n.input if t], [t for t in n.output if t]) for name, n in zip(nodes, graph.node)],
            "activations": float_activations(model)}


def float_activations(model) -> list[str]:
    """Float tensors an implicit INT8 build wants a scale for: graph inputs and node outputs
    (not weights, not Constant outputs), typed by ONNX shape inference. A tensor whose type
    inference cannot tell is left out, so the double never reports a scale missing wrongly."""
    import onnx
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # custom-domain nodes (plugins): the types the file itself records
        graph = model.graph
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    typed = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    weights = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in weights]
    names += [t for n in graph.node if n.op_type != "Constant" for t in n.output if t]
    return [t for t in names if typed.get(t) in floats]


_FLOAT_IO = ("fp32", "fp16", "bf16")


def _onnx_binding_type(onnx_type: str, g: Grammar) -> str:
    """The binding type TensorRT's ONNX parser gives a graph input or output (8.x narrows INT64 to INT32)."""
    if onnx_type == "INT64" and g.name not in ("10", "11"):
        return "int32"
    return {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "INT32": "int32", "INT64": "int64",
            "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}.get(onnx_type, onnx_type.lower())


def binding_types(b: Build, g: Grammar, model: dict) -> tuple[dict, str | None]:
    """sampleEngines.cpp setupNetworkAndConfig: each input and output takes the type of its
    --inputIOFormats/--outputIOFormats entry (a single entry is broadcast to all), the rest keep
    the ONNX's.  -> ({"inputs": {name: type}, "outputs": {...}}, error or None).  Double's choices,
    not verified on TensorRT: a float format on an integer binding (or the reverse) is an error,
    and so is a format whose type differs from the ONNX's in a strongly typed build (which takes
    its bindings' types from the ONNX)."""
    types: dict = {}
    for side, formats, onnx_types in (("input", b.input_formats, model["input_types"]),
                                      ("output", b.output_formats, model["output_types"])):
        if formats and len(formats) not in (1, len(onnx_types)):
            return {}, (f"The number of {side}IOFormats must match network's {side}s or be one for broadcasting.")
        chosen = {}
        for i, (name, onnx_type) in enumerate(onnx_types.items()):
            own = _onnx_binding_type(onnx_type, g)
            wanted = formats[0 if len(formats) == 1 else i][0] if formats else own
            if (wanted in _FLOAT_IO) != (own in _FLOAT_IO):
                return {}, f"Cannot set {side} tensor {name} of type {own} to {wanted} (trtexec double)"
            if b.strongly_typed and wanted != own:
                return {}, (f"{side.capitalize()} tensor {name} is {own} in a strongly typed network; its I/O "
                            f"format cannot make it {wanted} (trtexec double)")
            chosen[name] = wanted
        types[f"{side}s"] = chosen
    return types, None


def _wild(pattern: str, name: str) -> bool:  # matchStringWithOneWildcard
    if "*" not in pattern:
        return pattern == name
    pre, _, post = pattern.partition("*")
    return len(name) >= len(pre) + len(post) and name.startswith(pre) and name.endswith(post)


_BUILD_FAIL = ("Network And Config setup failed", "Building engine failed",
               "Failed to create engine from model or file.", "Engine set up failed")
_ENGINE_FAIL = ("Engine could not be created from network",) + _BUILD_FAIL[1:]


def setup_profiles(b: Build, inputs: dict, log: Log) -> tuple[list, list]:
    """setupNetworkAndConfig's shape handling -> (profiles, error lines)."""
    for prof in b.profiles:
        for n in prof:
            if not any(_wild(n, i) for i in inputs):
                return [], [f'Cannot find input tensor with name "{n}" in the network inputs! Please make sure '
                            "the input tensor names are correct.", *_BUILD_FAIL]
    dynamic = {n: d for n, d in inputs.items() if any(x < 0 for x in d)}
    if not dynamic:
        if any(b.profiles):
            return [], ["Static model does not take explicit shapes since the shape of inference tensors will "
                        "be determined by the model itself", *_BUILD_FAIL]
        return [], []
    result = []
    for i, prof in enumerate(b.profiles):
        out = {}
        for n, dims in dynamic.items():
            key = next((k for k in prof if _wild(k, n)), None)
            if key is None:
                fixed = [x if x > 0 else 1 for x in dims]
                log.w(f"Dynamic dimensions required for input: {n}, but no shapes were provided. "
                      f"Automatically overriding shape to: {_dims(fixed)}")
                rng = {"min": fixed, "opt": fixed, "max": fixed}
            else:
                rng = prof[key]
            for s in ("min", "opt", "max"):
                d = rng[s] or []
                if len(d) != len(dims) or any(m > 0 and m != x for m, x in zip(dims, d)):
                    return [], [f"Error[3]: IOptimizationProfile::setDimensions: Error Code 3: API Usage Error "
                                f"({n}: k{s.upper()} dimensions {_dims(d)} do not match network input "
                                f"dimensions {_dims(dims)}.)", f"Error in set dimensions to profile {s.upper()}",
                                *_BUILD_FAIL]
            log.i(f"Set shape of input tensor {n} for optimization profile {i} to: MIN={_dims(rng['min'])} "
                  f"OPT={_dims(rng['opt'])} MAX={_dims(rng['max'])}")
            out[n] = {s: list(rng[s]) for s in ("min", "opt", "max")}
        result.append(out)
    for out in result:
        for r in out.values():
            if not all(a <= o <= m for a, o, m in zip(r["min"], r["opt"], r["max"])):
                return [], ["Error[4]: Specified optimization profiles must satisfy MIN<=OPT<=MAX.",
                            "Required optimization profile is invalid", *_BUILD_FAIL]
    return result, []


_CALIB_HEADER = re.compile(r"TRT-(\d+)-(EntropyCalibration2|EntropyCalibration|MinMaxCalibration|"
                           r"LegacyCalibration)")
_CALIB_LINE = re.compile(r"(.+): ([0-9a-f]{8})")


def check_calibration_cache(path: str) -> tuple[str | None, str | None, set]:
    """-> (algorithm, error, tensor names).  Format: header line, then 'tensor: hhhhhhhh' lines."""
    lines = Path(path).read_text(errors="replace").splitlines()
    head = _CALIB_HEADER.fullmatch(lines[0]) if lines else None
    if not head:
        return None, "line 1: expected header TRT-<version>-EntropyCalibration2|MinMaxCalibration", set()
    tensors = set()
    for no, line in enumerate(lines[1:], 2):
        entry = _CALIB_LINE.fullmatch(line)
        if line and not entry:
            return None, f"line {no}: expected '<tensor>: <8 lowercase hex digits>', got {line!r}", set()
        if entry:
            tensors.add(entry[1])
    return head[2], None, tensors


def missing_scales(model: dict, scaled: set, log: Log) -> tuple[list, list]:
    """The builder's implicit-INT8 rule (NVIDIA/TensorRT issues 3131, 4058): an activation with
    no scale in the cache is warned about, and every layer consuming or producing it runs above
    INT8.  -> (tensors without a scale, layers above INT8), in graph order."""
    missing = [t for t in model["activations"] if t not in scaled]
    for tensor in missing:
        log.w(f"Missing scale and zero-point for tensor {tensor}, expect fall back to non-int8 implementation "
              "for any layer consuming or producing given tensor", trt=True)
    unscaled = set(missing)
    above = [name for name, inputs, outputs in model["io"] if unscaled & {*inputs, *outputs}]
    return missing, above


# ------------------------------------------------------------------------------- timing cache
class _Locked:
    """fcntl.lockf on '<file>.lock', as NVIDIA's FileLock does on POSIX."""

    def __init__(self, path: str):
        self.lock = path + ".lock"

    def __enter__(self):
        self.fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.lockf(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def decode_timing_cache(data: bytes) -> dict | None:
    head, _, body = data.partition(b"\n")
    if head.decode(errors="replace") != TIMING_CACHE_MAGIC:
        return None
    try:
        entries = json.loads(body)["entries"]
        return entries if isinstance(entries, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def timing_cache_load(path: str, log: Log, trt: bool) -> None:
    try:
        with _Locked(path):
            data = Path(path).read_bytes()
    except OSError:
        log.w(f"Could not read timing cache from: {path}. A new timing cache will be generated and written.",
              trt=trt)
        return
    log.i(f"Loaded {len(data)} bytes of timing cache from {path}", trt=trt)
    if decode_timing_cache(data) is None:
        log.w("Detected invalid timing cache, setup a local cache instead", trt=True)


def timing_cache_update(path: str, key: str, entry: dict, log: Log, trt: bool) -> None:
    """updateTimingCacheFile: under the lock, re-read, merge our entry, write back."""
    try:
        with _Locked(path):
            entries = {}
            if os.path.isfile(path):
                data = Path(path).read_bytes()
                log.i(f"Loaded {len(data)} bytes of timing cache from {path}", trt=trt)
                entries = decode_timing_cache(data) or {}  # corrupt: start fresh (double's choice)
            entries[key] = entry
            blob = (TIMING_CACHE_MAGIC + "\n" + json.dumps({"entries": entries}, sort_keys=True, indent=1)
                    + "\n").encode()
            tmp = f"{path}.tmp.{os.getpid()}"
            Path(tmp).write_bytes(blob)
            os.replace(tmp, path)
    except OSError:
        log.w(f"Could not write timing cache to: {path}", trt=trt)
        return
    log.i(f"Saved {len(blob)} bytes of timing cache to {path}", trt=trt)


# ------------------------------------------------------------------------------------ engine
def read_engine(path) -> dict:
    """Decode an engine written by the double (raises ValueError otherwise)."""
    data = Path(path).read_bytes()
    if not data.startswith(ENGINE_MAGIC):
        raise ValueError(f"{path} is not a trtexec-double engine")
    return json.loads(data[len(ENGINE_MAGIC):])


def _crash() -> None:
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files in test dirs
    except (ImportError, ValueError, OSError):
        pass
    signal.signal(signal.SIGSEGV, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(5)


def write_engine(path: str | None, blob: bytes, seconds: float, fault: str | None) -> None:
    """Emulate the build: stream the plan into the file in chunks over `seconds`."""
    if fault == "empty_engine":
        blob = b""
    elif fault == "tiny_engine":
        blob = blob[:16]
    n = 20 if (seconds > 0 or fault == "crash") else 1
    step = max(1, -(-len(blob) // n))
    f = open(path, "wb") if path is not None and fault != "no_engine" else None
    try:
        for i in range(n):
            if fault == "crash" and i == n // 2:
                _crash()
            if f:
                f.write(blob[i * step:(i + 1) * step])
                f.flush()
            if seconds > 0:
                time.sleep(seconds / n)
    finally:
        if f:
            f.close()


# --------------------------------------------------------------------------------- reporting
def _precision_text(b: Build) -> str:
    if b.strongly_typed:
        return "Strongly Typed"
    text = "FP32" + "".join("+" + p.upper() for p in ("fp16", "bf16", "int8", "fp8", "int4") if p in b.precision)
    return text + ("" if b.constraints == "none" else f" ({b.constraints} precision constraints)")


def print_options(b: Build, g: Grammar, log: Log) -> None:
    """A subset of the real option dump (key lines only, real wording)."""
    old = g.name in ("8.2", "8.5", "8.6")
    log.i("=== Model Options ===")
    log.i("Format: " + ("*" if b.load else "ONNX"))
    log.i(f"Model: {b.onnx or ''}")
    log.i("Output:")
    if b.load:
        log.i()
    else:
        log.i("=== Build Options ===")
        ws = b.pools.get("workspace")
        if g.name == "8.2":
            log.i("Max batch: explicit batch")
            log.i(f"Workspace: {ws >> 20} MiB")
        else:
            pool = "default" if ws is None else f"{_cfmt(ws / (1 << 20))} MiB"
            log.i(f"Memory Pools: workspace: {pool}, dlaSRAM: default, dlaLocalDRAM: default, dlaGlobalDRAM: "
                  f"default" + ("" if old else ", tacticSharedMem: default"))
        log.i(f"Precision: {_precision_text(b)}")
        if g.name != "8.2":
            log.i("LayerPrecisions: " + ",".join(f"{k}:{v}" for k, v in b.layer_precisions.items()))
        calib = "Dynamic" if "int8" in b.precision and not b.calib else (b.calib or "")
        log.i(f"Calibration: {calib}")
        if g.name not in ("8.2", "8.5"):
            log.i(f"Version Compatible: {'Enabled' if b.version_compatible else 'Disabled'}")
            log.i(f"Skip inference: {'Enabled' if b.skip_inference else 'Disabled'}")
        log.i(f"Save engine: {b.save or ''}")
        log.i("Load engine: ")
        mode = "disable" if b.no_builder_cache else "global" if b.timing_cache else "local"
        log.i(f"timingCacheMode: {mode}")
        log.i(f"timingCacheFile: {b.timing_cache or ''}")
        if g.name not in ("8.2", "8.5"):
            log.i(f"BuilderOptimizationLevel: {3 if b.opt_level is None else b.opt_level}")
        for side, formats in (("Input", b.input_formats), ("Output", b.output_formats)):
            shown = ", ".join(f"{t}:{'+'.join(f.upper() for f in fs)}" for t, fs in formats) or "fp32:CHW"
            log.i(f"{side}(s)s format: {shown}")
        if not any(b.profiles):
            log.i("Input build shapes: model")
        for i, prof in enumerate(b.profiles):
            for n, r in prof.items():
                tag = "" if old else f" (profile {i})"
                log.i(f"Input build shape{tag}: {n}=" + "+".join(_dims(r[s]) for s in ("min", "opt", "max")))
    log.i("=== System Options ===")
    log.i(f"Device: {b.device}")
    log.i(f"DLACore: {'' if b.dla is None else b.dla}")
    log.i("Plugins:" + "".join(" " + p for p in b.plugins))
    log.i("=== Inference Options ===")
    log.i("Batch: Explicit")
    for n, d in b.inference_shapes.items():
        log.i(f"Input inference shape{'' if old else ' '}: {n}={_dims(d)}")
    log.i("Iterations: 10")
    log.i("=== Reporting Options ===")
    log.i(f"Verbose: {'Enabled' if log.verbose else 'Disabled'}")
    pct = ",".join(_cfmt(p) for p in b.percentiles)
    log.i(f"Percentile: {pct}" if g.name == "8.2" else f"Percentiles: {pct}")
    log.i()


def print_device(g: Grammar, log: Log, device: int) -> bool:
    """sampleDevice.cpp setCudaDevice() output for a fake RTX 3090 (older layout for 8.x)."""
    log.i("=== Device Information ===")
    if g.name in ("10", "11"):
        log.i("Available Devices: ")
        log.i(f"  Device 0: \"{GPU['name']}\" UUID: {GPU['uuid']}")
        if device != 0:
            log.i(f"Cannot find device ID {device}!")
            return False
    elif device != 0:
        sys.stderr.write("Cuda failure: invalid device ordinal\n")
        return False
    log.i(f"Selected Device: {GPU['name']}")
    if g.name in ("10", "11"):
        log.i("Selected Device ID: 0")
        log.i(f"Selected Device UUID: {GPU['uuid']}")
    log.i(f"Compute Capability: {GPU['cc']}")
    log.i(f"SMs: {GPU['sms']}")
    if g.name in ("8.2", "8.5", "8.6"):
        log.i("Compute Clock Rate: 1.695 GHz")
    log.i(f"Device Global Memory: {GPU['mem_mib']} MiB")
    log.i("Shared Memory per SM: 100 KiB")
    log.i("Memory Bus Width: 384 bits (ECC disabled)")
    if g.name in ("8.2", "8.5", "8.6"):
        log.i("Memory Clock Rate: 9.751 GHz")
    else:
        log.i("Application Compute Clock Rate: 1.695 GHz")
        log.i("Application Memory Clock Rate: 9.751 GHz")
        log.i()
        log.i("Note: The application clock rates do not reflect the actual clock rates that the GPU is "
              "currently running at.")
    return True


def print_inference(b: Build, seed: str, log: Log) -> None:
    rng = random.Random(int(seed[:8], 16))
    gpu = 0.4 + rng.random()
    log.i("Starting inference")
    log.i("Warmup completed 250 queries over 200 ms")
    log.i(f"Timing trace has {int(3000 / gpu)} queries over 3.00123 s")
    log.i()
    log.i("=== Trace details ===")
    log.i("Trace averages of 10 runs:")
    log.i(f"Average on 10 runs - GPU latency: {gpu:.6g} ms - Host latency: {gpu + 0.05:.6g} ms "
          f"(enqueue {gpu / 3:.6g} ms)")
    log.i()
    log.i("=== Performance summary ===")
    log.i(f"Throughput: {1000 / gpu:.6g} qps")
    for label, base in (("Latency", gpu + 0.05), ("Enqueue Time", gpu / 3), ("H2D Latency", 0.02),
                        ("GPU Compute Time", gpu), ("D2H Latency", 0.01)):
        stats = [base * 0.9, base * 1.6, base, base * 0.99]
        text = ", ".join(f"{k} = {v:.6g} ms" for k, v in zip(("min", "max", "mean", "median"), stats))
        pcts = "".join(f", percentile({_cfmt(p)}%) = {base * (1 + p / 250):.6g} ms" for p in b.percentiles)
        log.i(f"{label}: {text}{pcts}")
    log.i("Total Host Walltime: 3.00123 s")
    log.i(f"Total GPU Compute Time: {3.0 * gpu / (gpu + 0.05):.6g} s")
    log.i("Explanations of the performance metrics are printed in the verbose logs.")
    log.i()


def print_help(g: Grammar) -> None:
    """Not NVIDIA's text: a listing of this generation's options, to stdout like the real help."""
    _out(f"=== trtexec double: TensorRT {g.name} grammar; options are --name=value or bare --flag ===")
    for name, kind in sorted(g.options.items()):
        _out(f"  {name}" + ("" if kind == "flag" else "=<value>") + ("  (repeatable)" if kind == "repeat" else ""))
    _out("=== Help ===\n  --help, -h                  Print this message")


# -------------------------------------------------------------------------------------- main
def apply_layer_precisions(b: Build, nodes: list, log: Log) -> dict:
    """setLayerPrecisions: exact name first, then a one-'*' pattern; unknown names are ignored."""
    applied = {}
    for node in nodes if b.constraints != "none" else []:
        match = b.layer_precisions.get(node) or next((v for k, v in b.layer_precisions.items() if _wild(k, node)),
                                                     None)
        if match:
            log.i(f"Set layer {node} to precision {match}")
            applied[node] = match
    return applied


def engine_description(b: Build, g: Grammar, ver: str, model: dict, profiles: list, calib: dict | None,
                       applied: dict, io_types: dict) -> dict:
    return {"format": "trtforge-double-engine/1", "trt_version": ver, "grammar": g.name,
            "device": {"name": GPU["name"], "compute_capability": GPU["cc"]},
            "onnx_sha256": model["sha256"], "inputs": model["inputs"], "io_types": io_types,
            "precision": sorted(b.precision), "tf32": b.tf32, "strongly_typed": b.strongly_typed,
            "precision_constraints": b.constraints, "layer_precisions": applied,
            "workspace_bytes": b.pools.get("workspace"), "mem_pools_bytes": b.pools, "profiles": profiles,
            "calibration": calib, "plugins": b.plugins, "builder_optimization_level": b.opt_level,
            "hardware_compatibility_level": b.hw_compat, "version_compatible": b.version_compatible,
            "sparsity": b.sparsity, "timing_cache": None if b.no_builder_cache else b.timing_cache}


# -------------------------------------------------------------------------------------- main
@dataclass
class Session:
    """One invocation: emulated grammar/version, banner tag, injected fault, logger."""
    g: Grammar
    ver: str
    tag: str
    fault: str | None
    seconds: float
    log: Log = field(default_factory=Log)

    @property
    def trt(self) -> bool:  # 10.x routes timing-cache messages through the TRT logger
        return self.g.name in ("10", "11")

    def fail(self, *errors: str) -> int:
        for e in errors:
            self.log.e(e)
        _out(f"&&&& FAILED {self.tag}")
        return 1

    def passed(self) -> int:
        _out(f"&&&& PASSED {self.tag}")
        return 0

    def parse(self, argv: list[str]) -> Build | int:
        """main(): help check, option parsing, unknown-option report.  int = exit code."""
        args = split_args(argv)
        if any(name in ("--help", "-h") for name, _, _ in args):  # parseHelp() runs first
            print_help(self.g)
            return 0
        if not args:
            print_help(self.g)
            return self.passed()
        try:
            opts = collect(args, self.g)
            self.log.verbose = opts.has("--verbose")
            b = interpret(opts, self.g, self.log)
            errors = [f"Unknown option: {n} {v}" for n, v in opts.unknown]
        except ParseError as e:
            errors = [str(e)]
        if not errors:
            return b
        if self.trt:  # 10.x prints the help before the errors, 8.x after them
            print_help(self.g)
        for e in errors:
            self.log.e(e)
        if not self.trt:
            print_help(self.g)
        return self.fail()

    def preamble(self, b: Build) -> int | None:
        log = self.log
        print_options(b, self.g, log)
        if not print_device(self.g, log, b.device):
            return 1  # exit(EXIT_FAILURE) without a FAILED line, as setCudaDevice() does
        log.i()
        log.i(f"TensorRT version: {self.ver}")
        if self.trt:
            log.i("Loading standard plugins")
        for p in b.plugins:
            log.i(f"Loading supplied plugin library: {p}")
            if not os.path.isfile(p):
                return self.fail(f"Unable to open library: {p} due to {p}: cannot open shared object file: "
                                 "No such file or directory")
        log.i("[MemUsageChange] Init CUDA: CPU +2, GPU +0, now: CPU 18, GPU 1032 (MiB)", trt=True)
        log.v("Registered plugin creator - ::BatchedNMS_TRT version 1", trt=True)
        return None

    def parse_model(self, b: Build) -> dict | None:
        log, t0 = self.log, time.monotonic()
        log.i("Start parsing network model.")
        model = load_onnx(b.onnx, log)
        if model is None:
            log.e("Failed to parse onnx file")
        else:
            bar = "-" * 64
            for line in (bar, f"Input filename:   {b.onnx}", f"ONNX IR version:  0.0.{model['ir']}",
                         f"Opset version:    {model['opset']}", f"Producer name:    {model['producer'][0]}",
                         f"Producer version: {model['producer'][1]}", "Domain:           ",
                         "Model version:    0", "Doc string:       ", bar):
                log.i(line, trt=True)
        tail = "" if self.g.name == "8.2" and model else f" Parse time: {time.monotonic() - t0:.6g}"
        log.i("Finished parsing network model." + tail)
        return model

    def calibration(self, b: Build) -> tuple[dict | None, str | None]:
        if "int8" not in b.precision:
            return None, None
        if not b.calib:
            return {"file": None, "source": "dynamic_range"}, None
        if not os.path.isfile(b.calib):  # trtexec then calibrates with random data
            return {"file": b.calib, "source": "random"}, None
        algo, problem, tensors = check_calibration_cache(b.calib)
        if problem:  # the double's choice of message; TensorRT's own was not verified
            return None, f"Error[1]: Calibration cache {b.calib} is malformed: {problem}"
        return {"file": b.calib, "source": "cache", "algorithm": algo, "tensors": sorted(tensors),
                "sha256": hashlib.sha256(Path(b.calib).read_bytes()).hexdigest()}, None

    def build(self, b: Build) -> int:
        log = self.log
        if b.onnx is None:
            return self.fail("trtexec double: only ONNX models are emulated (no UFF/Caffe)")
        model = self.parse_model(b)
        if model is None:
            return self.fail("Parsing model failed", "Failed to create engine from model or file.",
                             "Engine set up failed")
        if self.fault == "build_error":
            node = model["nodes"][0] if model["nodes"] else "node"
            return self.fail("Error[10]: IBuilder::buildSerializedNetwork: Error Code 10: Internal Error "
                             f"(Could not find any implementation for node {node}.)", *_ENGINE_FAIL)
        profiles, errors = setup_profiles(b, model["inputs"], log)
        if errors:
            return self.fail(*errors)
        io_types, problem = binding_types(b, self.g, model)
        if problem:
            return self.fail(problem, *_BUILD_FAIL)
        if b.dla is not None:  # the fake GPU has no DLA; --allowGPUFallback does not help (source)
            return self.fail(f"Cannot create DLA engine, {b.dla} not available", *_BUILD_FAIL)
        calib, problem = self.calibration(b)
        applied = apply_layer_precisions(b, model["nodes"], log)
        use_cache = bool(b.timing_cache) and not b.no_builder_cache
        if use_cache:
            timing_cache_load(b.timing_cache, log, self.trt)
        else:
            log.i("Local timing cache in use. Profiling results in this builder pass will not be stored.", trt=True)
        if problem:
            return self.fail(problem, *_ENGINE_FAIL)
        if calib and calib["source"] != "dynamic_range":
            log.i("Starting Calibration.", trt=True)
            log.i("Post Processing Calibration data in 0.0012 seconds.", trt=True)
        if calib and calib["source"] == "cache":
            calib["missing_scales"], calib["layers_above_int8"] = missing_scales(model, set(calib["tensors"]), log)
        log.i(f"Detected {len(model['inputs'])} inputs and {model['n_outputs']} output network tensors.", trt=True)
        log.v(f"Original: {len(model['nodes'])} layers", trt=True)
        desc = engine_description(b, self.g, self.ver, model, profiles, calib, applied, io_types)
        blob = ENGINE_MAGIC + json.dumps(desc, sort_keys=True, indent=1).encode() + b"\n"
        t1 = time.monotonic()
        try:
            write_engine(b.save, blob, self.seconds, self.fault)
        except OSError:
            return self.fail("Saving engine to file failed.", "Engine set up failed")
        size = 0 if self.fault == "empty_engine" else 16 if self.fault == "tiny_engine" else len(blob)
        if self.trt:
            log.i(f"Engine generation completed in {time.monotonic() - t1:.6g} seconds.", trt=True)
        if self.g.name != "8.2":
            log.i(f"Created engine with size: {_cfmt(size / (1 << 20))} MiB")
        log.i(f"Engine built in {time.monotonic() - t1:.6g} sec.")
        if use_cache:
            entry = {"onnx_sha256": model["sha256"], "precision": sorted(b.precision),
                     "strongly_typed": b.strongly_typed, "workspace_bytes": desc["workspace_bytes"],
                     "trt_version": self.ver, "device": GPU["name"]}
            key = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
            timing_cache_update(b.timing_cache, key, entry, log, self.trt)
        if b.skip_inference:
            log.i(f"Skipped inference phase since {'--buildOnly' if self.g.name == '8.2' else '--skipInference'}"
                  " is added.")
            return self.passed()
        log.i(f"Loaded engine size: {size >> 20} MiB", trt=True)
        log.i("Engine deserialized in 0.00123 sec.")
        print_inference(b, model["sha256"], log)
        return self.passed()

    def load(self, b: Build) -> int:
        if not os.path.isfile(b.load):
            return self.fail(f"Error opening engine file: {b.load}", "Failed to create engine from model or file.",
                             "Engine set up failed")
        self.log.i(f"Loaded engine size: {os.path.getsize(b.load) >> 20} MiB", trt=True)
        try:
            desc = read_engine(b.load)
            problem = None if desc.get("trt_version") == self.ver else (
                "Error[6]: The engine plan file is not compatible with this version of TensorRT, expecting library "
                f"version {self.ver} got {desc.get('trt_version')}, please rebuild.")
        except ValueError:
            desc, problem = None, ("Error[1]: IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                   "(Serialization assertion plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.)")
        if problem:  # with --skipInference real 10.x still ends PASSED (seen in the wild)
            self.log.e(problem)
            self.log.e("Engine deserialization failed")
            if not b.skip_inference:
                return self.fail("Inference set up failed")
        else:
            self.log.i("Engine deserialized in 0.00123 sec.")
        if b.skip_inference:
            self.log.i("Skipped inference phase since --skipInference is added.")
        else:
            print_inference(b, desc["onnx_sha256"], self.log)
        return self.passed()


def garbage(argv: list[str]) -> int:
    """Fault "garbage": random bytes on stdout and in the engine file, exit 0."""
    rng = random.Random()
    sys.stdout.buffer.write(rng.randbytes(4096))
    sys.stdout.flush()
    for name, value, _ in split_args(argv):
        if name == "--saveEngine" and value:
            Path(value).write_bytes(rng.randbytes(8192))
    return 0


def run(argv: list[str], env: dict) -> int:
    helping = any(name in ("--help", "-h") for name, _, _ in split_args(argv))
    try:
        version = (not helping and env.get("TRTEXEC_DOUBLE_BUILD_VERSION")) or env.get("TRTEXEC_DOUBLE_VERSION")
        vtuple, g = resolve_version(version or DEFAULT_VERSION)
        fault = env.get("TRTEXEC_DOUBLE_FAULT") or None
        if fault not in (None,) + FAULTS:
            raise ValueError(f"unknown TRTEXEC_DOUBLE_FAULT {fault!r}")
        seconds = float(env.get("TRTEXEC_DOUBLE_BUILD_SECONDS") or 0)
        GPU["name"], GPU["cc"] = host_gpu(env.get("DOUBLE_GPU"))
    except ValueError as e:
        sys.stderr.write(f"trtexec double: {e}\n")
        return 2
    if fault == "garbage" and not helping:
        return garbage(argv)
    build_no = env.get("TRTEXEC_DOUBLE_BUILD_NUMBER")
    cmdline = " ".join([env.get("TRTEXEC_DOUBLE_ARGV0") or "trtexec", *argv])
    tag = f"TensorRT.trtexec [TensorRT {banner_tag(vtuple)}]{f' [b{build_no}]' if build_no else ''} # {cmdline}"
    _out(f"&&&& RUNNING {tag}")
    if fault == "hang":
        while True:
            time.sleep(3600)
    session = Session(g, ".".join(map(str, vtuple)), tag, fault, seconds)
    b = session.parse(argv)
    if isinstance(b, int):
        return b
    code = session.preamble(b)
    if code is not None:
        return code
    return session.load(b) if b.load else session.build(b)


def make_wrapper(directory, version: str = DEFAULT_VERSION, fault: str | None = None,
                 build_seconds: float | None = None, build_number: int | None = None,
                 version_from: str | None = None, build_version: str | None = None, exec_double: bool = True) -> Path:
    """Write <directory>/trtexec: a shell script exec-ing this double with sys.executable
    (or, with `exec_double` False, running it as a child and passing on its exit code, as
    many site wrappers do: the double is then a grandchild of whoever started the wrapper).

    Every TRTEXEC_DOUBLE_* variable is set or unset explicitly, so nothing leaks from the caller.
    `version_from` names an environment variable that picks the version when set (`version`
    otherwise), as a container's or module system's wrapper picks its TensorRT: what the
    script runs then changes while its bytes do not. `build_version` sets
    TRTEXEC_DOUBLE_BUILD_VERSION.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = {"TRTEXEC_DOUBLE_VERSION": version, "TRTEXEC_DOUBLE_FAULT": fault,
                "TRTEXEC_DOUBLE_BUILD_SECONDS": None if build_seconds is None else repr(float(build_seconds)),
                "TRTEXEC_DOUBLE_BUILD_NUMBER": None if build_number is None else str(build_number),
                "TRTEXEC_DOUBLE_BUILD_VERSION": build_version}
    lines = ["#!/bin/sh", "# trtexec test double wrapper (generated by tests/doubles/trtexec.py)"]
    for k, v in settings.items():
        lines.append(f"export {k}={shlex.quote(v)}" if v is not None else f"unset {k}")
    if version_from:
        lines.append(f'export TRTEXEC_DOUBLE_VERSION="${{{version_from}:-{version}}}"')
    lines.append('export TRTEXEC_DOUBLE_ARGV0="$0"')
    if fault is None and version_from is None:
        lines.extend(_help_in_shell(version, build_number))
    run_double = f'{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} "$@"'
    lines.extend([f"exec {run_double}"] if exec_double else [run_double, "exit $?"])
    path = directory / "trtexec"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def _help_in_shell(version: str, build_number: int | None) -> list[str]:
    """Wrapper lines that answer a lone `--help` in sh, with what the double would print.

    trtforge asks a script trtexec for its version on every command that builds (its answer
    may change while its bytes do not), and starting Python for it costs about 0.05 s of CPU,
    a third of a no-op build (bench/noop.py). A real trtexec answers `--help` from native code,
    and as an ELF binary is not even started on a no-op: its answer is kept. So the double's
    wrapper answers as cheaply as a native program would; every other call runs the double."""
    import contextlib
    import io

    vtuple, grammar = resolve_version(version)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print_help(grammar)
    build = f" [b{build_number}]" if build_number is not None else ""
    banner = f"&&&& RUNNING TensorRT.trtexec [TensorRT {banner_tag(vtuple)}]{build} # $0 --help"
    return ['if [ "$#" -eq 1 ] && [ "$1" = --help ]; then',
            f'  printf "%s\\n" "{banner}"', f"  cat <<'HELP'\n{text.getvalue()}HELP", "  exit 0", "fi"]


def running_through(wrapper: Path) -> list[int]:
    """The pids of doubles started through `wrapper` and still alive.

    The wrapper execs the double, so neither its path nor its folder is on the command line
    (`pgrep -f <wrapper>` matches nothing, ever); the double's environment names it instead."""
    wanted = Path(wrapper).resolve()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text(errors="replace").split("\0")
                       if "=" in item)
            argv0 = env.get("TRTEXEC_DOUBLE_ARGV0")
            if argv0 and (Path(os.readlink(proc / "cwd")) / argv0).resolve() == wanted:
                pids.append(int(proc.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return pids


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # die on Ctrl-C / SIGPIPE like a C++ program,
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # not with a Python traceback
    sys.exit(run(sys.argv[1:], dict(os.environ)))
