"""End to end: real doit runs in a temporary project, real export/surgery/AutoCast on CPU,
and the trtexec conformance double of each TensorRT generation in place of trtexec."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import copied, executed, prepared_project, run_doit, sha256, up_to_date
from doubles.trtexec import make_wrapper, read_engine, running_through

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One project whose GPU-free stages already ran; tests copy it (saves ~10 s each)."""
    return prepared_project(tmp_path_factory.mktemp("base"), "cpu:yolov8n")


@pytest.fixture
def project(exported, tmp_path) -> Path:
    return copied(exported, tmp_path)


def test_doit_list_shows_every_stage_with_a_doc(project):
    result = run_doit(project, "list", "--all")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    for task in ("export:yolov8n", "surgery:yolov8n", "quantize:yolov8n-fp16", "engine:yolov8n-fp32",
                 "engine:yolov8n-fp16", "build:yolov8n-fp32", "build:yolov8n-fp16", "cpu:yolov8n"):
        assert task in lines and len(lines[task].split()) > 2, f"{task} missing or without doc"


@pytest.mark.parametrize("version, fp16_flags", [
    ("8.6", ["--fp16", "--precisionConstraints=obey"]),
    ("10.8", ["--fp16", "--precisionConstraints=obey"]),
    ("11.0", []),
])
def test_build_fp16_then_nothing_to_do(project, tmp_path, version, fp16_flags):
    trtexec = make_wrapper(tmp_path / "bin", version)
    first = run_doit(project, "build:yolov8n-fp16", env={"TRTEXEC": str(trtexec)})
    assert first.returncode == 0, first.stdout + first.stderr
    out = project / "artifacts" / "yolov8n" / "fp16"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tensorrt"] == version if version.count(".") == 2 else summary["tensorrt"].startswith(version)
    assert [a for a in summary["argv"] if a in fp16_flags or a.startswith("--precisionConstraints")] == fp16_flags
    engine = read_engine(out / "engine.plan")
    built_from = out / "autocast.onnx" if version == "11.0" else project / "artifacts" / "yolov8n" / "model.onnx"
    assert engine["onnx_sha256"] == sha256(built_from)
    assert summary["performance"]["throughput_qps"] > 0
    assert "exec \"${TRTEXEC:-trtexec}\" --onnx=model.onnx" in (out / "trtexec.sh").read_text()
    assert not any("/" + str(project).strip("/") in a for a in summary["argv"])  # no absolute path
    assert list((project / "artifacts" / "cache" / "timing").glob(f"*-trt{summary['tensorrt']}.cache"))

    second = run_doit(project, "build:yolov8n-fp16", env={"TRTEXEC": str(trtexec)})
    assert second.returncode == 0 and executed(second) == [], second.stdout


def test_fp16_io_is_rendered_as_format_flags_or_carried_by_the_typed_onnx_per_generation(project, tmp_path):
    """build.io: fp16 on the FP16 variant: 8.x and 10.x builder-flag builds get one format per
    binding, an 11.x build gets the AutoCast ONNX with float16 inputs and outputs; the kit does
    the same on the device. The double reads the bindings' types off what it was given."""
    import onnx

    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace('keep_fp32: ["/model.22/dfl/*"]}',
                                                 'keep_fp32: ["/model.22/dfl/*"], io: fp16}'))
    out = project / "artifacts" / "yolov8n" / "fp16"
    fp16_bindings = {"inputs": {"images": "fp16"}, "outputs": {"output0": "fp16"}}
    for version, flags in (("10.8", ["--inputIOFormats=fp16:chw", "--outputIOFormats=fp16:chw"]), ("11.0", [])):
        result = run_doit(project, "build:yolov8n-fp16", env={"TRTEXEC": str(make_wrapper(tmp_path / version, version))})
        assert result.returncode == 0, result.stdout + result.stderr
        argv = json.loads((out / "summary.json").read_text())["argv"]
        assert [a for a in argv if "IOFormats" in a] == flags
        assert read_engine(out / "engine.plan")["io_types"] == fp16_bindings
    graph = onnx.load(str(out / "autocast.onnx")).graph
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [onnx.TensorProto.FLOAT16] * 2

    assert run_doit(project, "kit:yolov8n-fp16").returncode == 0
    kit = tmp_path / "device"
    with tarfile.open(project / "artifacts" / "kit" / "yolov8n-fp16-kit.tar.gz", "r:gz") as tar:
        tar.extractall(kit, filter="data")
    for version in ("8.5.2", "11.0"):  # JetPack 5.1's grammar, and the typed ONNX
        trtexec = make_wrapper(tmp_path / f"kit-{version}", version)
        built = subprocess.run(["sh", str(kit / "yolov8n-fp16-kit" / "build.sh")], capture_output=True, text=True,
                               env={"TRTEXEC": str(trtexec), "PATH": "/usr/bin:/bin"}, timeout=120)
        assert built.returncode == 0, built.stderr
        assert read_engine(kit / "yolov8n-fp16-kit" / "engine.plan")["io_types"] == fp16_bindings


