"""`trtforge doctor`: what this host can build, and the next step when it cannot.

Every line is a fact read from the host (never assumed): trtexec and its version, the
TensorRT Python package, the GPU through NVML (else nvidia-smi), ONNX Runtime and its
providers, ModelOpt, Ultralytics, free space under artifacts/, the doit state DB, and the
recipes themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .errors import TrtforgeError

FREE_SPACE_WARNING = 5 << 30


@dataclass(frozen=True)
class Finding:
    topic: str
    status: str  # ok | missing | problem
    detail: str
    next_step: str = ""


def check_trtexec(root: Path) -> Finding:
    from .trtexec import PROBE_CACHE, find_trtexec, not_found_message

    try:
        found = find_trtexec(root / "artifacts" / "cache" / PROBE_CACHE)
    except TrtforgeError as exc:
        return Finding("trtexec", "problem", str(exc), "fix TRTEXEC, or unset it to search PATH")
    if found is None:
        return Finding("trtexec", "missing", not_found_message(), "engines need it; `doit cpu:<recipe>` works without")
    return Finding("trtexec", "ok", f"{found.path} (TensorRT {found.version}, grammar {found.version.generation})")


def check_tensorrt_python() -> Finding:
    from .stages.check import tensorrt_available
    from .tasks import tool_version

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
    from .tasks import tool_version

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
        problem, rows = _state_db_problem(db)
    except sqlite3.Error as exc:
        problem, rows = f"is unreadable ({exc}): corrupt, or not doit's sqlite3 backend", 0
    if problem:
        return Finding("build state", "problem", f"{db} {problem}",
                       f"move it aside (mv {db} {db}.bad): every artifact stays, tasks rerun once")
    return Finding("build state", "ok", f"{db}: {rows} task records")


# The table doit's sqlite3 backend creates (doit/dependency.py, unchanged from 0.28 to 0.37)
DOIT_COLUMNS = ["task_id", "task_data"]


def _state_db_problem(db: Path) -> tuple[str | None, int]:
    """(what is wrong with the state DB, or None; how many task records it holds).

    doit dies with a traceback on a file that is not sqlite (a `json` or `dbm` backend's
    DB), on a `doit` table of another layout and on a record that is not JSON, and would
    add its table to another program's sqlite file (measured with doit 0.37), so each is
    found here first. A sqlite file with no table at all is fine: doit creates its table.
    """
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        integrity = connection.execute("PRAGMA quick_check").fetchone()[0]
        if integrity != "ok":
            return f"fails sqlite's check ({integrity})", 0
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if not tables:
            return None, 0
        if "doit" not in tables:
            return f"is a sqlite file of another program (tables: {', '.join(sorted(tables))}), not doit's state", 0
        columns = [row[1] for row in connection.execute("PRAGMA table_info(doit)")]
        if columns != DOIT_COLUMNS:
            return (f"has a doit table with columns ({', '.join(columns)}), not ({', '.join(DOIT_COLUMNS)}): "
                    "written by another doit version"), 0
        records = connection.execute("SELECT task_id, task_data FROM doit").fetchall()
    for task_id, data in records:
        if not _is_json_object(data):
            return f"holds a record of '{task_id}' that is not JSON: written by another doit version or codec", 0
    return None, len(records)


def _is_json_object(data: str | bytes | None) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except (TypeError, ValueError):
        return False


def check_recipes(project, problem: TrtforgeError | None) -> Finding:
    """The recipes as loaded (`problem`: why the project did not load at all)."""
    if problem is not None:
        return Finding("recipes", "problem", str(problem), "fix the recipe as the message says")
    names = ", ".join(f"{r.name} ({', '.join(v.name for v in r.variants)})" for r in project.recipes)
    if project.broken:
        others = f"; {names} load" if names else ""
        return Finding("recipes", "problem", f"{len(project.broken)} broken, left out of the build: "
                       + " | ".join(str(b.error) for b in project.broken) + others,
                       "fix the recipe as the message says (the other recipes still build)")
    return Finding("recipes", "ok", names or "none in recipes/")


def check_variants(project) -> Finding | None:
    """Which recipe-variants this host's trtexec can build, and why not the others (with a
    TensorRT 8.2 trtexec doctor said "ok" while six variants could not be built, issue 14):
    the renderer's refusals, and the parser preflight's (what `lint:` runs) for variants whose
    engine ONNX is already built. None when there is nothing to check: no trtexec, or recipes
    that do not load (their own findings say so)."""
    from .tasks import engine_plan

    if project is None or project.trtexec is None:
        return None
    plans = {f"{r.name}-{v.name}": engine_plan(project, r, v)
             for r in project.recipes if not r.targets for v in r.variants}  # targets: check_fleet's
    if not plans:
        return None
    version = project.trtexec.version
    jobs = {name: job for name, (job, _) in plans.items() if job is not None}
    refused = {name: why for name, (_, why) in plans.items() if why}
    refused.update(_parser_refusals(jobs, version.generation))
    refused.update(_source_refusals(project))
    refused = {name: refused[name] for name in plans if name in refused}  # in recipe order
    unchecked = [name for name, job in jobs.items() if not job.onnx.is_file()]
    waiting = (f"; not parser-checked until their ONNX is built (doit lint:<recipe>): {', '.join(unchecked)}"
               if unchecked else "")
    if not refused:
        return Finding("variants", "ok",
                       f"all {len(plans)} buildable with TensorRT {version}: {', '.join(plans)}{waiting}")
    return Finding("variants", "problem",
                   f"{len(refused)} of {len(plans)} cannot be built with TensorRT {version}: "
                   + " | ".join(f"{name}: {why}" for name, why in refused.items()) + waiting,
                   "change those variants' settings or models, or build them where a newer TensorRT is "
                   "(doit kit:<recipe>-<variant>)")


def _source_refusals(project) -> dict[str, str]:
    """{variant: why export: will refuse its recipe's ONNX source} (input name, shape, opset,
    preprocessing), for every variant of such a recipe: none of them can be built."""
    from .stages.export import onnx_source_problem

    refused = {}
    for r in project.recipes:
        problem = None if r.targets else onnx_source_problem(r.model, r.input, project.root)
        refused.update({f"{r.name}-{v.name}": f"export:{r.name} will refuse its model: {problem}"
                        for v in r.variants if problem})
    return refused


def _parser_refusals(jobs: dict, generation: str) -> dict[str, str]:
    """{variant: the parser preflight's first error} for the variants whose engine ONNX exists
    (others are not read: doctor never exports or loads a model to answer). Variants built
    from the same ONNX share one preflight."""
    verdicts: dict[tuple[Path, bool], str | None] = {}
    refused = {}
    for name, job in jobs.items():
        key = (job.onnx, bool(job.plugin_files))
        if not job.onnx.is_file():
            continue
        if key not in verdicts:
            verdicts[key] = _parser_error(*key, generation)
        if verdicts[key]:
            refused[name] = verdicts[key]
    return refused


def _parser_error(onnx_path: Path, plugin_libraries: bool, generation: str) -> str | None:
    """The first error TensorRT `generation`'s parser tables find in `onnx_path`, as lint: words it."""
    from .console import shown_path
    from .errors import StageError
    from .preflight import first_error, preflight

    try:
        findings = preflight(onnx_path, generation, plugin_libraries=plugin_libraries)
    except StageError as exc:
        return str(exc)
    line = first_error(findings)
    return None if line is None else f"{shown_path(onnx_path)}: {line}"


def check_fleet(project) -> Finding | None:
    """Whether the Ray fleet has a live machine of every class the recipes' targets name; None
    when no recipe has targets (Ray is then never imported)."""
    from .errors import MissingDependencyError, ToolError

    targets = {t.resource: f"{r.name}: targets.{t.name}" for r in (project.recipes if project else ())
               for t in r.targets}
    if not targets:
        return None
    try:
        from .fleet import connect, live_classes

        classes = live_classes(connect())
    except (MissingDependencyError, ToolError) as exc:
        return Finding("fleet", "problem", str(exc), "start the fleet (docs/fleet.md), or build those recipes' "
                                                     "kits instead")
    missing = {resource: where for resource, where in targets.items() if classes.get(resource, 0) < 1}
    present = ", ".join(f"{resource} ({int(classes[resource])} GPU(s))" for resource in targets
                        if resource not in missing)
    if not missing:
        return Finding("fleet", "ok", f"every target class has a live machine: {present}")
    return Finding("fleet", "problem", f"no live machine advertises {', '.join(f'{r} ({w})' for r, w in missing.items())}"
                   + (f"; present: {present}" if present else ""),
                   "start a machine of each class (trtforge fleet up --join <head> --class <resource>)")


def diagnose(root: Path) -> list[Finding]:
    """Every finding, in the order shown. trtexec is started once, by check_trtexec: the
    project is then loaded with the answer that probe left (a hanging trtexec is waited for
    once, not once per check)."""
    from .tasks import load_project

    trtexec = check_trtexec(root)
    try:
        project, problem = load_project(root, probe=False), None
    except TrtforgeError as exc:
        project, problem = None, exc
    findings = [
        check_recipes(project, problem),
        trtexec,
        check_variants(project if trtexec.status == "ok" else None),  # never judged by an older answer
        check_fleet(project),
        check_tensorrt_python(),
        check_gpu(),
        check_onnxruntime(),
        check_package("ModelOpt", "modelopt", "nvidia-modelopt", "quant", "FP16 AutoCast and INT8 Q/DQ"),
        check_package("Ultralytics", "ultralytics", "ultralytics", "yolo", "Ultralytics model sources"),
        check_disk(root),
        check_state_db(root),
    ]
    return [finding for finding in findings if finding is not None]


def blocking(findings: list[Finding]) -> list[Finding]:
    """Findings that stop every build this host could do (no GPU and no trtexec do not:
    the GPU-free stages still run)."""
    fatal_topics = {"recipes", "ONNX Runtime", "disk", "build state"}
    return [f for f in findings if f.status != "ok" and (f.topic in fatal_topics or f.status == "problem")]
