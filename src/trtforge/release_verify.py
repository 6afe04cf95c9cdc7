"""`trtforge verify-package`: refuse a damaged or tampered release archive before anyone
deploys it, without extracting anything.

Measured on the archives the package stage writes: `tarfile` alone does not notice a
flipped byte inside the gzip stream (it stops reading at the tar end marker, before the
gzip CRC), and extracting is not all-or-nothing (a bad member half-way leaves the earlier
ones on disk). So this reads the archive as a stream, in a fixed order where each check
relies on the ones before it:

1. the sidecar `<archive>.sha256`, if present: any changed byte, before decompressing;
2. the whole gzip stream, so its CRC and length are checked, with a size and ratio limit
   so a decompression bomb is refused while it is being read, and nothing after it (the
   package stage writes one gzip stream; `gzip` would read an appended one as more data);
3. every tar member's name, type, mode and owner, exactly as the package stage writes them
   (`tar -x` as root restores setuid bits and owners), hashing each regular file in chunks
   as it streams past; then nothing but zero padding after the last member (`tarfile` stops
   at the first zero block, but `tar -i` and other readers go on);
4. the manifest: every listed file present with its sha256 and size, nothing unlisted;
   then the engine against the sha256 the engine stage recorded in summary.json;
5. whether this host can load the engine at all (TensorRT version, GPU compute capability).

Names are checked for what breaks elsewhere: control characters (a newline or an escape
sequence in a name rewrites what a terminal or a log shows) and twins that differ only in
case or Unicode normalisation (one overwrites the other on macOS and Windows filesystems).
Only the manifest and summary.json are held in memory, each capped before it is read.

Every problem is a `PackageError` with one line naming the archive and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
import unicodedata
import zlib
from pathlib import Path
from typing import BinaryIO

from .errors import TrtforgeError
from .stages.package import DIR_MODE, ENGINE, FORMAT, OWNER, member_mode

SUFFIX = ".tar.gz"
CHUNK = 1 << 20
RATIO_FLOOR = 4 << 20  # below this much output the ratio says nothing (tiny text files compress 100x)
MANIFEST, SUMMARY = "manifest.json", "summary.json"
MANIFEST_MAX = 16 << 20  # the JSON members held in memory are capped at this; real ones are a few KiB
SIDECAR_MAX = 4096  # one sha256sum line: 64 hex digits, two characters and the archive's name
SIDECAR_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
TRITON_PLAN = re.compile(r"^triton/[^/]+/1/model\.plan$")  # the package stage's copy of the engine
# PAX records that only restate header fields tarfile parses (and the checks below see);
# any other (SCHILY.xattr.*, LIBARCHIVE.xattr.*, ACLs, GNU.sparse.*) is something a tar
# program may restore, such as a file capability, and the package stage writes none.
PAX_KEYS = {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime"}


class PackageError(TrtforgeError):
    """A release archive that must not be deployed (damaged, tampered, or not for this host)."""

    def __init__(self, archive: Path, problem: str) -> None:
        problem = _shown(problem)  # names and manifest fields come from the archive: no newline or ESC gets out
        self.archive, self.problem = archive, problem
        super().__init__(f"{archive}: {problem}")


def verify_archive(path: Path, *, max_bytes: int = 64 << 30, max_ratio: float = 200.0) -> dict:
    """Verify a `<stem>.tar.gz` release archive; return a report dict or raise PackageError.

    Reads the file twice (the sidecar hash, then gzip and tar as streams) and writes nothing.
    Deflate cannot exceed about 1030:1, and releases (weights, engines) compress about 1.1:1,
    so `max_ratio` 200 only ever refuses a crafted archive.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX) or len(path.name) == len(SUFFIX):
        raise PackageError(path, f"not a release archive name: expected <stem>{SUFFIX}")
    stem = path.name[: -len(SUFFIX)]
    sidecar = check_sidecar(path)
    uncompressed = check_gzip_stream(path, max_bytes=max_bytes, max_ratio=max_ratio)
    hashes, kept = scan_members(path, stem)
    manifest = check_manifest(path, hashes, kept.get(MANIFEST))
    engine_sha256 = check_engine_hash(path, hashes, kept.get(SUMMARY))
    device = manifest.get("device") if isinstance(manifest.get("device"), dict) else {}
    report = {
        "archive": str(path),
        "format": manifest["format"],
        "files": len(manifest["files"]),
        "bytes": uncompressed,
        "sidecar": sidecar,
        "tensorrt": manifest.get("tensorrt"),
        "gpu": device.get("gpu"),
        "compute_capability": device.get("compute_capability"),
        "engine_sha256": engine_sha256,
        "host_check": check_host(path, manifest),
    }
    # the manifest's strings are printed as the report: escape what a terminal would act on
    return {key: _shown(value) if isinstance(value, str) else value for key, value in report.items()}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sidecar(path: Path) -> str:
    """1. The sidecar's sha256 covers every byte: a flipped bit is caught before decompressing."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return "absent"
    with sidecar.open("rb") as fh:
        text = fh.read(SIDECAR_MAX + 1)
    if len(text) > SIDECAR_MAX:
        raise PackageError(path, f"{sidecar.name} is {sidecar.stat().st_size} bytes, not one sha256sum line "
                                 f"(at most {SIDECAR_MAX}); refused without reading it")
    lines = text.decode(errors="replace").strip().splitlines()
    match = SIDECAR_LINE.match(lines[0]) if len(lines) == 1 else None
    if not match:
        raise PackageError(path, f"{sidecar.name} is not one sha256sum line ('<64 hex>  {path.name}')")
    expected, named = match.group(1).lower(), match.group(2)
    if Path(named).name != path.name:
        raise PackageError(path, f"{sidecar.name} is for '{named}', not this archive (renamed?)")
    actual = _sha256_file(path)
    if actual != expected:
        raise PackageError(path, f"sha256 {actual[:16]}... does not match {sidecar.name} ({expected[:16]}...): "
                                 "the file is damaged or was changed")
    return "matched"


def check_gzip_stream(path: Path, *, max_bytes: int, max_ratio: float) -> int:
    """2. Decompress everything, discarding it: gzip checks CRC and length only at its end.

    Stops as soon as the output passes `max_bytes`, or `max_ratio` times the file's size
    once past RATIO_FLOOR. Deflate tops out near 1030:1, so the ratio only trips below
    that; `max_bytes` is the bound that always holds. zlib reads exactly one gzip member,
    so bytes after it are seen (Python's `gzip` reads on into a second member and skips
    zero padding silently). Returns the uncompressed size.
    """
    compressed = path.stat().st_size
    if compressed == 0:
        raise PackageError(path, "empty file")
    total = 0
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: zlib checks CRC and length
    with path.open("rb") as fh:
        magic = fh.read(2)
        if magic != b"\x1f\x8b":
            raise PackageError(path, f"corrupt gzip data (Not a gzipped file ({magic!r}))")
        fh.seek(0)
        try:
            while not inflate.eof:
                data = inflate.unconsumed_tail or fh.read(CHUNK)
                chunk = inflate.decompress(data, CHUNK)
                if not data and not chunk:
                    raise PackageError(path, "truncated: the gzip stream ends early (Compressed file ended "
                                             "before the end-of-stream marker was reached)")
                total += len(chunk)
                if total > max_bytes:
                    raise PackageError(path, f"refused: decompresses to more than {max_bytes} bytes "
                                             "(a decompression bomb, or raise the limit)")
                if total > RATIO_FLOOR and total > max_ratio * compressed:
                    raise PackageError(path, f"refused: compression ratio above {max_ratio:g}:1 "
                                             f"({compressed} bytes decompress to more than {total}; a decompression bomb)")
        except zlib.error as exc:
            raise PackageError(path, f"corrupt gzip data ({exc})") from exc
        end = fh.tell() - len(inflate.unused_data)
    if end != compressed:
        raise PackageError(path, f"{compressed - end} bytes after the end of the gzip stream at byte {end}: "
                                 "data appended to the archive (the package stage writes one gzip stream)")
    return total


def _shown(name: str) -> str:
    """A name as a message may print it: escaped when it holds anything non-printable."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def _check_name(path: Path, stem: str, member: tarfile.TarInfo) -> str:
    """A member's path relative to `<stem>/` ("" for the top folder), or PackageError."""
    name = member.name
    odd = next((c for c in name if not c.isprintable()), None)
    if odd is not None:  # before any message prints the name: a newline or ESC would reach the terminal
        raise PackageError(path, f"member '{_shown(name)}' has a control or non-printable character "
                                 f"(U+{ord(odd):04X}) in its name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise PackageError(path, f"member '{name}' has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise PackageError(path, f"member '{name}' has a '..' component")
    if "" in parts or "." in parts or "\\" in name or "\0" in name:
        raise PackageError(path, f"member '{name}' has a non-canonical name")
    if parts[0] != stem:
        raise PackageError(path, f"member '{name}' is not under {stem}/")
    return "/".join(parts[1:])


def _type_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return f"is a symlink (to '{_shown(member.linkname)}')"
    if member.islnk():
        return f"is a hard link (to '{_shown(member.linkname)}')"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        return f"has tar type {member.type!r}; only regular files and folders belong in a release"
    return None


def _mode_problem(member: tarfile.TarInfo, relative: str) -> str | None:
    """What is wrong with a member's mode or owner, compared with what the package stage writes."""
    want = DIR_MODE if member.isdir() else member_mode(relative)
    if member.mode != want:
        bits = [word for bit, word in ((0o4000, "setuid"), (0o2000, "setgid"), (0o1000, "sticky"),
                                       (0o0002, "world-writable"), (0o0020, "group-writable")) if member.mode & bit]
        return (f"has mode {member.mode:04o}{' (' + ', '.join(bits) + ')' if bits else ''}, not {want:04o}: "
                f"a release has {DIR_MODE:04o} folders, {member_mode('x.sh'):04o} *.sh scripts, "
                f"{member_mode('x'):04o} other files")
    owner = {"uid": member.uid, "gid": member.gid, "uname": member.uname, "gname": member.gname}
    if owner != OWNER:
        return (f"is owned by uid {member.uid}, gid {member.gid} (names '{_shown(member.uname)}', "
                f"'{_shown(member.gname)}'), not uid 0, gid 0 with no names: `tar -x` as root restores owners")
    extra = sorted(set(member.pax_headers) - PAX_KEYS)
    if extra:
        return (f"carries the PAX record '{_shown(extra[0])}' (extended attributes, ACLs and sparse maps are "
                "restored by some tar programs; a release has none)")
    return None


def _fold(name: str) -> str:
    """The name as a case-insensitive, normalising filesystem sees it (APFS, NTFS): Unicode
    canonical caseless matching, and the trailing dots and spaces Windows drops."""
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())
    return "/".join(part.rstrip(". ") for part in folded.split("/"))


