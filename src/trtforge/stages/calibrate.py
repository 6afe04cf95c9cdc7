"""calib: activation ranges from real images -> a TensorRT calibration cache.

trtexec never calibrates from data (`--calib` only reads a cache), so the ranges are
computed here, on CPU, with ONNX Runtime: the model is augmented with statistics outputs
for the float tensors TensorRT will see, and the batches stream through it once. Every
such tensor gets a range; those that follow exactly from others' statistics (a Sigmoid,
Relu or SiLU output, a Concat of observed tensors) are computed rather than measured
(trtforge.quant.derived_ranges), which keeps ONNX Runtime's fusions and halves the work.

- minmax: in-graph ReduceMax/ReduceMin per tensor (per batch-and-channel row, which ONNX
  Runtime spreads over the cores), exact over every element;
- entropy and percentile: in-graph strided samples per tensor and image (a prime stride,
  so the sample does not alias with rows or channels), folded into a fixed-size histogram
  of |x| per tensor; the threshold comes from the histogram (KL divergence as TensorRT's
  entropy calibrator does, or the requested percentile).

Reading statistics in the graph instead of making every activation a graph output is
what keeps calibration close to the cost of plain inference (bench/calibration.py), and
memory is fixed: a histogram per tensor, never per image, and on CPU one or two images'
activations at a time (Statistics).

The result is keyed by the content of the images, the preprocessing, the batch, the
method and the ONNX. Each key's ranges are kept under artifacts/calib/, so a set that
comes back to an earlier state reuses them, and nothing is ever reused when any of those
differ (Ultralytics reuses a stale `.cache` silently; this must not). A stored result
carries its sha256 and is checked before reuse; one that is damaged (a power loss can
leave it empty) is computed again after one warning naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import atomic_output, reusable_stored_json, write_stored_json, write_text_atomic
from ..calib_cache import write_cache_text
from ..console import Progress, info, warn
from ..errors import StageError, require
from ..images import (ULTRALYTICS, ImageRef, ImageSetChanged, Preprocess, UnusableImage, check_encoded,
                      decode_image, preprocess, read_image_bytes, refuse_if_changed, sha256_hex)
from ..quant.derived_ranges import Derivation, derivations, derive_bounds, derive_samples
from ..trt_version import TrtVersion

ALGORITHM_VERSION = 3  # bump when the statistics change, so stored ranges are not reused
SAMPLES_PER_IMAGE = 4096
HISTOGRAM_BINS = 2048
NVIDIA_SUGGESTED_IMAGES = 500
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class CalibrationJob:
    task: str
    onnx: Path
    images: tuple[ImageRef, ...]
    input_name: str
    height: int
    width: int
    batch: int
    method: str  # entropy | minmax | percentile
    percentile: float
    skip_bad_images: bool
    header_version: TrtVersion
    store_dir: Path
    cache_out: Path
    report_out: Path
    sample_out: Path
    recipe_field: str = "calibration"  # where the recipe sets it, for messages: variants.<V>.calibration
    preprocess: Preprocess = ULTRALYTICS  # input.preprocess


def calibrate(job: CalibrationJob) -> None:
    """Write the calibration cache, its report and one preprocessed batch (for ModelOpt).

    Every output is written only after every image was checked to still hold the bytes
    the key was computed from, so a set that changed while calibrating leaves nothing
    that doit would record as computed from it."""
    if not job.images:
        raise StageError(f"{job.task}: the calibration set is empty")
    digests, unusable = _scan(job)
    usable = tuple(ref for ref in job.images if ref.name not in unusable)
    if not usable:
        raise _nothing_usable(job, unusable)
    key = calibration_key(job, digests)
    stored = job.store_dir / f"{key[:24]}.json"
    result = _stored_result(job, stored, key)
    if result is not None:
        info(f"{job.task}: reusing ranges computed earlier for the same images, preprocessing, "
             f"batch, method and ONNX ({stored.name})")
        result["report"]["reused"] = True
    else:
        result = _compute(job, usable, digests, key, unusable)
        write_stored_json(stored, result)
    sample = _sample_batch(job, usable, digests)
    refuse_if_changed(job.images, digests, job.task)
    _warn_skipped(job, result["report"])
    _write_outputs(job, result, sample)


def _write_outputs(job: CalibrationJob, result: dict, sample) -> None:
    with atomic_output(job.sample_out) as temp:
        with open(temp, "wb") as f:
            require("numpy", "core").save(f, sample)
    write_text_atomic(job.cache_out, write_cache_text(job.header_version, dict(result["ranges"])))
    write_text_atomic(job.report_out, json.dumps(result["report"], indent=2, sort_keys=True) + "\n")


def _stored_result(job: CalibrationJob, stored: Path, key: str) -> dict | None:
    """The result stored under `key`, or None: none was stored, or the file is damaged (a
    power loss can leave it empty) and is computed again and replaced, after one warning
    naming it. Ranges read back unchecked would go straight into the engine's INT8 scales."""
    return reusable_stored_json(stored, lambda payload: _stored_problem(payload, key), job.task,
                                "calibration result", "computing the ranges again")


