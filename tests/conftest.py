"""Shared fixtures: temporary projects laid out like the real one, and doit runs in them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from suite_budget import pytest_addoption, pytest_sessionfinish  # noqa: E402,F401  (the suite's time budget)

# A small YOLOv8n recipe: 160x160 input where the size does not matter (export, surgery,
# doit bookkeeping and trtexec grammar behave the same as at 640).
SMALL_RECIPE = """\
model: {source: ultralytics, arch: yolov8n.yaml, seed: 0}
input: {name: images, shape: [1, 3, 160, 160], dynamic_axes: [0]}
export: {opset: 17}
surgery: [fold_constants, slim, infer_shapes]
build:
  profiles:
    - images: {min: [1, 3, 160, 160], opt: [2, 3, 160, 160], max: [4, 3, 160, 160]}
  workspace: 1GiB
variants:
  fp32: {precision: fp32}
  fp16:
    precision: fp16
    build: {keep_fp32: ["/model.22/dfl/*"]}
"""


# The longest files, started first so that both xdist workers finish together (--dist
# loadfile hands out files in collection order); measured with --durations.
LONGEST_FIRST = ("test_zoo.py", "test_accuracy_control.py", "test_build_e2e.py", "test_labels.py",
                 "test_int8_quality.py", "test_trained_detector.py", "test_keep_fp32.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the order within a file and among the rest is kept


def make_project(root: Path, recipes: dict[str, str]) -> Path:
    """A project folder with the repository's dodo.py and the given recipe texts."""
    (root / "recipes").mkdir(parents=True)
    (root / "plugins").mkdir()
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    for name, text in recipes.items():
        (root / "recipes" / f"{name}.yaml").write_text(text)
    return root


def with_demo_sets(project: Path) -> Path:
    """`project` with the repository's demo calibration and verification manifests in calib/."""
    (project / "calib").mkdir(exist_ok=True)
    for manifest in ("demo-calibration.txt", "demo-verification.txt"):
        shutil.copy(REPO / "calib" / manifest, project / "calib")
    return project


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepared_project(folder: Path, *tasks: str) -> Path:
    """A SMALL_RECIPE project in `folder` after `doit <tasks>`: module fixtures prepare one, and
    each test works on a `copied` one (export and surgery take seconds; a copy, milliseconds)."""
    project = make_project(folder / "proj", {"yolov8n": SMALL_RECIPE})
    result = run_doit(project, *tasks)
    assert result.returncode == 0, result.stdout + result.stderr
    return project


def copied(project: Path, tmp_path: Path) -> Path:
    """A private copy of a prepared project, for a test that changes it."""
    copy = tmp_path / "proj"
    shutil.copytree(project, copy, symlinks=True)
    return copy


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj", {"yolov8n": SMALL_RECIPE})


def doit_env(env: dict | None = None) -> dict:
    """The caller's environment without any trtexec, plus `env`. Without COLUMNS and LINES
    too: pytest-xdist's workers set them to 80x24, which a build writing to a log never has."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("TRTEXEC", "COLUMNS", "LINES")}
    full_env["PATH"] = os.pathsep.join(p for p in full_env.get("PATH", "").split(os.pathsep)
                                       if not (Path(p) / "trtexec").exists())
    full_env.update(env or {})
    return full_env


def run_doit(project: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m doit` in `project` the way a user would, with TRTEXEC from `env` only."""
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=project, env=doit_env(env),
                          capture_output=True, text=True, timeout=timeout)


def executed(result: subprocess.CompletedProcess) -> list[str]:
    """Tasks doit reports as executed (`.  name`), in order."""
    return [line[3:].strip() for line in result.stdout.splitlines() if line.startswith(".  ")]


def the_error(result) -> str:
    """The one line doit shows under `TaskFailed - taskid:<task>`; no traceback anywhere."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = output.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith("TaskFailed - taskid:")]
    assert len(failed) == 1, output
    return lines[failed[0] + 1]


def up_to_date(result: subprocess.CompletedProcess) -> list[str]:
    return [line[3:].strip() for line in result.stdout.splitlines() if line.startswith("-- ")]
