"""Accuracy-controlled INT8: revert the fewest quantized nodes to float until the task gate
holds (`calibration.accuracy: {max_drop: 0.01}`).

The same idea as NNCF's `quantize_with_accuracy_control` and Polygraphy's `debug precision`,
on the Q/DQ ONNX that TensorRT builds from, so it runs on CPU without TensorRT:

1. score the Q/DQ model with the variant's task gate on the verification images (in the
   check's CPU form, trtforge.quant.cpu_form); if it holds, nothing changes;
2. rank the quantized nodes by how much reverting them (bypassing the Q/DQ pairs on their
   inputs) brings the outputs back towards FP32 on a few ranking images: runs
   of neighbouring nodes first, then each node of the best run alone (`rank_nodes`). A
   continuous distance in what the gate reads ranks (`gates.ranking_distance`: class scores
   and boxes of the anchors that hold objects, for a detector), because a gate figure on a
   few images cannot tell most single reverts apart;
3. revert nodes in rank order, the fewest that make the gate hold: counts 1, 2, 4, ... are
   tried until one holds, then bisected, so a search costs a handful of gate runs.

Reverting bypasses every Q/DQ pair a node reads: its activation's and its weight's (ModelOpt
quantizes a float weight with a Q/DQ pair in the file), so TensorRT runs the node in float
with its original weights. The report lists what was reverted and the gate's figure
after each tried count; a bound on time ends the search in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..atomic import STORE_FORMAT, reusable_stored_json, write_stored_json
from ..console import Progress, info, warn
from ..errors import StageError, require
from ..gates import output_distance
from .cpu_form import computed_weights, drop_unread, float16_tensors, with_fed_weights, with_float32_quantize_inputs

ALGORITHM_VERSION = 5  # bump when the search changes, so stored exclusion lists are not reused


@dataclass(frozen=True)
class Control:
    """What the search must reach and what it may spend."""

    task: str  # the quantize task, for messages
    max_drop: float  # the gate's figure against FP32 must be at least 1 - max_drop
    ranking_images: int  # verification inferences used to rank nodes
    seconds: float  # the time bound


def activation_quantized_nodes(model) -> list[str]:
    """Names of the nodes that read an input (an activation, and with it a weight) through a
    QuantizeLinear -> DequantizeLinear pair, in graph order: the nodes whose INT8 can be
    reverted."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(_qdq_source(producer, name) is not None for name in node.input):
            names.append(node.name)
    return names


def _qdq_source(producer: dict, tensor: str) -> str | None:
    """The float tensor behind `tensor` when `tensor` is DQ(Q(x)), else None."""
    dq = producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def reverted(model, names: list[str]):
    """A copy of `model` in which the nodes `names` read their inputs (activations and weights)
    unquantized. Other readers of the same Q/DQ pair keep it; pairs nobody reads any more are
    removed."""
    onnx = require("onnx", "core")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    producer = {out: node for node in result.graph.node for out in node.output}
    wanted = set(names)
    for node in result.graph.node:
        if node.name in wanted:
            for slot, tensor in enumerate(node.input):
                source = _qdq_source(producer, tensor)
                if source is not None:
                    node.input[slot] = source
    drop_unread(result, ("QuantizeLinear", "DequantizeLinear"))
    return result


