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

import hashlib
import importlib.util
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import StageError, require

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
PAD_VALUE = 114
# The decompression-bomb guard, checked from the file's header before any pixel is decoded.
# It is Pillow's own MAX_IMAGE_PIXELS (1024**3 // 4 // 3: a quarter GiB as 24-bit pixels),
# so a decoded image costs at most 256 MiB as BGR8 (OpenCV reads 16-bit files as 8-bit).
# It admits 8K frames (33 Mpx) and 50-Mpx photos; the model sees every image letterboxed
# to its input size (640 px for YOLOv8), so a larger one carries nothing a resized copy
# would not, while a 30000x30000 PNG of a few hundred KiB would decode to 2.5 GiB.
MAX_PIXELS = 1024 ** 3 // 4 // 3


class ImageSetError(StageError):
    """An image set that cannot be listed (missing folder, bad manifest line)."""


class UnusableImage(StageError):
    """One image that cannot be used: empty, not an image, truncated, corrupt or too large.

    The only kind of image fault calibration may skip (`bad_images: skip`)."""


class ImageSetChanged(StageError):
    """An image changed or vanished while a stage was reading the set."""


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
    """Image files under `folder`, hidden ones left out.

    pathlib's rglob never descends into a symlinked folder, so a `ln -s .. loop` inside
    the set ends the walk instead of recursing; a file symlink that loops or dangles is
    not a file and is left out. Hidden names are skipped as Ultralytics' glob skips them:
    macOS leaves `._photo.jpg` metadata files beside copied photos."""
    return sorted(p for p in folder.rglob("*") if _is_image_file(p, folder))


def _is_image_file(path: Path, base: Path) -> bool:
    visible = not any(part.startswith(".") for part in path.relative_to(base).parts)
    return visible and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _glob(base: Path, pattern: str) -> list[Path]:
    """Image files matching `pattern` (relative to `base`, or absolute).

    pathlib's glob, not glob.glob: with `**`, glob.glob follows a symlink to a parent
    folder again and again (measured: 100000 matches of one image in 15 s and counting);
    pathlib's does not. Hidden names count only where a wildcard matched them."""
    parts = Path(pattern).parts
    literal = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    base = base.joinpath(*parts[:literal])
    found = base.glob(str(Path(*parts[literal:]))) if literal < len(parts) else [base]
    return sorted(p for p in found if _is_image_file(p, base))


