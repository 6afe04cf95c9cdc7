"""Intent -> trtexec argv: one recipe rendered for every TensorRT generation.

The expected argv are written out by hand from the grammar recorded in DESIGN.md, so a
change to the renderer has to be a change to these specifications too.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from trtforge.recipe import BuildOptions, PassSpec, ShapeRange
from trtforge.render import (EngineIntent, RenderError, check_intent, default_profiles, io_route, keep_fp32_route,
                             render_argv)
from trtforge.trt_version import TrtVersion, parse_banner_number, version_from_banner

V82, V86, V10, V11 = TrtVersion(8, 2, 1), TrtVersion(8, 6, 1), TrtVersion(10, 8, 0), TrtVersion(11, 0, 0)
V84, V85 = TrtVersion(8, 4, 1), TrtVersion(8, 5, 2)  # JetPack 5.0.2, 5.1
PROFILE = (("images", ShapeRange((1, 3, 640, 640), (4, 3, 640, 640), (8, 3, 640, 640))),)
BUILD = BuildOptions(profiles=(PROFILE,), workspace_bytes=4 << 30)
SHAPES = ["--minShapes=images:1x3x640x640", "--optShapes=images:4x3x640x640", "--maxShapes=images:8x3x640x640"]
BASE = ["--onnx=model.onnx", "--saveEngine=engine.plan"]


def argv_for(precision: str, build: BuildOptions, version: TrtVersion, keep: tuple[str, ...] = ()) -> list[str]:
    mode = check_intent(precision, build, version)
    return render_argv(EngineIntent(precision, mode, build, keep_fp32_layers=keep), version)


@pytest.mark.parametrize("version, expected", [
    (V82, [*BASE, "--fp16", *SHAPES, "--workspace=4096", "--timingCacheFile=timing.cache"]),
    (V86, [*BASE, "--fp16", *SHAPES, "--memPoolSize=workspace:4096", "--timingCacheFile=timing.cache"]),
    (V10, [*BASE, "--fp16", *SHAPES, "--memPoolSize=workspace:4G", "--timingCacheFile=timing.cache"]),
    # 11.x: no precision flag at all; the AutoCast ONNX carries FP16 (and --stronglyTyped is a no-op).
    (V11, [*BASE, *SHAPES, "--memPoolSize=workspace:4G", "--timingCacheFile=timing.cache"]),
])
def test_fp16_per_generation(version, expected):
    assert argv_for("fp16", BUILD, version) == expected


def test_fp32_has_no_precision_flag_anywhere():
    for version in (V82, V86, V10, V11):
        argv = argv_for("fp32", BUILD, version)
        assert not [a for a in argv if a in ("--fp16", "--int8", "--stronglyTyped")]


def test_explicit_fp16_on_10_is_strongly_typed():
    build = replace(BUILD, precision_mode="explicit")
    assert "--stronglyTyped" in argv_for("fp16", build, V10)
    assert "--fp16" not in argv_for("fp16", build, V10)


@pytest.mark.parametrize("version, refused", [(V82, "needs 10.x"), (V86, "needs 10.x")])
def test_explicit_fp16_is_refused_before_10(version, refused):
    with pytest.raises(RenderError, match=refused):
        check_intent("fp16", replace(BUILD, precision_mode="explicit"), version)


@pytest.mark.parametrize("version, requested, mode", [
    (V82, "auto", None), (V86, "auto", None), (V10, "auto", "explicit"), (V11, "auto", "explicit"),
    (V86, "implicit", None), (V10, "implicit", None),
    (V82, "explicit", "explicit"), (V86, "explicit", "explicit"), (V10, "explicit", "explicit")])
def test_accuracy_controlled_int8_builds_only_from_its_q_dq_onnx(version, requested, mode):
    """Accuracy control's reverts live in the Q/DQ ONNX: where INT8 would come from a calibration
    cache (auto on 8.x, or implicit asked for) the variant is refused in one line, not built
    without them (mode None); the same build without reverts stays implicit."""
    build = replace(BUILD, precision_mode=requested)
    if mode is None:
        with pytest.raises(RenderError, match="calibration.accuracy reverts nodes; set build.precision_mode: explicit"):
            check_intent("int8", build, version, reverted=True)
        assert check_intent("int8", build, version) == "implicit"
    else:
        assert check_intent("int8", build, version, reverted=True) == mode


def test_implicit_fp16_is_refused_on_11():
    with pytest.raises(RenderError, match="TensorRT 11 removed --fp16"):
        check_intent("fp16", replace(BUILD, precision_mode="implicit"), V11)


def test_keep_fp32_renders_obeyed_layer_precisions_on_86_and_10():
    keep = ("/model.22/dfl/conv/Conv", "/model.22/dfl/Softmax")
    for version in (V86, V10):
        argv = argv_for("fp16", replace(BUILD, keep_fp32=("/model.22/dfl/*",)), version, keep)
        assert argv[2:5] == ["--fp16", "--precisionConstraints=obey",
                             "--layerPrecisions=/model.22/dfl/conv/Conv:fp32,/model.22/dfl/Softmax:fp32"]


def test_keep_fp32_on_an_fp16_engine_is_refused_on_82_in_one_line():
    with pytest.raises(RenderError) as refused:
        check_intent("fp16", replace(BUILD, keep_fp32=("/model.22/*",)), V82)
    assert str(refused.value) == ("TensorRT 8.2.1 has no --layerPrecisions, so an FP16 engine cannot keep "
                                  "build.keep_fp32 layers in FP32 (INT8 can); remove keep_fp32 from this variant "
                                  "or build with TensorRT 8.4+")


@pytest.mark.parametrize("precision, mode, generation, route", [
    ("int8", "implicit", "8.2", "calibration_cache"),  # no --layerPrecisions: the cache lacks the kept scales
    ("int8", "implicit", "8.6", "layer_precisions"), ("int8", "implicit", "10", "layer_precisions"),
    ("int8", "explicit", "8.6", "onnx"), ("int8", "explicit", "10", "onnx"), ("int8", "explicit", "11", "onnx"),
    ("fp16", "implicit", "8.2", "unsupported"), ("fp16", "implicit", "8.6", "layer_precisions"),
    ("fp16", "explicit", "11", "onnx"), ("fp32", "implicit", "8.2", "fp32"),
])
def test_keep_fp32_route_per_generation(precision, mode, generation, route):
    assert keep_fp32_route(precision, mode, generation) == route


@pytest.mark.parametrize("backend, version, refused", [
    ("onnx", V82, True), ("onnx", V86, False), ("onnx", V10, False),
    ("efficient_nms", V82, False),  # the plugin node parses on every generation
])
def test_onnx_nms_backend_needs_a_parser_with_native_nonmaxsuppression(backend, version, refused):
    passes = (PassSpec("fold_constants"), PassSpec("nms", (("backend", backend), ("conf", 0.25))))
    if refused:
        with pytest.raises(RenderError, match="no native NonMaxSuppression .from 8.5.; set the surgery pass nms "
                                              "to backend: efficient_nms"):
            check_intent("fp32", BUILD, version, passes)
    else:
        assert check_intent("fp32", BUILD, version, passes) == "implicit"


def test_several_profiles_render_indexed_on_10_and_refused_on_8x():
    second = (("images", ShapeRange((1, 3, 320, 320), (1, 3, 320, 320), (1, 3, 320, 320))),)
    build = replace(BUILD, profiles=(PROFILE, second))
    argv = argv_for("fp32", build, V10)
    assert argv[2:10] == ["--profile=0", *SHAPES, "--profile=1", "--minShapes=images:1x3x320x320",
                          "--optShapes=images:1x3x320x320", "--maxShapes=images:1x3x320x320"]
    for version in (V82, V86):
        with pytest.raises(RenderError, match="one optimization profile"):
            check_intent("fp32", build, version)


@pytest.mark.parametrize("size, expected", [
    (1 << 30, "--memPoolSize=workspace:1G"), (1536 << 20, "--memPoolSize=workspace:1536M"),
    (512 << 20, "--memPoolSize=workspace:512M"),
])
def test_workspace_on_10_uses_a_single_letter_suffix(size, expected):
    # Never "GiB": trtexec 10 reads the last character only, so "4GiB" would be 4 bytes.
    assert expected in argv_for("fp32", replace(BUILD, workspace_bytes=size), V10)


def test_builder_options_render_from_86_and_are_refused_on_82():
    build = replace(BUILD, optimization_level=5, version_compatible=True, hardware_compatibility="ampere+")
    argv = argv_for("fp32", build, V86)
    assert {"--builderOptimizationLevel=5", "--versionCompatible", "--hardwareCompatibilityLevel=ampere+"} <= set(argv)
    with pytest.raises(RenderError, match="added in 8.6"):
        check_intent("fp32", build, V82)


def test_plugins_dla_and_extra_args():
    build = replace(BUILD, dla_core=0, extra_args=("--verbose", "--useCudaGraph"))
    intent = EngineIntent("fp32", "implicit", build, plugin_files=("a.so", "b.so"))
    assert "--plugins=a.so,b.so" in render_argv(intent, V82)
    assert render_argv(intent, V86)[-5:] == ["--staticPlugins=a.so,b.so", "--useDLACore=0", "--allowGPUFallback",
                                             "--verbose", "--useCudaGraph"]
    assert "--staticPlugins=a.so,b.so" in render_argv(intent, V10)


def test_every_rendered_argument_is_name_equals_value():
    build = replace(BUILD, keep_fp32=("x",), optimization_level=3, dla_core=1)
    for version in (V86, V10, V11):
        for arg in argv_for("fp16", build, version, ("x",)):
            assert arg.startswith("--") and " " not in arg


def test_default_profile_spans_batch_one_to_the_export_shape():
    assert default_profiles("images", (4, 3, 640, 640), (0,)) == (
        (("images", ShapeRange((1, 3, 640, 640), (4, 3, 640, 640), (4, 3, 640, 640))),),)
    assert default_profiles("images", (1, 3, 640, 640), ()) == ()


@pytest.mark.parametrize("line, version", [
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # trtexec --onnx=a.onnx", V82),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8401] # trtexec", V84),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec", V85),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", V86),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100800] [b43] # trtexec", V10),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v110000] # trtexec", V11),
])
def test_banner_versions(line, version):
    assert version_from_banner("noise\n" + line + "\n") == version


def test_unknown_generation_is_refused_with_the_supported_list():
    for number in (7103, 8300, 8001 + 900):  # 7.1, 8.3, 8.9: no grammar
        with pytest.raises(Exception, match=r"8.2 .*, 8.4/8.5 \(JetPack 5\), 8.6, 10.x and 11.x"):
            parse_banner_number(number).generation


# ---------------------------------------------------------------- JetPack 5: TensorRT 8.4 and 8.5
@pytest.mark.parametrize("version", [V84, V85])
def test_jetpack5_speaks_one_grammar_between_82_and_86(version):
    """sampleOptions.cpp at 8.4/8.5: --memPoolSize in MiB and --layerPrecisions exist, --plugins
    is still the plugin flag, builder levels and several profiles do not exist yet."""
    build = replace(BUILD, keep_fp32=("/m/*",))
    intent = EngineIntent("int8", check_intent("int8", build, version), build, keep_fp32_layers=("/m/a",),
                          plugin_files=("a.so",))
    assert render_argv(intent, version) == [*BASE, "--int8", "--calib=calib.cache", "--precisionConstraints=obey",
                                            "--layerPrecisions=/m/a:fp32", *SHAPES, "--memPoolSize=workspace:4096",
                                            "--timingCacheFile=timing.cache",
                                            "--plugins=a.so"]
    assert argv_for("fp16", build, version, ("/m/a",))[2:5] == ["--fp16", "--precisionConstraints=obey",
                                                                 "--layerPrecisions=/m/a:fp32"]
    assert keep_fp32_route("int8", "implicit", version.generation) == "layer_precisions"
    with pytest.raises(RenderError, match="added in 8.6"):
        check_intent("fp32", replace(BUILD, optimization_level=3), version)
    with pytest.raises(RenderError, match="one optimization profile"):
        check_intent("fp32", replace(BUILD, profiles=(PROFILE, PROFILE)), version)


# ------------------------------------------------------------------------------ build.io: fp16
IO_FLAGS = ["--inputIOFormats=fp16:chw", "--outputIOFormats=fp16:chw"]


def io_argv(precision: str, version: TrtVersion, types=(("FLOAT",), ("FLOAT",)), **build) -> list[str]:
    options = replace(BUILD, io="fp16", **build)
    mode = check_intent(precision, options, version)
    return render_argv(EngineIntent(precision, mode, options, io_types=types if io_route(
        precision, mode, version.generation) == "flags" else ((), ())), version)


@pytest.mark.parametrize("precision, version, route", [
    ("fp32", V82, "flags"), ("fp16", V85, "flags"), ("int8", V86, "flags"), ("fp16", V10, "flags"),
    ("int8", V10, "onnx"), ("fp16", V11, "onnx"), ("int8", V11, "onnx")])
def test_fp16_io_is_format_flags_on_builder_flag_builds_and_the_typed_onnx_otherwise(precision, version, route):
    flags = [a for a in io_argv(precision, version) if "IOFormats" in a]
    assert flags == (IO_FLAGS if route == "flags" else [])


def test_fp16_io_names_integer_bindings_per_binding_and_refuses_types_it_cannot_name():
    # EfficientNMS: float boxes and scores, int32 counts and classes; one entry per output then
    types = (("FLOAT",), ("INT32", "FLOAT", "FLOAT", "INT32"))
    assert io_argv("fp16", V10, types)[3:5] == [
        "--inputIOFormats=fp16:chw", "--outputIOFormats=int32:chw,fp16:chw,fp16:chw,int32:chw"]
    with pytest.raises(RenderError, match="an output of type int64"):
        io_argv("fp16", V86, (("FLOAT",), ("INT64",)))


def test_fp16_io_is_refused_where_nothing_can_carry_it_or_a_flag_would_contradict_it():
    with pytest.raises(RenderError, match="TensorRT 11.0.0 takes an engine's input and output types from its ONNX"):
        check_intent("fp32", replace(BUILD, io="fp16"), V11)
    with pytest.raises(RenderError, match="sets --inputIOFormats; remove it from build.extra_args"):
        check_intent("fp16", replace(BUILD, io="fp16", extra_args=("--inputIOFormats=int8:chw",)), V10)
    assert check_intent("fp16", replace(BUILD, extra_args=("--inputIOFormats=int8:chw",)), V10)  # io: fp32


@pytest.mark.parametrize("version, mode, flags", [
    (V82, "implicit", ["--int8", "--calib=calib.cache"]),
    (V86, "implicit", ["--int8", "--calib=calib.cache"]),
    (V10, "explicit", ["--stronglyTyped"]),  # auto on 10.x: ModelOpt Q/DQ, implicit INT8 is deprecated
    (V11, "explicit", []),
])
def test_int8_auto_per_generation(version, mode, flags):
    assert check_intent("int8", BUILD, version) == mode
    assert argv_for("int8", BUILD, version)[2:2 + len(flags) + 1] == [*flags, SHAPES[0]]


def test_int8_modes_the_recipe_forces():
    assert argv_for("int8", replace(BUILD, precision_mode="implicit"), V10)[2:4] == ["--int8", "--calib=calib.cache"]
    assert argv_for("int8", replace(BUILD, precision_mode="explicit"), V86)[2:4] == ["--int8", "--fp16"]
    with pytest.raises(RenderError, match="TensorRT 11 removed --int8"):
        check_intent("int8", replace(BUILD, precision_mode="implicit"), V11)


def test_int8_keep_fp32_on_the_implicit_path_obeys_layer_precisions():
    argv = argv_for("int8", replace(BUILD, keep_fp32=("/m/*",), precision_mode="implicit"), V10, ("/m/a", "/m/b"))
    assert argv[2:6] == ["--int8", "--calib=calib.cache", "--precisionConstraints=obey",
                         "--layerPrecisions=/m/a:fp32,/m/b:fp32"]
    assert check_intent("int8", replace(BUILD, keep_fp32=("/m/*",)), V82) == "implicit"  # no longer refused


# ------------------------------------------------------------------ keep_fp32 on every generation
# One INT8 intent (keep the head's Sigmoid and Mul in FP32) built by the engine stage against the
# trtexec double of each generation. The model is a real ONNX, tiny (1x3x16x16): node and
# tensor names are what the rendering reads, not sizes.
KEPT_NODES, KEPT_TENSORS = ("/head/sigmoid", "/head/mul"), ("/head/sigmoid_output_0", "y")


@pytest.fixture(scope="module")
def head_model(tmp_path_factory):
    """(model.onnx, its calibration cache): x -> conv -> relu -> conv -> sigmoid -> mul -> y."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trtforge.calib_cache import write_cache_text

    folder = tmp_path_factory.mktemp("head")
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w0"),
               numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w1"),
               numpy_helper.from_array(np.float32([16.0]), "stride")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["/backbone/conv_output_0"], name="/backbone/conv", pads=[1] * 4),
             helper.make_node("Relu", ["/backbone/conv_output_0"], ["/backbone/relu_output_0"], name="/backbone/relu"),
             helper.make_node("Conv", ["/backbone/relu_output_0", "w1"], ["/head/conv_output_0"], name="/head/conv"),
             helper.make_node("Sigmoid", ["/head/conv_output_0"], ["/head/sigmoid_output_0"], name="/head/sigmoid"),
             helper.make_node("Mul", ["/head/sigmoid_output_0", "stride"], ["y"], name="/head/mul")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 16, 16])], weights)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.save(model, str(folder / "model.onnx"))
    activations = ["x", *(n.output[0] for n in nodes)]
    (folder / "calib.cache").write_text(write_cache_text(V82, {name: 4.0 for name in activations}))
    return folder / "model.onnx", folder / "calib.cache"


