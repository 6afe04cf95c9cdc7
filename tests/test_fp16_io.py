"""build.io: fp16 carried by the typed ONNX (float16_io.py), run for real: ModelOpt's AutoCast
and Q/DQ models of a small conv head, retyped, then run by ONNX Runtime the way the check runs
every variant (typed feeds in, float32 out). The rendering per generation is in test_render.py,
the double's reading of it in test_trtexec_double.py, a doit build and kit in test_build_e2e.py.
Shapes are tiny (1x3x16x16): what is checked is types and values, not sizes."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from trtforge.float16_io import with_float16_io  # noqa: E402
from trtforge.stages.reference import run_onnxruntime  # noqa: E402

FLOAT16 = TensorProto.FLOAT16


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """(model.onnx, calib.cache, sample.npy, feeds): x -> conv -> relu -> conv -> sigmoid -> y."""
    from trtforge.calib_cache import write_cache_text
    from trtforge.trt_version import TrtVersion

    folder = tmp_path_factory.mktemp("head")
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w0"),
               numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3, "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="/conv0", pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"], name="/relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="/conv1"),
             helper.make_node("Sigmoid", ["c1"], ["y"], name="/sigmoid")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 16, 16])], weights)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.save(model, str(folder / "model.onnx"))
    sample = rng.uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    np.save(folder / "sample.npy", sample)
    ranges = {"x": 1.0, **{name: float(np.abs(v).max()) for name, v in
                           zip(["c0", "r0", "c1", "y"], _intermediates(folder / "model.onnx", sample))}}
    (folder / "calib.cache").write_text(write_cache_text(TrtVersion(10, 8, 0), ranges))
    feeds = [{"x": rng.uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)} for _ in range(2)]
    return folder / "model.onnx", folder / "calib.cache", folder / "sample.npy", feeds


def _intermediates(path, sample) -> list:
    import onnxruntime as ort

    model = onnx.load(str(path))
    for name in ("c0", "r0", "c1"):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, c0, r0, c1 = session.run(["y", "c0", "r0", "c1"], {"x": sample})
    return [c0, r0, c1, y]


def io_types(path) -> list[int]:
    graph = onnx.load(str(path)).graph
    return [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)]


def casts(path) -> int:
    return sum(n.op_type == "Cast" for n in onnx.load(str(path)).graph.node)


def test_autocast_with_fp16_io_has_half_bindings_no_extra_casts_and_the_same_values(head, tmp_path):
    from trtforge.stages.autocast import autocast_fp16

    source, _, _, feeds = head
    autocast_fp16(source, tmp_path / "fp32io.onnx", ())
    autocast_fp16(source, tmp_path / "fp16io.onnx", (), io="fp16")
    assert io_types(tmp_path / "fp16io.onnx") == [FLOAT16, FLOAT16]
    # AutoCast widened its float16 graph back to float32 at both ends; those casts are folded away
    assert casts(tmp_path / "fp16io.onnx") < casts(tmp_path / "fp32io.onnx")
    reference = run_onnxruntime(source, feeds)
    typed = run_onnxruntime(tmp_path / "fp16io.onnx", feeds)  # float32 feeds are cast to the declared float16
    assert typed[0]["y"].dtype == np.float32
    for want, got in zip(reference, typed):
        np.testing.assert_allclose(got["y"], want["y"], atol=2e-3)
    # folding changed no value: the float32-I/O AutoCast model, rounded to float16 at both ends, agrees exactly
    rounded = run_onnxruntime(tmp_path / "fp32io.onnx", [{"x": f["x"].astype(np.float16).astype(np.float32)}
                                                         for f in feeds])
    for want, got in zip(rounded, typed):
        np.testing.assert_array_equal(got["y"], want["y"].astype(np.float16).astype(np.float32))


def test_qdq_with_fp16_io_has_half_bindings_and_stays_close(head, tmp_path):
    from trtforge.stages.qdq import quantize_int8

    source, cache, sample, feeds = head
    quantize_int8(source, cache, sample, tmp_path / "qdq.onnx", (), io="fp16")
    graph = onnx.load(str(tmp_path / "qdq.onnx")).graph
    assert io_types(tmp_path / "qdq.onnx") == [FLOAT16, FLOAT16]
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    reference, typed = run_onnxruntime(source, feeds), run_onnxruntime(tmp_path / "qdq.onnx", feeds)
    for want, got in zip(reference, typed):
        assert np.abs(got["y"] - want["y"]).max() < 0.05  # INT8 of a sigmoid output in [0, 1]


def test_retyping_keeps_other_readers_of_an_input_and_of_an_output_exact(tmp_path):
    """The general case: the input feeds a float32 node and a cast; the output is also read
    inside the graph. Values must equal the float32 model's, rounded to float16 at the edges."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Exp", ["x"], ["y"], name="exp"),
             helper.make_node("Cast", ["x"], ["h"], name="half", to=FLOAT16),
             helper.make_node("Cast", ["h"], ["w"], name="wide", to=TensorProto.FLOAT),
             helper.make_node("Add", ["y", "w"], ["z"], name="add")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    typed = with_float16_io(onnx.load(str(tmp_path / "fp32.onnx")))
    onnx.checker.check_model(typed, full_check=True)
    onnx.save(typed, str(tmp_path / "fp16.onnx"))
    assert io_types(tmp_path / "fp16.onnx") == [FLOAT16, FLOAT16, FLOAT16]
    feed = {"x": np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)}
    (want,) = run_onnxruntime(tmp_path / "fp32.onnx", [{"x": feed["x"].astype(np.float16).astype(np.float32)}])
    (got,) = run_onnxruntime(tmp_path / "fp16.onnx", [feed])
    for name in ("y", "z"):
        np.testing.assert_array_equal(got[name], want[name].astype(np.float16).astype(np.float32))


def test_the_triton_config_of_a_classifier_has_half_bindings_and_its_label_file(head):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from trtforge.stages.package import triton_repository

    source = head[0]
    files = triton_repository("cls", source.read_bytes(), b"plan", 2, io="fp16",
                              metadata={"task": "classify", "names": {str(i): f"c{i}" for i in range(11)}})
    config = text_format.Parse(files["triton/cls/config.pbtxt"].decode(), model_config_pb2.ModelConfig())
    assert [t.data_type for t in (*config.input, *config.output)] == [model_config_pb2.TYPE_FP16] * 2
    assert config.output[0].label_filename == "labels.txt"
    assert files["triton/cls/labels.txt"].decode().split() == [f"c{i}" for i in range(11)]  # c10 last, not third
    plain = triton_repository("cls", source.read_bytes(), b"plan", 2)  # io fp32, no names known
    assert "TYPE_FP32" in plain["triton/cls/config.pbtxt"].decode() and "triton/cls/labels.txt" not in plain
