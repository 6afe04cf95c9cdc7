"""The disk and the build state under faults, in real doit runs on real filesystems.

An unwritable artifacts/ (a read-only bind mount: tests run as root, so chmod would not stop
a write), a disk that fills up mid-write (a size-limited tmpfs, and RLIMIT_FSIZE), a state
DB that cannot be saved at the end of a run, a corrupt or foreign state DB, and Ctrl-C
during the export. Each ends in one line and a documented exit code, leaves no
half-written target under its real name, keeps the state DB readable, and a plain rerun
completes the build. Mounting needs root and a sandbox that allows it; where it does not,
those tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import copied, doit_env, executed, prepared_project, run_doit, sha256

from trtforge.atomic import disk_fault
from trtforge.doctor import check_state_db

pytestmark = pytest.mark.slow

# what the stage's one line advises, per errno (errors.disk_error_message)
FULL = "No space left on device; free space on that disk and rerun"
READ_ONLY = "Read-only file system; the filesystem is read-only; move the project to a writable disk and rerun"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One project whose export and surgery already ran; tests copy it."""
    return prepared_project(tmp_path_factory.mktemp("base"), "surgery:yolov8n")


@pytest.fixture
def project(exported, tmp_path) -> Path:
    return copied(exported, tmp_path)


def reseed(project: Path) -> None:
    """Change model.seed, so the export (and what reads it) must run again."""
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace("seed: 0", "seed: 1"))


