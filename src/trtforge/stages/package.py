"""package: a reproducible release archive of one built variant.

`artifacts/release/<recipe>-<variant>-trt<version>-sm<cc>-<engine hash>[-unverified].tar.gz`
(`-unverified` unless every comparison ran and passed; a failed check is never packaged) holds the
engine, the ONNX it was built from (as `model.onnx`, the name its command uses, plus
`model.fp32.onnx` when a Q/DQ or AutoCast model was built), the calibration cache, the
reports, `reproduce.sh` with the exact trtexec command, and `manifest.json`: a sha256 per
file, the resolved recipe, the model's metadata (task, class names, stride, input size, how
its input is fed: what a pipeline needs to read the engine's outputs), the argv, what the build log says about TensorRT, CUDA and the
GPU, the calibration set's content key, the verification results (skipped checks marked;
mAP50 / mAP50-95 against verify.labels when the recipe has labels) and trtexec's
performance summary. Engines only load where they were built for (GPU,
TensorRT version, flags): the manifest says which, so a fleet can check before deploying.

The same inputs give a byte-identical archive: sorted members, mtime/uid/gid 0, no
owner names, fixed modes, PAX format and a gzip header with no name or time. A sidecar
`<archive>.sha256` lets `trtforge verify-package` refuse a damaged archive before it
decompresses anything.

Opt-in layouts: a Triton model repository (`triton/<name>/config.pbtxt` with platform
`tensorrt_plan`, `triton/<name>/1/model.plan`) and an Ultralytics-loadable `<name>.engine`
(4-byte little-endian length, JSON metadata, then the plan), opt-in because that header
makes the file unreadable to plain trtexec and DeepStream.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_output, write_text_atomic
from ..console import wrote
from ..errors import StageError, require
from ..images import Preprocess, same_feed, ultralytics_feed
from ..recipe import TritonSpec, ultralytics_feed_field

FORMAT = "trtforge-release/1"
ENGINE = "engine.plan"
# What every member of a release carries; `trtforge verify-package` accepts exactly this
# (`tar -x` as root restores modes and owners, so anything else is refused there).
FILE_MODE, SCRIPT_MODE, DIR_MODE = 0o644, 0o755, 0o755
OWNER = {"uid": 0, "gid": 0, "uname": "", "gname": ""}


def member_mode(name: str) -> int:
    """The mode a release file gets: executable for the shell scripts, read-only otherwise."""
    return SCRIPT_MODE if name.endswith(".sh") else FILE_MODE


@dataclass(frozen=True)
class PackageJob:
    task: str
    recipe: str
    variant: str
    files: tuple[tuple[str, Path], ...]  # (name in the archive, source), optional ones may be missing
    summary: Path  # the engine stage's summary.json
    script: Path  # the engine stage's trtexec.sh
    export_metadata: Path  # names, stride, task, imgsz
    resolved_recipe: dict
    max_batch: int  # 0 when the batch axis is fixed
    triton: TritonSpec | None
    ultralytics_engine: bool
    ship_onnx: bool  # package.onnx
    release_dir: Path
    record: Path  # the doit target: names the archive and its sha256
    io: str = "fp32"  # build.io: the engine's float bindings are float16 with fp16


UNVERIFIED = "-unverified"  # what an archive's name ends with (before .tar.gz) unless it is verified


def archive_stem(recipe: str, variant: str, summary: dict, verified: bool) -> str:
    """The archive's name without .tar.gz (and its folder inside): what the engine is built for,
    and `-unverified` at the end when not every comparison ran and passed, so that a file
    copied away from its manifest still says so (issue 14)."""
    version = summary.get("tensorrt", "unknown")
    cc = summary.get("device", {}).get("compute_capability", "unknown").replace(".", "")
    stem = f"{recipe}-{variant}-trt{version}-sm{cc}-{summary['engine_sha256'][:8]}"
    return stem if verified else stem + UNVERIFIED


def make_package(job: PackageJob) -> None:
    summary = json.loads(job.summary.read_text())
    members = {name: _member_bytes(name, path) for name, path in job.files if path.is_file()}
    check_engine_unchanged(job, summary, members)
    metadata = json.loads(job.export_metadata.read_text())
    if job.triton:
        members.update(triton_repository(f"{job.recipe}_{job.variant}".replace("-", "_").replace("@", "_"),
                                         members["model.onnx"],
                                         members[ENGINE], job.max_batch, job.triton, job.io, metadata))
    if job.ultralytics_engine:
        members[f"{job.recipe}-{job.variant}.engine"] = ultralytics_engine(
            members[ENGINE], {**metadata, "task": ultralytics_task(job, metadata)}, job.max_batch or 1)
    left_out = {} if job.ship_onnx else {name: hashlib.sha256(members.pop(name)).hexdigest()
                                          for name in ONNX_MEMBERS if name in members}
    members["reproduce.sh"] = _reproduce_script(job.script.read_text(), left_out)
    manifest = _manifest(job, summary, members, metadata)
    if left_out:
        manifest["not_shipped"] = {name: {"sha256": digest, "why": "package.onnx: false"}
                                   for name, digest in left_out.items()}
    members["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    verdict = manifest["verification"]["status"]
    if verdict == "failed":
        check = dict(job.files)["check.json"]
        raise StageError(f"{job.task}: {check} says the variant failed its check, and a failed variant is never "
                         f"released; fix what `doit check:{job.recipe}-{job.variant.partition('@')[0]}` reports, then rerun")
    stem = archive_stem(job.recipe, job.variant, summary, verdict == "verified")
    archive = job.release_dir / f"{stem}.tar.gz"
    data = reproducible_tar_gz(stem, members)
    digest = hashlib.sha256(data).hexdigest()
    with atomic_output(archive) as temp:
        temp.write_bytes(data)
    write_text_atomic(archive.with_name(archive.name + ".sha256"), f"{digest}  {archive.name}\n")
    remove_other_status(archive)
    write_text_atomic(job.record, json.dumps({"archive": archive.name, "sha256": digest, "verification": verdict},
                                             indent=1) + "\n")
    wrote(job.task, archive, f"release archive, {verdict}; its sha256 in {archive.name}.sha256")


def remove_other_status(archive: Path) -> None:
    """Remove the same engine's archive (and sidecar) under the other status's name: a
    release checked again, say now with TensorRT present, replaces the one it supersedes,
    so a folder never offers a verified and an unverified archive of one engine."""
    stem = archive.name[:-len(".tar.gz")]
    other = stem[:-len(UNVERIFIED)] if stem.endswith(UNVERIFIED) else stem + UNVERIFIED
    for name in (f"{other}.tar.gz", f"{other}.tar.gz.sha256"):
        archive.with_name(name).unlink(missing_ok=True)


SHIPPED_LOG_MAX = 8 << 20  # a --verbose trtexec log can be hundreds of MB (issue 13)


def _member_bytes(name: str, path: Path) -> bytes:
    """A member's bytes; trtexec.log beyond SHIPPED_LOG_MAX is shipped as its first and last
    halves around a line saying how much was left out (artifacts/ keeps the whole log). Its
    head holds the command and the device block, its tail the build's end and timings."""
    if name != "trtexec.log" or path.stat().st_size <= SHIPPED_LOG_MAX:
        return path.read_bytes()
    half = SHIPPED_LOG_MAX // 2
    with open(path, "rb") as log:
        head = log.read(half)
        skipped = log.seek(-half, 2) - half
        tail = log.read()
    # No path in the note: the same build gives the same archive wherever the project lies.
    note = f"\n[trtforge: {skipped} bytes of this log left out; the build's artifacts folder keeps it whole]\n".encode()
    return head + note + tail