def test_editing_one_field_reruns_only_its_readers(project, tmp_path):
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    assert run_doit(project, "build:yolov8n-fp32", "build:yolov8n-fp16", env=env).returncode == 0
    recipe = project / "recipes" / "yolov8n.yaml"

    recipe.write_text(recipe.read_text().replace("workspace: 1GiB", "workspace: 2GiB"))
    result = run_doit(project, "build:yolov8n-fp32", "build:yolov8n-fp16", env=env)
    assert sorted(executed(result)) == ["engine:yolov8n-fp16", "engine:yolov8n-fp32"], result.stdout
    assert {"export:yolov8n", "surgery:yolov8n"} <= set(up_to_date(result))

    recipe.write_text(recipe.read_text().replace('keep_fp32: ["/model.22/dfl/*"]', 'keep_fp32: ["/model.22/*"]'))
    result = run_doit(project, "build:yolov8n-fp32", "build:yolov8n-fp16", env=env)
    assert executed(result) == ["engine:yolov8n-fp16"], result.stdout

    shutil.copy(project / "recipes" / "yolov8n.yaml", tmp_path / "keep.yaml")
    env11 = {"TRTEXEC": str(make_wrapper(tmp_path / "bin11", "11.0"))}
    result = run_doit(project, "build:yolov8n-fp16", env=env11)
    # another generation: its AutoCast ONNX, its parser preflight, its engine
    assert executed(result) == ["quantize:yolov8n-fp16", "lint:yolov8n-fp16", "engine:yolov8n-fp16"], result.stdout


def test_without_trtexec_export_and_surgery_complete_and_engine_fails_in_one_line(small_project):
    result = run_doit(small_project, "build:yolov8n-fp32")
    assert result.returncode != 0
    assert executed(result)[:2] == ["export:yolov8n", "surgery:yolov8n"]
    message = [line for line in (result.stdout + result.stderr).splitlines() if "trtexec not found" in line]
    assert len(message) == 1 and "$TRTEXEC" in message[0] and "TRTEXEC=/path/to/trtexec" in message[0]
    out = small_project / "artifacts" / "yolov8n"
    assert (out / "model.onnx").is_file()
    assert not list(out.rglob("engine.plan")) and not list(out.rglob("*trtforge-tmp*"))


def test_failed_trtexec_leaves_no_engine_and_names_the_first_error(project, tmp_path):
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8", fault="build_error"))}
    result = run_doit(project, "build:yolov8n-fp32", env=env)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "engine:yolov8n-fp32: trtexec failed: " in text and "trtexec.failed.log" in text
    assert "Could not find any implementation for node" in text  # the first [E] line is the cause shown
    out = project / "artifacts" / "yolov8n" / "fp32"
    assert not (out / "engine.plan").exists() and (out / "trtexec.failed.log").is_file()
    assert not list(out.glob("*trtforge-tmp*"))


@pytest.mark.parametrize("fault, says", [("no_engine", "wrote no engine"), ("empty_engine", "wrote an empty engine")])
def test_trtexec_passing_without_an_engine_is_a_failure(project, tmp_path, fault, says):
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8", fault=fault))}
    result = run_doit(project, "build:yolov8n-fp32", env=env)
    assert result.returncode != 0 and says in result.stdout + result.stderr
    assert not (project / "artifacts" / "yolov8n" / "fp32" / "engine.plan").exists()


def test_a_mode_the_detected_version_cannot_build_is_refused_before_any_work(small_project, tmp_path):
    recipe = small_project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("workspace: 1GiB", "workspace: 1GiB\n  optimization_level: 4"))
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "8.2"))}
    result = run_doit(small_project, "build:yolov8n-fp32", env=env)
    assert result.returncode != 0
    assert "build.optimization_level (added in 8.6)" in result.stdout + result.stderr
    assert executed(result) == ["build:yolov8n-fp32"]  # the refusal itself; no export ran
    assert not (small_project / "artifacts" / "yolov8n" / "export.onnx").exists()


