"""The task cache: a command reuses the last command's task graph only while everything the
graph was made from reads the same, and a stored task runs only as the graph holds it now.

Tiny 16x16 ONNX models and PNGs: what is tested is which reads the graph depends on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import executed, make_project, run_doit, up_to_date
from doubles.trtexec import make_wrapper
from onnx import TensorProto, helper

from trtforge.taskcache import ReadLog, unchanged

RECIPE = """\
model: {source: onnx, path: models/m.onnx}
input: {name: images, shape: [1, 3, 16, 16], dynamic_axes: [0]}
surgery: []
variants:
  a1: {precision: fp32}
  int8:
    precision: int8
    calibration: {images: calib/imgs}
"""


def tiny_model() -> onnx.ModelProto:
    """images -> Conv 3x3 -> Relu -> output."""
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["conv"], name="/conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["output"], name="/relu")],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 16, 16])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def add_image(folder: Path, name: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / name), pixels)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = make_project(tmp_path / "proj", {"m": RECIPE})
    (project / "models").mkdir()
    onnx.save(tiny_model(), project / "models" / "m.onnx")
    for seed in range(2):
        add_image(project / "calib" / "imgs", f"{seed}.png", seed)
    return project


@pytest.fixture
def env(tmp_path: Path) -> dict:
    return {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}


STORED = Path("artifacts/cache/tasks.json")


def test_a_no_op_is_served_from_the_stored_graph_without_importing_the_generators(project, env):
    first = run_doit(project, "calib:m-int8", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (project / STORED).is_file()
    again = run_doit(project, "-v", "0", "calib:m-int8", env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert executed(again) == [] and "calib:m-int8" in up_to_date(again)
    assert not generators_imported(again)
    listed = run_doit(project, "list", env={**env, "PYTHONPROFILEIMPORTTIME": "1"})  # trtexec recalled, not probed
    assert "calib" in listed.stdout and not generators_imported(listed)


def generators_imported(result) -> bool:
    """Did the command import the task generators (and so make the graph)?"""
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert "trtforge.taskcache" in imported
    return bool({"trtforge.tasks", "trtforge.recipe", "yaml"} & imported)


def test_an_edited_recipe_is_seen_even_with_its_size_and_mtime_kept(project, env):
    assert run_doit(project, "list", env=env).returncode == 0
    recipe = project / "recipes" / "m.yaml"
    before = recipe.stat()
    recipe.write_text(recipe.read_text().replace("a1:", "a2:"))  # the same size
    os.utime(recipe, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert recipe.stat().st_size == before.st_size and recipe.stat().st_mtime_ns == before.st_mtime_ns
    listed = run_doit(project, "list", "--all", env=env).stdout
    assert "engine:m-a2" in listed and "engine:m-a1" not in listed


def test_an_image_added_to_a_calibration_folder_reruns_calibration(project, env):
    assert run_doit(project, "calib:m-int8", env=env).returncode == 0
    assert executed(run_doit(project, "calib:m-int8", env=env)) == []
    add_image(project / "calib" / "imgs", "2.png", 2)
    again = run_doit(project, "calib:m-int8", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "calib:m-int8" in executed(again)
    calib = json.loads(next((project / "artifacts" / "m" / "int8").glob("calib.json")).read_text())
    assert calib["images"] == 3


def test_another_trtexec_makes_the_graph_again(project, env, tmp_path):
    assert run_doit(project, "engine:m-a1", env=env).returncode == 0
    older = {"TRTEXEC": str(make_wrapper(tmp_path / "bin86", "8.6"))}
    again = run_doit(project, "engine:m-a1", env=older)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "engine:m-a1" in executed(again)
    assert json.loads((project / STORED).read_text())["key"]["trtexec"][1].startswith("8.6.")


def test_a_stored_task_that_is_no_longer_the_graphs_fails_in_one_line_and_is_dropped(project, env):
    """What a recipe saved between reading the cache and running the task would leave: the
    stored task says one thing, the graph made now another."""
    assert run_doit(project, "calib:m-int8", env=env).returncode == 0
    stored = json.loads((project / STORED).read_text())
    calib = next(t for t in stored["tasks"]["calib"] if t["name"] == "m-int8")
    calib["file_dep"] = calib["file_dep"][1:]  # an input the graph has and the stored task misses
    (project / STORED).write_text(json.dumps(stored))
    (project / "artifacts" / "m" / "int8" / "calib.json").unlink()
    failed = run_doit(project, "calib:m-int8", env=env)
    assert failed.returncode == 1
    assert "calib:m-int8: the project changed after this build started" in failed.stdout + failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    assert not (project / STORED).exists()
    assert run_doit(project, "calib:m-int8", env=env).returncode == 0


def test_a_graph_made_with_a_warning_is_not_stored_so_the_warning_shows_every_time(project, env):
    (project / "recipes" / "broken.yaml").write_text("model: {source: onnx}\n")
    for _ in range(2):
        listed = run_doit(project, "list", env=env)
        assert "broken.yaml" in listed.stderr and "WARNING" in listed.stderr
    assert not (project / STORED).exists()


def test_the_cache_can_be_turned_off(project, env):
    assert run_doit(project, "list", env={**env, "TRTFORGE_TASK_CACHE": "0"}).returncode == 0
    assert not (project / STORED).exists()


def reads_of(action) -> list:
    with ReadLog() as log:
        action()
    return [[kind, subject, answer] for (kind, subject), answer in log.reads.items()]


def test_read_log_notes_each_kind_of_read_and_each_change_shows(tmp_path, monkeypatch):
    folder, text, big, missing = tmp_path / "d", tmp_path / "t.txt", tmp_path / "big.bin", tmp_path / "missing"
    folder.mkdir()
    text.write_text("abc")
    big.write_bytes(b"\0" * ((1 << 20) + 1))  # above the size compared by content
    monkeypatch.setenv("TRTFORGE_TEST_VAR", "1")
    cases = [  # (a read, a change it must show)
        (text.read_text, lambda: text.write_text("abd")),
        (big.stat, lambda: big.write_bytes(b"\1" * ((1 << 20) + 2))),
        (lambda: list(folder.iterdir()), lambda: (folder / "new").write_text("")),
        (missing.exists, lambda: missing.write_text("")),
        (lambda: os.environ.get("TRTFORGE_TEST_VAR"), lambda: monkeypatch.setenv("TRTFORGE_TEST_VAR", "2")),
    ]
    for read, change in cases:
        reads = reads_of(read)
        assert reads and unchanged(reads)
        change()
        assert not unchanged(reads), reads
    kept = text.stat()
    reads = reads_of(text.read_text)
    text.write_text("abe")  # same size, and the mtime put back: the content still shows it
    os.utime(text, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert not unchanged(reads)


def test_read_log_hears_what_is_printed(capsys):
    with ReadLog() as log:
        print("a warning")
    assert log.spoke and "a warning" in capsys.readouterr().out


def test_a_graph_made_twice_in_one_process_reads_the_host_again(project, monkeypatch):
    """What generation caches per process (image listings, installed versions) is read again
    when the graph is made again, so the second graph and its record of reads are current."""
    from trtforge.taskcache import doit_namespace

    monkeypatch.chdir(project)
    monkeypatch.setattr("sys.argv", ["doit", "calib:m-int8"])

    def calib_images() -> list[str]:
        calib = next(t for t in doit_namespace(project)["task_calib"]() if t["name"] == "m-int8")
        return sorted(Path(dep).name for dep in calib["file_dep"] if dep.endswith(".png"))

    assert calib_images() == ["0.png", "1.png"]
    add_image(project / "calib" / "imgs", "2.png", 2)
    assert calib_images() == ["0.png", "1.png", "2.png"]
    assert calib_images() == ["0.png", "1.png", "2.png"]  # now from the stored graph


def test_a_task_the_cache_cannot_hold_is_refused_not_stored_wrongly():
    from doit.tools import config_changed

    from trtforge.taskcache import Uncachable, _encoded_task

    for task in ({"name": "t", "actions": [(print, ["x"])]},  # not a stage: nothing to run it by
                 {"name": "t", "uptodate": [lambda task, values: True]},
                 {"name": "t", "uptodate": [config_changed({"path": Path("/x")})]},  # JSON cannot hold it
                 {"name": "t", "verbosity": 2}):
        with pytest.raises(Uncachable):
            _encoded_task(task)


def test_a_graph_made_from_build_outputs_is_not_kept(project, monkeypatch):
    """Tasks write under artifacts/, so a graph that read there could change mid-build."""
    from trtforge import tasks
    from trtforge.taskcache import doit_namespace

    monkeypatch.chdir(project)
    monkeypatch.setattr("sys.argv", ["doit", "list"])
    (project / "artifacts" / "m").mkdir(parents=True)
    (project / "artifacts" / "m" / "export.json").write_text("{}")
    load = tasks.load_project_or_invalid

    def reading_an_output(root, host=None):
        (root / "artifacts" / "m" / "export.json").read_text()
        return load(root, host)

    monkeypatch.setattr(tasks, "load_project_or_invalid", reading_an_output)
    assert "task_calib" in doit_namespace(project)
    assert not (project / STORED).exists()
    monkeypatch.setattr(tasks, "load_project_or_invalid", load)
    assert "task_calib" in doit_namespace(project)
    assert (project / STORED).exists()
