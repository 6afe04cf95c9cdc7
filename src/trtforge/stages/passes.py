"""Built-in surgery passes. Each one imports its library inside the pass."""

from __future__ import annotations

from ..errors import require
from ..surgery import surgery_pass
from . import nms  # noqa: F401  (registers the `nms` pass; imports no heavy library)


@surgery_pass("fold_constants")
def fold_constants(model, fold_shapes: bool = True):
    """Fold constant subgraphs (shape arithmetic included), drop dead nodes, sort.

    TensorRT parses folded graphs faster and rejects some shape-computation patterns that
    exporters leave behind; onnx-graphsurgeon's folding runs them through ONNX Runtime.
    """
    gs = require("onnx_graphsurgeon", "core")
    graph = gs.import_onnx(model)
    graph.fold_constants(fold_shapes=fold_shapes).cleanup().toposort()
    return gs.export_onnx(graph)


@surgery_pass("infer_shapes")
def infer_shapes(model, data_prop: bool = True):
    """Annotate every tensor with its shape, so the later passes and the parser see them."""
    onnx = require("onnx", "core")
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=data_prop)


@surgery_pass("slim")
def slim(model, skip_fusion_patterns: list | None = None):
    """onnxslim: fuse and eliminate redundant operators (its defaults keep numerics)."""
    onnxslim = require("onnxslim", "core")
    kwargs = {"skip_fusion_patterns": skip_fusion_patterns} if skip_fusion_patterns else {}
    return onnxslim.slim(model, **kwargs)