def test_parallel_builds_keep_every_timing_cache_entry(project, tmp_path):
    from doubles.trtexec import decode_timing_cache

    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8", build_seconds=0.5))}
    result = run_doit(project, "-n", "2", "build:yolov8n-fp32", "build:yolov8n-fp16", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (cache,) = (project / "artifacts" / "cache" / "timing").glob("*.cache")
    assert len(decode_timing_cache(cache.read_bytes())) == 2


def test_bad_recipe_stops_doit_with_one_line(small_project):
    recipe = small_project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("precision: fp32", "precision: fp33"))
    result = run_doit(small_project, "list")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "ERROR: recipes/yolov8n.yaml:10:21: variants.fp32.precision: got str 'fp33'; allowed: fp32, fp16, int8"]


INT8_VARIANT = """\
  int8:
    precision: int8
    calibration: {images: calib/imgs, batch: 4, method: entropy}
"""


@pytest.fixture
def int8_project(project) -> Path:
    """The small project plus an INT8 variant calibrated on six real photos in calib/imgs."""
    from test_calibration import demo_images

    folder = project / "calib" / "imgs"
    folder.mkdir(parents=True)
    for ref in demo_images()[:6]:
        shutil.copy(ref.path, folder / Path(ref.name).name)
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text() + INT8_VARIANT)
    return project


@pytest.mark.parametrize("version", ["8.6", "10.8", "11.0"])
def test_int8_build_renders_the_mode_of_each_generation(int8_project, tmp_path, version):
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", version))}
    result = run_doit(int8_project, "build:yolov8n-int8", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = int8_project / "artifacts" / "yolov8n" / "int8"
    engine = read_engine(out / "engine.plan")
    if version == "8.6":  # implicit: our cache, through --calib
        assert engine["precision"] == ["int8"] and engine["calibration"]["source"] == "cache"
        assert engine["calibration"]["sha256"] == sha256(out / "calib.cache")
    else:  # explicit: the ModelOpt Q/DQ ONNX, strongly typed
        assert engine["strongly_typed"] and engine["onnx_sha256"] == sha256(out / "qdq.onnx")
    header = (out / "calib.cache").read_text().splitlines()[0]
    assert header == {"8.6": "TRT-8601", "10.8": "TRT-100800", "11.0": "TRT-110000"}[version] + "-EntropyCalibration2"


def test_changing_one_calibration_image_reruns_exactly_the_int8_chain(int8_project, tmp_path):
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    everything = ["build:yolov8n-fp32", "build:yolov8n-fp16", "build:yolov8n-int8"]
    assert run_doit(int8_project, *everything, env=env).returncode == 0
    images = sorted((int8_project / "calib" / "imgs").iterdir())

    images[0].touch()  # new timestamp, same bytes
    result = run_doit(int8_project, *everything, env=env)
    assert executed(result) == [], result.stdout

    images[0].write_bytes(images[1].read_bytes())  # new content
    result = run_doit(int8_project, *everything, env=env)
    assert executed(result) == ["calib:yolov8n-int8", "quantize:yolov8n-int8", "lint:yolov8n-int8",
                                "engine:yolov8n-int8"], result.stdout
    assert {"export:yolov8n", "surgery:yolov8n", "engine:yolov8n-fp32", "engine:yolov8n-fp16"} <= set(up_to_date(result))

    images[0].unlink()  # a removed image changes the set too
    result = run_doit(int8_project, "build:yolov8n-int8", env=env)
    assert "calib:yolov8n-int8" in executed(result)

    shutil.copy(images[1], images[1].with_name("added.png"))  # and so does an added one
    result = run_doit(int8_project, *everything, env=env)
    assert executed(result)[0] == "calib:yolov8n-int8" and "engine:yolov8n-fp16" in up_to_date(result)


def test_empty_calibration_set_is_refused_before_any_work(small_project, tmp_path):
    (small_project / "calib" / "imgs").mkdir(parents=True)
    recipe = small_project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text() + INT8_VARIANT)
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    result = run_doit(small_project, "build:yolov8n-int8", env=env)
    assert result.returncode != 0
    assert "calibration.images: 'calib/imgs' holds no image file" in result.stdout + result.stderr
    assert executed(result) == ["build:yolov8n-int8"]
    assert not (small_project / "artifacts" / "yolov8n" / "export.onnx").exists()


VERIFY = """\
verify: {images: calib/demo-verification.txt, count: 2, task: detect}
"""


@pytest.fixture
def verified_project(project) -> Path:
    (project / "calib").mkdir(exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "calib" / "demo-verification.txt", project / "calib")
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text() + VERIFY)
    return project


