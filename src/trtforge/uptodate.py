"""doit up-to-date checks of trtforge's tasks, beside the `config_changed` of doit and gpu.py.

Kept apart from tasks.py, and light, because a no-op build served from the task cache
(taskcache.py) runs these checks without importing the task generators.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


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
