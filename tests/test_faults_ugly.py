"""Fault catalogue, the "ugly" trust-boundary cases of issue 13 an outside tester found on a
fresh clone: a closed terminal, a recipe nested 400 deep, artifacts/ that is a dangling
link or a file, a calibration subfolder that is a symlink, and verification images that
are also calibration images. Each ends in one line naming the file or field and what to
do; nothing is trusted and nothing is left half-written. Real doit runs in temporary
projects at 160 px (the faults do not depend on the input size)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import SMALL_RECIPE, copied, doit_env, executed, run_doit
from doubles.trtexec import make_wrapper, running_through
from test_faults_images import project_with_photos

from trtforge.errors import RecipeError
from trtforge.recipe import load_recipe

pytestmark = pytest.mark.slow

INT8_AND_VERIFY = """\
  int8:
    precision: int8
    calibration: {images: calib/imgs, batch: 2}
verify: {images: calib/verify, count: 2, task: detect}
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A project with four calibration photos (calib/imgs) and two other verification photos
    (calib/verify) whose export already ran; each test works on a copy."""
    return project_with_photos(tmp_path_factory.mktemp("ugly"), INT8_AND_VERIFY, 4, "export:yolov8n")


@pytest.fixture
def project(exported, tmp_path) -> Path:
    return copied(exported, tmp_path)


def no_traceback(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return output


# ----------------------------------------------------------------------------- 1. SIGHUP

def start_engine_build(project: Path, tmp_path: Path, preexec_fn=None, hangup=signal.SIG_DFL,
                       **popen) -> tuple[subprocess.Popen, Path]:
    """`doit engine:yolov8n-fp32` (surgery first, then a 60 s trtexec), returned once trtexec
    writes its engine: surgery has finished in this very run by then.

    The child starts with SIGHUP set to `hangup` whatever the suite itself runs under: under
    `nohup` doit rightly keeps the ignored SIGHUP it inherits (session.py), which measured as
    the SIGHUP tests timing out, not as a fault of the product."""

    def with_default_sighup() -> None:
        signal.signal(signal.SIGHUP, hangup)
        if preexec_fn is not None:
            preexec_fn()

    slow = make_wrapper(tmp_path / "slow", "10.8", build_seconds=60)
    proc = subprocess.Popen([sys.executable, "-m", "doit", "engine:yolov8n-fp32"], cwd=project,
                            env=doit_env({"TRTEXEC": str(slow)}), text=True,
                            preexec_fn=with_default_sighup, **popen)  # noqa: PLW1509 (only signal calls)
    deadline = time.monotonic() + 120
    while not any((project / "artifacts" / "yolov8n" / "fp32").glob("*trtforge-tmp*/engine.plan")):
        assert time.monotonic() < deadline and proc.poll() is None, "trtexec never started"
        time.sleep(0.2)
    return proc, slow


def assert_stopped_cleanly_and_surgery_kept(project: Path, tmp_path: Path, slow: Path) -> None:
    """No trtexec left, no temporary, and the surgery this run finished is recorded: the rerun
    builds the engine only."""
    time.sleep(0.5)
    assert running_through(slow) == []
    assert not list(project.rglob("*trtforge-tmp*"))
    assert not (project / "artifacts" / "yolov8n" / "fp32" / "engine.plan").exists()
    rerun = run_doit(project, "engine:yolov8n-fp32", env={"TRTEXEC": str(make_wrapper(tmp_path / "fast", "10.8"))})
    assert rerun.returncode == 0 and executed(rerun) == ["engine:yolov8n-fp32"], rerun.stdout + rerun.stderr


def test_sighup_stops_the_build_like_sigterm_with_its_own_line_and_code(project, tmp_path):
    proc, slow = start_engine_build(project, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGHUP)  # what a closed terminal's shell sends its jobs
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 129, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "trtforge: stopped by SIGHUP during engine:yolov8n-fp32; finished tasks are recorded and partial outputs "
        "were removed: rerun the same command to continue")
    assert_stopped_cleanly_and_surgery_kept(project, tmp_path, slow)


def test_a_build_started_under_nohup_outlives_sighup(project, tmp_path):
    """`nohup doit build:...` asks to outlive the terminal: the SIGHUP it ignores stays ignored,
    and only a real stop (SIGTERM here) ends the build."""
    proc, slow = start_engine_build(project, tmp_path, hangup=signal.SIG_IGN,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGHUP)
    time.sleep(2)
    still_running = proc.poll() is None
    trtexec_alive = running_through(slow) != []
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert still_running and trtexec_alive, stderr
    assert proc.returncode == 143 and "stopped by SIGTERM" in stderr, stderr


def test_closing_the_terminal_doit_writes_to_stops_the_build_cleanly(project, tmp_path):
    """The real hangup: doit's controlling terminal goes away, so SIGHUP arrives and every
    later write to the terminal fails (EIO). Measured before the output was moved aside on
    SIGHUP: the stop ended in exit 1 instead of 129."""
    main, terminal = pty.openpty()

    def on_the_terminal() -> None:  # in the child: a session whose controlling terminal is `terminal`
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc, slow = start_engine_build(project, tmp_path, stdin=terminal, stdout=terminal, stderr=terminal,
                                        preexec_fn=on_the_terminal)
    finally:
        os.close(terminal)
    os.close(main)  # the terminal window is closed, the ssh connection dropped
    assert proc.wait(timeout=60) == 129
    assert_stopped_cleanly_and_surgery_kept(project, tmp_path, slow)


# ----------------------------------------------------------------------------- 2. nesting and size

def test_a_recipe_nested_400_deep_is_one_line_on_every_command(small_project):
    """It is one warning line beside a good recipe (whose tasks go on), and the error when
    its own task is asked for."""
    (small_project / "recipes" / "x.yaml").write_text("a: " + "[" * 400 + "]" * 400 + "\n")  # 804 bytes
    said = "recipes/x.yaml:1:35: nested 401 levels deep; a recipe is at most 32 levels"
    for command in (["list"], ["info", "export:yolov8n"]):
        result = run_doit(small_project, *command)
        no_traceback(result)
        assert result.stderr.strip() == (f"trtforge: WARNING: {said}; its tasks are left out until it is fixed "
                                         "(the other recipes build)")
    result = run_doit(small_project, "export:x")
    assert result.returncode == 3 and result.stderr.strip() == f"ERROR: {said}"


CAP = 256 * 1024 - 64  # just under the size cap: larger files are refused unread


@pytest.mark.parametrize("text, says", [
    ("a: " + "[" * (CAP // 2) + "]" * (CAP // 2), "nested at least 1032 levels deep"),  # counted for 1000 events only
    ("a: " + "{b: " * 5000 + "1" + "}" * 5000, "nested at least 532 levels deep"),
    ("".join("  " * i + "a:\n" for i in range(400)), "recipes/x.yaml:33:65: nested at least 400 levels deep"),
    ("- " * 3000 + "x\n", "nested at least 1032 levels deep"),
    (SMALL_RECIPE.replace("precision: fp32", "precision: " + "x" * 200_000),
     "variants.fp32.precision: a value of 200,000 characters; a recipe value is at most 4,096"),
    (SMALL_RECIPE.replace("opset: 17", "opset: " + "9" * 5000),  # over Python's 4300-digit int() limit
     "export.opset: a value of 5,000 characters"),
    (SMALL_RECIPE.replace("1GiB", "1" * 5000 + "GiB"), "build.workspace: a value of 5,003 characters"),
    ("a: [" + "1," * 60_000 + "1]\n", "a: unknown key 'a'"),  # huge and flat
    ("model: |\n" + ("  " + "y" * 78 + "\n") * 1500, "recipes/x.yaml:1:8: model: a value of 118,500 characters"),
])
def test_pathological_yaml_ends_in_one_short_line(tmp_path, text, says):
    """PyYAML's own limits (recursion, int() digits) and error lines quoting a 200 KB value."""
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "x.yaml"
    recipe.write_text(text)
    started = time.monotonic()
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, tmp_path, {"fold_constants": None, "slim": None, "infer_shapes": None})
    message = str(caught.value)
    assert message.startswith("recipes/x.yaml") and says in message and len(message) < 200 and "\n" not in message
    assert time.monotonic() - started < 60


