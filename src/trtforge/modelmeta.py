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
