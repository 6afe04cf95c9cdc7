"""surgery: apply the recipe's named passes to the exported ONNX.

The passes come from the registry in `trtforge.surgery` (built-ins in `trtforge.stages.passes`,
user passes in plugins/*.py, imported here, when they run, and not before).

A pass is code that runs inside doit's process, so how it may end is settled here. doit 0.37
catches `Exception` around an action, not `SystemExit`: a plugin's `sys.exit(0)` ended the
whole build with exit 0 and nothing built, and `os._exit(0)` also skipped doit's save of its
state DB. Both now fail this task in one line naming the plugin file and pass, on import or
in a pass; Ctrl-C (KeyboardInterrupt) still stops the build. An exit from native code (C's
`exit()`) or a crash cannot be caught in-process: a crash ends doit with the signal's code,
never 0; containing an exit from C would take running user passes in a child process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..atomic import atomic_output
from ..errors import StageError, require
from ..modelmeta import props_from_metadata, props_of, stamp
from ..surgery import builtin_pass_names, registered_pass, registered_passes

PASS_ENDS = "a pass must return the graph or raise"
FILE_ENDS = "a plugin file must only define and register passes"


def run_surgery(source: Path, output: Path, passes: list[tuple[str, dict]], plugin_files: list[Path],
                task: str | None = None, metadata: Path | None = None) -> None:
    """Apply `passes` in order to the ONNX at `source`; write the result to `output`.

    `task` names the doit task in messages; by default it follows from `output`, the
    surgered ONNX at artifacts/<recipe>/model.onnx. The result keeps the source's
    metadata_props, which passes drop, plus what the export stage learned of the model
    (`metadata`, its export.json), in Ultralytics' format (modelmeta.py)."""
    onnx = require("onnx", "core")
    task = task or f"surgery:{output.parent.name}"
    builtin_pass_names()
    origin: dict[str, Path] = {}
    for file in plugin_files:
        with _exits_refused(f"{task}: plugin file {_shown(file)}", FILE_ENDS, when=" when imported"):
            origin.update(dict.fromkeys(_import_plugin(file), file))
    model = onnx.load(str(source))
    props = props_of(model) | (props_from_metadata(json.loads(metadata.read_text())) if metadata else {})
    for name, params in passes:
        culprit = f"plugin pass '{name}' ({_shown(origin[name])})" if name in origin else f"surgery pass '{name}'"
        try:
            with _exits_refused(f"{task}: {culprit}", PASS_ENDS):
                model = registered_pass(name)(model, **params)
        except TypeError as exc:
            raise StageError(f"surgery pass '{name}': bad parameters {params}: {exc}") from exc
        if not isinstance(model, onnx.ModelProto):
            raise StageError(f"{task}: {culprit} returned {type(model).__name__}, not an onnx.ModelProto; {PASS_ENDS}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise StageError(f"surgery produced an invalid model: {str(exc).splitlines()[0]}") from exc
    stamp(model, props)
    with atomic_output(output) as temp:
        onnx.save(model, str(temp))


def _import_plugin(file: Path) -> list[str]:
    """Import a plugin file; return the names of the passes it registered."""
    before = registered_passes()
    spec = importlib.util.spec_from_file_location(f"trtforge_plugin_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name for name, func in registered_passes().items() if before.get(name) is not func]


def _shown(file: Path) -> str:
    """plugins/<name>.py, as the user wrote it (plugins are only looked for in that folder)."""
    return f"{file.parent.name}/{file.name}"


# ----------------------------------------------------------------------------- exits

class _ExitCalled(BaseException):
    """os._exit(code), called by user code while `_exits_refused` runs it. A BaseException, as
    SystemExit is, so that a plugin's `except Exception` does not swallow it."""

    def __init__(self, code: object) -> None:
        super().__init__(code)
        self.code = code


_REAL_EXIT = os._exit
_OS_MODULES = [m for m in (os, sys.modules.get(os.name)) if m is not None]  # os._exit is posix._exit
_guarded_pid: int | None = None


def _refuse_exit(code: int) -> None:
    if os.getpid() != _guarded_pid:  # a process the plugin forked (multiprocessing ends them so)
        _REAL_EXIT(code)
    raise _ExitCalled(code)


@contextlib.contextmanager
def _exits_refused(culprit: str, advice: str, when: str = "") -> Iterator[None]:
    """Run user code so that its `sys.exit` or `os._exit` fails the task in one line naming
    `culprit`; every other exception, KeyboardInterrupt included, passes through unchanged."""
    global _guarded_pid
    _guarded_pid = os.getpid()
    for module in _OS_MODULES:
        module._exit = _refuse_exit
    try:
        yield
    except SystemExit as exc:
        call = "sys.exit()" if exc.code is None else f"sys.exit({exc.code!r})"
        raise StageError(f"{culprit} called {call}{when}; {advice}") from None
    except _ExitCalled as exc:
        raise StageError(f"{culprit} called os._exit({exc.code!r}){when}; {advice}") from None
    finally:
        for module in _OS_MODULES:
            module._exit = _REAL_EXIT
        _guarded_pid = None