# ----------------------------------------------------------------------------- 3. artifacts/

@pytest.mark.parametrize("make, says", [
    (lambda p, t: (p / "artifacts").symlink_to(t / "disk" / "artifacts"),
     "is a symlink to {t}/disk/artifacts, which does not exist (an unmounted disk?); mount it or remove the link"),
    (lambda p, t: (p / "artifacts").write_text("notes\n"), "is a file, not a folder; move it away"),
])
def test_artifacts_that_is_no_folder_is_one_line_exit_3_and_nothing_is_created(small_project, tmp_path, make, says):
    make(small_project, tmp_path)
    for command in ("list", "export:yolov8n"):
        result = run_doit(small_project, command)
        no_traceback(result)
        assert result.returncode == 3
        assert result.stderr.strip() == f"ERROR: artifacts: {says.format(t=tmp_path)}"
    assert not (tmp_path / "disk").exists()  # nothing written behind the link, on the system disk


# ----------------------------------------------------------------------------- 4. symlinked subfolders

def test_a_symlinked_calibration_subfolder_is_calibrated_on_and_a_link_loop_ends(project, tmp_path):
    """Half the set lives on a data disk, linked in; links back up (a loop) must not hang."""
    imgs, disk = project / "calib" / "imgs", tmp_path / "disk" / "more"
    disk.mkdir(parents=True)
    for photo in sorted(imgs.iterdir())[2:]:
        photo.rename(disk / photo.name)
    (imgs / "more").symlink_to(disk)
    (disk / "back").symlink_to(imgs)  # from the data disk back into the set
    (imgs / "up").symlink_to("..")
    result = run_doit(project, "calib:yolov8n-int8", timeout=300)
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((project / "artifacts" / "yolov8n" / "int8" / "calib.json").read_text())
    assert report["images"] == 4