def _stored_problem(payload: dict, key: str) -> str | None:
    """What makes a stored calibration result unusable (None when nothing does): the ranges
    must be [tensor, value] pairs whose values are positive and finite in float32, as the
    cache's scales must be, and the report must be the one computed for `key`."""
    report, ranges = payload.get("report"), payload.get("ranges")
    if not isinstance(report, dict) or report.get("key") != key or not isinstance(report.get("skipped"), list):
        return "its report is not the one computed for these inputs"
    if not isinstance(ranges, list) or not ranges:
        return "it holds no ranges"
    for pair in ranges:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            return f"an entry is not a [tensor, range] pair: {json.dumps(pair)[:80]}"
        value = pair[1]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= FLOAT32_MAX:
            return f"tensor '{pair[0]}' has the range {json.dumps(value)[:40]}, not a positive finite number"
    return None


def calibration_key(job: CalibrationJob, digests: dict[str, str]) -> str:
    """sha256 of everything the ranges depend on (image bytes, not names or mtimes)."""
    identity = {
        "images": sorted(digests.values()),
        "preprocess": {**asdict(job.preprocess), "size": [job.height, job.width]},
        "batch": job.batch,
        "method": job.method,
        "percentile": job.percentile if job.method == "percentile" else None,
        "onnx": sha256_hex(job.onnx.read_bytes()),
        "algorithm": ALGORITHM_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _compute(job: CalibrationJob, usable: tuple[ImageRef, ...], digests: dict[str, str], key: str,
             unusable: dict[str, str]) -> dict:
    if len(usable) < NVIDIA_SUGGESTED_IMAGES:
        warn(f"{job.task}: calibrating on {len(usable)} images; NVIDIA suggests about "
             f"{NVIDIA_SUGGESTED_IMAGES} representative images for INT8")
    statistics = Statistics(job.onnx, job.method, job.input_name)
    started, used, skipped = time.monotonic(), 0, dict(unusable)
    with Progress(f"{job.task}: calibrating", len(usable)) as progress:
        for batch, names, bad in _batches(job, usable, digests):
            skipped.update(bad)
            if batch is not None:
                _add_batch(job, statistics, batch)
                used += len(names)
            progress.advance(len(names) + len(bad))
    if used == 0:
        raise _nothing_usable(job, skipped)
    seconds = time.monotonic() - started
    ranges, left_out = statistics.ranges(job.percentile)
    if left_out:
        info(f"{job.task}: {len(left_out)} tensor(s) hold inf or NaN (the first: {left_out[0]}); they have no "
             "scale in the cache, so TensorRT keeps the layers around them above INT8")
    report = {
        "task": job.task, "key": key, "method": job.method, "images": used, "skipped": sorted(skipped),
        "skipped_why": dict(sorted(skipped.items())),
        "batch": job.batch, "input": [job.height, job.width], "tensors": len(ranges),
        "observed": len(statistics.plan.observed), "left_out": left_out,
        "seconds": round(seconds, 3), "images_per_second": round(used / seconds, 2), "reused": False,
        "header": "EntropyCalibration2 (trtexec's calibrator type; the ranges come from 'method')",
    }
    if job.method == "percentile":
        report["percentile"] = job.percentile
    # A list of pairs, not a mapping: the stored JSON keeps the graph order of the tensors.
    return {"ranges": [[name, float(value)] for name, value in ranges.items()], "report": report}


def _add_batch(job: CalibrationJob, statistics: Statistics, batch) -> None:
    """Run one batch, or say in one line what to lower when memory runs short (ONNX Runtime
    reports a failed allocation as an error; numpy as MemoryError)."""
    try:
        statistics.add(batch)
    except Exception as exc:  # onnxruntime's own exception types are not importable lazily
        if not (isinstance(exc, MemoryError) or "allocat" in str(exc).lower()):
            raise
        if len(batch) == 1 or statistics.images_per_run == 1:
            remedy = "one image does not fit: free memory, or calibrate at a smaller input size"
        elif statistics.images_per_run:
            remedy = f"set {job.recipe_field}.batch: 1 (now {job.batch}) so that CPU calibration runs one image at a time"
        else:
            remedy = (f"lower {job.recipe_field}.batch (now {job.batch}), or export with a dynamic batch axis "
                      "(input.dynamic_axes: [0]) so that CPU calibration runs one or two images at a time")
        raise StageError(f"{job.task}: ran out of memory calibrating a batch of {len(batch)} images; {remedy}") from None


# ----------------------------------------------------------------------------- images

def _scan(job: CalibrationJob) -> tuple[dict[str, str], dict[str, str]]:
    """({name: sha256}: what the key is computed from, {name: why} of the images whose
    header already shows them unusable). Such an image is refused (or counted) at once,
    not after calibrating on every image before it."""
    digests, unusable = {}, {}
    for ref in job.images:
        data = read_image_bytes(ref)
        digests[ref.name] = sha256_hex(data)
        try:
            check_encoded(data, ref.name)
        except UnusableImage as exc:
            unusable[ref.name] = _reason_to_skip(job, exc)
    return digests, unusable


def _reason_to_skip(job: CalibrationJob, exc: UnusableImage) -> str:
    """Why an unusable image is skipped; without `bad_images: skip` it is refused instead."""
    if not job.skip_bad_images:
        raise StageError(f"{job.task}: {exc} (or set {job.recipe_field}.bad_images: skip to count and "
                         "skip such files)") from None
    return str(exc)


def _nothing_usable(job: CalibrationJob, reasons: dict[str, str]) -> StageError:
    return StageError(f"{job.task}: none of the {len(job.images)} calibration images is usable; "
                      f"the first: {next(iter(reasons.values()))}")


def _warn_skipped(job: CalibrationJob, report: dict) -> None:
    if report["skipped"]:
        first = report.get("skipped_why", {}).get(report["skipped"][0], report["skipped"][0])
        more = f" and {len(report['skipped']) - 1} more" if len(report["skipped"]) > 1 else ""
        warn(f"{job.task}: skipped {first}{more} (bad_images: skip; all are listed in "
             f"{job.report_out.name})")


def _load(ref: ImageRef, digest: str, job: CalibrationJob):
    """(preprocessed 1x3xHxW, None), or (None, (name, why)) for an image to skip."""
    data = read_image_bytes(ref)
    if sha256_hex(data) != digest:
        raise ImageSetChanged(f"{job.task}: {ref.name} changed while calibrating; nothing was written: "
                              "rerun once the image set is stable")
    try:
        return preprocess(decode_image(data, ref.name), job.height, job.width, job.preprocess), None
    except UnusableImage as exc:
        return None, (ref.name, _reason_to_skip(job, exc))


def _prepare(job: CalibrationJob, group: tuple[ImageRef, ...], digests: dict[str, str]):
    """(batch array or None, names used, {name: why} skipped) for one group of images."""
    np = require("numpy", "core")
    loaded = [(ref, *_load(ref, digests[ref.name], job)) for ref in group]
    arrays = [a for _, a, _ in loaded if a is not None]
    return (np.concatenate(arrays) if arrays else None,
            [ref.name for ref, a, _ in loaded if a is not None],
            dict(bad for _, _, bad in loaded if bad is not None))


def _batches(job: CalibrationJob, images: tuple[ImageRef, ...], digests: dict[str, str]):
    """Yield `_prepare` results in order; the next batch is decoded in a thread (OpenCV
    releases the GIL) while ONNX Runtime runs the current one."""
    groups = [images[i:i + job.batch] for i in range(0, len(images), job.batch)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_prepare, job, groups[0], digests)
        for group in groups[1:]:
            current, pending = pending.result(), pool.submit(_prepare, job, group, digests)
            yield current
        yield pending.result()


def _sample_batch(job: CalibrationJob, images: tuple[ImageRef, ...], digests: dict[str, str]):
    """The first calibration batch: ModelOpt's Q/DQ pass needs real inputs."""
    batch, _, _ = _prepare(job, images[:job.batch], digests)
    if batch is None:
        raise StageError(f"{job.task}: none of the first {job.batch} calibration images is readable")
    return batch


# ----------------------------------------------------------------------------- the model

def float_tensors(model) -> list[tuple[str, int | None]]:
    """(name, elements per image or None) of every float activation, graph inputs included."""
    return [(name, _per_image(dims)) for name, dims in _float_tensor_dims(model)]


def _float_tensor_dims(model) -> list[tuple[str, list[int | None] | None]]:
    """(name, dims) of every float activation: a dim is None where it is unknown, the dims are
    None where even the rank is."""
    onnx = require("onnx", "core")
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    infos = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    initializers = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    names += [o for node in graph.node if node.op_type != "Constant" for o in node.output if o]
    result = []
    for name in names:
        info_ = infos.get(name)
        if info_ is None or info_.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            continue
        tensor_type = info_.type.tensor_type
        dims = ([d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
                if tensor_type.HasField("shape") else None)
        result.append((name, dims))
    return result


def _per_image(dims: list[int | None] | None) -> int | None:
    """Elements per image: the product of every dim but the batch, when all are known."""
    if not dims or len(dims) < 2 or not all(dims[1:]):
        return None
    return math.prod(dims[1:])


@dataclass(frozen=True)
class ObservationPlan:
    """Which float tensors the statistics model measures, and which follow from those."""
    tensors: tuple[str, ...]  # every float tensor in graph order: the cache's entries
    observed: tuple[tuple[str, int | None], ...]  # (name, elements per image)
    derived: tuple[Derivation, ...]
    ranks: dict[str, int]  # of the observed tensors whose rank shape inference knows


def observation_plan(model, method: str) -> ObservationPlan:
    dims = _float_tensor_dims(model)
    derived = derivations(model, [name for name, _ in dims], method)
    skip = {d.tensor for d in derived}
    observed = tuple((name, _per_image(d)) for name, d in dims if name not in skip)
    return ObservationPlan(tuple(name for name, _ in dims), observed, tuple(derived),
                           {name: len(d) for name, d in dims if name not in skip and d is not None})


def augmented_model(onnx_path: Path, method: str):
    """The model with statistics outputs for the tensors the plan observes; returns
    (ModelProto, ObservationPlan)."""
    onnx = require("onnx", "core")
    np = require("numpy", "core")
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    plan = observation_plan(model, method)
    graph = model.graph
    del graph.output[:]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    axes_inputs: set[str] = set()  # the axes initializers added so far (opset 18+)
    for i, (name, per_image) in enumerate(plan.observed):
        if method == "minmax":
            axes = _row_axes(plan.ranks.get(name))
            for op in ("ReduceMax", "ReduceMin"):
                out = f"trtforge_{op.lower()}_{i}"
                graph.node.append(_reduction(graph, op, name, out, axes, opset, axes_inputs))
                graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
            continue
        stride = next_prime(max(1, (per_image or 0) // SAMPLES_PER_IMAGE)) if per_image else 101
        consts = {"shape": [0, -1], "start": [0], "end": [2**62], "axis": [1], "step": [stride]}
        for key, value in consts.items():
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), f"trtforge_{key}_{i}"))
        flat, out = f"trtforge_flat_{i}", f"trtforge_sample_{i}"
        graph.node.append(helper.make_node("Reshape", [name, f"trtforge_shape_{i}"], [flat], name=flat))
        graph.node.append(helper.make_node("Slice", [flat] + [f"trtforge_{k}_{i}" for k in ("start", "end", "axis", "step")],
                                           [out], name=out))
        graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    return model, plan


def _row_axes(rank: int | None) -> list[int] | None:
    """The axes a minmax reduction folds: all but the first two (batch and channel) of a
    tensor of rank 3 or more, else all (None). ONNX Runtime's CPU reduction over every axis
    runs on one thread, and over trailing axes one row per thread: YOLOv8n's 198 reductions
    cost 14 ms per 640 px image instead of 21 (bench/calibration.py). The collector takes the
    max and min of the rows, which is the same number."""
    return list(range(2, rank)) if rank is not None and rank >= 3 else None


def _reduction(graph, op: str, source: str, out: str, axes: list[int] | None, opset: int, axes_inputs: set[str]):
    """`op` over `axes` of `source` (every axis when None) with keepdims=0; from opset 18 the
    axes are an input (one initializer per distinct axes, named in `axes_inputs`), before it
    an attribute."""
    from onnx import helper, numpy_helper

    if axes is None:
        return helper.make_node(op, [source], [out], keepdims=0, name=out)
    if opset < 18:
        return helper.make_node(op, [source], [out], keepdims=0, axes=axes, name=out)
    name = f"trtforge_axes_{'_'.join(map(str, axes))}"
    if name not in axes_inputs:
        np = require("numpy", "core")
        graph.initializer.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), name))
        axes_inputs.add(name)
    return helper.make_node(op, [source, name], [out], keepdims=0, name=out)


