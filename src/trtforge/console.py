"""What the stages tell the person running a build.

Plain lines on stderr, so logs from CI stay free of control characters; doit shows an
action's stderr live. `warn` is for facts a user must not miss (untrained weights).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def info(message: str) -> None:
    print(f"trtforge: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"trtforge: WARNING: {message}", file=sys.stderr, flush=True)


def shown_path(path: Path) -> str:
    """`path` as a person at the project would type it: relative to the working folder (doit
    runs in the project) when it lies under it, else absolute."""
    here = Path.cwd()
    return str(path.relative_to(here)) if path.is_absolute() and path.is_relative_to(here) else str(path)


def wrote(task: str, path: Path, what: str) -> None:
    """Say where a stage put a file the user came for (an archive, a kit), with its size."""
    info(f"{task}: wrote {shown_path(path)} ({what}, {path.stat().st_size / (1 << 20):.1f} MiB)")


LOG_WIDTH = 200  # columns of a report table written to a log, not a terminal
_LOG_PREFIX = re.compile(r"^\[[0-9/:\-]+\] \[[A-Z]\] ")  # trtexec's `[12/07/2026-04:54:03] [I] `


def report_console():
    """A rich console for report tables, on stderr: a terminal's own width, else COLUMNS if set,
    else LOG_WIDTH. rich's default for a log is 80 columns, which wrapped the comparison
    table's cells into 3-7-line ones in CI logs (issue 14)."""
    import os

    from rich.console import Console

    wide = None if sys.stderr.isatty() or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(stderr=True, width=wide)


class Progress:
    """Progress of a long loop: a rich bar on a terminal, a plain line per 10% otherwise
    (CI logs stay free of control characters). `advance(n)` after each unit of work."""

    def __init__(self, description: str, total: int, unit: str = "images") -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done, self._next_report, self._rich = 0, 0.1, None

    def __enter__(self) -> "Progress":
        import time

        self._started = time.monotonic()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            # on stderr, which doit shows live; rich's default, stdout, is what doit captures
            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=True,
                                      console=Console(stderr=True))
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, rate="")
        return self

    def rate(self) -> float:
        import time

        return self.done / max(time.monotonic() - self._started, 1e-9)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._rich is not None:
            self._rich.update(self._task, advance=n, rate=f"{self.rate():.1f} {self.unit}/s")
        elif self.total and self.done / self.total >= self._next_report:
            info(f"{self.description}: {self.done}/{self.total} {self.unit} ({self.rate():.1f}/s)")
            while self._next_report <= self.done / self.total:
                self._next_report += 0.1

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()


class StatusLine:
    """One live line for a long external run: on a terminal, rich's status spinner with the
    phase, elapsed time and the tool's last line; otherwise a plain line per phase change."""

    def __init__(self, description: str, width: int = 80) -> None:
        self.description, self.phase, self.last = description, "starting", ""
        self.width = width  # the terminal's, once it is known to be one
        self._status = None

    def __enter__(self) -> "StatusLine":
        import time

        self._started = time.monotonic()
        if sys.stderr.isatty():
            from rich.console import Console

            console = Console(stderr=True)
            self.width = console.width
            self._status = console.status(self._text())
            self._status.start()
        return self

    def _headline(self) -> str:
        import time

        return f"{self.description}: {self.phase} ({time.monotonic() - self._started:.0f} s)"

    def _text(self) -> str:
        """The headline and as much of the tool's last line as fits on one terminal line beside
        the spinner (a wrapped status line is redrawn as a new line at every update), without
        trtexec's `[date-time] [I]` prefix."""
        headline = self._headline()
        last = _LOG_PREFIX.sub("", self.last)
        room = self.width - len(headline) - 4  # the spinner and two spaces, and one column spare
        if room < 12 or not last:
            return headline[:max(self.width - 4, 1)]
        return f"{headline} {last if len(last) <= room else last[:room - 1] + '…'}"

    def update(self, phase: str | None, last_line: str) -> None:
        self.last = last_line.strip()
        if phase and phase != self.phase:
            self.phase = phase
            if self._status is None:
                info(self._headline())
        if self._status is not None:
            self._status.update(self._text())

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.stop()
