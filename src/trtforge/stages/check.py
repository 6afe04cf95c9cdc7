"""check: does a variant stay close enough to the FP32 reference? A failed gate fails the build.

Three comparisons, all on the reference's fixed real inputs:

1. the variant's precision-transformed ONNX (AutoCast FP16, Q/DQ INT8; the surgered ONNX
   for FP32) under ONNX Runtime against the reference, per output, through Polygraphy's
   comparator with the recipe's atol / rtol / error statistic. This runs without a GPU.
2. the built engine through Polygraphy's TensorRT runner, when TensorRT's Python package
   is importable and the engine exists; otherwise recorded as `skipped: <reason>`, never
   as passed.
3. the task-aware gate of verify.task (trtforge.gates): both outputs decoded as Ultralytics'
   predictor decodes them (detections, masks, keypoints, rotated boxes, class rankings), the
   variant's matched against FP32's, and the task's figure (mAP50, mask mAP50, OKS mAP50,
   OBB mAP50, top-1) held to check.min_agreement_vs_fp32, and for instance tasks recall and
   precision held to check.min_recall_vs_fp32 / min_precision_vs_fp32. Raw INT8 differences
   on box coordinates are large by nature; these are the figures users care about.
4. with verify.labels, the FP32 reference's boxes and the variant's scored against the labels
   (gates/labels.py: P, R, mAP50, mAP50-95 as `yolo val` computes them), on the reference's
   images in the reference's order (its images.json). Reported, not gated: how good FP32 is
   is the model's business; how much a variant loses is the gate's.

The report is written whether the gate passes or not: check.json (machine), a table on
the terminal, and check.png (error distribution per output, the gate's figures). For an
INT8 variant verified on some of its own calibration images (same bytes, same view), a
warning says so and check.json keeps them as `calibration_overlap`: the ranges were fitted
to those images, so accuracy measured on them flatters INT8.
"""

from __future__ import annotations

import importlib.util
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_output, write_text_atomic
from ..console import warn
from ..errors import StageError, require
from ..gates import GateSetting
from ..gates.labels import LabelSet
from ..images import ImageRef, list_image_set, select_images, sha256_hex, view_of
from ..quant.cpu_form import cpu_session_model
from ..recipe import CheckSpec, VerifySpec
from .reference import as_float32, input_hw, load_reference, run_onnxruntime


@dataclass(frozen=True)
class CalibrationSet:
    """An INT8 variant's calibration images as its recipe selects them (calibration.images,
    count and fraction, under the project root): the check lists them only to warn when it
    verifies on them, so task generation pays nothing for it."""

    root: Path
    images: Path
    count: int | None
    fraction: float | None

    @classmethod
    def of(cls, root: Path, variant) -> CalibrationSet | None:  # noqa: ANN001 - a recipe Variant
        spec = variant.calibration
        return None if spec is None else cls(root, spec.images, spec.count, spec.fraction)


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
    labels: LabelSet | None = None  # verify.labels' files for the reference's images
    reference_images: Path | None = None  # the reference's images.json: their order (read with labels)
    calibration: CalibrationSet | None = None  # an INT8 variant's: verifying on them is flagged


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def quiet_polygraphy() -> None:
    """Polygraphy's logger says only what the check's report does not: warnings and worse,
    without colours (with them, its first warning prints an install hint for the `colored`
    module on stdout, which doit replays after the check's one-line failure)."""
    require("polygraphy", "core")
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING
    G_LOGGER.colors = False


def run_check(job: CheckJob) -> None:
    """Compare, write the report, and raise a one-line StageError if a gate failed."""
    quiet_polygraphy()

    feeds, reference = load_reference(job.reference_inputs, job.reference_outputs)
    model, runtime = cpu_session_model(job.variant_onnx)
    onnx_outputs = run_onnxruntime(model, feeds)
    report = {
        "task": job.task,
        "tolerances": {"atol": job.check.atol, "rtol": job.check.rtol, "statistic": job.check.statistic},
        "onnx": {"model": job.variant_onnx.name, **runtime, **_raw_comparison(reference, onnx_outputs, job)},
        "engine": _engine_comparison(job, feeds, reference),
        "gate": _task_gate(reference, onnx_outputs, feeds, job),
    }
    if job.labels is not None:
        report["labels"] = _labels_section(reference, onnx_outputs, feeds, job)
    overlap = calibration_overlap(job)
    if overlap:
        report["calibration_overlap"] = overlap
    failures = gate_failures(report)
    report["passed"] = not failures
    write_text_atomic(job.report_json, json.dumps(report, indent=2, sort_keys=True) + "\n")
    _plot(reference, onnx_outputs, report, job.report_png)
    _print_table(report)
    if overlap:
        shared, listed = overlap["images"], ", ".join(overlap["images"][:3])
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        warn(f"{job.task}: {len(shared)} of the {overlap['verification_images']} verification images are also "
             f"calibration images ({listed}{more}); accuracy on them flatters INT8: verify on other images")
    if failures:
        raise StageError(f"{job.task}: {failures[0]} (report: {job.report_json})")


