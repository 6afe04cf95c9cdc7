"""Ground truth: FP32's and a variant's boxes scored against YOLO-format labels, as `yolo val` scores them.

The gates measure how far a variant moved from FP32; with `verify.labels` the check also says
how good either is, in the figures users already know (P, R, mAP50, mAP50-95). The facts this
module encodes, from Ultralytics 8.4:

- Where labels are (data/utils.py `img2label_paths`): the last `/images/` folder of an image's
  path becomes `/labels/` and the suffix `.txt`; an image with no `/images/` folder has its
  label file beside it. An image without a label file holds no object (a background image).
- What a line is (data/utils.py `verify_image_label`): `class x_center y_center width height`
  normalised to the original image, or `class x1 y1 x2 y2 ...`, a polygon whose bounding box
  is the object's (`segments2boxes`); UTF-8 with or without a byte-order mark; duplicate lines
  count once; a file mixing both kinds is refused. Ultralytics drops an image with a bad label
  file with a warning; here a bad line is an error naming file:line, because figures computed
  without that image would not be the ones the user labelled.
- Where boxes land: the decoders give boxes in the model's input pixels, after the
  preprocessing's letterbox (images.py). A label goes through the same placement, left + x *
  new_w and top + y * new_h, the exact inverse of `ops.scale_boxes`, which Ultralytics' predictor
  uses to take boxes back to the original image.
- How they are scored (models/yolo/detect/val.py): decoded down to conf 0.001 with verify.iou
  (0.7, the validator's default) and 300 detections, `box_iou`, `match_predictions` at IoU
  0.50:0.05:0.95, then `DetMetrics` (`ap_per_class`). These figures are Ultralytics' own, not
  divided by its 0.995 ceiling as the agreement gates' are: they must read as `yolo val` reads.

The listing half (`label_set`) imports only the standard library: it runs when doit loads tasks,
so every label file is a file_dep of the check and editing one reruns the check alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterable

from ..errors import StageError, require
from ..images import ImageRef, view_of
from . import GateSetting, Outputs

if TYPE_CHECKING:
    import numpy as np

LINE_FORMAT = ("a YOLO label line is `class x_center y_center width height` normalised to 0..1, "
               "or `class x1 y1 x2 y2 x3 y3 ...` (a polygon)")


class LabelError(StageError):
    """A label file that cannot be read as YOLO labels (one line: file:line, what, how)."""


@dataclass(frozen=True)
class LabelledImage:
    """One verification image and where its label file is."""

    image: ImageRef
    label_name: str  # the label file as the image's name would place it (what errors name)
    labels: Path | None  # None: no label file, no object


@dataclass(frozen=True)
class LabelSet:
    """The label files of the verification images, as doit must know them."""

    source: str  # "yolo", or the dataset yaml
    images: tuple[LabelledImage, ...]
    names: tuple[str, ...] = ()  # the dataset's class names; () unknown

    def files(self) -> list[Path]:
        """The label files that exist: the check's file_deps."""
        return [item.labels for item in self.images if item.labels is not None]


def label_path(image: str) -> str:
    """Ultralytics' `img2label_paths` on one posix path or name."""
    return "/labels/".join(image.rsplit("/images/", 1)).rsplit(".", 1)[0] + ".txt"


def label_set(images: Iterable[ImageRef], source: str, names: tuple[str, ...] = ()) -> LabelSet:
    """Each image with its label file, if there is one (an absent file is an image without objects)."""
    items = []
    for ref in images:
        path = Path(label_path(ref.path.as_posix()))
        items.append(LabelledImage(ref, label_path(ref.name), path if path.is_file() else None))
    return LabelSet(source, tuple(items), names)


@dataclass(frozen=True)
class GroundTruth:
    """One image's labelled objects, in the model's input pixels."""

    classes: np.ndarray  # [n] int64
    boxes: np.ndarray  # [n, 4] float32 xyxy


