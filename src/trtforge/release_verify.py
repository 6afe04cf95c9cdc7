"""`trtforge verify-package`: refuse a damaged or tampered release archive before anyone
deploys it, without extracting anything.

Measured on the archives the package stage writes: `tarfile` alone does not notice a
flipped byte inside the gzip stream (it stops reading at the tar end marker, before the
gzip CRC), and extracting is not all-or-nothing (a bad member half-way leaves the earlier
ones on disk). So this reads the archive as a stream, in a fixed order where each check
relies on the ones before it:

1. the sidecar `<archive>.sha256`, if present: any changed byte, before decompressing;
2. the whole gzip stream, so its CRC and length are checked, with a size and ratio limit
   so a decompression bomb is refused while it is being read;
3. every tar member's name and type (nothing outside `<stem>/`, no links, no devices, no
   duplicates), hashing each regular file as it streams past;
4. the manifest: every listed file present with its sha256 and size, nothing unlisted;
5. whether this host can load the engine at all (TensorRT version, GPU compute capability).

Every problem is a `PackageError` with one line naming the archive and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from .errors import TrtforgeError

FORMAT = "trtforge-release/1"  # the package stage's manifest format
SUFFIX = ".tar.gz"
CHUNK = 1 << 20
RATIO_FLOOR = 4 << 20  # below this much output the ratio says nothing (tiny text files compress 100x)
MANIFEST = "manifest.json"
MANIFEST_MAX = 16 << 20  # the only member held in memory; real manifests are a few KiB
SIDECAR_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class PackageError(TrtforgeError):
    """A release archive that must not be deployed (damaged, tampered, or not for this host)."""

    def __init__(self, archive: Path, problem: str) -> None:
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
    hashes, manifest_bytes = scan_members(path, stem)
    manifest = check_manifest(path, hashes, manifest_bytes)
    device = manifest.get("device") if isinstance(manifest.get("device"), dict) else {}
    return {
        "archive": str(path),
        "format": manifest["format"],
        "files": len(manifest["files"]),
        "bytes": uncompressed,
        "sidecar": sidecar,
        "tensorrt": manifest.get("tensorrt"),
        "gpu": device.get("gpu"),
        "compute_capability": device.get("compute_capability"),
        "host_check": check_host(path, manifest),
    }


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
    lines = sidecar.read_text(errors="replace").strip().splitlines()
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
    that; `max_bytes` is the bound that always holds. Returns the uncompressed size.
    """
    compressed = path.stat().st_size
    if compressed == 0:
        raise PackageError(path, "empty file")
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise PackageError(path, f"refused: decompresses to more than {max_bytes} bytes "
                                             "(a decompression bomb, or raise the limit)")
                if total > RATIO_FLOOR and total > max_ratio * compressed:
                    raise PackageError(path, f"refused: compression ratio above {max_ratio:g}:1 "
                                             f"({compressed} bytes decompress to more than {total}; a decompression bomb)")
    except EOFError as exc:
        raise PackageError(path, f"truncated: the gzip stream ends early ({exc})") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise PackageError(path, f"corrupt gzip data ({exc})") from exc
    return total


def _check_name(path: Path, stem: str, member: tarfile.TarInfo) -> str:
    """A member's path relative to `<stem>/` ("" for the top folder), or PackageError."""
    name = member.name
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
        return f"is a symlink (to '{member.linkname}')"
    if member.islnk():
        return f"is a hard link (to '{member.linkname}')"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        return f"has tar type {member.type!r}; only regular files and folders belong in a release"
    return None


def _hash_member(stream: BinaryIO, keep: bool) -> tuple[str, int, bytes]:
    """sha256 and size of a member's content; its first bytes too when `keep` (the manifest)."""
    digest, size, head = hashlib.sha256(), 0, bytearray()
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if keep and len(head) <= MANIFEST_MAX:
            head += chunk
    return digest.hexdigest(), size, bytes(head)


def scan_members(path: Path, stem: str) -> tuple[dict[str, tuple[str, int]], bytes | None]:
    """3. Check each member's name and type and hash each regular file, streaming (`r|gz`).

    Returns {relative name: (sha256, bytes)} and the manifest's bytes (None if absent).
    """
    hashes: dict[str, tuple[str, int]] = {}
    seen: set[str] = set()
    manifest = None
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                relative = _check_name(path, stem, member)
                problem = _type_problem(member)
                if problem:
                    raise PackageError(path, f"member '{member.name}' {problem}")
                if member.name in seen:
                    raise PackageError(path, f"member '{member.name}' appears more than once")
                seen.add(member.name)
                if member.isdir():
                    continue
                if not relative:
                    raise PackageError(path, f"member '{member.name}' is a file where the top folder belongs")
                digest, size, head = _hash_member(tar.extractfile(member), relative == MANIFEST)
                if relative == MANIFEST:
                    if size > MANIFEST_MAX:
                        raise PackageError(path, f"{MANIFEST} is {size} bytes, too large to be a manifest")
                    manifest = head
                else:
                    hashes[relative] = (digest, size)
    except tarfile.TarError as exc:
        raise PackageError(path, f"not a readable tar archive ({exc})") from exc
    return hashes, manifest


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
