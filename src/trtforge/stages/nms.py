"""The `nms` surgery pass: end-to-end NMS appended to a YOLO detect head.

The head is the Ultralytics export-mode output [B, 4+nc, N]: box centres and sizes (xywh, input
pixels), then sigmoid class scores, no objectness. The pass replaces that output with the four
outputs of TensorRT's EfficientNMS_TRT plugin, whichever backend computes them:

    num_detections     [B, 1]           int32
    detection_boxes    [B, max_det, 4]  float32, x1 y1 x2 y2, zero past num_detections
    detection_scores   [B, max_det]     float32, descending, zero past num_detections
    detection_classes  [B, max_det]     int32, zero past num_detections

The detections are those of Ultralytics' predictor (`ultralytics.utils.nms.non_max_suppression`
with its defaults): each box keeps only its best class, a box is a candidate when that score is
above `conf`, boxes of different classes never suppress each other, at most `max_det` per image.

Backends (recipe: `- nms: {backend: onnx, conf: 0.25, iou: 0.7, max_det: 300}`):
- `onnx`: standard NonMaxSuppression plus gathers and a TopK; ONNX Runtime and TensorRT's ONNX
  parser (from ONNX_NMS_MIN_TENSORRT on) both run it.
- `efficient_nms`: one EfficientNMS_TRT plugin node (TensorRT's plugin library, every supported
  TensorRT version). Only TensorRT runs it; tests check it through a Python reference of the
  plugin registered as an ONNX Runtime custom op.

Both run NMS on boxes shifted by class (CLASS_OFFSET) exactly as Ultralytics does, so the kept
boxes are the predictor's. List `nms` after the passes that reshape the head (fold_constants,
slim, infer_shapes); those passes also run fine after it.
"""

from __future__ import annotations

from ..errors import StageError, require
from ..surgery import surgery_pass
from ..trt_version import TrtVersion

# TensorRT's ONNX parser imports NonMaxSuppression natively from TensorRT 8.5: onnx/onnx-tensorrt
# docs/Changelog.md, "TensorRT 8.5 GA Release - 2022-11-2": "Added native support for the
# `NonMaxSuppression` operator". Before it, docs/operators.md (8.4) lists it as "Y [EXPERIMENTAL]"
# with an output of fixed shape padded to max_output_boxes_per_class (the gathers of the `onnx`
# backend would read the padding as detections), and 8.2 has no importer for it at all.
ONNX_NMS_MIN_TENSORRT = TrtVersion(8, 5, 0)

BACKENDS = ("onnx", "efficient_nms")
OUTPUT_NAMES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")

# TensorRT's ONNX parser dispatches on op_type alone and imports an op it has no importer for
# from the plugin registry by that name (FallbackPluginImporter; `plugin_version` and
# `plugin_namespace` attributes select the creator), so the domain is free. "TRT" is the
# convention of the YOLO EfficientNMS exporters; a custom domain (not the default one) is what
# lets onnx.checker accept an operator ONNX does not define.
PLUGIN_DOMAIN = "TRT"
PLUGIN_OP = "EfficientNMS_TRT"

# Ultralytics' non_max_suppression makes its NMS class-aware by shifting each box by
# class * max_wh (default 7680) and running one class-agnostic NMS; the shifted coordinates are
# rounded to float32, which moves IoU near the threshold by up to ~1%. Both backends run NMS on the
# same shifted boxes so that their decisions are Ultralytics' decisions, not merely close to them.
CLASS_OFFSET = 7680

_WHERE = "surgery pass 'nms'"  # how its errors start, as run_surgery names a pass


