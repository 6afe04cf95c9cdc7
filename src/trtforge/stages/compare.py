"""compare: one table per recipe of what each variant costs and what it keeps.

Per variant, side by side:
- ONNX Runtime latency on this machine's CPU of the ONNX that carries the variant's
  precision (the surgered FP32 ONNX, the AutoCast FP16 ONNX, the Q/DQ INT8 ONNX), on the
  verification inputs. It is the one speed comparison that is honest without a GPU: it
  says how the precision transforms behave on a CPU, not how TensorRT will run them;
- the size of that ONNX, and of the engine when one was built;
- the accuracy gate's verdict and figures, read from the variant's check.json;
- with verify.labels, the variant's mAP50 / mAP50-95 against the labels beside the FP32
  reference's (check.json's `labels`), so cost and accuracy read on one line;
- trtexec's throughput and latency percentiles from the engine's summary.json when an
  engine was built here, otherwise `not measured` (never a number made up on a CPU).

The table is printed (rich) and written as compare.json (machines) and compare.md (people).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import require

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class VariantInputs:
    """The files one variant's row is made from."""

    name: str
    precision: str
    onnx: Path
    check_report: Path
    engine_summary: Path | None  # None: no engine can be built on this host
    engine_missing_reason: str = "no trtexec on this host"


@dataclass(frozen=True)
class CompareJob:
    task: str
    reference_inputs: Path
    variants: tuple[VariantInputs, ...]
    report_json: Path
    report_md: Path
    seconds_per_variant: float = 2.0  # timing budget: enough runs for a stable median on 2 cores


def compare_variants(job: CompareJob) -> None:
    """Measure and collect every variant's row; write compare.json and compare.md; print the table."""
    feed = _first_feed(job.reference_inputs)
    rows = [_row(v, feed, job.seconds_per_variant) for v in job.variants]
    baseline = next((r["ort_cpu_ms"]["median"] for r in rows if r["precision"] == "fp32"), None)
    for row in rows:
        row["ort_cpu_speedup_vs_fp32"] = round(baseline / row["ort_cpu_ms"]["median"], 3) if baseline else None
    report = {"task": job.task, "batch": _batch_of(feed), "variants": rows,
              "labels_reference": next((row["labels"]["reference"] for row in rows
                                        if "reference" in (row["labels"] or {})), None)}
    write_text_atomic(job.report_json, json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_text_atomic(job.report_md, markdown_table(report))
    _print_table(report)


def _first_feed(reference_inputs: Path) -> dict:
    """The first verification batch: the input a deployment would see, not zeros."""
    require("polygraphy", "core")
    from polygraphy.json import load_json

    return dict(load_json(str(reference_inputs))[0])


def _batch_of(feed: dict) -> int:
    return int(next(iter(feed.values())).shape[0])


def measure_ort_latency(onnx_path: Path, feed: dict, seconds: float, min_runs: int = 5,
                        max_runs: int = 200) -> dict:
    """Median and p90 wall time (ms) of ONNX Runtime CPU inference of `feed`, after warm-up.

    Runs until `seconds` have passed (at least `min_runs`, at most `max_runs`), so a fast
    model is timed many times and a slow one is not held to a fixed count.
    """
    from .reference import typed_feed

    ort = require("onnxruntime", "core")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = typed_feed(session, feed)
    for _ in range(2):  # first runs allocate and pick kernels
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median": round(statistics.median(times), 3), "p90": round(times[int(0.9 * (len(times) - 1))], 3),
            "runs": len(times)}


def _row(variant: VariantInputs, feed: dict, seconds: float) -> dict:
    check = json.loads(variant.check_report.read_text())
    return {
        "variant": variant.name,
        "precision": variant.precision,
        "onnx": variant.onnx.name,
        "onnx_bytes": variant.onnx.stat().st_size,
        "ort_cpu_ms": measure_ort_latency(variant.onnx, feed, seconds),
        "gate": gate_summary(check),
        "labels": labels_summary(check),
        "engine": engine_figures(variant.engine_summary, variant.engine_missing_reason),
    }


def gate_summary(check: dict) -> dict:
    """The accuracy gate's verdict and the task's own figure (mAP50, top-1, OKS mAP50 ...)."""
    summary = {"passed": bool(check["passed"])}
    gate = check.get("gate")
    if gate:
        summary["gate"] = gate["status"].split(":")[0]
        if gate["value"] is not None:
            summary["figure"], summary["value"] = gate["figure"], round(gate["value"], 4)
    statistic = check["tolerances"]["statistic"]
    # an nms variant has no raw outputs to compare (its section says why)
    worst = [out.get(f"{statistic}_absdiff") for out in check["onnx"].get("outputs", {}).values()]
    worst = [w for w in worst if w is not None]
    if worst:
        summary[f"{statistic}_abs_error"] = max(worst)
    return summary


