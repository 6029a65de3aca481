"""Pixel metrics (Eq. 16-19) against scikit-learn on pooled pixels; histogram vs exact."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_pipe.evaluation.pixel import PixelAccumulator, float_keys, key_lower_value

sk = pytest.importorskip("sklearn.metrics")


def _dataset(seed: int, n: int = 4, shape=(48, 64), rounding: int | None = 3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, *shape)) < 0.08).astype(np.uint8)
    labels[:, :3] = 255
    labels[1] = np.where(labels[1] == 1, 0, labels[1])  # an image without anomalies
    scores = np.clip(rng.normal(0.3, 0.2, labels.shape) + 0.4 * (labels == 1), 0, 1).astype(np.float32)
    if rounding is not None:
        scores = np.round(scores, rounding).astype(np.float32)  # ties across images
    return scores, labels


def _sklearn(scores, labels):
    valid = labels != 255
    y, s = (labels[valid] == 1).astype(int), scores[valid].astype(np.float64)
    fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    return sk.average_precision_score(y, s), fpr[np.searchsorted(tpr, 0.95)], sk.roc_auc_score(y, s)


@pytest.mark.parametrize("seed,rounding", [(0, 3), (1, None), (2, 1)])
@pytest.mark.parametrize("max_exact", [10**9, 0])
def test_matches_sklearn(seed, rounding, max_exact):
    scores, labels = _dataset(seed, rounding=rounding)
    acc = PixelAccumulator("exact", max_exact_pixels=max_exact)
    for s, y in zip(scores, labels):
        acc.add(s, y)
    m = acc.result()
    ap, fpr95, auroc = _sklearn(scores, labels)
    assert m.method == ("exact" if max_exact else "histogram")
    # rounded scores are float32 values with few mantissa bits: the histogram is exact for them
    tol = 1e-12 if (max_exact or rounding is not None) else 1e-4  # < 0.01 point
    assert m.auprc == pytest.approx(ap, abs=tol)
    assert m.auroc == pytest.approx(auroc, abs=tol)
    assert m.fpr95 == pytest.approx(fpr95, abs=max(tol, 1e-3))
    assert m.n_pos + m.n_neg == int((labels != 255).sum())
    assert acc.n_images == len(scores)


def test_switches_to_histogram_midway():
    scores, labels = _dataset(3)
    acc = PixelAccumulator("exact", max_exact_pixels=2 * 48 * 64)
    for s, y in zip(scores, labels):
        acc.add(s, y)
    m = acc.result()
    assert m.method == "histogram"
    assert m.auprc == pytest.approx(_sklearn(scores, labels)[0], abs=1e-12)


def test_histogram_close_to_exact():
    """Measured: 4 M float32 pixels with Eq.-5-like scores piled up near 1 -- the fine histogram
    differs from exact by < 0.002 points (AuPRC, FPR95, AUROC); the allowance is 0.1 point."""
    rng = np.random.default_rng(7)
    n = 4_000_000
    y = (rng.random(n) < 0.02).astype(np.uint8)
    s = np.where(y == 1, 1 - rng.beta(1, 30, n), rng.beta(1, 8, n)).astype(np.float32)
    s = np.where(rng.random(n) < 0.3, 1 - rng.random(n).astype(np.float32) * 1e-3, s).astype(np.float32)
    exact, hist = PixelAccumulator("exact"), PixelAccumulator("exact", max_exact_pixels=0)
    for a in (exact, hist):
        a.add(s.reshape(2000, 2000), y.reshape(2000, 2000))
    e, h = exact.result(), hist.result()
    for key in ("auprc", "fpr95", "auroc"):
        assert abs(getattr(e, key) - getattr(h, key)) * 100 < 0.002, key


def test_smiyc_convention_close_to_exact_and_labelled():
    scores, labels = _dataset(4, n=6, rounding=None)
    exact, smiyc = PixelAccumulator("exact"), PixelAccumulator("smiyc")
    for s, y in zip(scores, labels):
        exact.add(s, y)
        smiyc.add(s, y)
    e, m = exact.result(), smiyc.result()
    assert m.ap_convention == "smiyc" and e.ap_convention == "exact"
    assert abs(e.auprc - m.auprc) < 0.02 and abs(e.auroc - m.auroc) < 0.01
    assert m.n_pos == e.n_pos and m.n_neg == e.n_neg


def test_smiyc_tiny_hand_case():
    # one image, 4 pixels: bins are the distinct values (edges 0, .2, .6, .8, 1 + quantiles)
    s = np.array([[0.2, 0.6, 0.8, 1.0]], dtype=np.float32)
    y = np.array([[0, 1, 0, 1]], dtype=np.uint8)
    acc = PixelAccumulator("smiyc")
    acc.add(s, y)
    m = acc.result()
    # thresholds (lower edges) .8 .6 .2 0 : points (tp, fp) = (1,1) (2,1) (2,2) (2,2);
    # the top bin [0.8, 1] holds 0.8 (neg) and 1.0 (pos)
    # precision .5, 2/3, .5, .5 ; recall .5, 1, 1, 1 -> trapz = (.5 + 2/3) / 2 * .5
    assert m.auprc == pytest.approx((0.5 + 2 / 3) / 4)
    assert m.fpr95 == pytest.approx(0.5)


def test_float_keys_order_preserving():
    x = np.sort(np.random.default_rng(0).normal(0, 100, 10_000).astype(np.float32))
    x = np.concatenate([[-np.inf], x, [np.inf]]).astype(np.float32)
    k = float_keys(x)
    assert np.all(np.diff(k) >= 0)
    assert np.all(key_lower_value(k) <= x)
