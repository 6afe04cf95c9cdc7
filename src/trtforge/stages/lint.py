"""lint: the parser preflight of one variant, before any trtexec call (see preflight.py).

A variant is checked with the ONNX its engine would be built from on each generation
(surgered, AutoCast or Q/DQ: the renderer's choice). On a host with trtexec only that
trtexec's generation matters, and an error there fails the task, so `engine:` never starts
on a model the parser will reject. On a laptop without trtexec the target is unknown:
every generation is checked, each one that cannot parse the model gets a warning naming
the node, and the task fails only when no generation can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..console import warn
from ..errors import StageError
from ..preflight import run_preflight


@dataclass(frozen=True)
class LintTarget:
    generation: str
    onnx: Path | None  # None: the renderer refuses this variant on this generation
    report: Path
    refused: str = ""  # the renderer's reason when onnx is None


@dataclass(frozen=True)
class LintJob:
    task: str
    targets: tuple[LintTarget, ...]
    plugin_libraries: bool
    strict: bool  # one generation (the host's trtexec): any error fails the task


def lint_variant(job: LintJob) -> None:
    """Write one preflight report per generation; fail as described in the module docstring."""
    problems = {t.generation: _check(job, t) for t in job.targets}
    failing = {g: p for g, p in problems.items() if p}
    if job.strict and failing:
        raise StageError(next(iter(failing.values())))
    if failing and len(failing) == len(problems):
        raise StageError(f"{job.task}: no TensorRT generation can build this variant; "
                         + "; ".join(f"{g}: {p.removeprefix(job.task + ': ')}" for g, p in failing.items()))
    for generation, problem in failing.items():
        warn(f"{job.task}: TensorRT {generation} cannot build it: {problem.removeprefix(job.task + ': ')}")


def _check(job: LintJob, target: LintTarget) -> str | None:
    """The one-line problem of `target`, or None when its parser takes the model."""
    if target.onnx is None:
        write_text_atomic(target.report, json.dumps({"generation": target.generation, "refused": target.refused},
                                                    indent=1) + "\n")
        return f"{job.task}: {target.refused}"
    try:
        run_preflight(target.onnx, target.generation, target.report, job.task,
                      plugin_libraries=job.plugin_libraries)
    except StageError as exc:
        return str(exc)
    return None
