"""`trtforge doctor`: what this host can build, and the next step when it cannot.

Every line is a fact read from the host (never assumed): trtexec and its version, the
TensorRT Python package, the GPU through NVML (else nvidia-smi), ONNX Runtime and its
providers, ModelOpt, Ultralytics, free space under artifacts/, the doit state DB, and the
recipes themselves.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .errors import TrtforgeError
from .tasks import tool_version

FREE_SPACE_WARNING = 5 << 30


@dataclass(frozen=True)
class Finding:
    topic: str
    status: str  # ok | missing | problem
    detail: str
    next_step: str = ""


def check_trtexec(root: Path) -> Finding:
    from .trtexec import find_trtexec, not_found_message

    try:
        found = find_trtexec(root / "artifacts" / "cache" / "trtexec-probe.json")
    except TrtforgeError as exc:
        return Finding("trtexec", "problem", str(exc), "fix TRTEXEC, or unset it to search PATH")
    if found is None:
        return Finding("trtexec", "missing", not_found_message(), "engines need it; `doit cpu:<recipe>` works without")
    return Finding("trtexec", "ok", f"{found.path} (TensorRT {found.version}, grammar {found.version.generation})")


def check_tensorrt_python() -> Finding:
    from .stages.check import tensorrt_available

    if not tensorrt_available():
        return Finding("TensorRT Python", "missing", "not installed: engine comparisons will be reported as skipped",
                       "install TensorRT's Python wheel on a GPU host to compare engines")
    return Finding("TensorRT Python", "ok", f"tensorrt {tool_version('tensorrt', 'tensorrt-cu12', 'tensorrt-cu13')}")


def check_gpu() -> Finding:
    from .gpu import gpu_details

    details = gpu_details()
    if details is None:
        return Finding("GPU", "missing", "none visible (NVML and nvidia-smi found no NVIDIA GPU)",
                       "engines must be built on the GPU they run on: use `doit kit:<recipe>-<variant>`")
    return Finding("GPU", "ok", ", ".join(f"{k} {v}" for k, v in details.items() if v))


def check_onnxruntime() -> Finding:
    try:
        import onnxruntime
    except ImportError:
        return Finding("ONNX Runtime", "missing", "not importable", "pip install -e '.[all]'")
    return Finding("ONNX Runtime", "ok", f"{onnxruntime.__version__}, providers built in: "
                                         + ", ".join(onnxruntime.get_available_providers()))


def check_package(topic: str, module: str, distribution: str, extra: str, needed_for: str) -> Finding:
    if importlib.util.find_spec(module) is None:
        return Finding(topic, "missing", f"not installed ({needed_for})", f"pip install -e '.[{extra}]'")
    return Finding(topic, "ok", f"{distribution} {tool_version(distribution)}")


def check_disk(root: Path) -> Finding:
    artifacts = root / "artifacts"
    usage = shutil.disk_usage(artifacts if artifacts.exists() else root)
    detail = f"{usage.free / (1 << 30):.1f} GiB free under {artifacts}"
    if usage.free < FREE_SPACE_WARNING:
        return Finding("disk", "problem", detail, "free some space: engines and ONNX models take GiBs")
    return Finding("disk", "ok", detail)


def check_state_db(root: Path) -> Finding:
    db = root / "artifacts" / ".doit.db"
    if not db.exists():
        return Finding("build state", "ok", f"{db} not created yet (nothing built)")
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            rows = connection.execute("SELECT count(*) FROM doit").fetchone()[0]
            integrity = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        return Finding("build state", "problem", f"{db} is unreadable ({exc})",
                       f"move it aside (mv {db} {db}.bad): every artifact stays, tasks rerun once")
    if integrity != "ok":
        return Finding("build state", "problem", f"{db} fails sqlite's check ({integrity})",
                       f"move it aside (mv {db} {db}.bad): every artifact stays, tasks rerun once")
    return Finding("build state", "ok", f"{db}: {rows} task records")


def check_recipes(root: Path) -> Finding:
    from .tasks import load_project

    try:
        project = load_project(root)
    except TrtforgeError as exc:
        return Finding("recipes", "problem", str(exc), "fix the recipe as the message says")
    names = ", ".join(f"{r.name} ({', '.join(v.name for v in r.variants)})" for r in project.recipes)
    return Finding("recipes", "ok", names or "none in recipes/")


def diagnose(root: Path) -> list[Finding]:
    return [
        check_recipes(root),
        check_trtexec(root),
        check_tensorrt_python(),
        check_gpu(),
        check_onnxruntime(),
        check_package("ModelOpt", "modelopt", "nvidia-modelopt", "quant", "FP16 AutoCast and INT8 Q/DQ"),
        check_package("Ultralytics", "ultralytics", "ultralytics", "yolo", "Ultralytics model sources"),
        check_disk(root),
        check_state_db(root),
    ]


def blocking(findings: list[Finding]) -> list[Finding]:
    """Findings that stop every build this host could do (no GPU and no trtexec do not:
    the GPU-free stages still run)."""
    fatal_topics = {"recipes", "ONNX Runtime", "disk", "build state"}
    return [f for f in findings if f.status != "ok" and (f.topic in fatal_topics or f.status == "problem")]
