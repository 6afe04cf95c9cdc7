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

Accuracy control runs that form tens of times, each a new session, so `with_fed_weights`
gives it a faster equivalent: the weights' fake quantization, which ONNX Runtime keeps in the
graph and recomputes on every inference, is computed once and fed as inputs.
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


def computed_weights(model) -> dict:
    """{tensor: array} of every dequantized weight of `model` (a DequantizeLinear output computed
    from initializers alone), as ONNX Runtime's own kernels compute it."""
    ort = require("onnxruntime", "core")
    onnx = require("onnx", "core")
    from onnx import helper

    chains, handed = _weight_chains(model)
    if not handed:
        return {}
    types = {value.name: value.type.tensor_type.elem_type
             for value in onnx.shape_inference.infer_shapes(model).graph.value_info}
    read = {name for node in chains for name in node.input}
    graph = helper.make_graph(chains, "weights", [], [helper.make_tensor_value_info(t, types[t], None) for t in handed],
                              [init for init in model.graph.initializer if init.name in read])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=model.opset_import).SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    return dict(zip(handed, session.run(handed, {})))


def with_fed_weights(model, weights: dict) -> tuple[object, dict]:
    """(a copy of `model` that reads its dequantized weights as inputs, the {input: array} to feed
    it). `weights`: computed_weights of `model` or of a model it was derived from by rewiring
    readers (a reverted copy reads fewer of them). Outputs are bit-identical: a convolution
    reading a fed weight runs the same kernel as one reading a DequantizeLinear output, whereas
    constant weights would switch it to ONNX Runtime's blocked layout, which sums in another
    order (about 0.4% of a detector's outputs after INT8 rounding). Saves the weights'
    Quantize/Dequantize on every inference and half a session's set-up: 0.19-0.20 s against
    0.21 per 640 px YOLOv8s image on 2 cores, sessions 0.09-0.13 s against 0.18-0.21."""
    onnx = require("onnx", "core")
    from onnx import helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    _, handed = _weight_chains(result)
    fed = {name: weights[name] for name in handed if name in weights}
    kept = [node for node in result.graph.node if not (node.op_type == "DequantizeLinear" and node.output[0] in fed)]
    del result.graph.node[:]
    result.graph.node.extend(kept)
    result.graph.input.extend(
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
        for name, array in fed.items())
    drop_unread(result, ("Cast", "QuantizeLinear", "DequantizeLinear"))
    return result, fed


def _weight_chains(model) -> tuple[list, list[str]]:
    """(the Cast, QuantizeLinear and DequantizeLinear nodes that read only initializers or each
    other: the weights' fake quantization; the DequantizeLinear outputs the rest reads)."""
    constant = {init.name for init in model.graph.initializer}
    chains = []
    for node in model.graph.node:
        if node.op_type in ("Cast", "QuantizeLinear", "DequantizeLinear") and all(
                name in constant for name in node.input if name):
            chains.append(node)
            constant.update(node.output)
    inside = {id(node) for node in chains}
    read = {name for node in model.graph.node if id(node) not in inside for name in node.input}
    read |= {value.name for value in model.graph.output}
    handed = [node.output[0] for node in chains if node.op_type == "DequantizeLinear" and node.output[0] in read]
    return chains, handed


def drop_unread(model, op_types: tuple[str, ...]) -> None:
    """Remove the nodes of `op_types` whose outputs nothing reads (graph outputs count as read),
    then the initializers nothing reads. Lists are rebuilt, not edited in place: removing a
    message from a repeated field compares it with each element, weights included."""
    while True:
        read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        kept = [node for node in model.graph.node if node.op_type not in op_types or set(node.output) & read]
        if len(kept) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(kept)
    if any(init.name not in read for init in model.graph.initializer):
        kept = [init for init in model.graph.initializer if init.name in read]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