def built_with_double(tmp_path, head_model, generation: str, mode: str):
    """Run the engine stage for the keep_fp32 intent; returns (summary, the double's engine, out folder)."""
    import json

    from doubles.trtexec import make_wrapper, read_engine

    from trtforge.stages.engine import ENGINE, SUMMARY, EngineJob, build_engine
    from trtforge.trt_version import version_for_generation

    onnx_path, cache = head_model
    version = version_for_generation(generation)
    profile = (("x", ShapeRange((1, 3, 16, 16), (2, 3, 16, 16), (2, 3, 16, 16))),)
    build = BuildOptions(profiles=(profile,), keep_fp32=("/head/sig*", "/head/mul"), timing_cache=False)
    assert check_intent("int8", replace(build, precision_mode=mode), version) == mode
    job = EngineJob(task="engine:head-int8", trtexec=make_wrapper(tmp_path / "bin", str(version)), version=version,
                    onnx=onnx_path, precision="int8", mode=mode, build=build, plugin_files=(),
                    calibration_cache=cache if mode == "implicit" else None, out_dir=tmp_path / "out",
                    timing_cache_dir=tmp_path / "timing")
    build_engine(job, "no trtexec")
    out = tmp_path / "out"
    return json.loads((out / SUMMARY).read_text()), read_engine(out / ENGINE), out


