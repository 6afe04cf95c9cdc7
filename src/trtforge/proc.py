"""Running external tools so that nothing outlives an interrupted build.

Measured with doit 0.37: killing only doit's pid orphans its children, so a trtexec
would keep writing the engine and timing cache after the build "stopped". Every tool
therefore runs in its own session (process group) and the whole group is ended on any
way out of `run_logged`: success, failure, timeout, Ctrl-C or a SIGTERM turned into an
exception.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the process that started us dies, even by
    `kill -9` (Linux's PR_SET_PDEATHSIG), so no trtexec keeps the GPU and writes on. (A
    tool that prints would die of SIGPIPE anyway; a real trtexec is silent for minutes.)"""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the process-group handling above is all there is


class ToolTimeout(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"no exit after {seconds:.0f} s")
        self.seconds = seconds


def end_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_logged(executable: Path, argv: list[str], cwd: Path, log_file: Path, timeout_s: float,
               on_line: Callable[[str], None] | None = None) -> int:
    """Run `executable` with `argv` (argv[0] included) in `cwd`; return the exit code.

    stdout and stderr are appended to `log_file`. argv[0] is what the tool sees as its
    name (trtexec echoes its command line into the log, so a bare name keeps absolute
    paths out of the artifacts). Negative codes mean the tool died from that signal
    (subprocess convention). `on_line` sees each output line as it arrives.
    """
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(argv, executable=executable, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        deadline = time.monotonic() + timeout_s
        try:
            _pump(proc, log, on_line, deadline, timeout_s)
            return proc.wait()
        finally:
            if proc.poll() is None:
                end_group(proc)
            else:  # the tool exited; make sure no grandchild kept writing
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def _pump(proc: subprocess.Popen, log, on_line, deadline: float, timeout_s: float) -> None:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        pending = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ToolTimeout(timeout_s)
            if not sel.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            log.write(chunk)
            log.flush()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if on_line:
                for line in lines:
                    on_line(line.decode("utf-8", "replace"))
        if pending and on_line:
            on_line(pending.decode("utf-8", "replace"))


def read_until(argv: list[str], wanted: Callable[[str], bool], timeout_s: float = 30.0) -> str:
    """Run a short probe (e.g. `trtexec --help`) in its own group and return its output up to
    and including the first line `wanted` accepts (or all of it, if it exits first). The
    probe is ended as soon as that line arrives: a tool need not exit to be identified."""
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout_s

    def collect(line: str) -> None:
        lines.append(line)
        if wanted(line):
            raise _Found

    try:
        _pump(proc, _Discard(), collect, deadline, timeout_s)
    except _Found:
        pass
    finally:
        end_group(proc, grace_s=1.0)
    return "\n".join(lines)


class _Found(Exception):
    pass


class _Discard:
    def write(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass
