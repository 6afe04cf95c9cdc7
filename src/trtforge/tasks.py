"""doit task generators: recipes in, task dicts out.

Nothing here runs a stage; it only says, per recipe and variant, what each stage reads
(file_dep + a `config_changed` of exactly the recipe fields and tool versions it uses),
what it writes (targets) and which function does the work. Task names are
`stage:recipe-variant`; `build:R-V` is what users type, `cpu:R` runs every stage that
needs no GPU. This module and everything it imports at the top must stay free of heavy
libraries: it runs on every `doit` call, a no-op build included.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from .errors import TrtforgeError, disk_error_message
from .gates.labels import LabelSet, label_set
from .gpu import gpu_config_changed
from .images import ImageSetError, list_image_set, select_images
from .quant.accuracy import AccuracyJob, Control
from .recipe import BrokenRecipe, BuildOptions, Recipe, TargetSpec, Variant, jsonable, load_recipes
from .render import GRAMMARS, KEEP_FP32_CACHE, RenderError, check_intent, default_profiles, render_argv
from .stages import (autocast, calibrate, check, compare, engine, export, kit, lint, package, qdq, reference,
                     surgery as surgery_stage)
from .surgery import builtin_pass_names, discover_plugin_passes
from .trt_version import TrtVersion, version_for_generation
from .trtexec import Trtexec, host_trtexec, not_found_message
from .uptodate import ArchiveIntact, fingerprint, outputs_intact

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class Project:
    """The recipes of one project folder and the trtexec this host would use."""

    root: Path
    recipes: list[Recipe]
    plugin_passes: dict[str, Path]
    broken: list[BrokenRecipe] = field(default_factory=list)  # recipes that do not load: no tasks
    trtexec: Trtexec | None = None
    trtexec_problem: str | None = None  # why there is no usable trtexec
    artifacts: Path = field(init=False)

    def __post_init__(self) -> None:
        self.artifacts = self.root / "artifacts"


def load_project(root: Path, generation: str | None = None, probe: bool = True,
                 host: tuple[Trtexec | None, str | None] | None = None) -> Project:
    """Read recipes/ and plugins/ and probe trtexec; every user error is one line.

    `generation` ("8.2", "8.6", "10", "11") plans for that TensorRT instead of probing the
    host's trtexec: what `trtforge plan --trt` shows; such a project is never run.
    `probe` False (commands that build nothing) takes trtexec's last answer instead of
    starting it (trtexec.recall_trtexec). `host` is `host_trtexec`'s answer when the caller
    has it already (the task cache asks before it knows whether tasks must be generated).
    """
    plugin_passes = discover_plugin_passes(root / "plugins") if (root / "plugins").is_dir() else {}
    known = {name: None for name in builtin_pass_names()} | plugin_passes
    recipes, broken = load_recipes(root / "recipes", root, known)
    project = Project(root, recipes, plugin_passes, broken)
    if generation is not None:
        project.trtexec = Trtexec(Path("trtexec"), version_for_generation(generation))
        return project
    project.trtexec, project.trtexec_problem = host or host_trtexec(project.artifacts, probe)
    return project


# ----------------------------------------------------------------------------- helpers

def run_stage(func: Callable[..., None], *args: Any, task, targets) -> TaskFailed | dict:
    """doit action wrapper: a user-fixable error becomes doit's one-message failure.

    doit passes its Task as `task` (its name is what an interrupted run reports) and the
    target list; what this returns is saved by doit with the success, so `outputs_intact`
    can later tell an output changed outside the tool from the one this run wrote.

    doit records its file_deps' state after the action: an input replaced while the stage
    read it (a training run still writing best.pt, a plugin edited mid-build) would be
    recorded as the input of outputs made from the old bytes, and trusted on every later
    run. So every file_dep's state is taken before the stage and compared after it; a
    change fails the task, and doit records nothing."""
    from . import session

    session.current_task = task.name  # left set when a stop interrupts the stage
    before = {dep: _file_state(dep) for dep in task.file_dep}
    try:
        func(*args)
    except TrtforgeError as exc:
        return TaskFailed(str(exc))
    except OSError as exc:  # a full or read-only disk: one line, not a traceback
        message = disk_error_message(exc, task.name)
        if message is None:
            raise
        return TaskFailed(message)
    session.current_task = None
    changed = sorted(dep for dep, state in before.items() if _file_state(dep) != state)
    if changed:
        shown = Path(changed[0]).relative_to(Path.cwd()) if Path(changed[0]).is_relative_to(Path.cwd()) else changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        return TaskFailed(f"{task.name}: {shown}{more} changed while the task was reading it; nothing was recorded: "
                          "rerun once it is stable")
    return {"outputs": {t: fingerprint(Path(t)) for t in targets}}


def _file_state(path: str) -> tuple | None:
    """What a replacement or a write changes, from one stat: inode, size and mtime. Not
    ctime: the engine stage hard-links its inputs into its work folder, which changes it."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def tracked(generator: Callable[[Project], Iterator[dict]]) -> Callable[[Project], Iterator[dict]]:
    """Add `outputs_intact` to every task of `generator` that writes targets."""

    @functools.wraps(generator)
    def wrapper(project: Project) -> Iterator[dict]:
        for task in generator(project):
            if task.get("targets"):
                task["uptodate"] = [*task.get("uptodate", []), outputs_intact]
            yield task

    return wrapper


def refuse(message: str) -> TaskFailed:
    """Action of a task that cannot run on this host or with this recipe."""
    return TaskFailed(message)


def refusal(name: str, doc: str, message: str, **fields: Any) -> dict:
    """A task that fails with `message` whenever it is asked for (never up to date)."""
    return {"name": name, "doc": doc, "actions": [(refuse, [message])], "uptodate": [False], **fields}


def load_project_or_invalid(root: Path, host: tuple[Trtexec | None, str | None] | None = None) -> Project:
    """load_project for doit: a user error becomes InvalidDodoFile (one `ERROR:` line, exit 3).
    A doit command that builds nothing (`list`, `info`, ...) does not start trtexec."""
    import sys

    from doit.exceptions import InvalidDodoFile

    from .session import READ_ONLY_COMMANDS, doit_command

    try:
        project = load_project(root, probe=doit_command(sys.argv) not in READ_ONLY_COMMANDS, host=host)
        set_broken_recipes_aside(project, sys.argv)
    except TrtforgeError as exc:
        raise InvalidDodoFile(str(exc)) from None
    return project


def set_broken_recipes_aside(project: Project, argv: list[str]) -> None:
    """A broken recipe disables only its own tasks: every command names it in one warning line
    and goes on with the others. It is an error (raised) when there is no other recipe or the
    command names one of its tasks (`build:<recipe>-<variant>`): that is what the user asked for."""
    if not project.broken:
        return
    asked = [arg.split(":", 1)[1] for arg in argv[1:] if ":" in arg and not arg.startswith("-")]
    for target in asked:
        owner = recipe_of(project, target)
        if isinstance(owner, BrokenRecipe):
            raise owner.error
    if not project.recipes:
        raise project.broken[0].error
    from .console import warn

    for broken in project.broken:
        warn(f"{broken.error}; its tasks are left out until it is fixed (the other recipes build)")


def recipe_of(project: Project, target: str) -> Recipe | BrokenRecipe | None:
    """The recipe, loaded or broken, whose task `target` (`<recipe>` or `<recipe>-<variant>`)
    would be: the longest name that fits, as `a-b-fp16` is recipe `a-b`'s when `a` exists too."""
    names = [(r.name, r) for r in project.recipes] + [(n, b) for b in project.broken for n in b.names]
    fitting = [(len(name), owner) for name, owner in names if target == name or target.startswith(name + "-")]
    return max(fitting, key=lambda fit: fit[0])[1] if fitting else None


def doit_namespace(project: Project) -> dict[str, Callable]:
    """`task_<stage>` creators for doit, one per stage, each documented for `doit list`.

    dodo.py and `trtforge plan` both load tasks from this, so they see the same graph.
    Their file paths are relative to the project folder (see `relative_paths`).
    """
    stages = [
        ("export", export_tasks, "export the recipe's model to ONNX"),
        ("surgery", surgery_tasks, "run the recipe's graph-surgery passes"),
        ("calib", calib_tasks, "INT8 calibration cache from the recipe's images"),
        ("quantize", quantize_tasks, "precision-transformed ONNX (FP16 AutoCast, INT8 Q/DQ)"),
        ("reference", reference_tasks, "FP32 reference outputs on the verification images"),
        ("lint", lint_tasks, "parser preflight: will TensorRT's ONNX parser take the engine's ONNX?"),
        ("engine", engine_tasks, "build the TensorRT engine with trtexec"),
        ("check", check_tasks, "accuracy gate against the FP32 reference"),
        ("package", package_tasks, "reproducible release archive of a built variant"),
        ("kit", kit_tasks, "build kit for the target device (no Python needed there)"),
        ("compare", compare_tasks, "per-recipe table: CPU latency, size, accuracy and TensorRT figures per variant"),
        ("build", build_tasks, "build a variant: its engine and its accuracy gate"),
        ("cpu", cpu_tasks, "every stage that runs without a GPU"),
    ]
    namespace = {}
    for name, generator, doc in stages:
        def creator(generator=generator):
            for task in generator(project):
                yield relative_paths(task, project.root)

        creator.__doc__ = doc
        namespace[f"task_{name}"] = creator
    return namespace


def forget_what_was_read() -> None:
    """Empty the caches of what generation reads (installed versions, image listings), so that
    making the graph again reads the host afresh, and the task cache's ReadLog sees each read."""
    for cached in (tool_version, installed_versions, _selected_images):
        cached.cache_clear()


def relative_paths(task: dict, root: Path) -> dict:
    """`task` with its file_dep and targets under `root` named relative to it.

    doit keys its state by these strings, and runs in the project folder: with absolute
    paths, a project moved or copied elsewhere (a new disk, a colleague's checkout) found
    none of its records and rebuilt everything (issue 13). Paths outside the project (the
    package's own code, images on a data disk) stay absolute: they did not move with it."""
    for key in ("file_dep", "targets"):
        if key in task:
            task[key] = [_under(path, root) for path in task[key]]
    return task


def _under(path: str, root: Path) -> str:
    prefix = f"{root}{os.sep}"
    if path.startswith(prefix) and os.path.normpath(path) == path:
        return path[len(prefix):]  # what relpath gives, without its two abspath calls (1,800 paths a no-op)
    relative = os.path.relpath(path, root)
    return path if relative == ".." or relative.startswith(".." + os.sep) else relative


@functools.lru_cache(maxsize=None)
def tool_version(*distributions: str) -> str | None:
    """Version of the first installed distribution among alternatives, or None."""
    installed = installed_versions()
    return next((installed[key] for key in map(_normalized, distributions) if key in installed), None)


