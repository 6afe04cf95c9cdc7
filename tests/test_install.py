"""trtforge as an installed tool (issue 14): the built wheel in a fresh virtual environment,
`trtforge init` in a folder outside any clone, and a build there.

The fresh environment gets trtforge from the wheel only; its dependencies (torch,
ultralytics, ModelOpt: gigabytes) are borrowed from the development environment through a
.pth line instead of being downloaded again. So this checks what the wheel carries (the
package, its example files, the `trtforge` command) and that a project needs nothing from
the repository, not pip's dependency resolution."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO, doit_env

pytestmark = pytest.mark.slow


def run(*argv, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=doit_env(env), capture_output=True, text=True,
                            check=False, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with the wheel built from this checkout installed."""
    base = tmp_path_factory.mktemp("install")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", base / "dist", REPO)
    (wheel,) = (base / "dist").glob("trtforge-*.whl")
    venv = base / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    site = Path(run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                .stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel)
    return venv / "bin"


def test_the_wheel_installs_a_command_that_makes_a_project_outside_any_clone_and_builds_there(installed, tmp_path):
    where = run(installed / "python", "-c", "import trtforge; print(trtforge.__file__)").stdout
    assert where.startswith(str(installed.parent)), where  # the wheel's copy, not this checkout's
    project = tmp_path / "work" / "detector"
    said = run(installed / "trtforge", "init", project, "--example", "yolov8n").stdout
    assert f"wrote {project / 'recipes' / 'yolov8n.yaml'}" in said
    dodo = (project / "dodo.py").read_text()
    assert len([line for line in dodo.splitlines() if line]) == 3 and "trtforge.project" in dodo
    assert {"/artifacts/", "*.pt", "*.onnx"} <= set((project / ".gitignore").read_text().splitlines())
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("640", "160"))  # the size does not matter here
    listed = run(installed / "python", "-m", "doit", "list", "--all", cwd=project).stdout
    assert "build:yolov8n-int8" in listed and "my-model" not in listed  # the template is not a recipe
    built = run(installed / "python", "-m", "doit", "lint:yolov8n-fp32", cwd=project)
    assert (project / "artifacts" / "yolov8n" / "model.onnx").is_file(), built.stdout + built.stderr

    from doubles.trtexec import make_wrapper, read_engine  # the engine, its check and its release, installed

    double = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    run(installed / "python", "-m", "doit", "build:yolov8n-fp16", "package:yolov8n-fp16", cwd=project, env=double)
    assert read_engine(project / "artifacts" / "yolov8n" / "fp16" / "engine.plan")["trt_version"].startswith("10.8")
    (archive,) = (project / "artifacts" / "release").glob("yolov8n-fp16-*.tar.gz")
    assert "OK" in run(installed / "trtforge", "verify-package", archive).stdout
    refused = subprocess.run([installed / "trtforge", "init", project], capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith(f"trtforge: {project} already holds a project")


def test_init_writes_only_files_that_do_not_exist_yet(tmp_path):
    """A folder that already has a .gitignore (a repository the user keeps models in) keeps it."""
    from trtforge.errors import TrtforgeError
    from trtforge.project import init_project

    (tmp_path / ".gitignore").write_text("mine\n")
    with pytest.raises(TrtforgeError, match=r"already has \.gitignore; init writes only files that do not exist"):
        init_project(tmp_path, "yolov8n")
    assert (tmp_path / ".gitignore").read_text() == "mine\n" and not (tmp_path / "dodo.py").exists()
    written = init_project(tmp_path / "new")
    assert {p.relative_to(tmp_path / "new").as_posix() for p in written} == {
        "dodo.py", ".gitignore", "recipes/my-model.yaml.example"}


def test_init_example_adds_the_demo_to_an_existing_project_and_overwrites_nothing(tmp_path):
    """README: `init DIR --example yolov8n` adds the demo recipe; on a project that exists it
    adds only the example's recipe and calib/ lists, or refuses, writing nothing."""
    from conftest import run_doit

    cli = Path(sys.executable).parent / "trtforge"
    project = tmp_path / "p"
    run(cli, "init", project)
    dodo = (project / "dodo.py").read_text()
    (project / "calib" / "demo-verification.txt").write_text("mine\n")
    refused = subprocess.run([cli, "init", project, "--example", "yolov8n"], capture_output=True, text=True,
                             check=False)
    assert refused.returncode == 1 and refused.stderr == (
        f"trtforge: {project} already has calib/demo-verification.txt; init writes only files that do not exist "
        "yet (move them aside, or init another folder)\n")
    assert not (project / "recipes" / "yolov8n.yaml").exists()  # checked before anything is written
    assert (project / "calib" / "demo-verification.txt").read_text() == "mine\n"

    (project / "calib" / "demo-verification.txt").unlink()
    said = run(cli, "init", project, "--example", "yolov8n").stdout
    assert [line for line in said.splitlines() if line.startswith("wrote ")] == [
        f"wrote {project / rel}" for rel in ("recipes/yolov8n.yaml", "calib/demo-calibration.txt",
                                             "calib/demo-verification.txt")]
    assert (project / "dodo.py").read_text() == dodo and (project / "recipes" / "my-model.yaml.example").is_file()
    assert "build:yolov8n-int8" in run_doit(project, "list", "--all").stdout

    again = subprocess.run([cli, "init", project, "--example", "yolov8n"], capture_output=True, text=True, check=False)
    assert again.returncode == 1 and "already has recipes/yolov8n.yaml, calib/demo-calibration.txt" in again.stderr
    plain = subprocess.run([cli, "init", project], capture_output=True, text=True, check=False)
    assert plain.returncode == 1 and plain.stderr.rstrip().endswith("or adds an example to a project with --example "
                                                                     "yolov8n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "dodo.py").write_text("def task_hello():\n    return {'actions': ['echo hi']}\n")
    foreign = subprocess.run([cli, "init", other, "--example", "yolov8n"], capture_output=True, text=True, check=False)
    assert foreign.returncode == 1 and "dodo.py does not load trtforge" in foreign.stderr
    assert sorted(p.name for p in other.iterdir()) == ["dodo.py"]
