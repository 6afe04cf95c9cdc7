"""quantize (INT8): an explicit Q/DQ ONNX from NVIDIA ModelOpt, for strongly typed builds.

TensorRT 10 deprecated and 11 removed implicit INT8 (`--int8 --calib`); the quantization
must be in the ONNX. ModelOpt places the Q/DQ nodes the way TensorRT fuses them and takes
the activation scales from our own calibration cache (`calibration_cache_path`), so the
implicit and explicit paths use the very same ranges, computed once on the recipe's
images. The first calibration batch is still given to ModelOpt because its ONNX Runtime
pass needs real inputs; the cache's scales then replace what that pass measured.

With calibration.accuracy, trtforge.quant.accuracy then reverts the fewest quantized nodes
that let the task gate hold (an exclusion list kept by content key under artifacts/calib/).

Nodes the recipe keeps in FP32 are excluded from Q/DQ insertion; when there are any, the
rest of the graph also stays FP32 instead of being converted to FP16, since ModelOpt's FP16
conversion would otherwise take those nodes out of FP32 too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import atomic_output, disk_fault, write_text_atomic
from ..errors import StageError, require
from ..float16_io import with_float16_io
from ..modelmeta import read_props, stamp
from ..quant.accuracy import AccuracyJob, controlled


def quantize_int8(source: Path, calib_cache: Path, sample_batch: Path, output: Path,
                  keep_fp32: tuple[str, ...], accuracy: AccuracyJob | None = None,
                  accuracy_report: Path | None = None, io: str = "fp32") -> None:
    """Write a Q/DQ INT8 copy of `source` to `output` (atomically); with `accuracy`, the copy
    in which the fewest quantized nodes are reverted for the task gate to hold, and the
    search's report to `accuracy_report`. `io: fp16` retypes its inputs and outputs last,
    after the search, which scores the model its callers' float32 references were made for."""
    onnx = require("onnx", "core")
    with atomic_output(output) as temp:
        _modelopt_qdq(source, calib_cache, sample_batch, temp, keep_fp32)
        model = onnx.load(str(temp))
        if accuracy is not None:
            identity = _inputs_identity(source, calib_cache, sample_batch, keep_fp32)
            model, report = controlled(model, accuracy, identity)
        if io == "fp16":
            with_float16_io(model)
        stamp(model, read_props(source))  # ModelOpt writes a new model without the source's metadata
        onnx.save(model, str(temp))
    if accuracy is not None:
        write_text_atomic(accuracy_report, json.dumps(report, indent=2, sort_keys=True) + "\n")


def _inputs_identity(source: Path, calib_cache: Path, sample_batch: Path, keep_fp32: tuple[str, ...]) -> bytes:
    """What a Q/DQ model is made from, as bytes: the ONNX, the cache, the sample batch, the
    kept nodes and ModelOpt's version."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for path in (source, calib_cache, sample_batch):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps([list(keep_fp32), version("nvidia-modelopt")]).encode())
    return digest.digest()


def _modelopt_qdq(source: Path, calib_cache: Path, sample_batch: Path, temp: Path,
                  keep_fp32: tuple[str, ...]) -> None:
    np = require("numpy", "core")
    quantization = require("modelopt.onnx.quantization", "quant")
    with tempfile.TemporaryDirectory() as scratch:
        # ModelOpt runs onnx.shape_inference.infer_shapes_path(onnx_path) with no output path,
        # which rewrites its input in place (modelopt/onnx/trt_utils.py, load_onnx_model): give
        # it a private copy, or it rewrites surgery's model.onnx under the quantize task.
        private = Path(scratch) / source.name
        shutil.copyfile(source, private)
        try:
            quantization.quantize(
                onnx_path=str(private), quantize_mode="int8", calibration_data=np.load(sample_batch),
                calibration_method="max", calibration_cache_path=str(calib_cache),
                calibration_eps=["cpu"], nodes_to_exclude=[fnmatch.translate(p) for p in keep_fp32],
                high_precision_dtype="fp32" if keep_fp32 else "fp16", output_path=str(temp),
                log_file=os.path.join(scratch, "modelopt.log"), log_level="WARNING",
            )
        except Exception as exc:  # ModelOpt raises bare exceptions for graphs it cannot quantize
            if (fault := disk_fault(exc)) is not None:  # ModelOpt wraps a full disk in its own error
                raise fault from None
            raise StageError(f"ModelOpt could not quantize {source.name}: {str(exc).splitlines()[0]}") from exc
