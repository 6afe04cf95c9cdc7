"""The other model sources: a torch factory (`package.module:function`) and an existing ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtforge.errors import StageError
from trtforge.recipe import InputSpec, ModelSource
from trtforge.stages.export import export_onnx

FACTORY = '''
import torch

def tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
'''
SPEC = InputSpec("x", (1, 3, 16, 16), "float32", (0,))  # tiny: only the plumbing is under test


def test_torch_factory_is_exported_with_the_recipe_names_and_dynamic_batch(tmp_path):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    out = tmp_path / "export.onnx"
    export_onnx(ModelSource("torch", factory="mymodels:tiny", seed=3), SPEC, 13, tmp_path, out)
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["x"] and model.opset_import[0].version == 13
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((3, 3, 16, 16), np.float32)})  # batch 3 through a batch-1 export
    assert y.shape == (3, 4, 16, 16)


def test_torch_factory_state_dict_weights_are_loaded(tmp_path):
    import torch

    (tmp_path / "mymodels.py").write_text(FACTORY)
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodels_for_test", tmp_path / "mymodels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.tiny()
    for p in net.parameters():
        torch.nn.init.constant_(p, 0.5)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "export.onnx"
    export_onnx(ModelSource("torch", factory="mymodels:tiny", weights=Path("w.pt")), SPEC, 13, tmp_path, out)
    (y,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ones((1, 3, 16, 16), np.float32)})
    assert y[0, 0, 8, 8] == pytest.approx(0.5 * 27 + 0.5)  # 3x3x3 window of ones, weight and bias 0.5


THREAD_RECORDING_FACTORY = '''
import torch

seen = []

def tiny():
    seen.append(torch.get_num_threads())
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))

def broken():
    seen.append(torch.get_num_threads())
    raise RuntimeError("cannot build")
'''


def test_export_runs_torch_on_one_thread_and_gives_the_process_its_threads_back(tmp_path):
    """One intra-op thread while exporting (what Ultralytics' exporter runs on; a second one
    only spins while tracing), and the build's later stages get the threads back, also after a
    failed export."""
    import sys

    import torch

    (tmp_path / "threadmodels.py").write_text(THREAD_RECORDING_FACTORY)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        export_onnx(ModelSource("torch", factory="threadmodels:tiny"), SPEC, 13, tmp_path, tmp_path / "a.onnx")
        assert torch.get_num_threads() == 2
        with pytest.raises(Exception, match="cannot build"):
            export_onnx(ModelSource("torch", factory="threadmodels:broken"), SPEC, 13, tmp_path, tmp_path / "b.onnx")
        assert torch.get_num_threads() == 2
        assert sys.modules["threadmodels"].seen == [1, 1]
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("threadmodels", None)


def test_missing_factory_is_one_line(tmp_path):
    with pytest.raises(StageError, match="model.factory: cannot import 'nowhere:tiny'"):
        export_onnx(ModelSource("torch", factory="nowhere:tiny"), SPEC, 13, tmp_path, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_onnx_source_is_checked_and_copied(tmp_path):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    export_onnx(ModelSource("torch", factory="mymodels:tiny"), SPEC, 13, tmp_path, tmp_path / "given.onnx")
    export_onnx(ModelSource("onnx", path=Path("given.onnx")), SPEC, 13, tmp_path, tmp_path / "copy.onnx")
    assert (tmp_path / "copy.onnx").read_bytes() == (tmp_path / "given.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes((tmp_path / "given.onnx").read_bytes()[:100])
    with pytest.raises(StageError, match="model.path: truncated.onnx cannot be read as ONNX"):
        export_onnx(ModelSource("onnx", path=Path("truncated.onnx")), SPEC, 13, tmp_path, tmp_path / "x.onnx")


def test_export_reports_its_phases_as_plain_lines_without_a_terminal(tmp_path, capfd):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    export_onnx(ModelSource("torch", factory="mymodels:tiny"), SPEC, 13, tmp_path, tmp_path / "export.onnx")
    lines = [line for line in capfd.readouterr().err.splitlines() if "UNTRAINED" not in line]  # no weights here
    assert [line.split(" (")[0] for line in lines[:2]] == [
        "trtforge: export of mymodels:tiny: building the network",
        "trtforge: export of mymodels:tiny: tracing to ONNX opset 13"]
    assert lines[-1].startswith("trtforge: exported export.onnx (") and " MiB) in " in lines[-1]
    assert not any(ch in "".join(lines) for ch in "\x1b\r")  # CI logs: no control characters


def static_onnx(path: Path, shape=(1, 3, 16, 16)) -> Path:
    """An ONNX with a fixed input shape, as `yolo export` writes by default (dynamic=False)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "static",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("shape, dynamic, says", [
    ((1, 3, 16, 16), (0,), r"input.dynamic_axes: axis 0 of 'x' is fixed at 1 in static.onnx \(\[1, 3, 16, 16\], a "
                           r"static export\): remove 0 from input.dynamic_axes"),
    ((1, 3, 32, 32), (), r"input.shape: axis 2 is 32 but static.onnx fixes it at 16 \(\[1, 3, 16, 16\]\): set "
                         r"input.shape to \[1, 3, 16, 16\]"),
    ((1, 3, 16), (), r"input.shape: \[1, 3, 16\] has 3 axes but static.onnx's input 'x' has 4"),
], ids=["dynamic batch", "size", "rank"])
def test_a_recipe_the_onnx_cannot_take_is_one_line_naming_the_field(tmp_path, shape, dynamic, says):
    static_onnx(tmp_path / "static.onnx")
    with pytest.raises(StageError, match=says):
        export_onnx(ModelSource("onnx", path=Path("static.onnx")), InputSpec("x", shape, "float32", dynamic), 17,
                    tmp_path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    export_onnx(ModelSource("onnx", path=Path("static.onnx")), InputSpec("x", (1, 3, 16, 16), "float32", ()), 17,
                tmp_path, tmp_path / "out.onnx")  # the recipe the message leads to
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "static.onnx").read_bytes()


