"""Open-IoU (Eq. 23-24) by hand, closed-set mIoU, 95 % TPR calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_pipe.evaluation.datasets import DatasetError
from m2a_pipe.evaluation.open_set import (
    OpenSetAccumulator,
    calibrate_threshold,
    threshold_at_tpr,
    weighted_average,
)


def test_open_iou_by_hand():
    gt = np.array([[0, 0, 1, 1, 2, 2, 255]])
    sem = np.array([[0, 1, 1, 1, 0, 1, 0]])
    anomaly = np.array([[0, 0, 0, 0.9, 0.9, 0.1, 0.9]])
    acc = OpenSetAccumulator(num_known=2, threshold=0.5)
    acc.add(gt, sem, anomaly)
    r = acc.result()
    # open prediction [0, 1, 1, 2, 2, 1]: class 0 TP 1 FN 1 -> 1/2; class 1 TP 1,
    # FP^OOD 2 (gt 0 and gt unknown predicted 1), FN^OOD 1 (predicted unknown) -> 1/4
    assert r.open_iou_by_class == pytest.approx([0.5, 0.25])
    assert r.open_miou == pytest.approx(0.375)
    # closed set on known ground truth: class 0 1/2, class 1 2/3
    assert r.iou_by_class == pytest.approx([0.5, 2 / 3])
    assert r.miou == pytest.approx((0.5 + 2 / 3) / 2)


def test_calibration_at_95_tpr():
    scores = np.arange(1, 101, dtype=np.float32)  # 100 anomalous pixels
    t = calibrate_threshold([scores[:50], scores[50:]])
    assert t == 6.0  # 95 of 100 scores are >= 6
    assert (scores >= t).mean() == pytest.approx(0.95)


def test_weighted_average():
    a = OpenSetAccumulator(1, 0.5)
    a.add(np.array([[0, 1]]), np.array([[0, 0]]), np.array([[0.0, 0.9]]))
    b = OpenSetAccumulator(1, 0.5)
    for _ in range(3):
        b.add(np.array([[0, 1]]), np.array([[0, 0]]), np.array([[0.0, 0.1]]))
    avg = weighted_average([a.result(), b.result()])
    assert avg["open_miou"] == pytest.approx((1.0 * 1 + 0.5 * 3) / 4)


def test_threshold_at_tpr():
    scores = np.arange(1, 101, dtype=np.float32)  # 1..100
    t = threshold_at_tpr(scores, 0.95)
    assert t == 6.0  # 95 of 100 scores are >= 6, only 94 are >= 7
    assert threshold_at_tpr(torch.from_numpy(scores[::-1].copy()), 0.95) == 6.0
    assert threshold_at_tpr(scores, 1.0) == 1.0
    rng = np.random.default_rng(0)
    s = rng.normal(size=1003)
    t = threshold_at_tpr(torch.tensor(s), 0.95)
    assert (s >= t).mean() >= 0.95 and (s > t).mean() < 0.95
    with_nan = np.array([np.nan, 1.0, 2.0])  # NaN ignored: n = 2
    assert threshold_at_tpr(with_nan, 0.5) == 2.0  # 1 of 2 scores >= 2
    assert threshold_at_tpr(with_nan, 0.51) == 1.0
    with pytest.raises(DatasetError, match="no anomalous pixels"):
        threshold_at_tpr(np.array([]), 0.95)
