"""export: the recipe's model -> ONNX.

Ultralytics models are exported the way Ultralytics' own exporter prepares them (fused,
heads in export mode so a detector emits one `[B, 4+classes, anchors]` tensor, C2f with
the split forward that gives a cleaner graph) but through plain `torch.onnx.export`, so
that opset, names and dynamic axes come from the recipe alone.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

from ..atomic import atomic_output, write_text_atomic
from ..console import StatusLine, info, warn
from ..errors import StageError, require
from ..recipe import OPSETS, InputSpec, ModelSource

# Ultralytics tasks trtforge builds end to end; issue 7 adds segment, classify, pose and obb.
SUPPORTED_TASKS = ("detect",)


def export_onnx(model: ModelSource, spec: InputSpec, opset: int, root: Path, output: Path,
                metadata_out: Path | None = None) -> None:
    """Write the recipe's model as ONNX to `output` (atomically), and what is known about
    it (class names, stride, task) as JSON to `metadata_out`, for release packaging."""
    metadata = {"source": model.source, "imgsz": list(spec.shape[2:])}
    started = time.monotonic()
    with StatusLine(f"export of {model.weights or model.arch or model.factory or model.path}") as status:
        if model.source == "onnx":
            status.update("checking the ONNX", "")
            _copy_checked_onnx(model.path, spec, root, output)
        else:
            status.update("building the network", "")
            if model.source == "ultralytics":
                module, metadata["task"] = _ultralytics_module(model, root)
            else:
                module = _factory_module(model, root)
            metadata.update(_model_metadata(module))
            status.update(f"tracing to ONNX opset {opset}", "")
            _export_module(module, spec, opset, output)
    info(f"exported {output.name} ({output.stat().st_size / 2**20:.1f} MiB) in {time.monotonic() - started:.1f} s")
    if metadata_out is not None:
        write_text_atomic(metadata_out, json.dumps(metadata, indent=1, sort_keys=True) + "\n")


def _model_metadata(module) -> dict:
    """Class names and stride as Ultralytics models carry them (empty for other modules)."""
    out = {}
    names = getattr(module, "names", None)
    if isinstance(names, dict):
        out["names"] = {int(k): str(v) for k, v in names.items()}
    stride = getattr(module, "stride", None)
    if hasattr(stride, "max"):  # Ultralytics keeps its strides in a tensor; a Conv2d's stride is a tuple
        out["stride"] = int(stride.max())
    return out


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


def _ultralytics_module(model: ModelSource, root: Path):
    """The Ultralytics network in export mode and its task, from weights or a seeded architecture yaml."""
    torch = require("torch", "yolo")
    ultralytics = require("ultralytics", "yolo")
    torch.manual_seed(model.seed)
    if model.weights is None:
        warn(f"model.weights is not set: exporting an UNTRAINED {model.arch} (random weights, "
             f"seed {model.seed}); its outputs are meaningless for deployment. Set model.weights "
             "to your trained checkpoint.")
        field, shown, source = "model.arch", model.arch, model.arch
    else:
        _check_ultralytics_checkpoint(root / model.weights, model.weights)
        field, shown, source = "model.weights", model.weights, str(root / model.weights)
    try:
        yolo = ultralytics.YOLO(source)
    except Exception as exc:  # Ultralytics raises many types for a bad checkpoint
        raise StageError(f"{field}: Ultralytics cannot load {shown}: {str(exc).splitlines()[0]}") from exc
    if yolo.task not in SUPPORTED_TASKS:
        raise StageError(f"{field}: {shown} is an Ultralytics '{yolo.task}' model; trtforge builds "
                         f"{', '.join(SUPPORTED_TASKS)} models so far: give a model of a supported task")
    net = yolo.model.float().eval()
    net = net.fuse() if hasattr(net, "fuse") else net
    _set_export_mode(net)
    return net, yolo.task


def _check_ultralytics_checkpoint(path: Path, shown: Path) -> None:
    """Refuse, before Ultralytics unpickles it, a file that is no Ultralytics checkpoint.

    Ultralytics' loader would otherwise fail with a message about its own models, and for a
    pickle naming a module that is not installed it runs `pip install <module>` mid-build.
    """
    import importlib.util
    import sys

    if path.suffix != ".pt":  # Ultralytics loads checkpoints only from .pt; other suffixes mean other formats
        raise StageError(f"model.weights: {shown} is not a .pt file; Ultralytics reads checkpoints from .pt "
                         "files only (an ONNX model goes in model.path with model.source: onnx)")
    names = _torch_file_globals(path, shown)
    if not any(n.startswith("ultralytics.") for n in names):
        found = f"it names {', '.join(names[:3])}" if names else "it holds only tensors and plain values"
        raise StageError(f"model.weights: {shown} is a PyTorch file but not an Ultralytics checkpoint "
                         f"({found}); give a checkpoint Ultralytics saved (its best.pt), or load a state "
                         "dict with model.source: torch and model.factory")
    missing = sorted(m for m in {n.split(".")[0] for n in names}
                     if m not in sys.modules and importlib.util.find_spec(m) is None)
    if missing:
        raise StageError(f"model.weights: {shown} needs the Python module(s) {', '.join(missing)}, which are "
                         "not installed here; install them and rerun")


def _torch_file_globals(path: Path, shown: Path) -> list[str]:
    """The classes and functions the pickle inside a torch.save file names, read without running it.

    torch.load reports a damaged file as RuntimeError, EOFError, UnpicklingError or even KeyError
    depending on the damage, and loads a flipped byte inside a tensor silently (it does not check
    the zip's CRCs; measured with torch 2.14), so the file's bytes are judged first.
    """
    import pickle

    torch = require("torch", "yolo")
    problem = _torch_file_problem(path)
    if problem is None:
        try:
            return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            problem = f"is not a readable PyTorch checkpoint (torch: {str(exc).splitlines()[0]})"
    raise StageError(f"model.weights: {shown} {problem}; copy or save it again")


def _torch_file_problem(path: Path) -> str | None:
    """What makes `path` no torch.save file, judged from its zip structure (None: it looks like one)."""
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        return (f"is not a PyTorch checkpoint or is truncated ({path.stat().st_size} bytes, without the zip "
                "directory every torch.save file ends with)")
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "is a zip archive but not a PyTorch checkpoint (it has no data.pkl)"
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as exc:
        return f"is a damaged zip archive ({exc})"
    return None if damaged is None else f"is damaged ({damaged} inside it fails its CRC check)"


def _set_export_mode(net) -> None:
    from ultralytics.nn.modules import C2f, Detect, RTDETRDecoder
    from ultralytics.nn.modules.head import Classify

    for m in net.modules():
        if isinstance(m, (Detect, RTDETRDecoder, Classify)):
            m.export, m.format = True, "onnx"
            if hasattr(m, "dynamic"):
                m.dynamic = False  # anchors are fixed by the export size; batch stays dynamic
        elif isinstance(m, C2f):
            m.forward = m.forward_split


def _factory_module(model: ModelSource, root: Path):
    """A torch module from `package.module:function`, optionally loading a state dict."""
    import importlib
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
    net = factory()
    if model.weights is not None:
        _torch_file_globals(root / model.weights, model.weights)
        try:
            net.load_state_dict(torch.load(root / model.weights, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise StageError(f"model.weights: cannot load '{model.weights}' as a state dict: "
                             f"{str(exc).splitlines()[0]}") from exc
    return net.float().eval()


def _copy_checked_onnx(path: Path, spec: InputSpec, root: Path, output: Path) -> None:
    """Copy an ONNX source to `output` once it is a model the later stages can use.

    External data is embedded in the copy: its file names are relative to the source's folder,
    so a plain copy under artifacts/ would lose them.
    """
    onnx = require("onnx", "core")
    model = _read_onnx(root / path, path)
    _check_onnx_matches_recipe(model, spec, path)
    with atomic_output(output) as temp:
        if _external_data_files(model):
            onnx.save(onnx.load(str(root / path)), str(temp))
        else:
            shutil.copyfile(root / path, temp)


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
