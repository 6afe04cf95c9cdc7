"""Quantization helpers that are not stages: how a quantized ONNX is evaluated on CPU."""