def test_checks_run_on_cpu_and_report_the_engine_comparison_as_skipped(verified_project):
    result = run_doit(verified_project, "cpu:yolov8n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"reference:yolov8n", "check:yolov8n-fp32", "check:yolov8n-fp16"} <= set(executed(result))
    out = verified_project / "artifacts" / "yolov8n"
    assert json.loads((out / "reference" / "images.json").read_text())[0].startswith("package:")
    for variant, model in (("fp32", "model.onnx"), ("fp16", "autocast.onnx")):
        report = json.loads((out / variant / "check.json").read_text())
        assert report["passed"] and report["onnx"]["model"] == model
        assert report["engine"]["status"].startswith("skipped:")
        assert (out / variant / "check.png").is_file()
    # a log is no terminal: the table is wide enough that each variant is one line, none cut short
    row = next(line for line in result.stderr.splitlines() if line.startswith("│ fp16"))
    assert "autocast.onnx" in row and " ms" in row and "passed" in row, result.stderr

    recipe = verified_project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace('build: {keep_fp32: ["/model.22/dfl/*"]}',
                                                 'build: {keep_fp32: ["/model.22/dfl/*"]}\n    check: {atol: 0.04}'))
    result = run_doit(verified_project, "cpu:yolov8n")
    # tolerances are read by check only (and the comparison table shows its verdict)
    assert executed(result) == ["check:yolov8n-fp16", "compare:yolov8n"], result.stdout