def _check_twins(path: Path, name: str, folded: dict[str, str]) -> None:
    """Refuse a name that lands on the same path as an earlier one (or one of its folders)."""
    parts = name.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        other = folded.setdefault(_fold(prefix), prefix)
        if other != prefix:
            a, b = _shown(other), _shown(prefix)
            if unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b):  # alike printed: code points
                a, b = ascii(other)[1:-1], ascii(prefix)[1:-1]
            which = "members" if prefix == name else f"member '{_shown(name)}': paths"
            raise PackageError(path, f"{which} '{a}' and '{b}' differ only in case or Unicode normalisation; "
                                     "one overwrites the other on macOS and Windows")


def _hash_member(stream: BinaryIO, keep: bool) -> tuple[str, int, bytes]:
    """sha256 and size of a member's content, read in chunks; the content too when `keep`
    (the caller has checked its size against MANIFEST_MAX)."""
    digest, size, kept = hashlib.sha256(), 0, bytearray()
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if keep:
            kept += chunk
    return digest.hexdigest(), size, bytes(kept)


class _Tap:
    """The decompressed tar stream as tarfile reads it, remembering the last bytes handed
    out: tarfile reads ahead of where the archive ended, and those bytes must be checked too."""

    TAIL = 64 << 10  # tarfile's stream mode reads ahead at most one record (10 KiB)

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.pos, self.tail = stream, 0, b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.pos += len(data)
        self.tail = data[-self.TAIL:] if len(data) >= self.TAIL else (self.tail + data)[-self.TAIL:]
        return data

    def after(self, offset: int) -> bytes:
        """The bytes handed out past `offset`."""
        past = self.pos - offset
        if not 0 <= past <= len(self.tail):
            raise RuntimeError(f"tar end at {offset}, {self.pos} bytes read: beyond the {self.TAIL}-byte tail")
        return self.tail[len(self.tail) - past:] if past else b""