def labels_report(labels: LabelSet, image_names: list[str], reference: Outputs, candidate: Outputs | None,
                  setting: GateSetting) -> dict:
    """check.json's `labels`: P, R, mAP50 and mAP50-95 of the FP32 reference's boxes and of the
    variant's (`candidate`, None when it cannot be decoded) against the labels of the images
    `image_names` names, in that order (the reference's images.json)."""
    by_name = {item.image.name: item for item in labels.images}
    gone = [name for name in image_names if name not in by_name]
    if gone:
        raise StageError(f"{gone[0]} is a reference image but no longer among verify.images; rerun the reference")
    items = [by_name[name] for name in image_names]
    viewed = next((item.image.name for item in items if view_of(item.image.name)), None)
    if viewed:
        raise StageError(f"verify.labels: {viewed} is a view of an image, and labels describe whole "
                         "images; list the image without its ' @ ...' view, or drop verify.labels")
    truths = [ground_truth(item, setting.image_hw, labels.names) for item in items]
    section = {"source": labels.source, "images": len(items),
               "labelled_images": sum(item.labels is not None for item in items),
               "instances": sum(len(truth.classes) for truth in truths)}
    if not section["instances"]:
        why = ("the label files hold no object" if section["labelled_images"] else
               f"no label file for any of the {len(items)} verification images (the first would be "
               f"{items[0].label_name})")
        return {**section, "status": f"skipped: {why}"}
    decoding = setting.for_candidate()
    return {**section, "status": "measured",
            "reference": figures(boxes_of(reference, decoding), truths, labels.names),
            "variant": (figures(boxes_of(candidate, decoding), truths, labels.names) if candidate is not None
                        else {"status": "skipped: the variant lacks the reference's outputs"})}


def boxes_of(outputs: Outputs, setting: GateSetting) -> list:
    """Each image's Detections as verify.task decodes them; a segment model's boxes without their masks."""
    from .detect import detections, from_rows, yolo_nms
    from .segment import head_and_protos

    if setting.task != "segment":
        return detections(outputs, setting)
    head, protos = head_and_protos(outputs)
    classes = head.shape[1] - 4 - protos.shape[1]  # the rows between the box and the mask coefficients
    return [from_rows(rows) for rows in yolo_nms(head, setting.conf, setting.iou, nc=classes)]


def figures(found: list, truths: list[GroundTruth], names: tuple[str, ...]) -> dict:
    """Ultralytics' validator on these detections: per image `box_iou` and `match_predictions`
    at IoU 0.50:0.05:0.95, then `DetMetrics`. Returns P, R, mAP50, mAP50-95 and per class."""
    np = require("numpy", "core")
    torch = require("torch", "yolo")
    metrics = require("ultralytics.utils.metrics", "yolo")
    validator = require("ultralytics.engine.validator", "yolo")
    # match_predictions reads only self.iouv: DetectionValidator's ten thresholds, without a validator
    matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    classes = max([0, *(int(t.classes.max()) + 1 for t in truths if len(t.classes)),
                   *(int(d.classes.max()) + 1 for d in found if len(d))])
    det = metrics.DetMetrics(names=dict(enumerate(names)) or {c: str(c) for c in range(classes)})
    for index, (image, truth) in enumerate(zip(found, truths)):
        order = np.argsort(-image.scores, kind="stable")  # the validator matches in descending confidence
        boxes, scores, cls = image.boxes[order], image.scores[order], image.classes[order]
        tp = np.zeros((len(cls), 10), bool)
        if len(cls) and len(truth.classes):
            iou = metrics.box_iou(torch.from_numpy(truth.boxes), torch.from_numpy(np.ascontiguousarray(boxes)))
            tp = validator.BaseValidator.match_predictions(matcher, torch.from_numpy(cls),
                                                           torch.from_numpy(truth.classes), iou).numpy()
        det.update_stats({"tp": tp, "conf": scores, "pred_cls": cls, "target_cls": truth.classes,
                          "target_img": np.unique(truth.classes), "im_name": str(index)})
    det.process()
    precision, recall, map50, map50_95 = (float(v) for v in det.mean_results())
    per_class = {det.names[c]: dict(zip(("precision", "recall", "map50", "map50_95"),
                                        (float(v) for v in det.class_result(i))), instances=int(det.nt_per_class[c]))
                 for i, c in enumerate(det.ap_class_index)}
    return {"precision": precision, "recall": recall, "map50": map50, "map50_95": map50_95,
            "detections": int(sum(len(d) for d in found)), "per_class": per_class}