def test_a_dangling_link_in_a_calibration_set_is_one_line_not_fewer_images(project, tmp_path):
    (project / "calib" / "imgs" / "more").symlink_to(tmp_path / "unmounted" / "more")
    result = run_doit(project, "calib:yolov8n-int8")
    output = no_traceback(result)
    assert result.returncode != 0
    assert (f"yolov8n.yaml: variants.int8.calibration.images: calib/imgs/more: is a symlink to {tmp_path}/unmounted/more, "
            "which does not exist (an unmounted disk?); mount it or remove the link") in output.splitlines()
    assert not (project / "artifacts" / "yolov8n" / "int8" / "calib.cache").exists()


# ----------------------------------------------------------------------------- 5. verified on calibration images

def test_verifying_int8_on_its_own_calibration_images_is_flagged(project):
    """One verification photo is a renamed copy of a calibration photo: same bytes, another name."""
    calibrated = sorted((project / "calib" / "imgs").iterdir())[1]
    shutil.copy(calibrated, project / "calib" / "verify" / "same-photo.jpg")
    (project / "recipes" / "yolov8n.yaml").write_text(
        (project / "recipes" / "yolov8n.yaml").read_text().replace("count: 2", "count: 3"))
    result = run_doit(project, "--continue", "check:yolov8n-int8", "check:yolov8n-fp32", timeout=600)
    output = no_traceback(result)
    report = project / "artifacts" / "yolov8n" / "int8" / "check.json"
    assert report.exists(), output
    line = ("trtforge: WARNING: check:yolov8n-int8: 1 of the 3 verification images are also calibration images "
            "(calib/verify/same-photo.jpg); accuracy on them flatters INT8: verify on other images")
    assert output.splitlines().count(line) == 1, output  # and none for fp32, which no image calibrated
    assert json.loads(report.read_text())["calibration_overlap"] == {
        "images": ["calib/verify/same-photo.jpg"], "verification_images": 3}