@functools.lru_cache(maxsize=None)
def installed_versions() -> dict[str, str]:
    """{normalized distribution name: version}, read off the names of the metadata folders on
    sys.path (`name-version.dist-info`, as the wheel spec names them; `name-version[-pyX.Y]
    .egg-info`), the first on sys.path winning as for importlib.metadata. Every task's
    config names its tools' versions, so this runs on every doit command: importing
    importlib.metadata (email, zipfile, csv) cost about 30 ms of a 0.2 s no-op build, one
    listdir per sys.path folder costs about 1 ms."""
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:  # a zip file or a missing folder on sys.path
            continue
        for name in names:
            stem, dot, kind = name.rpartition(".")
            parts = stem.split("-")
            if dot and kind in ("dist-info", "egg-info") and len(parts) >= 2:
                found.setdefault(_normalized(parts[0]), parts[1])
    return found


def _normalized(distribution: str) -> str:
    """A distribution name as PEP 503 compares them (`onnx_graphsurgeon` = `onnx-graphsurgeon`)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def tool_versions(*names: str) -> dict[str, str | None]:
    alternatives = {"onnxruntime": ("onnxruntime-gpu", "onnxruntime")}
    return {name: tool_version(*alternatives.get(name, (name,))) for name in names}


def code(*relative: str) -> list[str]:
    """The package's own source files a stage runs: a change to them reruns the stage."""
    return [str(PACKAGE_DIR / r) for r in relative]


def package_code(subpackage: str) -> list[str]:
    """Every source file of one of the package's subpackages (the gates, say)."""
    return sorted(str(p) for p in (PACKAGE_DIR / subpackage).glob("*.py"))


def recipe_dir(project: Project, recipe: Recipe) -> Path:
    return project.artifacts / recipe.name


def surgered_onnx(project: Project, recipe: Recipe) -> Path:
    return recipe_dir(project, recipe) / "model.onnx"


def variant_dir(project: Project, recipe: Recipe, variant: Variant) -> Path:
    return recipe_dir(project, recipe) / variant.name


def autocast_onnx(project: Project, recipe: Recipe, variant: Variant) -> Path:
    return variant_dir(project, recipe, variant) / "autocast.onnx"


def qdq_onnx(project: Project, recipe: Recipe, variant: Variant) -> Path:
    return variant_dir(project, recipe, variant) / "qdq.onnx"


def calib_outputs(project: Project, recipe: Recipe, variant: Variant) -> dict[str, Path]:
    out = variant_dir(project, recipe, variant)
    return {"cache": out / "calib.cache", "report": out / "calib.json", "sample": out / "calib-sample.npy"}


def reference_outputs(project: Project, recipe: Recipe) -> dict[str, Path]:
    out = recipe_dir(project, recipe) / "reference"
    return {"inputs": out / "inputs.json", "outputs": out / "outputs.json", "images": out / "images.json"}


def checked_onnx(project: Project, recipe: Recipe, variant: Variant) -> Path:
    """The ONNX that carries a variant's precision on CPU: what the ONNX-level check runs."""
    return {"fp32": surgered_onnx(project, recipe), "fp16": autocast_onnx(project, recipe, variant),
            "int8": qdq_onnx(project, recipe, variant)}[variant.precision]


def needs_autocast(variant: Variant) -> bool:
    """Every FP16 variant gets an AutoCast ONNX: TensorRT 11 builds from it, and it is the
    FP16 model that can be run and checked on CPU."""
    return variant.precision == "fp16"


def header_version(project: Project) -> TrtVersion:
    """The TensorRT version written into calibration caches: the detected one, else 10.x."""
    return project.trtexec.version if project.trtexec else version_for_generation("10")


def calibration_images(project: Project, variant: Variant):
    """(selected images, None) or (None, why the set cannot be used)."""
    spec = variant.calibration
    field = f"variants.{variant.name}.calibration.images"
    try:
        chosen = _selected_images(project.root, spec.images, spec.count, spec.fraction)
    except ImageSetError as exc:
        return None, f"{field}: {exc}"
    if not chosen:
        return None, f"{field}: '{spec.images}' holds no image file; add images or point it at another set"
    return chosen, None


@functools.lru_cache(maxsize=None)
def _selected_images(root: Path, images: Path, count: int | None, fraction: float | None) -> tuple:
    """Listed once per doit invocation, however many tasks ask."""
    return tuple(select_images(list_image_set(root / images, root), count, fraction))


# ----------------------------------------------------------------------------- generators

@tracked
def export_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        source = r.model.weights or r.model.path
        tools = {"onnx": ("onnx",), "yolov5": ("torch", "yolov5")}.get(r.model.source, ("torch", "ultralytics"))
        yield {
            "name": r.name,
            "doc": f"export {r.name} to ONNX (opset {r.opset})",
            "actions": [(run_stage, [export.export_onnx, r.model, r.input, r.opset, project.root,
                                     recipe_dir(project, r) / "export.onnx", recipe_dir(project, r) / "export.json"])],
            "file_dep": ([str(project.root / source)] if source else []) + code("stages/export.py", "modelmeta.py"),
            "targets": [str(recipe_dir(project, r) / "export.onnx"), str(recipe_dir(project, r) / "export.json")],
            "uptodate": [config_changed({"model": jsonable(r.model), "input": jsonable(r.input),
                                         "opset": r.opset, "tools": tool_versions(*tools)})],
            "clean": True,
        }