def calibration_overlap(job: CheckJob) -> dict | None:
    """{"images": the verification images that are also calibration images, "verification_images":
    how many there are}, or None when none is. An image counts when its bytes and its view are
    the same, under whatever name or folder (a copied file counts); only calibration files
    as large as some verification file are read. Both sets are selected as the reference and
    calib stages select them; one that cannot be listed is theirs to report, not this check's."""
    spec = job.calibration
    if spec is None:
        return None
    try:
        verification = select_images(list_image_set(spec.root / job.verify.images, spec.root), job.verify.count, None)
        calibration = select_images(list_image_set(spec.root / spec.images, spec.root), spec.count, spec.fraction)
        sizes = {ref.path.stat().st_size for ref in verification}
        calibrated = {_identity(ref) for ref in calibration if ref.path.stat().st_size in sizes}
        shared = [ref.name for ref in verification if _identity(ref) in calibrated]
    except (StageError, OSError):
        return None
    return {"images": shared, "verification_images": len(verification)} if shared else None


def _identity(ref: ImageRef) -> tuple[str, tuple[str, ...]]:
    """What the model is fed from an image: its bytes and the view taken of them."""
    return sha256_hex(ref.path.read_bytes()), view_of(ref.name)


# Heads whose outputs are ranked lists of detections (top-k by score): row i of FP32 and row i
# of a variant need not be the same object once a score moves, so element-wise statistics say
# nothing there (measured: yolo26n INT8, median error 36 px on rows of agreeing detections).
RANKED_HEADS = ("end2end", "rtdetr", "nms")


def _raw_comparison(reference: list[dict], candidate: list[dict], job: CheckJob) -> dict:
    """{"outputs": per-output comparison}, or {"status": "skipped: ..."} for a ranked head,
    where only the gate, which matches detections, can compare (the `nms` pass even replaces
    the reference's raw outputs, taken before surgery, with its own four)."""
    if job.verify.head in RANKED_HEADS:
        return {"status": f"skipped: head {job.verify.head} outputs ranked detections ({', '.join(candidate[0])}), "
                          "not comparable row by row; the gate matches them"}
    return {"outputs": compare_outputs(reference, candidate, job.check)}


def _nms_replaced_head(reference: list[dict], candidate: list[dict], job: CheckJob) -> bool:
    return job.verify.head == "nms" and not set(reference[0]) & set(candidate[0])


def compare_outputs(reference: list[dict], candidate: list[dict], spec: CheckSpec) -> dict:
    """Per output: Polygraphy's verdict and error statistics over all iterations; a reference
    output the candidate lacks is marked missing (Polygraphy would skip it)."""
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.comparator.compare import SimpleCompareFunc

    missing = [name for name in reference[0] if name not in candidate[0]]
    if len(missing) == len(reference[0]):  # Polygraphy refuses a comparison with nothing in common
        return {name: {"passed": False, "missing": True} for name in missing}
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
    return {**outputs, **{name: {"passed": False, "missing": True} for name in missing}}


def gate_failures(report: dict) -> list[str]:
    """One line per failed comparison, most specific first."""
    tol = report["tolerances"]
    failures = []
    for where in ("onnx", "engine"):
        for name, out in report[where].get("outputs", {}).items():
            if out.get("missing"):
                failures.append(f"{where} output '{name}': the variant has no such output")
            elif out.get("shape_mismatch"):
                failures.append(f"{where} output '{name}': its shape differs from the reference's")
            elif not out["passed"]:
                stat = tol["statistic"]
                failures.append(f"{where} output '{name}': {stat} abs error {out[f'{stat}_absdiff']:.4g} "
                                f"exceeds atol {tol['atol']:g} and {stat} rel error "
                                f"{out[f'{stat}_reldiff']:.4g} exceeds rtol {tol['rtol']:g}")
    gate = report["gate"]
    if gate["status"] != "failed":
        return failures
    if gate["value"] < gate["floor"]:
        failures.append(f"{gate['figure']} agreement with FP32: {gate['value']:.3f} is below "
                        f"min_agreement_vs_fp32 {gate['floor']:g}")
    failures += [_below_floor(name, floor, gate["details"]) for name, floor in gate.get("floors", {}).items()
                 if gate["details"][name] < floor]
    return failures


