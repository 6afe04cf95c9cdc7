"""Fault catalogue, calibration and verification images: every bad set or bad image ends
in one line naming the image (or the set) and what to do, nothing partial is left for doit
to trust, odd but valid images (grayscale, 16-bit, CMYK) are read as Ultralytics reads
them, and a plain rerun after fixing the cause completes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import ultralytics.utils.patches  # noqa: F401 (patches PIL.Image.open, as the export stage does in a doit run)
from conftest import SMALL_RECIPE, copied, executed, make_project, run_doit, the_error
from PIL import Image
from test_calibration import demo_images, job_for, model_160, refs_in  # noqa: F401 (model_160: a fixture)

from trtforge.errors import StageError
from trtforge.images import (MAX_PIXELS, ImageRef, ImageSetChanged, ImageSetError, UnusableImage, check_encoded,
                             decode_image, list_image_set, read_header)
from trtforge.stages import calibrate as calibrate_stage
from trtforge.stages import reference as reference_stage
from trtforge.stages.calibrate import calibrate

BUS = Path(__import__("ultralytics").__file__).parent / "assets" / "bus.jpg"  # a real 810x1080 photo


def truncated(data: bytes) -> bytes:
    """The first half of a file: what an interrupted copy or download leaves."""
    return data[:len(data) // 2]


def png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side x side pixels, a few hundred KiB on disk; OpenCV would
    decode it to side*side*3 bytes (2.5 GiB at 30000)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + one bit per pixel
    deflate = zlib.compressobj(1)
    idat = b"".join(deflate.compress(row * min(1000, side - done)) for done in range(0, side, 1000))
    idat += deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def photo_bgr() -> np.ndarray:
    return cv2.imdecode(np.frombuffer(BUS.read_bytes(), np.uint8), cv2.IMREAD_COLOR)


def encoded(image: np.ndarray, suffix: str) -> bytes:
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


def cmyk_jpeg() -> bytes:
    """The photo as a CMYK JPEG, written by Pillow (Adobe convention, as Photoshop writes them)."""
    out = io.BytesIO()
    Image.open(BUS).convert("CMYK").save(out, "JPEG", quality=95)
    return out.getvalue()


def gray16_png(gray8: np.ndarray) -> bytes:
    """A 16-bit PNG whose high bytes are `gray8` and whose low bytes are noise: reading it
    right gives `gray8` back, reading the low byte gives noise."""
    noise = np.random.default_rng(0).integers(0, 256, gray8.shape, dtype=np.uint16)
    return encoded((gray8.astype(np.uint16) << 8) | noise, ".png")


@contextlib.contextmanager
def within(seconds: float):
    """Fail (instead of hanging the suite) if the block takes longer than `seconds`."""
    def expire(*_):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ultralytics_imread(path: Path) -> np.ndarray:
    from ultralytics.utils.patches import imread

    return imread(str(path))


# ----------------------------------------------------------------------------- 1. empty sets

def test_empty_folder_lists_nothing_and_a_manifest_line_matching_nothing_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert list_image_set(tmp_path / "empty", tmp_path) == []  # the task generator refuses an empty set
    manifest = tmp_path / "set.txt"
    manifest.write_text("# my photos\nphotos/*.jpg\n")
    with pytest.raises(ImageSetError, match=r"^set.txt:2: 'photos/\*.jpg' matches no image file$"):
        list_image_set(manifest, tmp_path)


# ----------------------------------------------------------------------------- 2, 3, 7: refused before decoding

@pytest.fixture
def no_decoding(monkeypatch):
    """Make any OpenCV decode fail the test: these files must be refused from their bytes."""
    def refuse(*_):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(cv2, "imdecode", refuse)


@pytest.mark.parametrize("name, data, reason", [
    ("cut.jpg", truncated(BUS.read_bytes()), r"truncated JPEG \(its end is missing\); replace it with a complete copy"),
    ("cut.png", truncated(encoded(photo_bgr(), ".png")), r"truncated PNG \(its end is missing\)"),
    ("notes.jpg", b"shopping list:\n- milk\n" * 20, r"not an image \(it holds text\), whatever its suffix says"),
    ("scan.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + bytes(range(256)) * 8, r"not an image \(it holds a PDF"),
    ("noise.jpg", bytes(range(256)) * 16, r"not an image \(no JPEG, PNG, BMP, TIFF or WebP header\)"),
    ("zero.png", b"", r"empty file"),
])
def test_bad_files_are_refused_from_their_bytes_in_one_line(no_decoding, name, data, reason):
    with pytest.raises(UnusableImage, match=f"^calib/{name}: {reason}") as caught:
        decode_image(data, f"calib/{name}")
    assert "\n" not in str(caught.value) and "remove it from the set" in str(caught.value)


def test_truncated_png_is_refused_without_libpng_noise(capfd):
    with pytest.raises(UnusableImage, match="truncated PNG"):
        decode_image(truncated(encoded(photo_bgr(), ".png")), "cut.png")
    assert capfd.readouterr().err == ""  # OpenCV would print "libpng error: ..." (never reached)


def test_complete_jpeg_with_trailing_bytes_is_accepted():
    image = decode_image(BUS.read_bytes() + b"\0" * 64, "padded.jpg")  # some cameras pad after the end marker
    assert image.shape == (1080, 810, 3)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb(30000)


def test_decompression_bomb_is_refused_from_its_header_in_bounded_time(no_decoding, bomb):
    assert len(bomb) < 1 << 20  # under 1 MiB on disk, 30000 x 30000 pixels
    started = time.monotonic()
    with pytest.raises(UnusableImage, match=rf"^calib/bomb.png: 30000x30000 = 900,000,000 pixels, over the limit of {MAX_PIXELS:,} "
                                            r"\(decompression-bomb guard: nothing was decoded\); resize it"):
        decode_image(bomb, "calib/bomb.png")
    assert time.monotonic() - started < 1.0


def test_image_just_over_the_pixel_limit_is_refused_with_its_size(no_decoding):
    side = int(MAX_PIXELS ** 0.5) + 1  # below Pillow's own error threshold: our limit decides
    with pytest.raises(UnusableImage, match=rf"^big.png: {side}x{side} = {side * side:,} pixels, over the limit"):
        check_encoded(png_bomb(side), "big.png")


def pillow_encoded(image: np.ndarray, kind: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image[..., ::-1]).save(out, kind, **options)
    return out.getvalue()


SMALL = np.random.default_rng(0).integers(0, 256, (61, 97, 3), dtype=np.uint8)  # odd sizes: width != height


@pytest.mark.parametrize("data", [
    pytest.param(encoded(SMALL, ".jpg"), id="jpeg"),
    pytest.param(pillow_encoded(SMALL, "JPEG", progressive=True), id="progressive-jpeg"),
    pytest.param(encoded(SMALL, ".png"), id="png"),
    pytest.param(encoded(SMALL, ".bmp"), id="bmp"),
    pytest.param(encoded(SMALL, ".tiff"), id="tiff"),
    pytest.param(pillow_encoded(SMALL, "TIFF", big_tiff=True), id="bigtiff"),
    pytest.param(encoded(SMALL, ".webp"), id="webp-lossy"),
    pytest.param(pillow_encoded(SMALL, "WEBP", lossless=True), id="webp-lossless"),
    pytest.param(pillow_encoded(SMALL, "WEBP", exif=b"Exif\0\0II*\0" + bytes(10)), id="webp-extended"),
])
def test_sizes_are_read_from_the_header_of_every_listed_format(data):
    assert read_header(data, "x")[1:] == (97, 61)
    assert decode_image(data, "x").shape == (61, 97, 3)


def test_a_header_without_a_size_is_corrupt():
    jpeg = encoded(SMALL, ".jpg")
    frame = jpeg.index(b"\xff\xc0")
    with pytest.raises(UnusableImage, match=r"^x.jpg: corrupt JPEG header \(no image size in it\)"):
        read_header(jpeg[:frame], "x.jpg")


# ----------------------------------------------------------------------------- 4, 5, 6: odd but valid images

def test_grayscale_is_read_as_three_equal_channels_like_ultralytics(tmp_path):
    gray = cv2.cvtColor(photo_bgr(), cv2.COLOR_BGR2GRAY)
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"gray{suffix}"
        path.write_bytes(encoded(gray, suffix))
        image = decode_image(path.read_bytes(), path.name)
        assert image.shape == (*gray.shape, 3)
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        assert np.array_equal(image, ultralytics_imread(path))
    assert np.array_equal(decode_image((tmp_path / "gray.png").read_bytes(), "gray.png")[..., 0], gray)


def test_16_bit_png_keeps_its_high_byte_like_ultralytics(tmp_path):
    gray8 = cv2.cvtColor(photo_bgr(), cv2.COLOR_BGR2GRAY)
    path = tmp_path / "depth16.png"
    path.write_bytes(gray16_png(gray8))
    image = decode_image(path.read_bytes(), path.name)
    assert image.dtype == np.uint8 and image.shape == (*gray8.shape, 3)
    assert np.array_equal(image[..., 0], gray8)  # the high byte, exactly: not the low-byte noise
    assert np.array_equal(image, ultralytics_imread(path))


def test_cmyk_jpeg_matches_pillows_conversion(tmp_path):
    data = cmyk_jpeg()
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    rgb = decode_image(data, "cmyk.jpg")[..., ::-1].astype(int)
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    # OpenCV multiplies by k/256 (a shift) where Pillow divides by 255: at most one level apart.
    assert np.abs(rgb - pillow).max() <= 1
    original = np.asarray(Image.open(BUS).convert("RGB")).astype(int)
    assert np.abs(rgb - original).mean() < 3  # the colours, not an inverted or garbled image
    (tmp_path / "cmyk.jpg").write_bytes(data)
    assert np.array_equal(decode_image(data, "cmyk.jpg"), ultralytics_imread(tmp_path / "cmyk.jpg"))


def test_odd_but_valid_images_are_calibrated_on(model_160, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    gray = cv2.cvtColor(photo_bgr(), cv2.COLOR_BGR2GRAY)
    (folder / "gray.png").write_bytes(encoded(gray, ".png"))
    (folder / "depth16.png").write_bytes(gray16_png(gray))
    (folder / "cmyk.jpg").write_bytes(cmyk_jpeg())
    calibrate(job_for(model_160, refs_in(folder), tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "calib.json").read_text())
    assert report["images"] == 3 and report["skipped"] == []


# ----------------------------------------------------------------------------- 8. symlink loops

def test_symlink_loops_in_a_folder_or_under_a_manifest_glob_end_the_listing(tmp_path):
    folder = tmp_path / "calib" / "imgs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(BUS, folder / "sub" / "bus.jpg")
    os.symlink("..", folder / "sub" / "up")  # ln -s .. up: a loop back to the parent
    os.symlink(".", folder / "here")
    os.symlink("self.jpg", folder / "self.jpg")  # a file symlink to itself
    manifest = tmp_path / "calib" / "set.txt"
    manifest.write_text("imgs/**/*.jpg\n")
    with within(5):  # glob.glob("imgs/**/*.jpg") on this tree yields matches without end
        assert [r.name for r in list_image_set(folder, tmp_path)] == ["calib/imgs/sub/bus.jpg"]
        assert [r.name for r in list_image_set(manifest, tmp_path)] == ["calib/imgs/sub/bus.jpg"]


def test_a_manifest_glob_with_double_star_follows_a_linked_dataset_folder(tmp_path):
    """`imgs/**/*.jpg` over a folder linked in from a data disk: pathlib's `**` never enters
    a linked folder, so the set silently lost it (issue 13). Literal parts and single-level
    wildcards still mean what they say."""
    disk = tmp_path / "disk" / "frames"
    (disk / "day").mkdir(parents=True)
    shutil.copy(BUS, disk / "day" / "bus.jpg")
    shutil.copy(BUS, disk / "top.jpg")
    folder = tmp_path / "calib" / "imgs"
    (folder / "own").mkdir(parents=True)
    shutil.copy(BUS, folder / "own" / "a.jpg")
    shutil.copy(BUS, folder / "b.jpg")
    os.symlink(disk, folder / "linked")
    manifest = tmp_path / "calib" / "set.txt"

    def names(line: str) -> list[str]:
        manifest.write_text(line)
        return [r.name for r in list_image_set(manifest, tmp_path)]

    assert names("imgs/**/*.jpg\n") == ["calib/imgs/b.jpg", "calib/imgs/linked/day/bus.jpg",
                                        "calib/imgs/linked/top.jpg", "calib/imgs/own/a.jpg"]
    assert names("imgs/linked/**/bus.jpg\n") == ["calib/imgs/linked/day/bus.jpg"]
    assert names("imgs/*/*.jpg\n") == ["calib/imgs/linked/top.jpg", "calib/imgs/own/a.jpg"]


def test_hidden_files_are_not_part_of_a_set(tmp_path):
    shutil.copy(BUS, tmp_path / "bus.jpg")
    (tmp_path / "._bus.jpg").write_bytes(b"\0\5\26\7" + b"\0" * 60)  # macOS AppleDouble metadata
    (tmp_path / ".cache").mkdir()
    shutil.copy(BUS, tmp_path / ".cache" / "thumb.jpg")
    assert [r.name for r in list_image_set(tmp_path, tmp_path)] == ["bus.jpg"]


# ----------------------------------------------------------------------------- 9. a set that changes

@pytest.fixture
def six_photos(tmp_path) -> list[ImageRef]:
    folder = tmp_path / "calib"
    folder.mkdir()
    for ref in demo_images()[:6]:
        shutil.copy(ref.path, folder / Path(ref.name).name)
    return refs_in(folder)


def outputs_of(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*") if p.is_file())


def after_calling(monkeypatch, module, name: str, change) -> None:
    """Run `change()` right after `module.name` returns, once: a set edited mid-stage."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        monkeypatch.setattr(module, name, original)
        change()
        return result

    monkeypatch.setattr(module, name, wrapper)


