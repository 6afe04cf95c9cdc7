"""What a model says about itself (class names, stride, task, input size), kept with every ONNX.

Ultralytics writes it into an exported ONNX as `metadata_props`, each value a Python
literal in a string (`names` is `"{0: 'person', 1: 'car'}"`), and reads it back from an
ONNX or an `.engine` header to name its detections. onnxslim, graph-surgeon passes and
ModelOpt write new models without it, so an engine built from an Ultralytics ONNX came
out with `names: {}` (issue 14). Every ONNX trtforge writes therefore carries the
metadata of the model it came from, in Ultralytics' format, and how its input is fed
(`trtforge.preprocess`, JSON of the recipe's `input.preprocess`), so a released ONNX says
how to feed it and a project that builds from it can tell when its recipe feeds it otherwise.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

PREPROCESS_KEY = "trtforge.preprocess"

# the keys trtforge reads back, with how a value is read (anything else is carried verbatim)
_READERS = {
    "names": lambda v: {int(k): str(name) for k, name in ast.literal_eval(v).items()},
    "stride": lambda v: int(float(v)),
    "task": str,
    "imgsz": lambda v: [int(n) for n in ast.literal_eval(v)],
    "kpt_shape": lambda v: [int(n) for n in ast.literal_eval(v)],
    "end2end": lambda v: ast.literal_eval(v) is True,
}


def props_of(model) -> dict[str, str]:
    """The `metadata_props` of an onnx.ModelProto, as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def read_props(path: Path) -> dict[str, str]:
    """The `metadata_props` of the ONNX at `path` (its weights are not loaded)."""
    import onnx

    return props_of(onnx.load(str(path), load_external_data=False))


_METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props (onnx.proto); an entry's key is field 1, its value 2


def scan_props(path: Path) -> dict[str, str]:
    """The `metadata_props` of the ONNX at `path`, read from the protobuf wire format: every
    other top-level field (the graph and its weights) is skipped by its length, never read.

    For the recipe loader, which runs on every doit call and must not import onnx (a tenth of
    a second) to learn how an ONNX source says it is fed. Anything that is not well-formed
    protobuf gives {}: export: then reads the model with onnx itself and names what is wrong."""
    props: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while f.tell() < size:
                key = _varint(f)
                field, wire = key >> 3, key & 7
                if wire == 0:  # ir_version, model_version
                    _varint(f)
                    continue
                if wire in _FIXED_WIDTH:
                    f.seek(_FIXED_WIDTH[wire], 1)
                    continue
                if wire != 2:  # groups: no field of ModelProto is one
                    return {}
                length = _varint(f)
                if f.tell() + length > size:
                    return {}
                if field != _METADATA_PROPS_FIELD:
                    f.seek(length, 1)
                    continue
                entry = _entry_fields(f.read(length))
                if entry is None:
                    return {}
                props[entry.get(1, "")] = entry.get(2, "")
    except (OSError, ValueError):
        return {}
    return props


_FIXED_WIDTH = {1: 8, 5: 4}  # wire types 64-bit and 32-bit: their sizes


def _varint(stream) -> int:
    value = shift = 0
    while True:
        byte = stream.read(1)
        if not byte or shift > 63:
            raise ValueError("truncated or overlong varint")
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 0x80:
            return value


def _entry_fields(data: bytes) -> dict[int, str] | None:
    """A StringStringEntryProto's string fields by number, or None if it is not one."""
    import io

    stream, fields = io.BytesIO(data), {}
    try:
        while stream.tell() < len(data):
            key = _varint(stream)
            if key & 7 != 2:
                return None
            length = _varint(stream)
            chunk = stream.read(length)
            if len(chunk) != length:
                return None
            fields[key >> 3] = chunk.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return fields


def metadata_from_props(props: dict[str, str]) -> dict:
    """The keys trtforge uses, read from Ultralytics-style props; a value that is not the
    literal it should be is left out (a foreign tool's metadata must not fail the build)."""
    metadata = {}
    try:
        preprocess = json.loads(props.get(PREPROCESS_KEY, "null"))
        if isinstance(preprocess, dict):
            metadata["preprocess"] = preprocess
    except ValueError:
        pass
    for key, read in _READERS.items():
        if key in props:
            try:
                metadata[key] = read(props[key])
            except (ValueError, TypeError, SyntaxError, AttributeError, MemoryError, RecursionError):
                continue
    return metadata


def props_from_metadata(metadata: dict) -> dict[str, str]:
    """Ultralytics-style props (`str()` of each value, as its exporter writes) of the keys trtforge
    knows; class ids as ints again (JSON, export.json's format, keeps keys as strings)."""
    known = {key: metadata[key] for key in _READERS if key in metadata}
    if isinstance(known.get("names"), dict):
        known["names"] = {int(k): str(v) for k, v in known["names"].items()}
    props = {key: str(value) for key, value in known.items()}
    if isinstance(metadata.get("preprocess"), dict):
        props[PREPROCESS_KEY] = json.dumps(metadata["preprocess"], sort_keys=True)
    return props


def stamp(model, props: dict[str, str]) -> None:
    """Set `props` on an onnx.ModelProto, replacing what it had under those keys."""
    kept = {p.key: p.value for p in model.metadata_props if p.key not in props}
    del model.metadata_props[:]
    for key, value in {**kept, **props}.items():
        model.metadata_props.add(key=key, value=value)
