"""How the reference, check and accuracy-control stages run ONNX models on CPU: feeds one
at a time on every core, or several at once on one thread each (trtforge's
`run_onnxruntime`, `concurrent_feeds`).

Prints, per model, the best wall time of each way over the same preprocessed images
(alternated, after a warm-up), their ratio, and whether the outputs are the same bits.
Q/DQ models run in the check's CPU form. `--busy N` keeps N other processes spinning
meanwhile, as pytest workers or a second build do on a shared machine.

    .venv/bin/python bench/cpu_runs.py [--images 8] [--size 640] [--busy 1] [model.onnx ...]

Without models it takes the quickstart's yolov8n FP32 and INT8 (run `doit cpu:yolov8n` first).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import numpy as np

from trtforge.images import decode_image, list_image_set, preprocess, read_image_bytes
from trtforge.quant.cpu_form import cpu_session_model
from trtforge.stages import reference

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [ROOT / "artifacts" / "yolov8n" / "model.onnx", ROOT / "artifacts" / "yolov8n" / "int8" / "qdq.onnx"]


def feeds(count: int, size: int) -> list[dict]:
    images = list_image_set(ROOT / "calib" / "demo-calibration.txt", ROOT)[:count]
    return [{"images": preprocess(decode_image(read_image_bytes(r), r.name), size, size)} for r in images]


def timed(model: bytes, inputs: list[dict], at_once: bool) -> tuple[float, list[dict]]:
    """(seconds, outputs) of one run_onnxruntime call, feeds concurrent or one at a time."""
    concurrent = reference.concurrent_feeds
    if not at_once:
        reference.concurrent_feeds = lambda count: 1
    try:
        started = time.perf_counter()
        outputs = reference.run_onnxruntime(model, inputs)
        return time.perf_counter() - started, outputs
    finally:
        reference.concurrent_feeds = concurrent


def spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="processes spinning beside the runs")
    args = parser.parse_args()

    inputs = feeds(args.images, args.size)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    print(f"{len(inputs)} images at {args.size} px, {reference.available_cores()} cores, {args.busy} busy processes; "
          f"{reference.concurrent_feeds(len(inputs))} feeds at once")
    for path in args.models:
        model, record = cpu_session_model(path)
        model = model if isinstance(model, bytes) else Path(model).read_bytes()
        timed(model, inputs[:2], True)  # warm-up: page cache, thread pools
        best = {True: float("inf"), False: float("inf")}
        outputs = {}
        for _ in range(args.repeats):
            for at_once in (False, True):
                seconds, outputs[at_once] = timed(model, inputs, at_once)
                best[at_once] = min(best[at_once], seconds)
        same = all(np.array_equal(a[name], b[name]) for a, b in zip(outputs[False], outputs[True]) for name in a)
        form = "as built" if record["form"] == "as built" else "check's form"
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({form}): "
              f"one at a time {best[False]:.2f} s, at once {best[True]:.2f} s, {best[False] / best[True]:.2f}x; "
              f"outputs {'identical' if same else 'DIFFER'}")
    for process in spinners:
        process.terminate()


if __name__ == "__main__":
    main()
