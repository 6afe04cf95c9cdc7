
"""Running external tools: a silent tool dies with the process that started it, even when
that process is killed with SIGKILL (no orphan keeps the GPU or writes on); a descendant
that leaves the tool's process group dies when the tool is done; and what a SIGKILL left
behind a wrapper that does not `exec` is found and ended by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trtforge.proc import end_leftover_tools, run_logged

PARENT = """
import sys
from pathlib import Path
from trtforge.proc import run_logged
run_logged(Path("/bin/sh"), ["sh", "-c", "echo $$ > {pidfile}; exec sleep 300"], Path("{cwd}"), Path("{log}"), 600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_a_silent_tool_dies_when_its_parent_is_killed(tmp_path):
    pidfile = tmp_path / "pid"
    code = PARENT.format(pidfile=pidfile, cwd=tmp_path, log=tmp_path / "log")
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = int(pidfile.read_text())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)


def wait_for_pid(pidfile: Path) -> int:
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return int(pidfile.read_text())


def test_a_descendant_that_left_the_tools_process_group_is_ended_with_the_tool(tmp_path):
    pidfile = tmp_path / "escaped"
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' >/dev/null 2>&1 & sleep 0.5"
    code = run_logged(Path("/bin/sh"), ["sh", "-c", script], tmp_path, tmp_path / "log", 60)
    escaped = wait_for_pid(pidfile)
    assert code == 0
    deadline = time.monotonic() + 5
    while alive(escaped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(escaped)


def test_what_a_killed_run_left_behind_a_non_exec_wrapper_is_found_and_ended(tmp_path):
    """The parent-death signal ends the wrapper only; its child keeps running (the hazard),
    until end_leftover_tools finds it by the work folder its environment names."""
    work = tmp_path / "artifacts" / "r" / "v" / ".trtforge-tmp-work-1"
    work.mkdir(parents=True)
    pidfile = tmp_path / "pid"
    wrapper = f"sh -c 'echo $$ > {pidfile}; exec sleep 300'; exit $?"  # no exec: sh waits for its child
    code = (f"from pathlib import Path\nfrom trtforge.proc import run_logged\n"
            f"run_logged(Path('/bin/sh'), ['sh', '-c', {wrapper!r}], Path({str(work)!r}), Path({str(tmp_path / 'log')!r}), 600)")
    parent = subprocess.Popen([sys.executable, "-c", code])
    child = wait_for_pid(pidfile)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    time.sleep(0.5)
    assert alive(child)  # the wrapper died; what it started did not

    assert end_leftover_tools(tmp_path / "elsewhere") == ({}, {})  # another project's run leaves it alone
    ended, not_ended = end_leftover_tools(tmp_path / "artifacts")
    assert ended == {child: "sleep"} and not_ended == {}
    assert not alive(child)