def _below_floor(name: str, floor: float, details: dict) -> str:
    """The line for an instance gate's recall or precision below its floor, with the counts
    behind it and, when boxes kept their place under another class, how many did."""
    counts = {"recall": f"{details['matched']} of {details['reference_detections']} FP32 detections found",
              "precision": f"{details['matched']} of {details['candidate_detections']} variant detections are FP32's"}
    flips = f"; {details['class_flips']} kept an FP32 box but changed class" if details["class_flips"] else ""
    return (f"{name} against FP32 at verify.conf: {details[name]:.3f} ({counts[name]}{flips}) is below "
            f"min_{name}_vs_fp32 {floor:g}")


def _engine_comparison(job: CheckJob, feeds: list[dict], reference: list[dict]) -> dict:
    if not tensorrt_available():
        return {"status": "skipped: TensorRT not installed"}
    if not job.engine.is_file():
        return {"status": "skipped: no engine built on this host"}
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.datatype import DataType

    with TrtRunner(EngineFromBytes(BytesFromPath(str(job.engine)))) as runner:
        declared = {name: DataType.to_dtype(meta.dtype, "numpy") for name, meta in runner.get_input_metadata().items()}
        outputs = [{k: as_float32(v.copy()) for k, v in runner.infer(_cast(feed, declared)).items()} for feed in feeds]
    compared = _raw_comparison(reference, outputs, job)
    if "outputs" not in compared:
        return compared
    passed = all(o["passed"] for o in compared["outputs"].values())
    return {"status": "passed" if passed else "failed", **compared}


def _cast(feed: dict, declared: dict) -> dict:
    """`feed` in the dtypes the engine's inputs declare (float16 for build.io: fp16; Polygraphy
    refuses a float32 array for a half-precision binding)."""
    return {name: array.astype(declared[name]) if name in declared else array for name, array in feed.items()}


def _gate_setting(job: CheckJob, feeds: list[dict]) -> GateSetting:
    """The gates' setting: the recipe's verify and check sections and the input's size."""
    return GateSetting(task=job.verify.task, head=job.verify.head, conf=job.verify.conf, iou=job.verify.iou,
                       floor=job.check.min_agreement_vs_fp32, image_hw=input_hw(feeds),
                       min_recall=job.check.min_recall_vs_fp32, min_precision=job.check.min_precision_vs_fp32)


def _missing_outputs(reference: list[dict], candidate: list[dict], job: CheckJob) -> list[str]:
    """The reference's outputs the variant lacks (none for an `nms` variant, whose four replace
    them): the raw comparison fails the check naming them, and nothing decodes the variant."""
    missing = [name for name in reference[0] if name not in candidate[0]]
    return [] if _nms_replaced_head(reference, candidate, job) else missing


def _task_gate(reference: list[dict], candidate: list[dict], feeds: list[dict], job: CheckJob) -> dict:
    """verify.task's gate (trtforge.gates) as check.json's `gate`."""
    from ..gates import GateResult, run_gate

    setting = _gate_setting(job, feeds)
    missing = _missing_outputs(reference, candidate, job)
    if missing:
        return GateResult(setting.task, setting.head, None, None, setting.floor,
                          f"skipped: the variant has no output {', '.join(missing)}").as_json()
    with _decoding_errors(job, setting):
        return run_gate(reference, candidate, setting).as_json()


def _labels_section(reference: list[dict], candidate: list[dict], feeds: list[dict], job: CheckJob) -> dict:
    """check.json's `labels`: both sides scored against verify.labels, on the reference's images
    in its order; a bad label line is a one-line StageError naming file:line."""
    from ..gates.labels import LabelError, labels_report

    setting = _gate_setting(job, feeds)
    image_names = json.loads(job.reference_images.read_text())
    decodable = None if _missing_outputs(reference, candidate, job) else candidate
    try:
        with _decoding_errors(job, setting):
            return labels_report(job.labels, image_names, reference, decodable, setting)
    except LabelError as exc:
        raise StageError(f"{job.task}: verify.labels: {exc}") from None


@contextmanager
def _decoding_errors(job: CheckJob, setting: GateSetting) -> Iterator[None]:
    """Decoding failures as one-line StageErrors: outputs laid out otherwise than verify.task /
    verify.head say are the recipe's fault; a decode cut short would make any figure a lie."""
    from ..gates import DecodeCutShort, LayoutError

    try:
        yield
    except LayoutError as exc:
        raise StageError(f"{job.task}: verify.task {setting.task} (head {setting.head}): {exc}; "
                         "set verify.task / verify.head to the model's outputs") from None
    except DecodeCutShort as exc:
        raise StageError(f"{job.task}: {exc}; the gate judges no variant on incomplete detections") from None