def test_image_replaced_between_hashing_and_decoding_is_refused_and_a_rerun_works(model_160, six_photos, tmp_path,
                                                                                 monkeypatch):
    out = tmp_path / "out"
    victim = six_photos[-1]
    after_calling(monkeypatch, calibrate_stage, "_scan", lambda: victim.path.write_bytes(six_photos[0].path.read_bytes()))
    with pytest.raises(ImageSetChanged, match=rf"^calib:test: {victim.name} changed while calibrating; nothing was "
                                              "written: rerun once the image set is stable$"):
        calibrate(job_for(model_160, six_photos, out))
    assert outputs_of(out) == []
    calibrate(job_for(model_160, six_photos, out))
    assert outputs_of(out) == ["calib.cache", "calib.json", "sample.npy"]


def test_image_replaced_after_it_was_read_is_refused_before_any_output(model_160, six_photos, tmp_path, monkeypatch):
    """doit records the images' state after the action: without the final check, ranges
    computed from the old bytes would be recorded as computed from the new ones."""
    out = tmp_path / "out"
    victim = six_photos[-1]  # not in the first batch, which is read again for the sample
    after_calling(monkeypatch, calibrate_stage, "_compute", lambda: victim.path.write_bytes(six_photos[1].path.read_bytes()))
    with pytest.raises(ImageSetChanged, match=rf"^calib:test: {victim.name} changed while the stage was reading"):
        calibrate(job_for(model_160, six_photos, out))
    assert outputs_of(out) == []
    calibrate(job_for(model_160, six_photos, out))
    assert json.loads((out / "calib.json").read_text())["images"] == 6


