"""What a no-op build costs against doit's own start-up, on this machine (issue 15).

Builds the yolov8n example in a new project (`trtforge init --example yolov8n`, shrunk to
160 px: the no-op's cost does not depend on the size) with the trtexec conformance double
of tests/doubles in place of trtexec (a script, which trtforge asks for its version on every
build; its wrapper answers that in sh, as a native trtexec would, without starting Python),
then alternates, in one run:

  A: `doit build:yolov8n-int8 build:yolov8n-fp16 build:yolov8n-fp32` (nothing to do)
  B: `doit list` on an empty dodo.py (what Python and doit cost to start)

and prints the median CPU time (user + sys) of each and their ratio. CPU time moves with
the machine's load; `--instructions` also counts both under valgrind's callgrind, which
is repeatable whatever else runs (about 10 s a run).

    .venv/bin/python bench/noop.py [--runs 15] [--instructions]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_OP = ["build:yolov8n-int8", "build:yolov8n-fp16", "build:yolov8n-fp32"]


def doit(folder: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=folder, env=env, capture_output=True, text=True,
                          check=False)


def built_project(folder: Path, env: dict) -> Path:
    """A project with the yolov8n example built, INT8 through FP32, at 160 px."""
    subprocess.run([sys.executable, "-m", "trtforge.cli", "init", str(folder), "--example", "yolov8n"], check=True,
                   capture_output=True)
    recipe = folder / "recipes" / "yolov8n.yaml"
    recipe.write_text(re.sub(r"\b640\b", "160", recipe.read_text()))
    result = doit(folder, *NO_OP, env=env)
    if result.returncode != 0:
        raise SystemExit(f"the build failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    again = doit(folder, *NO_OP, env=env)
    if again.returncode != 0 or any(line.startswith(".") for line in again.stdout.splitlines()):
        raise SystemExit(f"a second build was not a no-op:\n{again.stdout[-2000:]}")
    return folder


def cpu_seconds(command: list[str], folder: Path, env: dict) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def instructions(command: list[str], folder: Path, env: dict) -> int:
    result = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command], cwd=folder,
                            env=env, capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", result.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--instructions", action="store_true", help="also count instructions with callgrind")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from doubles.trtexec import make_wrapper

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        env = {**os.environ, "TRTEXEC": str(make_wrapper(temp / "bin", "10.8"))}
        project = built_project(temp / "project", env)
        empty = temp / "empty"
        empty.mkdir()
        (empty / "dodo.py").write_text("")
        a_command = [sys.executable, "-m", "doit", *NO_OP]
        b_command = [sys.executable, "-m", "doit", "list"]
        a, b = [], []
        for _ in range(args.runs):  # alternated, so both sides see the same load
            a.append(cpu_seconds(a_command, project, env))
            b.append(cpu_seconds(b_command, empty, env))
        a_median, b_median = statistics.median(a), statistics.median(b)
        print(f"no-op build      {a_median:.3f} s CPU (median of {args.runs})")
        print(f"doit list, empty {b_median:.3f} s CPU")
        print(f"ratio            {a_median / b_median:.2f}x  (target: at most 1.5x)")
        if args.instructions and shutil.which("valgrind"):
            a_count, b_count = instructions(a_command, project, env), instructions(b_command, empty, env)
            print(f"instructions     {a_count / 1e9:.3f} G against {b_count / 1e9:.3f} G: {a_count / b_count:.2f}x")


if __name__ == "__main__":
    main()
