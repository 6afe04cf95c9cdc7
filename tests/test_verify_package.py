"""`trtforge verify-package` on real archives built here in the package stage's format.

Each refused case is a specific damage or tampering a deployment could meet; each test
asserts both that it is refused and that the one-line message names the actual problem.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest

from trtforge.release_verify import PackageError, verify_archive

STEM = "yolov8n-fp16-trt10.8.0-sm86-0123abcd"
TRTFORGE = Path(sys.executable).parent / "trtforge"


# ----------------------------------------------------------------------------- builder

def good_members() -> dict[str, bytes]:
    rnd = random.Random(0)  # incompressible, so the compressed stream has a real middle
    return {
        "engine.plan": rnd.randbytes(64 << 10),
        "model.onnx": rnd.randbytes(32 << 10),
        "calib.cache": b"TRT-8600-EntropyCalibration2\nimages: 3c010a14\n",
        "check.json": b'{"passed": true}\n',
        "reproduce.sh": b"#!/bin/sh\ntrtexec --onnx=model.onnx --saveEngine=engine.plan\n",
        "triton/yolov8n_fp16/config.pbtxt": b'name: "yolov8n_fp16"\nplatform: "tensorrt_plan"\n',
        "triton/yolov8n_fp16/1/model.plan": b"plan",
    }


def manifest_for(members: dict[str, bytes], **extra) -> bytes:
    manifest = {
        "format": "trtforge-release/1",
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in sorted(members.items())},
        "tensorrt": "10.8.0",
        "device": {"gpu": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"},
        **extra,
    }
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    """A tar member with the package stage's reproducible settings; `name` is used verbatim."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o755 if kind == tarfile.DIRTYPE or name.endswith(".sh") else 0o644
    return info, data


def write_archive(folder: Path, entries: list[tuple], *, stem: str = STEM, sidecar: bool = True) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    archive = folder / f"{stem}.tar.gz"
    archive.write_bytes(out.getvalue())
    if sidecar:
        digest = hashlib.sha256(out.getvalue()).hexdigest()
        archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")
    return archive


def build(folder: Path, members: dict[str, bytes] | None = None, *, manifest: bytes | None = None,
          extra: list[tuple] = (), sidecar: bool = True, dirs: bool = False) -> Path:
    """A release archive of `members` (default: a good one) with `manifest` (default: right
    for `members`) and `extra` raw entries appended after the sorted files."""
    members = good_members() if members is None else members
    files = dict(members)
    files["manifest.json"] = manifest_for(members) if manifest is None else manifest
    entries = [entry(f"{STEM}/{name}", files[name]) for name in sorted(files)]
    if dirs:
        entries = [entry(STEM, kind=tarfile.DIRTYPE), entry(f"{STEM}/triton", kind=tarfile.DIRTYPE)] + entries
    return write_archive(folder, entries + list(extra), sidecar=sidecar)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(autouse=True)
