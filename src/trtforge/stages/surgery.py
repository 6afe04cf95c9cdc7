"""surgery: apply the recipe's named passes to the exported ONNX.

The passes come from the registry in `trtforge.surgery` (built-ins in `trtforge.stages.passes`,
user passes in plugins/*.py, imported here, when they run, and not before).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..atomic import atomic_output
from ..errors import StageError, require
from ..surgery import builtin_pass_names, registered_pass


def _import_plugin(file: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"trtforge_plugin_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def run_surgery(source: Path, output: Path, passes: list[tuple[str, dict]], plugin_files: list[Path]) -> None:
    """Apply `passes` in order to the ONNX at `source`; write the result to `output`."""
    onnx = require("onnx", "core")
    builtin_pass_names()
    for file in plugin_files:
        _import_plugin(file)
    model = onnx.load(str(source))
    for name, params in passes:
        try:
            model = registered_pass(name)(model, **params)
        except TypeError as exc:
            raise StageError(f"surgery pass '{name}': bad parameters {params}: {exc}") from exc
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise StageError(f"surgery produced an invalid model: {str(exc).splitlines()[0]}") from exc
    with atomic_output(output) as temp:
        onnx.save(model, str(temp))
