"""preflight: will this TensorRT generation's ONNX parser take this ONNX? Asked without TensorRT.

A model that uses an operator the target's parser lacks (Mod on 8.2, for instance) fails
on the Jetson after minutes of copying and building. The same answer is in NVIDIA's
published operator tables, so it is checked here, on the laptop, before any trtexec call:
every node's operator, every tensor's element type and the model's opset against
`parser_ops.TABLES[generation]`. Each finding names the node, the operator and the surgery
pass that fixes it, where one does.

Errors are what the tables say the parser rejects; warnings are what they cannot settle
(an unlisted operator, an operator added within a generation, an opset above the documented
range). `run_preflight` writes the findings as JSON and fails on the first error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .atomic import write_text_atomic
from .errors import StageError, ToolError, require
from .parser_ops import FIXES, TABLES, ParserTable

DEFAULT_DOMAINS = ("", "ai.onnx")
# Outputs differ run to run: never folded into constants.
_RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                         "Bernoulli"})


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" (the parser rejects it) | "warning" (the tables cannot settle it)
    node: str  # node name, or the tensor name for a graph input/output or initializer
    op_type: str
    domain: str
    message: str
    fix: str = ""  # the surgery pass that removes the problem, if one does
    kind: str = "node"  # what `node` names: "node", "tensor" or "model"

    @property
    def subject(self) -> str:
        return "the model" if self.kind == "model" else f"{self.kind} '{self.node}'"


def table_for(generation: str) -> ParserTable:
    if generation not in TABLES:
        raise ToolError(f"unknown TensorRT generation '{generation}'; use one of {', '.join(TABLES)}")
    return TABLES[generation]


def preflight(onnx_path: Path | str, generation: str, *, plugin_libraries: bool = False) -> list[Finding]:
    """Every finding for `onnx_path` on `generation` ("8.2", "8.6", "10", "11"), errors first.

    `plugin_libraries`: the recipe loads plugin libraries (build.plugins), so a custom
    operator that is not one of TensorRT's built-in plugins may be provided by one of them
    (a warning, not an error: what a library registers cannot be read without loading it).
    """
    onnx = require("onnx", "core")
    table = table_for(generation)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf raises DecodeError and others for a damaged file
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StageError(f"{onnx_path}: not a readable ONNX model: {detail}") from exc
    try:  # element types of intermediate tensors; without them only I/O and weights are typed
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx raises InferenceError and others on models it cannot follow
        inferred = model
    graph = _GraphFacts(inferred.graph)
    findings = list(_opset_findings(model, table))
    for node, path, nested in _walk_nodes(inferred.graph):
        findings.extend(_node_findings(node, path, nested, table, graph, plugin_libraries))
    findings.extend(_type_findings(inferred.graph, table, graph))
    return sorted(findings, key=lambda f: f.severity != "error")


def run_preflight(onnx_path: Path, generation: str, report: Path, task: str, *,
                  plugin_libraries: bool = False) -> None:
    """The stage: write the findings to `report` (JSON, atomically), then fail in one line
    naming the first blocking node, its operator, the generation and the fix."""
    findings = preflight(onnx_path, generation, plugin_libraries=plugin_libraries)
    write_text_atomic(report, json.dumps(preflight_report(onnx_path, generation, findings), indent=1) + "\n")
    if (line := first_error(findings, report)) is not None:
        raise StageError(f"{task}: {line}")


def first_error(findings: list[Finding], report: Path | None = None) -> str | None:
    """The first blocking finding in one line, `<subject> <message> (N more)`, or None: the
    wording lint, plan and doctor share. With `report`, the line names where the rest are."""
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return None
    where = f" in {report}" if report is not None else ""
    if len(errors) > 1:
        return f"{errors[0].subject} {errors[0].message} ({len(errors) - 1} more{where})"
    return f"{errors[0].subject} {errors[0].message}" + (f" (report: {report})" if report is not None else "")


def preflight_report(onnx_path: Path | str, generation: str, findings: list[Finding]) -> dict:
    table = table_for(generation)
    return {"onnx": str(onnx_path), "generation": generation, "tables": table.source,
            "errors": sum(f.severity == "error" for f in findings),
            "warnings": sum(f.severity == "warning" for f in findings),
            "findings": [asdict(f) for f in findings]}


class _GraphFacts:
    """Which tensors are weights, which are foldable constants, and each tensor's element type."""

    def __init__(self, graph) -> None:
        self.weights: set[str] = {t.name for t in graph.initializer}
        self.types: dict[str, int] = {}
        self.static: set[str] = set()
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type:
                self.types[value.name] = tensor_type.elem_type
            dims = tensor_type.shape.dim if tensor_type.HasField("shape") else None
            if dims is not None and all(d.HasField("dim_value") for d in dims):
                self.static.add(value.name)
        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.static.add(init.name)
        self.foldable = set(self.weights)
        for node in graph.node:  # exporters write nodes in topological order (ONNX requires it)
            if node.op_type == "Constant":
                self.weights.update(node.output)
            if self._folds(node):
                self.foldable.update(node.output)

    def _folds(self, node) -> bool:
        """What `fold_constants` (onnx-graphsurgeon, fold_shapes=True) would replace by a constant."""
        if node.op_type in _RANDOM_OPS or any(a.type in (5, 10) for a in node.attribute):  # GRAPH(S)
            return False
        if node.op_type in ("Shape", "Size"):
            return node.input[0] in self.static
        return all(not name or name in self.foldable for name in node.input)


