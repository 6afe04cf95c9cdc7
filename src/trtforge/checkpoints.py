"""checkpoints: a PyTorch checkpoint read once, judged by what its pickle names, and loaded
without running anything the file chose (issue 13: model files are data).

The facts this module encodes (torch 2.14, torch/_weights_only_unpickler.py; Python's pickle):

- torch.save writes a zip whose data.pkl is a protocol-2 pickle. Unpickling runs code in three
  places: REDUCE calls a global with arguments from the file (for a class, its __init__), NEWOBJ
  calls `cls.__new__(cls, *args)`, BUILD calls `__setstate__` or fills `__dict__`.
- torch.load(weights_only=True) takes a global only from torch's own allow-list and the
  `safe_globals` given to it, so it imports nothing the file names; but it lets REDUCE call any
  allowed global, classes included. A network class is therefore accepted as a name and as
  NEWOBJ creates it, never as a call: torch.save writes every nn.Module through NEWOBJ
  (copyreg.__newobj__), while a call runs the class's __init__ on arguments from the file, and
  Ultralytics' and YOLOv5's parse_model eval() the `activation` of the config they are given.
- Python's pickle writes a bound method as getattr(obj, name): a fused Ultralytics network
  (`m.forward = m.forward_fuse`, tasks.BaseModel.fuse) names builtins.getattr. Only that form is
  accepted, and the loader's getattr returns only such methods.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import StageError, require

# Modules a maker's network classes are defined in, besides torch's layers (TORCH_LAYERS). A
# class there is accepted when it is defined in that module (not imported into it), never as a call.
NETWORK_MODULES = {
    # ultralytics.utils.loss / .tal: the loss a training checkpoint kept as model.criterion
    "Ultralytics": ("ultralytics.nn.tasks", "ultralytics.nn.modules",
                    "ultralytics.utils.loss", "ultralytics.utils.tal"),
    # `models.yolo` as ultralytics/yolov5 checkpoints name it, found in the yolov5 package's folder
    "YOLOv5": ("models", "yolov5.models"),
}
TORCH_LAYERS = "torch.nn.modules"
# Names Ultralytics' own loader maps to current ones (tasks.torch_safe_load, temporary_modules).
LEGACY_NAMES = {
    "Ultralytics": {
        "ultralytics.nn.tasks.YOLOv10DetectionModel": "ultralytics.nn.tasks.DetectionModel",
        "ultralytics.nn.modules.block.Silence": "torch.nn.modules.linear.Identity",  # YOLOv9e
        "ultralytics.utils.loss.v10DetectLoss": "ultralytics.utils.loss.E2EDetectLoss",
    },
    "YOLOv5": {},
}
# The methods builtins.getattr may bind in a network's pickle (see the module docstring).
FORWARDS = ("forward", "forward_fuse", "forward_split")


class _Global(NamedTuple):
    """A class or function the pickle names (GLOBAL), while the scan follows it."""
    module: str
    name: str


class _Instance(NamedTuple):
    """An object NEWOBJ created from `cls`, while the scan follows it."""
    cls: _Global


@dataclass(frozen=True)
class Use:
    """One use the pickle makes of a global: `named` (GLOBAL), `created` (NEWOBJ) or `called`
    (REDUCE). For a call of builtins.getattr, `target` and `attribute` are its arguments when the
    scan could follow them."""
    module: str
    name: str
    how: str
    target: _Global | None = None
    attribute: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}" if self.module else "an object the file builds"


@dataclass(frozen=True)
class TorchFile:
    """A torch.save file's bytes, read once, with the uses its pickle makes of globals."""
    data: bytes
    uses: tuple[Use, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def names(self) -> list[str]:
        """The globals it names outside torch's own weights-only allow-list, in order of first use."""
        from torch._weights_only_unpickler import _get_allowed_globals

        torch_own = _get_allowed_globals()
        return list(dict.fromkeys(u.qualified for u in self.uses if u.module and u.qualified not in torch_own))


def read_torch_file(path: Path, shown: Path) -> TorchFile:
    """The file at `path` as a torch.save file, refused in one line if it is damaged or not one.

    torch.load reports a damaged file as RuntimeError, EOFError, UnpicklingError or even KeyError
    depending on the damage, and loads a flipped byte inside a tensor silently (it does not check
    the zip's CRCs; measured with torch 2.14), so the bytes are judged first. They are read once:
    what is judged is what is loaded, whatever happens to the file meanwhile.
    """
    torch = require("torch", "yolo")
    data = path.read_bytes()
    problem = _zip_problem(data)
    if problem is None:
        try:  # torch's own scan first: it reads the opcodes its weights-only loader reads, and says why not
            torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            problem = f"is not a readable PyTorch checkpoint (torch: {str(exc).splitlines()[0]})"
    if problem is None:
        try:
            return TorchFile(data, tuple(dict.fromkeys(pickle_uses(_data_pkl(data)))))
        except (ValueError, pickle.UnpicklingError) as exc:  # pickletools raises ValueError for bad framing
            problem = f"is not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})"
    raise StageError(f"model.weights: {shown} {problem}; copy or save it again")


def _zip_problem(data: bytes) -> str | None:
    """What makes `data` no torch.save file, judged from its zip structure (None: it looks like one)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):  # torch.save has written zip archives since torch 1.6
        return (f"is not a PyTorch checkpoint or is truncated ({len(data)} bytes, without the zip "
                "directory every torch.save file ends with)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "is a zip archive but not a PyTorch checkpoint (it has no data.pkl)"
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as exc:
        return f"is a damaged zip archive ({exc})"
    return None if damaged is None else f"is damaged ({damaged} inside it fails its CRC check)"


def _data_pkl(data: bytes) -> bytes:
    """The pickle torch.load will read, found by torch's own zip reader (a crafted zip could show
    Python's zipfile another data.pkl)."""
    torch = require("torch", "yolo")
    return torch._C.PyTorchFileReader(io.BytesIO(data)).get_record("data.pkl")


def pickle_uses(pickle_bytes: bytes) -> list[Use]:
    """Every use the pickle makes of a global, in order and as often as it occurs, found by
    following its stack without running it: each GLOBAL is `named`, and NEWOBJ and REDUCE say
    what they create or call.

    Only the opcodes torch's weights-only loader reads are followed, the way it reads them
    (torch/_weights_only_unpickler.py, Unpickler.load); anything else raises UnpicklingError.
    """
    import pickletools

    from torch._utils import IMPORT_MAPPING, NAME_MAPPING  # the renames torch's loader applies

    uses: list[Use] = []
    stack: list = []
    marks: list[list] = []
    memo: dict = {}

    def pop(count: int = 1) -> list:
        if len(stack) < count:
            raise pickle.UnpicklingError("its pickle pops more than it pushed")
        taken = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        return taken

    def pop_mark() -> list:
        nonlocal stack
        if not marks:
            raise pickle.UnpicklingError("its pickle closes a MARK it never opened")
        items, stack = stack, marks.pop()
        return items

    def used(value, how: str) -> None:
        module, name = value if isinstance(value, _Global) else ("", "")  # else an object the file built
        uses.append(Use(module, name, how))

    for opcode, arg, _ in pickletools.genops(pickle_bytes):
        op = opcode.name
        if op == "GLOBAL":
            module, name = arg.split(" ", 1)
            module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
            stack.append(_Global(module, name))
            used(stack[-1], "named")
        elif op == "NEWOBJ":
            cls, _ = pop(2)
            used(cls, "created")
            stack.append(_Instance(cls) if isinstance(cls, _Global) else None)
        elif op == "REDUCE":
            func, args = pop(2)
            if isinstance(func, _Global) and func == ("builtins", "getattr") and _is_bound_lookup(args):
                target = args[0] if isinstance(args[0], _Global) else args[0].cls
                uses.append(Use("builtins", "getattr", "called", target, args[1]))
            else:
                used(func, "called")
            stack.append(None)
        elif op == "BUILD":
            pop()  # the state; the object it fills stays
            if not stack:
                raise pickle.UnpicklingError("its pickle builds nothing")
        elif op in ("SETITEM", "APPEND"):
            pop(2 if op == "SETITEM" else 1)
        elif op in ("SETITEMS", "APPENDS"):
            pop_mark()
        elif op == "MARK":
            marks.append(stack)
            stack = []
        elif op == "TUPLE":
            items = tuple(pop_mark())  # before `stack` is looked up: pop_mark rebinds it
            stack.append(items)
        elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(tuple(pop(int(op[-1]))))
        elif op in ("BINPUT", "LONG_BINPUT"):
            if not stack:
                raise pickle.UnpicklingError("its pickle memoizes nothing")
            memo[arg] = stack[-1]
        elif op in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise pickle.UnpicklingError(f"its pickle reads memo {arg}, never written")
            stack.append(memo[arg])
        elif op == "BINPERSID":
            pop()
            stack.append(None)
        elif op in ("BINUNICODE", "SHORT_BINSTRING"):
            stack.append(arg)
        elif op in ("NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET",
                    "BININT", "BININT1", "BININT2", "BINFLOAT", "LONG1"):
            stack.append(None)
        elif op == "STOP":
            pop()
        elif op != "PROTO":
            raise pickle.UnpicklingError(f"its pickle uses opcode {op}, which torch's weights-only loader "
                                         "does not read")
    return uses


def _is_bound_lookup(args) -> bool:
    """Whether REDUCE arguments are getattr's (a class or an object the pickle created, a name)."""
    return (type(args) is tuple and len(args) == 2  # a tuple the pickle built, not a _Global or _Instance
            and isinstance(args[0], (_Global, _Instance)) and isinstance(args[1], str))


def check_globals(file: TorchFile, shown: Path, maker: str) -> None:
    """Refuse, before anything unpickles it, a checkpoint whose pickle uses a global in a way a
    checkpoint `maker` saves never does."""
    refused = next((use for use in file.uses if not _accepted(use, maker)), None)
    if refused is not None:
        raise StageError(f"model.weights: {shown} names {_described(refused, maker)}, which a checkpoint never "
                         "needs (it could run code when unpickled); nothing was loaded: take the checkpoint "
                         f"{maker} saved from a source you trust, or save just its network again where you trust "
                         "the file")


def _accepted(use: Use, maker: str) -> bool:
    """Plain data in any use; a network class named or created but never called (its __init__
    would run on arguments from the file); getattr only binding a network's forward method."""
    if use.qualified in _data_globals(maker):
        return True
    if use.qualified == "builtins.getattr":
        return use.how == "named" or (use.target is not None and use.attribute in FORWARDS
                                      and _network_class(*use.target, maker) is not None)
    return use.how != "called" and _network_class(use.module, use.name, maker) is not None


def _described(use: Use, maker: str) -> str:
    """The refused use as the error line names it."""
    if use.target is not None:
        return f"builtins.getattr({use.target.module}.{use.target.name}, {use.attribute!r})"
    if not use.module:
        return f"a {'call' if use.how == 'called' else 'creation'} of an object the file builds"
    if use.how == "called" and _network_class(use.module, use.name, maker) is not None:
        return f"a call of {use.qualified}"
    return use.qualified


def load_checkpoint(file: TorchFile, shown: Path, maker: str) -> object:
    """What the checked checkpoint holds, unpickled by torch's weights-only loader from the bytes
    that were checked, with exactly the globals the check accepted."""
    torch = require("torch", "yolo")
    with torch.serialization.safe_globals(_loader_globals(file, maker)):
        try:
            return torch.load(io.BytesIO(file.data), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, TypeError, AttributeError) as exc:
            raise StageError(f"model.weights: torch cannot load {shown} with its weights-only loader "
                             f"({str(exc).splitlines()[0]}); save the checkpoint again") from exc


def _loader_globals(file: TorchFile, maker: str) -> list:
    """(object, name) for every global the file uses beyond torch's own allow-list, plus the numpy
    dtype classes BUILD meets without the pickle naming them."""
    import numpy as np

    found = []
    for qualified in file.names():
        module, _, name = qualified.rpartition(".")
        if qualified == "builtins.getattr":
            found.append((_bound_forward, qualified))
        elif qualified in _data_globals(maker):
            found.append((_data_globals(maker)[qualified], qualified))
        elif (cls := _network_class(module, name, maker)) is not None:
            found.append((cls, qualified))
    if any(name.startswith("numpy.") for _, name in found):
        found += [cls for cls in vars(np.dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)]
    return found


def _bound_forward(obj, name: str):
    """The builtins.getattr a checkpoint is loaded with: a forward method of a network class or
    layer, nothing else (the check has already refused other uses; this holds it at load too)."""
    torch = require("torch", "yolo")
    is_layer = isinstance(obj, torch.nn.Module) or (isinstance(obj, type) and issubclass(obj, torch.nn.Module))
    if name not in FORWARDS or not is_layer:
        raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not a network's forward method")
    return getattr(obj, name)


@functools.lru_cache(maxsize=4)
def _data_globals(maker: str) -> dict:
    """Plain-data globals a checkpoint may use in any way: torch's own weights-only allow-list
    (tensors, storages, dtypes, OrderedDict, set, _codecs.encode for bytes) and what training
    checkpoints hold besides (numpy fitness values and arrays, paths, Ultralytics' argument namespace)."""
    import pathlib
    import types

    import numpy as np
    from torch._weights_only_unpickler import _get_allowed_globals

    found = dict(_get_allowed_globals())
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1's and numpy 2's names
        found[f"{module}._reconstruct"] = np.zeros(0).__reduce__()[0]
        found[f"{module}.scalar"] = np.float64(0).__reduce__()[0]
    found.update({"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype, "types.SimpleNamespace": types.SimpleNamespace})
    for module in ("pathlib", "pathlib._local"):  # Python 3.13 pickles paths under pathlib._local
        found.update({f"{module}.PosixPath": pathlib.PosixPath, f"{module}.WindowsPath": pathlib.PosixPath})
    if maker == "Ultralytics":
        from ultralytics.utils import IterableSimpleNamespace

        for module in ("ultralytics.utils", "ultralytics.yolo.utils"):  # the second before Ultralytics 8.0.44
            found[f"{module}.IterableSimpleNamespace"] = IterableSimpleNamespace
    return found


def in_network_family(qualified: str, maker: str) -> bool:
    """Whether `qualified` (module.name) lies in a module a `maker` network may be made of."""
    return any(qualified.startswith(family + ".") for family in (*NETWORK_MODULES.get(maker, ()), TORCH_LAYERS))


def _network_class(module: str, name: str, maker: str):
    """The class `module.name` names if a `maker` network may be made of it, else None. Only
    modules of the network's packages are imported, never a module the file alone names (not
    cached: `models.yolo` resolves only once the yolov5 package has put its folder on sys.path)."""
    import importlib

    torch = require("torch", "yolo")
    legacy = LEGACY_NAMES.get(maker, {}).get(f"{module}.{name}")
    if legacy is not None:
        module, _, name = legacy.rpartition(".")
    if not in_network_family(f"{module}.{name}", maker):
        return None
    if any(part.startswith("_") for part in module.split(".")) or not name.isidentifier():
        return None  # no __main__, no private modules
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    if not isinstance(cls, type) or cls.__module__ != module:
        return None  # a function, or a class imported from elsewhere
    return cls if issubclass(cls, torch.nn.Module) or module.startswith("ultralytics.utils.") else None