def next_prime(n: int) -> int:
    candidate = max(2, n)
    while any(candidate % d == 0 for d in range(2, int(candidate ** 0.5) + 1)):
        candidate += 1
    return candidate


# Images per ONNX Runtime run on CPU for a small model (weights under SMALL_MODEL_BYTES), and
# one for the others. On 2 cores at 640 px, two images per run took 0.91x to 0.94x the time
# of one for YOLOv8n (12 MB; its small layers spread one image poorly over the cores), 0.98x
# for YOLOv8s (44 MB) and 1.0x for RT-DETR-l (130 MB), each with 40-80% more memory
# (RT-DETR-l: 3.4 against 1.9 GB), so only small models run two.
CPU_IMAGES_PER_RUN = 2
SMALL_MODEL_BYTES = 25 << 20


class Statistics:
    """The statistics model of one ONNX in an ONNX Runtime session, and the collector that
    folds what each run returns into ranges.

    On CPU, with a dynamic batch axis, the images of a batch run one or two at a time
    (_images_per_run) and their outputs are joined into what one run of the whole batch
    returns (every statistic is per image), so the ranges are the same on a GPU host that
    runs whole batches. Peak memory is then what one or two images' activations need, not
    the batch's (at 640 px, batch 8: YOLOv8n 0.55 GB against 1.8 GB; RT-DETR-l 1.9 GB
    against 11 GB, where the OOM killer used to end the build)."""

    def __init__(self, onnx_path: Path, method: str, input_name: str) -> None:
        model, self.plan = augmented_model(onnx_path, method)
        self.session, on_cpu = _session(model)
        self.collector = _collector(method, self.plan)
        self.input_name = input_name
        self.images_per_run = _images_per_run(model, input_name) if on_cpu else None  # None: whole batches

    def add(self, batch) -> None:
        step = self.images_per_run or len(batch)
        runs = [self.session.run(self.collector.outputs, {self.input_name: batch[start:start + step]})
                for start in range(0, len(batch), step)]
        self.collector.add(runs[0] if len(runs) == 1 else self.collector.join(runs))

    def ranges(self, percentile: float) -> tuple[dict[str, float], list[str]]:
        """({tensor: range} in graph order, [tensors left out]). A tensor that holds inf or
        NaN (RT-DETR masks its invalid anchors with inf) has no INT8 scale that keeps its
        meaning, so it is left out of the cache: TensorRT then runs the layers that read or
        write it above INT8, and ModelOpt puts no Q/DQ on it."""
        ranges = self.collector.ranges(percentile)
        left_out = [name for name, value in ranges.items() if not math.isfinite(value)]
        return {name: value for name, value in ranges.items() if math.isfinite(value)}, left_out