def test_compare_table_without_trtexec_says_not_measured(verified_project):
    assert run_doit(verified_project, "cpu:yolov8n").returncode == 0
    out = verified_project / "artifacts" / "yolov8n"
    rows = {row["variant"]: row for row in json.loads((out / "compare.json").read_text())["variants"]}
    assert set(rows) == {"fp32", "fp16"}
    for variant, onnx in (("fp32", out / "model.onnx"), ("fp16", out / "fp16" / "autocast.onnx")):
        row = rows[variant]
        assert row["onnx_bytes"] == onnx.stat().st_size and row["ort_cpu_ms"]["runs"] >= 5
        assert 0 < row["ort_cpu_ms"]["median"] <= row["ort_cpu_ms"]["p90"]
        assert row["engine"]["status"].startswith("not measured: trtexec not found")
        assert row["gate"]["passed"] is True
    assert rows["fp32"]["ort_cpu_speedup_vs_fp32"] == 1.0
    table = (out / "compare.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table if line.startswith("| fp")] == ["| fp32", "| fp16"]
    assert all("| not measured |" in line for line in table if line.startswith("| fp"))


def test_compare_table_shows_trtexec_figures_of_built_engines(verified_project, tmp_path):
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    result = run_doit(verified_project, "compare:yolov8n", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compare:yolov8n (ORT CPU here" in result.stderr
    out = verified_project / "artifacts" / "yolov8n"
    for row in json.loads((out / "compare.json").read_text())["variants"]:
        summary = json.loads((out / row["variant"] / "summary.json").read_text())
        assert row["engine"]["status"] == "measured"
        assert row["engine"]["throughput_qps"] == summary["performance"]["throughput_qps"]
        assert row["engine"]["latency_ms"]["median"] == summary["performance"]["latency_ms"]["median"]
        assert row["engine"]["engine_bytes"] == (out / row["variant"] / "engine.plan").stat().st_size


def test_a_variant_outside_tolerance_fails_the_build_in_one_line(verified_project, tmp_path):
    recipe = verified_project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace(
        'build: {keep_fp32: ["/model.22/dfl/*"]}',
        'build: {keep_fp32: ["/model.22/dfl/*"]}\n    check: {atol: 0, rtol: 0, statistic: max}'))
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    result = run_doit(verified_project, "build:yolov8n-fp16", "package:yolov8n-fp16", env=env)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("check:yolov8n-fp16: ")]
    assert len(lines) == 1 and "onnx output 'output0': max abs error" in lines[0] and "exceeds atol 0" in lines[0]
    assert json.loads((verified_project / "artifacts/yolov8n/fp16/check.json").read_text())["passed"] is False
    assert not list((verified_project / "artifacts").glob("release/*"))  # a failed check is never packaged


# ----------------------------------------------------------------------------- release

PACKAGE = "package: {triton: true, ultralytics_engine: true}\n"


def archive_members(archive: Path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(archive, "r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_package_is_reproducible_and_its_manifest_matches(int8_project, tmp_path):
    recipe = int8_project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text() + PACKAGE)
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    assert run_doit(int8_project, "package:yolov8n-int8", env=env).returncode == 0
    release = int8_project / "artifacts" / "release"
    (archive,) = release.glob("yolov8n-int8-trt10.8.0-sm86-*.tar.gz")
    assert archive.name.endswith("-unverified.tar.gz")  # issue 14: the file name says so, not only the manifest
    first = archive.read_bytes()
    archive.unlink()  # the record survives, the archive does not: it must be rebuilt, not trusted
    result = run_doit(int8_project, "package:yolov8n-int8", env=env)
    assert executed(result) == ["package:yolov8n-int8"] and archive.read_bytes() == first
    said = (f"trtforge: package:yolov8n-int8: wrote artifacts/release/{archive.name} (release archive, unverified: "
            "the recipe has no verify section; its sha256 in ")
    assert [line for line in result.stderr.splitlines() if line.startswith(said)], result.stderr
    assert (release / (archive.name + ".sha256")).read_text().split()[0] == sha256(archive)

    members = archive_members(archive)
    manifest = json.loads(members.pop("manifest.json"))
    assert manifest["files"] == {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in members.items()}
    assert {"engine.plan", "model.onnx", "model.fp32.onnx", "calib.cache", "reproduce.sh", "summary.json"} <= set(members)
    assert members["model.onnx"] == (int8_project / "artifacts/yolov8n/int8/qdq.onnx").read_bytes()
    assert manifest["tensorrt"] == "10.8.0" and manifest["device"]["compute_capability"] == "8.6"
    assert manifest["calibration"]["key"] == json.loads((int8_project / "artifacts/yolov8n/int8/calib.json").read_text())["key"]
    assert manifest["verification"] == {"passed": False, "status": "unverified: the recipe has no verify section"}
    record = json.loads((release / "yolov8n-int8.release.json").read_text())
    assert record["verification"] == "unverified: the recipe has no verify section"
    assert manifest["performance"]["throughput_qps"] > 0
    assert str(int8_project) not in json.dumps(manifest)  # no absolute path
    export = json.loads((int8_project / "artifacts/yolov8n/export.json").read_text())
    assert manifest["model"]["task"] == "detect" and manifest["model"]["stride"] == 32
    assert manifest["model"]["imgsz"] == [160, 160] and manifest["model"]["names"] == export["names"]
    assert len(manifest["model"]["names"]) == 80 and manifest["model"]["preprocess"]["resize"] == "letterbox"
    assert b"--onnx=model.onnx" in members["reproduce.sh"]

    import subprocess
    import sys

    cli = [str(Path(sys.executable).parent / "trtforge"), "verify-package"]
    assert subprocess.run([*cli, str(archive)], capture_output=True).returncode == 0
    damaged = tmp_path / archive.name
    data = bytearray(first)
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))  # no sidecar beside this copy: the stream checks must catch it
    refused = subprocess.run([*cli, str(damaged)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.startswith("trtforge: ") and len(refused.stderr.splitlines()) == 1


def test_triton_and_ultralytics_layouts(int8_project, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    from ultralytics.nn.backends.base import BaseBackend

    recipe = int8_project / "recipes" / "yolov8n.yaml"
    variant = "    calibration: {images: calib/imgs, batch: 4, method: entropy}\n"
    recipe.write_text(recipe.read_text().replace(variant, variant + "    build: {io: fp16}\n")
                      + "package: {triton: {dynamic_batching: true, max_queue_delay_us: 500, "
                      "instances: 2}, ultralytics_engine: true, onnx: false}\n")
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "8.6"))}
    assert run_doit(int8_project, "package:yolov8n-int8", env=env).returncode == 0
    (archive,) = (int8_project / "artifacts" / "release").glob("*.tar.gz")
    members = archive_members(archive)
    config = text_format.Parse(members["triton/yolov8n_int8/config.pbtxt"].decode(), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4  # the profile's max batch
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    onnx_sha = sha256(int8_project / "artifacts" / "yolov8n" / "model.onnx")
    assert "model.onnx" not in members and f"sha256 {onnx_sha} here as model.onnx" in members["reproduce.sh"].decode()
    assert json.loads(members["manifest.json"])["not_shipped"] == {
        "model.onnx": {"sha256": onnx_sha, "why": "package.onnx: false"}}
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [3, 160, 160])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("output0", [84, 525])]
    assert members["triton/yolov8n_int8/1/model.plan"] == members["engine.plan"]
    # build.io: fp16 -> the engine's bindings, and so Triton's, are half precision
    assert read_engine(int8_project / "artifacts/yolov8n/int8/engine.plan")["io_types"] == {
        "inputs": {"images": "fp16"}, "outputs": {"output0": "fp16"}}
    assert [t.data_type for t in (*config.input, *config.output)] == [model_config_pb2.TYPE_FP16] * 2
    labels = members["triton/yolov8n_int8/labels.txt"].decode().splitlines()
    names = json.loads((int8_project / "artifacts/yolov8n/export.json").read_text())["names"]
    assert len(labels) == 80 and labels == [names[str(i)] for i in range(80)]  # by class index
    assert not config.output[0].label_filename  # a detector's output is not a class list

    engine_file = tmp_path / "yolov8n-int8.engine"
    engine_file.write_bytes(members["yolov8n-int8.engine"])
    offset, meta = BaseBackend.engine_header(engine_file)  # Ultralytics' own reader
    assert meta["task"] == "detect" and meta["imgsz"] == [160, 160] and meta["stride"] == 32
    assert len(meta["names"]) == 80 and meta["batch"] == 4
    assert members["yolov8n-int8.engine"][offset:] == members["engine.plan"]


