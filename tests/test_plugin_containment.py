"""A user's surgery plugin runs inside the build, so how it may end is part of the interface:
`sys.exit` or `os._exit`, in a pass or when its file is imported, fails the surgery task in
one line naming the file and pass; it never ends the build with that exit code and nothing
built. Ctrl-C from inside a pass still stops the build. Real doit runs on a real 160 px
export (the plugin's way out does not depend on the size)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copied, executed, prepared_project, run_doit, the_error

from trtforge.errors import StageError
from trtforge.stages.surgery import run_surgery

pytestmark = pytest.mark.slow

TASK = "surgery:yolov8n"
PASS_ENDS = "a pass must return the graph or raise"


@pytest.fixture(scope="module")
def surgered(tmp_path_factory) -> Path:
    """One project whose export and surgery already ran; tests copy it."""
    return prepared_project(tmp_path_factory.mktemp("plugins"), TASK)


@pytest.fixture
def project(surgered, tmp_path) -> Path:
    return copied(surgered, tmp_path)


def plugin(body: str, top: str = "") -> str:
    """A plugin file registering the pass `x`, whose body is `body`."""
    return (f"import os, signal, sys\nfrom trtforge.surgery import surgery_pass\n{top}\n\n"
            f"@surgery_pass('x')\ndef x(model):\n    {body}\n    return model\n")


def with_plugin(project: Path, text: str) -> Path:
    (project / "plugins" / "x.py").write_text(text)
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("surgery: [fold_constants, slim, infer_shapes]",
                                                 "surgery: [fold_constants, x, infer_shapes]"))
    return project


EXITS = {
    "sys.exit(0)": "sys.exit(0)",
    "sys.exit('bye')": "sys.exit('bye')",
    "raise SystemExit": "sys.exit()",
    "os._exit(0)": "os._exit(0)",
    "sys.modules['posix']._exit(0)": "os._exit(0)",
}


@pytest.mark.parametrize("call", EXITS)
def test_an_exit_in_a_plugin_pass_fails_the_task_in_one_line(project, call):
    with_plugin(project, plugin(call))
    model = project / "artifacts" / "yolov8n" / "model.onnx"
    before = model.read_bytes()
    result = run_doit(project, TASK)
    assert result.returncode == 1 and executed(result) == [TASK], result.stdout + result.stderr
    assert the_error(result) == f"{TASK}: plugin pass 'x' (plugins/x.py) called {EXITS[call]}; {PASS_ENDS}"
    assert model.read_bytes() == before
    # nothing was recorded as done: the next run tries again
    assert executed(run_doit(project, TASK)) == [TASK]


def test_an_exit_when_a_plugin_file_is_imported_fails_the_task_in_one_line(project):
    with_plugin(project, plugin("pass", top="sys.exit(0)"))
    result = run_doit(project, TASK)
    assert result.returncode == 1, result.stdout + result.stderr
    assert the_error(result) == (f"{TASK}: plugin file plugins/x.py called sys.exit(0) when imported; "
                                 "a plugin file must only define and register passes")


def test_ctrl_c_inside_a_plugin_pass_still_stops_the_build(project):
    """Not a failed task: the stop that session.py reports, exit 130, as for Ctrl-C anywhere."""
    with_plugin(project, plugin("os.kill(os.getpid(), signal.SIGINT)"))
    result = run_doit(project, TASK)
    assert result.returncode == 130, result.stdout + result.stderr
    assert "TaskFailed" not in result.stdout and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"trtforge: stopped by SIGINT during {TASK}")


def test_a_process_a_plugin_forks_still_exits(project):
    """multiprocessing ends the processes it forks with os._exit: the refusal applies to the
    build's own process only, so a plugin may still use them."""
    with_plugin(project, plugin("pid = os.fork()\n    if pid == 0:\n        os._exit(7)\n"
                                "    assert os.waitpid(pid, 0)[1] >> 8 == 7"))
    result = run_doit(project, TASK)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_pass_that_returns_no_graph_is_named(surgered, tmp_path):
    """Before, the next pass failed on the None with 'bad parameters'."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "x.py").write_text(plugin("return None"))
    with pytest.raises(StageError) as error:
        run_surgery(surgered / "artifacts" / "yolov8n" / "export.onnx", tmp_path / "yolov8n" / "model.onnx",
                    [("x", {}), ("infer_shapes", {})], [tmp_path / "plugins" / "x.py"])
    assert str(error.value) == f"{TASK}: plugin pass 'x' (plugins/x.py) returned NoneType, not an onnx.ModelProto; " \
                               f"{PASS_ENDS}"


def test_two_recipes_can_use_the_same_plugin_in_one_run(surgered, tmp_path):
    """The stage imports the plugin once per recipe; the second import replaced nothing before
    ('surgery pass 'x' is registered twice')."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "x.py").write_text(plugin("pass"))
    for recipe in ("a", "b"):
        out = tmp_path / recipe / "model.onnx"
        run_surgery(surgered / "artifacts" / "yolov8n" / "export.onnx", out, [("x", {})],
                    [tmp_path / "plugins" / "x.py"])
        assert out.is_file()
