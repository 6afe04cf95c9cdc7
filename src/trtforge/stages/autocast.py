"""quantize (FP16): an FP16-typed ONNX from ModelOpt AutoCast, for strongly typed builds.

TensorRT 11 removed `--fp16`; reduced precision must be in the ONNX itself. AutoCast
decides per node whether FP16 is safe (ranges, reductions) and leaves the rest in FP32.
Nodes the recipe keeps in FP32 (`build.keep_fp32`, globs over node names) are excluded.
Inputs and outputs stay FP32, as they do on the `--fp16` builder-flag path, so the same
pre- and post-processing serves every TensorRT generation, unless the recipe asks for FP16
I/O (`build.io: fp16`, float16_io.py).
It runs on CPU through ONNX Runtime's CPU provider.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from ..atomic import atomic_output
from ..errors import StageError, require
from ..float16_io import with_float16_io
from ..modelmeta import read_props, stamp


def autocast_fp16(source: Path, output: Path, keep_fp32: tuple[str, ...], io: str = "fp32") -> None:
    """Write an FP16 mixed-precision copy of `source` to `output` (atomically)."""
    onnx = require("onnx", "core")
    autocast = require("modelopt.onnx.autocast", "quant")
    # AutoCast takes regular expressions; recipes speak globs, the same as for --layerPrecisions.
    exclude = [fnmatch.translate(pattern) for pattern in keep_fp32]
    try:
        model = autocast.convert_to_mixed_precision(onnx_path=str(source), low_precision_type="fp16",
                                                    nodes_to_exclude=exclude, keep_io_types=True,
                                                    providers=["cpu"])
    except Exception as exc:  # ModelOpt raises bare exceptions for graphs it cannot type
        raise StageError(f"AutoCast could not convert {source.name} to FP16: {str(exc).splitlines()[0]}") from exc
    if io == "fp16":
        with_float16_io(model)
    stamp(model, read_props(source))  # AutoCast writes a new model without the source's metadata
    with atomic_output(output) as temp:
        onnx.save(model, str(temp))
