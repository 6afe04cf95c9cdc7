"""TensorRT's calibration cache, written and read in its native text format.

    TRT-8601-EntropyCalibration2
    images: 3c010a14
    /model.0/conv/Conv_output_0: 3d8e2f1c

The first line names the TensorRT version (as trtexec's banner encodes it) and the
calibrator algorithm; each further line is `tensor: hhhhhhhh`, the big-endian bits of the
float32 scale `range / 127`, with exactly one space after the colon.

The header always says EntropyCalibration2, whichever method computed the ranges:
trtexec reads `--calib` through its own IInt8EntropyCalibrator2 (samples/trtexec), and
TensorRT only uses a cache whose algorithm matches the calibrator reading it. The method
that really produced the ranges is recorded in the calibration report next to the cache.
"""

from __future__ import annotations

import math
import re
import struct

from .errors import StageError
from .trt_version import TrtVersion

ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_ENTRY = re.compile(r"^(.+): ([0-9a-f]{8})$")


def banner_number(version: TrtVersion) -> int:
    """8.6.1 -> 8601, 10.8.0 -> 100800 (the number trtexec and the cache header use)."""
    if version.major < 10:
        return version.major * 1000 + version.minor * 100 + version.patch
    return version.major * 10000 + version.minor * 100 + version.patch


def scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def write_cache_text(version: TrtVersion, ranges: dict[str, float]) -> str:
    """The cache text for `ranges` ({tensor: absolute range}); scales are range / 127."""
    lines = [f"TRT-{banner_number(version)}-{ALGORITHM}"]
    for name, value in ranges.items():
        scale = value / 127.0
        if not (math.isfinite(scale) and scale > 0):
            raise StageError(f"calibration range of tensor '{name}' is {value}; cannot write a scale")
        if "\n" in name or ": " in name:
            raise StageError(f"tensor name '{name}' cannot be written to a calibration cache")
        lines.append(f"{name}: {scale_hex(scale)}")
    return "\n".join(lines) + "\n"


def read_cache(text: str) -> tuple[int, str, dict[str, float]]:
    """(version number, algorithm, {tensor: scale}) from cache text; StageError if malformed."""
    lines = text.splitlines()
    header = _HEADER.match(lines[0]) if lines else None
    if not header:
        raise StageError("calibration cache has no 'TRT-<version>-<algorithm>' first line")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        entry = _ENTRY.match(line)
        if not entry:
            raise StageError(f"calibration cache line {number} is not 'tensor: hhhhhhhh': {line!r}")
        scales[entry.group(1)] = struct.unpack(">f", bytes.fromhex(entry.group(2)))[0]
    return int(header.group(1)), header.group(2), scales


def without_tensors(text: str, tensors: set[str]) -> tuple[str, tuple[str, ...]]:
    """(cache text without the entries of `tensors`, the names actually left out).

    Every other line is kept byte for byte (scales are not re-encoded); a malformed cache is
    refused here rather than handed to TensorRT. TensorRT runs a layer above INT8 when a
    tensor it consumes or produces has no scale (see render.keep_fp32_route), which is how
    TensorRT 8.2 keeps layers in FP32."""
    read_cache(text)
    lines = text.splitlines()
    kept, dropped = [lines[0]], []
    for line in lines[1:]:
        name = _ENTRY.match(line).group(1)
        if name in tensors:
            dropped.append(name)
        else:
            kept.append(line)
    return "\n".join(kept) + "\n", tuple(dropped)