def _check_end(path: Path, tap: _Tap, end: int, last: str) -> None:
    """After the last member: zero padding only (the end marker is two zero blocks). tarfile
    stops at the first zero block or bad header; `tar -i` and other readers go on."""
    trailing, dirty = 0, False
    chunk = tap.after(end)
    while chunk:
        trailing += len(chunk)
        dirty = dirty or chunk.count(0) != len(chunk)
        chunk = tap.read(CHUNK)
    if dirty:
        raise PackageError(path, f"data after the tar end marker: {trailing} bytes follow the last member "
                                 f"'{_shown(last)}' at tar offset {end} and are not all zero padding")


def scan_members(path: Path, stem: str) -> tuple[dict[str, tuple[str, int]], dict[str, bytes]]:
    """3. Check each member's name, type, mode and owner and hash each regular file, streaming.

    Returns {relative name: (sha256, bytes)} and the bytes of manifest.json and summary.json
    (those present), each refused before reading if larger than MANIFEST_MAX.
    """
    hashes: dict[str, tuple[str, int]] = {}
    kept: dict[str, bytes] = {}
    seen: set[str] = set()
    folded: dict[str, str] = {}
    last = "(none)"
    try:
        with gzip.open(path, "rb") as stream:
            tap = _Tap(stream)
            with tarfile.open(fileobj=tap, mode="r|") as tar:
                for member in tar:
                    relative = _check_name(path, stem, member)
                    name = _shown(member.name)
                    problem = _type_problem(member) or _mode_problem(member, relative)
                    if problem:
                        raise PackageError(path, f"member '{name}' {problem}")
                    if member.name in seen:
                        raise PackageError(path, f"member '{name}' appears more than once")
                    seen.add(member.name)
                    _check_twins(path, member.name, folded)
                    last = member.name
                    if member.isdir():
                        continue
                    if not relative:
                        raise PackageError(path, f"member '{name}' is a file where the top folder belongs")
                    keep = relative in (MANIFEST, SUMMARY)
                    if keep and member.size > MANIFEST_MAX:
                        raise PackageError(path, f"member '{name}' is {member.size} bytes, more than the "
                                                 f"{MANIFEST_MAX} a release's {relative} may be; refused without reading it")
                    digest, size, content = _hash_member(tar.extractfile(member), keep)
                    if relative == MANIFEST:
                        kept[MANIFEST] = content
                    else:
                        hashes[relative] = (digest, size)
                        if keep:
                            kept[relative] = content
                _check_end(path, tap, tar.offset, last)
    except tarfile.TarError as exc:
        raise PackageError(path, f"not a readable tar archive ({exc})") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # step 2 passed: the file changed since
        raise PackageError(path, f"the gzip stream changed while it was being verified ({exc}); verify it again") from exc
    return hashes, kept


