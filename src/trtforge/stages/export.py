"""export: the recipe's model -> ONNX.

Ultralytics and YOLOv5 models are exported the way their own exporters prepare them (fused,
heads in export mode so that each task emits the tensors its predictor decodes, C2f with the
split forward that gives a cleaner graph) but through plain `torch.onnx.export`, so that
opset, names and dynamic axes come from the recipe alone. Outputs are named output0,
output1, ... in the order the head returns them (Ultralytics' order).
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .. import checkpoints
from ..atomic import atomic_output, write_text_atomic
from ..console import StatusLine, info, warn
from ..errors import MissingDependencyError, StageError, require
from ..images import PRESETS, ULTRALYTICS
from ..modelmeta import PREPROCESS_KEY, metadata_from_props, props_of
from ..recipe import DEFAULT_PREPROCESS, OPSETS, InputSpec, ModelSource, jsonable

# Ultralytics tasks trtforge builds end to end, as Ultralytics names them (RT-DETR and the
# NMS-free YOLO26/YOLOv10 heads are 'detect' models).
SUPPORTED_TASKS = ("detect", "segment", "classify", "pose", "obb")
# Ultralytics' exporter clamps the end-to-end heads' top-k to this (its default max_det).
MAX_DETECTIONS = 300


def export_onnx(model: ModelSource, spec: InputSpec, opset: int, root: Path, output: Path,
                metadata_out: Path | None = None) -> None:
    """Write the recipe's model as ONNX to `output` (atomically), and what is known about
    it (task, class names, stride, keypoint shape, the sha256 of the weights file exported)
    as JSON to `metadata_out`, for release packaging and the accuracy gates."""
    metadata = {"source": model.source, "imgsz": list(spec.shape[2:]), "preprocess": jsonable(spec.preprocess)}
    started = time.monotonic()
    with StatusLine(f"export of {model.weights or model.arch or model.factory or model.path}") as status:
        if model.source == "onnx":
            status.update("checking the ONNX", "")
            metadata = {**metadata_from_props(_copy_checked_onnx(model.path, spec, root, output)), **metadata}
        else:
            with _one_torch_thread():
                status.update("building the network", "")
                if model.source == "ultralytics":
                    module, metadata["task"], weights = _ultralytics_module(model, spec, root)
                elif model.source == "yolov5":
                    (module, weights), metadata["task"] = _yolov5_module(model, root), "detect"
                else:
                    module, weights = _factory_module(model, root)
                if weights is not None:
                    metadata["weights_sha256"] = weights.sha256
                metadata.update(_model_metadata(module))
                status.update(f"tracing to ONNX opset {opset}", "")
                _export_module(module, spec, opset, output)
    info(f"exported {output.name} ({output.stat().st_size / 2**20:.1f} MiB) in {time.monotonic() - started:.1f} s")
    if metadata_out is not None:
        write_text_atomic(metadata_out, json.dumps(metadata, indent=1, sort_keys=True) + "\n")


@contextmanager
def _one_torch_thread():
    """Run torch on one intra-op thread while exporting, as Ultralytics' own exporter does
    (importing ultralytics first sets OMP_NUM_THREADS=1; here torch is loaded before it, so the
    setting would come too late). Tracing is Python-bound: between two small kernels the second
    OpenMP thread only spins and sleeps, which cost yolov8n's export about 0.3 s of CPU (issue
    15, bench/export.py) and no wall time; the exported bytes are the same either way."""
    torch = require("torch", "yolo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _model_metadata(module) -> dict:
    """Class names, stride, keypoint shape and end-to-end flag as Ultralytics and YOLOv5
    models carry them (empty for other modules); Ultralytics' exporter writes the same keys."""
    out = {}
    names = getattr(module, "names", None)
    if isinstance(names, (list, tuple)):  # YOLOv5 keeps a list
        names = dict(enumerate(names))
    if isinstance(names, dict):
        out["names"] = {int(k): str(v) for k, v in names.items()}
    stride = getattr(module, "stride", None)
    if hasattr(stride, "max"):  # Ultralytics keeps its strides in a tensor; a Conv2d's stride is a tuple
        out["stride"] = int(stride.max())
    head = _head(module)
    if getattr(head, "kpt_shape", None) is not None:  # pose: [keypoints, 2 or 3 values each]
        out["kpt_shape"] = [int(n) for n in head.kpt_shape]
    if head is not None and hasattr(head, "end2end"):
        out["end2end"] = bool(head.end2end)
    return out