@tracked
def surgery_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        passes = [(p.name, dict(p.params)) for p in r.surgery]
        plugin_files = sorted({project.plugin_passes[p.name] for p in r.surgery if p.name in project.plugin_passes})
        yield {
            "name": r.name,
            "doc": f"graph surgery on {r.name}: {', '.join(p.name for p in r.surgery) or 'no passes'}",
            "actions": [(run_stage, [surgery_stage.run_surgery, recipe_dir(project, r) / "export.onnx",
                                     surgered_onnx(project, r), passes, plugin_files, f"surgery:{r.name}",
                                     recipe_dir(project, r) / "export.json"])],
            "file_dep": [str(recipe_dir(project, r) / "export.onnx"), str(recipe_dir(project, r) / "export.json"),
                         *map(str, plugin_files),
                         *code("surgery.py", "stages/surgery.py", "stages/passes.py", "stages/nms.py", "modelmeta.py")],
            "targets": [str(surgered_onnx(project, r))],
            "uptodate": [config_changed({"passes": jsonable(passes),
                                         "tools": tool_versions("onnx", "onnx-graphsurgeon", "onnxslim",
                                                                "onnxruntime")})],
            "clean": True,
        }


@tracked
def calib_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        for v in r.variants:
            if v.precision != "int8":
                continue
            name, spec, outs = f"{r.name}-{v.name}", v.calibration, calib_outputs(project, r, v)
            doc = f"INT8 calibration cache of {r.name} from {spec.images} ({spec.method}, on CPU)"
            images, problem = calibration_images(project, v)
            if images is None:
                yield refusal(name, doc, f"{r.file.name}: {problem}")
                continue
            job = calibrate.CalibrationJob(
                task=f"calib:{name}", onnx=surgered_onnx(project, r), images=tuple(images),
                input_name=r.input.name, height=r.input.shape[-2], width=r.input.shape[-1],
                batch=spec.batch, method=spec.method, percentile=spec.percentile,
                skip_bad_images=spec.skip_bad_images, header_version=header_version(project),
                recipe_field=f"variants.{v.name}.calibration", preprocess=r.input.preprocess,
                store_dir=project.artifacts / "calib", cache_out=outs["cache"], report_out=outs["report"],
                sample_out=outs["sample"])
            yield {
                "name": name,
                "doc": doc,
                "actions": [(run_stage, [calibrate.calibrate, job])],
                "file_dep": [str(surgered_onnx(project, r)), *(str(i.path) for i in images),
                             *code("stages/calibrate.py", "images.py", "calib_cache.py")],
                "targets": [str(p) for p in outs.values()],
                "uptodate": [config_changed({"images": [i.name for i in images],
                                             # accuracy: the quantize task's, ranges do not depend on it
                                             "calibration": {k: v for k, v in jsonable(spec).items()
                                                             if k != "accuracy"},
                                             "input": list(r.input.shape),
                                             "preprocess": jsonable(r.input.preprocess),
                                             "header": str(job.header_version),
                                             "tools": tool_versions("onnxruntime", "opencv-python", "numpy")})],
                "clean": True,
            }


@tracked
def quantize_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        for v in r.variants:
            if v.precision == "int8":
                yield _qdq_task(project, r, v)
            if not needs_autocast(v):
                continue
            yield {
                "name": f"{r.name}-{v.name}",
                "doc": f"FP16 ONNX of {r.name} through ModelOpt AutoCast (runs on CPU)",
                "actions": [(run_stage, [autocast.autocast_fp16, surgered_onnx(project, r),
                                         autocast_onnx(project, r, v), v.build.keep_fp32, v.build.io])],
                "file_dep": [str(surgered_onnx(project, r)),
                             *code("stages/autocast.py", "modelmeta.py", "float16_io.py")],
                "targets": [str(autocast_onnx(project, r, v))],
                "uptodate": [config_changed({"keep_fp32": list(v.build.keep_fp32), "io": v.build.io,
                                             "tools": tool_versions("nvidia-modelopt", "onnx", "onnxruntime")})],
                "clean": True,
            }


@tracked
def reference_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        if r.verify is None:
            continue
        outs = reference_outputs(project, r)
        spec = r.verify
        doc = f"FP32 reference outputs of {r.name} under ONNX Runtime on {spec.images}"
        try:
            images = _selected_images(project.root, spec.images, spec.count, None)
        except ImageSetError as exc:
            images, problem = (), f"{r.file.name}: verify.images: {exc}"
        else:
            problem = None if images else (f"{r.file.name}: verify.images: '{spec.images}' holds no image file; "
                                           "add images or point verify.images at another set")
        if problem:
            yield refusal(r.name, doc, problem)
            continue
        batch = 1 if 0 in r.input.dynamic_axes else r.input.shape[0]
        yield {
            "name": r.name,
            "doc": doc,
            "actions": [(run_stage, [reference.make_reference, recipe_dir(project, r) / "export.onnx", images,
                                     r.input.name, r.input.shape[-2], r.input.shape[-1], batch, outs["inputs"],
                                     outs["outputs"], outs["images"], r.input.preprocess])],
            "file_dep": [str(recipe_dir(project, r) / "export.onnx"), *(str(i.path) for i in images),
                         *code("stages/reference.py", "images.py")],
            "targets": [str(p) for p in outs.values()],
            "uptodate": [config_changed({"images": [i.name for i in images], "input": list(r.input.shape),
                                         "preprocess": jsonable(r.input.preprocess), "batch": batch,
                                         "tools": tool_versions("onnxruntime", "opencv-python", "polygraphy",
                                                                "pillow")})],
            "clean": True,
        }


@tracked
def check_tasks(project: Project) -> Iterator[dict]:
    with_engine = check.tensorrt_available()
    for r in project.recipes:
        if r.verify is None:
            continue
        for v in r.variants:
            refs, out = reference_outputs(project, r), variant_dir(project, r, v)
            labels = _verification_labels(project, r)
            job = check.CheckJob(
                task=f"check:{r.name}-{v.name}", variant_onnx=checked_onnx(project, r, v),
                engine=out / engine.ENGINE, reference_inputs=refs["inputs"], reference_outputs=refs["outputs"],
                check=v.check, verify=r.verify, report_json=out / "check.json", report_png=out / "check.png",
                labels=labels, reference_images=refs["images"], calibration=check.CalibrationSet.of(project.root, v))
            yield {
                "name": f"{r.name}-{v.name}",
                "doc": f"accuracy gate of {r.name}-{v.name} against the FP32 reference (Polygraphy)",
                "actions": [(run_stage, [check.run_check, job])],
                # Where this host builds the engine, the check follows it, so a failed gate still leaves
                # an engine to inspect: a group's task_dep alone does not order its members (doit runs
                # whichever is ready first, and the check is, while the engine waits for lint).
                "task_dep": [f"engine:{r.name}-{v.name}"] if engine_plan(project, r, v)[0] else [],
                "file_dep": [str(refs["inputs"]), str(refs["outputs"]), str(job.variant_onnx),
                             *([str(job.engine)] if with_engine else []),
                             *code("stages/check.py", "stages/reference.py", "quant/cpu_form.py"),
                             *package_code("gates"),
                             # the labels, and the images they are read with (their size); images.json: the order
                             *([str(refs["images"]), *(str(i.image.path) for i in labels.images),
                                *map(str, labels.files())] if labels else [])],
                "targets": [str(job.report_json), str(job.report_png)],
                "uptodate": [config_changed({"check": jsonable(v.check), "verify": jsonable(r.verify),
                                             # a label file added where there was none is no file_dep yet
                                             "label_files": [i.label_name for i in labels.images if i.labels]
                                             if labels else None,
                                             "tensorrt": with_engine,
                                             "tools": tool_versions("polygraphy", "onnxruntime", "ultralytics")})],
                "clean": True,
            }


def _verification_labels(project: Project, r: Recipe) -> LabelSet | None:
    """verify.labels' files for the reference's images; None without labels, or when the images
    cannot be listed (reference:R refuses then, saying why, and no check runs before it)."""
    if r.verify.labels is None:
        return None
    try:
        images = _selected_images(project.root, r.verify.images, r.verify.count, None)
    except ImageSetError:
        return None
    spec = r.verify.labels
    return label_set(images, spec.dataset.as_posix() if spec.dataset else "yolo", spec.names)


def _qdq_task(project: Project, r: Recipe, v: Variant) -> dict:
    outs = calib_outputs(project, r, v)
    accuracy, report = _accuracy_job(project, r, v), variant_dir(project, r, v) / "accuracy.json"
    refs = reference_outputs(project, r)
    return {
        "name": f"{r.name}-{v.name}",
        "doc": f"Q/DQ INT8 ONNX of {r.name} through ModelOpt, scales from calib:{r.name}-{v.name}"
               + (", held to the task gate (calibration.accuracy)" if accuracy else ""),
        "actions": [(run_stage, [qdq.quantize_int8, surgered_onnx(project, r), outs["cache"], outs["sample"],
                                 qdq_onnx(project, r, v), v.build.keep_fp32, accuracy, report, v.build.io])],
        "file_dep": [str(surgered_onnx(project, r)), str(outs["cache"]), str(outs["sample"]),
                     *code("stages/qdq.py", "modelmeta.py", "float16_io.py"),
                     *([str(refs["inputs"]), str(refs["outputs"]), *code("quant/accuracy.py", "quant/cpu_form.py"),
                        *package_code("gates")] if accuracy else [])],
        "targets": [str(qdq_onnx(project, r, v)), *([str(report)] if accuracy else [])],
        "uptodate": [config_changed({"keep_fp32": list(v.build.keep_fp32), "io": v.build.io,
                                     "accuracy": {"control": jsonable(v.calibration.accuracy), "gate": accuracy.gate}
                                     if accuracy else None,
                                     "tools": tool_versions("nvidia-modelopt", "onnx", "onnxruntime")})],
        "clean": True,
    }


def _accuracy_job(project: Project, r: Recipe, v: Variant) -> AccuracyJob | None:
    """The accuracy control of an INT8 variant with calibration.accuracy (the recipe loader
    has checked that verify: has a task-aware gate)."""
    spec = v.calibration.accuracy if v.calibration else None
    if spec is None:
        return None
    refs = reference_outputs(project, r)
    gate = {"task": r.verify.task, "head": r.verify.head, "conf": r.verify.conf, "iou": r.verify.iou,
            "min_recall": v.check.min_recall_vs_fp32, "min_precision": v.check.min_precision_vs_fp32}
    return AccuracyJob(control=Control(f"quantize:{r.name}-{v.name}", spec.max_drop, spec.ranking_images,
                                       spec.timeout_s),
                       reference_inputs=refs["inputs"], reference_outputs=refs["outputs"], gate=gate,
                       store_dir=project.artifacts / "calib")


def _engine_onnx(project: Project, r: Recipe, v: Variant, mode: str) -> Path:
    """The ONNX an engine builds from: surgered, or its AutoCast / Q/DQ form in explicit mode."""
    if mode == "explicit" and v.precision == "fp16":
        return autocast_onnx(project, r, v)
    if mode == "explicit" and v.precision == "int8":
        return qdq_onnx(project, r, v)
    return surgered_onnx(project, r)


