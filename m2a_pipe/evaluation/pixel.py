"""Pixel-level anomaly metrics, streamed over a dataset (Sec. 7.2, Eq. 16-19).

All pixels whose label is not void (255) are pooled over the dataset; label 1 is the positive
(anomalous) class, higher scores mean more anomalous. Images are added one at a time to a
:class:`PixelAccumulator`; memory does not grow with the number of images beyond a bound.

Two AP conventions (``ap_convention``):

``"exact"`` -- as scikit-learn computes it on the pooled pixels:
    every distinct score is a threshold ``t`` (predict anomalous where ``score >= t``);
    AuPRC = ``sum_n (R_n - R_{n-1}) P_n`` (Eq. 18 with Eq. 16-17, ``R_0 = 0``, no
    interpolation: ``average_precision_score``); AUROC = trapezoidal area under
    ``(FPR, TPR)`` starting at ``(0, 0)`` (``roc_auc_score``). The pooled scores are buffered
    while they fit in ``max_exact_pixels``; past that the buffer is folded into a *fine
    histogram* and the run continues there (``method`` in the result says which). The
    histogram keys each float32 score by the top ``HIST_BITS = 22`` bits of its
    order-preserving bit pattern (sign, exponent, 13 mantissa bits: a relative bin width of
    2**-13 at any magnitude, no range to choose, 64 MiB of counts). Scores that are float16
    values fall one value per bin, so for them the histogram *is* exact. For continuous
    float32 scores the measured difference from exact (tests/test_eval_pixel.py,
    ``test_histogram_close_to_exact``: 4 M pixels, 30 % of the scores piled up within 1e-3 of 1)
    was 7e-5 points of AuPRC, 0 of FPR95 and 1e-4 of AUROC (the test asserts < 0.002 points;
    0.1 point is allowed).

``"smiyc"`` -- as the SegmentMeIfYouCan benchmark code computes it
    (SegmentMeIfYouCan/road-anomaly-benchmark, ``metrics/pixel_classification.py``
    ``binary_confusion_matrix`` / ``aggregate_dynamic_bins`` and
    ``metrics/pixel_classification_curves.py`` ``curves_from_cmats``, as they were from 2021-10
    to 2023-08-02, e.g. commit 0555238 with its pinned numpy 1.23.3):
    the scores are rounded to float16, as the benchmark stores them (``evaluation.py``
    ``save_output``); each image's scores are binned at edges ``{0, 1}`` + 384 quantiles of its
    anomalous scores + 384 quantiles of its normal scores (768 bins, quantiles computed on the
    float16 values, ``np.histogram`` semantics, each bin's threshold is its lower edge); the
    bins of all images are sorted by threshold (descending, ``np.argsort(thresholds)[::-1]``
    as the benchmark) and accumulated; the leading points with no prediction are dropped;
    AuPRC = trapezoidal area under precision(recall) and AUROC under TPR(FPR), both without an
    added end point. This moves AP by up to about a point against the exact value. Scores
    beyond the float16 range (:data:`FLOAT16_MAX`) have no float16 value (``evaluate anomaly``
    refuses them).

FPR95 (Eq. 19) is, in both, the FPR at the first threshold (from the top) where
``TPR >= 0.95`` (1.0 when never reached).

The threshold of best pixel F1 (``best_f1_threshold``, the component metrics' default
threshold) is the curve's first point of highest ``F1 = 2 TP / (2 TP + FP + FN)``:

* exact: a score value (histogram: the lowest float32 value of a bin); the point counts
  exactly the pixels with ``score >= t``, so components binarise with ``>=``;
* smiyc: the benchmark's ``best_f1_threshold``, the *lower edge* of a bin of one image (points
  not collapsed, the no-prediction prefix dropped, ``np.nanargmax``). Its point counts the bins
  whose lower edge is ``>= t``, which is neither ``score >= t`` nor ``score > t`` (a bin of
  another image may straddle ``t``); the benchmark binarises with ``score > t`` (in float16)
  regardless, dropping the pixels equal to ``t``.

Ties between images: bins of several images with the same lower edge are ordered as the
benchmark's ``aggregate_dynamic_bins`` orders them, ``np.argsort(thresholds)[::-1]`` over the
images' bins concatenated highest first, in image order. That sort is not stable, so the
intermediate points (which the area and the best F1 see) depend on numpy's sort: with the same
numpy build the values here equal the benchmark code's to the last bit (measured on 80 synthetic
datasets, uint8-level and continuous scores, both profiles); between numpy 1.23.5 and 2.4.6 the
benchmark code itself moved on uint8-level maps (20 datasets) the threshold in 11, F1* by up to
8.4 points and AuPRC by up to 1.5 points (continuous scores: 2 thresholds, 0.65 / 0.03 points).
The benchmark also takes its frames in pool completion order (``imap_unordered``) in its
parallel path. Its later code (from commit 6bc8f37, 2023-08-05) keeps only the first point and
the last point of each threshold (no difference between those numpy versions on the same 20
datasets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HIST_BITS = 22
SMIYC_NUM_BINS = 768
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: the smiyc mode's scores are float16
DEFAULT_MAX_EXACT_PIXELS = 20_000_000  # 5 B each buffered; the final sort peaks near 1.2 GB
AP_CONVENTIONS = ("exact", "smiyc")


@dataclass
class Curve:
    """Cumulative counts at decreasing thresholds.

    thresholds: (T,) float64, decreasing; point i predicts anomalous where ``score >= t_i``.
    tp, fp: (T,) float64 cumulative true / false positives; n_pos, n_neg: totals.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def tpr(self) -> np.ndarray:
        """Recall at each threshold, ``|Y_a and Y_hat_a(gamma)| / |Y_a|`` (Eq. 17)."""
        return self.tp / max(self.n_pos, 1)

    @property
    def fpr(self) -> np.ndarray:
        """False-positive rate at each threshold (the FPR of Eq. 19)."""
        return self.fp / max(self.n_neg, 1)

    @property
    def precision(self) -> np.ndarray:
        """Precision at each threshold, ``|Y_a and Y_hat_a(gamma)| / |Y_hat_a(gamma)|`` (Eq. 16)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.tp / (self.tp + self.fp)


@dataclass
class PixelMetrics:
    """Pooled pixel metrics as fractions in [0, 1] (multiply by 100 for the paper's tables).

    ``method``: ``"exact"``, ``"histogram"`` (exact convention, fine histogram) or ``"smiyc"``.
    ``best_f1_threshold``: score threshold of best pixel F1 on the curve (exact: selects
    ``score >= t``; smiyc: a bin's lower edge, see the module docstring).
    """

    auprc: float
    fpr95: float
    auroc: float
    best_f1: float
    best_f1_threshold: float
    n_pos: int
    n_neg: int
    ap_convention: str
    method: str
    curve: Curve = field(repr=False)


# --------------------------------------------------------------------------------------
# Metrics from a curve
# --------------------------------------------------------------------------------------


def _fpr_at_tpr(curve: Curve, tpr: float = 0.95) -> float:
    """Eq. 19: FPR at the first (highest) threshold whose TPR is at least ``tpr``."""
    idx = int(np.searchsorted(curve.tpr, tpr, side="left"))
    return float(curve.fpr[idx]) if idx < len(curve.tp) else 1.0


def _best_f1(curve: Curve) -> tuple[float, float]:
    """(best pixel F1, its threshold): the first point of highest ``2 TP / (2 TP + FP + FN)``
    (``np.nanargmax``, as the benchmark's ``curves_from_cmats``); NaN, NaN without any."""
    fn = curve.n_pos - curve.tp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * curve.tp / (2 * curve.tp + curve.fp + fn)
    if not np.isfinite(f1).any():
        return float("nan"), float("nan")
    ix = int(np.nanargmax(f1))
    return float(f1[ix]), float(curve.thresholds[ix])


def metrics_exact(curve: Curve, method: str = "exact") -> PixelMetrics:
    """AuPRC as step sum (Eq. 18, ``average_precision_score``), AUROC by trapezoids from
    (0, 0) (``roc_auc_score``), FPR95 (Eq. 19), from a curve with one point per distinct
    threshold."""
    recall = np.concatenate([[0.0], curve.tpr])
    auprc = float(np.sum(np.diff(recall) * curve.precision)) if curve.n_pos else float("nan")
    auroc = float(np.trapezoid(np.concatenate([[0.0], curve.tpr]), np.concatenate([[0.0], curve.fpr]))) \
        if curve.n_pos and curve.n_neg else float("nan")
    best_f1, thr = _best_f1(curve)
    return PixelMetrics(auprc, _fpr_at_tpr(curve), auroc, best_f1, thr, curve.n_pos, curve.n_neg,
                        "exact", method, curve)


def metrics_smiyc(curve: Curve) -> PixelMetrics:
    """SMIYC benchmark areas: leading no-prediction points dropped, then trapezoidal AuPRC
    (Eq. 18) and AUROC with no added end points; FPR95 (Eq. 19) as :func:`metrics_exact`."""
    keep = np.nonzero(curve.tp + curve.fp > 0)[0]
    start = int(keep[0]) if len(keep) else len(curve.tp)
    c = Curve(curve.thresholds[start:], curve.tp[start:], curve.fp[start:], curve.n_pos, curve.n_neg)
    ok = len(c.tp) > 0 and c.n_pos > 0
    auprc = float(np.trapezoid(c.precision, c.tpr)) if ok else float("nan")
    auroc = float(np.trapezoid(c.tpr, c.fpr)) if ok and c.n_neg else float("nan")
    best_f1, thr = _best_f1(c) if ok else (float("nan"), float("nan"))
    return PixelMetrics(auprc, _fpr_at_tpr(c) if ok else 1.0, auroc, best_f1, thr, c.n_pos, c.n_neg,
                        "smiyc", "smiyc", c)


def curve_from_counts(thresholds: np.ndarray, pos: np.ndarray, neg: np.ndarray,
                      benchmark_order: bool = False) -> Curve:
    """Sort (threshold, positives, negatives) triples by decreasing threshold and accumulate.

    Args: thresholds (T,) float; pos, neg (T,) int counts of pixels at that threshold/bin.
        benchmark_order: order equal thresholds as the SMIYC benchmark's
            ``aggregate_dynamic_bins`` does, ``np.argsort(thresholds)[::-1]`` (numpy's default
            sort, not stable), instead of keeping their given order.
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(thr)[::-1] if benchmark_order else np.argsort(-thr, kind="stable")
    tp = np.cumsum(np.asarray(pos, dtype=np.float64)[order])
    fp = np.cumsum(np.asarray(neg, dtype=np.float64)[order])
    n_pos = round(tp[-1]) if len(tp) else 0
    n_neg = round(fp[-1]) if len(fp) else 0
    return Curve(np.asarray(thresholds, dtype=np.float64)[order], tp, fp, n_pos, n_neg)


# --------------------------------------------------------------------------------------
# Fine histogram of float32 scores
# --------------------------------------------------------------------------------------


def float_keys(scores: np.ndarray, bits: int = HIST_BITS) -> np.ndarray:
    """Order-preserving bin index of float32 scores: the top ``bits`` bits of the bit pattern
    with the sign folded (negative values reversed). (N,) float -> (N,) int64 in [0, 2**bits)."""
    u = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    neg = (u >> 31).astype(bool)
    key = np.where(neg, ~u, u | np.uint32(0x80000000))
    return (key >> np.uint32(32 - bits)).astype(np.int64)


def key_lower_value(keys: np.ndarray, bits: int = HIST_BITS) -> np.ndarray:
    """Smallest float32 value of each bin of :func:`float_keys` (its threshold), as float64."""
    key = (np.asarray(keys, dtype=np.uint64) << np.uint64(32 - bits)).astype(np.uint32)
    top = (key >> 31).astype(bool)
    u = np.where(top, key & np.uint32(0x7FFFFFFF), ~key)
    with np.errstate(invalid="ignore"):
        value = u.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.where(np.isnan(value), -np.inf, value)  # the -inf bin also spans NaN patterns


# --------------------------------------------------------------------------------------
# SMIYC per-image percentile bins
# --------------------------------------------------------------------------------------


def smiyc_image_bins(scores: np.ndarray, positive: np.ndarray, num_bins: int = SMIYC_NUM_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's SMIYC percentile bins, highest first (the benchmark's
    ``binary_confusion_matrix`` order, which :func:`curve_from_counts` needs to order ties as
    the benchmark does).

    Args: scores (N,) float16 valid-pixel scores (the benchmark's storage; the quantiles are
        computed on these float16 values as the benchmark computes them); positive (N,) bool.
    Returns: (lower edges (B,) float64 decreasing, positives per bin (B,) int64, negatives (B,)
    int64).
    """
    pos, neg = scores[positive], scores[~positive]
    edges = [np.array([0.0, 1.0])]
    for part in (pos, neg):
        if part.size:
            edges.append(np.quantile(part, np.linspace(0, 1, min(num_bins // 2, part.size))))
    edges = np.unique(np.concatenate(edges))
    tp_rel = np.histogram(pos, bins=edges)[0]
    fp_rel = np.histogram(neg, bins=edges)[0]
    return edges[-2::-1], tp_rel[::-1].astype(np.int64), fp_rel[::-1].astype(np.int64)


# --------------------------------------------------------------------------------------
# Streaming accumulator
# --------------------------------------------------------------------------------------


class PixelAccumulator:
    """Pool valid pixels of many images; :meth:`result` gives :class:`PixelMetrics`.

    Args:
        ap_convention: ``"exact"`` or ``"smiyc"`` (see the module docstring).
        max_exact_pixels: exact convention: pooled pixels kept verbatim before switching to the
            fine histogram (0 = histogram from the start).
        hist_bits: histogram resolution (bits of the float32 key).
    """

    def __init__(self, ap_convention: str = "exact", max_exact_pixels: int = DEFAULT_MAX_EXACT_PIXELS,
                 hist_bits: int = HIST_BITS) -> None:
        if ap_convention not in AP_CONVENTIONS:
            raise ValueError(f"unknown AP convention {ap_convention!r}; known: {', '.join(AP_CONVENTIONS)}")
        self.ap_convention = ap_convention
        self.max_exact_pixels = int(max_exact_pixels)
        self.hist_bits = hist_bits
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._n_buffered = 0
        self._hist: np.ndarray | None = None  # (2, 2**bits) int64: [negatives, positives]
        self._bins: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_images = 0

    @property
    def n_valid_pixels(self) -> int:
        if self.ap_convention == "smiyc":
            return int(sum(int(p.sum() + n.sum()) for _, p, n in self._bins))
        hist = 0 if self._hist is None else int(self._hist.sum())
        return hist + self._n_buffered

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add one image: scores (H, W) float, labels (H, W) uint8 in {0, 1, 255}."""
        valid = labels != 255
        s = np.asarray(scores, dtype=np.float32)[valid]
        positive = labels[valid] == 1
        self.n_images += 1
        if self.ap_convention == "smiyc":
            self._bins.append(smiyc_image_bins(s.astype(np.float16), positive))
            return
        if self._hist is None and self._n_buffered + s.size <= self.max_exact_pixels:
            self._scores.append(s)
            self._labels.append(positive)
            self._n_buffered += s.size
            return
        self._to_histogram()
        self._histogram_add(s, positive)

    def _histogram_add(self, s: np.ndarray, positive: np.ndarray) -> None:
        n = 1 << self.hist_bits
        keys = float_keys(s, self.hist_bits)
        self._hist[1] += np.bincount(keys[positive], minlength=n)
        self._hist[0] += np.bincount(keys[~positive], minlength=n)

    def _to_histogram(self) -> None:
        if self._hist is None:
            self._hist = np.zeros((2, 1 << self.hist_bits), dtype=np.int64)
        for s, p in zip(self._scores, self._labels):
            self._histogram_add(s, p)
        self._scores, self._labels, self._n_buffered = [], [], 0

    def curve(self) -> tuple[Curve, str]:
        """The pooled curve and the method that produced it."""
        if self.ap_convention == "smiyc":
            if not self._bins:
                return Curve(*(np.zeros(0),) * 3, 0, 0), "smiyc"
            thr, pos, neg = (np.concatenate(parts) for parts in zip(*self._bins))
            return curve_from_counts(thr, pos, neg, benchmark_order=True), "smiyc"
        if self._hist is not None:
            occupied = np.nonzero(self._hist.sum(0))[0]
            return curve_from_counts(key_lower_value(occupied, self.hist_bits),
                                     self._hist[1, occupied], self._hist[0, occupied]), "histogram"
        if not self._scores:
            return Curve(*(np.zeros(0),) * 3, 0, 0), "exact"
        s = np.concatenate(self._scores)
        p = np.concatenate(self._labels)
        values, inverse = np.unique(s, return_inverse=True)
        pos = np.bincount(inverse, weights=p, minlength=len(values))
        neg = np.bincount(inverse, minlength=len(values)) - pos
        return curve_from_counts(values, pos, neg), "exact"

    def result(self) -> PixelMetrics:
        curve, method = self.curve()
        return metrics_smiyc(curve) if self.ap_convention == "smiyc" else metrics_exact(curve, method)