def _images_per_run(model, input_name: str) -> int | None:
    """How many of a batch's images one CPU run takes (None: the whole batch, when its size
    is fixed in the graph)."""
    if _static_batch(model, input_name):
        return None
    return CPU_IMAGES_PER_RUN if model.ByteSize() < SMALL_MODEL_BYTES else 1


def _static_batch(model, input_name: str) -> bool:
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            return bool(dims) and dims[0].HasField("dim_value")
    return False


def _session(model):
    """(session, whether it runs on CPU)."""
    ort = require("onnxruntime", "core")
    from ..gpu import gpu_name

    providers = ["CPUExecutionProvider"]
    if gpu_name() and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(model.SerializeToString(), providers=providers)
    return session, session.get_providers()[0] == "CPUExecutionProvider"


# ----------------------------------------------------------------------------- statistics

class _MinMax:
    def __init__(self, plan: ObservationPlan) -> None:
        self.plan = plan
        count = len(plan.observed)
        self.outputs = [f"trtforge_{op}_{i}" for i in range(count) for op in ("reducemax", "reducemin")]
        self.high, self.low = [-math.inf] * count, [math.inf] * count

    def add(self, values) -> None:
        """Fold one run's outputs in: per tensor a max and a min, each a scalar or one value per
        row (batch x channel, _row_axes)."""
        np = require("numpy", "core")
        for i in range(len(self.high)):
            high, low = np.asarray(values[2 * i]), np.asarray(values[2 * i + 1])
            if np.isnan(high).any() or np.isnan(low).any():
                high, low = math.inf, -math.inf  # NaN: as unquantizable as inf
            else:  # an empty tensor reduces to nothing: it widens nothing
                high = float(high.max()) if high.size else -math.inf
                low = float(low.min()) if low.size else math.inf
            self.high[i], self.low[i] = max(self.high[i], high), min(self.low[i], low)

    @staticmethod
    def join(runs: list) -> list:
        """What one run over the images of `runs` would have returned: the rows of each."""
        np = require("numpy", "core")
        return [np.concatenate([np.ravel(run[i]) for run in runs]) for i in range(len(runs[0]))]

    def ranges(self, percentile: float) -> dict[str, float]:
        bounds = {name: (low, high) if low <= high else (0.0, 0.0)  # an empty tensor
                  for (name, _), low, high in zip(self.plan.observed, self.low, self.high)}
        derive_bounds(list(self.plan.derived), bounds)
        return {name: _positive(max(abs(bounds[name][0]), abs(bounds[name][1]))) for name in self.plan.tensors}


