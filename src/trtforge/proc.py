"""Running external tools so that nothing outlives an interrupted build.

Measured with doit 0.37: killing only doit's pid orphans its children, so a trtexec
would keep writing the engine and timing cache after the build "stopped". Every tool
therefore runs in its own session (process group) and the whole group is ended on any
way out of `run_logged`: success, failure, timeout, Ctrl-C or a SIGTERM turned into an
exception.

A process group does not hold every descendant: a child that starts its own session
(`setsid`) leaves it, and after `kill -9` of doit the parent-death signal reaches only the
tool itself, so a wrapper script that runs trtexec without `exec` dies and leaves trtexec
running. Every tool's environment therefore names its work folder (`TOOL_ENV`), which
each descendant inherits: `run_logged` ends whatever still carries its folder when the
tool is done, and the next run ends what a killed run left (`end_leftover_tools`) before
it removes any work folder. (A cgroup would contain even a descendant that clears its
environment, but an unprivileged user rarely may create one; that case is documented.)
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


TOOL_ENV = "TRTFORGE_TOOL_WORK"  # the absolute work folder of the tool a process descends from


def _tool_environment(cwd: Path) -> dict[str, str]:
    return {**os.environ, TOOL_ENV: str(cwd.resolve())}


def _tool_processes(wanted: Callable[[str], bool]) -> dict[int, str]:
    """{pid: name} of this user's live processes whose `TOOL_ENV` value `wanted` accepts
    (Linux /proc; elsewhere there is nothing to find). Zombies have no environment left and
    are not listed: they hold nothing."""
    found = {}
    prefix = f"{TOOL_ENV}=".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) == os.getpid():
            continue
        try:
            values = [item[len(prefix):] for item in (entry / "environ").read_bytes().split(b"\0")
                      if item.startswith(prefix)]
            if values and wanted(os.fsdecode(values[0])):
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except (OSError, ValueError):
            continue  # gone meanwhile, or another user's
    return found


def _kill_all(pids: dict[int, str], wait_s: float = 5.0) -> dict[int, str]:
    """SIGKILL `pids`; return those still alive after `wait_s` (not ours to kill)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + wait_s
    while True:
        alive = {pid: name for pid, name in pids.items() if _running(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether `pid` exists and is no zombie (an orphaned zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def end_leftover_tools(folder: Path) -> tuple[dict[int, str], dict[int, str]]:
    """End every process that descends from a tool whose work folder lies under `folder`:
    what a run killed with SIGKILL left running. Only call this while holding the project's
    build lock (no live run owns such a process then). Returns ({pid: name} ended,
    {pid: name} that could not be ended)."""
    root = str(folder.resolve())
    leftover = _tool_processes(lambda work: work.startswith(root + os.sep))
    return leftover, _kill_all(leftover)


def run_logged(executable: Path, argv: list[str], cwd: Path, log_file: Path, timeout_s: float,
               on_line: Callable[[str], None] | None = None) -> int:
    """Run `executable` with `argv` (argv[0] included) in `cwd`, a folder of its own; return
    the exit code. When it is done, every process that descends from it is ended.

    stdout and stderr are appended to `log_file`. argv[0] is what the tool sees as its
    name (trtexec echoes its command line into the log, so a bare name keeps absolute
    paths out of the artifacts). Negative codes mean the tool died from that signal
    (subprocess convention). `on_line` sees each output line as it arrives.
    """
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(argv, executable=executable, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=_tool_environment(cwd),
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
            work = str(cwd.resolve())
            _kill_all(_tool_processes(lambda value: value == work))  # descendants that left the group


def _once_after(seconds: float, notice: Callable[[], None]) -> Callable[[], None]:
    """A callback that calls `notice` the first time it is called `seconds` or more from now."""
    due = time.monotonic() + seconds
    pending = [notice]

    def check() -> None:
        if pending and time.monotonic() >= due:
            pending.pop()()

    return check


def _pump(proc: subprocess.Popen, log, on_line, deadline: float, timeout_s: float,
          on_wait: Callable[[], None] | None = None) -> None:
    """Copy the tool's output to `log` (and `on_line`) until it closes; `on_wait` is called
    whenever a second passes with no output."""
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
                if on_wait:
                    on_wait()
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


def read_until(argv: list[str], wanted: Callable[[str], bool], timeout_s: float = 30.0,
               patience: tuple[float, Callable[[], None]] | None = None) -> str:
    """Run a short probe (e.g. `trtexec --help`) in its own group and return its output up to
    and including the first line `wanted` accepts (or all of it, if it exits first). The
    probe is ended as soon as that line arrives: a tool need not exit to be identified.
    `patience` (seconds, notice): the notice is called once if that line takes longer."""
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    on_wait = _once_after(*patience) if patience else None

    def collect(line: str) -> None:
        lines.append(line)
        if wanted(line):
            raise _Found

    try:
        _pump(proc, _Discard(), collect, deadline, timeout_s, on_wait)
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