def engine_job(project: Project, r: Recipe, v: Variant, mode: str) -> engine.EngineJob:
    build = v.build
    if not build.profiles:
        build = replace(build, profiles=default_profiles(r.input.name, r.input.shape, r.input.dynamic_axes))
    return engine.EngineJob(
        task=f"engine:{r.name}-{v.name}",
        trtexec=project.trtexec.path if project.trtexec else None,
        version=project.trtexec.version if project.trtexec else None,
        onnx=_engine_onnx(project, r, v, mode),
        precision=v.precision, mode=mode, build=build,
        plugin_files=tuple(project.root / p for p in build.plugins),
        calibration_cache=(calib_outputs(project, r, v)["cache"]
                           if v.precision == "int8" and mode == "implicit" else None),
        out_dir=variant_dir(project, r, v),
        timing_cache_dir=project.artifacts / "cache" / "timing",
    )


def engine_plan(project: Project, r: Recipe, v: Variant) -> tuple[engine.EngineJob | None, str | None]:
    """(job, None) when the engine can be built here, else (None, the one-line reason)."""
    if r.targets:
        return None, f"{r.name} builds its engines on the fleet (targets: {', '.join(t.name for t in r.targets)})"
    if project.trtexec is None:
        return None, project.trtexec_problem
    mode, problem = _resolved_mode(project, r, v, v.build, project.trtexec.version, f"variants.{v.name}")
    return (engine_job(project, r, v, mode), None) if mode else (None, problem)


def reverts_nodes(v: Variant) -> bool:
    """Whether the variant's accuracy control may revert nodes in its Q/DQ ONNX (render.check_intent)."""
    return bool(v.calibration and v.calibration.accuracy)


def _resolved_mode(project: Project, r: Recipe, v: Variant, build: BuildOptions, version: TrtVersion,
                   where: str) -> tuple[str | None, str | None]:
    """(implicit or explicit, None) when `version` can build the variant with `build`, else (None, why)."""
    try:
        mode = check_intent(v.precision, build, version, r.surgery, reverts_nodes(v))
    except RenderError as exc:
        return None, f"{r.file.name}: {where}: {exc}"
    if v.precision == "int8":
        _, problem = calibration_images(project, v)
        if problem:
            return None, f"{r.file.name}: {problem}"
    return mode, None


def target_dir(project: Project, r: Recipe, v: Variant, t: TargetSpec) -> Path:
    return variant_dir(project, r, v) / "targets" / t.name


def target_plan(project: Project, r: Recipe, v: Variant, t: TargetSpec) -> tuple[engine.EngineJob | None, str | None]:
    """The engine job of variant `v` on target class `t`, rendered for the generation the class
    declares (its machine renders again for the TensorRT it finds), or the one-line refusal."""
    version = version_for_generation(t.tensorrt)
    build = t.build_of(v.build)
    mode, problem = _resolved_mode(project, r, v, build, version, f"variants.{v.name} on targets.{t.name}")
    if mode is None:
        return None, problem
    job = engine_job(project, replace(r, build=build), replace(v, build=build), mode)
    return replace(job, task=f"engine:{r.name}-{v.name}@{t.name}", trtexec=None, version=version,
                   out_dir=target_dir(project, r, v, t),
                   timing_cache_dir=project.artifacts / "cache" / "timing" / "fleet"), None


@tracked
def engine_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        if r.targets:
            yield from _fleet_engine_tasks(project, r)
            continue
        for v in r.variants:
            job, problem = engine_plan(project, r, v)
            name, out = f"{r.name}-{v.name}", variant_dir(project, r, v)
            doc = f"TensorRT {v.precision.upper()} engine of {r.name} through trtexec"
            if job is None:
                # depends on the surgered ONNX, so export and surgery still run before it fails
                yield refusal(name, doc, problem, file_dep=[str(surgered_onnx(project, r))])
                continue
            argv = render_argv(engine.engine_intent(job), job.version)
            yield {
                "name": name,
                "doc": doc,
                "actions": [(run_stage, [engine.build_engine, job, not_found_message()])],
                "task_dep": [f"lint:{name}"],  # the parser preflight runs before any trtexec call
                "file_dep": [str(job.onnx), *map(str, job.plugin_files),
                             *code("stages/engine.py", "render.py", "calib_cache.py"),
                             *([str(job.calibration_cache)] if job.calibration_cache else [])],
                "targets": [str(out / f) for f in (engine.ENGINE, engine.LOG, engine.SUMMARY, engine.SCRIPT,
                                                   *_keep_fp32_cache(job))],
                # the engine's identity is what builds it: this TensorRT on this GPU (issue 13)
                # keep_fp32 and io render against the ONNX (a file_dep), so the argv lacks their flags here
                "uptodate": [gpu_config_changed({"trtexec": str(job.version), "argv": argv,
                                                 "keep_fp32": list(job.build.keep_fp32), "io": job.build.io})],
                "clean": True,
            }


def _fleet_engine_tasks(project: Project, r: Recipe) -> Iterator[dict]:
    """engine:R-V@T: one Ray task per engine, on a machine of class T (fleet.py, imported
    here: a project without targets never loads it)."""
    from . import fleet

    for v in r.variants:
        for t in r.targets:
            job, problem = target_plan(project, r, v, t)
            name = f"{r.name}-{v.name}@{t.name}"
            doc = f"TensorRT {v.precision.upper()} engine of {r.name} built on a {t.resource} machine (Ray)"
            if job is None:
                yield refusal(name, doc, problem, file_dep=[str(surgered_onnx(project, r))])
                continue
            fjob = fleet.FleetJob(engine=job, target=t.name, resource=t.resource, generation=t.tensorrt,
                                  root=project.root, passes=r.surgery)
            yield {
                "name": name,
                "doc": doc,
                "actions": [(run_stage, [fleet.build_on_target, fjob])],
                "task_dep": [f"lint:{r.name}-{v.name}"],
                "file_dep": [str(job.onnx), *map(str, job.plugin_files),
                             *code("stages/engine.py", "render.py", "calib_cache.py", "fleet.py"),
                             *([str(job.calibration_cache)] if job.calibration_cache else [])],
                "targets": [str(job.out_dir / f) for f in (engine.ENGINE, engine.LOG, engine.SUMMARY, engine.SCRIPT,
                                                           *_keep_fp32_cache(job))],
                # the engine's identity is its class: the machines advertising the resource, their TensorRT
                "uptodate": [config_changed({"resource": t.resource, "tensorrt": t.tensorrt,
                                             "argv": render_argv(engine.engine_intent(job), job.version),
                                             "keep_fp32": list(job.build.keep_fp32), "io": job.build.io})],
                "clean": True,
            }