def conv_int8_share(model) -> float:
    """The share of Conv nodes that still read a quantized activation."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    quantized = set(activation_quantized_nodes(model))
    return sum(name in quantized for name in convs) / len(convs) if convs else 1.0


Distance = Callable[[list[dict], list[dict]], float]  # (reference outputs, candidate outputs) -> how far


def control(model, feeds: list[dict], reference: list[dict], judge: Callable[[list[dict]], dict],
            spec: Control, distance: Distance = output_distance) -> tuple[object, dict]:
    """(the model with the fewest nodes reverted for `judge` to hold, the report). `judge`
    takes a candidate's outputs on `feeds` and returns the gate's JSON (value, status);
    `distance` ranks the reverts."""
    started = time.monotonic()
    floor = 1.0 - spec.max_drop
    run = _runner(model)

    def gate(candidate) -> dict:
        if time.monotonic() - started > spec.seconds:
            raise StageError(f"{spec.task}: calibration.accuracy: no revert count met the floor {floor:g} within "
                             f"{spec.seconds:g} s; raise calibration.accuracy.timeout or max_drop")
        return judge(run(candidate, feeds))

    def holds(result: dict) -> bool:
        return result["value"] is not None and result["value"] >= floor and result["status"] != "failed"

    first = gate(model)
    report = {"max_drop": spec.max_drop, "floor": floor, "before": _figures(first), "steps": [], "reverted": []}
    if first["value"] is None:  # e.g. FP32 detects nothing on the verification images
        warn(f"{spec.task}: calibration.accuracy has nothing to hold INT8 to ({first['status']}); nothing reverted")
        return model, _finish(report, model, started)
    if holds(first):
        info(f"{spec.task}: INT8 holds the accuracy floor with nothing reverted ({first['value']:.3f} >= {floor:g})")
        return model, _finish(report, model, started)
    ranked = rank_nodes(model, feeds[:spec.ranking_images], reference[:spec.ranking_images], spec.task, run,
                        distance)
    count, result = _fewest(model, ranked, gate, holds, report["steps"], spec.task)
    if count is None:
        raise StageError(f"{spec.task}: calibration.accuracy: even with all {len(ranked)} quantized nodes reverted "
                         f"the gate gives {result['value']:.3f} < {floor:g}; the FP32 model itself misses the floor "
                         "or the gate's other floors fail (see check.json)")
    chosen = reverted(model, ranked[:count])
    report["reverted"] = ranked[:count]
    report["after"] = _figures(result)
    report["largest_fall"] = round(largest_fall(report), 4)
    info(f"{spec.task}: reverted {count} of {len(ranked)} quantized nodes to float: {result['value']:.3f} >= {floor:g}")
    if report["largest_fall"] >= spec.max_drop / 2:
        warn(f"{spec.task}: the gate's figure fell by {report['largest_fall']:.3f} when more nodes were reverted: on "
             "these verification images the floor is within the figure's noise, so which count holds is partly "
             "chance; more verification images (verify.images) or a larger max_drop make it stable")
    if 2 * count > len(ranked):
        warn(f"{spec.task}: most of the model now runs in float; another calibration.method, more calibration "
             "images, or more verification images (one lost detection of a few is a large drop) may keep more INT8")
    return chosen, _finish(report, chosen, started)


def largest_fall(report: dict) -> float:
    """How far the gate's figure fell, at most, when more nodes were reverted. Reverting brings a
    model closer to FP32, so with a noiseless gate the figure would not fall; on ~100
    detections it moves by a person or two either way (0.01 to 0.02 at 640 px on both people
    sets, docs/int8.md), and a fall that large means the floor is decided by that noise."""
    points = sorted([(0, report["before"]["value"])] + [(step["reverted"], step["value"]) for step in report["steps"]
                                                         if step["value"] is not None])
    fall, best = 0.0, -math.inf
    for _, value in points:
        fall, best = max(fall, best - value), max(best, value)
    return fall


def _fewest(model, ranked: list[str], gate, holds, steps: list, task: str) -> tuple[int | None, dict]:
    """The smallest count of top-ranked nodes whose revert holds (1, 2, 4, ... then bisect)."""
    tried: dict[int, dict] = {}
    # doubling tries at most ceil(log2 n) + 1 counts, bisecting the last gap at most ceil(log2 n) - 1
    most = max(1, 2 * math.ceil(math.log2(max(len(ranked), 1))))

    def attempt(count: int) -> bool:
        if count not in tried:
            tried[count] = gate(reverted(model, ranked[:count]))
            steps.append({"reverted": count, **_figures(tried[count])})
            info(f"{task}: gate run {len(tried)} of at most {most}: {count} reverted -> "
                 f"{tried[count]['figure']} {tried[count]['value']:.3f}")
        return holds(tried[count])

    low, high = 0, 1
    while not attempt(high):
        if high == len(ranked):
            return None, tried[high]
        low, high = high, min(2 * high, len(ranked))
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if attempt(middle) else (middle, high)
    return high, tried[high]


def rank_nodes(model, feeds: list[dict], reference: list[dict], task: str, run,
               distance: Distance = output_distance) -> list[str]:
    """Quantized nodes, the ones whose revert brings the outputs closest to FP32 first.

    Each try costs a model, a session and an inference per ranking image (about 1 s for a
    640 px YOLOv8s on 2 cores), so trying every node alone cost most of the search. Instead
    the nodes, in graph order, are tried in about sqrt(n) runs of about sqrt(n) neighbours;
    only the nodes of the best run are then tried alone and lead the ranking, the other runs
    follow in their order: about 2 sqrt(n) tries (19 for YOLOv8's 88 nodes). Trying the
    nodes of the 3 best runs alone (37 tries) reverted as many nodes on the people demo: 1 at
    640 px from `percentile: 99.999` (search 66 s against 48), 2 at 320 px from `minmax` (38 s
    against 25), 27 at 640 px from `minmax` (where ten gate runs take most of the time)."""
    names = activation_quantized_nodes(model)

    def distance_with(nodes: list[str]) -> float:
        return distance(reference, run(reverted(model, nodes), feeds))

    size = max(1, math.isqrt(len(names)))
    runs = [names[i:i + size] for i in range(0, len(names), size)]
    info(f"{task}: ranking {len(names)} quantized nodes in {len(runs)} runs of {size} on {len(feeds)} images")
    run_scores = _scored(runs, distance_with, f"{task}: ranking runs of nodes")
    best, *others = sorted(range(len(runs)), key=lambda i: (run_scores[i], i))
    alone = dict(zip(runs[best], _scored([[name] for name in runs[best]], distance_with,
                                         f"{task}: ranking the best run's nodes alone")))
    return sorted(runs[best], key=lambda name: (alone[name], names.index(name))) + [
        name for i in others for name in runs[i]]


def _scored(tries: list[list[str]], score: Callable[[list[str]], float], description: str) -> list[float]:
    """`score` of each try, with console progress: tens of tries of an inference per ranking
    image each were minutes without a word at default verbosity (issue 14)."""
    scores = []
    with Progress(description, len(tries), unit="tries") as progress:
        for nodes in tries:
            scores.append(score(nodes))
            progress.advance()
    return scores


def _runner(model) -> Callable[[object, list[dict]], list[dict]]:
    """Runs a reverted copy of `model` in the check's CPU form, its weights fed (bit-identical,
    cpu_form.with_fed_weights). Reverting removes Q/DQ nodes but changes no tensor's type or
    weight, so `model`'s float16 tensors and dequantized weights are found once."""
    from ..stages.reference import run_onnxruntime

    float16 = float16_tensors(model)
    weights = computed_weights(with_float32_quantize_inputs(model, float16)[0])

    def run(candidate, feeds: list[dict]) -> list[dict]:
        form, fed = with_fed_weights(with_float32_quantize_inputs(candidate, float16)[0], weights)
        return run_onnxruntime(form.SerializeToString(), [{**feed, **fed} for feed in feeds])

    return run


