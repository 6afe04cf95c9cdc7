"""The detection gate (trtforge.gates.detect): YOLO decoding pinned to Ultralytics' NMS, and agreement metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from trtforge.gates.detect import Detections, decode_yolo, detection_agreement  # noqa: E402

NC, N = 80, 100


def raw(entries: list[tuple[float, float, float, float, int, float]], n: int = N) -> np.ndarray:
    """A [1, 4+NC, n] raw head output: given anchors (cx, cy, w, h, class, score), others background."""
    out = np.zeros((1, 4 + NC, n), np.float32)
    out[0, :4] = np.array([320, 320, 10, 10], np.float32)[:, None]  # background anchors: small boxes, score 0
    out[0, 4:] = 0.001
    for i, (cx, cy, w, h, c, s) in enumerate(entries):
        out[0, :4, i] = cx, cy, w, h
        out[0, 4 + c, i] = s
    return out


def dets(rows: list[tuple[float, float, float, float, float, int]]) -> Detections:
    """Detections from (x1, y1, x2, y2, score, class) rows."""
    a = np.array(rows, np.float64).reshape(-1, 6)
    return Detections(a[:, :4].astype(np.float32), a[:, 4].astype(np.float32), a[:, 5].astype(np.int64))


def scene(seed: int = 0, images: int = 4, per_image: int = 12, classes: int = 3) -> list[Detections]:
    """Non-overlapping boxes on a grid (so no match is ambiguous), random classes and scores."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        cells = rng.choice(64, per_image, replace=False)
        x1, y1 = (cells % 8) * 80.0 + 5, (cells // 8) * 80.0 + 5
        boxes = np.stack([x1, y1, x1 + 60, y1 + 60], 1).astype(np.float32)
        out.append(Detections(boxes, rng.uniform(0.3, 1, per_image).astype(np.float32),
                              rng.integers(0, classes, per_image).astype(np.int64)))
    return out


def replace(d: Detections, **changes) -> Detections:
    return Detections(**{"boxes": d.boxes, "scores": d.scores, "classes": d.classes, **changes})


# --- decode_yolo ---------------------------------------------------------------------------

def test_decode_overlapping_same_class_keeps_the_best_box():
    out = raw([(100, 100, 40, 40, 0, 0.9), (102, 101, 40, 40, 0, 0.8), (300, 300, 50, 20, 5, 0.6)])
    (d,) = decode_yolo(out)
    np.testing.assert_allclose(d.boxes, [[80, 80, 120, 120], [275, 290, 325, 310]])
    np.testing.assert_allclose(d.scores, [0.9, 0.6], rtol=1e-6)
    assert d.classes.tolist() == [0, 5]
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.classes.dtype == np.int64


def test_decode_same_boxes_different_classes_are_both_kept():
    (d,) = decode_yolo(raw([(100, 100, 40, 40, 0, 0.9), (100, 100, 40, 40, 1, 0.8)]))
    assert d.classes.tolist() == [0, 1]
    np.testing.assert_allclose(d.boxes, [[80, 80, 120, 120]] * 2)


def test_decode_thresholds_batch_and_fp16():
    out = np.concatenate([raw([(100, 100, 40, 40, 2, 0.9), (200, 200, 40, 40, 3, 0.2)]), raw([])])
    first, second = decode_yolo(out.astype(np.float16))
    assert first.classes.tolist() == [2] and len(second) == 0 and second.boxes.shape == (0, 4)
    assert len(decode_yolo(out, conf=0.1)[0]) == 2
    with pytest.raises(ValueError, match="B, 4\\+nc, N"):
        decode_yolo(out[0])


def test_decode_matches_ultralytics_nms_on_a_plausible_tensor():
    """Pins the conventions (xywh in, xyxy out, class-aware, sorted by score) to Ultralytics'."""
    import torch
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(0)
    out = np.empty((2, 4 + NC, 2000), np.float32)
    centres = rng.uniform(0, 640, (2, 10, 2))  # clusters of overlapping boxes, as a real head gives
    out[:, :2] = np.repeat(centres, 200, 1).transpose(0, 2, 1) + rng.normal(0, 8, (2, 2, 2000))
    out[:, 2:4] = rng.uniform(20, 120, (2, 2, 2000))
    out[:, 4:] = 1 / (1 + np.exp(-rng.normal(-6, 2.5, (2, NC, 2000))))  # sigmoid-ed, mostly background
    expected = non_max_suppression(torch.from_numpy(out.copy()), conf_thres=0.25, iou_thres=0.7, max_det=300)
    got = decode_yolo(out, conf=0.25, iou=0.7, max_det=300)
    assert sum(len(d) for d in got) > 20
    for d, e in zip(got, expected):
        np.testing.assert_array_equal(d.boxes, e[:, :4].numpy())
        np.testing.assert_array_equal(d.scores, e[:, 4].numpy())
        np.testing.assert_array_equal(d.classes, e[:, 5].numpy().astype(np.int64))


def slow_clock(monkeypatch) -> None:
    """Ultralytics' NMS reads a clock that jumps 100 s per reading: a machine so loaded that any
    time limit is hit after the first image."""
    from types import SimpleNamespace

    import ultralytics.utils.nms as nms

    ticks = iter(range(0, 10**9, 100))
    monkeypatch.setattr(nms, "time", SimpleNamespace(time=lambda: float(next(ticks))))


def test_a_slow_decode_cannot_silently_drop_images(monkeypatch):
    """Over a batch, Ultralytics' NMS gives up after 2 + 0.05 x batch seconds and leaves the
    images it did not reach empty (only a log warning). The gate decodes per image with no
    time limit, so under any load every image keeps its detections."""
    import torch
    from ultralytics.utils.nms import non_max_suppression

    out = np.concatenate([raw([(100 + 50 * i, 100, 40, 40, i, 0.9)]) for i in range(3)])
    calm = decode_yolo(out)
    slow_clock(monkeypatch)
    batched = non_max_suppression(torch.from_numpy(out.copy()), conf_thres=0.25, iou_thres=0.7)
    assert [len(k) for k in batched] == [1, 0, 0]  # the hazard: two images silently emptied
    loaded = decode_yolo(out)
    assert [len(d) for d in loaded] == [1, 1, 1]
    for got, expected in zip(loaded, calm):
        np.testing.assert_array_equal(got.boxes, expected.boxes)
        np.testing.assert_array_equal(got.classes, expected.classes)


def test_a_decode_cut_short_anyway_raises_instead_of_scoring_empty_images(monkeypatch):
    """Should an NMS still come back empty for an image whose boxes score above the threshold
    (another Ultralytics version, another limit), the gate refuses to score it."""
    import torch
    import ultralytics.utils.nms as nms

    from trtforge.gates import DecodeCutShort

    real = nms.non_max_suppression
    calls = iter(range(10))

    def truncating(prediction, *args, **kwargs):
        kept = real(prediction, *args, **kwargs)
        return [torch.zeros((0, k.shape[1])) for k in kept] if next(calls) == 1 else kept

    monkeypatch.setattr(nms, "non_max_suppression", truncating)
    out = np.concatenate([raw([(100, 100, 40, 40, 0, 0.9)]), raw([(200, 200, 40, 40, 1, 0.8)]), raw([])])
    with pytest.raises(DecodeCutShort, match=r"^NMS returned no detection for verification image 2 of 3, although "
                                              r"boxes score above 0\.25: decoding was cut short$"):
        decode_yolo(out)


# --- detection_agreement -------------------------------------------------------------------

def test_agreement_with_itself_is_perfect():
    ref = scene()
    r = detection_agreement(ref, ref)
    assert r == {"precision": 1.0, "recall": 1.0, "map50": pytest.approx(1.0), "reference_detections": 48,
                 "candidate_detections": 48, "matched": 48, "mean_matched_similarity": pytest.approx(1.0),
                 "class_agnostic_map50": pytest.approx(1.0), "class_flips": 0}
    assert all(type(r[k]) is float for k in ("precision", "recall", "map50", "mean_matched_similarity",
                                             "class_agnostic_map50"))


def test_small_jitter_still_matches():
    ref = scene()
    cand = [replace(d, boxes=d.boxes + 3, scores=d.scores * 0.9) for d in ref]
    r = detection_agreement(ref, cand)
    assert r["matched"] == 48 and r["mean_matched_similarity"] == pytest.approx(57 * 57 / (2 * 3600 - 57 * 57))


def test_shifted_boxes_match_nothing():
    ref = scene()
    cand = [replace(d, boxes=d.boxes + 40) for d in ref]  # 60 px boxes moved 40 px: IoU 0.1
    r = detection_agreement(ref, cand)
    assert (r["matched"], r["precision"], r["recall"], r["map50"]) == (0, 0.0, 0.0, 0.0)


def test_wrong_class_on_half_the_candidates():
    ref = scene()
    cand = []
    for d in ref:
        classes = d.classes.copy()
        classes[::2] = (classes[::2] + 1) % 3  # another class present in the reference
        cand.append(replace(d, classes=classes))
    r = detection_agreement(ref, cand)
    assert r["matched"] == 24 and r["precision"] == 0.5 and r["recall"] == 0.5
    assert 0.15 < r["map50"] < 0.6


def test_boxes_that_keep_their_place_but_flip_class_are_told_apart_from_lost_ones():
    """INT8 often keeps a person's box and trades Normal for Fall: same-class agreement drops,
    class-agnostic agreement stays perfect, and every flip is counted (at the operating point)."""
    ref = scene(classes=2)
    flipped = [replace(d, classes=np.where(np.arange(len(d)) % 3 == 0, 1 - d.classes, d.classes)) for d in ref]
    r = detection_agreement(ref, flipped)
    assert r["class_flips"] == 16 and r["matched"] == 32 and r["recall"] == 32 / 48
    assert r["map50"] < 0.8 and r["class_agnostic_map50"] == 1.0

    low = [replace(d, scores=np.where(np.arange(len(d)) % 3 == 0, 0.1, d.scores).astype(np.float32)) for d in flipped]
    r = detection_agreement(ref, low, operating_conf=0.25)  # the flipped ones now score below verify.conf
    assert r["class_flips"] == 0 and r["class_agnostic_map50"] == 1.0

    lost = [Detections(d.boxes[1:], d.scores[1:], d.classes[1:]) for d in ref]  # one box gone per image
    r = detection_agreement(ref, lost)
    assert r["class_flips"] == 0 and r["class_agnostic_map50"] < 1.0


def test_dropped_candidates_lower_recall_not_precision():
    ref = scene()
    cand = [Detections(d.boxes[:9], d.scores[:9], d.classes[:9]) for d in ref]  # 36 of 48
    r = detection_agreement(ref, cand)
    assert r["precision"] == 1.0 and r["recall"] == 0.75 and r["matched"] == 36
    assert 0.5 < r["map50"] < 1.0
    assert json.loads(json.dumps(r)) == r and all(type(v) in (int, float) for v in r.values())


def test_extra_candidates_lower_precision_not_recall():
    ref = scene()
    extra = dets([(700, 700, 760, 760, 0.99, 0)])
    cand = [replace(d, boxes=np.concatenate([d.boxes, extra.boxes]), scores=np.concatenate([d.scores, extra.scores]),
                    classes=np.concatenate([d.classes, extra.classes])) for d in ref]
    r = detection_agreement(ref, cand)
    assert r["recall"] == 1.0 and r["precision"] == 48 / 52 and r["map50"] < 1.0


def test_unsorted_candidates_are_matched_in_score_order():
    """Two candidates on one reference box: the higher-scored one is the match, the other a FP."""
    ref = [dets([(0, 0, 100, 100, 0.9, 0)])]
    cand = [dets([(2, 2, 100, 100, 0.3, 0), (0, 0, 100, 100, 0.9, 0)])]
    r = detection_agreement(ref, cand)
    assert r["matched"] == 1 and r["precision"] == 0.5 and r["map50"] == pytest.approx(1.0)


def test_edge_cases():
    empty = dets([])
    some = dets([(0, 0, 10, 10, 0.9, 1)])
    both_empty = detection_agreement([empty, empty], [empty, empty])
    assert (both_empty["precision"], both_empty["recall"], both_empty["map50"]) == (1.0, 1.0, 1.0)
    ref_empty = detection_agreement([empty, empty], [some, empty])
    assert (ref_empty["precision"], ref_empty["recall"], ref_empty["map50"]) == (0.0, 1.0, 0.0)
    cand_empty = detection_agreement([empty, some], [empty, empty])
    assert (cand_empty["precision"], cand_empty["recall"], cand_empty["map50"]) == (0.0, 0.0, 0.0)
    assert cand_empty["reference_detections"] == 1 and cand_empty["candidate_detections"] == 0
    assert detection_agreement([], [])["map50"] == 1.0
    with pytest.raises(ValueError, match="2 reference images but 1"):
        detection_agreement([some, some], [some])


def test_per_image_empties_mix_with_matches():
    """An image where only the candidate detects counts as false positives, not as an error."""
    a, b = dets([(0, 0, 10, 10, 0.9, 1)]), dets([(50, 50, 90, 90, 0.8, 2)])
    r = detection_agreement([a, dets([])], [a, b])
    assert (r["matched"], r["precision"], r["recall"]) == (1, 0.5, 1.0)
