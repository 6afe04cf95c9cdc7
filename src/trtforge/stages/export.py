"""export: the recipe's model -> ONNX.

Ultralytics models are exported the way Ultralytics' own exporter prepares them (fused,
heads in export mode so a detector emits one `[B, 4+classes, anchors]` tensor, C2f with
the split forward that gives a cleaner graph) but through plain `torch.onnx.export`, so
that opset, names and dynamic axes come from the recipe alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..atomic import atomic_output, write_text_atomic
from ..console import warn
from ..errors import StageError, require
from ..recipe import InputSpec, ModelSource


def export_onnx(model: ModelSource, spec: InputSpec, opset: int, root: Path, output: Path,
                metadata_out: Path | None = None) -> None:
    """Write the recipe's model as ONNX to `output` (atomically), and what is known about
    it (class names, stride, task) as JSON to `metadata_out`, for release packaging."""
    metadata = {"source": model.source, "imgsz": list(spec.shape[2:])}
    if model.source == "onnx":
        _copy_checked_onnx(root / model.path, output)
    else:
        module = (_ultralytics_module(model, spec, root) if model.source == "ultralytics"
                  else _factory_module(model, root))
        metadata.update(_model_metadata(module))
        if model.source == "ultralytics":
            from ultralytics.nn.tasks import guess_model_task

            metadata["task"] = guess_model_task(module)
        _export_module(module, spec, opset, output)
    if metadata_out is not None:
        write_text_atomic(metadata_out, json.dumps(metadata, indent=1, sort_keys=True) + "\n")


def _model_metadata(module) -> dict:
    """Class names and stride as Ultralytics models carry them (empty for other modules)."""
    out = {}
    names = getattr(module, "names", None)
    if isinstance(names, dict):
        out["names"] = {int(k): str(v) for k, v in names.items()}
    stride = getattr(module, "stride", None)
    if stride is not None:
        out["stride"] = int(max(stride.tolist())) if hasattr(stride, "tolist") else int(stride)
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


def _ultralytics_module(model: ModelSource, spec: InputSpec, root: Path):
    """The Ultralytics network in export mode, from weights or a seeded architecture yaml."""
    torch = require("torch", "yolo")
    ultralytics = require("ultralytics", "yolo")
    torch.manual_seed(model.seed)
    if model.weights is None:
        warn(f"model.weights is not set: exporting an UNTRAINED {model.arch} (random weights, "
             f"seed {model.seed}); its outputs are meaningless for deployment. Set model.weights "
             "to your trained checkpoint.")
        source = model.arch
    else:
        source = str(root / model.weights)
    try:
        net = ultralytics.YOLO(source).model
    except Exception as exc:  # Ultralytics raises many types for a bad checkpoint
        field = "model.arch" if model.weights is None else "model.weights"
        raise StageError(f"{field}: Ultralytics cannot load '{source}': {str(exc).splitlines()[0]}") from exc
    net = net.float().eval()
    net = net.fuse() if hasattr(net, "fuse") else net
    _set_export_mode(net)
    return net


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
        try:
            net.load_state_dict(torch.load(root / model.weights, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise StageError(f"model.weights: cannot load '{model.weights}' as a state dict: "
                             f"{str(exc).splitlines()[0]}") from exc
    return net.float().eval()


def _copy_checked_onnx(source: Path, output: Path) -> None:
    onnx = require("onnx", "core")
    try:
        onnx.checker.check_model(str(source))
    except Exception as exc:
        raise StageError(f"model.path: {source} is not a valid ONNX model: {str(exc).splitlines()[0]}") from exc
    with atomic_output(output) as temp:
        shutil.copyfile(source, temp)