class _Histograms:
    """One streaming histogram of |x| per tensor (entropy and percentile methods)."""

    def __init__(self, plan: ObservationPlan, method: str) -> None:
        self.plan, self.method = plan, method
        self.outputs = [f"trtforge_sample_{i}" for i in range(len(plan.observed))]
        self.histograms = {name: AbsHistogram() for name in plan.tensors}

    @staticmethod
    def join(runs: list) -> list:
        """What one run over the images of `runs` would have returned: the histogram's range
        is set by the first batch it sees, so a batch must arrive whole, however it ran."""
        np = require("numpy", "core")
        return [np.concatenate([run[i] for run in runs]) for i in range(len(runs[0]))]

    def add(self, values) -> None:
        samples = {name: sample for (name, _), sample in zip(self.plan.observed, values)}
        for derivation in self.plan.derived:
            samples[derivation.tensor] = derive_samples(derivation, samples[derivation.sources[0]])
        for name, sample in samples.items():
            self.histograms[name].add(sample)

    def ranges(self, percentile: float) -> dict[str, float]:
        pick = entropy_threshold if self.method == "entropy" else (lambda h: percentile_threshold(h, percentile))
        unquantizable = {name for name, h in self.histograms.items() if h.nonfinite}
        for derivation in self.plan.derived:  # as with minmax: what follows from such a tensor is left out too
            if unquantizable.intersection(derivation.sources):
                unquantizable.add(derivation.tensor)
        # numpy releases the GIL in the threshold arithmetic: entropy's 242 thresholds of
        # YOLOv8n took 0.9 s in one thread, a fixed cost whatever the number of images
        wanted = [name for name in self.plan.tensors if name not in unquantizable]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            picked = dict(zip(wanted, pool.map(pick, (self.histograms[name] for name in wanted))))
        return {name: _positive(picked[name]) if name in picked else math.inf for name in self.plan.tensors}


