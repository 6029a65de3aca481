"""PQ / SQ / RQ (Eq. 25) on a case worked by hand with the panopticapi rules."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_pipe.evaluation.panoptic import (
    PanopticAccumulator,
    PanopticInputError,
    pq_image,
)


def _case():
    gt = np.zeros((10, 10), np.int64)       # row 0 void
    gt[1:3, 0:5] = 1                         # thing, category 1, 10 px
    gt[1:3, 5:10] = 3                        # crowd, category 1
    gt[3:10, :] = 2                          # stuff, category 2, 70 px
    gt_segs = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2},
               {"id": 3, "category_id": 1, "iscrowd": 1}]
    pred = np.zeros((10, 10), np.int64)
    pred[1:3, 0:4] = 11; pred[0, 0:2] = 11   # 8 px on the thing + 2 on void: IoU 8/10
    pred[3:10, 0:9] = 12                     # 63 of the 70 stuff px: IoU 0.9
    pred[1:3, 5:10] = 13                     # on the crowd of its category: ignored
    pred[0, 2:6] = 14; pred[3:10, 9] = 14    # unknown, 4 of 11 px on void: FP
    pred_segs = [{"id": 11, "category_id": 1}, {"id": 12, "category_id": 2},
                 {"id": 13, "category_id": 1}, {"id": 14, "category_id": 3}]
    return gt, gt_segs, pred, pred_segs


def test_hand_worked_case():
    acc = PanopticAccumulator(things={1}, stuff={2}, unknown=3)
    acc.add(*_case())
    s = acc.stats
    assert (s[1].tp, s[1].fp, s[1].fn) == (1, 0, 0) and s[1].iou == pytest.approx(0.8)
    assert (s[2].tp, s[2].fp, s[2].fn) == (1, 0, 0) and s[2].iou == pytest.approx(0.9)
    assert (s[3].tp, s[3].fp, s[3].fn) == (0, 1, 0)
    r = acc.result()
    assert r["things"]["pq"] == pytest.approx(0.8)
    assert r["stuff"]["pq"] == pytest.approx(0.9)
    assert r["unknown"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}
    assert r["all"]["pq"] == pytest.approx((0.8 + 0.9) / 3)
    assert r["all"]["rq"] == pytest.approx(2 / 3)
    assert r["known"]["sq"] == pytest.approx(0.85)


def test_iou_exactly_half_does_not_match():
    gt = np.zeros((1, 4), np.int64); gt[0, :2] = 1
    pred = np.zeros((1, 4), np.int64); pred[0, 1:3] = 5
    st = pq_image(gt, [{"id": 1, "category_id": 7}], pred, [{"id": 5, "category_id": 7}])
    assert (st[7].tp, st[7].fp, st[7].fn) == (0, 1, 1)


def test_segment_list_disagreeing_with_map():
    gt, gs, pred, ps = _case()
    with pytest.raises(PanopticInputError, match="14"):
        pq_image(gt, gs, pred, ps[:3])