def check_engine_unchanged(job: PackageJob, summary: dict, members: dict[str, bytes]) -> None:
    """Refuse to ship an engine that is not the one summary.json describes.

    An engine edited in place with its size and mtime restored passes the engine task's
    up-to-date check (it hashes only when the mtime moved), so compare the bytes here.
    """
    source = dict(job.files).get(ENGINE, ENGINE)
    rebuild = f"rebuild it with `doit forget engine:{job.recipe}-{job.variant}` then `doit {job.task}`"
    recorded, plan = summary.get("engine_sha256"), members.get(ENGINE)
    if plan is None:
        raise StageError(f"{job.task}: the engine {source} is missing; {rebuild}")
    if not isinstance(recorded, str):
        raise StageError(f"{job.task}: {job.summary} records no engine_sha256 to check {source} against; {rebuild}")
    actual = hashlib.sha256(plan).hexdigest()
    if actual != recorded.lower():
        raise StageError(f"{job.task}: {source} has sha256 {actual[:16]}..., not the {recorded[:16]}... "
                         f"{job.summary} records: the engine changed after it was built; {rebuild}")


# export.json's keys a pipeline needs to use the engine: what its outputs mean and how to feed it
MODEL_KEYS = ("task", "names", "stride", "imgsz", "kpt_shape", "end2end", "preprocess")


def _manifest(job: PackageJob, summary: dict, members: dict[str, bytes], metadata: dict) -> dict:
    calib = _json_member(members, "calib.json")
    check = _json_member(members, "check.json")
    return {
        "format": FORMAT,
        "recipe": job.resolved_recipe,
        "variant": job.variant,
        "model": {key: metadata[key] for key in MODEL_KEYS if key in metadata},
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in sorted(members.items())},
        "tensorrt": summary.get("tensorrt"),
        "device": summary.get("device", {}),
        "argv": summary.get("argv", []),
        "performance": summary.get("performance", {}),
        "calibration": ({k: calib.get(k) for k in ("key", "method", "images", "skipped", "batch")}
                        if calib else None),
        "verification": verification_of(check) if check else {
            "passed": False, "status": "unverified: the recipe has no verify section"},
    }


