"""The CPU check measures what TensorRT computes, not onnxruntime's float16 QuantizeLinear
truncation (issues 18576/22741, fixed in onnxruntime 1.32): a two-node Q/DQ graph that
onnxruntime 1.24 gets wrong, run as-is and through the check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtforge.quant.cpu_form import cpu_session_model, runtime_truncates_float16, with_float32_quantize_inputs
from trtforge.recipe import CheckSpec, VerifySpec
from trtforge.stages.check import CheckJob, run_check
from trtforge.stages.reference import RUNNER, run_onnxruntime

SCALE = 0.0999755859375  # exact in float16
# x / SCALE = +-0.5003, 2.5006, -1.5004: nearest-even rounding gives +-1, 3, -2; truncation 0, 2, -1
INPUT = np.array([[0.050018310546875, -0.050018310546875, 0.25, -0.15]], np.float32)
ROUNDED = (np.array([[1, -1, 3, -2]], np.float32) * np.float16(SCALE)).astype(np.float16).astype(np.float32)


def float16_qdq_model(path: Path) -> Path:
    """images (float32) -> Cast fp16 -> QuantizeLinear -> DequantizeLinear -> Cast fp32, as
    ModelOpt lays out a Q/DQ pair whose surrounding ops stay in FP16."""
    nodes = [helper.make_node("Cast", ["images"], ["x16"], to=TensorProto.FLOAT16),
             helper.make_node("QuantizeLinear", ["x16", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y16"]),
             helper.make_node("Cast", ["y16"], ["output0"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.array(SCALE, np.float16), "scale"),
                               numpy_helper.from_array(np.array(0, np.int8), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def test_the_installed_onnxruntime_is_the_one_that_truncates(tmp_path):
    """The premise: without the workaround, this runtime's answer is not TensorRT's."""
    plain = run_onnxruntime(float16_qdq_model(tmp_path / "qdq.onnx"), [{"images": INPUT}])[0]["output0"]
    if not runtime_truncates_float16():
        pytest.skip("this onnxruntime rounds float16 QuantizeLinear correctly")
    assert not np.array_equal(plain, ROUNDED)
    assert plain[0, 0] == 0 and plain[0, 2] == pytest.approx(2 * SCALE, rel=1e-3)


def test_the_cpu_form_rounds_to_nearest_even_as_tensorrt_does(tmp_path):
    model, record = cpu_session_model(float16_qdq_model(tmp_path / "qdq.onnx"))
    assert np.array_equal(run_onnxruntime(model, [{"images": INPUT}])[0]["output0"], ROUNDED)
    assert record["runtime"].startswith("onnxruntime ") and record["provider"] == "CPUExecutionProvider"


def test_only_float16_quantize_nodes_are_rewritten_and_the_model_stays_valid(tmp_path):
    model = onnx.load(str(float16_qdq_model(tmp_path / "qdq.onnx")))
    rewritten, count = with_float32_quantize_inputs(model)
    onnx.checker.check_model(rewritten, full_check=True)  # topologically sorted, types consistent
    assert count == 1
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["Cast", "Cast", "Cast", "QuantizeLinear", "DequantizeLinear", "Cast"]
    assert [n.op_type for n in model.graph.node] == ["Cast", "QuantizeLinear", "DequantizeLinear", "Cast"]
    again, none = with_float32_quantize_inputs(rewritten)  # float32 Q nodes are left alone
    assert none == 0 and len(again.graph.node) == len(rewritten.graph.node)


def test_the_check_passes_a_correctly_rounded_variant_and_records_how_it_ran(tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    save_json([{"images": INPUT}], str(tmp_path / "inputs.json"))
    results = RunResults()
    results.add([{"output0": ROUNDED}], runner_name=RUNNER)  # what TensorRT computes
    results.save(str(tmp_path / "outputs.json"))
    job = CheckJob(task="check:t-int8", variant_onnx=float16_qdq_model(tmp_path / "qdq.onnx"),
                   engine=tmp_path / "engine.plan", reference_inputs=tmp_path / "inputs.json",
                   reference_outputs=tmp_path / "outputs.json",
                   check=CheckSpec(atol=1e-6, rtol=1e-6, statistic="max", min_agreement_vs_fp32=None),
                   verify=VerifySpec(images=Path("x"), task="raw"),
                   report_json=tmp_path / "check.json", report_png=tmp_path / "check.png")
    run_check(job)  # truncation would put 0.1 of error on output0: far above atol
    onnx_section = json.loads((tmp_path / "check.json").read_text())["onnx"]
    assert onnx_section["outputs"]["output0"]["max_absdiff"] == 0
    assert onnx_section["runtime"].startswith("onnxruntime ")
    if runtime_truncates_float16():
        assert "1 float16 QuantizeLinear read through exact float32 Casts" in onnx_section["form"]


def qdq_convolutions() -> onnx.ModelProto:
    """images -> two 3x3 convolutions of 32 channels, FP16 around INT8 as ModelOpt writes them:
    each reads its activation and its float16 weight (per output channel) through Q/DQ pairs."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["images"], ["x0"], to=TensorProto.FLOAT16)]
    inits = []

    def fake_quantized(tensor: str, scale, axis: int | None = None) -> str:
        inits.extend([numpy_helper.from_array(np.asarray(scale, np.float16), f"{tensor}_scale"),
                      numpy_helper.from_array(np.zeros(np.shape(scale), np.int8), f"{tensor}_zero")])
        extra = {} if axis is None else {"axis": axis}
        nodes.extend([helper.make_node("QuantizeLinear", [tensor, f"{tensor}_scale", f"{tensor}_zero"], [f"{tensor}_q"],
                                       **extra),
                      helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_scale", f"{tensor}_zero"],
                                       [f"{tensor}_dq"], **extra)])
        return f"{tensor}_dq"

    for i, channels in enumerate((16, 32)):
        weight = rng.normal(0, 0.1, (32, channels, 3, 3)).astype(np.float16)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("Conv", [fake_quantized(f"x{i}", 0.02 if i else 1 / 127),
                                               fake_quantized(f"w{i}", np.abs(weight).max((1, 2, 3)) / 127, 0)],
                                      [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"]))
    nodes.append(helper.make_node("Cast", ["x2"], ["output0"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 16, 24, 24])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 32, 24, 24])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("reverted_nodes", [[], ["conv0"], ["conv0", "conv1"]])
def test_fed_weights_give_the_check_forms_outputs_bit_for_bit(reverted_nodes):
    """Accuracy control's fast form (weights' Q/DQ computed once and fed) judges exactly what the
    check would: same bits, fully quantized or with nodes reverted to their float weights."""
    from trtforge.quant.accuracy import reverted
    from trtforge.quant.cpu_form import computed_weights, with_fed_weights

    model = qdq_convolutions()
    weights = computed_weights(with_float32_quantize_inputs(model)[0])
    assert sorted(weights) == ["w0_dq", "w1_dq"]
    candidate = with_float32_quantize_inputs(reverted(model, reverted_nodes))[0]
    fed_form, fed = with_fed_weights(candidate, weights)
    assert sorted(fed) == sorted({"conv0": "w0_dq", "conv1": "w1_dq"}[name]
                                 for name in ("conv0", "conv1") if name not in reverted_nodes)
    assert not any(node.op_type == "DequantizeLinear" and node.output[0] in fed for node in fed_form.graph.node)
    feeds = [{"images": np.random.default_rng(seed).normal(0, 0.5, (1, 16, 24, 24)).astype(np.float32)}
             for seed in range(3)]
    expected = run_onnxruntime(candidate.SerializeToString(), feeds)
    measured = run_onnxruntime(fed_form.SerializeToString(), [{**feed, **fed} for feed in feeds])
    assert all(np.array_equal(e["output0"], m["output0"]) for e, m in zip(expected, measured))
    if fed:  # and the comparison can tell: the float weights, unquantized, give other bits
        unquantized = {name: numpy_helper.to_array(init) for init in model.graph.initializer for name in fed
                       if init.name == name.removesuffix("_dq")}
        other = run_onnxruntime(fed_form.SerializeToString(), [{**feeds[0], **unquantized}])
        assert not np.array_equal(expected[0]["output0"], other[0]["output0"])
