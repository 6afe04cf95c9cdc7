"""Results kept across runs by content key (artifacts/calib/) are checked before reuse.

A power loss can leave a stored calibration result empty; an edit or a bug can leave one
readable but wrong, and its ranges would go straight into the engine's INT8 scales. Each
damaged store is computed again after one warning naming it, in real doit runs on a real
160 px export (the checks do not depend on the size) calibrated on four demo photos.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import SMALL_RECIPE, copied, executed, make_project, run_doit, with_demo_sets

from trtforge.errors import StageError
from trtforge.quant.accuracy import AccuracyJob, Control, accuracy_key, controlled

pytestmark = pytest.mark.slow

INT8 = """\
  int8:
    precision: int8
    calibration: {images: calib/four.txt, batch: 4}
"""
TASK = "calib:yolov8n-int8"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """One project whose calibration ran once and stored its result; tests copy it."""
    project = with_demo_sets(make_project(tmp_path_factory.mktemp("stored") / "proj",
                                          {"yolov8n": SMALL_RECIPE + INT8}))
    photos = [line for line in (project / "calib" / "demo-calibration.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    (project / "calib" / "four.txt").write_text("\n".join(photos[:4]) + "\n")
    result = run_doit(project, TASK)
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.fixture
def project(calibrated, tmp_path) -> Path:
    return copied(calibrated, tmp_path)


def the_store(project: Path) -> Path:
    (stored,) = (project / "artifacts" / "calib").glob("*.json")
    return stored


def calibrate_again(project: Path):
    """Rerun the calib task (its cache is gone, so doit must), which looks up the store."""
    (project / "artifacts" / "yolov8n" / "int8" / "calib.cache").unlink()
    result = run_doit(project, TASK)
    assert result.returncode == 0 and executed(result)[-1] == TASK, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result


def sealed(payload: dict) -> str:
    """A store as trtforge writes one: the payload and the sha256 of its sorted-key JSON."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return json.dumps({"format": "trtforge-stored-result-1", "sha256": digest, "payload": payload})


def payload_in(record: dict) -> dict:
    """The stored result (a store trtforge wrote before it kept a sha256 was the bare result)."""
    return record.get("payload", record)


def payload_of(text: str) -> dict:
    return payload_in(json.loads(text))


def with_range(text: str, value) -> dict:
    """The stored result with its first tensor's range replaced."""
    payload = payload_of(text)
    payload["ranges"][0][1] = value
    return payload


def edited(text: str) -> str:
    """The store with one range changed, in place: its sha256 is left as it was."""
    record = json.loads(text)
    payload_in(record)["ranges"][0][1] *= 2
    return json.dumps(record)