def test_image_deleted_while_calibrating_is_one_line(model_160, six_photos, tmp_path, monkeypatch):
    victim = six_photos[2]
    after_calling(monkeypatch, calibrate_stage, "_scan", victim.path.unlink)
    with pytest.raises(ImageSetChanged, match=rf"^{victim.name} disappeared while the image set was being read; rerun"):
        calibrate(job_for(model_160, six_photos, tmp_path / "out"))
    assert outputs_of(tmp_path / "out") == []


def test_verification_image_replaced_during_the_reference_is_refused(model_160, six_photos, tmp_path, monkeypatch):
    out = tmp_path / "reference"
    victim = six_photos[0]
    after_calling(monkeypatch, reference_stage, "run_onnxruntime",
                  lambda: victim.path.write_bytes(six_photos[1].path.read_bytes()))

    def make_reference() -> None:
        reference_stage.make_reference(model_160, tuple(six_photos[:2]), "images", 160, 160, 1,
                                       out / "inputs.json", out / "outputs.json", out / "images.json")

    with pytest.raises(ImageSetChanged, match=rf"^reference: {victim.name} changed"):
        make_reference()
    assert not out.exists() or outputs_of(out) == []
    make_reference()
    assert outputs_of(out) == ["images.json", "inputs.json", "outputs.json"]