def _manifest(manifest: Path, root: Path) -> list[ImageRef]:
    refs: list[ImageRef] = []
    for number, raw in enumerate(manifest.read_text().splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.startswith("package:"):
            refs += _package_entry(entry, manifest, number)
            continue
        matches = _glob(manifest.parent, entry)
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
    return [ImageRef(p, f"package:{module}/{p.relative_to(base).as_posix()}") for p in _glob(base, pattern)]


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


def read_image_bytes(ref: ImageRef) -> bytes:
    """The file's bytes; a file gone since the set was listed means the set changed."""
    try:
        return ref.path.read_bytes()
    except FileNotFoundError:
        raise ImageSetChanged(f"{ref.name} disappeared while the image set was being read; "
                              "rerun once the set is stable") from None
    except OSError as exc:
        raise StageError(f"{ref.name}: cannot be read ({exc.strerror or exc}); make it readable or "
                         "remove it from the set") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refuse_if_changed(refs: tuple[ImageRef, ...], digests: dict[str, str], task: str) -> None:
    """Raise ImageSetChanged if any image's bytes differ from those the stage used.

    doit records its file_dep state after the action ends: an image replaced after the
    stage read it would be recorded as the input of outputs computed from the old bytes,
    and trusted on every later run. Checked before the stage writes its outputs."""
    for ref in refs:
        if sha256_hex(read_image_bytes(ref)) != digests[ref.name]:
            raise ImageSetChanged(f"{task}: {ref.name} changed while the stage was reading the image set; "
                                  "nothing was written: rerun once the set is stable")


def check_encoded(data: bytes, name: str) -> None:
    """Refuse, from the header and the file's structure alone, what must not be decoded:
    an empty file, a file that is not an image whatever its suffix, a decompression bomb
    (over MAX_PIXELS), a truncated JPEG or PNG (OpenCV 4 decodes a truncated JPEG with a
    grey lower part and only a "Premature end of JPEG file" warning: opencv/opencv#6468)."""
    if not data:
        raise UnusableImage(f"{name}: empty file; replace it or remove it from the set")
    kind, width, height = _header(data, name)
    if width * height > MAX_PIXELS:
        raise UnusableImage(f"{name}: {width}x{height} is {width * height:,} pixels, over the limit of "
                            f"{MAX_PIXELS:,} (decompression-bomb guard); resize it or remove it from the set")
    if _truncated(kind, data):
        raise UnusableImage(f"{name}: truncated {kind} (its end is missing); replace it with a complete "
                            "copy or remove it from the set")


def _header(data: bytes, name: str) -> tuple[str, int, int]:
    """(format, width, height) as Pillow reads them from the header, decoding no pixel."""
    image_module = require("PIL.Image", "core")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own bomb warning and EXIF chatter: MAX_PIXELS decides
        try:
            with image_module.open(io.BytesIO(data)) as image:
                return image.format or "image", *image.size
        except image_module.DecompressionBombError:  # over twice Pillow's limit, which is MAX_PIXELS
            raise UnusableImage(f"{name}: over {2 * image_module.MAX_IMAGE_PIXELS:,} pixels, above the limit "
                                f"of {MAX_PIXELS:,} (decompression-bomb guard); resize it or remove it "
                                "from the set") from None
        except image_module.UnidentifiedImageError:
            raise UnusableImage(f"{name}: not an image ({_what_it_holds(data)}), whatever its suffix says; "
                                "remove it from the set") from None
        except (OSError, ValueError) as exc:  # Pillow knew the format but not this header
            raise UnusableImage(f"{name}: corrupt image header ({exc}); replace it or remove it "
                                "from the set") from None


def _what_it_holds(data: bytes) -> str:
    if data.startswith(b"%PDF"):
        return "it holds a PDF document"
    head = data[:1024]
    if b"\0" not in head and head.decode("utf-8", "replace").count("\ufffd") <= 1:  # 1: a character cut at 1024
        return "it holds text"
    return "no JPEG, PNG, BMP, TIFF or WebP header"


def _truncated(kind: str, data: bytes) -> bool:
    if kind in ("JPEG", "MPO"):  # MPO: the multi-picture JPEG some cameras write
        # Entropy-coded data never holds FF D9 or FF DA (every FF in it is followed by 00
        # or a restart marker), so a complete JPEG has an end-of-image marker after its
        # last start-of-scan; an EXIF thumbnail's markers all come before the main scan.
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if kind == "PNG":  # the IEND chunk follows the last IDAT chunk
        return data.rfind(b"IEND") < data.rfind(b"IDAT")
    return False


def decode_image(data: bytes, name: str):
    """BGR uint8 HxWx3 from encoded bytes, as Ultralytics reads images (cv2.IMREAD_COLOR):
    grayscale is repeated into 3 channels, 16-bit keeps its high byte, CMYK is converted.
    Raises UnusableImage, after `check_encoded`, for what OpenCV cannot decode."""
    cv2 = require("cv2", "yolo")
    np = require("numpy", "core")
    check_encoded(data, name)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UnusableImage(f"{name}: corrupt image (OpenCV cannot decode it); replace it or remove it from the set")
    return image


def preprocess(image, height: int, width: int):
    """BGR uint8 image -> 1x3xHxW float32 RGB in [0, 1], as Ultralytics feeds its models."""
    np = require("numpy", "core")
    boxed = letterbox(image, height, width)
    return np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1), dtype=np.float32)[None] / 255.0
