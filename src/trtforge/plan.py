"""`trtforge plan`: what a build would do, without doing anything.

The task graph comes from the same generators dodo.py uses, and the reasons from doit's
own dependency check (`Dependency.get_status`, what `doit info --status` prints), read
from the state DB without opening it for writing; the trtexec argv from the renderer, for
the TensorRT generation asked for or the one found on this host. Nothing runs, so it
works on a laptop with no GPU and no trtexec.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TrtforgeError
from .recipe import Recipe, Variant

_REASONS = {
    "has_no_dependencies": "always runs (no dependencies)",
    "missing_target": "output missing: {}",
    "changed_file_dep": "input changed: {}",
    "added_file_dep": "new input: {}",
    "removed_file_dep": "input no longer used: {}",
    "missing_file_dep": "input not built yet: {}",
    "checker_changed": "doit's file checker changed",
}


@dataclass(frozen=True)
class PlannedTask:
    name: str
    status: str  # run | up-to-date | error
    reasons: tuple[str, ...]


def resolve_target(project, target: str) -> tuple[Recipe, list[Variant]]:
    from .recipe import BrokenRecipe
    from .tasks import recipe_of

    broken = recipe_of(project, target)
    if isinstance(broken, BrokenRecipe):
        raise broken.error
    for recipe in project.recipes:
        if target == recipe.name:
            return recipe, list(recipe.variants)
        for variant in recipe.variants:
            if target == f"{recipe.name}-{variant.name}":
                return recipe, [variant]
    known = ", ".join(r.name for r in project.recipes)
    raise TrtforgeError(f"no recipe or variant '{target}' (recipes: {known}); use <recipe> or <recipe>-<variant>")


def task_plan(project, recipe: Recipe, variants: list[Variant]) -> list[PlannedTask]:
    """Every task `build:` of the variants would consider, in dependency order, with doit's verdict."""
    from doit.loader import load_tasks

    from .tasks import doit_namespace

    tasks = {t.name: t for t in load_tasks(doit_namespace(project))}
    producers = {target: t.name for t in tasks.values() for target in t.targets}
    needs: dict[str, list[str]] = {}  # task -> the tasks it waits for
    order: list[str] = []  # each task after every task it needs

    def visit(name: str) -> None:
        if name in needs or name not in tasks:
            return
        task = tasks[name]
        needs[name] = [dep for dep in [*task.task_dep, *(producers[f] for f in task.file_dep if f in producers)]
                       if dep in tasks]
        for dep in needs[name]:
            visit(dep)
        order.append(name)

    for variant in variants:
        visit(f"build:{recipe.name}-{variant.name}")
    runnable = [tasks[name] for name in order if tasks[name].actions]
    db = project.artifacts / ".doit.db"
    if not db.is_file():  # do not let doit create a state DB just to plan
        return [PlannedTask(task.name, "run", ("never built in this project",)) for task in runnable]
    import contextlib

    from doit.dependency import Dependency, SqliteDB

    dependency = Dependency(SqliteDB, str(db))
    try:
        with contextlib.chdir(project.root):  # the tasks' paths are relative to it, as doit runs them
            own = {task.name: _status(task, tasks, dependency) for task in runnable}
    finally:
        dependency.close()
    return _with_upstream_reruns(order, needs, own)


def _with_upstream_reruns(order: list[str], needs: dict[str, list[str]],
                          own: dict[str, PlannedTask]) -> list[PlannedTask]:
    """doit judges each task against its inputs as they are now, so on its own it calls a task
    up to date whose input an earlier task is about to rebuild. Such a task is planned to run
    too (doit reruns it when the rebuilt input differs, as it does after any real change)."""
    cause: dict[str, str | None] = {}  # task -> the runnable task whose run reaches it, or None
    planned = []
    for name in order:
        upstream = next((cause[dep] for dep in needs[name] if cause[dep]), None)
        step = own.get(name)
        if step is not None and step.status != "run" and upstream:
            step = PlannedTask(name, "run", (f"runs after {upstream}, whose outputs it reads",))
        cause[name] = (name if step is not None and step.status == "run" else upstream)
        if step is not None:
            planned.append(step)
    return planned


def _status(task, tasks: dict, dependency) -> PlannedTask:
    if not dependency.backend.in_(task.name):
        return PlannedTask(task.name, "run", ("never built in this project",))
    status = dependency.get_status(task, tasks, get_log=True)
    reasons = []
    added = set(status.reasons.get("added_file_dep", []))  # doit lists a new input as changed too
    for key, value in status.reasons.items():
        if key == "uptodate_false":
            reasons += [_uptodate_reason(check) for check, _, _ in value]
        elif key in _REASONS:
            items = value if isinstance(value, list) else [value]
            reasons += [_REASONS[key].format(_short(item)) for item in items
                        if key != "changed_file_dep" or item not in added]
    return PlannedTask(task.name, status.status, tuple(dict.fromkeys(reasons)))


