"""Open-IoU (Eq. 23-24) by hand, closed-set mIoU, and the 95 % TPR threshold rules.

The ``reference`` values below are derived by hand from the rule of DenseHybrid's
``evaluate_osr.py`` (``OODCalibration.calculate_stats``): ``fpr, tpr, thr =
sklearn.metrics.roc_curve(labels, scores)`` over the known (0) and anomalous (1) calibration
pixels, default ``drop_intermediate=True``; the threshold is the first ``thr[i]`` with
``tpr[i] > 0.95``; a pixel is then unknown when ``score > threshold``. roc_curve's points are
the distinct scores, decreasing, with ``TPR(v) = #{anomalous >= v} / P``; it drops a point
whose step in equals its step out, i.e. whose (known, anomalous) counts at that exact score
equal those of the next lower score.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from m2a_pipe.evaluation.datasets import DatasetError
from m2a_pipe.evaluation.open_set import (
    OpenSetAccumulator,
    ReferenceCalibration,
    calibrate_threshold,
    is_unknown,
    open_set_labels,
    reference_threshold,
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


def test_comparison_follows_the_rule_at_ties():
    sem = np.array([[0, 1, 1]])
    anomaly = np.array([[0.25, 0.5, 0.75]], np.float32)
    assert open_set_labels(sem, anomaly, 0.5, 2).tolist() == [[0, 1, 2]]  # reference: 0.5 > 0.5 is false
    assert open_set_labels(sem, anomaly, 0.5, 2, "kth-score").tolist() == [[0, 2, 2]]
    # a Python float threshold compares in the scores' float32: 0.9 is float32(0.9) there
    assert not is_unknown(np.float32(0.9), 0.9) and is_unknown(np.float32(0.9), 0.9, "kth-score")
    gt = np.array([[0, 1, 2]])
    ref, kth = OpenSetAccumulator(2, 0.5), OpenSetAccumulator(2, 0.5, "kth-score")
    for acc in (ref, kth):
        acc.add(gt, sem, anomaly)
    # reference [0, 1, 2]: every pixel right; kth-score [0, 2, 2]: class 1 loses its pixel
    assert ref.result().open_iou_by_class == pytest.approx([1.0, 1.0])
    assert kth.result().open_iou_by_class == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="threshold rule"):
        OpenSetAccumulator(2, 0.5, "median")


def test_calibration_at_95_tpr():
    scores = np.arange(1, 101, dtype=np.float32)  # 100 anomalous pixels
    t = calibrate_threshold([scores[:50], scores[50:]], rule="kth-score")
    assert t == 6.0  # 95 of 100 scores are >= 6
    assert (scores >= t).mean() == pytest.approx(0.95)
    # reference, known pixels at 0.5, 1.5, ..., 99.5 between every two anomalous scores:
    # TPR(5) = 96/100 is the first > 0.95 (TPR(6) = 95/100 is not); the next lower score, 4.5,
    # is a known one, so the point at 5 is kept: t = 5, and 95 anomalous scores are > 5.
    # Same anomalous pixels as kth-score's 6, but the known pixel at 5.5 is unknown only here.
    known = np.arange(100, dtype=np.float32) + 0.5
    t = calibrate_threshold([scores[:50], scores[50:]], known_scores=[known[:30], known[30:]])
    assert t == 5.0
    assert (scores > t).sum() == 95 and is_unknown(known, t).sum() == 95  # 5.5 .. 99.5
    assert (known >= 6.0).sum() == 94
    with pytest.raises(ValueError, match="known pixels"):
        calibrate_threshold(scores)


def test_reference_all_anomalous_scores_tied():
    # 20 anomalous pixels all at 5, 3 known at 1. Points: 5 -> TPR 20/20 = 1 > 0.95 at the first
    # ROC point (always kept): t = 5, and no anomalous pixel is > 5 (calibration TPR 0).
    # kth-score: the 19th largest is 5, all 20 are >= 5.
    anomalous, known = np.full(20, 5.0, np.float32), np.ones(3, np.float32)
    assert reference_threshold(anomalous, known) == 5.0
    assert not is_unknown(anomalous, 5.0).any()
    assert threshold_at_tpr(anomalous) == 5.0 and is_unknown(anomalous, 5.0, "kth-score").all()


def test_reference_tie_on_the_tpr_boundary():
    # anomalous 20, 19, ..., 3 (one each) and two at 2 (P = 20); known at 2 and 0.5.
    # TPR(3) = 18/20 = 0.9, TPR(2) = 20/20 > 0.95 -> j* = 2; counts at 2 (1 known, 2 anomalous)
    # differ from those at 0.5 (1, 0): kept, t = 2. Unknown is > 2: 18 anomalous (TPR 0.9),
    # the known pixel at 2 stays known. kth-score: 19th largest = 2, and >= 2 takes all 20
    # anomalous pixels and the known one at 2.
    anomalous = np.r_[np.arange(3, 21), 2, 2].astype(np.float32)
    known = np.array([2.0, 0.5], np.float32)
    t = reference_threshold(anomalous, known)
    assert t == 2.0
    assert is_unknown(anomalous, t).sum() == 18 and is_unknown(known, t).sum() == 0
    assert threshold_at_tpr(anomalous) == 2.0
    assert is_unknown(anomalous, 2.0, "kth-score").sum() == 20 and is_unknown(known, 2.0, "kth-score").sum() == 1


def test_reference_drops_collinear_roc_points():
    # anomalous 1, 2, ..., 40 (one each), known at 0.5. TPR > 0.95 needs 39 of 40: j* = 2.
    # Counts at 2 and at 1 are both (0 known, 1 anomalous): roc_curve drops the point at 2
    # (the points 40 .. 1 lie on one vertical segment); at 1 the next score, 0.5, is known-only:
    # kept, t = 1 (TPR 1.0 on the returned curve). Without the drop it would be 2; kth-score
    # gives the 38th largest, 3.
    anomalous = np.arange(1, 41, dtype=np.float32)
    assert reference_threshold(anomalous, np.array([0.5], np.float32)) == 1.0
    assert threshold_at_tpr(anomalous) == 3.0
    # a known pixel tied at 2 makes the counts at 2 (1, 1) differ from those at 1 (0, 1): t = 2
    assert reference_threshold(anomalous, np.array([2.0, 0.5], np.float32)) == 2.0
    # a known pixel between 2 and 1 makes the point after 2 a known-only one: t = 2
    assert reference_threshold(anomalous, np.array([1.5], np.float32)) == 2.0
    # no known pixel below 1: 1 is the last ROC point, kept
    assert reference_threshold(anomalous, np.zeros(0, np.float32)) == 1.0


def test_reference_matches_scikit_learn_roc_curve():
    """The reference's own loop over scikit-learn's curve, on scores with many ties."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")

    def dense_hybrid(anomalous, known, rate):
        labels = np.r_[np.zeros(known.size), np.ones(anomalous.size)]
        _, tpr, thr = sklearn_metrics.roc_curve(labels, np.r_[known, anomalous])
        return next(float(k) for i, k in zip(tpr, thr) if i > rate)

    rng = np.random.default_rng(0)
    for _ in range(300):
        levels = int(rng.integers(1, 25))
        anomalous = (rng.integers(0, levels, int(rng.integers(1, 60))) / 7).astype(np.float32)
        known = ((rng.integers(0, levels, int(rng.integers(1, 60))) - 2) / 7).astype(np.float32)
        rate = float(rng.choice([0.95, 0.9, 0.5]))
        cal = ReferenceCalibration(anomalous, rate)
        for batch in np.array_split(known, 3):
            cal.add_known(batch)
        assert cal.threshold() == dense_hybrid(anomalous, known, rate)


