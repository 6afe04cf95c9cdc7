"""Image sets (calibration, verification) and the one preprocessing every stage shares.

A set is a folder of images or a manifest: a text file with one entry per line, each a
path or glob relative to the manifest's folder, or `package:<module>/<glob>` for images
shipped inside an installed Python package (the built-in demo sets use those, so they
need no network). An entry may end in ` @ <view>`, a deterministic view of each image it
names (`mirror`, `crop 80% top-left`, or both joined by `, `): a few packaged photos then
make a verification set with enough objects to measure (calib/demo-people.txt). Listing a
set is cheap and imports nothing heavy: it runs when tasks are generated, so the exact
files a stage reads are doit file_deps.

Preprocessing is Ultralytics' inference preprocessing (LetterBox with pad 114, centred,
scale-up allowed; BGR -> RGB; /255; CHW float32), so calibration and verification see
what the deployed model will see.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import StageError, broken_link, require

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
    name: str  # project-relative path, or package:<module>/<path>; either may end in ` @ <view>`


VIEW_SEPARATOR = " @ "
_CROP = re.compile(r"crop (\d{1,3})% (top-left|top-right|bottom-left|bottom-right|centre)")


def view_of(name: str) -> tuple[str, ...]:
    """The view steps an image name ends with (empty for a whole image). A listed name can
    only end in a view its manifest declared: image names end in an image suffix."""
    _, separator, view = name.rpartition(VIEW_SEPARATOR)
    steps = tuple(view.split(", ")) if separator else ()
    return steps if steps and all(_view_step_problem(step) is None for step in steps) else ()


def _view_step_problem(step: str) -> str | None:
    if step == "mirror":
        return None
    crop = _CROP.fullmatch(step)
    if crop is None:
        return (f"'{step}' is not a view; write 'mirror' or 'crop <percent>% <anchor>' with anchor "
                "top-left, top-right, bottom-left, bottom-right or centre")
    if not 10 <= int(crop.group(1)) <= 100:
        return f"'{step}' crops to {crop.group(1)}%; give a percentage from 10 to 100"
    return None


def apply_view(image, steps: tuple[str, ...]):
    """`image` (HxWxC) seen through the view steps, in order: `mirror` flips left to right,
    `crop P% <anchor>` keeps P% of each side against that anchor."""
    for step in steps:
        if step == "mirror":
            image = image[:, ::-1]
            continue
        percent, anchor = _CROP.fullmatch(step).groups()
        h, w = image.shape[:2]
        ch, cw = max(1, h * int(percent) // 100), max(1, w * int(percent) // 100)
        y = {"top": 0, "bottom": h - ch}.get(anchor.split("-")[0], (h - ch) // 2)
        x = {"left": 0, "right": w - cw}.get(anchor.split("-")[-1], (w - cw) // 2)
        image = image[y:y + ch, x:x + cw]
    return require("numpy", "core").ascontiguousarray(image)  # OpenCV's resize wants contiguous rows


def list_image_set(source: Path, root: Path) -> list[ImageRef]:
    """Every image of a folder or manifest, sorted by name, without duplicates."""
    if source.is_dir():
        refs = [_ref(p, root) for p in _walk_images(source, root)]
    elif source.is_file():
        refs = _manifest(source, root)
    else:
        raise ImageSetError(f"image set '{_rel(source, root)}' does not exist; give a folder of "
                            "images or a manifest file")
    unique = {ref.name: ref for ref in refs}
    return [unique[name] for name in sorted(unique)]


def _walk_images(folder: Path, root: Path) -> list[Path]:
    """Image files under `folder`, hidden ones left out, named by the path they are found under.

    Symlinked folders are followed: users link datasets in from data disks, and pathlib's
    rglob, which never follows them, dropped such a subfolder without a word. Loops still
    end: a folder whose real path was walked already, or that holds the link leading to it
    (`ln -s .. up`), is not entered again; folders reached without a link are walked first,
    so a link to one of them adds nothing and renames nothing. A link to nothing (a disk
    not mounted) is refused rather than passed over; a file symlink that loops is not a
    file and is left out. Hidden names are skipped as Ultralytics' glob skips them: macOS
    leaves `._photo.jpg` metadata files beside copied photos."""
    found: list[Path] = []
    walked: set[Path] = set()
    plain, linked = [folder], []  # folders to walk, reached without and through a symlink
    while plain or linked:
        current = plain.pop() if plain else linked.pop()
        real = current.resolve()
        if real in walked or (current != folder and current.parent.resolve().is_relative_to(real)):
            continue
        walked.add(real)
        for entry in _visible_entries(current):
            if entry.is_dir():
                (linked if entry.is_symlink() else plain).append(entry)
            elif entry.is_symlink():
                _refuse_dangling(entry, root)
            if _is_image_file(entry, folder):
                found.append(entry)
    return sorted(found)


def _visible_entries(folder: Path) -> list[Path]:
    """The folder's entries without hidden ones, last name first (so a stack pops them in order)."""
    try:
        return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), reverse=True)
    except PermissionError:  # as rglob did: a folder this user cannot list holds nothing to read
        return []