def _figures(result: dict) -> dict:
    details = result.get("details", {})
    return {"figure": result["figure"], "value": result["value"], "status": result["status"],
            **{k: details[k] for k in ("recall", "precision") if k in details}}


def _finish(report: dict, model, started: float) -> dict:
    return {**report, "conv_int8_share": round(conv_int8_share(model), 4),
            "seconds": round(time.monotonic() - started, 2), "algorithm": ALGORITHM_VERSION}


@dataclass(frozen=True)
class AccuracyJob:
    """Everything the quantize stage needs to hold its Q/DQ model to the task gate."""

    control: Control
    reference_inputs: Path  # the reference task's Polygraphy JSON: verification inputs
    reference_outputs: Path  # ... and FP32 outputs
    gate: dict  # GateSetting fields but floor and image_hw: task, head, conf, iou, min_recall, min_precision
    store_dir: Path  # exclusion lists kept by content key, reused only on an exact match


def accuracy_key(quantized_from: bytes, job: AccuracyJob) -> str:
    """sha256 of everything the exclusion list depends on: what the Q/DQ model was made from
    (`quantized_from`: ModelOpt's output bytes differ from one process to the next, its
    inputs do not), the reference inputs and outputs, the control's settings and this
    module's algorithm."""
    digest = hashlib.sha256()
    # The store format is part of the key: lists stored without a sha256 record (before
    # STORE_FORMAT) are never opened, so they cannot fail a build; they are searched again.
    for part in (quantized_from, job.reference_inputs.read_bytes(), job.reference_outputs.read_bytes(),
                 json.dumps({"max_drop": job.control.max_drop, "ranking": job.control.ranking_images,
                             "gate": job.gate, "algorithm": ALGORITHM_VERSION, "store": STORE_FORMAT},
                            sort_keys=True).encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def controlled(model, job: AccuracyJob, quantized_from: bytes) -> tuple[object, dict]:
    """(the model with the stored or newly searched exclusion list applied, the report);
    `quantized_from` identifies what the Q/DQ model was made from (see accuracy_key)."""
    key = accuracy_key(quantized_from, job)
    stored = job.store_dir / f"accuracy-{key[:24]}.json"
    # a damaged store (a power loss can leave it empty) is searched again and replaced
    report = reusable_stored_json(stored, lambda payload: _stored_problem(payload, key), job.control.task,
                                  "accuracy-control result", "searching again")
    if report is not None:
        info(f"{job.control.task}: reusing the exclusion list found earlier for the same Q/DQ model, reference "
             f"and settings ({stored.name}): {len(report['reverted'])} nodes reverted")
        return reverted(model, report["reverted"]), {**report, "reused": True}
    from ..gates import GateSetting
    from ..stages.reference import input_hw, load_reference

    feeds, reference = load_reference(job.reference_inputs, job.reference_outputs)
    setting = GateSetting(**job.gate, floor=1.0 - job.control.max_drop, image_hw=input_hw(feeds))
    result, report = gated_control(model, feeds, reference, setting, job.control)
    report = {**report, "key": key}
    write_stored_json(stored, report)
    return result, {**report, "reused": False}


def gated_control(model, feeds: list[dict], reference: list[dict], setting, spec: Control) -> tuple[object, dict]:
    """`control` judged by the task gate `setting` (a gates.GateSetting) describes, its reverts
    ranked by that gate's distance: the quantize stage's search, also run by the INT8 bench."""
    from ..gates import ranking_distance, run_gate

    return control(model, feeds, reference, lambda outputs: run_gate(reference, outputs, setting).as_json(), spec,
                   lambda refs, outputs: ranking_distance(refs, outputs, setting))


def _stored_problem(report: dict, key: str) -> str | None:
    if report.get("key") != key:
        return "it was stored for other inputs"
    reverted_ = report.get("reverted")
    if not (isinstance(reverted_, list) and all(isinstance(name, str) for name in reverted_)):
        return "its list of reverted nodes is not a list of node names"
    return None