@surgery_pass("nms")
def nms(model, backend: str = "onnx", conf: float = 0.25, iou: float = 0.7, max_det: int = 300):
    """Append end-to-end NMS to the model's single YOLO detect-head output.

    `conf` and `iou` mean what the recipe's `verify.conf` / `verify.iou` mean (Ultralytics'
    predictor thresholds; its defaults 0.25 and 0.7); `max_det` is its default 300.
    """
    onnx = require("onnx", "core")
    _check_params(backend, conf, iou, max_det)
    head = _detect_head(onnx, model)
    num_classes, anchors = _head_dims(onnx, model, head)
    if anchors is not None and backend == "onnx" and anchors < max_det:
        raise StageError(f"{_WHERE}: max_det {max_det} is more than the head's {anchors} "
                         f"boxes; set nms.max_det to at most {anchors}")
    build = _GraphBuilder(onnx, model.graph)
    boxes_xywh, scores = build.split_head(head.name)
    best_class, best_score = build.best_class(scores)
    boxes = build.xyxy(boxes_xywh)
    nms_boxes = build.offset_by_class(boxes, best_class)
    if backend == "onnx":
        build.onnx_nms(boxes, nms_boxes, best_class, best_score, conf, iou, max_det)
    else:
        build.efficient_nms(nms_boxes, build.only_best_class(scores, best_class, num_classes), conf, iou, max_det)
        if not any(op.domain == PLUGIN_DOMAIN for op in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(PLUGIN_DOMAIN, 1))
    batch = head.type.tensor_type.shape.dim[0]
    model.graph.output.remove(head)
    model.graph.output.extend(_output_infos(onnx, batch, max_det))
    return model


def _check_params(backend: str, conf: float, iou: float, max_det: int) -> None:
    """One line per bad parameter; the plugin refuses these ranges too (score_threshold >= 0,
    iou_threshold > 0, max_output_boxes > 0), and conf = 0 would make the zeroed scores of the
    classes a box did not pick count as candidates."""
    if backend not in BACKENDS:
        raise StageError(f"{_WHERE}: backend '{backend}' is unknown; use one of: {', '.join(BACKENDS)}")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 < conf < 1:
        raise StageError(f"{_WHERE}: conf must be a number between 0 and 1 (exclusive), got {conf!r}")
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou <= 1:
        raise StageError(f"{_WHERE}: iou must be a number in (0, 1], got {iou!r}")
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
        raise StageError(f"{_WHERE}: max_det must be a positive whole number, got {max_det!r}")


def _detect_head(onnx, model):
    """The one graph output, when it is a float32 [B, 4+nc, N] tensor of an opset-13+ model
    (the nodes added here take Squeeze/Unsqueeze/ReduceSum axes as inputs, as opset 13 does)."""
    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise StageError(f"{_WHERE}: the model's opset is {opset}; nms needs 13 or later "
                         "(export.opset)")
    outputs = model.graph.output
    if len(outputs) != 1:
        names = ", ".join(o.name for o in outputs)
        raise StageError(f"{_WHERE}: expects one detect-head output [B, 4+nc, N], this model "
                         f"has {len(outputs)} ({names}); nms applies to detection models only")
    head = outputs[0]
    if head.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise StageError(f"{_WHERE}: output '{head.name}' is not float32; list nms before "
                         "any pass that changes precision")
    return head


def _head_dims(onnx, model, head) -> tuple[int, int | None]:
    """(number of classes, number of boxes or None when only known at run time).

    The exporter leaves N symbolic until shape inference, so it is inferred here if needed.
    """
    dims = list(head.type.tensor_type.shape.dim)
    if len(dims) == 3 and not dims[2].HasField("dim_value"):
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph.output[0]
        dims = list(inferred.type.tensor_type.shape.dim)
    if len(dims) != 3 or not dims[1].HasField("dim_value") or dims[1].dim_value < 5:
        shape = [d.dim_value or d.dim_param or "?" for d in dims]
        raise StageError(f"{_WHERE}: output '{head.name}' has shape {shape}, not a YOLO "
                         "detect head [B, 4+nc, N] with a fixed 4+nc")
    anchors = dims[2].dim_value if dims[2].HasField("dim_value") else None
    return dims[1].dim_value - 4, anchors