def _print_table(report: dict) -> None:
    from rich.table import Table

    from ..console import report_console

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
            stats = [f"{out[f'{s}_absdiff']:.4g}" if f"{s}_absdiff" in out else "missing" if out.get("missing")
                     else "shape!" for s in ("max", "mean", "median")]
            table.add_row(where, name, *stats, "passed" if out["passed"] else "FAILED")
    gate = report["gate"]
    value = "-" if gate["value"] is None else f"{gate['value']:.3f}"
    floor = "" if gate["floor"] is None else f">= {gate['floor']:g}"
    summary = _gate_summary(gate) if gate["value"] is not None else ""  # P and R of nothing mislead
    table.add_row(f"gate ({gate['task']})", gate["figure"] or "-", value, floor, summary, gate["status"].split(":")[0])
    if gate["status"].startswith("skipped"):
        skipped.append(f"gate: {gate['status'].removeprefix('skipped: ')}")
    labels = report.get("labels")
    if labels:
        table.add_row(*_labels_cells(labels))
        skipped += [f"labels: {status.removeprefix('skipped: ')}" for status in
                    (labels["status"], labels.get("variant", {}).get("status", "")) if status.startswith("skipped")]
    table.caption = "; ".join(f"skipped {s}" for s in skipped) or None
    report_console().print(table)


def _labels_cells(labels: dict) -> list[str]:
    """The row of verify.labels: FP32's and the variant's mAP50 / mAP50-95 and the variant's P
    and R (Ultralytics' max-F1 point), reported and never a verdict."""
    where = f"labels ({labels['instances']} objects in {labels['labelled_images']}/{labels['images']} images)"
    if labels["status"] != "measured":
        return [where, "mAP50 / mAP50-95", "", "", "", "skipped"]

    def pair(side: dict) -> str:
        return f"{side['map50']:.3f} / {side['map50_95']:.3f}" if "map50" in side else "-"

    variant = labels["variant"]
    summary = f"P {variant['precision']:.3f} R {variant['recall']:.3f}" if "map50" in variant else ""
    return [where, "mAP50 / mAP50-95", f"FP32 {pair(labels['reference'])}", f"variant {pair(variant)}", summary,
            "reported"]


def _gate_summary(gate: dict) -> str:
    """The gate's other figures in one short cell: P/R (a figure below its floor marked
    `< floor`), matched counts and the class-agnostic figures, or top-5."""
    details, floors = gate["details"], gate.get("floors", {})

    def held(label: str, name: str) -> str:
        floor = floors.get(name)
        return f"{label} {details[name]:.3f}" + (f" < {floor:g}" if floor is not None and details[name] < floor else "")

    if "matched" in details:
        return (f"{held('P', 'precision')} {held('R', 'recall')} {details['matched']}/"
                f"{details['reference_detections']}; class-agnostic mAP50 "
                f"{details['class_agnostic_map50']:.3f}, {details['class_flips']} class flips")
    if "top-5" in details:
        return f"top-5 {details['top-5']:.3f}"
    return ""


def _plot(reference: list[dict], candidate: list[dict], report: dict, out: Path) -> None:
    """Error distribution per compared output (log counts) and the gate's figures as bars."""
    np = require("numpy", "core")
    matplotlib = require("matplotlib", "yolo")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in reference[0] if name in candidate[0]]
    gate = report["gate"]
    panels = max(1, len(names) + (gate["value"] is not None))
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        pairs = [(r[name], c[name]) for r, c in zip(reference, candidate) if r[name].shape == c[name].shape]
        if pairs:
            ax.hist(np.concatenate([np.abs(c.astype(np.float64) - r).ravel() for r, c in pairs]), bins=100, log=True)
        else:
            ax.text(0.5, 0.5, "shape differs from the reference", ha="center", transform=ax.transAxes)
        ax.set(title=f"{name}: |variant - FP32|", xlabel="absolute error", ylabel="count")
    if gate["value"] is not None:
        ax = axes[0][-1]
        ratios = {key: v for key, v in gate["details"].items() if key in GATE_RATIOS}
        ax.bar([gate["figure"], *ratios], [gate["value"], *ratios.values()])
        ax.axhline(gate["floor"], color="red", linestyle="--", label=f"{gate['figure']} floor")
        floors = {name: floor for name, floor in gate.get("floors", {}).items() if name in ratios}
        if floors:
            ax.scatter(list(floors), list(floors.values()), marker="_", s=800, color="red", label="their floors")
        ax.set(ylim=(0, 1.05), title=f"{gate['task']} vs FP32 ({gate['status'].split(':')[0]})")
        ax.legend()
    elif not names:
        axes[0][0].text(0.5, 0.5, "nothing compared", ha="center", transform=axes[0][0].transAxes)
    fig.suptitle(report["task"])
    fig.tight_layout()
    with atomic_output(out) as temp:
        fig.savefig(temp, format="png")
    plt.close(fig)


# The gates' details drawn beside their figure (all ratios in 0..1).
GATE_RATIOS = ("precision", "recall", "class_agnostic_map50", "top-5", "mean_matched_box_iou",
               "mean_matched_mask_iou", "mean_matched_oks", "mean_matched_probiou")