def test_keep_fp32_on_82_int8_builds_from_a_cache_without_the_kept_outputs(tmp_path, head_model):
    from conftest import sha256

    from trtforge.calib_cache import read_cache

    summary, engine, out = built_with_double(tmp_path, head_model, "8.2", "implicit")
    assert summary["argv"][2:4] == ["--int8", "--calib=calib.keep-fp32.cache"]
    assert not [a for a in summary["argv"] if a.startswith(("--layerPrecisions", "--precisionConstraints", "--fp16"))]
    calibration = engine["calibration"]
    # the cache trtexec read: every scale but those of the tensors the kept nodes produce
    assert calibration["sha256"] == sha256(out / "calib.keep-fp32.cache")
    assert set(read_cache((out / "calib.keep-fp32.cache").read_text())[2]) == set(calibration["tensors"])
    assert calibration["tensors"] == sorted(["x", "/backbone/conv_output_0", "/backbone/relu_output_0",
                                             "/head/conv_output_0"])
    assert calibration["missing_scales"] == list(KEPT_TENSORS) == summary["calibration_cache_without"]
    # the kept nodes run above INT8; the head's conv, which feeds them, stays INT8 (outputs only are dropped)
    assert calibration["layers_above_int8"] == list(KEPT_NODES)
    assert "calib.keep-fp32.cache <- " in (out / "trtexec.sh").read_text()