def test_model_metadata_is_read_as_literals_only_and_written_as_ultralytics_does():
    from trtforge.modelmeta import metadata_from_props, props_from_metadata

    props = {"names": "{0: 'person', 1: 'car'}", "stride": "32", "task": "detect", "imgsz": "[640, 640]",
             "end2end": "False", "author": "Ultralytics"}
    metadata = metadata_from_props(props)
    assert metadata == {"names": {0: "person", 1: "car"}, "stride": 32, "task": "detect", "imgsz": [640, 640],
                        "end2end": False}
    assert props_from_metadata({**metadata, "names": {"0": "person", "1": "car"}}) == {
        k: v for k, v in props.items() if k != "author"}  # export.json's string keys become ints again
    hostile = {"names": "__import__('os').system('echo owned')", "stride": "[" * 10000, "imgsz": "640"}
    assert metadata_from_props(hostile) == {}  # never evaluated, never a crash: left out


@pytest.mark.parametrize("stated", [
    {"preset": "imagenet"},
    {"preset": "imagenet", "channels": "bgr", "resize_to": 240},
    {"scale": 1.0, "pad": 0, "resize": "stretch"},
])
def test_the_preprocess_a_refusal_says_to_set_feeds_the_model_as_its_metadata_says(tmp_path, stated):
    """The value in the refusal, pasted into a recipe, loads as exactly the stated preprocessing."""
    from test_recipe import load_text

    from trtforge.recipe import jsonable
    from trtforge.stages.export import preprocess_setting

    static_onnx(tmp_path / "m.onnx")
    wanted = jsonable(load_text(tmp_path, onnx_recipe(stated), "want.yaml").input.preprocess)
    setting = preprocess_setting(wanted)
    assert jsonable(load_text(tmp_path, onnx_recipe(setting), "set.yaml").input.preprocess) == wanted, setting


def onnx_recipe(preprocess) -> str:
    """An ONNX-source recipe with `input.preprocess` as given (a dict, or YAML text)."""
    import json

    text = preprocess if isinstance(preprocess, str) else json.dumps(preprocess)
    return (f"model: {{source: onnx, path: m.onnx}}\ninput: {{name: x, shape: [1, 3, 16, 16], preprocess: {text}}}\n"
            "variants:\n  fp32: {precision: fp32}\n")