def _keep_fp32_cache(job: engine.EngineJob) -> tuple[str, ...]:
    """The calibration cache without kept scales that an engine job writes beside its engine (8.2 INT8 keep_fp32)."""
    return (KEEP_FP32_CACHE,) if engine.keep_fp32_route_of(job) == "calibration_cache" else ()


def lint_target(project: Project, r: Recipe, v: Variant, version: TrtVersion) -> lint.LintTarget:
    """The ONNX an engine of `version` would be built from, or the renderer's refusal."""
    report = variant_dir(project, r, v) / f"preflight-{version.generation}.json"
    try:
        mode = check_intent(v.precision, v.build, version, r.surgery, reverts_nodes(v))
    except RenderError as exc:
        return lint.LintTarget(version.generation, None, report, refused=f"variants.{v.name}: {exc}")
    return lint.LintTarget(version.generation, _engine_onnx(project, r, v, mode), report)


@tracked
def lint_tasks(project: Project) -> Iterator[dict]:
    """lint:R-V per variant and lint:R for all of them; strict for the host's trtexec, or for the
    generations a recipe's targets declare, else every generation (a finding is then a warning)."""
    host = [project.trtexec.version] if project.trtexec else [version_for_generation(g) for g in GRAMMARS]
    for r in project.recipes:
        versions = sorted({version_for_generation(t.tensorrt) for t in r.targets}) if r.targets else host
        for v in r.variants:
            targets = tuple(lint_target(project, r, v, version) for version in versions)
            job = lint.LintJob(task=f"lint:{r.name}-{v.name}", targets=targets, plugin_libraries=bool(v.build.plugins),
                               strict=bool(r.targets) or project.trtexec is not None)
            onnx_files = sorted({str(t.onnx) for t in targets if t.onnx})
            yield {
                "name": f"{r.name}-{v.name}",
                "doc": f"parser preflight of {r.name}-{v.name} for TensorRT {', '.join(t.generation for t in targets)}",
                "actions": [(run_stage, [lint.lint_variant, job])],
                "file_dep": [*onnx_files, *code("stages/lint.py", "preflight.py", "parser_ops.py")],
                "targets": [str(t.report) for t in targets],
                "uptodate": [config_changed({"targets": [[t.generation, t.refused] for t in targets],
                                             "plugin_libraries": job.plugin_libraries, "strict": job.strict,
                                             "tools": tool_versions("onnx")})],
                "clean": True,
            }
        yield {"name": r.name, "doc": f"parser preflight of every variant of {r.name}", "actions": None,
               "task_dep": [f"lint:{r.name}-{v.name}" for v in r.variants]}


def build_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        for v in r.variants:
            job, problem = engine_plan(project, r, v)
            name = f"{r.name}-{v.name}"
            doc = f"everything for the {v.name} variant of {r.name} (engine included; needs trtexec)"
            checks = [f"check:{name}"] if r.verify else []
            if r.targets:
                yield {"name": name, "doc": f"everything for the {v.name} variant of {r.name}, an engine per target "
                                            f"({', '.join(t.name for t in r.targets)}) built on the fleet",
                       "actions": None, "task_dep": [*(f"engine:{name}@{t.name}" for t in r.targets), *checks]}
            elif job is None and project.trtexec is not None:  # refused by the renderer: before any work
                yield refusal(name, doc, problem)
            else:
                yield {"name": name, "doc": doc, "actions": None, "task_dep": [f"engine:{name}", *checks]}


def cpu_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        deps = [f"export:{r.name}", f"surgery:{r.name}"]
        deps += [f"quantize:{r.name}-{v.name}" for v in r.variants if v.precision in ("fp16", "int8")]
        deps.append(f"lint:{r.name}")
        if r.verify:
            deps += [f"reference:{r.name}", *(f"check:{r.name}-{v.name}" for v in r.variants), f"compare:{r.name}"]
        yield {"name": r.name, "doc": f"every stage of {r.name} that runs without a GPU (all variants)",
               "actions": None, "task_dep": deps}


@tracked
def compare_tasks(project: Project) -> Iterator[dict]:
    """Recipes with a verify: section (the table needs its inputs and the accuracy gates)."""
    for r in project.recipes:
        if r.verify is None:
            continue
        variants = tuple(_compare_inputs(project, r, v) for v in r.variants)
        out = recipe_dir(project, r)
        job = compare.CompareJob(task=f"compare:{r.name}", reference_inputs=reference_outputs(project, r)["inputs"],
                                 variants=variants, report_json=out / "compare.json", report_md=out / "compare.md")
        yield {
            "name": r.name,
            "doc": f"{r.name}: ONNX Runtime CPU latency, size, accuracy gate and trtexec figures of every variant",
            "actions": [(run_stage, [compare.compare_variants, job])],
            "file_dep": [str(job.reference_inputs), *(str(p) for v in variants for p in (v.onnx, v.check_report)),
                         *(str(v.engine_summary) for v in variants if v.engine_summary),
                         *code("stages/compare.py")],
            "targets": [str(job.report_json), str(job.report_md)],
            "uptodate": [config_changed({"variants": [[v.name, v.precision, v.engine_missing_reason
                                                       if v.engine_summary is None else None] for v in variants],
                                         "tools": tool_versions("onnxruntime")})],
            "clean": True,
        }


