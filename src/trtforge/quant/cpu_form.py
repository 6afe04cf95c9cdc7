"""The form in which a precision-transformed ONNX is run on CPU, so that the check measures
what TensorRT will compute and not a defect of the CPU runtime.

ONNX Runtime before 1.32 truncates float16 inputs of its CPU `QuantizeLinear` toward zero
instead of rounding them to nearest even (onnxruntime issues 18576 and 22741, fixed by PR
32452); TensorRT rounds. A Q/DQ ONNX whose non-INT8 ops are FP16 (ModelOpt's default) goes
through about seventy such truncations in YOLOv8, which cost 2-8 logits on class scores: a
Q/DQ model that agrees with FP32 at mAP50 0.99 once rounded correctly was scored 0.34.
onnxruntime cannot simply be upgraded here (ModelOpt 0.47 pins onnxruntime-gpu ~=1.24).

The remedy keeps every precision the engine will use: each such QuantizeLinear reads its
input and scale through a Cast to float32 (exact for float16 values), where ONNX Runtime's
kernel rounds correctly. The FP16 arithmetic around it and the INT8 values it produces are
otherwise unchanged.
"""

from __future__ import annotations

from ..errors import require

ROUNDING_CORRECT_FROM = (1, 32)  # the first onnxruntime whose CPU QuantizeLinear rounds float16


def runtime_truncates_float16() -> bool:
    """Whether the installed onnxruntime has the float16 QuantizeLinear truncation."""
    ort = require("onnxruntime", "core")
    major, minor = (int(part) for part in ort.__version__.split(".")[:2])
    return (major, minor) < ROUNDING_CORRECT_FROM


def with_float32_quantize_inputs(model, float16: set[str] | None = None) -> tuple[object, int]:
    """(a copy of `model` whose float16 QuantizeLinear nodes read float32 through exact Casts,
    how many nodes were rewritten). Nodes keep their order; each Cast comes right before
    the node that reads it. `float16`: the model's float16 tensor names, when the caller
    already has them (shape inference is the costly part)."""
    onnx = require("onnx", "core")
    from onnx import helper

    float16 = float16_tensors(model) if float16 is None else float16
    result = onnx.ModelProto()
    result.CopyFrom(model)
    nodes, rewritten = [], 0
    for node in result.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in float16:
            for slot in (0, 1):
                cast = f"{node.input[slot]}__trtforge_fp32_{rewritten}"
                nodes.append(helper.make_node("Cast", [node.input[slot]], [cast], to=onnx.TensorProto.FLOAT,
                                              name=cast))
                node.input[slot] = cast
            rewritten += 1
        nodes.append(node)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result, rewritten


def float16_tensors(model) -> set[str]:
    """Names of the float16 tensors of `model`: initializers, inputs, and inferred values."""
    onnx = require("onnx", "core")
    float16 = onnx.TensorProto.FLOAT16
    names = {init.name for init in model.graph.initializer if init.data_type == float16}
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.tensor_type.elem_type == float16:
            names.add(value.name)
    for node in model.graph.node:  # Constant nodes that shape inference left untyped
        if node.op_type == "Constant" and any(a.t.data_type == float16 for a in node.attribute if a.name == "value"):
            names.update(node.output)
    return names


def cpu_session_model(onnx_path) -> tuple[bytes | str, dict]:
    """(what to give onnxruntime.InferenceSession, a record of the runtime and form used) for
    running `onnx_path` on CPU as TensorRT would compute it."""
    ort = require("onnxruntime", "core")
    onnx = require("onnx", "core")

    record = {"runtime": f"onnxruntime {ort.__version__}", "provider": "CPUExecutionProvider"}
    if not runtime_truncates_float16():
        return str(onnx_path), {**record, "form": "as built"}
    model, rewritten = with_float32_quantize_inputs(onnx.load(str(onnx_path)))
    if not rewritten:
        return str(onnx_path), {**record, "form": "as built"}
    return model.SerializeToString(), {
        **record, "form": f"{rewritten} float16 QuantizeLinear read through exact float32 Casts "
                          "(this onnxruntime truncates float16 there; TensorRT rounds)"}