def _uptodate_reason(check) -> str:
    name = getattr(check, "__name__", type(check).__name__)
    return {
        "config_changed": "a recipe field, tool version or rendered command it reads changed (or never built)",
        "outputs_intact": "an output is missing, or was changed outside trtforge",
        "ArchiveIntact": "the release archive is missing or changed",
    }.get(name, "its own up-to-date check says it must run")


def _short(item) -> str:
    text = str(item)
    return text.split("artifacts/", 1)[-1] if text.startswith("artifacts/") or "/artifacts/" in text else text


def trtexec_commands(project, recipe: Recipe, variants: list[Variant]) -> dict[str, dict | str]:
    """{variant: {"argv", "model.onnx"}} for the project's TensorRT, or the renderer's refusal."""
    from .render import RenderError, check_intent
    from .tasks import engine_job, reverts_nodes

    if recipe.targets:
        return _fleet_commands(project, recipe, variants)
    if project.trtexec is None:
        return {v.name: project.trtexec_problem for v in variants}
    commands: dict[str, dict | str] = {}
    for variant in variants:
        try:
            mode = check_intent(variant.precision, variant.build, project.trtexec.version, recipe.surgery,
                                reverts_nodes(variant))
        except RenderError as exc:
            commands[variant.name] = f"refused: {exc}"
            continue
        job = engine_job(project, recipe, variant, mode)
        try:
            argv = _planned_argv(job, project.trtexec.version)
        except TrtforgeError as exc:  # a refusal, or a keep_fp32 glob matching nothing
            commands[variant.name] = f"refused: {exc}"
            continue
        commands[variant.name] = {"argv": ["trtexec", *argv], "model.onnx": _short(job.onnx)}
    return commands


def _fleet_commands(project, recipe: Recipe, variants: list[Variant]) -> dict[str, dict | str]:
    """{variant@target: {argv, model.onnx, where}}: each target class's command, in the grammar of
    the generation it declares (its machine renders again for the TensorRT it finds)."""
    from .tasks import target_plan

    commands: dict[str, dict | str] = {}
    for variant in variants:
        for target in recipe.targets:
            key = f"{variant.name}@{target.name}"
            job, problem = target_plan(project, recipe, variant, target)
            try:
                argv = _planned_argv(job, job.version) if job else None
            except TrtforgeError as exc:
                argv, problem = None, str(exc)
            commands[key] = f"refused: {problem}" if argv is None else {
                "argv": ["trtexec", *argv], "model.onnx": _short(job.onnx),
                "where": f"on a {target.resource} machine of the fleet, TensorRT {target.tensorrt} grammar"}
    return commands


def _planned_argv(job, version) -> list[str]:  # job: an engine.EngineJob
    """The engine job's argv; where its ONNX is not made yet, the flags read from it are placeholders."""
    from .render import render_argv
    from .stages.engine import (binding_types, engine_intent, fp16_io_flags_apply, keep_fp32_layers,
                                keep_fp32_route_of)

    if job.onnx.is_file():
        return render_argv(engine_intent(job, keep_fp32_layers(job, job.onnx), binding_types(job, job.onnx)), version)
    keep = ()
    if keep_fp32_route_of(job) == "layer_precisions":
        keep = tuple(f"<{glob} in the surgered ONNX>" for glob in job.build.keep_fp32)
    argv = render_argv(engine_intent(job, keep), version)
    if fp16_io_flags_apply(job):  # one format per binding, read from the ONNX once it exists
        argv[2:2] = ["--inputIOFormats=<fp16 per input of the surgered ONNX>", "--outputIOFormats=<fp16 per output>"]
    return argv


def preflight_verdicts(project, recipe: Recipe, variants: list[Variant]) -> dict[str, str]:
    """{variant: one line}: what the parser preflight says of the ONNX the engine would be built
    from, for the project's TensorRT (or `--trt`); nothing when there is no trtexec to plan for."""
    from .preflight import preflight
    from .tasks import lint_target

    if project.trtexec is None:
        return {}
    verdicts = {}
    for variant in variants:
        target = lint_target(project, recipe, variant, project.trtexec.version)
        if target.onnx is None:
            verdicts[variant.name] = f"refused: {target.refused}"
        elif not target.onnx.is_file():
            verdicts[variant.name] = (f"runs once {_short(target.onnx)} is built "
                                      f"(doit lint:{recipe.name}-{variant.name})")
        else:
            findings = preflight(target.onnx, target.generation, plugin_libraries=bool(variant.build.plugins))
            verdicts[variant.name] = _verdict(findings)
    return verdicts


def _verdict(findings) -> str:
    from .preflight import first_error

    if (line := first_error(findings)) is not None:
        return f"error: {line}"
    return "ok" + (f", {len(findings)} warning(s): {findings[0].subject} {findings[0].message}" if findings else "")