def _compare_inputs(project: Project, r: Recipe, v: Variant) -> compare.VariantInputs:
    """A variant's row reads the engine's summary only where the engine can be built here."""
    job, problem = engine_plan(project, r, v)
    return compare.VariantInputs(
        name=v.name, precision=v.precision, onnx=checked_onnx(project, r, v),
        check_report=variant_dir(project, r, v) / "check.json",
        engine_summary=variant_dir(project, r, v) / engine.SUMMARY if job else None,
        engine_missing_reason="" if job else problem.split(";")[0])


def engine_places(project: Project, r: Recipe, v: Variant) -> list[tuple[str, engine.EngineJob | None, str | None]]:
    """(task-name suffix, job, refusal) of each engine of a variant: this host's ("", ...), or
    one per target class ("@t4", ...) for a recipe with targets."""
    if r.targets:
        return [(f"@{t.name}", *target_plan(project, r, v, t)) for t in r.targets]
    return [("", *engine_plan(project, r, v))]


@tracked
def package_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        for v, (suffix, job, problem) in ((variant, place) for variant in r.variants
                                          for place in engine_places(project, r, variant)):
            name = f"{r.name}-{v.name}{suffix}"
            doc = f"release archive of {name} (engine, ONNX, manifest, reproduce.sh)"
            if job is None:
                yield refusal(name, doc, problem)
                continue
            out = job.out_dir
            files = [("engine.plan", out / engine.ENGINE), ("model.onnx", job.onnx),
                     ("summary.json", out / engine.SUMMARY), ("trtexec.log", out / engine.LOG)]
            if job.onnx != surgered_onnx(project, r):
                files.append(("model.fp32.onnx", surgered_onnx(project, r)))
            if v.precision == "int8":
                files += [("calib.cache", calib_outputs(project, r, v)["cache"]),
                          ("calib.json", calib_outputs(project, r, v)["report"]),
                          *((name, out / name) for name in _keep_fp32_cache(job))]
            if r.verify:
                files.append(("check.json", variant_dir(project, r, v) / "check.json"))
            record = project.artifacts / "release" / f"{name}.release.json"
            batch_axis = 0 in r.input.dynamic_axes
            pjob = package.PackageJob(
                task=f"package:{name}", recipe=r.name, variant=f"{v.name}{suffix}", files=tuple(files),
                summary=out / engine.SUMMARY, script=out / engine.SCRIPT,
                export_metadata=recipe_dir(project, r) / "export.json",
                resolved_recipe=_portable_recipe(r), max_batch=_max_batch(job) if batch_axis else 0,
                triton=r.package.triton, ultralytics_engine=r.package.ultralytics_engine,
                ship_onnx=r.package.onnx, release_dir=project.artifacts / "release", record=record,
                io=v.build.io)
            yield {
                "name": name,
                "doc": doc,
                "actions": [(run_stage, [package.make_package, pjob])],
                "file_dep": [*(str(p) for _, p in files), str(pjob.script), str(pjob.export_metadata),
                             *code("stages/package.py")],
                "targets": [str(record)],
                "uptodate": [config_changed({"recipe": pjob.resolved_recipe, "package": jsonable(r.package)}),
                             ArchiveIntact(str(record))],
                "clean": True,
            }


def _portable_recipe(r: Recipe) -> dict:
    """The resolved recipe with no absolute path in it (it goes into release manifests)."""
    data = jsonable(r)
    data["file"] = r.file.name
    return data


def _max_batch(job: engine.EngineJob) -> int:
    return max(rng.max[0] for profile in job.build.profiles for _, rng in profile)


@tracked
def kit_tasks(project: Project) -> Iterator[dict]:
    for r in project.recipes:
        for v in r.variants:
            name = f"{r.name}-{v.name}"
            onnx_files = [("model.onnx", surgered_onnx(project, r))]
            extra = []
            if v.precision == "fp16":
                onnx_files.append(("autocast.onnx", autocast_onnx(project, r, v)))
            if v.precision == "int8":
                onnx_files.append(("qdq.onnx", qdq_onnx(project, r, v)))
                extra.append(("calib.cache", calib_outputs(project, r, v)["cache"]))
            if r.verify:
                refs = reference_outputs(project, r)
                extra += [("verify/inputs.json", refs["inputs"]), ("verify/outputs.json", refs["outputs"])]
            output = project.artifacts / "kit" / f"{name}-kit.tar.gz"
            job = kit.KitJob(task=f"kit:{name}", stem=f"{name}-kit", job=engine_job(project, r, v, "auto"),
                             onnx_files=tuple(onnx_files), extra_files=tuple(extra), output=output,
                             passes=r.surgery, reverted=reverts_nodes(v))
            yield {
                "name": name,
                "doc": f"build kit of {name} for building on the target device (build.sh per TensorRT version)",
                "actions": [(run_stage, [kit.make_kit, job])],
                "file_dep": [*(str(p) for _, p in (*onnx_files, *extra)),
                             *code("stages/kit.py", "stages/engine.py", "render.py", "calib_cache.py")],
                "targets": [str(output)],
                "uptodate": [config_changed({"build": jsonable(v.build), "precision": v.precision})],
                "clean": True,
            }
