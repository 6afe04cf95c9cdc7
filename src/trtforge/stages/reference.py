"""reference: FP32 outputs of the exported model under ONNX Runtime, on fixed real inputs.

The inputs are the verification images, preprocessed exactly as for calibration and
deployment. Inputs and outputs are saved in Polygraphy's JSON formats, so that
`polygraphy run <model> --onnxrt --load-inputs inputs.json --load-outputs outputs.json`
(or `--trt` on a GPU host) reruns the same comparison by hand, unchanged.

The reference model is the export, before surgery: checking the FP32 variant against it
then covers the surgery passes too.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_output, write_text_atomic
from ..errors import StageError, require
from ..images import (ULTRALYTICS, ImageRef, Preprocess, UnusableImage, decode_image, preprocess, read_image_bytes,
                      refuse_if_changed, sha256_hex)

RUNNER = "onnxrt-fp32-reference"


def feeds_for(encoded: dict[str, bytes], input_name: str, height: int, width: int, batch: int,
              how: Preprocess = ULTRALYTICS) -> list[dict]:
    """One Polygraphy feed dict per iteration from {image name: file bytes}, `batch` images
    each (the last may be short only when the input's batch axis is dynamic, which is when
    batch is 1), preprocessed as `how` says."""
    np = require("numpy", "core")
    arrays = [_preprocessed(name, data, height, width, how) for name, data in encoded.items()]
    if len(arrays) % batch:
        raise StageError(f"verify.count: {len(arrays)} images do not fill batches of {batch} "
                         "(the input's batch is fixed); use a multiple")
    return [{input_name: np.concatenate(arrays[i:i + batch])} for i in range(0, len(arrays), batch)]


def _preprocessed(name: str, data: bytes, height: int, width: int, how: Preprocess):
    try:
        return preprocess(decode_image(data, name), height, width, how)
    except UnusableImage as exc:  # no skipping: a reference on fewer images than the recipe names would mislead
        raise StageError(f"verify.images: {exc}") from None


def run_onnxruntime(model: Path | bytes, feeds: list[dict]) -> list[dict]:
    """Outputs {name: array} per feed, on CPU, of an ONNX file or serialized model."""
    ort = require("onnxruntime", "core")
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, map(as_float32, session.run(names, typed_feed(session, feed))))) for feed in feeds]


# numpy dtypes of the float bindings an engine or ONNX may declare (build.io: fp16 declares float16)
_FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def typed_feed(session, feed: dict) -> dict:  # session: an onnxruntime.InferenceSession
    """`feed` (float32 images, as references are made) cast to the float type each input declares."""
    declared = {i.name: _FLOAT_TYPES.get(i.type) for i in session.get_inputs()}
    return {name: array.astype(declared[name], copy=False) if declared.get(name) else array
            for name, array in feed.items()}


def as_float32(array):  # array: numpy.ndarray
    """A float16 output widened to float32 (exact), as comparisons and gates read every variant."""
    return array.astype("float32") if array.dtype == "float16" else array


def load_reference(inputs: Path, outputs: Path) -> tuple[list[dict], list[dict]]:
    """(feeds, FP32 outputs per feed) as make_reference saved them (Polygraphy's formats)."""
    require("polygraphy", "core")
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    (_, reference), = RunResults.load(str(outputs)).items()
    return load_json(str(inputs)), [dict(iteration) for iteration in reference]


def input_hw(feeds: list[dict]) -> tuple[int, int]:
    """The model input's height and width, read off the first feed (NCHW)."""
    image = next(iter(feeds[0].values()))
    return tuple(int(s) for s in image.shape[-2:])


def make_reference(onnx_path: Path, images: tuple[ImageRef, ...], input_name: str, height: int, width: int,
                   batch: int, inputs_out: Path, outputs_out: Path, images_out: Path,
                   how: Preprocess = ULTRALYTICS) -> None:
    """Write inputs.json and outputs.json (Polygraphy formats) and the list of images used."""
    require("polygraphy", "core")
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    encoded = {ref.name: read_image_bytes(ref) for ref in images}  # a few images (verify.count)
    feeds = feeds_for(encoded, input_name, height, width, batch, how)
    results = RunResults()
    results.add(run_onnxruntime(onnx_path, feeds), runner_name=RUNNER)
    refuse_if_changed(images, {name: sha256_hex(data) for name, data in encoded.items()}, "reference")
    with atomic_output(inputs_out) as temp:
        save_json(feeds, str(temp), description="trtforge verification inputs")
    with atomic_output(outputs_out) as temp:
        results.save(str(temp))
    write_text_atomic(images_out, json.dumps([ref.name for ref in images], indent=1) + "\n")
