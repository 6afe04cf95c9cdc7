"""Accuracy-controlled INT8 (calibration.accuracy): the fewest quantized nodes reverted for the
gate to hold, found on real ONNX models under real ONNX Runtime.

The unit tests use a hand-built Q/DQ chain (a few nodes, [1, 64] tensors: the search's logic
does not depend on size) whose one badly clipped scale the search must find; the slow test
runs the whole quantize stage through doit on the trained person detector at 320 px."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtforge.errors import StageError
from trtforge.quant.accuracy import (Control, activation_quantized_nodes, control, conv_int8_share, rank_nodes,
                                     reverted)
from trtforge.stages.reference import run_onnxruntime

RNG = np.random.default_rng(0)
FEEDS = [{"x": RNG.normal(0, 1, (1, 64)).astype(np.float32)} for _ in range(6)]


def qdq(tensor: str, scale: float, nodes: list, inits: list) -> str:
    """Append Q/DQ of `tensor` with `scale`; return the dequantized name."""
    inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}_s"),
              numpy_helper.from_array(np.array(0, np.int8), f"{tensor}_z")]
    nodes += [helper.make_node("QuantizeLinear", [tensor, f"{tensor}_s", f"{tensor}_z"], [f"{tensor}_q"],
                               name=f"{tensor}_Q"),
              helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_s", f"{tensor}_z"], [f"{tensor}_dq"],
                               name=f"{tensor}_DQ")]
    return f"{tensor}_dq"


def chain(clipped_scale: float = 0.03 / 127):
    """x -> a (Mul) -> b (Mul) -> c (Add) -> y; each reads its input through Q/DQ. The scale on
    a's output, read by b, clips it at 0.03: b is the node to revert."""
    nodes, inits = [], []
    for name, value in (("wa", 0.5), ("wb", 2.0), ("bc", 1.0)):
        inits.append(numpy_helper.from_array(np.full((1, 64), value, np.float32), name))
    nodes.append(helper.make_node("Mul", [qdq("x", 4 / 127, nodes, inits), "wa"], ["a"], name="a"))
    nodes.append(helper.make_node("Mul", [qdq("a", clipped_scale, nodes, inits), "wb"], ["b"], name="b"))
    nodes.append(helper.make_node("Add", [qdq("b", 8 / 127, nodes, inits), "bc"], ["y"], name="c"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def float_reference() -> list[dict]:
    return [{"y": feed["x"] * 0.5 * 2.0 + 1.0} for feed in FEEDS]


def share_close(reference: list[dict], floor: float, outputs: list[dict]) -> dict:
    """A gate's JSON: the share of output values within 0.1 of FP32's."""
    value = float(np.mean([np.mean(np.abs(o["y"] - r["y"]) < 0.1) for o, r in zip(outputs, reference)]))
    return {"figure": "close", "value": value, "status": "passed" if value >= floor else "failed"}


def run_control(model, max_drop: float = 0.01, seconds: float = 60.0, judge=None):
    reference = float_reference()
    judge = judge or (lambda outputs: share_close(reference, 1 - max_drop, outputs))
    return control(model, FEEDS, reference, judge, Control("quantize:t-int8", max_drop, 2, seconds))


def test_the_quantized_nodes_are_the_readers_of_activation_qdq_pairs():
    assert activation_quantized_nodes(chain()) == ["a", "b", "c"]


def test_reverting_a_node_bypasses_only_its_own_input_and_drops_what_nobody_reads():
    model = chain()
    result = reverted(model, ["b"])
    onnx.checker.check_model(result, full_check=True)
    assert activation_quantized_nodes(result) == ["a", "c"]
    names = {n.name for n in result.graph.node}
    assert "a_Q" not in names and "a_DQ" not in names and "x_Q" in names
    assert {"a_s", "a_z"}.isdisjoint(i.name for i in result.graph.initializer)
    assert [n.name for n in model.graph.node].count("a_Q") == 1  # the input model is untouched
    outputs = run_onnxruntime(result.SerializeToString(), FEEDS)
    assert all(np.allclose(o["y"], r["y"], atol=0.1) for o, r in zip(outputs, float_reference()))


def test_a_reverted_conv_reads_its_original_float_weight_too():
    """ModelOpt quantizes a float weight with a Q/DQ pair in the file: a revert bypasses it
    with the activation's, so TensorRT runs the node in float with its original weights."""
    nodes, inits = [], [numpy_helper.from_array(RNG.normal(0, 1, (4, 2, 3, 3)).astype(np.float32), "w")]
    nodes.append(helper.make_node("Conv", [qdq("x", 4 / 127, nodes, inits), qdq("w", 0.02, nodes, inits)], ["y"],
                                  name="conv", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    result = reverted(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), ["conv"])
    assert [(n.op_type, list(n.input)) for n in result.graph.node] == [("Conv", ["x", "w"])]
    assert {i.name for i in result.graph.initializer} == {"w"}


def test_the_search_reverts_exactly_the_node_behind_the_damage(capsys):
    model = chain()
    result, report = run_control(model)
    assert report["reverted"] == ["b"]
    assert report["before"]["status"] == "failed" and report["after"]["status"] == "passed"
    assert [step["reverted"] for step in report["steps"]] == [1]
    assert activation_quantized_nodes(result) == ["a", "c"]
    said = capsys.readouterr().err
    assert "reverted 1 of 3 quantized nodes" in said
    assert "quantize:t-int8: gate run 1 of at most 4: 1 reverted -> close 1.000" in said  # 3 nodes: 1, 2, 3, bisect
    assert report["largest_fall"] == 0 and "noise" not in said


def test_a_figure_that_falls_as_more_nodes_are_reverted_is_reported_as_noise(capsys):
    """Reverting brings a model closer to FP32; a gate figure that falls meanwhile (a person or
    two of ~100 either way) decides the floor by chance, and the search says so."""
    figures = iter([0.95, 0.985, 0.97, 0.995, 0.992])  # 0 reverted, then 1, 2, 4 (holds), bisect: 3 (holds)

    def scripted(outputs: list[dict]) -> dict:
        value = next(figures)
        return {"figure": "mAP50", "value": value, "status": "passed" if value >= 0.99 else "failed"}

    _, report = run_control(long_chain(8, damaged=3), judge=scripted)
    assert [step["reverted"] for step in report["steps"]] == [1, 2, 4, 3] and len(report["reverted"]) == 3
    assert report["largest_fall"] == pytest.approx(0.015)
    said = capsys.readouterr().err
    assert "the gate's figure fell by 0.015 when more nodes were reverted" in said and "verify.images" in said


def long_chain(length: int, damaged: int):
    """x -> n0 -> n1 -> ... (each Mul by 1, reading its input through Q/DQ at a scale that
    holds [-4, 4]), except that node `damaged` reads through a scale that clips at 0.03."""
    nodes, inits, tensor = [], [numpy_helper.from_array(np.ones((1, 64), np.float32), "one")], "x"
    for i in range(length):
        scale = 0.03 / 127 if i == damaged else 4 / 127
        nodes.append(helper.make_node("Mul", [qdq(tensor, scale, nodes, inits), "one"], [f"t{i}"], name=f"n{i}"))
        tensor = f"t{i}"
    graph = helper.make_graph(nodes, "long", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, [1, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("damaged", [0, 23, 47])
def test_ranking_finds_the_damaged_node_first_in_about_2_sqrt_n_tries(damaged, capsys):
    """48 nodes: 8 runs of 6 neighbours, then the best run's nodes alone: 14 tries, not 48;
    their progress shows (plain lines here, stderr being no terminal)."""
    model = long_chain(48, damaged)
    reference = [{f"t{47}": feed["x"]} for feed in FEEDS[:2]]
    tries = []

    def run(candidate, feeds):
        tries.append(1)
        return run_onnxruntime(candidate.SerializeToString(), feeds)

    ranked = rank_nodes(model, FEEDS[:2], reference, "quantize:t-int8", run)
    assert ranked[0] == f"n{damaged}" and sorted(ranked) == sorted(f"n{i}" for i in range(48))
    assert len(tries) == 8 + 6
    said = capsys.readouterr().err.splitlines()
    assert "trtforge: quantize:t-int8: ranking runs of nodes: 1/8 tries" in [line.split(" (")[0] for line in said]
    assert [line.split(" (")[0] for line in said if "alone" in line][-1] == (
        "trtforge: quantize:t-int8: ranking the best run's nodes alone: 6/6 tries")


def test_a_model_that_already_holds_is_left_as_it_is():
    model = chain(clipped_scale=8 / 127)
    result, report = run_control(model)
    assert report["reverted"] == [] and report["steps"] == [] and report["before"]["status"] == "passed"
    assert result.SerializeToString() == model.SerializeToString()
    assert report["conv_int8_share"] == 1.0  # no Conv at all counts as nothing reverted


def test_a_floor_that_no_revert_meets_fails_in_one_line():
    never = lambda outputs: {"figure": "close", "value": 0.5, "status": "failed"}  # noqa: E731
    with pytest.raises(StageError) as error:
        run_control(chain(), judge=never)
    message = str(error.value)
    assert "\n" not in message and "quantize:t-int8" in message and "all 3 quantized nodes reverted" in message


def test_a_gate_with_nothing_to_judge_reverts_nothing_and_says_so(capsys):
    """Untrained weights detect nothing: the gate is skipped, and so is the search."""
    skipped = lambda outputs: {"figure": "mAP50", "value": None, "status": "skipped: no FP32 detection"}  # noqa: E731
    result, report = run_control(chain(), judge=skipped)
    assert report["reverted"] == [] and report["before"]["status"] == "skipped: no FP32 detection"
    assert result.SerializeToString() == chain().SerializeToString()
    assert "nothing to hold INT8 to (skipped: no FP32 detection)" in capsys.readouterr().err


def test_the_time_bound_ends_the_search_in_one_line():
    with pytest.raises(StageError) as error:
        run_control(chain(), seconds=0)
    message = str(error.value)
    assert "\n" not in message and "within 0 s" in message and "calibration.accuracy.timeout" in message


def test_conv_share_counts_convs_still_reading_quantized_activations():
    nodes, inits = [], [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")]
    nodes.append(helper.make_node("Conv", [qdq("x", 0.1, nodes, inits), "w"], ["h"], name="conv1"))
    nodes.append(helper.make_node("Conv", [qdq("h", 0.1, nodes, inits), "w"], ["y"], name="conv2"))
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    assert conv_int8_share(model) == 1.0
    assert conv_int8_share(reverted(model, ["conv2"])) == 0.5


PEOPLE_RECIPE = """\
model: {source: ultralytics, arch: yolov8n.yaml, weights: models/people.pt}
input: {name: images, shape: [1, 3, 320, 320], dynamic_axes: [0]}
surgery: [fold_constants, slim, infer_shapes]
verify: {images: calib/demo-verification.txt, count: 4, task: detect}
variants:
  int8:
    precision: int8
    calibration:
      images: calib/demo-calibration.txt
      batch: 4
      accuracy: {max_drop: 0.01, ranking_images: 2}
"""


@pytest.mark.slow
def test_the_quantize_stage_holds_int8_to_the_gate_and_keeps_its_result_by_content(tmp_path):
    """The trained person detector (320 px: the people in the demo photos are large) through
    doit: the control's report, a no-op second run, a stored result reused after the Q/DQ
    model is lost, and a changed max_drop rerunning quantize but not calibration."""
    from conftest import executed, run_doit
    from test_trained_detector import people_project

    project = people_project(tmp_path / "proj", PEOPLE_RECIPE)

    first = run_doit(project, "cpu:people", timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    report_path = project / "artifacts/people/int8/accuracy.json"
    report = json.loads(report_path.read_text())
    assert report["floor"] == 0.99 and report["after" if report["reverted"] else "before"]["status"] == "passed"
    assert report["reused"] is False and 0.8 <= report["conv_int8_share"] <= 1.0
    check = json.loads((project / "artifacts/people/int8/check.json").read_text())
    assert check["passed"] and check["gate"]["value"] >= 0.99

    assert executed(run_doit(project, "cpu:people")) == []

    (project / "artifacts/people/int8/qdq.onnx").unlink()
    again = run_doit(project, "cpu:people")
    assert "quantize:people-int8" in executed(again) and "calib:people-int8" not in executed(again)
    assert json.loads(report_path.read_text())["reused"] is True

    recipe = project / "recipes" / "people.yaml"
    recipe.write_text(recipe.read_text().replace("max_drop: 0.01", "max_drop: 0.02"))
    changed = run_doit(project, "cpu:people")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "quantize:people-int8" in executed(changed) and "calib:people-int8" not in executed(changed)
    assert json.loads(report_path.read_text())["floor"] == 0.98


def test_accuracy_needs_a_gate_and_is_refused_where_int8_comes_from_a_cache(tmp_path):
    """Both are one line before any work: a raw verify has no figure to hold to, and an
    implicit INT8 build (a calibration cache, TensorRT 8.x) never reads the edited Q/DQ ONNX."""
    from conftest import make_project, run_doit, with_demo_sets
    from doubles.trtexec import make_wrapper

    recipe = PEOPLE_RECIPE.replace("weights: models/people.pt", "seed: 0")
    raw = with_demo_sets(make_project(tmp_path / "raw", {"people": recipe.replace("task: detect", "task: raw")}))
    implicit = with_demo_sets(make_project(tmp_path / "implicit", {"people": recipe}))

    listed = run_doit(raw, "list")
    assert listed.returncode == 3 and len(listed.stderr.strip().splitlines()) == 1
    assert "variants.int8.calibration.accuracy" in listed.stderr and "task-aware gate" in listed.stderr

    built = run_doit(implicit, "engine:people-int8", env={"TRTEXEC": str(make_wrapper(tmp_path / "bin", "8.6"))})
    assert built.returncode != 0
    line = next(line for line in (built.stdout + built.stderr).splitlines() if "calibration.accuracy" in line)
    assert "TensorRT 8.6" in line and "set build.precision_mode: explicit" in line
    assert not (implicit / "artifacts/people/int8/engine.plan").exists()

    # the kit renders every generation: on 8.x its build.sh says the same line instead of building
    # the calibration cache without the reverts; 10.x and 11.x build the Q/DQ ONNX
    kit = run_doit(implicit, "kit:people-int8")
    assert kit.returncode == 0, kit.stderr[-2000:]
    with tarfile.open(implicit / "artifacts/kit/people-int8-kit.tar.gz") as archive:
        script = archive.extractfile("people-int8-kit/build.sh").read().decode()
    branches = dict(re.findall(r"^  (8\.2|8\.5|8\.6|10|11)\)\n(.*)$", script, re.MULTILINE))
    assert all("set build.precision_mode: explicit" in branches[g] and "exit 1" in branches[g]
               for g in ("8.2", "8.5", "8.6")), branches
    assert all("--onnx=qdq.onnx" in branches[g] for g in ("10", "11")), branches
