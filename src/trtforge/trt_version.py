"""TensorRT versions as trtexec reports them, and the grammar generation each one speaks.

trtexec's first stdout line is `&&&& RUNNING TensorRT.trtexec [TensorRT v100800] # ...`.
8.x encodes the version as MAJOR*1000 + MINOR*100 + PATCH (`v8601` is 8.6.1); 10.x and
later as MAJOR*10000 + MINOR*100 + PATCH (`v100800` is 10.8.0); 10.4+ may append
` [b<n>]`. The product supports the generations whose grammar it renders; any other
version, older or newer, is refused with one line rather than guessed at: 11.0 removed
flags 10.x had, so a future major may well change the grammar again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ToolError

BANNER = re.compile(r"^&&&& RUNNING TensorRT\.trtexec \[TensorRT v(\d+)\](?: \[b(\d+)\])?")
GENERATIONS = ("8.2", "8.5", "8.6", "10", "11")


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def generation(self) -> str:
        """The grammar this version speaks: one of GENERATIONS (see render.py)."""
        if self.major == 8 and self.minor == 2:
            return "8.2"
        if self.major == 8 and self.minor in (4, 5):  # JetPack 5.0.2 and 5.1.x: one trtexec grammar
            return "8.5"
        if self.major == 8 and self.minor == 6:
            return "8.6"
        if self.major == 10:
            return "10"
        if self.major == 11:
            return "11"
        raise ToolError(f"TensorRT {self} is not supported: trtforge renders trtexec commands for "
                        "8.2 (Jetson TX2/Nano), 8.4/8.5 (JetPack 5), 8.6, 10.x and 11.x; point TRTEXEC at a "
                        "trtexec of one of those")


def parse_banner_number(number: int) -> TrtVersion:
    """`8601` -> 8.6.1, `100800` -> 10.8.0."""
    if number < 10000:
        return TrtVersion(number // 1000, (number // 100) % 10, number % 100)
    return TrtVersion(number // 10000, (number // 100) % 100, number % 100)


def version_from_banner(text: str) -> TrtVersion | None:
    """The version in the first banner line of trtexec output, or None if there is none."""
    for line in text.splitlines():
        match = BANNER.match(line.strip())
        if match:
            return parse_banner_number(int(match.group(1)))
    return None


def version_for_generation(generation: str) -> TrtVersion:
    """A representative version, for rendering without a trtexec (plan --trt, build kits)."""
    table = {"8.2": TrtVersion(8, 2, 1), "8.5": TrtVersion(8, 5, 2), "8.6": TrtVersion(8, 6, 1), "10": TrtVersion(10, 8, 0),
             "11": TrtVersion(11, 0, 0)}
    if generation not in table:
        raise ToolError(f"unknown TensorRT generation '{generation}'; use one of {', '.join(GENERATIONS)}")
    return table[generation]
