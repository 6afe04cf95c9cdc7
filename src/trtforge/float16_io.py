"""FP16 inputs and outputs carried by a typed ONNX (`build.io: fp16`).

A strongly typed build (10.x with --stronglyTyped, every 11.x build) takes its bindings'
types from the ONNX, so an engine that callers feed and read in half precision needs graph
inputs and outputs typed float16 in the AutoCast or Q/DQ ONNX it is built from. Builder-flag
builds get the same engine through --inputIOFormats/--outputIOFormats instead (render.py),
and this model is then what the CPU check runs, so both routes are checked the same way.

Every float32 graph input becomes float16 and is cast back to float32 for the nodes that
read it; every float32 graph output is produced by a cast to float16. Casts that undo one
another at the boundary (AutoCast and ModelOpt keep float32 I/O by casting right after the
inputs and right before the outputs) are folded: float16 -> float32 -> float16 is exact, so
folding changes no value and leaves TensorRT no extra layer to run.
"""

from __future__ import annotations

from .errors import require


def with_float16_io(model):  # onnx.ModelProto in and out
    """`model` with its float32 inputs and outputs retyped float16 (in place; also returned)."""
    onnx = require("onnx", "core")
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    retyped = set()
    for value in graph.input:
        if value.name not in initializers and value.type.tensor_type.elem_type == float32:
            _retype_input(graph, value.name, onnx)
            value.type.tensor_type.elem_type = float16
            retyped.add(value.name)
    for value in graph.output:
        if value.type.tensor_type.elem_type == float32 and _retype_output(graph, value.name, onnx):
            value.type.tensor_type.elem_type = float16
            retyped.add(value.name)
    # shape inference re-derives what it needs; stale float32 entries would contradict the new types
    kept = [v for v in graph.value_info if v.name not in retyped and not v.name.endswith(_FLOAT32_SUFFIX)]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model


_FLOAT32_SUFFIX = "__trtforge_fp32"


def _retype_input(graph, name: str, onnx) -> None:  # onnx GraphProto and module
    """Nodes reading input `name` read its float32 cast instead; a cast back to float16 reads the input itself."""
    wide = name + _FLOAT32_SUFFIX
    readers = [node for node in graph.node if name in node.input]
    outputs = {o.name for o in graph.output}  # a graph output keeps its name, so its cast stays
    narrowing = [n for n in readers if _is_cast_to(n, onnx.TensorProto.FLOAT16) and list(n.input) == [name]
                 and n.output[0] not in outputs]
    for cast in narrowing:  # float16 -> float32 -> float16 is the input itself
        _rename_uses(graph, cast.output[0], name)
        graph.node.remove(cast)
    others = [n for n in readers if n not in narrowing]
    if not others:
        return
    for node in others:
        node.input[:] = [wide if i == name else i for i in node.input]
    graph.node.insert(0, onnx.helper.make_node("Cast", [name], [wide], to=onnx.TensorProto.FLOAT,
                                               name=f"{name}_to_float32"))


def _retype_output(graph, name: str, onnx) -> bool:  # onnx GraphProto and module
    """Make output `name` by a cast to float16 of what produced it; a producer that widened a
    float16 tensor (and feeds nothing else) narrows it instead, which is exact. False for an
    output no node produces (a constant), which keeps its type."""
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None:
        return False
    readers = [n for n in graph.node if name in n.input]
    if _is_cast_to(producer, onnx.TensorProto.FLOAT) and not readers \
            and _type_of(graph, producer.input[0]) == onnx.TensorProto.FLOAT16:
        _set_cast_to(producer, onnx.TensorProto.FLOAT16, onnx)
        return True
    wide = name + _FLOAT32_SUFFIX
    producer.output[:] = [wide if o == name else o for o in producer.output]
    for node in readers:
        node.input[:] = [wide if i == name else i for i in node.input]
    graph.node.append(onnx.helper.make_node("Cast", [wide], [name], to=onnx.TensorProto.FLOAT16,
                                            name=f"{name}_to_float16"))
    return True


def _is_cast_to(node, to: int) -> bool:  # onnx NodeProto
    return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)


def _set_cast_to(node, to: int, onnx) -> None:  # onnx NodeProto and module
    del node.attribute[:]
    node.attribute.append(onnx.helper.make_attribute("to", to))


def _type_of(graph, name: str) -> int | None:  # onnx GraphProto
    """The element type the graph records for tensor `name` (inputs, value_info, outputs), if any."""
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.name == name:
            return value.type.tensor_type.elem_type
    return None


def _rename_uses(graph, old: str, new: str) -> None:  # onnx GraphProto
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
