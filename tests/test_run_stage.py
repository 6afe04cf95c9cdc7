"""tasks.run_stage is the boundary between a stage and doit: what a user can fix becomes
doit's one-message failure; a bug keeps its traceback."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest
from doit.exceptions import TaskFailed

from trtforge.errors import StageError
from trtforge.tasks import run_stage

TASK = SimpleNamespace(name="export:demo", file_dep=set())  # what run_stage reads of doit's Task


def raising(exc: BaseException):
    def stage() -> None:
        raise exc

    return stage


@pytest.mark.parametrize("code, verb, advice", [
    (errno.ENOSPC, "cannot write", "free space on that disk and rerun"),
    (errno.EROFS, "cannot write", "read-only; move the project to a writable disk"),
    (errno.EACCES, "no access to", "give this user read and write access to it"),
    (errno.EFBIG, "cannot write", "ulimit -f"),
])
def test_a_full_or_read_only_disk_is_one_line_naming_the_file(code, verb, advice):
    failure = run_stage(raising(OSError(code, "cannot", "/p/artifacts/demo/export.onnx")), task=TASK, targets=[])
    assert isinstance(failure, TaskFailed)
    message = failure.message
    assert "\n" not in message and message.startswith(f"export:demo: {verb} /p/artifacts/demo/export.onnx: ")
    assert advice in message


def test_a_stage_error_is_its_own_message():
    failure = run_stage(raising(StageError("model.path: bad")), task=TASK, targets=[])
    assert isinstance(failure, TaskFailed) and failure.message == "model.path: bad"


def test_other_os_errors_are_bugs_and_keep_their_traceback():
    with pytest.raises(FileNotFoundError):
        run_stage(raising(FileNotFoundError(errno.ENOENT, "gone", "x")), task=TASK, targets=[])
