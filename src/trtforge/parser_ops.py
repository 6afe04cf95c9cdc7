"""What each TensorRT generation's ONNX parser accepts: operators, tensor types, opsets.

The data behind `trtforge.preflight`. One `ParserTable` per generation ("8.2", "8.5",
"8.6", "10", "11", as in render.py and trt_version.py). Imports nothing heavy: tasks.py may load it.

Where the facts come from (read, not remembered; nothing here could be checked on a GPU):

- [ops-8.0]  onnx/onnx-tensorrt docs/operators.md as of TensorRT 8.0 ("up to Opset 13").
- [ops-8.4]  the same file as of TensorRT 8.4 (commit 009d6541), with a Supported Types column.
- [ops-8.5]  the same file as of TensorRT 8.5 GA (commit 6d0ab7be, "up to Opset 17").
- [ops-8.5ea] an 8.5 pre-GA copy (asfiyab-nvidia/onnx-tensorrt, commit 37a572d4).
- [ops-10.15] the same file as of TensorRT 10.15 ("opset 9 to opset 24").
- [changelog] onnx/onnx-tensorrt docs/Changelog.md (8.0 ... 10.15): what each release added.
- [8.2-head]  the 8.2 operators.md header "TensorRT 8.2 supports operators up to Opset 13"
  (seen in the search index; the file body itself is not stored there).
- [dla-8.6]   NVIDIA's Orin DLA operator page: "TensorRT 8.6 supports operators up to Opset 17".
- [rel-11.0]  NVIDIA/TensorRT v11.0 release notes: the parser adds Swish and the custom ops
  TRT_Attention, TRT_MoE, TRT_KVCacheUpdate; plugins batchTile, clip, coordConvAC,
  cropAndResize, gelu, leakyRelu, normalize, singleStepLSTM, specialSlice, split, nms and
  proposal are removed.
- [rel-11.5]  NVIDIA/TensorRT v11.5 release notes: "Added support for ONNX opset 25".
- [opset-11]  NVIDIA's ONNX Opset Guide for 11.x: minimum opset 9.
- [plugins]   NVIDIA/TensorRT plugin/README.md (a 10.x listing, commit 147005ff): registry names.
- [oss-8.0.1] NVIDIA/TensorRT 8.0.1 release notes: EfficientNMS_TRT, EfficientNMS_ONNX_TRT added,
  ONNX NonMaxSuppression experimental.

Not found in the stored sources: the operators.md files at the 8.2, 8.6 and any 11.x tags.
8.2 and 8.6 are therefore derived from the neighbouring tables plus the changelog, and
whatever the derivation cannot settle is listed in `unverified` (reported as a warning).
The 11 table is 10.15's plus the 11.0 release notes; an 11.x removal we could not read
would go unnoticed, so every 11 finding says which table it rests on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_REDUCE = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                     "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"})
_SEQUENCE = frozenset({"SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
                       "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence"})

# [ops-8.0]: rows marked Y.
_OPS_8_0 = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
    "DequantizeLinear", "Div", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor",
    "Gather", "GatherElements", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater",
    "GreaterOrEqual", "GRU", "HardSigmoid", "Identity", "ImageScaler", "InstanceNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization",
    "LpPool", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg", "Not", "Or", "Pad",
    "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomUniform", "RandomUniformLike", "Range",
    "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "ScaledTanh", "Scan", "Selu", "Shape",
    "Sigmoid", "Sin", "Sinh", "Size", "Slice", "Softmax", "SoftmaxCrossEntropyLoss", "Softplus",
    "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Tile", "TopK", "Transpose", "Unsqueeze", "Upsample", "Where",
}) | _REDUCE

# [changelog] 8.2 EA added these; 8.0 added NonMaxSuppression as experimental ([oss-8.0.1]).
_ADDED_8_2 = frozenset({"Einsum", "IsNaN", "GatherND", "Scatter", "ScatterElements", "ScatterND", "Sign",
                        "Round", "NonMaxSuppression"})
# [changelog] 8.4 GA added these.
_ADDED_8_4 = frozenset({"Shrink", "Xor"})

# [ops-8.4]: rows marked Y (NonMaxSuppression is "Y [EXPERIMENTAL]").
_OPS_8_4 = (_OPS_8_0 - {"SoftmaxCrossEntropyLoss"}) | _ADDED_8_2 | {"Dropout", "If", "Xor"}

# [ops-8.4] rows marked N, plus what [changelog] says 8.5 and 8.6 added (absent before them),
# plus [ops-8.5ea] rows marked N for operators the 8.4 table does not list.
_MISSING_BEFORE_8_5 = frozenset({
    "BitShift", "Compress", "ConvInteger", "Det", "DynamicQuantizeLinear", "Hardmax", "IsInf",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MeanVarianceNormalization", "Mod", "Multinomial",
    "NegativeLogLikelihoodLoss", "NonZero", "OneHot", "QLinearConv", "QLinearMatMul", "RandomNormal",
    "RandomNormalLike", "Reciprocal", "RoiAlign", "Shrink", "StringNormalizer", "TfIdfVectorizer", "Unique",
    "Trilu", "GridSample", "GroupNormalization", "LayerNormalization", "HardSwish", "Bernoulli",
    "BlackmanWindow", "DFT", "HammingWindow", "HannWindow", "MelWeightMatrix", "Optional",
    "OptionalGetElement", "OptionalHasElement", "STFT",
}) | _SEQUENCE

# [ops-8.5]: rows marked Y.
_OPS_8_5 = (_OPS_8_4 | {"GridSample", "HardSwish", "MeanVarianceNormalization", "Mod", "NonZero", "OneHot",
                        "RandomNormal", "RandomNormalLike", "Reciprocal", "RoiAlign", "Shrink", "Trilu"})
# [ops-8.5]: rows marked N.
_MISSING_8_5 = frozenset({
    "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "Hardmax", "IsInf", "LayerNormalization",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "STFT", "SoftmaxCrossEntropyLoss", "StringNormalizer", "TfIdfVectorizer", "Unique",
}) | _SEQUENCE
# [changelog] 8.6 EA added these.
_ADDED_8_6 = frozenset({"GroupNormalization", "LayerNormalization", "IsInf"})

# [ops-10.15]: rows marked Y.
_OPS_10_15 = (_OPS_8_5 | _ADDED_8_6 | {
    "Attention", "BlackmanWindow", "CastLike", "DeformConv", "Gelu", "HammingWindow", "HannWindow",
    "Hardmax", "Mish", "RMSNormalization", "RotaryEmbedding", "STFT", "TensorScatter",
})
# [ops-10.15]: rows marked N.
_MISSING_10_15 = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear", "ImageDecoder",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SoftmaxCrossEntropyLoss", "StringConcat", "StringNormalizer",
    "StringSplit", "TfIdfVectorizer", "Unique",
}) | _SEQUENCE
# [changelog]: operators 10.x gained after 10.0; an older 10.x parser rejects them.
_SINCE_10 = {"DeformConv": "10.1", "BlackmanWindow": "10.4", "HammingWindow": "10.4", "HannWindow": "10.4",
             "STFT": "10.5", "Attention": "10.14", "RMSNormalization": "10.15", "RotaryEmbedding": "10.15",
             "TensorScatter": "10.15"}

# [plugins]: registry names of TensorRT's built-in plugins; the parser imports a node whose
# op_type is a registered plugin name through the plugin (its fallback importer).
_PLUGINS_10 = frozenset({
    "BatchTilePlugin_TRT", "BatchedNMS_TRT", "BatchedNMSDynamic_TRT", "CustomQKVToContextPluginDynamic",
    "Clip_TRT", "CoordConvAC", "CropAndResize", "CropAndResizeDynamic", "DecodeBbox3DPlugin",
    "DetectionLayer_TRT", "DisentangledAttention_TRT", "EfficientNMS_TRT", "EfficientNMS_ONNX_TRT",
    "CustomEmbLayerNormPluginDynamic", "CustomFCPluginDynamic", "FlattenConcat_TRT", "CustomGeluPluginDynamic",
    "GenerateDetection_TRT", "GridAnchor_TRT", "GridAnchorRect_TRT", "GroupNormalizationPlugin",
    "InstanceNormalization_TRT", "LReLU_TRT", "ModulatedDeformConv2d", "MultilevelCropAndResize_TRT",
    "MultilevelProposeROI_TRT", "MultiscaleDeformableAttnPlugin_TRT", "NMS_TRT", "NMSDynamic_TRT",
    "Normalize_TRT", "RPROI_TRT", "PillarScatterPlugin", "PriorBox_TRT", "ProposalLayer_TRT", "Proposal",
    "ProposalDynamic", "PyramidROIAlign_TRT", "Region_TRT", "Reorg_TRT", "ROIAlign_TRT", "ResizeNearest_TRT",
    "ScatterElements", "ScatterND", "CustomSkipLayerNormPluginDynamic", "SpecialSlice_TRT", "Split",
    "VoxelGeneratorPlugin",
})
# [rel-11.0]: removed plugins, by registry name; and the parser's new custom operators.
_REMOVED_IN_11 = frozenset({"BatchTilePlugin_TRT", "Clip_TRT", "CoordConvAC", "CropAndResize",
                            "CustomGeluPluginDynamic", "LReLU_TRT", "Normalize_TRT", "SpecialSlice_TRT", "Split",
                            "NMS_TRT", "NMSDynamic_TRT", "Proposal"})
_CUSTOM_11 = frozenset({"TRT_Attention", "TRT_MoE", "TRT_KVCacheUpdate"})
# [oss-8.0.1]: in the 8.x plugin library for certain; the rest of [plugins] is a 10.x listing.
_PLUGINS_8_CERTAIN = frozenset({"EfficientNMS_TRT", "EfficientNMS_ONNX_TRT"})

# Input positions that the parser needs as weights (an initializer or a Constant node's
# output), by operator. 8.x tables say "must be an initializer": [ops-8.0] and [ops-8.4]
# agree on CumSum axis, ConvTranspose W, InstanceNormalization scale/B, Slice axes,
# Squeeze/Unsqueeze axes; [ops-8.4] adds TopK K (dynamic K arrives in 8.6, [changelog]) and
# NonMaxSuppression's three scalar inputs. [ops-8.5] keeps CumSum, InstanceNormalization,
# Slice, Squeeze and Unsqueeze.
_WEIGHTS_8_2 = {"CumSum": (1,), "ConvTranspose": (1,), "InstanceNormalization": (1, 2), "Slice": (3,),
                "Squeeze": (1,), "Unsqueeze": (1,), "TopK": (1,), "NonMaxSuppression": (2, 3, 4)}
_WEIGHTS_8_6 = {"CumSum": (1,), "InstanceNormalization": (1, 2), "Slice": (3,), "Squeeze": (1,),
                "Unsqueeze": (1,)}
# [ops-10.15]: "must be a build-time constant" / "resolvable to a constant": the parser folds
# static shape arithmetic itself, so only an input that depends on run-time data fails.
# (Reduce* "axes must be an initializer" is read the same way, conservatively.)
_BUILD_CONSTANT_10 = {"CumSum": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "OneHot": (1,), "Dropout": (2,),
                      **{op: (1,) for op in _REDUCE}}

# ONNX TensorProto element types by name. [ops-8.4]/[ops-8.5]: DOUBLE, FLOAT32, FLOAT16, INT8
# and BOOL, "limited" INT32/INT64/DOUBLE (INT64 cast down to INT32, DOUBLE to FLOAT, clamped);
# [changelog] 8.5 adds UINT8 network I/O, 9.0 native INT64, 9.0 FP8/BF16, 10.0 INT4, 10.8 FP4.
# [ops-10.15]: DOUBLE (cast down), FLOAT, FLOAT16, BFLOAT16, FP8, FP4, INT32, INT64, INT8, INT4,
# UINT8 (network I/O only), BOOL.
_TYPES_8 = frozenset({"FLOAT", "FLOAT16", "INT8", "INT32", "BOOL"})
_TYPES_10 = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT4E2M1", "INT4", "INT8", "INT32",
                       "INT64", "BOOL"})
_CAST_DOWN_8 = {"INT64": "INT32", "DOUBLE": "FLOAT"}
_CAST_DOWN_10 = {"DOUBLE": "FLOAT"}


@dataclass(frozen=True)
class ParserTable:
    """One generation's ONNX parser, as far as the sources above say."""

    generation: str
    source: str  # which table(s) the facts rest on, for every finding's message
    supported: frozenset[str]
    unsupported: frozenset[str]
    opset_max: int  # highest default-domain opset the docs name
    opset_min: int | None = None
    unverified: frozenset[str] = frozenset()  # the derivation cannot settle these: warn
    experimental: frozenset[str] = frozenset()  # listed "Y [EXPERIMENTAL]": warn
    since: dict[str, str] = field(default_factory=dict)  # added within the generation: warn
    opset_since: dict[int, str] = field(default_factory=dict)
    weight_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # initializer or Constant
    build_constant_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # foldable
    types: frozenset[str] = frozenset()
    cast_down: dict[str, str] = field(default_factory=dict)
    uint8_io: bool = False  # UINT8 allowed as network input/output only
    types_since: dict[str, str] = field(default_factory=dict)
    plugins: frozenset[str] = frozenset()  # built-in plugins known to be in this generation's library
    plugins_uncertain: frozenset[str] = frozenset()  # in a later library; this one unread