@pytest.mark.parametrize("version", ["8.2", "8.4", "8.5", "8.6", "10.8", "11.0"])
def test_kit_builds_on_the_device_with_each_generation(int8_project, tmp_path, version):
    import subprocess
    import tarfile

    result = run_doit(int8_project, "kit:yolov8n-int8")  # no trtexec on this host: the kit needs none
    assert result.returncode == 0, result.stdout + result.stderr
    kit = int8_project / "artifacts" / "kit" / "yolov8n-int8-kit.tar.gz"
    assert "trtforge: kit:yolov8n-int8: wrote artifacts/kit/yolov8n-int8-kit.tar.gz (build kit: unpack it on the " \
           "target device and run build.sh, " in result.stderr
    with tarfile.open(kit, "r:gz") as tar:
        tar.extractall(tmp_path / "device", filter="data")
    folder = tmp_path / "device" / "yolov8n-int8-kit"
    assert subprocess.run(["bash", "-n", str(folder / "build.sh")]).returncode == 0
    trtexec = make_wrapper(tmp_path / "bin", version)
    build = subprocess.run(["sh", str(folder / "build.sh")], env={"TRTEXEC": str(trtexec), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    engine = read_engine(folder / "engine.plan")
    expected = "model.onnx" if version.startswith("8.") else "qdq.onnx"
    assert engine["onnx_sha256"] == sha256(folder / expected)
    assert engine["trt_version"].startswith(version)


# ----------------------------------------------------------------------------- interrupts

@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_during_trtexec_ends_it_removes_partials_and_keeps_finished_work(project, tmp_path, sig, code):
    import signal
    import subprocess
    import sys
    import time

    from conftest import doit_env

    slow = make_wrapper(tmp_path / "slow", "10.8", build_seconds=60)
    proc = subprocess.Popen([sys.executable, "-m", "doit", "build:yolov8n-fp32"], cwd=project,
                            env=doit_env({"TRTEXEC": str(slow)}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out = project / "artifacts" / "yolov8n" / "fp32"
    deadline = time.monotonic() + 60
    while not any(out.glob("*trtforge-tmp*/engine.plan")):  # trtexec is writing its engine
        assert time.monotonic() < deadline and proc.poll() is None, "trtexec never started"
        time.sleep(0.2)
    proc.send_signal(getattr(signal, sig))  # to doit's pid only: the hazard DESIGN.md measured
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert stderr.strip().splitlines()[-1].startswith(f"trtforge: stopped by {sig} during engine:yolov8n-fp32;")
    assert "Traceback" not in stderr
    assert running_through(slow) == []  # no orphan
    assert not list(project.rglob("*trtforge-tmp*")) and not (out / "engine.plan").exists()

    rerun = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(make_wrapper(tmp_path / "fast", "10.8"))})
    assert rerun.returncode == 0 and executed(rerun) == ["engine:yolov8n-fp32"], rerun.stdout
    assert read_engine(out / "engine.plan")["trt_version"] == "10.8.0"


def test_outputs_changed_outside_the_tool_are_rebuilt_not_trusted(project, tmp_path):
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    assert run_doit(project, "build:yolov8n-fp32", env=env).returncode == 0
    out = project / "artifacts" / "yolov8n"
    engine_file = out / "fp32" / "engine.plan"
    good = engine_file.read_bytes()
    engine_file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # edited by hand, same size
    result = run_doit(project, "build:yolov8n-fp32", env=env)
    assert executed(result) == ["engine:yolov8n-fp32"] and engine_file.read_bytes() == good

    onnx_file = out / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])  # a half-copied ONNX
    result = run_doit(project, "build:yolov8n-fp32", env=env)
    assert executed(result)[0] == "surgery:yolov8n", result.stdout
    assert result.returncode == 0 and executed(result) == ["surgery:yolov8n"]  # same bytes again: engine stays


