"""lint: the parser preflight as doit runs it, on real ONNX files with a planted operator.

Per generation the preflight itself is tested in test_preflight.py; here: what a user sees
from `doit lint:` on a laptop (every generation, warnings, failure only when none can
build) and on a host with trtexec (strict, and `engine:` never starts). Tiny 16x16 models:
the operator, not the size, is what is checked.
"""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import executed, make_project, run_doit
from doubles.trtexec import make_wrapper
from onnx import TensorProto, helper

RECIPE = """\
model: {source: onnx, path: models/m.onnx}
input: {name: images, shape: [1, 3, 16, 16], dynamic_axes: [0]}
variants:
  fp32: {precision: fp32}
"""


def planted(op: str) -> onnx.ModelProto:
    """images -> <op> -> output, with the casts an integer-only operator needs around it."""
    nodes = {
        "Mod": [helper.make_node("Mod", ["images", "two"], ["output"], name="/head/Mod", fmod=1)],
        "BitwiseNot": [helper.make_node("Cast", ["images"], ["i"], name="/head/ToInt", to=TensorProto.INT32),
                       helper.make_node("BitwiseNot", ["i"], ["n"], name="/head/BitwiseNot"),
                       helper.make_node("Cast", ["n"], ["output"], name="/head/ToFloat", to=TensorProto.FLOAT)],
        "Relu": [helper.make_node("Relu", ["images"], ["output"], name="/head/Relu")],
    }[op]
    graph = helper.make_graph(
        nodes, "planted", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture
def project_with(tmp_path):
    def make(op: str):
        project = make_project(tmp_path / "proj", {"m": RECIPE})
        (project / "models").mkdir()
        onnx.save(planted(op), project / "models" / "m.onnx")
        return project

    return make


def reports(project) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (project / "artifacts/m/fp32").glob("preflight-*.json")}


def test_without_trtexec_every_generation_is_checked_and_one_that_cannot_is_a_warning(project_with):
    project = project_with("Mod")  # Mod: not in 8.2's parser, in the later ones
    result = run_doit(project, "lint:m")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(reports(project)) == {"preflight-8.2", "preflight-8.5", "preflight-8.6", "preflight-10", "preflight-11"}
    warning = [line for line in result.stderr.splitlines() if "cannot build it" in line]
    assert len(warning) == 1, result.stderr
    assert warning[0].startswith("trtforge: WARNING: lint:m-fp32: TensorRT 8.2 cannot build it: node '/head/Mod' "
                                 "uses Mod, which TensorRT 8.2's ONNX parser does not support")
    assert reports(project)["preflight-8.2"]["errors"] == 1 and reports(project)["preflight-10"]["errors"] == 0
    assert reports(project)["preflight-8.5"]["errors"] == 0  # Mod came with 8.5: a warning there, for 8.4


def test_without_trtexec_an_operator_no_generation_takes_fails_naming_the_node(project_with):
    project = project_with("BitwiseNot")
    result = run_doit(project, "lint:m")
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("lint:m-fp32: ")]
    assert line.startswith("lint:m-fp32: no TensorRT generation can build this variant; 8.2: node '/head/BitwiseNot'")
    assert all(f"{g}: node '/head/BitwiseNot' uses BitwiseNot" in line for g in ("8.5", "8.6", "10", "11"))


def test_with_trtexec_the_preflight_is_strict_and_trtexec_never_starts(project_with, tmp_path):
    project = project_with("Mod")
    calls = tmp_path / "trtexec-calls"
    wrapper = make_wrapper(tmp_path / "bin", "8.2")
    record_builds = f'case "$*" in *--saveEngine=*) echo called >> {calls};; esac\n'
    wrapper.write_text(wrapper.read_text().replace("\nexec ", "\n" + record_builds + "exec ", 1))
    result = run_doit(project, "build:m-fp32", env={"TRTEXEC": str(wrapper)})
    assert result.returncode == 1
    assert "lint:m-fp32: node '/head/Mod' uses Mod, which TensorRT 8.2's ONNX parser does not support" in result.stdout
    assert "engine:m-fp32" not in executed(result) and not calls.exists()
    assert set(reports(project)) == {"preflight-8.2"}

    onnx.save(planted("Relu"), project / "models" / "m.onnx")  # the fix: a model the parser takes
    result = run_doit(project, "build:m-fp32", env={"TRTEXEC": str(wrapper)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert executed(result)[-2:] == ["lint:m-fp32", "engine:m-fp32"] and calls.read_text().count("called") >= 1


def test_plan_shows_the_preflight_verdict_for_the_generation_asked(project_with):
    import subprocess
    import sys
    from pathlib import Path

    project = project_with("Mod")
    assert run_doit(project, "surgery:m").returncode == 0  # the ONNX the engine would build from

    def plan(generation: str) -> str:
        trtforge = Path(sys.executable).parent / "trtforge"
        result = subprocess.run([trtforge, "plan", "m", "--trt", generation], cwd=project, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return next(line for line in result.stdout.splitlines() if "parser preflight:" in line)

    assert plan("8.2").startswith("  parser preflight: error: node '/head/Mod' uses Mod, which TensorRT 8.2's")
    assert plan("10") == "  parser preflight: ok"
