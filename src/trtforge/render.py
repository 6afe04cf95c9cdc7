"""Intent -> trtexec argv, per TensorRT generation.

This is the one place that answers "how is FP16 rendered on TensorRT 11?". A recipe says
what to build; `check_intent` resolves it against a generation (refusing what that
generation cannot do, before any work) and `render_argv` writes the flags in that
generation's grammar. The facts behind the table are in ../shared/DESIGN.md, read from
NVIDIA's trtexec source:

- only `--name=value` parses; lists are comma separated; shapes are `name:1x3x640x640`;
- 11.x removed --fp16/--int8/--calib/--precisionConstraints/--layerPrecisions (unknown
  option, exit 1): precision comes from the ONNX (AutoCast / Q-DQ), built strongly typed;
- trtexec never creates a calibration cache: `--calib` only reads one (a missing file
  makes it calibrate on random data, silently), so the cache is always our own file;
- a Q/DQ ONNX builds with `--int8 --fp16` on 8.x and `--stronglyTyped` on 10.x;
- 8.4 and 8.5 (JetPack 5.0.2 and 5.1; sampleOptions.cpp at those releases) speak one
  grammar, "8.5": `--memPoolSize` (MiB) and `--precisionConstraints`/`--layerPrecisions`
  arrived in 8.4, but not `--builderOptimizationLevel`, `--versionCompatible`,
  `--hardwareCompatibilityLevel` or `--staticPlugins` (8.6); 8.5 adds only `--heuristic`
  and `--preview`, which trtforge does not emit;
- `--workspace=<MiB>` exists only up to 8.x; 8.4+ reads `--memPoolSize=workspace:<MiB>`;
  10.x+ reads a one-letter suffix (B/K/M/G) off the last character, so `4GiB` would mean
  4 bytes: this module never emits anything but an integer with one of those letters;
- 8.x takes one optimization profile; 10.x+ several, each after `--profile=<i>`;
- builder optimization level and version/hardware compatibility start at 8.6;
- `--stronglyTyped` starts at 10 (a no-op in 11, so it is not emitted there);
- plugins load with `--plugins` on 8.2; 8.6 deprecated it for `--staticPlugins`;
- `--precisionConstraints`/`--layerPrecisions` start at 8.4. On 8.2 an implicit INT8 layer
  runs above INT8 when a tensor it consumes or produces has no scale in the calibration
  cache (the builder warns "Missing scale and zero-point for tensor X, expect fall back to
  non-int8 implementation"; NVIDIA/TensorRT issues 3131, 4058), so keep_fp32 reads a cache
  without the kept layers' output scales there; FP16 has no such lever on 8.2.
- `--inputIOFormats`/`--outputIOFormats` take `type:format` entries, one per binding in order
  or a single one for all (broadcastIOFormats); `chw` is the linear layout of any rank. A
  strongly typed build takes its bindings' types from the ONNX, so `build.io: fp16` is
  carried by the typed ONNX there (its inputs and outputs are float16) and by these flags on
  builder-flag builds; an FP32 engine on 11.x, which has neither, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TrtforgeError
from .recipe import BuildOptions, PassSpec, ShapeRange
from .trt_version import TrtVersion


class RenderError(TrtforgeError):
    """The recipe asks for something the target TensorRT generation cannot build."""


@dataclass(frozen=True)
class Grammar:
    """What one generation of trtexec understands."""

    precision_flags: bool  # --fp16 / --int8 / --calib exist
    strongly_typed_flag: bool  # --stronglyTyped must be passed for Q/DQ or AutoCast ONNX
    layer_precisions: bool  # --precisionConstraints / --layerPrecisions exist
    several_profiles: bool
    workspace: str  # "workspace" (MiB int), "mempool_mib", "mempool_suffix"
    builder_options: bool  # --builderOptimizationLevel, --versionCompatible, --hardwareCompatibilityLevel
    plugins_flag: str


GRAMMARS = {
    "8.2": Grammar(True, False, False, False, "workspace", False, "--plugins"),
    "8.5": Grammar(True, False, True, False, "mempool_mib", False, "--plugins"),
    "8.6": Grammar(True, False, True, False, "mempool_mib", True, "--staticPlugins"),
    "10": Grammar(True, True, True, True, "mempool_suffix", True, "--staticPlugins"),
    "11": Grammar(False, False, False, True, "mempool_suffix", True, "--staticPlugins"),
}


KEEP_FP32_CACHE = "calib.keep-fp32.cache"  # 8.2 INT8: the cache without the kept layers' output scales


@dataclass(frozen=True)
class EngineIntent:
    """What one engine build asks of trtexec, with paths relative to its work folder."""

    precision: str  # fp32 | fp16 | int8
    mode: str  # implicit (builder flags) | explicit (precision carried by the ONNX)
    build: BuildOptions
    onnx: str = "model.onnx"
    engine: str = "engine.plan"
    timing_cache: str | None = "timing.cache"
    keep_fp32_layers: tuple[str, ...] = ()  # exact layer names (globs already expanded)
    plugin_files: tuple[str, ...] = ()
    io_types: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # ONNX element types of the inputs and
    # outputs, set when build.io: fp16 is rendered as --inputIOFormats/--outputIOFormats (io_route "flags")
    calibration_cache: str = "calib.cache"  # read by implicit INT8 only (KEEP_FP32_CACHE when it lacks kept scales)


def keep_fp32_route(precision: str, mode: str, generation: str) -> str:
    """How `build.keep_fp32` reaches TensorRT for one engine.

    "layer_precisions": --precisionConstraints=obey --layerPrecisions (8.6, 10.x builder flags);
    "calibration_cache": the kept layers' output tensors are left out of the calibration
    cache, which makes TensorRT run them above INT8 (8.2 INT8, which has no --layerPrecisions);
    "onnx": the AutoCast / Q-DQ ONNX carries it (the nodes were excluded when it was made);
    "fp32": nothing to do, the whole engine is FP32; "unsupported": FP16 builder flag on 8.2.
    """
    if precision == "fp32":
        return "fp32"
    if mode == "explicit":
        return "onnx"
    if GRAMMARS[generation].layer_precisions:
        return "layer_precisions"
    return "calibration_cache" if precision == "int8" else "unsupported"


def io_route(precision: str, mode: str, generation: str) -> str:
    """How `build.io: fp16` reaches TensorRT for one engine.

    "onnx": the typed ONNX (AutoCast / Q-DQ) has float16 inputs and outputs, which a strongly
    typed build must take as they are; "flags": --inputIOFormats/--outputIOFormats on a
    builder-flag build (8.x, 10.x); "unsupported": an FP32 engine on 11.x, built from the
    exported ONNX with no flag left to retype its bindings.
    """
    if mode == "explicit":
        return "onnx"
    return "flags" if GRAMMARS[generation].precision_flags else "unsupported"


def resolve_mode(precision: str, requested: str, generation: str) -> str:
    """Pick implicit (builder flags) or explicit (typed ONNX) for a precision, or refuse.

    auto: FP16 by builder flag where one exists (8.x, 10.x), AutoCast ONNX on 11.x; INT8
    from a calibration cache on 8.x, from a ModelOpt Q/DQ ONNX on 10.x (where implicit
    INT8 is deprecated) and 11.x (where it is gone).
    """
    if precision == "fp32":
        return "implicit"
    grammar = GRAMMARS[generation]
    if requested == "auto":
        if precision == "int8":
            return "implicit" if not grammar.strongly_typed_flag and grammar.precision_flags else "explicit"
        return "implicit" if grammar.precision_flags else "explicit"
    if requested == "implicit" and not grammar.precision_flags:
        raise RenderError(f"TensorRT {generation} removed --{precision}: set build.precision_mode "
                          "to auto or explicit (precision then comes from the ONNX)")
    if requested == "explicit" and precision == "fp16" and not (grammar.strongly_typed_flag or generation == "11"):
        raise RenderError(f"TensorRT {generation} cannot build an FP16-typed ONNX strongly typed "
                          "(needs 10.x or later); set build.precision_mode to auto or implicit")
    return requested


def check_intent(precision: str, build: BuildOptions, version: TrtVersion,
                 passes: tuple[PassSpec, ...] = (), reverted: bool = False) -> str:
    """Refuse, before any work, what `version` cannot build; return the resolved mode.

    `passes` are the recipe's surgery passes: some produce graphs only newer parsers take.
    `reverted`: the INT8 variant's accuracy control reverts nodes in its Q/DQ ONNX, which an
    implicit build (a calibration cache) never reads, so it would silently lose the reverts.
    """
    generation = version.generation
    grammar = GRAMMARS[generation]
    mode = resolve_mode(precision, build.precision_mode, generation)
    where = f"TensorRT {version}"
    if reverted and precision == "int8" and mode == "implicit":
        raise RenderError(f"{where} builds this INT8 variant from a calibration cache, not the Q/DQ ONNX in which "
                          "calibration.accuracy reverts nodes; set build.precision_mode: explicit")
    _check_passes(passes, version)
    if len(build.profiles) > 1 and not grammar.several_profiles:
        raise RenderError(f"{where} builds one optimization profile; build.profiles lists "
                          f"{len(build.profiles)} (keep one, or build with TensorRT 10+)")
    if build.keep_fp32 and keep_fp32_route(precision, mode, generation) == "unsupported":
        raise RenderError(f"{where} has no --layerPrecisions, so an FP16 engine cannot keep build.keep_fp32 "
                          "layers in FP32 (INT8 can); remove keep_fp32 from this variant or build with TensorRT 8.4+")
    if build.io == "fp16":
        _check_fp16_io(precision, mode, build, where, generation)
    if not grammar.builder_options:
        for field, value, default in (("optimization_level", build.optimization_level, None),
                                      ("version_compatible", build.version_compatible, False),
                                      ("hardware_compatibility", build.hardware_compatibility, "none")):
            if value != default:
                raise RenderError(f"{where} has no option for build.{field} (added in 8.6); remove it")
    return mode


def _check_fp16_io(precision: str, mode: str, build: BuildOptions, where: str, generation: str) -> None:
    owned = [arg for arg in build.extra_args if arg.startswith(("--inputIOFormats", "--outputIOFormats"))]
    if owned:
        raise RenderError(f"build.io: fp16 sets {owned[0].split('=')[0]}; remove it from build.extra_args")
    if io_route(precision, mode, generation) == "unsupported":
        raise RenderError(f"{where} takes an engine's input and output types from its ONNX, and an FP32 variant "
                          "builds the exported ONNX as it is; set build.io: fp32 on this variant (FP16 and INT8 "
                          "variants carry FP16 I/O in their typed ONNX)")


def _check_passes(passes: tuple[PassSpec, ...], version: TrtVersion) -> None:
    from .stages.nms import ONNX_NMS_MIN_TENSORRT

    onnx_nms = any(p.name == "nms" and dict(p.params).get("backend", "onnx") == "onnx" for p in passes)
    if onnx_nms and version < ONNX_NMS_MIN_TENSORRT:
        raise RenderError(f"TensorRT {version}'s ONNX parser has no native NonMaxSuppression (from "
                          f"{ONNX_NMS_MIN_TENSORRT.major}.{ONNX_NMS_MIN_TENSORRT.minor}); set the surgery "
                          "pass nms to backend: efficient_nms")


def render_argv(intent: EngineIntent, version: TrtVersion) -> list[str]:
    """trtexec arguments (without the executable) for `intent` in `version`'s grammar."""
    grammar = GRAMMARS[version.generation]
    build = intent.build
    argv = [f"--onnx={intent.onnx}", f"--saveEngine={intent.engine}"]
    argv += _precision_flags(intent, grammar)
    argv += _io_flags(intent.io_types)
    argv += _profile_flags(build.profiles, grammar)
    if build.workspace_bytes:
        argv.append(_workspace_flag(build.workspace_bytes, grammar))
    if build.optimization_level is not None:
        argv.append(f"--builderOptimizationLevel={build.optimization_level}")
    if build.version_compatible:
        argv.append("--versionCompatible")
    if build.hardware_compatibility != "none":
        argv.append(f"--hardwareCompatibilityLevel={build.hardware_compatibility}")
    if intent.timing_cache:
        argv.append(f"--timingCacheFile={intent.timing_cache}")
    if intent.plugin_files:
        argv.append(f"{grammar.plugins_flag}={','.join(intent.plugin_files)}")
    if build.dla_core is not None:
        argv += [f"--useDLACore={build.dla_core}", "--allowGPUFallback"]
    return argv + list(build.extra_args)