def check_manifest(path: Path, hashes: dict[str, tuple[str, int]], raw: bytes | None) -> dict:
    """4. The manifest must list exactly the files present, each with its sha256 and size."""
    if raw is None:
        raise PackageError(path, f"no {MANIFEST} in the archive")
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(path, f"{MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PackageError(path, f"{MANIFEST}: format is {found!r}, expected {FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and type(e.get("bytes")) is int
            for e in files.values()):
        raise PackageError(path, f"{MANIFEST}: 'files' must map each path to {{\"sha256\": ..., \"bytes\": ...}}")
    if MANIFEST in files:
        raise PackageError(path, f"{MANIFEST} lists itself; it cannot hold its own hash")

    def names(found: list[str]) -> str:
        return ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")

    missing = sorted(set(files) - set(hashes))
    if missing:
        raise PackageError(path, f"listed in {MANIFEST} but missing from the archive: {names(missing)}")
    for name in sorted(files):
        digest, size = hashes[name]
        want = files[name]
        if digest != want["sha256"].lower() or size != want["bytes"]:
            raise PackageError(path, f"{name}: content does not match {MANIFEST} (sha256 {digest[:16]}..., "
                                     f"{size} bytes; manifest says {want['sha256'][:16]}..., {want['bytes']} bytes)")
    extra = sorted(set(hashes) - set(files))
    if extra:
        raise PackageError(path, f"not listed in {MANIFEST}: {names(extra)}")
    return manifest


def check_engine_hash(path: Path, hashes: dict[str, tuple[str, int]], raw: bytes | None) -> str | None:
    """4b. The engine stage records the engine's sha256 in summary.json: the engine shipped
    (and its Triton copy) must be that one, not one swapped in after the build. Returns the
    recorded sha256, or None when the archive has no summary.json naming one."""
    if raw is None:
        return None
    try:
        summary = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(path, f"{SUMMARY} is not valid JSON ({exc})") from exc
    recorded = summary.get("engine_sha256") if isinstance(summary, dict) else None
    if recorded is None:
        return None
    if not isinstance(recorded, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", recorded):
        raise PackageError(path, f"{SUMMARY}: engine_sha256 is {recorded!r}, not a sha256")
    if ENGINE not in hashes:
        raise PackageError(path, f"{SUMMARY} records engine sha256 {recorded[:16]}... but the archive has no {ENGINE}")
    for name in sorted(n for n in hashes if n == ENGINE or TRITON_PLAN.match(n)):
        digest = hashes[name][0]
        if digest != recorded.lower():
            raise PackageError(path, f"{name}: sha256 {digest[:16]}... is not the engine {SUMMARY} records "
                                     f"({recorded[:16]}...): the engine was changed after it was built")
    return recorded.lower()


def _local_compute_capabilities() -> list[str] | None:
    """Compute capabilities of this host's GPUs via NVML, or None when none is visible."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
    except Exception:  # no library, no driver: "cannot tell", not "no match"
        return None
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(index))
            found.append(f"{major}.{minor}")
        return found or None
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


def check_host(path: Path, manifest: dict) -> str:
    """5. Can this host load the engine? A plan only loads on the TensorRT version and GPU
    architecture it was built for. Unknown is "skipped: <reason>", never "passed"."""
    try:
        import tensorrt
    except ImportError:
        return "skipped: TensorRT not installed"
    except Exception as exc:  # installed but broken (missing libnvinfer, CUDA mismatch)
        return f"skipped: TensorRT does not import ({type(exc).__name__}: {exc})"
    built_trt = str(manifest.get("tensorrt") or "")
    local_trt = str(getattr(tensorrt, "__version__", ""))
    if not re.match(r"^\d+\.\d+", built_trt):
        return f"skipped: {MANIFEST} does not say which TensorRT built it ({built_trt or 'missing'})"
    if built_trt.split(".")[:2] != local_trt.split(".")[:2]:
        raise PackageError(path, f"built for TensorRT {built_trt}, this host has TensorRT {local_trt}: "
                                 "the engine will not load here")
    device = manifest.get("device") if isinstance(manifest.get("device"), dict) else {}
    built_cc = str(device.get("compute_capability") or "")
    if not built_cc or built_cc == "unknown":
        return f"skipped: {MANIFEST} does not say which GPU architecture it was built for"
    local = _local_compute_capabilities()
    if local is None:
        return f"skipped: no NVIDIA GPU visible (TensorRT {local_trt} matches)"
    if built_cc not in local:
        gpu = device.get("gpu") or "unknown GPU"
        raise PackageError(path, f"built for compute capability {built_cc} ({gpu}), this host's GPUs are "
                                 f"{', '.join(sorted(set(local)))}: the engine will not load here")
    return "passed"