def _output_infos(onnx, batch, max_det: int) -> list:
    """Value infos of the four outputs, batch dimension copied from the head's."""
    b = batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "batch")
    make = onnx.helper.make_tensor_value_info
    int32, f32 = onnx.TensorProto.INT32, onnx.TensorProto.FLOAT
    return [make(OUTPUT_NAMES[0], int32, [b, 1]), make(OUTPUT_NAMES[1], f32, [b, max_det, 4]),
            make(OUTPUT_NAMES[2], f32, [b, max_det]), make(OUTPUT_NAMES[3], int32, [b, max_det])]


class _GraphBuilder:
    """Appends nodes named /nms/<op>_<n> (and their constants) to a graph."""

    def __init__(self, onnx, graph) -> None:
        self.onnx, self.graph, self.count = onnx, graph, 0

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> list[str]:
        self.count += 1
        name = f"/nms/{op}_{self.count}"
        outs = outputs if isinstance(outputs, list) else [f"{name}_out{i}" for i in range(outputs)]
        self.graph.node.append(self.onnx.helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs

    def one(self, op: str, *inputs: str, **attrs) -> str:
        return self.node(op, list(inputs), **attrs)[0]

    def const(self, values, dtype) -> str:
        numpy = require("numpy", "core")
        self.count += 1
        name = f"/nms/const_{self.count}"
        self.graph.initializer.append(self.onnx.numpy_helper.from_array(numpy.asarray(values, dtype), name))
        return name

    def split_head(self, head: str) -> tuple[str, str]:
        """[B, 4+nc, N] -> boxes xywh [B, N, 4], class scores [B, N, nc]."""
        rows = self.one("Transpose", head, perm=[0, 2, 1])
        axis = self.const([2], "int64")
        boxes = self.one("Slice", rows, self.const([0], "int64"), self.const([4], "int64"), axis)
        scores = self.one("Slice", rows, self.const([4], "int64"), self.const([2**31 - 1], "int64"), axis)
        return boxes, scores

    def best_class(self, scores: str) -> tuple[str, str]:
        """Each box keeps only its best class, as Ultralytics' predictor does (multi_label=False):
        -> (class index [B, N, 1] int64, its score [B, N, 1]).

        ArgMax keeps the first of equal scores (select_last_index=0), as torch's max does."""
        best = self.one("ArgMax", scores, axis=2, keepdims=1)
        return best, self.one("GatherElements", scores, best, axis=2)

    def only_best_class(self, scores: str, best_class: str, num_classes: int) -> str:
        """Scores [B, N, nc] with every class but the box's best one zeroed (below any conf > 0)."""
        is_best = self.one("Equal", self.const(range(num_classes), "int64"), best_class)
        return self.one("Where", is_best, scores, self.const(0.0, "float32"))

    def xyxy(self, boxes_xywh: str) -> str:
        """xywh -> xyxy with Ultralytics' arithmetic (xy -+ wh / 2), so boxes match bit for bit."""
        axis = self.const([2], "int64")
        xy = self.one("Slice", boxes_xywh, self.const([0], "int64"), self.const([2], "int64"), axis)
        wh = self.one("Slice", boxes_xywh, self.const([2], "int64"), self.const([4], "int64"), axis)
        half = self.one("Div", wh, self.const(2.0, "float32"))
        return self.one("Concat", self.one("Sub", xy, half), self.one("Add", xy, half), axis=2)

    def class_offset(self, classes: str) -> str:
        """class index (any int type, any shape) -> class * CLASS_OFFSET as float32."""
        as_float = self.one("Cast", classes, to=self.onnx.TensorProto.FLOAT)
        return self.one("Mul", as_float, self.const(float(CLASS_OFFSET), "float32"))

    def offset_by_class(self, boxes: str, best_class: str) -> str:
        """Boxes shifted by class * 7680: the coordinates Ultralytics runs NMS on, so every
        suppression decision (IoU rounding included) is the one its predictor makes."""
        return self.one("Add", boxes, self.class_offset(best_class))

    def efficient_nms(self, nms_boxes: str, scores: str, conf: float, iou: float, max_det: int) -> None:
        """One EfficientNMS_TRT node on the class-offset corner boxes (box_coding=0), then the offset
        taken back off its output boxes (exact to the float32 spacing at class * 7680, <= 0.03 px
        below 80 classes and 640 px: the plugin returns boxes, not indices into the originals).

        Attributes as TensorRT's plugin/efficientNMSPlugin/README.md documents them; class_agnostic=0
        is also what plugin versions without that field do. Its filter keeps scores >=
        score_threshold where Ultralytics keeps > conf, and it suppresses at IoU >= iou_threshold
        where Ultralytics suppresses at > iou: they differ only on exact ties."""
        count, boxes, scores_out, classes = OUTPUT_NAMES
        plugin_boxes = f"/nms/{PLUGIN_OP}/{boxes}"
        self.node(PLUGIN_OP, [nms_boxes, scores], [count, plugin_boxes, scores_out, classes],
                  domain=PLUGIN_DOMAIN, score_threshold=float(conf), iou_threshold=float(iou),
                  max_output_boxes=max_det, background_class=-1, score_activation=0, class_agnostic=0,
                  box_coding=0, plugin_version="1", plugin_namespace="")
        offset = self.one("Unsqueeze", self.class_offset(classes), self.const([2], "int64"))
        self.node("Sub", [plugin_boxes, offset], [boxes])

    def onnx_nms(self, boxes: str, nms_boxes: str, best_class: str, best_score: str, conf: float, iou: float,
                 max_det: int) -> None:
        """NonMaxSuppression over the class-offset boxes (one score column, as Ultralytics runs
        torchvision's nms), then the kept boxes in descending score, max_det per image, zero padded.

        NonMaxSuppression returns (image, 0, box) triples; each kept score is scattered into a
        [B, N] map of -1 whose TopK gives the kept boxes in order, -1 marking padding. Every
        constant TensorRT needs as an initializer (the NMS limits, TopK's K) is one.
        """
        per_box = self.one("Transpose", best_score, perm=[0, 2, 1])  # NMS wants [B, classes, N]
        selected = self.one("NonMaxSuppression", nms_boxes, per_box, self.const([max_det], "int64"),
                            self.const([iou], "float32"), self.const([conf], "float32"))
        image_box = self.one("Gather", selected, self.const([0, 2], "int64"), axis=1)
        last_axis = self.const([2], "int64")
        score = self.one("Squeeze", best_score, last_axis)
        unkept = self.one("ConstantOfShape", self.one("Shape", score),
                          value=self.onnx.helper.make_tensor("minus_one", self.onnx.TensorProto.FLOAT, [1], [-1.0]))
        kept = self.one("ScatterND", unkept, image_box, self.one("GatherND", score, image_box))
        top_score, top_box = self.node("TopK", [kept, self.const([max_det], "int64")], 2, axis=1,
                                       largest=1, sorted=1)
        valid = self.one("Greater", top_score, self.const(0.0, "float32"))
        count = self.one("ReduceSum", self.one("Cast", valid, to=self.onnx.TensorProto.FLOAT),
                         self.const([1], "int64"), keepdims=1)  # float: 8.x parsers reduce FP32/FP16 only
        self.node("Cast", [count], [OUTPUT_NAMES[0]], to=self.onnx.TensorProto.INT32)
        box_index = self.one("Tile", self.one("Unsqueeze", top_box, last_axis), self.const([1, 1, 4], "int64"))
        top_boxes = self.one("GatherElements", boxes, box_index, axis=1)
        self.node("Where", [self.one("Unsqueeze", valid, last_axis), top_boxes, self.const(0.0, "float32")],
                  [OUTPUT_NAMES[1]])
        self.node("Where", [valid, top_score, self.const(0.0, "float32")], [OUTPUT_NAMES[2]])
        classes = self.one("GatherElements", self.one("Squeeze", best_class, last_axis), top_box, axis=1)
        class_or_zero = self.one("Where", valid, classes, self.const(0, "int64"))
        self.node("Cast", [class_or_zero], [OUTPUT_NAMES[3]], to=self.onnx.TensorProto.INT32)