def test_an_onnx_source_is_fed_as_its_metadata_says_and_one_that_says_nothing_is_warned_about(tmp_path, capfd):
    """trtforge writes how a model is fed into every ONNX it makes (trtforge.preprocess); an ONNX
    source that carries it must be fed so, and one with no such word and no Ultralytics
    metadata gets one warning when the recipe feeds it Ultralytics' letterbox by default."""
    import json

    from trtforge.images import IMAGENET
    from trtforge.modelmeta import PREPROCESS_KEY, props_from_metadata, props_of, stamp

    spec = InputSpec("x", (1, 3, 16, 16), "float32", ())
    source = ModelSource("onnx", path=Path("plain.onnx"))
    static_onnx(tmp_path / "plain.onnx")
    export_onnx(source, spec, 17, tmp_path, tmp_path / "out.onnx", tmp_path / "export.json")
    warned = [line for line in capfd.readouterr().err.splitlines() if "does not say how it is fed" in line]
    assert len(warned) == 1 and "set input.preprocess" in warned[0]
    assert json.loads((tmp_path / "export.json").read_text())["preprocess"]["resize"] == "letterbox"

    fed = {"preprocess": {**json.loads((tmp_path / "export.json").read_text())["preprocess"]}}
    model = onnx.load(str(tmp_path / "plain.onnx"))
    stamp(model, props_from_metadata(fed))  # as surgery stamps every ONNX trtforge writes
    onnx.save(model, str(tmp_path / "made.onnx"))
    assert PREPROCESS_KEY in props_of(onnx.load(str(tmp_path / "made.onnx")))
    made = ModelSource("onnx", path=Path("made.onnx"))
    export_onnx(made, spec, 17, tmp_path, tmp_path / "out.onnx")  # fed as it says: no warning
    assert "does not say how it is fed" not in capfd.readouterr().err
    with pytest.raises(StageError, match=r"input.preprocess: made.onnx was made to be fed with resize 'letterbox', "
                                         r"not 'shortest_edge', .*mean \[0.0, 0.0, 0.0\], not \[0.485") as error:
        export_onnx(made, InputSpec("x", (1, 3, 16, 16), "float32", (), IMAGENET), 17, tmp_path, tmp_path / "o2.onnx")
    assert not (tmp_path / "o2.onnx").exists()  # refused before anything is written
    assert "set `input.preprocess: ultralytics` in the recipe" in str(error.value)  # the value to set, in one line
    assert "\n" not in str(error.value)

    del model.metadata_props[:]
    model.metadata_props.add(key="stride", value="32")  # an Ultralytics export: letterbox is right
    onnx.save(model, str(tmp_path / "yolo.onnx"))
    export_onnx(ModelSource("onnx", path=Path("yolo.onnx")), spec, 17, tmp_path, tmp_path / "out.onnx")
    assert "does not say how it is fed" not in capfd.readouterr().err


def test_a_recipe_without_preprocess_feeds_an_onnx_source_as_its_metadata_says(tmp_path):
    """Issue 14: the default comes from the ONNX when it says how it is fed (read without onnx,
    on every doit call); a change of that word changes the recipe, so what depends on it reruns."""
    import json

    from test_recipe import load_text

    from trtforge.images import IMAGENET, ULTRALYTICS
    from trtforge.modelmeta import props_from_metadata, stamp
    from trtforge.recipe import jsonable

    recipe = ("model: {source: onnx, path: m.onnx}\ninput: {name: x, shape: [1, 3, 16, 16], dynamic_axes: []}\n"
              "variants:\n  fp32: {precision: fp32}\n")
    model = onnx.load(str(static_onnx(tmp_path / "m.onnx")))
    assert load_text(tmp_path, recipe).input.preprocess == ULTRALYTICS  # it says nothing: the default

    stamp(model, props_from_metadata({"preprocess": jsonable(IMAGENET)}))
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert load_text(tmp_path, recipe).input.preprocess == IMAGENET
    bgr = {**jsonable(IMAGENET), "channels": "bgr"}
    stamp(model, props_from_metadata({"preprocess": bgr}))
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert jsonable(load_text(tmp_path, recipe).input.preprocess) == bgr
    export_onnx(ModelSource("onnx", path=Path("m.onnx")), load_text(tmp_path, recipe).input, 17, tmp_path,
                tmp_path / "out.onnx")  # export agrees with the default it led to

    stamp(model, {"trtforge.preprocess": json.dumps({**bgr, "resize": "sideways"})})
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert load_text(tmp_path, recipe).input.preprocess == ULTRALYTICS  # not valid: not used
    with pytest.raises(StageError, match="input.preprocess: m.onnx was made to be fed with resize 'sideways'"):
        export_onnx(ModelSource("onnx", path=Path("m.onnx")), load_text(tmp_path, recipe).input, 17, tmp_path,
                    tmp_path / "out.onnx")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(props=st.dictionaries(st.text(max_size=40), st.text(max_size=300), max_size=6),
       version=st.integers(0, 2**40))
def test_scanned_metadata_props_are_what_onnx_reads(tmp_path_factory, props, version):
    """modelmeta.scan_props walks the protobuf wire format itself; onnx's parser is the reference."""
    from onnx import helper

    from trtforge.modelmeta import props_of, scan_props

    path = tmp_path_factory.mktemp("scan") / "m.onnx"
    model = onnx.load(str(static_onnx(path)))
    model.model_version = version
    model.doc_string = "x" * (version % 500)
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    assert scan_props(path) == props_of(onnx.load(str(path))) == props
