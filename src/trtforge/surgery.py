"""Graph surgery: the registry of named ONNX -> ONNX passes (the stage is stages/surgery.py).

A pass is `(model: onnx.ModelProto, **params) -> onnx.ModelProto`, registered with
`@surgery_pass("name")` (the way onnx-graphsurgeon's `Graph.register()` adds methods).
Built-in passes live in `trtforge.stages.passes`; users drop `*.py` files into plugins/ that
register more. Pass names in plugins are found by reading the files' syntax tree, not by
importing them, so loading dodo.py stays cheap and a plugin's heavy imports run only
when its pass runs.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Callable

from .errors import StageError

SurgeryPass = Callable[..., "object"]
_REGISTRY: dict[str, SurgeryPass] = {}


def surgery_pass(name: str) -> Callable[[SurgeryPass], SurgeryPass]:
    """Register a pass under `name`; the recipe's `surgery:` list refers to it."""

    def register(func: SurgeryPass) -> SurgeryPass:
        # The surgery stage imports a plugin file each time it runs (once per recipe in one
        # doit run): the same module registering the name again replaces its own pass.
        earlier = _REGISTRY.get(name)
        if earlier is not None and earlier is not func and _module(earlier) != _module(func):
            raise StageError(f"surgery pass '{name}' is registered twice ({func.__module__})")
        _REGISTRY[name] = func
        return func

    return register


def builtin_pass_names() -> list[str]:
    from .stages import passes  # noqa: F401  (registers the built-ins; imports no heavy library)

    return sorted(_REGISTRY)


def discover_plugin_passes(plugins_dir: Path) -> dict[str, Path]:
    """{pass name: file} for every `@surgery_pass("name")` in plugins/*.py, without importing."""
    found: dict[str, Path] = {}
    for file in sorted(plugins_dir.glob("*.py")):
        try:
            tree = ast.parse(file.read_text(), filename=str(file))
        except SyntaxError as exc:
            raise StageError(f"{file}:{exc.lineno}: syntax error in plugin: {exc.msg}") from None
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for deco in node.decorator_list:
                    name = _registered_name(deco)
                    if name:
                        found[name] = file
    return found


def _registered_name(deco: ast.expr) -> str | None:
    if not (isinstance(deco, ast.Call) and deco.args and isinstance(deco.args[0], ast.Constant)):
        return None
    func = deco.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return deco.args[0].value if called == "surgery_pass" else None


def registered_pass(name: str) -> SurgeryPass:
    return _REGISTRY[name]


def registered_passes() -> dict[str, SurgeryPass]:
    """A copy of the registry: {pass name: function}."""
    return dict(_REGISTRY)


def _module(func: SurgeryPass) -> str | None:
    return getattr(func, "__module__", None)