def _precision_flags(intent: EngineIntent, grammar: Grammar) -> list[str]:
    if intent.precision == "fp32":
        return []
    if intent.mode == "explicit":
        if grammar.strongly_typed_flag or not grammar.precision_flags:
            return ["--stronglyTyped"] if grammar.strongly_typed_flag else []
        return ["--int8", "--fp16"]  # 8.x: Q/DQ nodes decide INT8; FP16 allowed elsewhere
    flags = [f"--{intent.precision}"]
    if intent.precision == "int8":
        flags.append(f"--calib={intent.calibration_cache}")
    if intent.keep_fp32_layers:
        flags += ["--precisionConstraints=obey",
                  "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in intent.keep_fp32_layers)]
    return flags


# ONNX element type -> the trtexec I/O format of an FP16-I/O engine's binding: float tensors in
# half precision, integer ones (EfficientNMS's counts and classes) as they are, linear layout.
FP16_IO_FORMATS = {"FLOAT": "fp16:chw", "FLOAT16": "fp16:chw", "INT32": "int32:chw"}


def _io_flags(io_types: tuple[tuple[str, ...], tuple[str, ...]]) -> list[str]:
    flags = []
    for flag, side, types in (("--inputIOFormats", "input", io_types[0]), ("--outputIOFormats", "output", io_types[1])):
        if not types:
            continue
        unknown = [t for t in types if t not in FP16_IO_FORMATS]
        if unknown:
            raise RenderError(f"build.io: fp16 cannot name a trtexec format for an {side} of type "
                              f"{unknown[0].lower()} (it knows {', '.join(t.lower() for t in FP16_IO_FORMATS)}); "
                              "set build.io: fp32")
        formats = [FP16_IO_FORMATS[t] for t in types]
        flags.append(f"{flag}={formats[0] if len(set(formats)) == 1 else ','.join(formats)}")  # one broadcasts
    return flags


def _shape(name: str, dims: tuple[int, ...]) -> str:
    return f"{name}:{'x'.join(str(d) for d in dims)}"


def _profile_flags(profiles: tuple[tuple[tuple[str, ShapeRange], ...], ...], grammar: Grammar) -> list[str]:
    flags: list[str] = []
    for index, profile in enumerate(profiles):
        if grammar.several_profiles and len(profiles) > 1:
            flags.append(f"--profile={index}")
        for key in ("min", "opt", "max"):
            flags.append(f"--{key}Shapes=" + ",".join(_shape(n, getattr(r, key)) for n, r in profile))
    return flags


def _workspace_flag(size: int, grammar: Grammar) -> str:
    mib = size >> 20
    if grammar.workspace == "workspace":
        return f"--workspace={mib}"
    if grammar.workspace == "mempool_mib":
        return f"--memPoolSize=workspace:{mib}"
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size % (1 << shift) == 0:
            return f"--memPoolSize=workspace:{size >> shift}{suffix}"
    return f"--memPoolSize=workspace:{size}B"


def default_profiles(name: str, shape: tuple[int, ...], dynamic_axes: tuple[int, ...]):
    """The profiles used when a recipe gives none: batch 1 up to the export shape.

    Only a dynamic batch axis (0) gets a range; other dynamic axes stay at the export
    size. A fully static input gets no profile: trtexec refuses shapes for static inputs.
    """
    if not dynamic_axes:
        return ()
    low = tuple(1 if axis == 0 and axis in dynamic_axes else d for axis, d in enumerate(shape))
    return (((name, ShapeRange(low, shape, shape)),),)
