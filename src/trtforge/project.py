"""A project folder as doit sees it, and `trtforge init`, which makes one anywhere.

A project's dodo.py is three lines that call `doit_globals`; everything else lives in the
installed package, so a project holds only the user's recipes, calibration sets, plugins
and artifacts, never a copy of trtforge (issue 14).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TrtforgeError

DODO = '''"""doit entry point of a trtforge project: `doit list`, `doit build:<recipe>-<variant>`."""

from trtforge.project import doit_globals

globals().update(doit_globals(__file__))
'''

GITIGNORE = """# trtforge: everything under artifacts/ is rebuilt from the recipes
/artifacts/
# model files: large, and often not yours to publish
*.pt
*.pth
*.onnx
*.engine
*.plan
"""

EXAMPLES = ("yolov8n",)


def doit_globals(dodo_file: str) -> dict:
    """What a project's dodo.py hands doit: DOIT_CONFIG and one task creator per stage.

    doit runs in the project folder (file paths in its state are relative to it, see
    tasks.relative_paths), also under `doit -d <elsewhere>`. A user error (a recipe, the
    lock, artifacts/) becomes doit's one `ERROR:` line, exit 3."""
    from doit.exceptions import InvalidDodoFile

    from . import session, taskcache

    root = Path(dodo_file).resolve().parent
    os.chdir(root)
    config = session.doit_config(root / "artifacts")
    try:
        session.begin(root / "artifacts")
    except TrtforgeError as exc:
        raise InvalidDodoFile(str(exc)) from None
    return {"DOIT_CONFIG": config, **taskcache.doit_namespace(root)}


def init_project(folder: Path, example: str | None = None) -> list[Path]:
    """Write a new project into `folder` (created if missing), or with `example` add that
    example to the trtforge project already there; return what was written.

    Nothing of the user's is ever overwritten: a file init would write that exists already
    refuses the whole call, and a folder holding a project (dodo.py or recipes) is refused
    unless an example is being added to it. Without `example`, recipes/ gets a commented
    template doit does not load."""
    if example is not None and example not in EXAMPLES:
        raise TrtforgeError(f"no example '{example}'; examples: {', '.join(EXAMPLES)}")
    if (folder / "dodo.py").exists() and example is not None:
        return _add_example(folder, example)
    if (folder / "dodo.py").exists() or any((folder / "recipes").glob("*.y*ml")):
        raise TrtforgeError(f"{folder} already holds a project (dodo.py or recipes/*.yaml); init writes only "
                            "into a new or empty folder, or adds an example to a project with --example "
                            f"{EXAMPLES[0]}")
    # imported here, not at the top: dodo.py imports this module on every doit command
    from importlib import resources

    template = (resources.files("trtforge") / "examples" / "my-model.yaml.example").read_text()
    files = {Path("dodo.py"): DODO, Path(".gitignore"): GITIGNORE,
             Path("recipes") / "my-model.yaml.example": template, **_example_files(example)}
    written = _write_new(folder, files)
    for empty in ("calib", "plugins", "models"):
        (folder / empty).mkdir(exist_ok=True)
    return written


def _add_example(folder: Path, example: str) -> list[Path]:
    """The example's recipe and image lists written into an existing trtforge project; a
    dodo.py that does not load trtforge is another tool's project and is left alone."""
    if "trtforge" not in (folder / "dodo.py").read_text(errors="replace"):
        raise TrtforgeError(f"{folder / 'dodo.py'} does not load trtforge, so {folder} is not a trtforge project; "
                            "init the example into another folder")
    return _write_new(folder, _example_files(example))


def _example_files(example: str | None) -> dict[Path, str]:
    """An example's files by their place in a project: its recipe and calib/ manifests."""
    if example is None:
        return {}
    from importlib import resources

    examples = resources.files("trtforge") / "examples"
    files = {Path("recipes") / f"{example}.yaml": (examples / "recipes" / f"{example}.yaml").read_text()}
    for manifest in sorted((examples / "calib").iterdir(), key=lambda entry: entry.name):
        files[Path("calib") / manifest.name] = manifest.read_text()
    return files


def _write_new(folder: Path, files: dict[Path, str]) -> list[Path]:
    """Write `files` under `folder`, none of which may exist yet (checked before any is written)."""
    taken = [str(rel) for rel in files if (folder / rel).exists()]
    if taken:
        raise TrtforgeError(f"{folder} already has {', '.join(taken)}; init writes only files that do not exist yet "
                            "(move them aside, or init another folder)")
    written = []
    for rel, text in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    return written