def _refuse_dangling(link: Path, root: Path) -> None:
    """A symlink to nothing (a data disk not mounted, a moved dataset) is data that is
    missing, not absent: say so in one line. A link that loops is left out, as rglob did."""
    broken = broken_link(link)
    if broken is not None and broken[0] == "dangling":
        raise ImageSetError(f"{_rel(link, root)}: {broken[1]}")


def _is_image_file(path: Path, base: Path) -> bool:
    visible = not any(part.startswith(".") for part in path.relative_to(base).parts)
    return visible and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _glob(base: Path, pattern: str, root: Path) -> list[Path]:
    """Image files matching `pattern` (relative to `base`, or absolute).

    A pattern with `**` is matched against `_walk_images`, which follows symlinked folders
    and ends loops: glob.glob follows a link to a parent folder again and again (measured:
    100000 matches of one image in 15 s and counting), and pathlib's `**` never enters a
    linked folder, so `calib/**/*.jpg` dropped a dataset linked in from a data disk without
    a word. Other patterns use pathlib's glob. Hidden names count only where the pattern
    names them literally."""
    parts = Path(pattern).parts
    literal = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    base = base.joinpath(*parts[:literal])
    wildcard = parts[literal:]
    if "**" in wildcard:
        found = [p for p in _walk_images(base, root) if _matches(p.relative_to(base).parts, wildcard)] \
            if base.is_dir() else []
    else:
        found = base.glob(str(Path(*wildcard))) if wildcard else [base]
    return sorted(p for p in found if _is_image_file(p, base))


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether path segments match glob segments, `**` standing for any number of folders
    (none included), as pathlib's glob reads it."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _manifest(manifest: Path, root: Path) -> list[ImageRef]:
    refs: list[ImageRef] = []
    for number, raw in enumerate(manifest.read_text().splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        entry, separator, view = entry.partition(VIEW_SEPARATOR)
        problem = next(filter(None, map(_view_step_problem, view.split(", "))), None) if separator else None
        if problem:
            raise ImageSetError(f"{_rel(manifest, root)}:{number}: {problem}")
        if entry.startswith("package:"):
            found = _package_entry(entry, manifest, number)
        else:
            found = [_ref(p, root) for p in _glob(manifest.parent, entry, root)]
            if not found:
                raise ImageSetError(f"{_rel(manifest, root)}:{number}: '{entry}' matches no image file")
        refs += [ImageRef(r.path, r.name + separator + view) for r in found]
    return refs


def _package_entry(entry: str, manifest: Path, number: int) -> list[ImageRef]:
    """`package:skimage/data/*.png` -> images inside the installed package (none if absent)."""
    module, _, pattern = entry[len("package:"):].partition("/")
    base = package_folder(module)
    if base is None:
        return []  # the manifest may list optional packages; an empty set is caught later
    return [ImageRef(p, f"package:{module}/{p.relative_to(base).as_posix()}") for p in _glob(base, pattern, base)]


def package_folder(module: str) -> Path | None:
    """The folder of the installed top-level package `module` (None if it is not installed),
    found without importing it."""
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


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


@dataclass(frozen=True)
class Letterbox:
    """Where an image of the original size lands in the model input: resized to new_w x new_h
    pixels, then padded by top, bottom, left, right."""

    new_w: int
    new_h: int
    top: int
    bottom: int
    left: int
    right: int


def letterbox_geometry(h: int, w: int, height: int, width: int) -> Letterbox:
    """The placement of Ultralytics' LetterBox (ultralytics/data/augment.py, 8.4): scale
    r = min(height / h, width / w), each side rounded to whole pixels (at least 1), the
    padding split around the centre with the odd pixel at the bottom and right. Shared by the
    pixels (`letterbox`) and the boxes that must follow them (verify.labels)."""
    r = min(height / h, width / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    return Letterbox(new_w, new_h, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))


def letterbox(image, height: int, width: int, pad: int = PAD_VALUE):
    """Resize keeping aspect ratio and pad to (height, width), exactly as Ultralytics' LetterBox."""
    cv2 = require("cv2", "yolo")
    h, w = image.shape[:2]
    box = letterbox_geometry(h, w, height, width)
    if (w, h) != (box.new_w, box.new_h):
        image = cv2.resize(image, (box.new_w, box.new_h), interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(image, box.top, box.bottom, box.left, box.right, cv2.BORDER_CONSTANT,
                              value=(pad,) * 3)


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
    kind, width, height = read_header(data, name)
    if width * height > MAX_PIXELS:
        raise _too_large(name, f"{width}x{height} = {width * height:,}")
    if _truncated(kind, data):
        raise UnusableImage(f"{name}: truncated {kind} (its end is missing); replace it with a complete "
                            "copy or remove it from the set")


def read_header(data: bytes, name: str) -> tuple[str, int, int]:
    """(format, width, height) from the file's header alone, so a decompression bomb costs
    nothing; the format is what the first bytes say, whatever the suffix.

    Read here, not with Pillow: importing Ultralytics (the export stage does, in the same
    doit process) replaces PIL.Image.open with a wrapper that, on a file it cannot
    identify, tries to pip-install pi-heif (ultralytics/utils/patches.py, 8.4); and
    Pillow's own bomb check raises before it tells the size."""
    kind = _format_of(data)
    if kind is None:
        raise UnusableImage(f"{name}: not an image ({_what_it_holds(data)}), whatever its suffix says; "
                            "remove it from the set")
    try:
        width, height = _SIZE_READERS[kind](data)
    except (struct.error, IndexError, KeyError, TypeError):  # cut short, odd field type, no size
        width = height = 0
    if width <= 0 or height <= 0:
        raise UnusableImage(f"{name}: corrupt {kind} header (no image size in it); replace it or remove it "
                            "from the set")
    return kind, width, height


def _format_of(data: bytes) -> str | None:
    """The format of IMAGE_SUFFIXES that the first bytes announce (the suffix does not count)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"),
          (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"II+\0", "TIFF"), (b"MM\0+", "TIFF"))  # + : BigTIFF


def _png_size(data: bytes) -> tuple[int, int] | None:
    return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" else None


# Start-of-frame markers (C4, C8 and CC are other segments); they hold the image size.
_JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size in the first frame header, walking the marker segments that precede it."""
    i = 2
    while data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        elif marker in (0xDA, 0xD9):  # a scan or the end before any frame header
            return None
        else:
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # negative height: rows stored top-down


def _tiff_size(data: bytes) -> tuple[int, int]:
    """ImageWidth (tag 256) and ImageLength (257) from the first IFD, classic or BigTIFF."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2] == 0x2B or data[3] == 0x2B
    count_type, entry_size, value_at = ("Q", 20, 12) if big else ("H", 12, 8)
    ifd = struct.unpack(order + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    count_size = struct.calcsize(count_type)
    count = struct.unpack(order + count_type, data[ifd:ifd + count_size])[0]
    found: dict[int, int] = {}
    for k in range(count):
        entry = ifd + count_size + k * entry_size
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag in (256, 257):
            value_type = {3: "H", 4: "I", 16: "Q"}[kind]  # SHORT, LONG, LONG8
            start = entry + value_at
            found[tag] = struct.unpack(order + value_type, data[start:start + struct.calcsize(value_type)])[0]
            if len(found) == 2:
                return found[256], found[257]
    return 0, 0


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit sizes minus one, packed after the signature byte
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


_SIZE_READERS = {"PNG": _png_size, "JPEG": _jpeg_size, "BMP": _bmp_size, "TIFF": _tiff_size, "WebP": _webp_size}


def _too_large(name: str, pixels: str) -> UnusableImage:
    return UnusableImage(f"{name}: {pixels} pixels, over the limit of {MAX_PIXELS:,} (decompression-bomb "
                         "guard: nothing was decoded); resize it or remove it from the set")


def _what_it_holds(data: bytes) -> str:
    if data.startswith(b"%PDF"):
        return "it holds a PDF document"
    if data.startswith(b"GIF8"):
        return "it holds a GIF; convert it to PNG"
    head = data[:1024]
    if b"\0" not in head and head.decode("utf-8", "replace").count("\ufffd") <= 1:  # 1: a character cut at 1024
        return "it holds text"
    return "no JPEG, PNG, BMP, TIFF or WebP header"


def _truncated(kind: str, data: bytes) -> bool:
    if kind == "JPEG":
        # Entropy-coded data never holds FF D9 or FF DA (every FF in it is followed by 00
        # or a restart marker), so a complete JPEG has an end-of-image marker after its
        # last start-of-scan; an EXIF thumbnail's markers all come before the main scan.
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if kind == "PNG":  # the IEND chunk follows the last IDAT chunk
        return data.rfind(b"IEND") < data.rfind(b"IDAT")
    return False


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _without_icc_profile(data: bytes) -> bytes:
    """A PNG without its iCCP chunk (anything else unchanged).

    OpenCV ignores colour profiles, but libpng still parses them and prints "libpng warning:
    iCCP: ..." on stderr for a profile it dislikes, from C, on every run (issue 14: the demo's
    photos have such profiles). Dropping the chunk before decoding changes no pixel."""
    if not data.startswith(PNG_SIGNATURE) or b"iCCP" not in data:
        return data
    chunks, at = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        end = at + 12 + length  # length, type, data, CRC
        if data[at + 4:at + 8] != b"iCCP":
            chunks.append(data[at:end])
        if data[at + 4:at + 8] == b"IEND" or end > len(data):
            chunks.append(data[end:])  # anything after IEND (or a cut-off chunk) stays as it was
            break
        at = end
    else:
        chunks.append(data[at:])
    return b"".join(chunks)


def decode_image(data: bytes, name: str):
    """BGR uint8 HxWx3 from encoded bytes, as Ultralytics reads images (cv2.IMREAD_COLOR):
    grayscale is repeated into 3 channels, 16-bit keeps its high byte, CMYK is converted; then
    the view `name` ends with, if any.
    Raises UnusableImage, after `check_encoded`, for what OpenCV cannot decode."""
    cv2 = require("cv2", "yolo")
    np = require("numpy", "core")
    check_encoded(data, name)
    image = cv2.imdecode(np.frombuffer(_without_icc_profile(data), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UnusableImage(f"{name}: corrupt image (OpenCV cannot decode it); replace it or remove it from the set")
    return apply_view(image, view_of(name))


@dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes the model's input (recipe: `input.preprocess`).

    The defaults are Ultralytics' (what its predictor and validator feed YOLO models):
    letterbox with pad 114, RGB, /255. IMAGENET is torchvision's classification preset
    (`weights.transforms()`): the shorter side resized to 256 for a 224 crop (the crop over
    0.875), bilinear as PIL does it, centre crop, /255, ImageNet mean and std."""

    resize: str = "letterbox"  # letterbox | shortest_edge (then a centre crop) | stretch
    resize_to: int | None = None  # shortest_edge: the shorter side before the crop; None: crop / 0.875
    pad: int = PAD_VALUE  # letterbox padding, 0..255
    channels: str = "rgb"  # rgb | bgr: the order the model takes
    scale: float = 255.0  # pixel values are divided by this, then
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # have the mean subtracted and
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # are divided by the std, per channel


ULTRALYTICS = Preprocess()
IMAGENET = Preprocess(resize="shortest_edge", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PRESETS = {"ultralytics": ULTRALYTICS, "imagenet": IMAGENET}


def ultralytics_feed(task: str, height: int, width: int) -> Preprocess:
    """How Ultralytics' own predictor feeds a model of `task`, which `YOLO("x.engine")` applies
    whatever the recipe says: letterbox /255 for detection tasks; for classify its
    `classify_transforms` (ultralytics/data/augment.py): the shorter side to the input size, a
    centre crop, /255, no mean or std (a non-square size is resized to it exactly)."""
    if task != "classify":
        return ULTRALYTICS
    if height != width:
        return Preprocess(resize="stretch")
    return Preprocess(resize="shortest_edge", resize_to=height)


def same_feed(a: Preprocess, b: Preprocess) -> bool:
    """Whether two ways of feeding give the same pixels (the pad value only counts for letterbox)."""
    def key(how: Preprocess) -> Preprocess:
        return how if how.resize == "letterbox" else replace(how, pad=PAD_VALUE)
    return key(a) == key(b)


def preprocess(image, height: int, width: int, how: Preprocess = ULTRALYTICS):
    """BGR uint8 image -> 1x3xHxW float32, as the recipe's model is fed (`how`)."""
    np = require("numpy", "core")
    if how.resize == "letterbox":
        sized = letterbox(image, height, width, how.pad)
    elif how.resize == "stretch":
        sized = require("cv2", "yolo").resize(image, (width, height), interpolation=1)  # 1: INTER_LINEAR
    else:
        sized = _shortest_edge_and_centre_crop(image, height, width, how.resize_to)
    pixels = sized[..., ::-1] if how.channels == "rgb" else sized
    x = pixels.astype(np.float32) / np.float32(how.scale)
    if how.mean != (0.0, 0.0, 0.0) or how.std != (1.0, 1.0, 1.0):
        x = (x - np.asarray(how.mean, np.float32)) / np.asarray(how.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def _shortest_edge_and_centre_crop(image, height: int, width: int, resize_to: int | None):
    """torchvision's Resize(shorter side) then CenterCrop on a PIL image, on a BGR array.

    PIL's bilinear filter widens with the scale (it antialiases), unlike OpenCV's INTER_LINEAR,
    so the resize is PIL's own: the pixels then match torchvision's transforms, which is what
    a classifier trained with them saw. The longer side is truncated, as torchvision does."""
    np = require("numpy", "core")
    from PIL import Image

    short = resize_to or round(min(height, width) / 0.875)
    h, w = image.shape[:2]
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    rgb = Image.fromarray(np.ascontiguousarray(image[..., ::-1])).resize((new_w, new_h), Image.BILINEAR)
    top, left = round((new_h - height) / 2.0), round((new_w - width) / 2.0)
    cropped = np.asarray(rgb)[max(top, 0):max(top, 0) + height, max(left, 0):max(left, 0) + width]
    if cropped.shape[:2] != (height, width):
        raise StageError(f"input.preprocess: resize_to {short} leaves {new_w}x{new_h}, smaller than the "
                         f"{width}x{height} crop; raise resize_to")
    return np.ascontiguousarray(cropped[..., ::-1])  # back to BGR, as every other path holds it
