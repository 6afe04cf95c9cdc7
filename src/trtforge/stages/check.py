"""check: does a variant stay close enough to the FP32 reference? A failed gate fails the build.

Three comparisons, all on the reference's fixed real inputs:

1. the variant's precision-transformed ONNX (AutoCast FP16, Q/DQ INT8; the surgered ONNX
   for FP32) under ONNX Runtime against the reference, per output, through Polygraphy's
   comparator with the recipe's atol / rtol / error statistic. This runs without a GPU.
2. the built engine through Polygraphy's TensorRT runner, when TensorRT's Python package
   is importable and the engine exists; otherwise recorded as `skipped: <reason>`, never
   as passed.
3. for detection recipes, the task-aware gate: both outputs decoded and NMS'd, the
   variant's detections matched to the FP32 detections (same class, IoU >= 0.5), and the
   agreement mAP50 held to the recipe's floor. Raw INT8 differences on box coordinates
   are large by nature; this is the figure users care about.

The report is written whether the gate passes or not: check.json (machine), a table on
the terminal, and check.png (error distribution per output, detection agreement).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_output, write_text_atomic
from ..errors import StageError, require
from ..recipe import CheckSpec, VerifySpec
from .reference import run_onnxruntime


@dataclass(frozen=True)
class CheckJob:
    task: str
    variant_onnx: Path
    engine: Path  # may not exist (a host without TensorRT)
    reference_inputs: Path
    reference_outputs: Path
    check: CheckSpec
    verify: VerifySpec
    report_json: Path
    report_png: Path


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def run_check(job: CheckJob) -> None:
    """Compare, write the report, and raise a one-line StageError if a gate failed."""
    require("polygraphy", "core")
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # the report below says what matters

    feeds = load_json(str(job.reference_inputs))
    (_, reference), = RunResults.load(str(job.reference_outputs)).items()
    reference = [dict(iteration) for iteration in reference]
    onnx_outputs = run_onnxruntime(job.variant_onnx, feeds)
    report = {
        "task": job.task,
        "tolerances": {"atol": job.check.atol, "rtol": job.check.rtol, "statistic": job.check.statistic},
        "onnx": {"model": job.variant_onnx.name, "outputs": compare_outputs(reference, onnx_outputs, job.check)},
        "engine": _engine_comparison(job, feeds, reference),
    }
    if job.verify.task == "detect" and job.verify.head == "yolo":
        report["detection"] = _detection_gate(reference, onnx_outputs, job)
    failures = gate_failures(report)
    report["passed"] = not failures
    write_text_atomic(job.report_json, json.dumps(report, indent=2, sort_keys=True) + "\n")
    _plot(reference, onnx_outputs, report, job.report_png)
    _print_table(report)
    if failures:
        raise StageError(f"{job.task}: {failures[0]} (report: {job.report_json})")


def compare_outputs(reference: list[dict], candidate: list[dict], spec: CheckSpec) -> dict:
    """Per output: Polygraphy's verdict and error statistics over all iterations."""
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.comparator.compare import SimpleCompareFunc

    results = RunResults()
    results.add(reference, runner_name="reference")
    results.add(candidate, runner_name="variant")
    compare = SimpleCompareFunc(atol=spec.atol, rtol=spec.rtol, check_error_stat=spec.statistic)
    (accuracy,) = Comparator.compare_accuracy(results, compare_func=compare)  # one compare function
    (per_iteration,) = accuracy.values()  # one runner pair
    outputs: dict[str, dict] = {}
    for iteration in per_iteration:
        for name, result in iteration.items():
            entry = outputs.setdefault(name, {"passed": True})
            entry["passed"] = entry["passed"] and bool(result)
            if not hasattr(result, "max_absdiff"):  # Polygraphy's plain False: the shapes differ
                entry["shape_mismatch"] = True
                continue
            for stat in ("max", "mean", "median"):
                for kind in ("abs", "rel"):
                    key = f"{stat}_{kind}diff"
                    entry[key] = max(entry.get(key, 0.0), float(getattr(result, key)))
    return outputs


def gate_failures(report: dict) -> list[str]:
    """One line per failed comparison, most specific first."""
    tol = report["tolerances"]
    failures = []
    for where in ("onnx", "engine"):
        for name, out in report[where].get("outputs", {}).items():
            if out.get("shape_mismatch"):
                failures.append(f"{where} output '{name}': its shape differs from the reference's")
            elif not out["passed"]:
                stat = tol["statistic"]
                failures.append(f"{where} output '{name}': {stat} abs error {out[f'{stat}_absdiff']:.4g} "
                                f"exceeds atol {tol['atol']:g} and {stat} rel error "
                                f"{out[f'{stat}_reldiff']:.4g} exceeds rtol {tol['rtol']:g}")
    detection = report.get("detection")
    if detection and detection["status"] == "failed":
        failures.append(f"detection agreement with FP32: mAP50 {detection['map50']:.3f} is below "
                        f"min_map50_vs_fp32 {detection['min_map50_vs_fp32']:g}")
    return failures