# ----------------------------------------------------------------------------- 6. a moved or copied project

def test_a_project_moved_or_copied_elsewhere_is_up_to_date(project, tmp_path):
    """doit keyed its records by absolute paths: a project moved to another disk or copied
    into a colleague's checkout rebuilt every stage (issue 13). Every stage that reads an input
    is built once, with the engine, a release and a kit."""
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    everything = ("cpu:yolov8n", "package:yolov8n-int8", "kit:yolov8n-int8")
    built = run_doit(project, *everything, env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert {"calib:yolov8n-int8", "reference:yolov8n", "engine:yolov8n-int8", "package:yolov8n-int8"} <= set(executed(built))
    moved = shutil.move(project, tmp_path / "moved")
    copied_elsewhere = tmp_path / "elsewhere" / "proj"
    copied_elsewhere.parent.mkdir()
    subprocess.run(["cp", "-r", str(moved), str(copied_elsewhere)], check=True)  # new mtimes, same bytes
    for where in (Path(moved), copied_elsewhere):
        again = run_doit(where, *everything, env=env)
        assert again.returncode == 0 and executed(again) == [], again.stdout + again.stderr


# ----------------------------------------------------------------------------- 7. one broken recipe among others

def test_a_broken_recipe_disables_only_its_own_tasks(project, tmp_path):
    """A colleague's half-edited recipe stopped everyone's build with exit 3 (issue 14)."""
    (project / "recipes" / "wip.yaml").write_text((project / "recipes" / "yolov8n.yaml").read_text()
                                                  .replace("precision: fp32", "precision: fp33"))
    (project / "recipes" / "wip-people.yaml").write_text((project / "recipes" / "yolov8n.yaml").read_text())
    said = ("recipes/wip.yaml:10:21: variants.fp32.precision: got str 'fp33'; allowed: fp32, fp16, int8")
    warning = f"trtforge: WARNING: {said}; its tasks are left out until it is fixed (the other recipes build)"

    listed = run_doit(project, "list", "--all")
    assert listed.returncode == 0 and listed.stderr.strip() == warning
    assert "build:yolov8n-fp32" in listed.stdout and "build:wip-people-fp32" in listed.stdout
    assert "wip-fp" not in listed.stdout
    built = run_doit(project, "lint:yolov8n-fp32", "export:wip-people")  # `wip-people` is not `wip`'s
    assert built.returncode == 0 and warning in built.stderr.splitlines(), built.stdout + built.stderr
    assert set(executed(built)) == {"surgery:yolov8n", "lint:yolov8n-fp32", "export:wip-people"}
    asked = run_doit(project, "lint:yolov8n-fp32", "build:wip-fp32")
    assert asked.returncode == 3 and asked.stderr.strip() == f"ERROR: {said}" and not executed(asked)

    trtforge = [sys.executable, "-m", "trtforge.cli"]
    plan = subprocess.run([*trtforge, "plan", "wip-fp32", "--project", str(project)], capture_output=True, text=True)
    assert plan.returncode == 1 and said in plan.stderr
    doctor = subprocess.run([*trtforge, "doctor", "--project", str(project)], capture_output=True, text=True)
    assert doctor.returncode == 1 and said in doctor.stdout, doctor.stdout + doctor.stderr


# ----------------------------------------------------------------------------- 8. inputs from outside the project

def test_inputs_outside_the_project_are_read_and_tracked_by_content(project, tmp_path):
    """Frames on a data disk (an absolute path) and a verification set under `~` were refused
    as "not inside the project" (issue 14): they are inputs like any other."""
    disk, home = tmp_path / "disk", tmp_path / "home"
    disk.mkdir()
    home.mkdir()
    shutil.move(project / "calib" / "imgs", disk / "frames")
    shutil.move(project / "calib" / "verify", home / "verify")
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("images: calib/imgs", f"images: {disk / 'frames'}")
                      .replace("images: calib/verify", "images: ~/verify"))
    env = {"HOME": str(home)}
    stages = ("calib:yolov8n-int8", "reference:yolov8n")
    first = run_doit(project, *stages, env=env)
    assert first.returncode == 0 and set(stages) <= set(executed(first)), first.stdout + first.stderr
    assert executed(run_doit(project, *stages, env=env)) == []
    frames = sorted((disk / "frames").iterdir())
    shutil.copy(frames[0], frames[1])  # one frame replaced on the data disk
    again = run_doit(project, *stages, env=env)
    assert again.returncode == 0 and executed(again) == ["calib:yolov8n-int8"], again.stdout + again.stderr
    assert not list(disk.rglob("*trtforge*")) and not list(home.rglob("*trtforge*"))  # nothing written there