@pytest.mark.parametrize("generation", ["8.5", "8.6", "10"])
def test_keep_fp32_on_85_86_and_10_implicit_int8_obeys_layer_precisions(tmp_path, head_model, generation):
    summary, engine, out = built_with_double(tmp_path, head_model, generation, "implicit")
    assert summary["argv"][2:6] == ["--int8", "--calib=calib.cache", "--precisionConstraints=obey",
                                    "--layerPrecisions=/head/sigmoid:fp32,/head/mul:fp32"]
    assert engine["layer_precisions"] == {"/head/sigmoid": "fp32", "/head/mul": "fp32"}
    assert engine["calibration"]["missing_scales"] == [] and not (out / "calib.keep-fp32.cache").exists()


@pytest.mark.parametrize("generation", ["10", "11"])
def test_keep_fp32_on_explicit_int8_is_carried_by_the_qdq_onnx(tmp_path, head_model, generation):
    # The Q/DQ ONNX, made with the kept nodes excluded (stages/qdq.py; tested on a real model in
    # test_keep_fp32.py), is all trtexec gets: no precision flag names a layer.
    summary, engine, _ = built_with_double(tmp_path, head_model, generation, "explicit")
    assert not [a for a in summary["argv"] if a.startswith(("--layerPrecisions", "--precisionConstraints",
                                                            "--calib", "--int8"))]
    assert engine["strongly_typed"] and engine["calibration"] is None and engine["layer_precisions"] == {}
