"""Image sets (calibration, verification) and the one preprocessing every stage shares.

A set is a folder of images or a manifest: a text file with one entry per line, each a
path or glob relative to the manifest's folder, or `package:<module>/<glob>` for images
shipped inside an installed Python package (the built-in demo sets use those, so they
need no network). Listing a set is cheap and imports nothing heavy: it runs when tasks
are generated, so the exact files a stage reads are doit file_deps.

Preprocessing is Ultralytics' inference preprocessing (LetterBox with pad 114, centred,
scale-up allowed; BGR -> RGB; /255; CHW float32), so calibration and verification see
what the deployed model will see.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import StageError, require

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
PAD_VALUE = 114


class ImageSetError(StageError):
    """An image set that cannot be listed (missing folder, bad manifest line)."""


@dataclass(frozen=True)
class ImageRef:
    """One image of a set: where it is, and the stable name it is reported under."""

    path: Path
    name: str  # project-relative path, or package:<module>/<path>


def list_image_set(source: Path, root: Path) -> list[ImageRef]:
    """Every image of a folder or manifest, sorted by name, without duplicates."""
    if source.is_dir():
        refs = [_ref(p, root) for p in _walk_images(source)]
    elif source.is_file():
        refs = _manifest(source, root)
    else:
        raise ImageSetError(f"image set '{_rel(source, root)}' does not exist; give a folder of "
                            "images or a manifest file")
    unique = {ref.name: ref for ref in refs}
    return [unique[name] for name in sorted(unique)]


def _walk_images(folder: Path) -> list[Path]:
    """Image files under `folder`; symlinked folders are not followed (no loops)."""
    return [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _manifest(manifest: Path, root: Path) -> list[ImageRef]:
    refs: list[ImageRef] = []
    for number, raw in enumerate(manifest.read_text().splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.startswith("package:"):
            refs += _package_entry(entry, manifest, number)
            continue
        pattern = entry if Path(entry).is_absolute() else str(manifest.parent / entry)
        matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        matches = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not matches:
            raise ImageSetError(f"{_rel(manifest, root)}:{number}: '{entry}' matches no image file")
        refs += [_ref(p, root) for p in matches]
    return refs


def _package_entry(entry: str, manifest: Path, number: int) -> list[ImageRef]:
    """`package:skimage/data/*.png` -> images inside the installed package (none if absent)."""
    module, _, pattern = entry[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        return []  # the manifest may list optional packages; an empty set is caught later
    base = Path(next(iter(spec.submodule_search_locations)))
    return [ImageRef(p, f"package:{module}/{p.relative_to(base).as_posix()}")
            for p in sorted(base.glob(pattern)) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def _ref(path: Path, root: Path) -> ImageRef:
    return ImageRef(path, _rel(path, root))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def select_images(refs: list[ImageRef], count: int | None, fraction: float | None) -> list[ImageRef]:
    """A deterministic subset: ordered by a hash of each name, the first `count` taken.

    Ordering by name hash spreads the choice over the whole set, and adding an image
    changes the selection by at most that image, so unrelated additions do not force a
    recalibration.
    """
    if fraction is not None:
        count = max(1, round(len(refs) * fraction))
    ordered = sorted(refs, key=lambda r: hashlib.sha1(r.name.encode()).hexdigest())
    chosen = ordered if count is None else ordered[:count]
    return sorted(chosen, key=lambda r: r.name)


def letterbox(image, height: int, width: int):
    """Resize keeping aspect ratio and pad to (height, width), exactly as Ultralytics' LetterBox."""
    cv2 = require("cv2", "yolo")
    h, w = image.shape[:2]
    r = min(height / h, width / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


def decode_image(data: bytes, name: str):
    """BGR uint8 HxWx3 from encoded bytes (grayscale, 16-bit and CMYK converted by OpenCV)."""
    cv2 = require("cv2", "yolo")
    np = require("numpy", "core")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise StageError(f"{name}: not a readable image (corrupt, truncated or not an image file)")
    return image


def preprocess(image, height: int, width: int):
    """BGR uint8 image -> 1x3xHxW float32 RGB in [0, 1], as Ultralytics feeds its models."""
    np = require("numpy", "core")
    boxed = letterbox(image, height, width)
    return np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1), dtype=np.float32)[None] / 255.0