OUT_OF_MEMORY_RUN = """
import os, pickle, resource, sys
import cv2, numpy, onnx, onnxruntime  # noqa: F401 (loaded before the limit, as a running build has them)
from trtforge.errors import StageError
from trtforge.stages.calibrate import calibrate

model, job = pickle.load(open(sys.argv[1], "rb"))
fixed = onnx.load(model)
fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = job.batch  # a static batch: run whole
onnx.save(fixed, job.onnx)
size = int(open(f"/proc/{os.getpid()}/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (400 << 20), resource.RLIM_INFINITY))
try:
    calibrate(job)
except StageError as exc:
    print(exc)
"""


def test_calibration_that_runs_out_of_memory_names_the_batch_to_lower(model_160, six_photos, tmp_path):
    """A batch ONNX Runtime cannot allocate (here: 48 images of a static-batch model under a
    400 MB address-space limit) ends in one line naming the field, not a traceback."""
    import pickle
    import subprocess
    import sys

    job = job_for(model_160, six_photos * 8, tmp_path / "out", batch=48, method="minmax",
                  onnx=tmp_path / "static.onnx")
    (tmp_path / "job.pickle").write_bytes(pickle.dumps((str(model_160), job)))
    run = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_RUN, str(tmp_path / "job.pickle")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.stdout.strip().startswith("calib:test: ran out of memory calibrating a batch of 48 images; "
                                         "lower calibration.batch (now 48)"), (run.stdout, run.stderr[-2000:])
    assert outputs_of(tmp_path / "out") == []


