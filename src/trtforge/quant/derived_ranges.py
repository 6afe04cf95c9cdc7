"""Calibration ranges that follow exactly from other tensors' statistics, so the calib
stage need not observe those tensors.

Every observed tensor costs two passes over it (its max and its min), and observing a
Sigmoid output blocks ONNX Runtime's fusion of Sigmoid*Mul into QuickGelu. On YOLOv8n at
640 px, observing all 242 float tensors took 1.6x a plain forward pass; observing the 99
whose ranges do not follow from others, 1.2x (bench/calibration.py). The cache still holds
a scale for every float tensor, because TensorRT's implicit INT8 runs any layer that consumes
or produces a tensor without one above INT8 (DESIGN.md), and whether it asks before or after
its own fusions cannot be checked here: nothing is left out, only computed instead of measured.

The rules, each exact (tests/test_calibration.py holds derived ranges to observed ones):

- `y = Sigmoid(x)` and `y = Relu(x)` are monotone: y's max and min are f(x's max and min).
- `y = x * Sigmoid(x)` (SiLU as PyTorch exports it) decreases below x* = -1.2785 and
  increases above it, so y's max is the larger of f(min x) and f(max x). y's min is
  f(min x) or f(max x) when x's range lies on one side of x*; across it, the observed
  points nearest x* are unknown, so the bound f(x*) = -0.2785 is used. The symmetric range
  max(|max|, |min|) is then still exact whenever the layer's largest output reaches 0.2785,
  and otherwise at most 0.2785: wider, never clipping.
- `y = Concat(x1, ..., xn)`: y's max and min are those of the inputs (minmax only).
- `y = Reshape(x)` (and Flatten, Squeeze, Unsqueeze, Transpose, Identity) holds exactly x's
  values, and `y = Resize(x)` in nearest mode with whole-number scales >= 1 holds each of them
  at least once (the detector neck's 2x upsampling): y's max and min are x's (minmax only).
- For the histogram methods, y's strided samples are f(x's samples): y has x's shape, so
  the same positions are sampled. Concat is observed there, because a strided sample of the
  concatenation is not the union of its inputs' samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import require

SILU_TURN = -1.2784645427610738  # argmin of x * sigmoid(x): where SiLU stops decreasing
SILU_MIN = SILU_TURN / (1 + math.exp(-SILU_TURN))
MINMAX_ONLY = ("concat", "copy")  # rules that give a range but not the samples at the same positions
SAME_VALUES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")


@dataclass(frozen=True)
class Derivation:
    tensor: str
    rule: str  # sigmoid | relu | silu | concat | copy
    sources: tuple[str, ...]


def derivations(model, candidates: list[str], method: str) -> list[Derivation]:
    """The tensors among `candidates` whose ranges follow from others', in graph order.

    A derivation's sources are candidates too, observed or derived earlier; with a histogram
    method only the elementwise rules apply (their samples are computed from the source's)."""
    known = set(candidates)
    producers = {out: node for node in model.graph.node for out in node.output}
    derived: list[Derivation] = []
    for node in model.graph.node:
        if not node.output or node.output[0] not in known:
            continue
        rule = _rule(node, producers, model)
        if rule is None or (rule in MINMAX_ONLY and method != "minmax"):
            continue
        sources = tuple(node.input) if rule == "concat" else (_silu_input(node, producers) or node.input[0],)
        if all(source in known for source in sources):
            derived.append(Derivation(node.output[0], rule, sources))
    return derived


def _rule(node, producers, model) -> str | None:
    if node.op_type in ("Sigmoid", "Relu") and len(node.output) == 1:
        return node.op_type.lower()
    if node.op_type == "Mul" and _silu_input(node, producers) is not None:
        return "silu"
    if node.op_type == "Concat" and len(node.output) == 1 and node.input:
        return "concat"
    if (node.op_type in SAME_VALUES and len(node.output) == 1) or _upsamples_nearest(node, model):
        return "copy"
    return None


def _upsamples_nearest(node, model) -> bool:
    """Whether `node` is a Resize that repeats every input value: nearest mode, and constant
    scales that are whole numbers >= 1 (given as sizes instead, the ratio is not known here)."""
    if node.op_type != "Resize" or len(node.input) < 3:
        return False
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
    scales = _constant(model, node.input[2])
    return (mode == b"nearest" and scales is not None and scales.size > 0
            and bool(((scales >= 1) & (scales == scales.round())).all()))


def _constant(model, name: str):
    """The array an initializer or Constant node of `model` holds under `name`, else None.
    Looked up one name at a time: only a Resize's scales are wanted, not every weight."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value)
    return None


def _silu_input(node, producers) -> str | None:
    """x when `node` is Mul(x, Sigmoid(x)) in either order, else None."""
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    for x, other in (node.input, node.input[::-1]):
        sigmoid = producers.get(other)
        if sigmoid is not None and sigmoid.op_type == "Sigmoid" and sigmoid.input[0] == x:
            return x
    return None


def derive_bounds(derived: list[Derivation], bounds: dict[str, tuple[float, float]]) -> None:
    """Add each derived tensor's (min, max) to `bounds`, which holds its sources' already."""
    for d in derived:
        lows, highs = zip(*(bounds[source] for source in d.sources))
        low, high = min(lows), max(highs)
        if not math.isfinite(low) or not math.isfinite(high):
            bounds[d.tensor] = (-math.inf, math.inf)  # from a tensor that holds inf or NaN: left out too
        elif d.rule in MINMAX_ONLY:
            bounds[d.tensor] = (low, high)
        elif d.rule == "silu":
            ends = (_silu(low), _silu(high))
            bounds[d.tensor] = (SILU_MIN if low < SILU_TURN < high else min(ends), max(ends))
        else:
            f = _sigmoid if d.rule == "sigmoid" else (lambda v: max(v, 0.0))
            bounds[d.tensor] = (f(low), f(high))


def derive_samples(derivation: Derivation, sample):
    """The derived tensor's samples from its source's (elementwise rules only)."""
    np = require("numpy", "core")
    x = np.asarray(sample, dtype=np.float32)
    if derivation.rule == "relu":
        return np.maximum(x, 0)
    with np.errstate(over="ignore"):  # exp(-x) of a very negative x is inf: sigmoid 0
        sigmoid = 1 / (1 + np.exp(-x.astype(np.float64)))
    return (sigmoid if derivation.rule == "sigmoid" else x * sigmoid).astype(np.float32)


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def _silu(v: float) -> float:
    return v * _sigmoid(v)
