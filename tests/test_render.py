"""Intent -> trtexec argv: one recipe rendered for every TensorRT generation.

The expected argv are written out by hand from the grammar recorded in DESIGN.md, so a
change to the renderer has to be a change to these specifications too.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from trtforge.recipe import BuildOptions, PassSpec, ShapeRange
from trtforge.render import EngineIntent, RenderError, check_intent, default_profiles, render_argv
from trtforge.trt_version import TrtVersion, parse_banner_number, version_from_banner

V82, V86, V10, V11 = TrtVersion(8, 2, 1), TrtVersion(8, 6, 1), TrtVersion(10, 8, 0), TrtVersion(11, 0, 0)
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


def test_implicit_fp16_is_refused_on_11():
    with pytest.raises(RenderError, match="TensorRT 11 removed --fp16"):
        check_intent("fp16", replace(BUILD, precision_mode="implicit"), V11)


def test_keep_fp32_renders_obeyed_layer_precisions_on_86_and_10():
    keep = ("/model.22/dfl/conv/Conv", "/model.22/dfl/Softmax")
    for version in (V86, V10):
        argv = argv_for("fp16", replace(BUILD, keep_fp32=("/model.22/dfl/*",)), version, keep)
        assert argv[2:5] == ["--fp16", "--precisionConstraints=obey",
                             "--layerPrecisions=/model.22/dfl/conv/Conv:fp32,/model.22/dfl/Softmax:fp32"]


def test_keep_fp32_with_builder_flags_is_refused_on_82():
    with pytest.raises(RenderError, match="no --layerPrecisions"):
        check_intent("fp16", replace(BUILD, keep_fp32=("/model.22/*",)), V82)


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
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", V86),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100800] [b43] # trtexec", V10),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v110000] # trtexec", V11),
])
def test_banner_versions(line, version):
    assert version_from_banner("noise\n" + line + "\n") == version


def test_unknown_generation_is_refused_with_the_supported_list():
    with pytest.raises(Exception, match="8.2 .* 8.6, 10.x and 11.x"):
        parse_banner_number(7103).generation


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
    with pytest.raises(RenderError, match="precision_mode: explicit"):
        check_intent("int8", replace(BUILD, keep_fp32=("/m/*",)), V82)