# ----------------------------------------------------------------------------- bad images, calibration level

def test_a_bad_image_is_refused_before_calibrating_on_the_others(model_160, six_photos, tmp_path, monkeypatch, bomb):
    (six_photos[0].path.parent / "zz_bomb.png").write_bytes(bomb)
    refs = refs_in(six_photos[0].path.parent)
    monkeypatch.setattr(calibrate_stage, "_session", lambda _: pytest.fail("calibration started"))
    with pytest.raises(StageError, match=r"^calib:test: calib/zz_bomb.png: .* pixels, over the limit .*"
                                         r"\(or set calibration.bad_images: skip to count and skip such files\)$"):
        calibrate(job_for(model_160, refs, tmp_path / "out"))
    assert outputs_of(tmp_path / "out") == []


def test_skipped_images_are_counted_with_their_reason(model_160, six_photos, tmp_path, bomb):
    folder = six_photos[0].path.parent
    (folder / "zz_bomb.png").write_bytes(bomb)
    (folder / "zz_notes.jpg").write_text("not a photo")
    calibrate(job_for(model_160, refs_in(folder), tmp_path / "out", skip_bad_images=True))
    report = json.loads((tmp_path / "out" / "calib.json").read_text())
    assert report["images"] == 6 and report["skipped"] == ["calib/zz_bomb.png", "calib/zz_notes.jpg"]
    assert "decompression-bomb" in report["skipped_why"]["calib/zz_bomb.png"]


