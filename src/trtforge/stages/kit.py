"""kit: everything needed to build a variant's engine on the target device, without Python.

Engines must be built on the GPU they run on (a Jetson, say), often far from the laptop
where export, calibration and checks ran. The kit carries the ONNX forms, the calibration
cache, the verification inputs and reference outputs, and `build.sh`: it reads the local
trtexec's version banner and runs the command the engine stage would render for that
TensorRT generation, each written out in full here by the same renderer (a generation
the recipe cannot build on prints the renderer's refusal instead). An INT8 kit that keeps
layers in FP32 also carries the cache TensorRT 8.2 reads for that (calib.keep-fp32.cache,
made as the engine stage makes it), since the device has no Python to derive it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from ..atomic import atomic_output
from ..calib_cache import without_tensors
from ..console import wrote
from ..recipe import PassSpec
from ..render import KEEP_FP32_CACHE, RenderError, check_intent, render_argv
from ..trt_version import GENERATIONS, version_for_generation
from .engine import (EngineJob, binding_types, engine_intent, keep_fp32_layers, keep_fp32_route_of,
                     kept_tensors)
from .package import reproducible_tar_gz


@dataclass(frozen=True)
class KitJob:
    task: str
    stem: str  # top folder in the archive, e.g. yolov8n-int8-kit
    job: EngineJob  # the engine job as planned for this host (its ONNX choice is re-made per generation)
    onnx_files: tuple[tuple[str, Path], ...]  # model.onnx (surgered) and the precision forms that exist
    extra_files: tuple[tuple[str, Path], ...]  # calib.cache, verify/inputs.json, verify/outputs.json
    output: Path
    passes: tuple[PassSpec, ...] = ()  # the recipe's surgery passes (some need a newer parser)
    reverted: bool = False  # accuracy control reverts nodes in the Q/DQ ONNX (render.check_intent)


def make_kit(kit: KitJob) -> None:
    members = {name: path.read_bytes() for name, path in (*kit.onnx_files, *kit.extra_files) if path.is_file()}
    if "calib.cache" in members and _keeps_through_cache(kit):
        tensors = set(kept_tensors(_model_onnx(kit), kit.job.build.keep_fp32))
        text, _ = without_tensors(members["calib.cache"].decode(), tensors)
        members[KEEP_FP32_CACHE] = text.encode()
    members["build.sh"] = build_script(kit, set(members)).encode()
    members["manifest.json"] = (json.dumps({
        "format": "trtforge-kit/1", "task": kit.task,
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in sorted(members.items())},
    }, indent=2, sort_keys=True) + "\n").encode()
    with atomic_output(kit.output) as temp:
        temp.write_bytes(reproducible_tar_gz(kit.stem, members))
    wrote(kit.task, kit.output, "build kit: unpack it on the target device and run build.sh")


def generation_job(kit: KitJob, generation: str) -> EngineJob | str:
    """The engine job as that generation would run it, or the one-line reason it cannot."""
    version = version_for_generation(generation)
    try:
        mode = check_intent(kit.job.precision, kit.job.build, version, kit.passes, kit.reverted)
    except RenderError as exc:
        return str(exc)
    return replace(kit.job, mode=mode, version=version)


def _keeps_through_cache(kit: KitJob) -> bool:
    """Whether some generation keeps layers in FP32 by reading a calibration cache without their scales."""
    jobs = (generation_job(kit, g) for g in GENERATIONS)
    return any(not isinstance(job, str) and keep_fp32_route_of(job) == "calibration_cache" for job in jobs)


def _model_onnx(kit: KitJob) -> Path:
    return dict(kit.onnx_files)["model.onnx"]


def generation_command(kit: KitJob, generation: str, present: set[str]) -> list[str] | str:
    """trtexec argv for one generation, or the one-line reason it cannot build this variant."""
    job = generation_job(kit, generation)
    if isinstance(job, str):
        return job
    onnx = {("fp16", "explicit"): "autocast.onnx", ("int8", "explicit"): "qdq.onnx"}.get((job.precision, job.mode),
                                                                                         "model.onnx")
    if onnx not in present:
        return f"this kit has no {onnx} (rebuild the kit with trtforge's quantize stage available)"
    intent = engine_intent(job, keep_fp32_layers(job, _model_onnx(kit)), binding_types(job, _model_onnx(kit)))
    try:
        return render_argv(replace(intent, onnx=onnx), job.version)
    except RenderError as exc:
        return str(exc)


def build_script(kit: KitJob, present: set[str]) -> str:
    branches = []
    for generation in GENERATIONS:
        command = generation_command(kit, generation, present)
        if isinstance(command, str):
            body = f"echo {shlex.quote(f'build.sh: {command}')} >&2; exit 1"
        else:
            body = 'exec "$TRTEXEC" ' + " ".join(shlex.quote(a) for a in command)
        branches.append(f"  {generation})\n    {body} ;;")
    return _SCRIPT.format(task=kit.task, branches="\n".join(branches))


_SCRIPT = """#!/bin/sh
# {task}: build this engine here, with this device's trtexec (no Python needed).
# Usage: sh build.sh            (TRTEXEC=/path/to/trtexec sh build.sh to pick one)
# The command for each TensorRT generation was rendered by trtforge; this script only
# reads trtexec's version banner and picks the matching one.
set -eu
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
  echo "build.sh: no trtexec at $TRTEXEC; set TRTEXEC=/path/to/trtexec" >&2; exit 1
fi
number=$("$TRTEXEC" --help 2>/dev/null | sed -n 's/^&&&& RUNNING TensorRT\\.trtexec \\[TensorRT v\\([0-9]*\\)\\].*/\\1/p' | head -n 1)
if [ -z "$number" ]; then
  echo "build.sh: $TRTEXEC printed no TensorRT version banner; is it trtexec?" >&2; exit 1
fi
if [ "$number" -lt 10000 ]; then
  major=$((number / 1000)); minor=$((number / 100 % 10))
else
  major=$((number / 10000)); minor=$((number / 100 % 100))
fi
case "$major.$minor" in
  8.2) generation=8.2 ;;
  8.4|8.5) generation=8.5 ;;
  8.6) generation=8.6 ;;
  10.*) generation=10 ;;
  *) if [ "$major" -ge 11 ]; then generation=11; else generation=unsupported; fi ;;
esac
echo "build.sh: TensorRT $major.$minor, grammar $generation" >&2
case "$generation" in
{branches}
  *)
    echo "build.sh: TensorRT $major.$minor is not supported (8.2, 8.4, 8.5, 8.6, 10.x, 11.x are)" >&2; exit 1 ;;
esac
"""
