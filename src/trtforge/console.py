"""What the stages tell the person running a build.

Plain lines on stderr, so logs from CI stay free of control characters; doit shows an
action's stderr live. `warn` is for facts a user must not miss (untrained weights).
"""

from __future__ import annotations

import sys


def info(message: str) -> None:
    print(f"trtforge: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"trtforge: WARNING: {message}", file=sys.stderr, flush=True)
