"""Export + surgery of YOLOv8n against Ultralytics' own ONNX export, on this machine.

Both sides run as fresh processes, alternated, and are measured in CPU time (user + system
of the process and its children), which moves less than wall time on a shared machine:

- trtforge: `doit run -a export:yolov8n surgery:yolov8n` in this repository (the recipe's
  640 px, dynamic batch, slim + infer_shapes);
- Ultralytics: `YOLO("yolov8n.yaml").export(format="onnx", simplify=True, dynamic=True)`
  in a temporary folder (the same untrained architecture; onnxslim included).

Prints the median and the least of each side over the repeats, and their ratios (issue
15's target: at most 1.0x). On this 2-core machine a side's CPU time moves by up to a
third between runs, so take the ratio of the least as the cost and the medians as a check.

    .venv/bin/python bench/export.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ULTRALYTICS = ("from ultralytics import YOLO\n"
               "YOLO('yolov8n.yaml').export(format='onnx', simplify=True, dynamic=True)\n")


def cpu_seconds(argv: list[str], cwd: Path) -> float:
    """CPU time of one command and everything it started."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    doit = [str(Path(sys.executable).with_name("doit")), "run", "-a", "export:yolov8n", "surgery:yolov8n"]
    times: dict[str, list[float]] = {"trtforge": [], "ultralytics": []}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            times["trtforge"].append(cpu_seconds(doit, ROOT))
            times["ultralytics"].append(cpu_seconds([sys.executable, "-c", ULTRALYTICS], Path(scratch)))
    for name, values in times.items():
        print(f"{name:12s} median {statistics.median(values):5.2f} s CPU, least {min(values):5.2f} s  (runs: "
              f"{', '.join(f'{v:.2f}' for v in values)})")
    ours, theirs = times.values()
    print(f"ratio of the least: {min(ours) / min(theirs):.2f}x, of the medians: "
          f"{statistics.median(ours) / statistics.median(theirs):.2f}x (target <= 1.0x)")


if __name__ == "__main__":
    main()