def _collector(method: str, plan: ObservationPlan):
    return _MinMax(plan) if method == "minmax" else _Histograms(plan, method)


def _positive(value: float) -> float:
    """A tensor that was all zeros still needs a positive, finite scale (inf, a tensor that
    holds inf or NaN, stays inf: it is left out of the cache)."""
    return value if value > 1e-12 else 1e-12 * 127


class AbsHistogram:
    """Counts of |x| over [0, top) in fixed bins; `top` doubles (merging bin pairs, which is
    exact) when a larger value arrives, so memory never grows."""

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        self.bins, self.top, self.peak, self.counts = bins, 0.0, 0.0, None
        self.nonfinite = False  # whether any value was inf or NaN

    def add(self, values) -> None:
        np = require("numpy", "core")
        a = np.abs(np.asarray(values, dtype=np.float32).ravel())
        finite = np.isfinite(a)
        if not finite.all():
            self.nonfinite, a = True, a[finite]
        if a.size == 0:
            return
        peak = float(a.max())
        self.peak = max(self.peak, peak)
        if self.counts is None:
            self.counts = np.zeros(self.bins, dtype=np.int64)
            self.top = peak * (1 + 1e-6) if peak > 0 else 1e-12  # the first batch fills the range
        while peak >= self.top:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([merged, np.zeros(self.bins - merged.size, dtype=np.int64)])
            self.top *= 2
        index = np.minimum((a * (self.bins / self.top)).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)

    @property
    def width(self) -> float:
        return self.top / self.bins