def test_nothing_usable_is_one_line(model_160, tmp_path):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "a.jpg").write_text("text")
    job = job_for(model_160, refs_in(tmp_path / "calib"), tmp_path / "out", skip_bad_images=True)
    with pytest.raises(StageError, match=r"^calib:test: none of the 1 calibration images is usable; the first: "
                                         r"calib/a.jpg: not an image"):
        calibrate(job)


# ----------------------------------------------------------------------------- what a user sees (doit)

INT8_AND_VERIFY = """\
  int8:
    precision: int8
    calibration: {images: calib/imgs, batch: 4, method: entropy}
verify: {images: calib/verify, count: 2, task: detect}
"""


@pytest.fixture(scope="module")
def surgered(tmp_path_factory) -> Path:
    """A project with six calibration and two verification photos whose export and
    surgery already ran (160 px: image faults do not depend on the input size)."""
    return project_with_photos(tmp_path_factory.mktemp("faults"), INT8_AND_VERIFY, 6, "surgery:yolov8n")


def project_with_photos(folder: Path, int8_and_verify: str, calibration: int, task: str) -> Path:
    """A SMALL_RECIPE project plus `int8_and_verify`, with `calibration` demo photos in
    calib/imgs and two others in calib/verify, after `doit <task>`."""
    project = make_project(folder / "proj", {"yolov8n": SMALL_RECIPE + int8_and_verify})
    photos = demo_images()
    for sub, chosen in (("imgs", photos[:calibration]), ("verify", photos[6:8])):
        (project / "calib" / sub).mkdir(parents=True)
        for ref in chosen:
            shutil.copy(ref.path, project / "calib" / sub / Path(ref.name).name)
    result = run_doit(project, task)
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.fixture
def project(surgered, tmp_path) -> Path:
    return copied(surgered, tmp_path)


def edit_recipe(project: Path, old: str, new: str) -> None:
    recipe = project / "recipes" / "yolov8n.yaml"
    assert old in recipe.read_text()
    recipe.write_text(recipe.read_text().replace(old, new))


CALIB_OUTPUTS = ("calib.cache", "calib.json", "calib-sample.npy")


@pytest.mark.slow
def test_doit_empty_sets_are_one_line_and_adding_images_fixes_them(project):
    imgs, verify = project / "calib" / "imgs", project / "calib" / "verify"
    shutil.move(imgs, project / "calib" / "photos")
    imgs.mkdir()
    result = run_doit(project, "calib:yolov8n-int8")
    assert result.returncode == 1
    assert the_error(result) == ("yolov8n.yaml: variants.int8.calibration.images: 'calib/imgs' holds no image "
                                 "file; add images or point it at another set")

    (project / "calib" / "set.txt").write_text("photos/*.jpg\n")  # the photos are PNGs
    edit_recipe(project, "images: calib/imgs,", "images: calib/set.txt,")
    result = run_doit(project, "calib:yolov8n-int8")
    assert result.returncode == 1
    assert the_error(result) == ("yolov8n.yaml: variants.int8.calibration.images: calib/set.txt:1: "
                                 "'photos/*.jpg' matches no image file")

    for photo in verify.iterdir():
        photo.unlink()
    result = run_doit(project, "reference:yolov8n")
    assert result.returncode == 1
    assert the_error(result) == ("yolov8n.yaml: verify.images: 'calib/verify' holds no image file; "
                                 "add images or point verify.images at another set")

    (project / "calib" / "set.txt").write_text("photos/*.png\n")
    result = run_doit(project, "calib:yolov8n-int8")
    assert result.returncode == 0, result.stdout + result.stderr
    out = project / "artifacts" / "yolov8n" / "int8"
    assert json.loads((out / "calib.json").read_text())["images"] == 6