def _head(module):
    """The last layer of an Ultralytics or YOLOv5 network (both keep their layers in `model`), else None."""
    torch = require("torch", "yolo")
    layers = getattr(module, "model", None)
    return layers[-1] if isinstance(layers, torch.nn.Sequential) else None


def _export_module(module, spec: InputSpec, opset: int, output: Path) -> None:
    torch = require("torch", "yolo")
    dummy = torch.zeros(spec.shape, dtype=torch.float32)
    with torch.no_grad():  # inference_mode would cache anchors that export cannot trace
        outputs = module(dummy)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    output_names = [f"output{i}" for i in range(count)]
    axes = {spec.name: {a: _axis_name(a) for a in spec.dynamic_axes}}
    if 0 in spec.dynamic_axes:
        axes.update({name: {0: "batch"} for name in output_names})
    with atomic_output(output) as temp:
        torch.onnx.export(module, dummy, str(temp), opset_version=opset, input_names=[spec.name],
                          output_names=output_names, dynamic_axes=axes, do_constant_folding=True,
                          dynamo=False)  # the TorchScript exporter: measured, and what TensorRT users run


def _axis_name(axis: int) -> str:
    return {0: "batch", 2: "height", 3: "width"}.get(axis, f"dim{axis}")


def _ultralytics_module(model: ModelSource, spec: InputSpec, root: Path):
    """The Ultralytics network in export mode, its task and the weights file it came from (None
    for a seeded architecture yaml)."""
    torch = require("torch", "yolo")
    require("ultralytics", "yolo")
    torch.manual_seed(model.seed)
    if model.weights is None:
        _warn_untrained(model)
        field, shown, weights = "model.arch", model.arch, None
        net, task = _ultralytics_arch_model(model.arch)
    else:
        field, shown = "model.weights", model.weights
        net, weights = _ultralytics_checkpoint_model(root / model.weights, model.weights)
        task = net.task
    if task not in SUPPORTED_TASKS:
        raise StageError(f"{field}: {shown} is an Ultralytics '{task}' model; trtforge builds "
                         f"{', '.join(SUPPORTED_TASKS)} models: give a model of a supported task")
    net = net.float().eval()
    head = _head(net)
    if getattr(head, "one2one_cv2", None) is not None:
        # The NMS-free head, as Ultralytics exports it with nms=False; set before fuse(), which
        # drops the branch not selected (ultralytics/nn/modules/head.py, Detect.fuse).
        net.end2end = True
    net = net.fuse(verbose=False) if hasattr(net, "fuse") else net
    _set_export_mode(net, spec.shape[2:])
    return net, task, weights


def _ultralytics_arch_model(arch: str):
    """The network Ultralytics builds from an architecture yaml, and its task."""
    import ultralytics

    # Ultralytics' own CLI picks the RT-DETR class by file name (ultralytics/cfg/__init__.py);
    # YOLO() cannot build an RT-DETR architecture yaml (no task for its decoder head).
    loader = ultralytics.RTDETR if "rtdetr" in Path(arch).stem.lower() else ultralytics.YOLO
    try:
        yolo = loader(arch)
    except Exception as exc:  # Ultralytics raises many types for a bad architecture
        raise StageError(f"model.arch: Ultralytics cannot load {arch}: {str(exc).splitlines()[0]}") from exc
    return yolo.model, yolo.task