def test_an_onnx_source_under_home_is_read_and_tracked_by_content(tmp_path):
    """A model in a training run's folder (`~/runs/...`, outside the project): exported from
    there, rebuilt when its bytes change, and nothing is ever written beside it."""
    import onnx
    from conftest import make_project
    from test_lint import RECIPE, planted

    home = tmp_path / "home"
    model = home / "runs" / "m.onnx"
    model.parent.mkdir(parents=True)
    onnx.save(planted("Relu"), model)
    project = make_project(tmp_path / "proj", {"m": RECIPE.replace("models/m.onnx", "~/runs/m.onnx")})
    env = {"HOME": str(home), "TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    first = run_doit(project, "engine:m-fp32", env=env)
    assert first.returncode == 0 and "export:m" in executed(first), first.stdout + first.stderr
    assert executed(run_doit(project, "engine:m-fp32", env=env)) == []
    retrained = planted("Relu")
    retrained.doc_string = "epoch 2"
    onnx.save(retrained, model)  # the training run wrote a new model
    again = run_doit(project, "engine:m-fp32", env=env)
    assert again.returncode == 0 and {"export:m", "engine:m-fp32"} <= set(executed(again)), again.stdout
    assert sorted(p.name for p in model.parent.iterdir()) == ["m.onnx"]  # nothing written there


# ----------------------------------------------------------------------------- 9. progress on a terminal

def test_the_status_line_fits_one_terminal_line_without_trtexecs_timestamps():
    """On an 80-column terminal the spinner's line showed the tail of trtexec's last line,
    timestamp and command-line fragments included, and wrapped: every update then drew a new
    line instead of redrawing the one."""
    from trtforge.console import StatusLine

    status = StatusLine("engine:yolov8n-int8: trtexec", width=80)
    status._started, status.phase = time.monotonic(), "building"
    status.last = "[12/07/2026-04:54:03] [I] Start parsing network model."
    assert status._text().endswith("(0 s) Start parsing network model.")
    status.last = "&&&& RUNNING TensorRT.trtexec [TensorRT v100800] # trtexec --onnx=model.onnx " + "--x " * 40
    shown = status._text()
    assert len(shown) <= 80 - 3 and shown.endswith("…") and "&&&& RUNNING" in shown
    status.width = 30
    assert len(status._text()) <= 30 - 3


def output_on_a_terminal(project: Path, *args: str) -> tuple[int, str]:
    """(exit code, everything written) of `doit <args>` run on a pseudo-terminal, as a person
    at a terminal runs it (doit's default verbosity)."""
    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=project, env=doit_env(),
                            stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_calibration_progress_is_drawn_on_a_terminal_at_default_verbosity(project):
    """rich drew its bar on stdout, which doit captures: 16 silent minutes for 500 images (issue 14)."""
    code, output = output_on_a_terminal(project, "calib:yolov8n-int8")
    assert code == 0, output
    assert "calib:yolov8n-int8: calibrating" in output and "4/4" in output and "━" in output, output
