"""trtforge: YAML recipes in, dependency-tracked TensorRT engines out.

Importing this package must stay cheap: dodo.py imports it on every `doit` call, so
nothing here (or in recipe/tasks/render) may import torch, onnx, onnxruntime,
ultralytics, modelopt or polygraphy at module level.
"""

__version__ = "0.1.0"