def _walk_nodes(graph, prefix: str = "") -> Iterator[tuple[object, str, bool]]:
    """Every node with its display name and whether it sits in a subgraph (If/Loop/Scan body)."""
    for index, node in enumerate(graph.node):
        name = f"{prefix}{node.name or f'#{index} ({node.op_type})'}"
        yield node, name, bool(prefix)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == 5 else list(attr.graphs) if attr.type == 10 else []:
                yield from _walk_nodes(sub, f"{name}/")


def _opset_findings(model, table: ParserTable) -> Iterator[Finding]:
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if opset is None:
        return
    trt = f"TensorRT {table.generation}"
    if opset > table.opset_max:
        yield Finding("warning", "", "", "", f"uses ONNX opset {opset}; {trt}'s parser documents operators "
                      f"up to opset {table.opset_max} ({table.source}); export with export.opset: {table.opset_max}",
                      kind="model")
    elif table.opset_min is not None and opset < table.opset_min:
        yield Finding("warning", "", "", "", f"uses ONNX opset {opset}; {trt}'s parser documents opset "
                      f"{table.opset_min} and later; export with export.opset: {table.opset_min} or later",
                      kind="model")
    for since_opset, release in sorted(table.opset_since.items()):
        if table.opset_max >= opset >= since_opset:
            yield Finding("warning", "", "", "", f"uses ONNX opset {opset}, which needs TensorRT {release}; "
                          f"an older {table.generation}.x parser rejects it", kind="model")


def _node_findings(node, path: str, nested: bool, table: ParserTable, graph: _GraphFacts,
                   plugin_libraries: bool) -> Iterator[Finding]:
    op, domain = node.op_type, node.domain
    trt = f"TensorRT {table.generation}'s ONNX parser"

    def finding(severity: str, message: str, fix: str = "") -> Finding:
        return Finding(severity, path, op, domain, message, fix)

    if domain in DEFAULT_DOMAINS and op in table.supported:
        if not nested:  # a subgraph's weights and constants are not tracked: no claim about them
            yield from _input_findings(node, table, graph, finding, trt)
        if op in table.experimental:
            fix, advice = FIXES.get(op, ("", ""))
            yield finding("warning", f"uses {op}, which {trt} supports only experimentally "
                                     f"({table.source}){'; ' + advice if advice else ''}", fix)
        if op in table.since:
            yield finding("warning", f"uses {op}, which the parser gained in TensorRT {table.since[op]}; "
                                     f"an older {table.generation}.x rejects it")
        return
    if op in table.plugins:
        return  # a built-in plugin: the parser's fallback importer finds it in the registry
    if op in table.plugins_uncertain:
        yield finding("warning", f"uses plugin {op}, which TensorRT 10's plugin library registers; whether "
                                 f"{table.generation}'s does could not be read")
        return
    if domain not in DEFAULT_DOMAINS:
        yield _custom_op_finding(op, domain, table, plugin_libraries, finding)
        return
    if op in table.unverified:
        yield finding("warning", f"uses {op}; the operator tables around TensorRT {table.generation} disagree "
                                 f"on it ({table.source})")
    elif op in table.unsupported:
        yield _unsupported_finding(node, table, graph, finding, trt)
    else:
        yield finding("warning", f"uses {op}, which {trt} operator table does not list ({table.source})")