ONNX_MEMBERS = ("model.onnx", "model.fp32.onnx")


def _without_onnx_note(left_out: dict[str, str]) -> list[str]:
    """The comment lines reproduce.sh opens with when the archive ships no ONNX (none otherwise)."""
    if not left_out:
        return []
    lines = ["# This release ships no ONNX (package.onnx: false). To rebuild the engine, put the ONNX"]
    return lines + [f"# with sha256 {digest} here as {name}" for name, digest in left_out.items()]


def verification_of(check: dict) -> dict:
    """What the release can claim: `verified` only when every comparison ran and passed.

    check.json's own `passed` means no gate failed; a comparison that could not run (the
    engine's, without TensorRT where it was checked; a task gate with nothing to measure)
    left nothing failed but proved nothing either, so such a release is `unverified`,
    saying which did not run, in the manifest, the release record and package's line."""
    engine = check.get("engine", {}).get("status", "skipped: not compared")
    gate = check.get("gate", {}).get("status", "passed")
    not_run = [f"{what} {status}" for what, status in (("engine comparison", engine), ("task gate", gate))
               if status.startswith("skipped")]
    if not check.get("passed"):
        status = "failed"
    else:
        status = "unverified: " + "; ".join(not_run) if not_run else "verified"
    return {
        "passed": status == "verified",
        "status": status,
        "onnx": {name: out.get("passed") for name, out in check.get("onnx", {}).get("outputs", {}).items()},
        "engine": check.get("engine", {}).get("status"),
        "gate": {k: check["gate"].get(k) for k in ("task", "figure", "value", "floor", "status")}
        if "gate" in check else None,
        "labels": _labels(check["labels"]) if "labels" in check else None,
    }


def _labels(labels: dict) -> dict:
    """verify.labels' figures for the manifest: this engine's ONNX and the FP32 reference against
    the labels (P, R, mAP50, mAP50-95), without the per-class breakdown check.json keeps."""
    def overall(side: dict) -> dict:
        return {k: side[k] for k in ("precision", "recall", "map50", "map50_95", "status") if k in side}

    return {**{k: labels[k] for k in ("source", "images", "labelled_images", "instances", "status")},
            **{side: overall(labels[side]) for side in ("reference", "variant") if side in labels}}


def _json_member(members: dict[str, bytes], name: str) -> dict | None:
    return json.loads(members[name]) if name in members else None


def _reproduce_script(trtexec_sh: str, left_out: dict[str, str]) -> bytes:
    """reproduce.sh: the engine stage's trtexec.sh (whose `exec` line comes last), moving first
    into the folder it lies in, which holds the inputs under the names the command uses, so
    `sh release/reproduce.sh` works from any current directory; with the ONNX to put back
    when the archive ships none."""
    shebang, *comments, command = trtexec_sh.rstrip("\n").split("\n")
    comments = [line.replace("# It runs in a work folder holding these inputs under these names:",
                             "# It runs in its own folder, which holds its inputs under these names:")
                for line in comments]
    lines = [shebang, *_without_onnx_note(left_out), *comments,
             'cd "$(dirname "$0")" || exit 1', command]
    return ("\n".join(lines) + "\n").encode()