DAMAGE = {
    "empty": (lambda text: "", "it is empty (a write cut short, e.g. by a power loss)"),
    "truncated": (lambda text: text[:len(text) // 2], "it is not JSON (cut short or overwritten)"),
    "not json": (lambda text: "{not json", "it is not JSON (cut short or overwritten)"),
    "the earlier format": (lambda text: json.dumps(payload_of(text)),
                           "it is not in the format trtforge-stored-result-1 (written by an earlier trtforge?)"),
    "edited": (edited, "it does not match the sha256 recorded in it (changed after trtforge wrote it)"),
    "negative range": (lambda text: sealed(with_range(text, -1.5)), "has the range -1.5, not a positive finite"),
    "non-finite range": (lambda text: sealed(with_range(text, float("nan"))), "has the range NaN, not a positive"),
    "no ranges": (lambda text: sealed({**payload_of(text), "ranges": []}), "it holds no ranges"),
    "another key": (lambda text: sealed({**payload_of(text), "report": {"key": "0" * 64, "skipped": []}}),
                    "its report is not the one computed for these inputs"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_stored_calibration_result_is_computed_again_after_one_line(project, damage):
    change, why = DAMAGE[damage]
    stored = the_store(project)
    cache = project / "artifacts" / "yolov8n" / "int8" / "calib.cache"
    good = cache.read_text()
    stored.write_text(change(stored.read_text()))

    result = calibrate_again(project)
    warnings = [line for line in result.stderr.splitlines() if str(stored) in line]
    assert len(warnings) == 1, result.stderr
    prefix = f"trtforge: WARNING: {TASK}: not reusing the stored calibration result {stored}: "
    assert warnings[0].startswith(prefix) and why in warnings[0], warnings[0]
    assert warnings[0].endswith("; computing the ranges again")
    assert "calibrating: 4/4 images" in result.stderr  # computed, not reused
    assert cache.read_text() == good


def test_a_store_computed_again_replaces_the_damaged_one_and_is_reused(project):
    stored = the_store(project)
    cache = project / "artifacts" / "yolov8n" / "int8" / "calib.cache"
    good = cache.read_text()
    stored.write_text("")
    assert "not reusing" in calibrate_again(project).stderr

    result = calibrate_again(project)
    assert f"{TASK}: reusing ranges computed earlier for the same images, preprocessing, batch, method and ONNX " \
           f"({stored.name})" in result.stderr
    assert "not reusing" not in result.stderr and "calibrating:" not in result.stderr
    assert cache.read_text() == good


# ----------------------------------------------------------------------------- accuracy control

def test_a_damaged_stored_exclusion_list_is_searched_again_after_one_line(tmp_path, monkeypatch, capsys):
    """The accuracy-control store (artifacts/calib/accuracy-<key>.json) is read through the same
    check. A power loss can leave it empty; a list edited by hand, or left in a form trtforge no
    longer writes, must not revert whatever nodes it lists. Each is named in one warning, the
    search runs again and its result replaces the file."""
    import numpy as np
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json
    from test_accuracy_control import chain

    from trtforge.quant import accuracy

    save_json([{"images": np.zeros((1, 3, 8, 8), np.float32)}], str(tmp_path / "inputs.json"))
    RunResults([("onnxrt-runner", [IterationResult({"y": np.zeros((1, 6, 4), np.float32)})])]).save(
        str(tmp_path / "outputs.json"))
    job = AccuracyJob(Control("quantize:t-int8", 0.01, 2, 60), tmp_path / "inputs.json", tmp_path / "outputs.json",
                      gate={"task": "detect", "head": "yolo", "conf": 0.25, "iou": 0.7}, store_dir=tmp_path / "store")
    searches = []
    monkeypatch.setattr(accuracy, "control", lambda model, *args: searches.append(1) or (model, {"reverted": ["b"]}))
    key = accuracy_key(b"made from", job)
    stored = job.store_dir / f"accuracy-{key[:24]}.json"
    stored.parent.mkdir()
    report = {"key": key, "reverted": ["b"], "steps": []}
    edited = json.loads(sealed(report))
    edited["payload"]["reverted"] = ["a", "b", "c"]
    damages = [("", "it is empty"), ("{not json", "it is not JSON"),
               (json.dumps(report), "written by an earlier trtforge"),
               (json.dumps(edited), "does not match the sha256 recorded in it"),
               (sealed({**report, "reverted": [1]}), "not a list of node names"),
               (sealed({**report, "key": "0" * 64}), "it was stored for other inputs")]
    for damage, why in damages:
        stored.write_text(damage)
        _, searched = controlled(chain(), job, b"made from")
        err = capsys.readouterr().err
        assert searched["reused"] is False and searched["reverted"] == ["b"]
        assert f"WARNING: quantize:t-int8: not reusing the stored accuracy-control result {stored}: " in err, err
        assert why in err and err.rstrip().endswith("; searching again"), (why, err)
        _, again = controlled(chain(), job, b"made from")  # the new search's result replaced the damaged file
        assert again["reused"] is True and again["reverted"] == ["b"]
    assert len(searches) == len(damages)