def mount(*args: str | Path) -> None:
    result = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"this sandbox cannot mount ({result.stderr.strip()})")


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` as a read-only bind mount of itself: writes fail with EROFS, even for root."""
    mount("--bind", folder, folder)
    try:
        mount("-o", "remount,bind,ro", folder, folder)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[None]:
    """`folder`, with what it holds, on a tmpfs of `size`: writes past it fail with ENOSPC."""
    kept = folder.with_name(folder.name + ".kept")
    folder.rename(kept)
    folder.mkdir()
    try:
        mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder)
        shutil.copytree(kept, folder, dirs_exist_ok=True)  # copy2: mtimes kept, nothing reruns
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; return the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096):  # whole MiBs, then the last pages
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(chunk))
    return filler


def assert_state_db_readable(project: Path) -> None:
    db = project / "artifacts" / ".doit.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert check_state_db(project).status == "ok"
    listed = run_doit(project, "list")
    assert listed.returncode == 0 and "export" in listed.stdout, listed.stderr


def one_line_with(result: subprocess.CompletedProcess, text: str) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if text in line]
    return line


# ----------------------------------------------------------------------------- unwritable

def test_a_read_only_artifacts_folder_is_refused_in_one_line_before_any_work(project):
    artifacts = project / "artifacts"
    reseed(project)
    with read_only(artifacts):
        result = run_doit(project, "surgery:yolov8n")
        assert result.returncode == 3 and executed(result) == []
        assert result.stderr.strip().splitlines() == [f"ERROR: trtforge: cannot write {artifacts}: {READ_ONLY}"]
        assert run_doit(project, "list").returncode == 0  # commands that only read still work
    rerun = run_doit(project, "surgery:yolov8n")
    assert rerun.returncode == 0 and executed(rerun) == ["export:yolov8n", "surgery:yolov8n"], rerun.stdout


def test_a_stage_that_cannot_write_its_folder_fails_in_one_line_naming_the_target(project):
    out = project / "artifacts" / "yolov8n"
    before = sha256(out / "export.onnx")
    reseed(project)
    with read_only(out):
        result = run_doit(project, "surgery:yolov8n")
    assert result.returncode == 1 and executed(result) == ["export:yolov8n"]
    assert one_line_with(result, "cannot write") == f"export:yolov8n: cannot write {out / 'export.onnx'}: {READ_ONLY}"
    assert sha256(out / "export.onnx") == before and not list(out.glob("*trtforge-tmp*"))
    rerun = run_doit(project, "surgery:yolov8n")
    assert rerun.returncode == 0 and executed(rerun) == ["export:yolov8n", "surgery:yolov8n"], rerun.stdout


# ----------------------------------------------------------------------------- disk full

def test_a_disk_full_mid_export_keeps_the_old_output_and_a_readable_state(project):
    artifacts, out = project / "artifacts", project / "artifacts" / "yolov8n"
    before = sha256(out / "export.onnx")
    reseed(project)
    with small_disk(artifacts, "48m"):  # export.onnx and model.onnx at 160 px take 26 MB
        filler = fill(artifacts)
        result = run_doit(project, "surgery:yolov8n")
        assert result.returncode == 1 and executed(result) == ["export:yolov8n"], result.stdout + result.stderr
        assert one_line_with(result, "cannot write") == f"export:yolov8n: cannot write {out / 'export.onnx'}: {FULL}"
        assert sha256(out / "export.onnx") == before and not list(artifacts.rglob("*trtforge-tmp*"))
        assert_state_db_readable(project)  # with the disk still full

        filler.unlink()
        rerun = run_doit(project, "surgery:yolov8n")
        assert rerun.returncode == 0 and executed(rerun) == ["export:yolov8n", "surgery:yolov8n"], rerun.stdout
        assert sha256(out / "export.onnx") != before


def test_a_file_size_limit_is_one_line_not_a_kill(project):
    """`ulimit -f`: the kernel sends SIGXFSZ, which Python ignores, so the write raises EFBIG."""
    out = project / "artifacts" / "yolov8n"
    before = sha256(out / "export.onnx")
    reseed(project)

    def limit_file_size() -> None:  # 1 MiB: the state DB fits, the 12 MB ONNX does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    result = subprocess.run([sys.executable, "-m", "doit", "surgery:yolov8n"], cwd=project, env=doit_env(),
                            capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size)
    assert result.returncode == 1
    assert one_line_with(result, "cannot write") == (
        f"export:yolov8n: cannot write {out / 'export.onnx'}: File too large; "
        "the file size limit (ulimit -f) was reached; raise it and rerun")
    assert sha256(out / "export.onnx") == before and not list(out.glob("*trtforge-tmp*"))
    assert_state_db_readable(project)


# A user surgery pass is the one hook that runs inside a stage: this one (a test device, not a
# real pass) fills the disk, leaving room for exactly the model the stage then writes, so the
# stage succeeds and the disk is full when doit saves its state.
FILL_PLUGIN = '''\
import os
from trtforge.surgery import surgery_pass

@surgery_pass("fill_disk_but_the_model")
def fill_disk_but_the_model(model, folder):
    if os.environ.get("FILL_DISK"):
        page = os.statvfs(folder).f_frsize
        pages = os.statvfs(folder).f_bavail - -(-model.ByteSize() // page)
        with open(os.path.join(folder, "filler"), "wb") as f:
            for _ in range(pages):
                f.write(bytes(page))
    return model
'''


def test_a_state_db_that_cannot_be_saved_is_one_line_and_stays_readable(project):
    artifacts, model = project / "artifacts", project / "artifacts" / "yolov8n" / "model.onnx"
    (project / "plugins" / "fill.py").write_text(FILL_PLUGIN)
    recipe = project / "recipes" / "yolov8n.yaml"
    recipe.write_text(recipe.read_text().replace(
        "surgery: [fold_constants, slim, infer_shapes]",
        f"surgery: [fold_constants, slim, infer_shapes, fill_disk_but_the_model: {{folder: '{artifacts}'}}]"))
    good = sha256(model)
    model.unlink()  # so the new model's pages are all the stage writes: nothing is freed by the rename
    with small_disk(artifacts, "48m"):
        result = run_doit(project, "surgery:yolov8n", env={"FILL_DISK": "1"})
        assert result.returncode == 3 and executed(result)[-1] == "surgery:yolov8n", result.stdout + result.stderr
        db = artifacts / ".doit.db"
        assert result.stderr.strip().splitlines()[-1] == (
            f"ERROR: trtforge: cannot save the build state in {db} (database or disk is full); free space on that "
            "disk and rerun: finished outputs are kept and checked again, never trusted unchecked")
        assert sha256(model) == good and not (artifacts / ".doit.db-journal").exists()
        assert_state_db_readable(project)

        (artifacts / "filler").unlink()
        rerun = run_doit(project, "surgery:yolov8n")
        assert rerun.returncode == 0 and sha256(model) == good, rerun.stdout + rerun.stderr
        assert executed(run_doit(project, "surgery:yolov8n")) == []


def test_a_disk_fault_wrapped_by_a_library_is_found_and_others_are_not():
    """What a stage's catch-all asks before turning an exception into its own StageError."""
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("quantization failed") from exc
    except RuntimeError as wrapped:
        assert disk_fault(wrapped) is full
    assert disk_fault(OSError(errno.EROFS, "Read-only file system")) is not None
    assert disk_fault(FileNotFoundError(errno.ENOENT, "gone")) is None  # a missing input is not the disk
    assert disk_fault(ValueError("bad graph")) is None


# ----------------------------------------------------------------------------- state DB

def sqlite_file(path: Path, script: str) -> bytes:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(script)
        connection.commit()
    return path.read_bytes()


FOREIGN_DBS = {
    "json backend": (lambda p: b'{"export:yolov8n": {"_config_changed": "0a1b"}}',
                     "is unreadable (file is not a database): corrupt, or not doit's sqlite3 backend"),
    "another program's sqlite": (lambda p: sqlite_file(p, "CREATE TABLE settings (key TEXT, value TEXT);"),
                                 "is a sqlite file of another program (tables: settings), not doit's state"),
    "another doit layout": (lambda p: sqlite_file(p, "CREATE TABLE doit (task_id TEXT, data BLOB, version INT);"),
                            "has a doit table with columns (task_id, data, version), not (task_id, task_data): "
                            "written by another doit version"),
    "a record that is not JSON": (
        lambda p: sqlite_file(p, "CREATE TABLE doit (task_id TEXT NOT NULL PRIMARY KEY, task_data JSON);"
                                 "INSERT INTO doit VALUES ('export:yolov8n', x'80047069636b6c65');"),
        "holds a record of 'export:yolov8n' that is not JSON: written by another doit version or codec"),
}


@pytest.mark.parametrize("kind", FOREIGN_DBS)
def test_a_foreign_state_db_is_refused_in_one_line_with_a_recovery(project, tmp_path, kind):
    make, says = FOREIGN_DBS[kind]
    db = project / "artifacts" / ".doit.db"
    db.write_bytes(make(tmp_path / "foreign.db"))
    artifacts_before = {p: sha256(p) for p in (project / "artifacts" / "yolov8n").iterdir()}
    result = run_doit(project, "surgery:yolov8n")
    assert result.returncode == 3 and executed(result) == []
    assert result.stderr.strip().splitlines() == [
        f"ERROR: {db} {says}; move it aside (mv {db} {db}.bad): every artifact stays, tasks rerun once"]
    assert {p: sha256(p) for p in (project / "artifacts" / "yolov8n").iterdir()} == artifacts_before


def test_after_moving_a_foreign_state_db_aside_the_build_completes_rerunning_once(project):
    db = project / "artifacts" / ".doit.db"
    db.write_text('{"export:yolov8n": {}}')  # what doit's json backend writes
    assert run_doit(project, "surgery:yolov8n").returncode == 3
    db.rename(db.with_name(".doit.db.bad"))  # the recovery the line gives
    assert (project / "artifacts" / "yolov8n" / "model.onnx").exists()
    first = run_doit(project, "surgery:yolov8n")
    assert first.returncode == 0 and executed(first) == ["export:yolov8n", "surgery:yolov8n"], first.stderr
    assert executed(run_doit(project, "surgery:yolov8n")) == []


# ----------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_while_the_export_writes_removes_its_temporary_and_exits_130(small_project):
    """The Ctrl-C/SIGTERM tests of test_build_e2e stop trtexec; this one stops the export
    while its ONNX is being written, the moment a temporary exists."""
    proc = subprocess.Popen([sys.executable, "-m", "doit", "export:yolov8n"], cwd=small_project, env=doit_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = small_project / "artifacts" / "yolov8n"
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob("*trtforge-tmp*export.onnx"))):
        assert time.monotonic() < deadline and proc.poll() is None, "the export never wrote"
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)  # hold it mid-write: the Ctrl-C then lands there for sure
    assert list(out.glob("*trtforge-tmp*export.onnx")) and not (out / "export.onnx").exists()
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        "trtforge: stopped by SIGINT during export:yolov8n; finished tasks are recorded and partial outputs "
        "were removed: rerun the same command to continue")
    assert not list(out.iterdir())  # no temporary, no export.onnx


def test_modelopt_wrapping_a_full_disk_still_gives_the_disk_line(tmp_path, monkeypatch):
    """ModelOpt's quantize turns ENOSPC into its own exception; qdq must still report the disk."""
    import errno
    from types import SimpleNamespace

    import numpy as np
    from modelopt.onnx import quantization

    from trtforge.stages import qdq
    from trtforge.tasks import run_stage

    def full_disk(**_):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("quantization failed") from exc

    monkeypatch.setattr(quantization, "quantize", full_disk)
    np.save(tmp_path / "sample.npy", np.zeros((1, 3, 8, 8), np.float32))
    (tmp_path / "model.onnx").write_bytes(b"")  # the stage hands ModelOpt a copy of it
    out = tmp_path / "qdq.onnx"
    failure = run_stage(qdq.quantize_int8, tmp_path / "model.onnx", tmp_path / "calib.cache", tmp_path / "sample.npy",
                        out, (), task=SimpleNamespace(name="quantize:m-int8", file_dep=set()), targets=[])
    assert failure.message == (f"quantize:m-int8: cannot write {out}: No space left on device; "
                               "free space on that disk and rerun")
    assert not list(tmp_path.glob("*qdq.onnx"))
