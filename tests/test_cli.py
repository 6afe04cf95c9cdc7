"""`trtforge doctor` and `trtforge plan` on real project folders, through the installed command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import copied, doit_env, prepared_project

TRTFORGE = str(Path(sys.executable).parent / "trtforge")


def trtforge(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TRTFORGE, *args], cwd=cwd, env=doit_env(env), capture_output=True, text=True, timeout=300)


def test_doctor_tells_the_truth_on_a_host_without_gpu_or_trtexec(small_project):
    result = trtforge("doctor", cwd=small_project)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")}
    assert lines["recipes"] == "ok" and lines["trtexec"] == "missing" and lines["GPU"] == "missing"
    assert "next: engines must be built on the GPU they run on" in result.stdout


def test_doctor_names_a_corrupt_state_db_and_the_recovery(small_project):
    (small_project / "artifacts").mkdir()
    (small_project / "artifacts" / ".doit.db").write_bytes(b"not a database" * 100)
    result = trtforge("doctor", cwd=small_project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"trtforge: build state: move it aside (mv {small_project}/artifacts/.doit.db "
        f"{small_project}/artifacts/.doit.db.bad): every artifact stays, tasks rerun once"]


def test_doctor_fails_on_a_bad_recipe_with_its_line(small_project):
    recipe = small_project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("opset: 17", "opset: seventeen"))
    result = trtforge("doctor", cwd=small_project)
    assert result.returncode == 1 and "recipes: fix the recipe" in result.stderr
    assert "recipes/yolov8n.yaml:3:" in result.stdout


def test_plan_without_gpu_lists_tasks_and_renders_each_generation(small_project):
    result = trtforge("plan", "yolov8n-fp16", "--trt", "10", cwd=small_project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["run  export:yolov8n", "       never built in this project"]
    assert "--fp16 --precisionConstraints=obey --layerPrecisions=</model.22/dfl/* in the surgered ONNX>:fp32" \
        in result.stdout
    eleven = trtforge("plan", "yolov8n-fp16", "--trt", "11", cwd=small_project)
    assert "model.onnx is artifacts/yolov8n/fp16/autocast.onnx" in eleven.stdout and "--fp16" not in eleven.stdout
    refused = trtforge("plan", "yolov8n-fp16", "--trt", "8.2", cwd=small_project)
    assert "refused: TensorRT 8.2.1 has no --layerPrecisions" in refused.stdout
    assert refused.returncode == 1 and refused.stderr.startswith(
        "trtforge: yolov8n-fp16 cannot be built with TensorRT 8.2.1: TensorRT 8.2.1 has no --layerPrecisions")
    assert not (small_project / "artifacts" / ".doit.db").exists()  # planning wrote no state


def test_plan_refuses_an_unknown_target_in_one_line(small_project):
    result = trtforge("plan", "yolov9", cwd=small_project)
    assert result.returncode == 1
    assert result.stderr.strip() == "trtforge: no recipe or variant 'yolov9' (recipes: yolov8n); use <recipe> or <recipe>-<variant>"


def test_doit_refuses_a_corrupt_state_db_in_one_line_and_recovers(small_project):
    from conftest import run_doit

    (small_project / "artifacts").mkdir()
    db = small_project / "artifacts" / ".doit.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # a header, then garbage
    result = run_doit(small_project, "list")
    assert result.returncode == 3
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ERROR: {db} is unreadable") and f"mv {db} {db}.bad" in line
    db.rename(db.with_name(".doit.db.bad"))
    assert run_doit(small_project, "list").returncode == 0


def test_plan_shows_what_an_upstream_rerun_brings_and_what_was_never_built(tmp_path):
    project = copied(prepared_project(tmp_path / "built", "lint:yolov8n-fp16"), tmp_path)
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("opset: 17", "opset: 18"))
    result = trtforge("plan", "yolov8n-fp16", "--trt", "10", cwd=project)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n\n")[0].splitlines()
    assert lines[:3] == ["run  export:yolov8n",
                         "       a recipe field, tool version or rendered command it reads changed (or never built)",
                         "run  surgery:yolov8n"]  # doit alone would call it up to date: its input is not rebuilt yet
    assert "       runs after export:yolov8n, whose outputs it reads" in lines
    assert not any(line.startswith("ok ") for line in lines), lines
    engine = lines.index("run  engine:yolov8n-fp16")
    assert lines[engine + 1] == "       never built in this project"  # not every one of its inputs


def test_plan_into_a_closed_pipe_is_quiet(small_project):
    result = subprocess.run(["bash", "-c", f"{TRTFORGE} plan yolov8n-fp16 --trt 10 | true; echo ${{PIPESTATUS[0]}}"],
                            cwd=small_project, env=doit_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.stderr == "" and result.stdout.strip() == "141"


def test_doctor_lists_the_variants_this_hosts_trtexec_cannot_build(small_project, tmp_path):
    """With a TensorRT 8.2 trtexec, doctor said all was ok although variants could not be built (issue 14)."""
    from doubles.trtexec import make_wrapper

    old = trtforge("doctor", cwd=small_project, env={"TRTEXEC": str(make_wrapper(tmp_path / "b82", "8.2"))})
    assert old.returncode == 1, old.stdout + old.stderr
    line = next(line for line in old.stdout.splitlines() if line.split()[1:2] == ["variants"])
    assert line.startswith("problem  variants"), line
    assert ("1 of 2 cannot be built with TensorRT 8.2.1: yolov8n-fp16: yolov8n.yaml: variants.fp16: TensorRT 8.2.1 "
            "has no --layerPrecisions") in line, line
    assert old.stderr.startswith("trtforge: variants: change those variants' settings")
    new = trtforge("doctor", cwd=small_project, env={"TRTEXEC": str(make_wrapper(tmp_path / "b10", "10.8"))})
    assert "ok       variants         all 2 buildable with TensorRT 10.8.0: yolov8n-fp32, yolov8n-fp16" in new.stdout


def test_doctor_lists_the_variants_whose_built_onnx_the_hosts_parser_refuses(tmp_path):
    """The renderer takes an FP32 variant on 8.2, but 8.2's parser has no Mod: doctor said "ok"
    until lint: failed. Once the ONNX is built, doctor runs the same preflight (16x16: the
    operator, not the size, is checked)."""
    import onnx
    from conftest import make_project, run_doit
    from doubles.trtexec import make_wrapper
    from test_lint import RECIPE, planted

    project = make_project(tmp_path / "proj", {"m": RECIPE})
    (project / "models").mkdir()
    onnx.save(planted("Mod"), project / "models" / "m.onnx")
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "b82", "8.2"))}
    before = trtforge("doctor", cwd=project, env=env)
    assert ("ok       variants         all 1 buildable with TensorRT 8.2.1: m-fp32; not parser-checked until "
            "their ONNX is built (doit lint:<recipe>): m-fp32") in before.stdout, before.stdout + before.stderr

    assert run_doit(project, "surgery:m").returncode == 0
    after = trtforge("doctor", cwd=project, env=env)
    assert after.returncode == 1, after.stdout + after.stderr
    line = next(line for line in after.stdout.splitlines() if line.split()[1:2] == ["variants"])
    assert line.startswith("problem  variants         1 of 1 cannot be built with TensorRT 8.2.1: m-fp32: "
                           "artifacts/m/model.onnx: node '/head/Mod' uses Mod, which TensorRT 8.2's ONNX parser "
                           "does not support"), line
    assert "not parser-checked" not in line
    assert after.stderr.startswith("trtforge: variants: change those variants' settings or models")


def test_doctor_starts_trtexec_once(small_project, tmp_path):
    """Each check loaded the project and probed a wrapper script again: three starts, and a
    trtexec that hangs before its banner was waited for three times."""
    from doubles.trtexec import make_wrapper

    real = make_wrapper(tmp_path / "b10", "10.8")
    counting = tmp_path / "counting" / "trtexec"
    counting.parent.mkdir()
    counting.write_text(f'#!/bin/sh\necho started >> {tmp_path / "starts"}\nexec {real} "$@"\n')
    counting.chmod(0o755)
    result = trtforge("doctor", cwd=small_project, env={"TRTEXEC": str(counting)})
    assert "ok       variants         all 2 buildable with TensorRT 10.8.0" in result.stdout, result.stdout
    assert (tmp_path / "starts").read_text().count("started") == 1


def test_plan_and_doctor_name_a_recipe_its_onnx_cannot_take(tmp_path):
    """A static ONNX (1x3x16x16, as `yolo export` writes) under a recipe with a dynamic batch:
    plan printed a trtexec command and doctor said buildable; only export: refused it."""
    from conftest import make_project
    from doubles.trtexec import make_wrapper
    from test_export_sources import static_onnx

    recipe = """\
