"""Component metrics (Eq. 20-22) on hand-worked cases, SMIYC benchmark rules."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from m2a_pipe.evaluation.components import (
    PROFILES,
    TAUS,
    ComponentAccumulator,
    ComponentProfile,
    binarise,
    image_components,
)
from m2a_pipe.evaluation.inputs import EvaluationInputError, ScorePair
from m2a_pipe.evaluation.report import evaluate_anomaly

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


# --------------------------------------------------------------------------------------
# Where the rules disagree. Expected values are derived by hand from the reference code,
# SegmentMeIfYouCan/road-anomaly-benchmark, metrics/instance_segmentation.py:
#   default_instancer: prediction = anomaly_p > thresh_p; components of size < thresh_segsize
#   dropped; ground-truth components of size < thresh_instsize made void;
#   segment_metrics: TP = sIoU >= t, FN = sIoU < t, FP = precision < t for
#   t in np.linspace(0.25, 0.75, 11); thresh_p = best_f1_threshold of the binned curve
#   (metrics/pixel_classification*.py: the lower edge of the best-F1 bin).
# --------------------------------------------------------------------------------------


def test_taus_are_the_benchmarks_linspace():
    # the reference's taus are np.linspace(0.25, 0.75, 11); its 8th is 0.6000000000000001
    assert TAUS == tuple(np.linspace(0.25, 0.75, 11).tolist())
    assert TAUS[7] > 0.6 and f"{TAUS[7]:.2f}" == "0.60"


def test_siou_and_ppv_exactly_three_fifths_at_tau_060():
    lab = np.zeros((3, 8), np.uint8)
    lab[0, 0:3] = 1           # gt of 3 px
    sc = np.zeros((3, 8))
    sc[0, 0:5] = 1            # prediction of 5 px over it
    acc = ComponentAccumulator(0.5, ANY)
    c = acc.add(sc, lab)
    # sIoU = 3 / (3 + 5 - 3) = 3/5 and PPV = 3/5, the double 0.6
    assert c.siou.tolist() == [0.6] and c.ppv.tolist() == [0.6]
    r = acc.result()
    # reference: 0.6 >= 0.55 -> TP, 0.6 < 0.55 false -> no FP; at tau 0.6000000000000001:
    # 0.6 >= tau false -> FN, 0.6 < tau -> FP.
    assert (r.tp[TAUS[6]], r.fn[TAUS[6]], r.fp[TAUS[6]]) == (1, 0, 0)
    assert (r.tp[TAUS[7]], r.fn[TAUS[7]], r.fp[TAUS[7]]) == (0, 1, 1)
    # F1 = 1 at the 7 taus 0.25..0.55, 0 at the 4 taus 0.60..0.75 -> F1* = 7/11
    assert r.f1_star == pytest.approx(7 / 11)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_components_exactly_at_the_profile_minimum(name):
    prof = PROFILES[name]
    g, p = prof.min_gt_size, prof.min_pred_size
    lab = np.zeros((8, p + 20), np.uint8)
    sc = np.zeros(lab.shape)
    lab[1, :g] = 1            # gt of exactly min_gt_size px: kept (size < min is the void rule)
    sc[1, :p] = 1             # prediction of exactly min_pred_size px over it: kept
    lab[5, :g - 1] = 1        # gt one pixel short: void
    sc[5, :p - 1] = 1         # prediction one pixel short: removed (no FP)
    c = image_components(sc, lab, 0.5, prof)
    # one gt and one prediction count: sIoU = g / (g + p - g) = g / p, PPV = g / p (0.2 for both
    # profiles: 100 / 500 and 10 / 50)
    assert c.siou.tolist() == [pytest.approx(0.2)] and c.ppv.tolist() == [pytest.approx(0.2)]


def test_binarise_at_the_threshold_value():
    s = np.array([[0.5, np.nextafter(np.float32(0.5), np.float32(1))], [0.25, 1.0]], np.float32)
    assert binarise(s, 0.5, ">").tolist() == [[False, True], [False, True]]
    assert binarise(s, 0.5, ">=").tolist() == [[True, True], [False, True]]
    # the threshold is not rounded to float32: a float64 just above 0.5 excludes the 0.5 pixel
    assert binarise(s, 0.5 + 1e-12, ">=").tolist() == [[False, True], [False, True]]
    with pytest.raises(ValueError):
        binarise(s, 0.5, "<")


A = float(np.float32(128 / 255))  # a uint8 level, as scores.h5 maps are stored


def _tie_pairs(tmp_path):
    """One 80x80 image (obstacle-track sizes): a 32x32 anomaly whose upper half scores 1.0 and
    lower half A; a 16x16 normal block scoring A; the rest 0."""
    lab = np.zeros((80, 80), np.uint8)
    lab[16:48, 16:48] = 1
    sc = np.zeros((80, 80), np.float32)
    sc[16:32, 16:48] = 1.0
    sc[32:48, 16:48] = A
    sc[64:80, 64:80] = A
    Image.fromarray(lab).save(tmp_path / "a.png")
    return [ScorePair("a", lambda: sc, tmp_path / "a.png", source="a")]


def test_uint8_ties_exact_rule_takes_the_pixels_at_the_threshold(tmp_path):
    r = evaluate_anomaly(_tie_pairs(tmp_path), profile="obstacle-track", ap_convention="exact")
    # exact curve (score >= t): t = 1: TP 512, FP 0 -> F1 1024/1536 = 2/3; t = A: TP 1024, FP 256
    # -> F1 2048/2304 = 8/9; t = 0: F1 2048/7168. Best t = A; score >= A predicts the anomaly
    # (sIoU 1) and the normal block (PPV 0): TP 1, FN 0, FP 1 at every tau -> F1* = 2/3.
    assert r["component_threshold"] == A
    assert r["component_threshold_rule"].startswith("score >= t")
    assert (r["siou"], r["ppv"], r["f1_star"]) == (100.0, 50.0, pytest.approx(100 * 2 / 3, abs=1e-4))
    assert (r["n_gt_components"], r["n_pred_components"]) == (1, 2)


def test_uint8_ties_smiyc_rule_is_the_benchmarks(tmp_path):
    r = evaluate_anomaly(_tie_pairs(tmp_path), profile="obstacle-track", ap_convention="smiyc")
    # reference bins (on float16 scores; A -> float16(A), still one level): edges {0, 1} +
    # quantiles = {0, A, 1}; lower edges A (512 x 1.0 + 512 x A
    # positives, 256 x A negatives) and 0 -> best F1 at the lower edge A = thresh_p. The
    # benchmark predicts anomaly_p > A: only the upper half (512 px). sIoU = 512/1024 = 0.5
    # (TP for tau <= 0.5, FN above), PPV = 1 (no FP) -> F1 = 1 at 6 taus, 0 at 5 -> F1* = 6/11.
    assert r["component_threshold"] == float(np.float16(A))  # the benchmark's float16 map
    assert r["component_threshold_rule"].startswith("score > t")
    assert (r["siou"], r["ppv"], r["f1_star"]) == (50.0, 100.0, pytest.approx(100 * 6 / 11, abs=1e-4))
    assert (r["n_gt_components"], r["n_pred_components"]) == (1, 1)


@pytest.mark.parametrize("ap,f1_star", [("exact", 2 / 3), ("smiyc", 6 / 11)])
def test_given_threshold_uses_the_rule_of_the_mode(tmp_path, ap, f1_star):
    r = evaluate_anomaly(_tie_pairs(tmp_path), profile="obstacle-track", ap_convention=ap, threshold=A)
    # the same values as the best-F1 runs above: exact takes score >= A, smiyc score > A
    assert r["component_threshold_source"] == "given" and "given" in r["component_threshold_rule"]
    assert r["f1_star"] == pytest.approx(100 * f1_star, abs=1e-4)


def test_smiyc_comparison_is_in_float16():
    # numpy 1.23 (the benchmark's pin) compares a float16 map with a float64 scalar in float16:
    # anomaly_p > thresh_p is float16(score) > float16(t). t = 0.5004 lies between the float16
    # values 0.5 and 0.50048828125 (spacing 2**-11) and rounds to the upper one, so a pixel of
    # 0.50048828125 is not predicted there, while float64 0.50048828125 > 0.5004 is true.
    s = np.array([[0.5, 0.50048828125, 0.5009765625]], np.float32)
    assert binarise(s, 0.5004, "float16 >").tolist() == [[False, False, True]]
    assert binarise(s, 0.5004, ">").tolist() == [[False, True, True]]


def test_smiyc_refuses_scores_beyond_float16(tmp_path):
    lab = np.zeros((4, 4), np.uint8)
    lab[1, 1] = 1
    Image.fromarray(lab).save(tmp_path / "b.png")
    sc = np.full((4, 4), 1e5, np.float32)
    pairs = [ScorePair("b", lambda: sc, tmp_path / "b.png", source="big.npy")]
    with pytest.raises(EvaluationInputError, match=r"^big\.npy: scores beyond the float16 range"):
        evaluate_anomaly(pairs, ap_convention="smiyc")
    assert evaluate_anomaly(pairs, ap_convention="exact")["n_images"] == 1