@pytest.mark.slow
def test_doit_bad_calibration_images_are_one_line_then_skipped_or_removed(project, bomb):
    imgs, out = project / "calib" / "imgs", project / "artifacts" / "yolov8n" / "int8"
    bad = {"zz_cut.jpg": truncated(BUS.read_bytes()), "zz_notes.jpg": b"not a photo\n", "zz_bomb.png": bomb}
    reasons = {"zz_cut.jpg": "truncated JPEG (its end is missing)", "zz_notes.jpg": "not an image (it holds text)",
               "zz_bomb.png": f"pixels, over the limit of {MAX_PIXELS:,}"}
    for name, data in bad.items():
        (imgs / name).write_bytes(data)
        result = run_doit(project, "calib:yolov8n-int8")
        assert result.returncode == 1
        line = the_error(result)
        assert line.startswith(f"calib:yolov8n-int8: calib/imgs/{name}: ") and reasons[name] in line, line
        assert line.endswith("(or set variants.int8.calibration.bad_images: skip to count and skip such files)")
        assert not any((out / name).exists() for name in CALIB_OUTPUTS)
        (imgs / name).unlink()

    (imgs / "zz_cut.jpg").write_bytes(bad["zz_cut.jpg"])
    edit_recipe(project, "method: entropy}", "method: entropy, bad_images: skip}")
    result = run_doit(project, "calib:yolov8n-int8")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert warnings == ["trtforge: WARNING: calib:yolov8n-int8: skipped calib/imgs/zz_cut.jpg: truncated JPEG "
                        "(its end is missing); replace it with a complete copy or remove it from the set "
                        "(bad_images: skip; all are listed in calib.json)"]
    assert json.loads((out / "calib.json").read_text())["skipped"] == ["calib/imgs/zz_cut.jpg"]

    (imgs / "zz_cut.jpg").unlink()  # the fix: the strict recipe again, without the broken file
    edit_recipe(project, "method: entropy, bad_images: skip}", "method: entropy}")
    result = run_doit(project, "calib:yolov8n-int8")
    assert result.returncode == 0 and "calib:yolov8n-int8" in executed(result), result.stdout
    assert json.loads((out / "calib.json").read_text())["skipped"] == []


@pytest.mark.slow
def test_doit_corrupt_verification_image_is_one_line_and_a_complete_copy_fixes_it(project):
    verify, out = project / "calib" / "verify", project / "artifacts" / "yolov8n" / "reference"
    photo = sorted(verify.iterdir())[0]
    complete = photo.read_bytes()
    photo.write_bytes(truncated(complete))
    result = run_doit(project, "reference:yolov8n")
    assert result.returncode == 1
    assert the_error(result).startswith(f"verify.images: calib/verify/{photo.name}: truncated ")
    assert not out.exists() or not list(out.iterdir())

    photo.write_bytes(complete)
    result = run_doit(project, "reference:yolov8n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((out / "images.json").read_text()) == [f"calib/verify/{p.name}" for p in sorted(verify.iterdir())]


@pytest.mark.slow
def test_doit_calibrates_on_grayscale_16_bit_and_cmyk_beside_a_symlink_loop(project):
    imgs = project / "calib" / "imgs"
    gray = cv2.cvtColor(photo_bgr(), cv2.COLOR_BGR2GRAY)
    (imgs / "gray.jpg").write_bytes(encoded(gray, ".jpg"))
    (imgs / "depth16.png").write_bytes(gray16_png(gray))
    (imgs / "cmyk.jpg").write_bytes(cmyk_jpeg())
    os.symlink("..", imgs / "loop")
    result = run_doit(project, "calib:yolov8n-int8", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((project / "artifacts" / "yolov8n" / "int8" / "calib.json").read_text())
    assert report["images"] == 9 and report["skipped"] == []