model: {source: onnx, path: models/static.onnx}
input: {name: x, shape: [1, 3, 16, 16], dynamic_axes: [0]}
surgery: []
build:
  profiles:
    - x: {min: [1, 3, 16, 16], opt: [1, 3, 16, 16], max: [2, 3, 16, 16]}
variants:
  fp32: {precision: fp32}
"""
    project = make_project(tmp_path / "proj", {"s": recipe})
    (project / "models").mkdir()
    static_onnx(project / "models" / "static.onnx")
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "b10", "10.8"))}
    why = ("export:s will refuse its model: input.dynamic_axes: axis 0 of 'x' is fixed at 1 in "
           "models/static.onnx ([1, 3, 16, 16], a static export): remove 0 from input.dynamic_axes")

    plan = trtforge("plan", "s-fp32", cwd=project, env=env)
    assert plan.returncode == 1 and plan.stderr.startswith(f"trtforge: {why}"), plan.stdout + plan.stderr
    assert len(plan.stderr.splitlines()) == 1
    doctor = trtforge("doctor", cwd=project, env=env)
    line = next(line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["variants"])
    assert doctor.returncode == 1 and line.startswith(f"problem  variants         1 of 1 cannot be built with "
                                                      f"TensorRT 10.8.0: s-fp32: {why}"), doctor.stdout

    fixed = recipe.replace("dynamic_axes: [0]", "dynamic_axes: []").split("build:")[0] + "variants:" + \
        recipe.split("variants:")[1]
    (project / "recipes" / "s.yaml").write_text(fixed)
    assert trtforge("plan", "s-fp32", cwd=project, env=env).returncode == 0
    assert "ok       variants" in trtforge("doctor", cwd=project, env=env).stdout
