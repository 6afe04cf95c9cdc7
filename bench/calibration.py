"""Calibration cost against plain inference, on this machine.

Prints the wall time of the calib stage's loop over N images (statistics included) and
of bare ONNX Runtime forward passes over the same N preprocessed images in the same
batches, and their ratio (target: at most 1.3). Warm-up runs are excluded from both.

    .venv/bin/python bench/calibration.py [--images 64] [--size 640] [--method entropy]

Needs an exported model: run `doit surgery:yolov8n` first (or pass --onnx).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from trtforge.images import decode_image, list_image_set, preprocess
from trtforge.stages.calibrate import augmented_model, _collector  # noqa: PLC2701 - measuring internals

ROOT = Path(__file__).resolve().parents[1]


def batches(paths: list[Path], size: int, batch: int) -> list[np.ndarray]:
    arrays = [preprocess(decode_image(p.read_bytes(), str(p)), size, size) for p in paths]
    return [np.concatenate(arrays[i:i + batch]) for i in range(0, len(arrays), batch)]


def timed_runs(session, outputs, name: str, data: list[np.ndarray], collector=None) -> float:
    session.run(outputs, {name: data[0]})  # warm-up: ORT's first run allocates its arenas
    started = time.perf_counter()
    for batch in data:
        values = session.run(outputs, {name: batch})
        if collector is not None:
            collector.add(values)
    if collector is not None:
        collector.ranges(99.99)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=ROOT / "artifacts/yolov8n/model.onnx")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--method", default="entropy", choices=["entropy", "minmax", "percentile"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    refs = list_image_set(ROOT / "calib/demo-calibration.txt", ROOT)
    paths = [refs[i % len(refs)].path for i in range(args.images)]
    data = batches(paths, args.size, args.batch)
    providers = ["CPUExecutionProvider"]
    bare = ort.InferenceSession(str(args.onnx), providers=providers)
    model, tensors = augmented_model(args.onnx, args.method)
    stats = ort.InferenceSession(model.SerializeToString(), providers=providers)
    bare_s = calib_s = float("inf")
    for _ in range(args.repeats):
        bare_s = min(bare_s, timed_runs(bare, None, "images", data))
        collector = _collector(args.method, tensors)
        calib_s = min(calib_s, timed_runs(stats, collector.outputs, "images", data, collector))
    print(f"model {args.onnx.name}, {args.images} images at {args.size}px, batch {args.batch}, "
          f"{len(tensors)} tensors, method {args.method}")
    print(f"bare ONNX Runtime forward: {bare_s:7.2f} s  ({args.images / bare_s:6.1f} images/s)")
    print(f"calibration (statistics):  {calib_s:7.2f} s  ({args.images / calib_s:6.1f} images/s)")
    print(f"ratio: {calib_s / bare_s:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