def _ultralytics_checkpoint_model(path: Path, shown: Path):
    """The network in an Ultralytics checkpoint and the checked file, prepared as Ultralytics'
    loader prepares it (ultralytics/nn/tasks.py, load_checkpoint: EMA weights when present, FP32,
    QAT restored, task and stride defaults, `inplace` on), but unpickled once, weights-only, from
    the checked bytes: Ultralytics' own load (torch.load, weights_only=False) would run whatever
    the pickle names."""
    from ultralytics.nn.tasks import guess_model_task
    from ultralytics.utils import DEFAULT_CFG_DICT

    torch = require("torch", "yolo")
    weights = _check_checkpoint(path, shown, "Ultralytics", ("ultralytics.",))
    checkpoint = checkpoints.load_checkpoint(weights, shown, "Ultralytics")
    net = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, dict) else None
    if not isinstance(net, torch.nn.Module):
        raise StageError(f"model.weights: {shown} holds no Ultralytics network (no 'model' or 'ema' entry); "
                         "give the best.pt Ultralytics' trainer saved")
    net = net.float()
    if checkpoint.get("modelopt"):  # fake quantization travels beside a QAT network (torch_utils.qat_state)
        from ultralytics.utils.torch_utils import restore_qat

        restore_qat(net, checkpoint["modelopt"])
    train_args = checkpoint.get("train_args")
    net.args = {**DEFAULT_CFG_DICT, **(train_args if isinstance(train_args, dict) else {})}
    net.pt_path = str(path)
    if not hasattr(net, "task"):
        net.task = guess_model_task(net)
    if not hasattr(net, "stride"):
        net.stride = torch.tensor([32.0])
    net = net.eval()
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = True
        elif isinstance(m, torch.nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None  # what torch 1.11+ reads, absent from older pickles
    return net, weights


def _warn_untrained(model: ModelSource) -> None:
    warn(f"model.weights is not set: exporting an UNTRAINED {model.arch} (random weights, "
         f"seed {model.seed}); its outputs are meaningless for deployment. Set model.weights "
         "to your trained checkpoint.")


def _check_checkpoint(path: Path, shown: Path, maker: str, packages: tuple[str, ...]) -> checkpoints.TorchFile:
    """The checkpoint at `path`, read once and refused before anything unpickles it if it is no
    checkpoint of `maker` (its pickle names no class from `packages`), needs modules that are not
    installed, or uses a global the way no `maker` checkpoint does (checkpoints.check_globals).

    Ultralytics' loader would otherwise fail with a message about its own models, and for a
    pickle naming a module that is not installed it runs `pip install <module>` mid-build.
    """
    import importlib.util
    import sys

    if path.suffix != ".pt":  # Ultralytics and YOLOv5 load checkpoints only from .pt; other suffixes mean other formats
        raise StageError(f"model.weights: {shown} is not a .pt file; {maker} reads checkpoints from .pt "
                         "files only (an ONNX model goes in model.path with model.source: onnx)")
    weights = checkpoints.read_torch_file(path, shown)
    names = weights.names()
    if not any(n.startswith(packages) for n in names):
        found = f"it names {', '.join(names[:3])}" if names else "it holds only tensors and plain values"
        article = "an" if maker[0] in "AEIOU" else "a"
        raise StageError(f"model.weights: {shown} is a PyTorch file but not {article} {maker} checkpoint "
                         f"({found}); give a checkpoint {maker} saved (its best.pt), or load a state "
                         "dict with model.source: torch and model.factory")
    # Only the network's own packages are worth installing: any other module is refused below.
    missing = sorted(m for m in {n.split(".")[0] for n in names if checkpoints.in_network_family(n, maker)}
                     if m not in sys.modules and importlib.util.find_spec(m) is None)
    if missing:
        raise StageError(f"model.weights: {shown} needs the Python module(s) {', '.join(missing)}, which are "
                         "not installed here; install them and rerun")
    checkpoints.check_globals(weights, shown, maker)
    return weights


def _set_export_mode(net, imgsz: tuple[int, ...]) -> None:
    """Put every head in export mode with the attributes Ultralytics' exporter sets
    (ultralytics/engine/exporter.py, Exporter.__call__, for format onnx without embedded NMS)."""
    from ultralytics.nn.modules import C2f, Detect, RTDETRDecoder
    from ultralytics.nn.modules.head import Classify

    for m in net.modules():
        if isinstance(m, Classify):
            m.export, m.format = True, "onnx"  # softmax probabilities, alone
        elif isinstance(m, (Detect, RTDETRDecoder)):  # Segment, Pose, OBB and the end-to-end heads are Detects
            m.export, m.format = True, "onnx"
            m.dynamic = False  # anchors are fixed by the export size; batch stays dynamic
            m.max_det = min(MAX_DETECTIONS, _candidates(m, net.stride, imgsz))
            m.xyxy = False  # xywh like Ultralytics' raw outputs; the end-to-end head gives xyxy regardless
            m.shape = None  # anchors are recomputed for this input size
        elif isinstance(m, C2f):
            m.forward = m.forward_split


def _candidates(head, strides, imgsz: tuple[int, ...]) -> int:
    """How many detections a head can rank: RT-DETR's queries, or a YOLO head's anchor points.
    Ultralytics clamps max_det to it, which TensorRT's TopK needs at small input sizes."""
    if hasattr(head, "num_queries"):
        return int(head.num_queries)
    height, width = imgsz
    return sum((height // int(s)) * (width // int(s)) for s in strides.tolist())


def _yolov5_module(model: ModelSource, root: Path):
    """The anchor-based YOLOv5 network (the `yolov5` package) with its Detect head in export
    mode, which decodes in the graph to one `[B, anchors, 5 + classes]` tensor, as the
    package's own export.py prepares it (inplace off, dynamic grid off, export on)."""
    import importlib
    import logging
    import warnings

    torch = require("torch", "yolov5")
    try:
        with warnings.catch_warnings():  # its pkg_resources deprecation notice: setuptools<81 is pinned for it
            warnings.simplefilter("ignore", UserWarning)
            # Importing it also puts the package folder on sys.path, where the `models.yolo` named by
            # checkpoints of the original ultralytics/yolov5 repository resolves (yolov5/models/yolo.py).
            yolo = importlib.import_module("yolov5.models.yolo")
    except ImportError as exc:  # the package, or pandas, seaborn, pkg_resources (setuptools<81) it imports
        raise MissingDependencyError(exc.name or "yolov5", "yolov5") from exc
    logging.getLogger("yolov5").setLevel(logging.WARNING)  # not its 30-line layer table on every export
    torch.manual_seed(model.seed)
    if model.weights is None:
        _warn_untrained(model)
        net, weights = yolo.Model(str(_yolov5_arch(model.arch, root))), None
    else:
        net, weights = _yolov5_checkpoint_model(root / model.weights, model.weights)
    net = net.float().eval().fuse()
    head = net.model[-1]
    head.inplace, head.dynamic, head.export = False, False, True
    return net, weights


def _yolov5_arch(arch: str, root: Path) -> Path:
    """The YOLOv5 architecture yaml: a project file, or one bundled with the package (yolov5s.yaml)."""
    import yolov5

    bundled = Path(yolov5.__file__).parent / "models"
    for candidate in (root / arch, bundled / arch):
        if candidate.is_file():
            return candidate
    raise StageError(f"model.arch: '{arch}' is neither a file in the project nor a YOLOv5 architecture the "
                     f"yolov5 package bundles ({', '.join(sorted(p.name for p in bundled.glob('yolov5*.yaml')))})")


def _yolov5_checkpoint_model(path: Path, shown: Path):
    """The network inside a YOLOv5 training checkpoint (its EMA weights when present, as
    YOLOv5's attempt_load takes them) and the checked file, unpickled once, weights-only, from
    the checked bytes."""
    torch = require("torch", "yolov5")
    weights = _check_checkpoint(path, shown, "YOLOv5", ("models.", "yolov5."))
    checkpoint = checkpoints.load_checkpoint(weights, shown, "YOLOv5")
    net = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, dict) else None
    if not isinstance(net, torch.nn.Module):
        raise StageError(f"model.weights: {shown} holds no YOLOv5 network (no 'model' or 'ema' entry); "
                         "give the best.pt YOLOv5's train.py saved")
    return net, weights


def _factory_module(model: ModelSource, root: Path):
    """A torch module from `package.module:function`, optionally loading a state dict (weights-only,
    from the bytes read once), and the weights file (None without one)."""
    import importlib
    import io
    import sys

    torch = require("torch", "yolo")
    module_name, func_name = model.factory.split(":")
    sys.path.insert(0, str(root))  # let recipes name modules that live in the project
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise StageError(f"model.factory: cannot import '{model.factory}': {exc}") from exc
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(model.seed)
    net, weights = factory(), None
    if model.weights is None:
        warn(f"model.weights is not set: exporting what {model.factory}() builds, which is UNTRAINED unless the "
             "factory loads weights itself (torchvision's builders do not by default); its accuracy gates then "
             "measure nothing trained: set model.weights to your state dict")
    if model.weights is not None:
        weights = checkpoints.read_torch_file(root / model.weights, model.weights)
        try:
            net.load_state_dict(torch.load(io.BytesIO(weights.data), map_location="cpu", weights_only=True))
        except Exception as exc:
            raise StageError(f"model.weights: cannot load '{model.weights}' as a state dict: "
                             f"{str(exc).splitlines()[0]}") from exc
    return net.float().eval(), weights


def _check_preprocess(props: dict[str, str], spec: InputSpec, shown: Path, warn_unstated: bool = True) -> None:
    """An ONNX source that says how it is fed must be fed so; one that says nothing and is no
    Ultralytics export gets a warning (at export, not from plan or doctor) when the recipe feeds
    it Ultralytics' letterbox by default, since calibration on wrongly normalised inputs is
    silent (FP32 sees them too)."""
    stated = metadata_from_props(props).get("preprocess")
    ours = jsonable(spec.preprocess)
    if stated is not None and stated != ours:
        differ = ", ".join(f"{key} {stated.get(key)!r}, not {ours[key]!r}" for key in ours
                           if stated.get(key) != ours[key])
        raise StageError(f"input.preprocess: {shown} was made to be fed with {differ} (its {PREPROCESS_KEY} "
                         f"metadata); set `input.preprocess: {preprocess_setting(stated)}` in the recipe, or "
                         "calibration and checks feed it wrongly")
    ultralytics = "stride" in props or props.get("author", "").startswith("Ultralytics")
    if warn_unstated and stated is None and not ultralytics and spec.preprocess == ULTRALYTICS:
        warn(f"input.preprocess: {shown} does not say how it is fed and is no Ultralytics export; calibration and "
             "checks feed it Ultralytics' letterbox, RGB, /255: if it was trained otherwise (ImageNet mean and "
             "std, BGR, a centre crop), set input.preprocess")


def preprocess_setting(stated: dict) -> str:
    """The `input.preprocess` value (YAML flow form) that feeds a model as `stated` (JSON of a
    Preprocess) says: a preset's name when one matches, else the closest preset with the fields
    that differ from it, so the refusal names a value to paste rather than a list to rework."""
    def differing(preset) -> dict:
        fields = jsonable(preset)
        return {key: value for key, value in stated.items() if key in fields and fields[key] != value}

    name = min(PRESETS, key=lambda n: (len(differing(PRESETS[n])), n != DEFAULT_PREPROCESS["onnx"]))
    fields = differing(PRESETS[name])
    if not fields:
        return name
    preset = [] if name == DEFAULT_PREPROCESS["onnx"] else [f"preset: {name}"]
    return "{" + ", ".join(preset + [f"{key}: {json.dumps(value)}" for key, value in fields.items()]) + "}"


def onnx_source_problem(model: ModelSource, spec: InputSpec, root: Path) -> str | None:
    """The one line export: would refuse an ONNX source with (unreadable, opset, input name or
    shape, preprocessing), or None: for `trtforge plan` and `doctor`, which otherwise passed a
    recipe its ONNX cannot take (issue 14). None too for other sources and for a file that is
    not there yet (export: names that)."""
    if model.source != "onnx" or not (root / model.path).is_file():
        return None
    try:
        _checked_onnx(model.path, spec, root, warn_unstated=False)
    except StageError as exc:
        return str(exc)
    return None


def _checked_onnx(path: Path, spec: InputSpec, root: Path, warn_unstated: bool = True):
    """The ONNX source at `path`, once it is a model the recipe and the later stages can use."""
    model = _read_onnx(root / path, path)
    _check_onnx_matches_recipe(model, spec, path)
    _check_preprocess(props_of(model), spec, path, warn_unstated)
    return model


def _copy_checked_onnx(path: Path, spec: InputSpec, root: Path, output: Path) -> dict[str, str]:
    """Copy an ONNX source to `output` once it is a model the later stages can use; return its
    metadata_props (an Ultralytics export names its classes there).

    External data is embedded in the copy: its file names are relative to the source's folder,
    so a plain copy under artifacts/ would lose them.
    """
    onnx = require("onnx", "core")
    model = _checked_onnx(path, spec, root)
    with atomic_output(output) as temp:
        if _external_data_files(model):
            onnx.save(onnx.load(str(root / path)), str(temp))
        else:
            shutil.copyfile(root / path, temp)
    return props_of(model)


def _read_onnx(source: Path, shown: Path):
    """The ONNX at `source` (without external data), refused in one line if it is unreadable or invalid."""
    from google.protobuf.message import DecodeError

    onnx = require("onnx", "core")
    try:
        model = onnx.load(str(source), load_external_data=False)
    except DecodeError as exc:
        raise StageError(f"model.path: {shown} cannot be read as ONNX ({source.stat().st_size} bytes; {exc}): "
                         "it is truncated or not an ONNX model; copy or export it again") from exc
    missing = [name for name in _external_data_files(model) if not (source.parent / name).is_file()]
    if missing:
        raise StageError(f"model.path: {shown} keeps its weights in external data {', '.join(missing)}, "
                         f"missing from {source.parent}: copy it next to the model")
    try:
        onnx.checker.check_model(str(source))
    except Exception as exc:  # onnx raises ValidationError and others from its C++ checker
        reason = str(exc).splitlines()[0].rstrip(".")
        raise StageError(f"model.path: {shown} is not a valid ONNX model ({reason}): it is truncated or was "
                         "written wrongly; copy or export it again") from exc
    return model


def _external_data_files(model) -> list[str]:
    """Files (relative to the model) that hold the model's external tensor data, sorted."""
    # _get_all_tensors is the walker onnx.load itself uses (initializers and attribute tensors,
    # subgraphs included); private, but onnx is pinned and the external-data tests cover it.
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    return sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})