def reproducible_tar_gz(stem: str, members: dict[str, bytes]) -> bytes:
    """A .tar.gz whose bytes depend only on the members' names and contents."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(f"{stem}/{name}")
            info.size, info.mtime, info.mode = len(members[name]), 0, member_mode(name)
            info.uid, info.gid, info.uname, info.gname = (OWNER[k] for k in ("uid", "gid", "uname", "gname"))
            tar.addfile(info, io.BytesIO(members[name]))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


# ----------------------------------------------------------------------------- layouts

_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 3: "TYPE_INT8",
                 2: "TYPE_UINT8"}


def triton_repository(name: str, onnx_bytes: bytes, plan: bytes, max_batch: int,
                      scheduling: TritonSpec | None = None, io: str = "fp32",
                      metadata: dict | None = None) -> dict[str, bytes]:
    """`triton/<name>/config.pbtxt` and `triton/<name>/1/model.plan`, I/O from the ONNX (float
    tensors are TYPE_FP16 when build.io is fp16, as the engine's bindings are), with the recipe's
    dynamic batching and instance count (Triton's defaults without). Class names, when the
    export knows them, go to `labels.txt`; a classifier's output names it as its label file,
    which Triton's classification extension reads."""
    scheduling = scheduling or TritonSpec()
    onnx = require("onnx", "core")
    graph = onnx.load_from_string(onnx_bytes).graph
    initializers = {i.name for i in graph.initializer}
    names = (metadata or {}).get("names") or {}
    labelled = bool(names) and (metadata or {}).get("task") == "classify"

    def tensors(values, labels: bool = False) -> str:
        entries = []
        for value in values:
            tensor_type = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            if max_batch:
                dims = dims[1:]  # Triton adds the batch dimension itself
            elem_type = tensor_type.elem_type
            if io == "fp16" and elem_type == onnx.TensorProto.FLOAT:
                elem_type = onnx.TensorProto.FLOAT16
            dtype = _TRITON_TYPES.get(elem_type)
            if dtype is None:
                raise StageError(f"Triton layout: tensor '{value.name}' has an ONNX type Triton's "
                                 f"TensorRT backend is not mapped for ({tensor_type.elem_type})")
            label = '\n    label_filename: "labels.txt"' if labels and not entries else ""
            entries.append(f'  {{\n    name: "{value.name}"\n    data_type: {dtype}\n'
                           f'    dims: [ {", ".join(str(d) for d in dims)} ]{label}\n  }}')
        return ",\n".join(entries)

    inputs = [i for i in graph.input if i.name not in initializers]
    config = (f'name: "{name}"\nplatform: "tensorrt_plan"\nmax_batch_size: {max_batch}\n'
              f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(graph.output, labelled)}\n]\n"
              f"instance_group [\n  {{\n    count: {scheduling.instances}\n    kind: KIND_GPU\n  }}\n]\n")
    if scheduling.dynamic_batching:
        if not max_batch:
            raise StageError("package.triton.dynamic_batching: the input's batch axis is fixed, so Triton cannot "
                             "batch requests; add 0 to input.dynamic_axes or turn dynamic_batching off")
        config += f"dynamic_batching {{\n  max_queue_delay_microseconds: {scheduling.max_queue_delay_us}\n}}\n"
    files = {f"triton/{name}/config.pbtxt": config.encode(), f"triton/{name}/1/model.plan": plan}
    if names:
        files[f"triton/{name}/labels.txt"] = _labels_text(names).encode()
    return files


def _labels_text(names: dict | list) -> str:
    """One class name per line, in class-index order (export.json keys are the indices as text)."""
    ordered = sorted((int(i), n) for i, n in names.items()) if isinstance(names, dict) else enumerate(names)
    return "".join(f"{label}\n" for _, label in ordered)


def ultralytics_task(job: PackageJob, metadata: dict) -> str:
    """The task the `.engine` header names: the exported model's own, else the recipe's
    verify.task. Never a guess: Ultralytics picks its predictor, and so how it feeds and
    decodes the engine, by it. Refused when the model is fed otherwise than Ultralytics
    feeds that task (the recipe check could not know the task of a recipe without verify)."""
    verify = job.resolved_recipe.get("verify") or {}
    task = metadata.get("task") or (verify.get("task") if verify.get("task") != "raw" else None)
    field = f"recipes/{job.resolved_recipe.get('file', job.recipe + '.yaml')}: package.ultralytics_engine"
    if not task:
        raise StageError(f"{job.task}: {field}: the model does not say its task and the recipe has no verify.task; "
                         "add a verify section with its task, or remove package.ultralytics_engine")
    height, width = metadata.get("imgsz") or [0, 0]
    fed = metadata.get("preprocess")
    if fed is not None and not same_feed(_preprocess_of(fed), ultralytics_feed(task, height, width)):
        raise StageError(f"{job.task}: {field}: Ultralytics' YOLO() feeds a {task} model as "
                         f"input.preprocess: {ultralytics_feed_field(task, height, width)} does, not as the recipe "
                         "feeds it; set that, or remove package.ultralytics_engine")
    return task


def _preprocess_of(data: dict) -> Preprocess:
    """export.json's `preprocess` (the recipe's input.preprocess as JSON) as a Preprocess."""
    return Preprocess(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def ultralytics_engine(plan: bytes, metadata: dict, batch: int) -> bytes:
    """The `.engine` Ultralytics' AutoBackend loads: int32 LE length, JSON metadata, plan.
    `metadata` must name the task (see ultralytics_task)."""
    meta = {
        "description": "exported by trtforge",
        "author": "trtforge",
        "task": metadata["task"],
        "stride": metadata.get("stride", 32),
        "batch": batch,
        "imgsz": metadata.get("imgsz"),
        "names": metadata.get("names", {}),
    }
    # Ultralytics' AutoBackend reads these too: keypoint layout (pose) and an NMS-free head
    meta.update({key: metadata[key] for key in ("kpt_shape", "end2end") if key in metadata})
    blob = json.dumps(meta, sort_keys=True).encode()
    return len(blob).to_bytes(4, byteorder="little", signed=True) + blob + plan
