"""Outputs appear complete or not at all.

doit checks targets for existence only and never deletes a partial one (measured: an
interrupted rerun of a task whose target was deleted leaves a half-written file that the
next run trusts). So every output is written under a unique temporary name in the same
folder and renamed into place when complete; rename is atomic on one filesystem. The
temporary names share a recognisable prefix so the next run can sweep what a `kill -9`
left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

TEMP_MARK = ".trtforge-tmp-"


def temp_path_for(target: Path) -> Path:
    """A unique temporary sibling of `target` (same folder, so rename stays atomic)."""
    return target.with_name(f"{TEMP_MARK}{os.urandom(6).hex()}-{target.name}")


@contextlib.contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `target`, else it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(target)
    try:
        yield temp
        if not temp.exists():
            raise FileNotFoundError(f"{temp} was not written")
        os.replace(temp, target)
    except OSError as exc:
        name_target(exc, target)
        raise
    finally:
        remove_path(temp)


def name_target(exc: OSError, target: Path) -> None:
    """Give `exc` the name `target` when it names a temporary or nothing.

    A writer that fails on a full disk often loses the name: torch.onnx.export and
    onnx.save raise a bare `OSError(ENOSPC)` from `file.write` (measured with torch 2.14,
    onnx 1.21). The user knows the target, not the temporary, so the one-line disk error
    (`errors.disk_error_message`) names the target.
    """
    if exc.filename is None or TEMP_MARK in os.fsdecode(exc.filename):
        exc.filename = str(target)


def disk_fault(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` that the user fixes on their machine (disk full, read-only,
    no permission, `ulimit -f`), following `raise ... from` chains; None for anything else.

    A stage that turns a library's every exception into a StageError must let this one
    through, re-raised inside its `atomic_output` block, so that `tasks.run_stage` reports
    it as the one disk line naming the target: ModelOpt's quantize, on a full disk, raised
    the bare OSError that qdq.py's catch-all turned into "ModelOpt could not quantize
    model.onnx: [Errno 28] No space left on device" (measured with nvidia-modelopt 0.47).
    """
    from .errors import disk_error_message

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and disk_error_message(exc, "") is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_output(target) as temp:
        temp.write_text(text)


def read_json_object(path: Path) -> dict:
    """The JSON object a cache kept at `path`, or {} when it is missing, unreadable or not an
    object: a cache that cannot be read costs its recomputation, never an error."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remove_path(path: Path) -> None:
    """Remove a file or folder if it exists.

    Checked first, not left to unlink: on a read-only mount, unlinking a missing file fails
    with EROFS, not ENOENT (measured), which would hide the error that stopped the write.
    """
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


WORK_MARK = f"{TEMP_MARK}work-"  # a tool's work folder (the engine stage's), named by its process


def leftover_temporaries(folder: Path) -> list[Path]:
    """Temporaries an interrupted run left under `folder`."""
    return list(folder.rglob(f"{TEMP_MARK}*")) if folder.is_dir() else []


def sweep_temporaries(stale: list[Path]) -> list[Path]:
    """Remove `stale` (from `leftover_temporaries`), deepest first; return them.

    Only called while this process holds the build lock, so no live trtforge run owns them,
    and after the tools a killed run left are ended (session.py), so no tool writes in them.
    """
    for path in sorted(stale, key=lambda p: len(p.parts), reverse=True):
        remove_path(path)
    return stale


# ----------------------------------------------------------------------------- stored results

STORE_FORMAT = "trtforge-stored-result-1"


class DamagedStore(Exception):
    """A stored result that must not be reused; the message says why in a few words."""


def write_stored_json(target: Path, payload: dict) -> None:
    """Keep `payload` (a result reused across runs by content key) as JSON with the sha256 of
    its canonical text, written atomically: `read_stored_json` then tells a file that is
    exactly what trtforge stored from anything else, as the timing cache's `.sha256` record
    does, but in one file, so no crash can leave a result and its record out of step."""
    record = {"format": STORE_FORMAT, "sha256": _canonical_sha256(payload), "payload": payload}
    write_text_atomic(target, json.dumps(record, sort_keys=True))


def reusable_stored_json(path: Path, problem: Callable[[dict], str | None], task: str, what: str,
                         instead: str) -> dict | None:
    """The payload stored at `path`, or None: nothing is stored there, or it is damaged (see
    `read_stored_json`) and the caller computes it again and replaces it, after one warning
    naming the file, why, and what happens `instead`."""
    if not path.exists():
        return None
    try:
        return read_stored_json(path, problem)
    except DamagedStore as why:
        from .console import warn

        warn(f"{task}: not reusing the stored {what} {path}: {why}; {instead}")
        return None


def read_stored_json(path: Path, problem: Callable[[dict], str | None]) -> dict:
    """The payload `write_stored_json` kept at `path`, or DamagedStore saying why not: the file
    is unreadable, empty (a power loss can leave one), not JSON (cut short), in another
    format (written by an earlier trtforge), does not match its sha256 record, or
    `problem(payload)` (the caller's schema check) names what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedStore(f"it cannot be read ({exc.strerror})") from None
    if not data.strip():
        raise DamagedStore("it is empty (a write cut short, e.g. by a power loss)")
    try:
        record = json.loads(data)
    except ValueError:
        raise DamagedStore("it is not JSON (cut short or overwritten)") from None
    if not isinstance(record, dict) or record.get("format") != STORE_FORMAT:
        raise DamagedStore(f"it is not in the format {STORE_FORMAT} (written by an earlier trtforge?)")
    payload = record.get("payload")
    if not isinstance(payload, dict) or record.get("sha256") != _canonical_sha256(payload):
        raise DamagedStore("it does not match the sha256 recorded in it (changed after trtforge wrote it)")
    why = problem(payload)
    if why:
        raise DamagedStore(why)
    return payload


def _canonical_sha256(payload: dict) -> str:
    """sha256 of `payload` as sorted-key JSON: the same for the dict written and the dict read
    back (Python's float repr round-trips exactly), whatever the file's whitespace."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
