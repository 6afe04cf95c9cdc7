"""The product's user-facing error types.

Every error a user can cause is one of these, and its message is one line that names
the file (with line:column for YAML), the field or task, what is wrong and what to do.
They are caught at one boundary: the task loader turns them into doit's
`InvalidDodoFile` (a clean `ERROR:` line, exit 3); a task action lets doit report them
as a task failure.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class TrtforgeError(Exception):
    """Base class: an error the user can fix, with a one-line message."""


class RecipeError(TrtforgeError):
    """A recipe that cannot be loaded or does not validate."""

    def __init__(self, file: str, message: str, *, field: str = "", line: int | None = None,
                 column: int | None = None) -> None:
        self.file, self.field, self.line, self.column = file, field, line, column
        where = file if line is None else f"{file}:{line}:{column}"
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")


class ToolError(TrtforgeError):
    """An external tool (trtexec) is missing, unknown or failed."""


class StageError(TrtforgeError):
    """A stage could not produce its outputs from its inputs."""


# OS errors a user fixes on their machine, not in trtforge: a full or read-only disk, a
# folder they cannot write. Any other OSError is a bug and keeps its traceback.
_DISK_ADVICE = {
    "ENOSPC": ("cannot write", "free space on that disk and rerun"),
    "EDQUOT": ("cannot write", "free space (disk quota exceeded) and rerun"),
    "EFBIG": ("cannot write", "the file size limit (ulimit -f) was reached; raise it and rerun"),
    "EROFS": ("cannot write", "the filesystem is read-only; move the project to a writable disk and rerun"),
    # a permission error may come from a read as well as a write: the line does not guess which
    "EACCES": ("no access to", "give this user read and write access to it and rerun"),
    "EPERM": ("no access to", "give this user read and write access to it and rerun"),
}


def disk_error_message(exc: OSError, task: str) -> str | None:
    """One line for an OSError the user can fix (disk full, read-only, no permission), else None."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    if name not in _DISK_ADVICE:
        return None
    verb, advice = _DISK_ADVICE[name]
    where = f" {exc.filename}" if exc.filename else ""
    return f"{task}: {verb}{where}: {exc.strerror or name}; {advice}"


# Extras pip cannot install alone: the yolov5 package's declared requirements would add 28
# packages, a second OpenCV among them, so it is installed without them (scripts/quickstart.sh).
_EXTRA_STEPS = {"yolov5": " && pip install --no-deps yolov5==7.0.14"}


class MissingDependencyError(TrtforgeError):
    """An optional Python dependency is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed: pip install -e '.[{extra}]'{_EXTRA_STEPS.get(extra, '')}")


def require(module: str, extra: str):
    """Import an optional heavy module inside the action that needs it.

    Returns the module; a missing one becomes one line naming the extra to install.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # a broken install of something else: keep the real traceback
        raise MissingDependencyError(module, extra) from exc


def broken_link(path: Path) -> tuple[str, str] | None:
    """(kind, the end of a one-line error) when `path` is a symlink that leads nowhere:
    ("dangling", ...) for a target that does not exist (a data disk not mounted, a moved
    dataset), ("loop", ...) for a link that loops; None for anything else."""
    if not path.is_symlink():
        return None
    target = os.readlink(path)
    try:
        path.stat()
    except FileNotFoundError:
        return "dangling", (f"is a symlink to {target}, which does not exist (an unmounted disk?); "
                            "mount it or remove the link")
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return "loop", f"is a symlink to {target}, which loops back on itself; remove the link"
    return None