def labels_summary(check: dict) -> dict | None:
    """mAP50 and mAP50-95 against verify.labels, the variant's with FP32's as `reference`, or
    why there are none; None without verify.labels."""
    labels = check.get("labels")
    if labels is None:
        return None
    if labels["status"] != "measured":
        return {"status": labels["status"]}

    def pair(side: dict) -> dict:
        return {key: round(side[key], 4) for key in ("map50", "map50_95")} if "map50" in side else side

    return {**pair(labels["variant"]), "reference": pair(labels["reference"])}


def engine_figures(summary_path: Path | None, missing_reason: str) -> dict:
    """trtexec's figures for a built engine, or why there are none."""
    if summary_path is None:
        return {"status": f"{NOT_MEASURED}: {missing_reason}"}
    summary = json.loads(summary_path.read_text())
    performance = summary.get("performance") or {}
    latency = performance.get("latency_ms") or {}
    if "throughput_qps" not in performance:
        return {"status": f"{NOT_MEASURED}: trtexec ran no inference", "engine_bytes": summary.get("engine_bytes")}
    return {"status": "measured", "gpu": summary.get("device", {}).get("gpu"), "tensorrt": summary.get("tensorrt"),
            "engine_bytes": summary.get("engine_bytes"), "throughput_qps": performance["throughput_qps"],
            "latency_ms": {k: latency[k] for k in ("median", "p90", "p95", "p99") if k in latency}}


def _cells(row: dict, labelled: bool) -> list[str]:
    """One table row as text, shared by the terminal and the Markdown report."""
    ort, gate, engine = row["ort_cpu_ms"], row["gate"], row["engine"]
    speedup = f"{row['ort_cpu_speedup_vs_fp32']:.2f}x" if row["ort_cpu_speedup_vs_fp32"] else "-"
    figure = (f"{gate['figure']} {gate['value']:.3f}" if "value" in gate
              else f"task gate {gate['gate']}" if "gate" in gate else "")
    verdict = ("passed" if gate["passed"] else "FAILED") + (f", {figure}" if figure else "")
    if engine["status"] == "measured":
        lat = engine["latency_ms"]
        trt = f"{engine['throughput_qps']:.0f} qps, " + ", ".join(f"{k} {v:.2f} ms" for k, v in lat.items())
    else:
        trt = engine["status"].split(":")[0]  # the reason is in compare.json; a table cell stays short
    cells = [row["variant"], row["onnx"], f"{row['onnx_bytes'] / 2**20:.1f} MiB",
             f"{ort['median']:.1f} / {ort['p90']:.1f} ms", speedup, verdict, trt]
    return cells + ([_labels_cell(row["labels"])] if labelled else [])


def _labels_cell(labels: dict | None) -> str:
    if labels is None:
        return "-"
    return f"{labels['map50']:.3f} / {labels['map50_95']:.3f}" if "map50" in labels else labels["status"].split(":")[0]


HEADERS = ["variant", "ONNX", "ONNX size", "ORT CPU median / p90", "vs FP32", "accuracy gate", "TensorRT (trtexec)"]
LABELS_HEADER = "vs labels mAP50 / 50-95"


def _with_labels(report: dict) -> bool:
    """Whether the recipe has verify.labels: only then does the table carry their column."""
    return any(row["labels"] is not None for row in report["variants"])


def headers(report: dict) -> list[str]:
    return HEADERS + ([LABELS_HEADER] if _with_labels(report) else [])


def _reference_line(report: dict) -> str | None:
    """The FP32 reference against verify.labels, the yardstick of the labels column."""
    reference = report["labels_reference"]
    if not reference or "map50" not in reference:
        return None
    return (f"Against verify.labels, the FP32 reference (ONNX Runtime) scores mAP50 {reference['map50']:.3f}, "
            f"mAP50-95 {reference['map50_95']:.3f}.")


def markdown_table(report: dict) -> str:
    lines = [f"# {report['task']}", "",
             f"ONNX Runtime CPU latency measured on this machine, batch {report['batch']}, on the verification "
             "inputs; TensorRT figures come from trtexec on the GPU that built the engine."]
    lines += [_reference_line(report)] if _reference_line(report) else []
    lines += ["", "| " + " | ".join(headers(report)) + " |", "|" + "---|" * len(headers(report))]
    lines += ["| " + " | ".join(_cells(row, _with_labels(report))) + " |" for row in report["variants"]]
    return "\n".join(lines) + "\n"


def _print_table(report: dict) -> None:
    from rich.table import Table

    from ..console import report_console

    table = Table(title=f"{report['task']} (ORT CPU here, batch {report['batch']})")
    for header in headers(report):
        table.add_column(header)
    table.caption = _reference_line(report)
    for row in report["variants"]:
        table.add_row(*_cells(row, _with_labels(report)))
    report_console().print(table)