# ----------------------------------------------------------------------------- trtexec faults

def fake_tool(folder: Path, body: str, executable: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "trtexec"
    tool.write_text("#!/bin/sh\n" + body + "\n")
    tool.chmod(0o755 if executable else 0o644)
    return tool


@pytest.mark.parametrize("make, says", [
    (lambda d: fake_tool(d, "echo hello", executable=False), "is not executable"),
    (lambda d: fake_tool(d, "echo 'usage: something else'"), "printed no '&&&& RUNNING TensorRT.trtexec"),
    (lambda d: fake_tool(d, "echo '&&&& RUNNING TensorRT.trtexec [TensorRT v7103] # trtexec'"),
     "TensorRT 7.1.3 is not supported"),
    (lambda d: d / "nothing-here" / "trtexec", "does not exist"),
])
def test_a_wrong_trtexec_fails_the_engine_stage_in_one_line(project, tmp_path, make, says):
    result = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(make(tmp_path / "bin"))})
    assert result.returncode != 0
    assert len([line for line in (result.stdout + result.stderr).splitlines() if says in line]) == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert not (project / "artifacts" / "yolov8n" / "fp32" / "engine.plan").exists()


@pytest.mark.parametrize("fault, says", [("crash", "killed by signal 11"), ("hang", "stopped after 2 s (build.timeout)")])
def test_a_crashing_or_hanging_trtexec_is_reported_and_leaves_nothing(project, tmp_path, fault, says):
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("workspace: 1GiB", "workspace: 1GiB\n  timeout: 2s"))
    trtexec = make_wrapper(tmp_path / "bin", "10.8", fault=fault, build_seconds=1)
    result = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(trtexec)})
    assert result.returncode != 0 and says in result.stdout + result.stderr, result.stdout + result.stderr
    out = project / "artifacts" / "yolov8n" / "fp32"
    assert not (out / "engine.plan").exists() and not list(out.glob("*trtforge-tmp*"))
    import subprocess

    assert running_through(trtexec) == []


