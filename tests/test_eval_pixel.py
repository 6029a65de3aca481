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


@pytest.mark.parametrize("max_exact", [10**9, 0])
def test_exact_best_f1_point_counts_the_pixels_at_least_t(max_exact):
    # uint8-like scores: many pixels equal the best-F1 threshold. The curve's point at t counts
    # score >= t (scikit-learn's precision_recall_curve rule; in the histogram every float32 of
    # a bin is >= its lowest value), so that comparison -- the component rule of the exact
    # mode -- selects exactly the counted pixels; > t does not.
    scores, labels = _dataset(5, rounding=None)
    scores = (np.round(scores * 255) / 255).astype(np.float32)
    acc = PixelAccumulator("exact", max_exact_pixels=max_exact)
    for s, y in zip(scores, labels):
        acc.add(s, y)
    m = acc.result()
    valid = labels != 255
    s, pos = scores[valid].astype(np.float64), labels[valid] == 1
    t = m.best_f1_threshold
    sel = s >= t
    tp, fp = int((sel & pos).sum()), int((sel & ~pos).sum())
    assert m.best_f1 == pytest.approx(2 * tp / (tp + fp + pos.sum()), abs=1e-12)
    if max_exact:  # exact: t is a score value shared by many pixels
        assert np.count_nonzero(s == t) > 0
        strict = s > t
        assert 2 * (strict & pos).sum() / (strict.sum() + pos.sum()) < m.best_f1
    else:  # histogram: t is the lowest float32 of a bin, below the bin's scores
        assert m.method == "histogram" and np.count_nonzero(s == t) == 0


def test_smiyc_best_f1_threshold_is_the_lower_bin_edge():
    # the tiny hand case above: points at lower edges .8 .6 .2 0 are (TP, FP) = (1, 1) (2, 1)
    # (2, 2) (2, 2), F1 = 2TP / (2TP + FP + FN) = 2/4, 4/5, 4/6, 4/6 -> best 0.8 at the lower
    # edge of the bin [0.6, 0.8) (the benchmark's best_f1_threshold; its component rule
    # score > t then leaves out the 0.6 pixel that the point counted). The benchmark stores
    # float16 maps, so the edge is float16(0.6) = 0.60009765625.
    s = np.array([[0.2, 0.6, 0.8, 1.0]], dtype=np.float32)
    y = np.array([[0, 1, 0, 1]], dtype=np.uint8)
    acc = PixelAccumulator("smiyc")
    acc.add(s, y)
    m = acc.result()
    assert m.best_f1 == pytest.approx(0.8)
    assert m.best_f1_threshold == 0.60009765625


def test_smiyc_sees_the_scores_as_float16():
    # the benchmark writes every map as float16 (evaluation.py save_output): float32 scores that
    # round to the same float16 value are one value there. 0.30001 and 0.30003 are both
    # float16 0.30004882812 (spacing 2**-12 near 0.3): a tie, so the positive and the
    # negative enter the curve together -- one point (TP 1, FP 1) where float32 has two.
    s = np.array([[0.30003, 0.30001, 0.1, 0.9]], dtype=np.float32)
    y = np.array([[1, 0, 0, 1]], dtype=np.uint8)
    a, b = PixelAccumulator("smiyc"), PixelAccumulator("smiyc")
    a.add(s, y)
    b.add(s.astype(np.float16).astype(np.float32), y)
    ma, mb = a.result(), b.result()
    assert np.array_equal(ma.curve.thresholds, mb.curve.thresholds) and ma.auprc == mb.auprc
    # lower edges 0.9 (TP 1), float16(0.30003) (TP 2, FP 1), 0.1 (FP 2), 0: the tie is one bin
    assert ma.curve.tp.tolist() == [1, 2, 2, 2] and ma.curve.fp.tolist() == [0, 1, 2, 2]


def test_smiyc_orders_tied_edges_as_the_benchmark():
    # reference (aggregate_dynamic_bins): thresholds = concatenate(per image, lower edges
    # highest first); order = np.argsort(thresholds)[::-1] (numpy's default sort, not stable);
    # TP / FP = cumsum in that order, every point kept. uint8-like maps give the same edge
    # values in every image, so the order among ties shapes the intermediate points.
    rng = np.random.default_rng(3)
    imgs = []
    for _ in range(3):
        y = (rng.random((30, 40)) < 0.2).astype(np.uint8)
        s = (np.round(np.clip(rng.normal(0.4, 0.2, y.shape) + 0.3 * y, 0, 1) * 20) / 20).astype(np.float32)
        imgs.append((s, y))
    acc = PixelAccumulator("smiyc")
    thr, pos, neg = [], [], []
    for s, y in imgs:
        acc.add(s, y)
        s16, p = s.ravel().astype(np.float16), y.ravel() == 1
        edges = np.unique(np.concatenate([[0.0, 1.0]] + [np.quantile(s16[m], np.linspace(0, 1, min(384, m.sum())))
                                                        for m in (p, ~p)]))
        thr.append(edges[-2::-1])
        pos.append(np.histogram(s16[p], bins=edges)[0][::-1])
        neg.append(np.histogram(s16[~p], bins=edges)[0][::-1])
    thr, pos, neg = np.concatenate(thr), np.concatenate(pos), np.concatenate(neg)
    order = np.argsort(thr)[::-1]
    c = acc.curve()[0]
    assert np.array_equal(c.thresholds, thr[order])
    assert np.array_equal(c.tp, np.cumsum(pos[order])) and np.array_equal(c.fp, np.cumsum(neg[order]))
