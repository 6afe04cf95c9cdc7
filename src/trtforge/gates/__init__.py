"""Task-aware accuracy gates: judge a variant by what its outputs mean, not by raw tensors.

A reduced-precision engine (FP16, INT8) can drift on raw tensors in ways that do not matter
(a background score moving from 0.001 to 0.003) and be wrong in ways a tensor statistic hides
(one box losing its class, a mask going empty). So each task decodes both outputs the way
Ultralytics' predictor does and scores the variant against the FP32 reference taken as ground
truth, with Ultralytics' own metric code (see `gates.matching`).

One gate per `verify.task` (recipe.VERIFY_TASKS), registered by module name and imported on
first use: this package imports without torch or Ultralytics. Every gate returns a GateResult;
check.py writes `GateResult.as_json()` into check.json as `gate`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

# The variant's predictions are decoded down to this score, as Ultralytics' validators decode
# theirs (conf 0.001), so that AP integrates over the whole confidence range: a detection whose
# score moved from 0.26 in FP32 to 0.24 in INT8 costs a little AP, not the whole object, as it
# would if both sides were cut at verify.conf 0.25 (measured on a trained YOLOv8 and the demo
# photos: INT8 mAP50 0.21 with both sides cut, recall 3/8). Precision and recall are still
# counted at verify.conf, the operating point.
CANDIDATE_CONF = 0.001

# verify.task -> the module whose `judge` gates it; raw has no task-aware gate.
GATES = {
    "detect": "trtforge.gates.detect",
    "segment": "trtforge.gates.segment",
    "classify": "trtforge.gates.classify",
    "pose": "trtforge.gates.pose",
    "obb": "trtforge.gates.obb",
}

Outputs = list[dict[str, Any]]  # per inference: output name -> array [B, ...], as Polygraphy stores them


class LayoutError(ValueError):
    """The outputs are not laid out as verify.task / verify.head says (one line, no traceback)."""


class DecodeCutShort(RuntimeError):
    """A decoder returned fewer detections than its input holds: a figure computed from them
    would call a complete variant lossy (or a lossy one fine), so the gate refuses to judge."""


@dataclass(frozen=True)
class GateSetting:
    """What a gate needs besides the outputs: the recipe's verify section and its check floors."""

    task: str
    head: str
    conf: float  # NMS score threshold, both sides
    iou: float  # NMS IoU threshold, both sides
    floor: float | None  # check.min_agreement_vs_fp32; None for task raw
    image_hw: tuple[int, int]  # the model input's height and width (normalised boxes are scaled by it)
    min_recall: float | None = None  # check.min_recall_vs_fp32 (instance gates)
    min_precision: float | None = None  # check.min_precision_vs_fp32 (instance gates)

    def for_candidate(self) -> "GateSetting":
        """The setting the variant's outputs are decoded with (see CANDIDATE_CONF)."""
        return replace(self, conf=min(self.conf, CANDIDATE_CONF))


@dataclass(frozen=True)
class GateResult:
    """One shape for every task, so reports and tables need not know the task."""

    task: str
    head: str
    figure: str | None  # what `value` measures, e.g. "mAP50", "mask mAP50", "top-1", "OKS mAP50"
    value: float | None  # None when skipped
    floor: float | None
    status: str  # "passed" | "failed" | "skipped: <why>"
    details: dict = field(default_factory=dict)
    floors: dict = field(default_factory=dict)  # the floors of figures in `details`, e.g. {"recall": 0.97}

    def as_json(self) -> dict:
        return {"task": self.task, "head": self.head, "figure": self.figure, "value": self.value,
                "floor": self.floor, "status": self.status, "details": self.details, "floors": self.floors}


class Gate(Protocol):
    def __call__(self, reference: Outputs, candidate: Outputs, setting: GateSetting) -> GateResult: ...


def run_gate(reference: Outputs, candidate: Outputs, setting: GateSetting) -> GateResult:
    """The verdict of verify.task's gate; raises LayoutError if the outputs do not fit the task."""
    if setting.task not in GATES:
        return GateResult(setting.task, setting.head, None, None, None,
                          f"skipped: verify.task {setting.task} has no task-aware gate (raw tensors only)")
    judge: Gate = importlib.import_module(GATES[setting.task]).judge
    return judge(reference, candidate, setting)


def ranking_distance(reference: Outputs, candidate: Outputs, setting: GateSetting) -> float:
    """How far `candidate` is from `reference` in what verify.task's gate reads; accuracy
    control ranks reverts by it (trtforge.quant.accuracy), since a gate's figure on a few
    images cannot tell most single reverts apart. A gate module may define `distance` for the
    heads it can read (None otherwise); the rest are measured by `output_distance`."""
    measured = getattr(importlib.import_module(GATES[setting.task]), "distance", None) if setting.task in GATES else None
    value = measured(reference, candidate, setting) if measured is not None else None
    return output_distance(reference, candidate) if value is None else value


def output_distance(reference: Outputs, candidate: Outputs) -> float:
    """Every output both sides have: its mean absolute difference over the reference's mean
    magnitude, summed over outputs and inferences."""
    import numpy as np

    return float(sum(np.mean(np.abs(np.asarray(out[name], np.float64) - ref[name])) / (np.mean(np.abs(ref[name])) + 1e-12)
                     for ref, out in zip(reference, candidate) for name in ref if name in out))


def verdict(setting: GateSetting, figure: str, value: float, details: dict, skipped: str | None = None,
            floors: dict[str, float | None] | None = None) -> GateResult:
    """A GateResult holding `value` to the floor and each figure of `details` named in `floors`
    to its own (a None floor is not held); `skipped` (a reason) overrides the verdict."""
    floors = {name: floor for name, floor in (floors or {}).items() if floor is not None}
    if skipped:
        return GateResult(setting.task, setting.head, figure, None, setting.floor, f"skipped: {skipped}", details,
                          floors)
    passed = value >= setting.floor and all(details[name] >= floor for name, floor in floors.items())
    return GateResult(setting.task, setting.head, figure, float(value), setting.floor,
                      "passed" if passed else "failed", details, floors)


def instance_verdict(setting: GateSetting, figure: str, agreement: dict, similarity: str) -> GateResult:
    """The verdict of an instance-level gate from `matching.agreement`'s figures: its mAP50, its
    recall and its precision held to their floors, the rest as details (`similarity` names the
    measure, e.g. mask_iou). mAP alone let a variant that lost 4 of 9 people pass (recall 0.56):
    AP integrates over confidence, so it forgives what the operating point loses. A reference
    without a single instance is skipped: nothing to agree on is not agreement."""
    details = dict(agreement)
    value = details.pop("map50")
    details[f"mean_matched_{similarity}"] = details.pop("mean_matched_similarity")
    skipped = None if details["reference_detections"] else (
        f"the FP32 reference detects nothing at verify.conf {setting.conf:g} (untrained weights, or verify.conf "
        "too high)")
    return verdict(setting, figure, value, details, skipped,
                   floors={"recall": setting.min_recall, "precision": setting.min_precision})


def stacked(outputs: Outputs, name: str):
    """Output `name` of every inference in one array, first axis = image (each inference is a
    batch), upcast to float32 so that an FP16 variant goes through the reference's arithmetic."""
    import numpy as np

    return np.concatenate([np.asarray(inference[name], np.float32) for inference in outputs])


def single_output(outputs: Outputs, what: str) -> str:
    """The name of the one output a single-output task reads, or a LayoutError."""
    names = list(outputs[0])
    if len(names) != 1:
        raise LayoutError(f"expected one output ({what}), the model has {len(names)}: {', '.join(names)}")
    return names[0]
