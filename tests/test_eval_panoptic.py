"""PQ / SQ / RQ (Eq. 25) on cases worked by hand.

Every expected value below is derived by hand from the rules of cocodataset/panopticapi
``panopticapi/evaluation.py`` (``pq_compute_single_core`` for TP / FP / FN and IoU,
``PQStat.pq_average`` for the group means) and, for the paper's convention, of EOPSN's
``lib/evaluation.py`` (jd730/EOPSN), whose ``All`` leaves the unknown category out as the
paper's Table IV does; none comes from running this project's code. (Running panopticapi's
``pq_compute`` at commit 7bb4655 on the grids below, outside this suite, gives the same
per-class and All / Things / Stuff figures.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2a_pipe.evaluation.panoptic import (
    PanopticAccumulator,
    PanopticInputError,
    pq_image,
)

PERSON, ROAD, ANOMALY = 1, 2, 19

# Ground truth, one character a pixel: . void, A person (thing), C a crowd of persons,
# R road (stuff), U and V two anomalies (the unknown category, isthing 1).
GT = """
..........
AAAAACCCCC
AAAAACCCCC
RRRRRRRUUU
RRRRRRRUUU
RRRRRRRUUU
RRRRRRRUUU
RRRRRRRVVV
RRRRRRRVVV
RRRRRRRVVV
"""
GT_SEGMENTS = {"A": (1, PERSON, 0), "C": (2, PERSON, 1), "R": (3, ROAD, 0), "U": (4, ANOMALY, 0),
               "V": (5, ANOMALY, 0)}
# Prediction: a person, c person on the crowd, r road, s road, u f v unknown.
PRED = """
aassvvv...
aaaasccccc
aaaasccccc
rrrrrrfuuu
rrrrrrfuuu
rrrrrrfuuu
rrrrrrfuuu
rrrrrrfuuu
rrrrrrfv..
rrrrrrf...
"""
PRED_SEGMENTS = {"a": (11, PERSON), "c": (13, PERSON), "r": (12, ROAD), "s": (16, ROAD), "u": (14, ANOMALY),
                 "f": (15, ANOMALY), "v": (17, ANOMALY)}


def _grid(text: str, ids: dict[str, int]) -> np.ndarray:
    rows = text.strip().splitlines()
    return np.array([[ids.get(ch, 0) for ch in row] for row in rows], np.int64)


def _case():
    """(gt map, gt segments, pred map, pred segments) of the grids above, (10, 10) int64."""
    gt = _grid(GT, {ch: v[0] for ch, v in GT_SEGMENTS.items()})
    gt_segs = [{"id": i, "category_id": c, "iscrowd": crowd} for i, c, crowd in GT_SEGMENTS.values()]
    pred = _grid(PRED, {ch: v[0] for ch, v in PRED_SEGMENTS.items()})
    pred_segs = [{"id": i, "category_id": c} for i, c in PRED_SEGMENTS.values()]
    return gt, gt_segs, pred, pred_segs


# By hand, with panopticapi's rules:
# person: a = 8 px on A + 2 on void; IoU = 8 / (10 + 10 - 8 - 2) = 0.8 > 0.5: TP. c lies wholly
#   on the crowd C of its own category: crowd never matches, and 10/10 > 0.5 of it is crowd:
#   ignored. -> TP 1, FP 0, FN 0; PQ = SQ = 0.8, RQ = 1.
# road: r = 42 px inside R (49 px): IoU 42/49 = 6/7: TP. s = 2 px on void + 2 on A: matches
#   nothing (A is a person) and exactly half (2/4, not > 0.5) is void: FP.
#   -> TP 1, FP 1; PQ = (6/7) / 1.5 = 4/7, SQ = 6/7, RQ = 2/3.
# anomaly: u = all 12 px of U + 3 of V (15 px): IoU with U = 12 / (15 + 12 - 12) = 0.8: TP;
#   with V 3 / 21. f = 7 px on R: a different category, 0 on void: FP. v = 3 px on void +
#   1 on V: IoU 1 / (4 + 9 - 1 - 3) = 1/9, and 3/4 > 0.5 void: ignored. V unmatched: FN.
#   -> TP 1, FP 1, FN 1; PQ = 0.8 / 2 = 0.4, SQ = 0.8, RQ = 0.5.
EXPECTED = {PERSON: (1, 0, 0, 0.8, 0.8, 1.0), ROAD: (1, 1, 0, 4 / 7, 6 / 7, 2 / 3),
            ANOMALY: (1, 1, 1, 0.4, 0.8, 0.5)}


def _accumulate(unknown_isthing=True) -> PanopticAccumulator:
    acc = PanopticAccumulator(things={PERSON}, stuff={ROAD}, unknown=ANOMALY, unknown_isthing=unknown_isthing)
    acc.add(*_case())
    return acc


def test_per_category_by_hand():
    per = _accumulate().per_category()
    assert set(per) == {PERSON, ROAD, ANOMALY}
    for cat, (tp, fp, fn, pq, sq, rq) in EXPECTED.items():
        got = per[cat]
        assert (got["tp"], got["fp"], got["fn"]) == (tp, fp, fn), cat
        assert (got["pq"], got["sq"], got["rq"]) == pytest.approx((pq, sq, rq)), cat


def test_conventions_disagree_on_an_unknown_thing():
    r = _accumulate().result()
    # panopticapi: the unknown category (isthing 1) is one more thing, and in All.
    api = r["panopticapi"]
    assert api["all"]["pq"] == pytest.approx((0.8 + 4 / 7 + 0.4) / 3)      # 0.5905
    assert api["all"]["sq"] == pytest.approx((0.8 + 6 / 7 + 0.8) / 3)
    assert api["all"]["rq"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    assert api["things"] == pytest.approx({"pq": 0.6, "sq": 0.8, "rq": 0.75, "n": 2})
    assert api["stuff"] == pytest.approx({"pq": 4 / 7, "sq": 6 / 7, "rq": 2 / 3, "n": 1})
    assert "unknown" not in api
    # the paper (Table IV): All and Things are the known categories; PQ_unk apart.
    paper = r["paper"]
    assert paper["all"] == pytest.approx({"pq": (0.8 + 4 / 7) / 2, "sq": (0.8 + 6 / 7) / 2,
                                          "rq": (1 + 2 / 3) / 2, "n": 2})   # PQ 0.6857
    assert paper["things"] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0, "n": 1})
    assert paper["stuff"] == api["stuff"]
    assert paper["unknown"] == pytest.approx({"pq": 0.4, "sq": 0.8, "rq": 0.5, "n": 1})


def test_unknown_stuff_category_goes_to_panopticapi_stuff():
    r = _accumulate(unknown_isthing=False).result()
    assert r["panopticapi"]["things"]["pq"] == pytest.approx(0.8)
    assert r["panopticapi"]["stuff"]["pq"] == pytest.approx((4 / 7 + 0.4) / 2)
    assert r["paper"]["things"]["pq"] == pytest.approx(0.8)


def test_closed_set_has_no_unknown_group():
    acc = PanopticAccumulator(things={PERSON, ANOMALY}, stuff={ROAD})
    acc.add(*_case())
    r = acc.result()
    assert "unknown" not in r["paper"]
    assert r["paper"]["all"] == r["panopticapi"]["all"]
    assert r["paper"]["things"]["pq"] == pytest.approx(0.6)


def test_category_without_segments_is_left_out_of_means():
    acc = PanopticAccumulator(things={PERSON, 7}, stuff={ROAD}, unknown=ANOMALY)
    acc.add(*_case())
    assert acc.per_category()[7] == {"pq": None, "sq": None, "rq": None, "tp": 0, "fp": 0, "fn": 0,
                                     "iou_sum": 0.0}
    assert acc.result()["paper"]["things"]["n"] == 1


def test_iou_exactly_half_does_not_match():
    gt = np.zeros((1, 4), np.int64); gt[0, :2] = 1
    pred = np.zeros((1, 4), np.int64); pred[0, 1:3] = 5
    st = pq_image(gt, [{"id": 1, "category_id": 7}], pred, [{"id": 5, "category_id": 7}])
    # I = 1, union = 2 + 2 - 1 = 3: IoU 1/3; one FN and one FP
    assert (st[7].tp, st[7].fp, st[7].fn) == (0, 1, 1)
    gt[0, 2] = 1  # gt = 3 px, pred 2 px inside: IoU 2/3 > 0.5
    st = pq_image(gt, [{"id": 1, "category_id": 7}], pred, [{"id": 5, "category_id": 7}])
    assert (st[7].tp, st[7].fp, st[7].fn) == (1, 0, 0) and st[7].iou == pytest.approx(2 / 3)


def test_listed_ground_truth_absent_from_the_map_is_a_false_negative():
    # panopticapi counts FN over the JSON's segments_info, whatever the PNG holds
    gt, gs, pred, ps = _case()
    st = pq_image(gt, gs + [{"id": 99, "category_id": PERSON, "iscrowd": 0}], pred, ps)
    assert (st[PERSON].tp, st[PERSON].fp, st[PERSON].fn) == (1, 0, 1)


def test_segment_list_disagreeing_with_map():
    gt, gs, pred, ps = _case()
    with pytest.raises(PanopticInputError, match="17"):
        pq_image(gt, gs, pred, [s for s in ps if s["id"] != 17])
    with pytest.raises(PanopticInputError, match="category 19"):
        pq_image(gt, gs, pred, ps, categories={PERSON, ROAD})


class _FakePredictor:
    """K = 2 known classes; its panoptic output: one segment of class 1, one of class K."""

    class config:
        num_classes = 2

    def __call__(self, image):
        return image

    def panoptic(self, result):
        ids = np.zeros(result.shape[:2], np.int32)
        ids[0] = 1
        ids[1] = 2
        return ids, [{"id": 1, "category_id": 1, "isthing": False}, {"id": 2, "category_id": 2, "isthing": True}]


def test_model_unknown_class_k_becomes_the_ground_truth_unknown_id(tmp_path):
    from PIL import Image

    from m2a_pipe.evaluation import datasets as ds
    from m2a_pipe.evaluation import predict
    from m2a_pipe.evaluation.inputs import EvaluationInputError

    cats = [{"id": 7, "name": "road", "isthing": 0}, {"id": 19, "name": "anomaly", "isthing": 1},
            {"id": 8, "name": "sky", "isthing": 0}]
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "images" / "x.png")
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png"}], "categories": cats,
        "annotations": [{"file_name": "x.png", "image_id": 1, "segments_info": []}]}))
    gt = ds.read_coco_panoptic(tmp_path / "gt.json", tmp_path, tmp_path / "images")
    assert gt.class_ids == (7, 8) and gt.unknown == 19
    json_path, png_dir = predict.write_panoptic(_FakePredictor(), gt, tmp_path / "out")
    written = json.loads(json_path.read_text())
    # class 1 -> the second category besides the unknown one (sky, 8); class K = 2 -> 19
    assert [s["category_id"] for s in written["annotations"][0]["segments_info"]] == [8, 19]
    assert written["unknown_category_id"] == 19 and written["class_category_ids"] == [7, 8]
    closed = ds.read_coco_panoptic(tmp_path / "gt.json", tmp_path, tmp_path / "images", unknown_id=None)
    with pytest.raises(EvaluationInputError, match="written with class_category_ids"):
        predict.check_panoptic_ids(json_path, closed)
    with pytest.raises(EvaluationInputError, match="K = 2"):
        predict.write_panoptic(_FakePredictor(), closed, tmp_path / "out2")