def test_a_second_doit_in_the_same_project_fails_fast(project, tmp_path):
    import subprocess
    import sys
    import time

    from conftest import doit_env

    slow = make_wrapper(tmp_path / "slow", "10.8", build_seconds=30)
    first = subprocess.Popen([sys.executable, "-m", "doit", "build:yolov8n-fp32"], cwd=project,
                             env=doit_env({"TRTEXEC": str(slow)}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any((project / "artifacts/yolov8n/fp32").glob("*trtforge-tmp*")):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        started = time.monotonic()
        second = run_doit(project, "build:yolov8n-fp16", env={"TRTEXEC": str(slow)})
        assert time.monotonic() - started < 10
        assert second.returncode == 3
        assert second.stderr.strip() == (f"ERROR: another build is running in this project (pid {first.pid}); "
                                         "wait for it to finish or stop it")
        assert run_doit(project, "list").returncode == 0  # read-only commands still work
    finally:
        first.terminate()
        first.wait(timeout=60)


def test_trtexec_progress_is_plain_phase_lines_without_a_terminal(project, tmp_path):
    result = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))})
    phases = [line.split("trtexec: ", 1)[1].rsplit(" (", 1)[0] for line in result.stderr.splitlines()
              if line.startswith("trtforge: engine:yolov8n-fp32: trtexec: ")]
    assert phases == ["parsing the ONNX", "building (autotuning kernels)", "engine built", "timing inference",
                      "summarising"]
    assert "\x1b" not in result.stdout + result.stderr  # no control characters in CI logs
    assert run_doit(project, "forget", "engine:yolov8n-fp32").returncode == 0
    streamed = run_doit(project, "-v", "2", "engine:yolov8n-fp32",
                        env={"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))})
    assert "=== Performance summary ===" in streamed.stdout  # -v 2 streams trtexec's full log


def test_sigterm_to_a_parallel_doit_ends_its_workers_and_their_trtexec(project, tmp_path):
    """DESIGN.md measured that, with `-n 2`, SIGTERM to doit's pid left its workers blocked and
    the caller hung. The stop must end the workers and every trtexec, and exit 143."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import doit_env

    slow = make_wrapper(tmp_path / "slow", "10.8", build_seconds=60)
    proc = subprocess.Popen([sys.executable, "-m", "doit", "-n", "2", "engine:yolov8n-fp32", "engine:yolov8n-fp16"],
                            cwd=project, env=doit_env({"TRTEXEC": str(slow)}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not any((project / "artifacts").rglob("*trtforge-tmp*/engine.plan")):
        assert time.monotonic() < deadline and proc.poll() is None, "no engine build started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the parent only
    proc.communicate(timeout=60)  # a hang fails here
    assert proc.returncode == 143
    time.sleep(1)
    assert running_through(slow) == []
    assert subprocess.run(["pgrep", "-f", "doit -n 2 engine:yolov8n-fp32"], capture_output=True).stdout == b""
    rerun = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(make_wrapper(tmp_path / "fast", "10.8"))})
    assert rerun.returncode == 0 and not list(project.rglob("*trtforge-tmp*"))


@pytest.mark.parametrize("exec_double", [True, False], ids=["exec-wrapper", "non-exec-wrapper"])
def test_kill_9_leaves_only_temporaries_which_the_next_run_removes(project, tmp_path, exec_double):
    """Behind a wrapper that execs trtexec, trtexec dies with doit (parent-death signal).
    Behind one that does not, only the wrapper does: the next run ends the trtexec it left
    before it removes that build's work folder and builds again."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import doit_env

    slow = make_wrapper(tmp_path / "slow", "10.8", build_seconds=60, exec_double=exec_double)
    proc = subprocess.Popen([sys.executable, "-m", "doit", "build:yolov8n-fp32"], cwd=project,
                            env=doit_env({"TRTEXEC": str(slow)}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = project / "artifacts" / "yolov8n" / "fp32"
    deadline = time.monotonic() + 60
    while not any(out.glob("*trtforge-tmp*/engine.plan")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)
    left = running_through(slow)
    assert len(left) == (0 if exec_double else 1)  # died with doit, or outlived its wrapper
    assert not (out / "engine.plan").exists() and list(out.glob("*trtforge-tmp*"))  # only temporaries
    rerun = run_doit(project, "build:yolov8n-fp32", env={"TRTEXEC": str(make_wrapper(tmp_path / "fast", "10.8"))})
    assert rerun.returncode == 0 and "removed 1 temporary file(s)" in rerun.stderr
    assert ("ended 1 process(es) a killed run left running" in rerun.stderr) is not exec_double, rerun.stderr
    assert running_through(slow) == [] and all(not Path(f"/proc/{pid}").exists() or
                                               "State:\tZ" in Path(f"/proc/{pid}/status").read_text() for pid in left)
    assert read_engine(out / "engine.plan") and not list(project.rglob("*trtforge-tmp*"))


def test_an_ultralytics_onnx_keeps_its_class_names_through_every_form_into_the_engine_header(int8_project, tmp_path):
    """An ONNX exported by Ultralytics names its classes in metadata_props; surgery, AutoCast
    and ModelOpt wrote models without them, so its `.engine` had `names: {}` (issue 14)."""
    import onnx
    from ultralytics.nn.backends.base import BaseBackend

    from trtforge.modelmeta import props_of, stamp

    given = onnx.load(str(int8_project / "artifacts" / "yolov8n" / "export.onnx"))
    props = {"names": "{0: 'person', 1: 'forklift'}", "stride": "32", "task": "detect", "author": "Ultralytics"}
    stamp(given, props)
    (int8_project / "models").mkdir()
    onnx.save(given, str(int8_project / "models" / "given.onnx"))
    recipe = (int8_project / "recipes" / "yolov8n.yaml").read_text()
    (int8_project / "recipes" / "given.yaml").write_text(
        recipe.replace("model: {source: ultralytics, arch: yolov8n.yaml, seed: 0}",
                       "model: {source: onnx, path: models/given.onnx}") + "package: {ultralytics_engine: true}\n")
    env = {"TRTEXEC": str(make_wrapper(tmp_path / "bin", "10.8"))}
    result = run_doit(int8_project, "package:given-int8", "quantize:given-fp16", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = int8_project / "artifacts" / "given"
    for form in ("model.onnx", "fp16/autocast.onnx", "int8/qdq.onnx"):
        kept = props_of(onnx.load(str(out / form), load_external_data=False))
        assert props.items() <= kept.items(), form
        assert json.loads(kept["trtforge.preprocess"])["resize"] == "letterbox", form  # how it is fed travels too
    (archive,) = (int8_project / "artifacts" / "release").glob("given-int8-*.tar.gz")
    engine_file = tmp_path / "given.engine"
    engine_file.write_bytes(archive_members(archive)["given-int8.engine"])
    _, meta = BaseBackend.engine_header(engine_file)  # Ultralytics' own reader
    assert meta["names"] == {"0": "person", "1": "forklift"} and meta["task"] == "detect"