def ground_truth(item: LabelledImage, input_hw: tuple[int, int], names: tuple[str, ...]) -> GroundTruth:
    """An image's labels in input pixels; the image is decoded for its size, as the reference
    decoded it (OpenCV applies EXIF orientation, so the header's size may be the wrong way round)."""
    np = require("numpy", "core")
    rows = read_labels(item.labels, item.label_name, names) if item.labels else np.zeros((0, 5))
    if not len(rows):
        return GroundTruth(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    from ..images import decode_image, read_image_bytes

    h0, w0 = decode_image(read_image_bytes(item.image), item.image.name).shape[:2]
    return GroundTruth(rows[:, 0].astype(np.int64), input_pixels(rows[:, 1:], h0, w0, *input_hw))


def input_pixels(xywhn, h0: int, w0: int, height: int, width: int):
    """Normalised x_center y_center width height of an h0 x w0 image -> xyxy pixels of the
    letterboxed height x width input (float32)."""
    np = require("numpy", "core")
    from ..images import letterbox_geometry

    box = letterbox_geometry(h0, w0, height, width)
    cx, cy, w, h = np.asarray(xywhn, np.float64).reshape(-1, 4).T
    x1, x2 = (box.left + (cx + s * w / 2) * box.new_w for s in (-1, 1))
    y1, y2 = (box.top + (cy + s * h / 2) * box.new_h for s in (-1, 1))
    return np.stack([x1, y1, x2, y2], 1).astype(np.float32)


def read_labels(path: Path, name: str, names: tuple[str, ...] = ()):
    """[n, 5] float64 rows class x_center y_center width height of a label file (polygons as
    their bounding boxes, duplicates once); a bad line raises LabelError naming name:line."""
    np = require("numpy", "core")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LabelError(f"{name}: not UTF-8 text; a label file holds one object per line") from None
    except FileNotFoundError:
        raise LabelError(f"{name} disappeared while the check was reading it; rerun once the labels are "
                         "stable") from None
    rows, kinds = {}, {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        row, kind = _label_row(fields, f"{name}:{number}", names)
        kinds.setdefault(kind, number)
        if len(kinds) > 1:
            raise LabelError(f"{name}:{number}: a {kind} line in a file of {'polygon' if kind == 'box' else 'box'} "
                             "lines, which Ultralytics refuses; write every object of a file the same way")
        rows.setdefault(tuple(map(float, fields)), row)  # a repeated object counts once
    return np.array(list(rows.values()), np.float64).reshape(-1, 5)


def _label_row(fields: list[str], where: str, names: tuple[str, ...]) -> tuple[tuple[float, ...], str]:
    """(class, x_center, y_center, width, height) of one line, and its kind ("box" or "polygon")."""
    try:
        values = [float(f) for f in fields]
    except ValueError:
        bad = next(f for f in fields if not _is_number(f))
        raise LabelError(f"{where}: '{bad}' is not a number; {LINE_FORMAT}") from None
    if len(values) == 5:
        kind, (cls, *box) = "box", values
    elif len(values) >= 7 and len(values) % 2:
        xs, ys = values[1::2], values[2::2]
        kind, cls = "polygon", values[0]
        box = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
    else:
        raise LabelError(f"{where}: {len(values)} values; {LINE_FORMAT}")
    if not (cls >= 0 and cls.is_integer()):  # nan and inf are floats too
        raise LabelError(f"{where}: class '{fields[0]}' is not a class index 0, 1, ...; {LINE_FORMAT}")
    if names and cls >= len(names):
        raise LabelError(f"{where}: class {int(cls)}, but the dataset names {len(names)} classes "
                         f"(0..{len(names) - 1}); fix the class or the dataset's names")
    coordinates = values[1:]
    # Ultralytics' tolerance (verify_image_label): 1% beyond either edge, sizes never negative
    if not all(-0.01 <= v <= 1.01 for v in coordinates) or min(box[2:]) < 0:
        bad = next((v for v in coordinates if not -0.01 <= v <= 1.01), min(box[2:]))
        raise LabelError(f"{where}: {bad:g} is not a normalised coordinate (0..1 of the image's width or height); "
                         f"{LINE_FORMAT}")
    return (cls, *box), kind


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
