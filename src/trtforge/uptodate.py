"""doit up-to-date checks of trtforge's tasks, beside the `config_changed` of doit and gpu.py.

Kept apart from tasks.py, and light, because a no-op build served from the task cache
(taskcache.py) runs these checks without importing the task generators.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from pathlib import Path

from doit.dependency import MD5Checker as _DoitMD5Checker
from doit.dependency import get_file_md5

from .atomic import read_json_object, write_text_atomic


def fingerprint(path: Path) -> list:
    """[size, mtime_ns, sha256] of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]


def outputs_intact(task, values) -> bool:
    """uptodate check: every target is the file the last successful run wrote.

    doit alone only checks that targets exist, so an engine edited by hand or a half-copied
    ONNX would be trusted. Size is compared always; content (sha256) whenever the mtime
    moved, so a no-op run hashes nothing. The record is what `tasks.run_stage` returned.
    """
    recorded = values.get("outputs")
    if not recorded:
        return False
    for target, (size, mtime_ns, sha) in recorded.items():
        try:
            stat = Path(target).stat()
        except OSError:
            return False
        if stat.st_size != size or (stat.st_mtime_ns != mtime_ns and fingerprint(Path(target))[2] != sha):
            return False
    return True


class ArchiveIntact:
    """uptodate check: the archive a release record names still exists with its recorded hash.

    The archive's name depends on the engine (TensorRT version, GPU, hash), so doit's
    target is the small record; this check keeps a deleted or edited archive from being
    trusted because the record survived. A class, not a closure, so the task cache can
    store which record it reads.
    """

    def __init__(self, record: str) -> None:
        self.record = record

    def __call__(self, task, values) -> bool:
        try:
            entry = json.loads(Path(self.record).read_text())
            archive = Path(self.record).parent / entry["archive"]
            return hashlib.sha256(archive.read_bytes()).hexdigest() == entry["sha256"]
        except (OSError, ValueError, KeyError):
            return False


MD5_MEMO = "artifacts/cache/file-md5.json"  # relative to the project folder, where doit runs


class MD5Checker(_DoitMD5Checker):
    """doit's default file_dep checker, remembering across commands the md5 it had to compute.

    doit compares a file_dep's mtime with the one it stored when the task last ran, and
    hashes the file when they differ; it stores the new mtime only when the task runs again.
    So a file touched without being changed (an export rerun with `-a` writing the same
    bytes, a project copied without keeping times) was hashed again by every later no-op,
    once per task that reads it: 0.19 s for one 12 MB ONNX read by 9 tasks. The md5 is kept
    here by (mtime, size, inode), the same evidence doit's own shortcut trusts. The class
    keeps doit's name on purpose: doit stores the checker's class name per task and reruns
    every task whose checker name changed."""

    def check_modified(self, file_path, file_stat, state) -> bool:
        timestamp, size, file_md5 = state
        if file_stat.st_mtime == timestamp:
            return False
        if file_stat.st_size != size:
            return True
        return file_md5 != _MEMO.md5(file_path, file_stat)


class _Md5Memo:
    """{path: [mtime_ns, size, inode, md5]}, read on first use and written back at exit when
    this command hashed something new; entries it did not use are dropped then."""

    def __init__(self) -> None:
        self.known: dict | None = None
        self.used: dict = {}
        self.added = False

    def md5(self, path: str, st: os.stat_result) -> str:
        if self.known is None:
            self.known = read_json_object(Path(MD5_MEMO))
            atexit.register(self.save)
        evidence = [st.st_mtime_ns, st.st_size, st.st_ino]
        entry = self.known.get(path)
        if not (isinstance(entry, list) and len(entry) == 4 and entry[:3] == evidence):
            entry, self.added = [*evidence, get_file_md5(path)], True
        self.used[path] = entry
        return entry[3]

    def save(self) -> None:
        if self.added and os.path.isdir(os.path.dirname(MD5_MEMO)):
            try:
                write_text_atomic(Path(MD5_MEMO), json.dumps(self.used))
            except OSError:
                pass  # a memo: losing it costs the next command one hash per file


_MEMO = _Md5Memo()