_8_2_CONFIRMED = (_OPS_8_0 | _ADDED_8_2) & (_OPS_8_4 - _ADDED_8_4)
# An operator 10.15 still lacks and no earlier table lists as supported never was: the
# changelog records no removal other than SoftmaxCrossEntropyLoss's (8.0 Y, 8.4 N).
_NEVER_SUPPORTED = _MISSING_10_15 - {"SoftmaxCrossEntropyLoss"}

TABLES = {
    "8.2": ParserTable(
        generation="8.2",
        source="onnx-tensorrt operators.md 8.0/8.4 and Changelog 8.2",
        supported=_8_2_CONFIRMED,
        unsupported=(_MISSING_BEFORE_8_5 | _ADDED_8_4 | _NEVER_SUPPORTED) - _8_2_CONFIRMED,
        # The 8.0 and 8.4 tables disagree on these, and the 8.2 changelog does not say.
        unverified=((_OPS_8_0 | _ADDED_8_2) ^ (_OPS_8_4 - _ADDED_8_4)),
        experimental=frozenset({"NonMaxSuppression"}),
        opset_max=13,  # [8.2-head]
        weight_inputs=_WEIGHTS_8_2,
        types=_TYPES_8, cast_down=_CAST_DOWN_8,
        plugins=_PLUGINS_8_CERTAIN, plugins_uncertain=_PLUGINS_10 - _PLUGINS_8_CERTAIN,
    ),
    "8.5": ParserTable(  # JetPack 5: 8.4 (5.0.2) and 8.5 (5.1.x) share the trtexec grammar
        generation="8.5",
        source="onnx-tensorrt operators.md 8.4 and 8.5",
        supported=_OPS_8_5,
        unsupported=_MISSING_8_5 | _NEVER_SUPPORTED,
        since={op: "8.5 (8.4, of JetPack 5.0.2, lacks it)" for op in _OPS_8_5 - _OPS_8_4},
        experimental=frozenset({"NonMaxSuppression"}),  # [ops-8.4]
        opset_max=17,  # [ops-8.5]; 8.4's header was not found
        weight_inputs=_WEIGHTS_8_2,  # [ops-8.4]'s rules, the stricter of the two
        types=_TYPES_8, cast_down=_CAST_DOWN_8, uint8_io=True,  # UINT8 I/O from 8.5 [changelog]
        plugins=_PLUGINS_8_CERTAIN, plugins_uncertain=_PLUGINS_10 - _PLUGINS_8_CERTAIN,
    ),
    "8.6": ParserTable(
        generation="8.6",
        source="onnx-tensorrt operators.md 8.5 and Changelog 8.6",
        supported=_OPS_8_5 | _ADDED_8_6,
        unsupported=(_MISSING_8_5 | _NEVER_SUPPORTED) - _ADDED_8_6,
        opset_max=17,  # [ops-8.5], [dla-8.6]
        weight_inputs=_WEIGHTS_8_6,
        types=_TYPES_8, cast_down=_CAST_DOWN_8, uint8_io=True,
        plugins=_PLUGINS_8_CERTAIN, plugins_uncertain=_PLUGINS_10 - _PLUGINS_8_CERTAIN,
    ),
    "10": ParserTable(
        generation="10",
        source="onnx-tensorrt operators.md 10.15 and Changelog 10.x",
        supported=_OPS_10_15,
        unsupported=_MISSING_10_15,
        since=_SINCE_10,
        opset_min=9, opset_max=24,  # [ops-10.15]; 10.0 stopped at 20
        opset_since={21: "10.x later than 10.0 (10.0 parses up to opset 20)"},
        build_constant_inputs=_BUILD_CONSTANT_10,
        types=_TYPES_10, cast_down=_CAST_DOWN_10, uint8_io=True, types_since={"FLOAT4E2M1": "10.8"},
        plugins=_PLUGINS_10,
    ),
    "11": ParserTable(
        generation="11",
        source="onnx-tensorrt operators.md 10.15 and TensorRT 11.0 release notes",
        supported=_OPS_10_15 | {"Swish"},
        unsupported=_MISSING_10_15,
        opset_min=9, opset_max=25,  # [opset-11], [rel-11.5]
        opset_since={25: "11.5"},
        build_constant_inputs=_BUILD_CONSTANT_10,
        types=_TYPES_10, cast_down=_CAST_DOWN_10, uint8_io=True,
        plugins=(_PLUGINS_10 - _REMOVED_IN_11) | _CUSTOM_11,
    ),
}

# The pass that removes an operator the parser cannot import, where one exists. Any node
# whose inputs are all constant is folded away by `fold_constants` instead (preflight.py).
FIXES = {
    # The `nms` pass adds NMS to a raw head; backend efficient_nms emits the EfficientNMS_TRT
    # plugin, which every generation's plugin library has ([oss-8.0.1], [plugins]).
    "NonMaxSuppression": ("nms", "export the head without NMS and add it with the `nms` surgery pass, "
                                 "backend efficient_nms"),
    # Ultralytics' end-to-end (NMS-free) heads use Mod, TopK, GatherElements; its own exporter
    # turns them off for TensorRT < 8.5 (DESIGN.md).
    "Mod": ("nms", "if it comes from an end-to-end (NMS-free) head, export without that head and add NMS "
                   "with the `nms` surgery pass, backend efficient_nms"),
}