def percentile_threshold(h: AbsHistogram, percentile: float) -> float:
    np = require("numpy", "core")
    if h.counts is None or h.counts.sum() == 0:
        return 0.0
    cdf = np.cumsum(h.counts) / h.counts.sum()
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return min(h.peak, (index + 1) * h.width)


def entropy_threshold(h: AbsHistogram, levels: int = 128, first: int = 128) -> float:
    """The clipping threshold whose 128-level quantization loses the least information,
    exactly as TensorRT's entropy calibrator and its reference implementations choose it
    (ModelOpt's and pytorch-quantization's `_compute_amax_entropy`; tests hold this to the
    former on real activations):

    - the zero bin takes its neighbour's count first. Without that, the spike of exact and
      near zeros after every SiLU/ReLU dominates the divergence, and clipping the tails
      looks free: thresholds came out 0.41x the reference's (0.08x at worst) and INT8
      YOLOv8 lost half its detections;
    - every candidate edge from bin 128 to the end is tried (the last of equal minima wins);
    - outliers are folded into the last kept bin of P, while Q spreads each level's count
      over its non-empty bins only, so a candidate that clips mass into an empty bin has
      infinite divergence.

    All candidates are scored at once from cumulative sums, which costs milliseconds per
    tensor where the reference's Python loops take seconds."""
    if h.counts is None or not h.counts.any():
        return 0.0
    best = entropy_bin(h.counts, levels, first)
    return h.peak if best is None else min(h.peak, best * h.width)


def entropy_bin(counts, levels: int = 128, first: int = 128) -> int | None:
    """The number of histogram bins kept below the entropy threshold (the threshold is that
    bin edge), or None when there are fewer bins than `first` and nothing needs clipping."""
    np = require("numpy", "core")
    if len(counts) < max(first, 2):
        return None
    divergences = _entropy_divergences(np.asarray(counts, dtype=np.float64), levels, first)
    return first + len(divergences) - 1 - int(np.argmin(divergences[::-1]))


def _entropy_divergences(counts, levels: int, first: int):
    """KL(P || Q) for every candidate bin count i in [first, len(counts)] (see entropy_threshold)."""
    np = require("numpy", "core")
    c = counts.copy()
    c[0] = c[1]
    total = c.sum()
    xlogx = np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(c)])
    nonzero = np.concatenate([[0], np.cumsum(c > 0)])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(xlogx)])
    i = np.arange(first, len(c) + 1)
    outliers = total - cum[i]
    last = c[i - 1] + outliers
    p_log_p = cum_xlogx[i - 1] + np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)
    # level k of candidate i holds bins [ceil(k i / levels), ceil((k+1) i / levels))
    edges = -((-np.arange(levels + 1)[None, :] * i[:, None]) // levels)
    level_sum = cum[edges[:, 1:]] - cum[edges[:, :-1]]
    level_nonzero = nonzero[edges[:, 1:]] - nonzero[edges[:, :-1]]
    mass = level_sum.copy()
    mass[:, -1] += outliers  # P's last bin carries the clipped outliers
    average = np.divide(level_sum, level_nonzero, out=np.zeros_like(level_sum), where=level_nonzero > 0)
    kept = cum[i][:, None]
    q = np.divide(average, kept, out=np.zeros_like(average), where=kept > 0)
    used = mass > 0
    cross = np.where(used, mass * np.log(np.where(used & (q > 0), q, 1.0)), 0.0).sum(axis=1)
    kl = (p_log_p - cross) / total - np.log(total)
    impossible = ((c[i - 1] == 0) & (outliers > 0)) | (used & (q == 0)).any(axis=1)
    return np.where(impossible, np.inf, kl)