def _unsupported_finding(node, table: ParserTable, graph: _GraphFacts, finding, trt: str) -> Finding:
    op = node.op_type
    if all(name in graph.foldable for name in node.output):
        return finding("error", f"uses {op}, which {trt} does not support; its inputs are constant: "
                                f"add fold_constants to the recipe's surgery list", "fold_constants")
    fix, advice = FIXES.get(op, ("", "no surgery pass replaces it; change the model or target a newer TensorRT"))
    return finding("error", f"uses {op}, which {trt} does not support ({table.source}); {advice}", fix)


def _input_findings(node, table: ParserTable, graph: _GraphFacts, finding, trt: str) -> Iterator[Finding]:
    """Inputs the parser needs as weights (8.x) or as build-time constants (10+)."""
    op = node.op_type
    for index in table.weight_inputs.get(op, ()):
        name = node.input[index] if index < len(node.input) else ""
        if not name or name in graph.weights:
            continue
        if name in graph.foldable:
            yield finding("error", f"({op}): input {index} '{name}' is computed in the graph, and {trt} needs it "
                                   f"as an initializer: add fold_constants to the recipe's surgery list",
                          "fold_constants")
        else:
            yield finding("error", f"({op}): input {index} '{name}' depends on run-time data, and {trt} needs it "
                                   f"as an initializer ({table.source}); make it a constant in the model")
    for index in table.build_constant_inputs.get(op, ()):
        name = node.input[index] if index < len(node.input) else ""
        if name and name not in graph.foldable:
            yield finding("warning", f"({op}): input {index} '{name}' depends on run-time data; {trt} documents "
                                     f"it as a build-time constant ({table.source})")
    if op == "Resize":
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
        if mode not in ("nearest", "linear"):  # every table: "Supported resize modes: nearest, linear"
            yield finding("error", f"(Resize): uses mode '{mode}'; {trt} supports nearest and linear only")


def _custom_op_finding(op: str, domain: str, table: ParserTable, plugin_libraries: bool, finding) -> Finding:
    where = f"'{op}' in domain '{domain}'"
    if plugin_libraries:
        return finding("warning", f"uses custom operator {where}, which is not a TensorRT built-in plugin: one of "
                                  "the recipe's build.plugins libraries must register it")
    return finding("error", f"uses custom operator {where}, which is neither an ONNX operator TensorRT "
                            f"{table.generation}'s parser imports nor a built-in plugin; add the plugin library "
                            "that registers it to the recipe's build.plugins")


def _type_findings(graph, table: ParserTable, facts: _GraphFacts) -> Iterator[Finding]:
    """One finding per (element type, problem), naming the first tensor that has it."""
    onnx = require("onnx", "core")
    io_names = {v.name for v in [*graph.input, *graph.output]}
    seen: set[tuple[str, bool]] = set()
    for name, code in facts.types.items():
        dtype = onnx.TensorProto.DataType.Name(code)
        at_io = name in io_names
        problem = _type_problem(dtype, at_io, table)
        if problem is None or (dtype, at_io) in seen:
            continue
        seen.add((dtype, at_io))
        severity, message = problem
        count = sum(onnx.TensorProto.DataType.Name(c) == dtype and (n in io_names) == at_io
                    for n, c in facts.types.items())
        others = f" ({count - 1} more tensors)" if count > 1 else ""
        yield Finding(severity, name, "", "", f"{message}{others}", kind="tensor")


def _type_problem(dtype: str, at_io: bool, table: ParserTable) -> tuple[str, str] | None:
    trt = f"TensorRT {table.generation}'s ONNX parser"
    if dtype in table.types:
        if dtype in table.types_since:
            return "warning", f"is {dtype}, which needs TensorRT {table.types_since[dtype]} or later"
        return None
    if dtype in table.cast_down:
        if not at_io and dtype == "INT64":
            return None  # shape arithmetic; cast to INT32 by the parser as documented
        return "warning", (f"is {dtype}; {trt} casts it to {table.cast_down[dtype]}, clamping values"
                           f"{' (the engine binding is ' + table.cast_down[dtype] + ')' if at_io else ''}")
    if dtype == "UINT8" and table.uint8_io:
        return None if at_io else ("warning", f"is UINT8 inside the network; {trt} supports UINT8 as network "
                                              "input or output only")
    return "error", (f"is {dtype}, which {trt} does not support ({table.source}); export the model in FLOAT "
                     "and let the recipe's precision choose FP16/INT8")