def test_reference_calibration_rejects_bad_input():
    with pytest.raises(DatasetError, match="no anomalous pixels"):
        ReferenceCalibration(np.array([np.nan]), 0.95)
    with pytest.raises(ValueError, match="tpr"):
        ReferenceCalibration(np.ones(3), 1.0)  # TPR > 1 is never reached


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


def _item(tmp_path, stem, subset, gt, scores):
    from m2a_pipe.evaluation.report import OpenSetItem, open_set_lut

    folder = tmp_path / subset
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{stem}.npy", np.array(scores, np.float32))
    np.save(folder / f"{stem}-sem.npy", np.zeros_like(np.array(gt)))
    Image.fromarray(np.array(gt, np.uint8)).save(folder / f"{stem}.png")
    return OpenSetItem(stem, folder / f"{stem}.npy", folder / f"{stem}-sem.npy", folder / f"{stem}.png",
                       open_set_lut(1, 1), subset)


def test_subset_protocol_names_the_rule(tmp_path):
    from m2a_pipe.evaluation.report import evaluate_open_set

    # one known class (0), anomaly 1, everything predicted 0
    items = [_item(tmp_path, "a", "t5", [[0, 0, 1, 1]], [[0.25, 0.5, 0.5, 0.75]]),
             _item(tmp_path, "b", "t6", [[0, 0, 1, 1]], [[0.25, 0.25, 0.5, 0.5]])]
    ref = evaluate_open_set(items, 1)
    kth = evaluate_open_set(items, 1, rule="kth-score")
    # t5 calibrated on t6 (anomalous 0.5, 0.5; known 0.25, 0.25): reference, TPR 1 at the first
    # ROC point 0.5: t = 0.5, nothing anomalous is > 0.5 (calibration TPR 0); kth-score 0.5 (100 %).
    # t6 calibrated on t5 (anomalous 0.5, 0.75; known 0.25, 0.5): TPR(0.5) = 1: t = 0.5 (counts
    # (1, 1) there, (1, 0) at 0.25: kept); 0.75 alone is > 0.5 (50 %); kth-score 0.5 (100 %).
    assert ref["threshold"] == {"t5": 0.5, "t6": 0.5} == kth["threshold"]
    assert ref["subsets"]["t5"]["calibration_tpr"] == 0.0 and ref["subsets"]["t6"]["calibration_tpr"] == 50.0
    assert kth["subsets"]["t5"]["calibration_tpr"] == 100.0 == kth["subsets"]["t6"]["calibration_tpr"]
    # t5 at > 0.5: [0, 0, 0, K]: IoU 2/3; t6 at > 0.5: [0, 0, 0, 0]: 2/4. kth-score (>= 0.5):
    # t5 [0, K, K, K]: 1/2; t6 [0, 0, K, K]: 1. Averages weighted by one image each.
    assert ref["open_miou"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2, abs=1e-3)
    assert kth["open_miou"] == pytest.approx(75.0)
    assert ref["miou"] == kth["miou"] == 100.0
    assert (ref["threshold_rule"], ref["unknown_if"]) == ("reference", "score > threshold")
    assert (kth["threshold_rule"], kth["unknown_if"]) == ("kth-score", "score >= threshold")
    assert ref["threshold_source"] == "the other subsets" and ref["tpr"] == 0.95


def test_calibration_without_anomalous_pixels_names_the_folder(tmp_path):
    from m2a_pipe.evaluation.inputs import EvaluationInputError
    from m2a_pipe.evaluation.report import evaluate_open_set

    item = _item(tmp_path, "a", "cal", [[0, 0]], [[0.1, 0.2]])
    with pytest.raises(EvaluationInputError, match=r"cal: no anomalous pixels"):
        evaluate_open_set([item], 1, calibration=[item])
