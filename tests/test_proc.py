
"""Running external tools: a silent tool dies with the process that started it, even when
that process is killed with SIGKILL (no orphan keeps the GPU or writes on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import sys
from pathlib import Path
from trtforge.proc import run_logged
run_logged(Path("/bin/sh"), ["sh", "-c", "echo $$ > {pidfile}; exec sleep 300"], Path("."), Path("{log}"), 600)
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
    code = PARENT.format(pidfile=pidfile, log=tmp_path / "log")
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