def _check_onnx_matches_recipe(model, spec: InputSpec, shown: Path) -> None:
    """Refuse an ONNX source whose opset or input name the later stages and the recipe cannot use."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset not in OPSETS:
        raise StageError(f"model.path: {shown} uses ONNX opset {opset}; trtforge supports opsets "
                         f"{OPSETS[0]}..{OPSETS[-1]}: convert it "
                         "(onnx.version_converter) or export it again with an opset in that range")
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if spec.name not in inputs:
        raise StageError(f"model.path: {shown} has input(s) {', '.join(inputs)}, not '{spec.name}', which "
                         "input.name sets and build.profiles use: set input.name to the model's input")
    graph_input = next(i for i in model.graph.input if i.name == spec.name)
    _check_input_shape(_onnx_dims(graph_input), spec, shown)


def _onnx_dims(graph_input) -> list[int | None]:
    """The input's dimensions: a size where the ONNX fixes it, None where it is dynamic."""
    dims = graph_input.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def _check_input_shape(dims: list[int | None], spec: InputSpec, shown: Path) -> None:
    """Refuse a recipe whose input shape the ONNX cannot take, before calibration or the engine
    meet it (a static `yolo export` with the recipe's default dynamic batch ended in an ONNX
    Runtime traceback during calibration, issue 14). The ONNX's view, e.g. [1, 3, 640, 640]
    with ? for dynamic axes, is named with the field to change."""
    seen = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    if len(dims) != len(spec.shape):
        raise StageError(f"input.shape: {list(spec.shape)} has {len(spec.shape)} axes but {shown}'s input "
                         f"'{spec.name}' has {len(dims)} ({seen}): give input.shape the model's axes")
    for axis, (fixed, wanted) in enumerate(zip(dims, spec.shape)):
        if fixed is None:
            continue
        if axis in spec.dynamic_axes:
            raise StageError(f"input.dynamic_axes: axis {axis} of '{spec.name}' is fixed at {fixed} in {shown} "
                             f"({seen}, a static export): remove {axis} from input.dynamic_axes (and keep "
                             f"build.profiles and calibration.batch at {fixed}), or export the model with dynamic "
                             "axes")
        if fixed != wanted:
            raise StageError(f"input.shape: axis {axis} is {wanted} but {shown} fixes it at {fixed} ({seen}): "
                             f"set input.shape to {[d if d is not None else w for d, w in zip(dims, spec.shape)]}")