def _engine_comparison(job: CheckJob, feeds: list[dict], reference: list[dict]) -> dict:
    if not tensorrt_available():
        return {"status": "skipped: TensorRT not installed"}
    if not job.engine.is_file():
        return {"status": "skipped: no engine built on this host"}
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    with TrtRunner(EngineFromBytes(BytesFromPath(str(job.engine)))) as runner:
        outputs = [{k: v.copy() for k, v in runner.infer(feed).items()} for feed in feeds]
    compared = compare_outputs(reference, outputs, job.check)
    return {"status": "passed" if all(o["passed"] for o in compared.values()) else "failed", "outputs": compared}


def _detection_gate(reference: list[dict], candidate: list[dict], job: CheckJob) -> dict:
    from ..detection import decode_yolo, detection_agreement

    def detections(outputs: list[dict]) -> list:
        return [d for it in outputs for d in decode_yolo(next(iter(it.values())), job.verify.conf, job.verify.iou)]

    result = detection_agreement(detections(reference), detections(candidate))
    result["min_map50_vs_fp32"] = job.check.min_agreement_vs_fp32
    if result["reference_detections"] == 0:  # nothing to agree on: say so, never "passed"
        result["status"] = (f"skipped: the FP32 reference detects nothing at verify.conf "
                            f"{job.verify.conf:g} (untrained weights, or conf too high)")
    else:
        result["status"] = "passed" if result["map50"] >= job.check.min_agreement_vs_fp32 else "failed"
    return result


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['task']}: {'PASSED' if report['passed'] else 'FAILED'}")
    for column in ("comparison", "output", "max abs", "mean abs", "median abs", "verdict"):
        table.add_column(column)
    skipped = []
    for where in ("onnx", "engine"):
        section = report[where]
        if "outputs" not in section:
            table.add_row(where, "-", "", "", "", "skipped")
            skipped.append(f"{where}: {section['status'].removeprefix('skipped: ')}")
        for name, out in section.get("outputs", {}).items():
            stats = [f"{out[f'{s}_absdiff']:.4g}" if f"{s}_absdiff" in out else "shape!" for s in ("max", "mean", "median")]
            table.add_row(where, name, *stats, "passed" if out["passed"] else "FAILED")
    if "detection" in report:
        d = report["detection"]
        table.add_row("detection", f"P {d['precision']:.3f} R {d['recall']:.3f}", f"mAP50 {d['map50']:.3f}",
                      f">= {d['min_map50_vs_fp32']:g}", f"{d['matched']}/{d['reference_detections']}",
                      d["status"].split(":")[0])
        if d["status"].startswith("skipped"):
            skipped.append(f"detection: {d['status'].removeprefix('skipped: ')}")
    table.caption = "; ".join(f"skipped {s}" for s in skipped) or None
    Console(stderr=True).print(table)


def _plot(reference: list[dict], candidate: list[dict], report: dict, out: Path) -> None:
    """Error distribution per output (log counts) and, for detectors, the agreement bars."""
    np = require("numpy", "core")
    matplotlib = require("matplotlib", "yolo")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(reference[0])
    panels = len(names) + ("detection" in report)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        pairs = [(r[name], c[name]) for r, c in zip(reference, candidate) if r[name].shape == c[name].shape]
        if pairs:
            ax.hist(np.concatenate([np.abs(c - r).ravel() for r, c in pairs]), bins=100, log=True)
        else:
            ax.text(0.5, 0.5, "shape differs from the reference", ha="center", transform=ax.transAxes)
        ax.set(title=f"{name}: |variant - FP32|", xlabel="absolute error", ylabel="count")
    if "detection" in report:
        d, ax = report["detection"], axes[0][-1]
        ax.bar(["precision", "recall", "mAP50"], [d["precision"], d["recall"], d["map50"]])
        ax.axhline(d["min_map50_vs_fp32"], color="red", linestyle="--", label="mAP50 floor")
        ax.set(ylim=(0, 1.05), title=f"detections vs FP32 ({d['status'].split(':')[0]})")
        ax.legend()
    fig.suptitle(report["task"])
    fig.tight_layout()
    with atomic_output(out) as temp:
        fig.savefig(temp, format="png")
    plt.close(fig)
