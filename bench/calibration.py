"""Calibration cost against plain inference, on this machine.

Prints the wall time and peak memory of the calib stage's statistics (trtforge's
Statistics: the augmented model, run as the stage runs it, and its collector) over N
images, and of bare ONNX Runtime forward passes over the same N preprocessed images in the
same batches, and their ratio (issue 15's target: at most 1.2x). The two sides alternate,
each in a fresh process so that one's memory arena does not count against the other, and
the best of the repeats is kept; warm-up runs are excluded.

    .venv/bin/python bench/calibration.py [--images 32] [--size 640] [--method minmax]

Needs an exported model: run `doit surgery:yolov8n` first (or pass --onnx).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def batches(paths: list[Path], size: int, batch: int) -> list[np.ndarray]:
    from trtforge.images import decode_image, preprocess

    arrays = [preprocess(decode_image(p.read_bytes(), str(p)), size, size) for p in paths]
    return [np.concatenate(arrays[i:i + batch]) for i in range(0, len(arrays), batch)]


def one_side(args) -> dict:
    """Time one side in this process: 'bare' forward passes or the stage's 'statistics'."""
    import onnxruntime as ort

    from trtforge.images import list_image_set
    from trtforge.stages.calibrate import Statistics

    refs = list_image_set(ROOT / "calib/demo-calibration.txt", ROOT)
    data = batches([refs[i % len(refs)].path for i in range(args.images)], args.size, args.batch)
    if args.side == "bare":
        session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
        run = lambda batch: session.run(None, {args.input: batch})
        finish, tensors = (lambda: None), 0
    else:
        statistics = Statistics(args.onnx, args.method, args.input)
        run, finish = statistics.add, (lambda: statistics.ranges(99.99))
        tensors = [len(statistics.plan.tensors), len(statistics.plan.observed)]
    run(data[0])  # warm-up: ONNX Runtime's first run allocates its arenas
    started = time.perf_counter()
    for batch in data:
        run(batch)
    finish()
    return {"seconds": time.perf_counter() - started, "tensors": tensors,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def measured(args, side: str) -> dict:
    argv = [sys.executable, __file__, "--side", side, "--onnx", str(args.onnx), "--images", str(args.images),
            "--size", str(args.size), "--batch", str(args.batch), "--method", args.method, "--input", args.input]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=ROOT / "artifacts/yolov8n/model.onnx")
    parser.add_argument("--input", default="images")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--method", default="minmax", choices=["entropy", "minmax", "percentile"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", choices=["bare", "statistics"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(one_side(args)))
        return
    runs = {"bare": [], "statistics": []}
    for _ in range(args.repeats):
        for side, results in runs.items():
            results.append(measured(args, side))
    bare, stats = (min(results, key=lambda r: r["seconds"]) for results in runs.values())
    total, observed = stats["tensors"]
    print(f"model {args.onnx}, {args.images} images at {args.size}px, batch {args.batch}, method {args.method}, "
          f"{total} float tensors of which {observed} observed")
    for name, result in (("bare ONNX Runtime forward", bare), ("calibration statistics", stats)):
        print(f"{name:26s} {result['seconds']:7.2f} s  ({args.images / result['seconds']:6.1f} images/s), "
              f"peak RSS {result['peak_gb']:.2f} GB")
    print(f"ratio: {stats['seconds'] / bare['seconds']:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
