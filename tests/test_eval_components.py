"""Component metrics (Eq. 20-22) on hand-worked cases, SMIYC benchmark rules."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_pipe.evaluation.components import (
    TAUS,
    ComponentAccumulator,
    ComponentProfile,
    image_components,
)

ANY = ComponentProfile("test", min_pred_size=1, min_gt_size=1)


def test_one_prediction_over_two_components_adjustment():
    lab = np.zeros((6, 10), np.uint8)
    lab[1:3, 1:3] = 1  # gt A, 4 px
    lab[1:3, 4:6] = 1  # gt B, 4 px (column 3 separates them)
    sc = np.zeros((6, 10))
    sc[1:3, 1:6] = 1  # one prediction of 10 px covering both
    c = image_components(sc, lab, 0.5, ANY)
    # sIoU(A) = 4 / (4 + 10 - 4 - 4 [the part of the prediction on B]) = 2/3
    np.testing.assert_allclose(c.siou, [2 / 3, 2 / 3])
    np.testing.assert_allclose(c.ppv, [8 / 10])


def test_diagonally_touching_pixels_are_one_component():
    lab = np.zeros((5, 5), np.uint8)
    lab[1, 1] = lab[2, 2] = 1
    sc = np.zeros((5, 5))
    sc[1, 1] = 1
    c = image_components(sc, lab, 0.5, ANY)
    assert len(c.siou) == 1 and c.siou[0] == pytest.approx(0.5)
    assert c.ppv[0] == pytest.approx(1.0)


def test_void_overlap_is_not_counted():
    lab = np.zeros((4, 8), np.uint8)
    lab[1:3, 1:3] = 1
    lab[1:3, 3:5] = 255
    sc = np.zeros((4, 8))
    sc[1:3, 1:5] = 1  # half on the anomaly, half on void
    c = image_components(sc, lab, 0.5, ANY)
    assert c.siou.tolist() == [1.0] and c.ppv.tolist() == [1.0]


def test_tiny_components_dropped_or_voided():
    prof = ComponentProfile("p", min_pred_size=3, min_gt_size=3)
    lab = np.zeros((6, 8), np.uint8)
    lab[1, 1:3] = 1          # gt of 2 px -> void
    lab[3:5, 4:6] = 1        # gt of 4 px
    sc = np.zeros((6, 8))
    sc[1, 1:3] = 1           # prediction on the voided gt: ignored
    sc[5, 0:2] = 1           # prediction of 2 px: removed, not a FP
    c = image_components(sc, lab, 0.5, prof)
    assert c.siou.tolist() == [0.0]  # the 4 px component is missed
    assert c.ppv.size == 0


def test_threshold_is_strict_and_image_without_anomalies():
    acc = ComponentAccumulator(0.5, ANY)
    lab = np.zeros((4, 4), np.uint8)
    sc = np.zeros((4, 4))
    sc[0:2, 0:2] = 0.9
    sc[3, 3] = 0.5                            # == threshold: not predicted
    c = acc.add(sc, lab)                      # image without anomalies: one FP
    assert c.siou.size == 0 and c.ppv.tolist() == [0.0]
    lab2 = np.zeros((4, 4), np.uint8)
    lab2[1:3, 1:3] = 1
    acc.add(np.where(lab2 == 1, 1.0, 0.0), lab2)  # perfect match: TP
    r = acc.result()
    for tau in TAUS:
        assert (r.tp[tau], r.fn[tau], r.fp[tau]) == (1, 0, 1)
        assert r.f1_by_tau[tau] == pytest.approx(2 / 3)
    assert r.f1_star == pytest.approx(2 / 3)
    assert r.siou == 1.0 and r.ppv == pytest.approx(0.5)


def test_tie_rules_at_tau():
    # sIoU exactly 0.5 is a TP at tau 0.5; PPV exactly 0.5 is not a FP at 0.5 but is at 0.55
    lab = np.zeros((2, 8), np.uint8)
    lab[0, 0:4] = 1
    sc = np.zeros((2, 8))
    sc[0, 2:6] = 1
    acc = ComponentAccumulator(0.5, ANY)
    c = acc.add(sc, lab)
    assert c.siou[0] == pytest.approx(2 / 6)
    lab[0, 0:4] = 0
    lab[0, 2:4] = 1
    sc[:] = 0
    sc[0, 2:6] = 1
    acc = ComponentAccumulator(0.5, ANY)
    c = acc.add(sc, lab)
    assert c.siou[0] == pytest.approx(0.5) and c.ppv[0] == pytest.approx(0.5)
    r = acc.result()
    assert r.tp[0.5] == 1 and r.fn[0.55] == 1
    assert r.fp[0.5] == 0 and r.fp[0.55] == 1