def no_tensorrt(monkeypatch):
    """The host check is tested explicitly below; elsewhere behave as on a host without TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def refused(archive: Path, match: str, **limits) -> PackageError:
    with pytest.raises(PackageError, match=match) as info:
        verify_archive(archive, **limits)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{archive}: ")
    return info.value


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([TRTFORGE, *map(str, args)], capture_output=True, text=True, timeout=30)


# ----------------------------------------------------------------------------- passing

@pytest.mark.parametrize("sidecar, dirs", [(True, False), (False, True)])
def test_good_archive_passes(tmp_path, sidecar, dirs):
    archive = build(tmp_path, sidecar=sidecar, dirs=dirs)
    report = verify_archive(archive)
    assert report["files"] == len(good_members())
    assert report["tensorrt"] == "10.8.0" and report["compute_capability"] == "8.6"
    assert report["sidecar"] == ("matched" if sidecar else "absent")
    assert report["host_check"] == "skipped: TensorRT not installed"


def test_good_archive_passes_on_the_command_line(tmp_path):
    archive = build(tmp_path)
    result = run_cli("verify-package", archive)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK  {archive.name}\n") and "sha256 matches" in result.stdout
    as_json = run_cli("verify-package", "--json", archive)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["files"] == len(good_members())


# ----------------------------------------------------------------------------- damage

def flip_middle_byte(archive: Path) -> None:
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate data: header is 10 bytes, trailer 8
    archive.write_bytes(bytes(data))


def test_flipped_byte_is_caught_by_the_sidecar_before_decompressing(tmp_path):
    archive = build(tmp_path)
    flip_middle_byte(archive)
    refused(archive, r"sha256 .* does not match .*\.sha256")
    result = run_cli("verify-package", archive)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"trtforge: {archive}: sha256 ") and result.stderr.count("\n") == 1


def test_flipped_byte_without_sidecar_is_caught_by_gzip(tmp_path):
    archive = build(tmp_path, sidecar=False)
    flip_middle_byte(archive)
    refused(archive, r"corrupt gzip data")


def test_truncated_archive(tmp_path):
    archive = build(tmp_path, sidecar=False)
    archive.write_bytes(archive.read_bytes()[:-1000])
    refused(archive, r"truncated: the gzip stream ends early")
    assert run_cli("verify-package", archive).returncode == 1


def test_not_gzip_and_empty(tmp_path):
    archive = tmp_path / f"{STEM}.tar.gz"
    archive.write_bytes(b"PK\x03\x04 not a gzip")
    refused(archive, r"corrupt gzip data \(Not a gzipped file")
    archive.write_bytes(b"")
    refused(archive, r"empty file")


def test_decompression_bomb_ratio(tmp_path):
    archive = build(tmp_path, {"engine.plan": bytes(6 << 20)})  # ~6 KiB compressed
    refused(archive, r"compression ratio above 100:1", max_ratio=100)


def test_decompression_bomb_size(tmp_path):
    archive = build(tmp_path)
    refused(archive, r"decompresses to more than 65536 bytes", max_bytes=64 << 10)


# ----------------------------------------------------------------------------- members

def test_file_in_manifest_missing_from_archive(tmp_path):
    members = good_members()
    manifest = manifest_for(members)
    del members["calib.cache"]
    refused(build(tmp_path, members, manifest=manifest), r"listed in manifest.json but missing .*: calib.cache$")


def test_file_content_differs_from_manifest(tmp_path):
    members = good_members()
    manifest = manifest_for(members)
    members["engine.plan"] = members["engine.plan"][:-1] + b"X"
    refused(build(tmp_path, members, manifest=manifest), r"^.*: engine.plan: content does not match manifest.json")


def test_extra_unlisted_file(tmp_path):
    manifest = manifest_for(good_members())
    members = {**good_members(), "backdoor.so": b"\x7fELF"}
    refused(build(tmp_path, members, manifest=manifest), r"not listed in manifest.json: backdoor.so$")


@pytest.mark.parametrize("name, match", [
    (f"{STEM}/../evil.sh", r"has a '\.\.' component"),
    (f"{STEM}/triton/../../evil.sh", r"has a '\.\.' component"),
    ("/etc/cron.d/evil", r"has an absolute path"),
    ("other-stem/engine.plan", rf"is not under {STEM}/"),
    (f"{STEM}/./engine.plan", r"has a non-canonical name"),
])
def test_unsafe_member_names(tmp_path, name, match):
    refused(build(tmp_path, extra=[entry(name, b"x")]), rf"member '.*' {match}")


@pytest.mark.parametrize("kind, linkname, match", [
    (tarfile.SYMTYPE, "/etc/passwd", r"is a symlink \(to '/etc/passwd'\)"),
    (tarfile.LNKTYPE, f"{STEM}/engine.plan", r"is a hard link"),
    (tarfile.CHRTYPE, "", r"is a device file"),
    (tarfile.BLKTYPE, "", r"is a device file"),
    (tarfile.FIFOTYPE, "", r"is a FIFO"),
])
def test_links_and_devices(tmp_path, kind, linkname, match):
    refused(build(tmp_path, extra=[entry(f"{STEM}/extra", kind=kind, linkname=linkname)]),
            rf"member '{STEM}/extra' {match}")


def test_duplicate_member(tmp_path):
    refused(build(tmp_path, extra=[entry(f"{STEM}/engine.plan", b"second copy wins on extraction")]),
            rf"member '{STEM}/engine.plan' appears more than once")


def test_wrong_top_folder_for_the_file_name(tmp_path):
    archive = build(tmp_path)
    renamed = archive.rename(tmp_path / "renamed.tar.gz")
    refused(renamed, r"member 'yolov8n-.*' is not under renamed/")


# ----------------------------------------------------------------------------- manifest

@pytest.mark.parametrize("manifest, match", [
    (None, r"no manifest.json in the archive"),
    (b"{not json", r"manifest.json is not valid JSON"),
    (b'{"format": "trtforge-release/2", "files": {}}', r"format is 'trtforge-release/2'"),
    (b"[1, 2]", r"format is 'list'"),
    (b'{"format": "trtforge-release/1", "files": ["engine.plan"]}', r"'files' must map each path"),
])
def test_missing_or_invalid_manifest(tmp_path, manifest, match):
    members = {**good_members()}
    if manifest is None:
        entries = [entry(f"{STEM}/{n}", members[n]) for n in sorted(members)]
        archive = write_archive(tmp_path, entries)
    else:
        archive = build(tmp_path, members, manifest=manifest)
    refused(archive, match)


def test_bad_sidecar(tmp_path):
    archive = build(tmp_path)
    sidecar = archive.with_name(archive.name + ".sha256")
    sidecar.write_text("not a hash\n")
    refused(archive, r"is not one sha256sum line")
    sidecar.write_text(f"{'0' * 64}  other.tar.gz\n")
    refused(archive, r"is for 'other.tar.gz', not this archive")


# ----------------------------------------------------------------------------- no writes

def test_verifying_never_creates_files(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # where an accidental extractall() would write
    cases = [[], [entry(f"{STEM}/../escape", b"x")], [entry(f"{STEM}/link", kind=tarfile.SYMTYPE, linkname="/tmp")]]
    archives = []
    for i, extra in enumerate(cases):
        (tmp_path / f"a{i}").mkdir()
        archives.append(build(tmp_path / f"a{i}", extra=extra))
    before = listing(tmp_path)
    verify_archive(archives[0])
    for archive in archives[1:]:
        with pytest.raises(PackageError):
            verify_archive(archive)
    assert run_cli("verify-package", archives[0]).returncode == 0
    assert listing(tmp_path) == before and listing(work) == []


# ----------------------------------------------------------------------------- host check

def fake_host(monkeypatch, trt: str, ccs: list[tuple[int, int]] | None) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=trt))
    if ccs is None:
        def init():
            raise RuntimeError("NVML Shared Library Not Found")
    else:
        def init():
            return None
    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(
        nvmlInit=init, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: len(ccs or []),
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetCudaComputeCapability=lambda h: ccs[h]))


def test_host_check_passes_on_a_matching_host(tmp_path, monkeypatch):
    fake_host(monkeypatch, "10.8.0.43", [(7, 5), (8, 6)])
    assert verify_archive(build(tmp_path))["host_check"] == "passed"


def test_host_check_other_tensorrt(tmp_path, monkeypatch):
    fake_host(monkeypatch, "10.3.0", [(8, 6)])
    refused(build(tmp_path), r"built for TensorRT 10.8.0, this host has TensorRT 10.3.0")


def test_host_check_other_gpu(tmp_path, monkeypatch):
    fake_host(monkeypatch, "10.8.0", [(8, 9)])
    refused(build(tmp_path), r"built for compute capability 8.6 \(NVIDIA GeForce RTX 3090\), this host's GPUs are 8.9")


def test_host_check_without_gpu_is_skipped_not_passed(tmp_path, monkeypatch):
    fake_host(monkeypatch, "10.8.0", None)
    assert verify_archive(build(tmp_path))["host_check"] == "skipped: no NVIDIA GPU visible (TensorRT 10.8.0 matches)"


# ----------------------------------------------------------------------------- CLI

def test_cli_missing_file_is_a_usage_error(tmp_path):
    result = run_cli("verify-package", tmp_path / "nope.tar.gz")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_cli_unexpected_error_is_one_line_unless_debug(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import trtforge.release_verify
    from trtforge.cli import main

    def boom(*args, **kwargs):
        raise ValueError("something broke")

    monkeypatch.setattr(trtforge.release_verify, "verify_archive", boom)
    archive = build(tmp_path)
    plain = CliRunner().invoke(main, ["verify-package", str(archive)])
    assert plain.exit_code == 1
    assert "unexpected error: ValueError: something broke" in plain.output and "--debug" in plain.output
    assert "Traceback" not in plain.output
    debug = CliRunner().invoke(main, ["--debug", "verify-package", str(archive)])
    assert isinstance(debug.exception, ValueError)
