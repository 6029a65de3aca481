"""Open-set semantic segmentation metrics (Sec. 7.2, Eq. 23-24; protocol of Sec. 7.4).

Labels use ``K`` known classes ``0..K-1``, the unknown (anomaly) class ``K`` and void 255.

* closed-set mIoU: IoU of the known classes from the closed-set prediction (argmax over known
  classes) on pixels whose ground truth is a known class (anomaly and void pixels ignored);
* open-IoU (Eq. 24): the prediction is first made open-set (Eq. 14: pixels whose anomaly score
  passes the threshold become ``K``; :func:`is_unknown`), then per known class ``a``
  ``TP_a / (TP_a + FP_a^OOD + FN_a^OOD)`` where (Eq. 23) ``FP_a^OOD`` sums the pixels predicted
  ``a`` whose ground truth is any other class *including the unknown one*, and ``FN_a^OOD``
  the pixels of class ``a`` predicted as any other class *including unknown*; void ignored;
* the threshold is chosen at 95 % TPR on a calibration split (the StreetHazards t5/t6
  protocol: calibrate on one part, evaluate on the other, then average the two open-mIoUs
  weighted by their image counts) by one of :data:`THRESHOLD_RULES`:

  - ``reference`` (default): the rule of DenseHybrid's ``evaluate_osr.py``
    (github.com/matejgrcic/DenseHybrid), the reference this module follows: the
    first threshold of scikit-learn's ``roc_curve`` over the known *and* anomalous calibration
    pixels whose TPR is strictly above 0.95, and a pixel is unknown when ``score > threshold``
    (:class:`ReferenceCalibration`);
  - ``kth-score``: the ``ceil(0.95 n)``-th largest of the ``n`` anomalous calibration scores,
    and a pixel is unknown when ``score >= threshold`` (:func:`threshold_at_tpr`).

  The two agree on the calibration pixels only when no score sits on the TPR boundary.

Means run over the classes that occur (in ground truth or prediction); the others are NaN in
the per-class list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from m2a_pipe.evaluation.datasets import DatasetError

VOID = 255

THRESHOLD_RULES = ("reference", "kth-score")
"""How the open-set threshold is calibrated and compared; the first is the default."""

UNKNOWN_IF = {"reference": "score > threshold", "kth-score": "score >= threshold"}
"""The comparison that makes a pixel unknown under each rule (also for a given threshold)."""


class ConfusionMatrix:
    """(C, C) int64 confusion counts ``[ground truth, prediction]`` over ``C`` classes;
    pixels whose ground truth is void or >= C are skipped."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """gt, pred: (H, W) integer label maps of one image."""
        c = self.num_classes
        gt = np.asarray(gt).ravel().astype(np.int64)
        pred = np.asarray(pred).ravel().astype(np.int64)
        keep = (gt >= 0) & (gt < c) & (pred >= 0) & (pred < c)
        self.matrix += np.bincount(gt[keep] * c + pred[keep], minlength=c * c).reshape(c, c)


def iou_per_class(matrix: np.ndarray, classes: int) -> np.ndarray:
    """IoU of the first ``classes`` classes of a confusion matrix, with every other class
    (e.g. the unknown one) counted as an error (Eq. 23-24 when the matrix includes unknown).
    Returns (classes,) float64, NaN for a class absent from ground truth and prediction."""
    tp = np.diag(matrix)[:classes].astype(np.float64)
    fp = matrix[:, :classes].sum(0) - tp  # predicted a, ground truth another class (FP^OOD)
    fn = matrix[:classes].sum(1) - tp     # ground truth a, predicted another class (FN^OOD)
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def _check_rule(rule: str) -> None:
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(THRESHOLD_RULES)}")


def is_unknown(anomaly: np.ndarray, threshold: float, rule: str = "reference") -> np.ndarray:
    """The thresholded score ``f_hat`` of Eq. 14: ``anomaly > threshold`` under the
    ``reference`` rule, ``anomaly >= threshold`` under ``kth-score`` (:data:`UNKNOWN_IF`).
    The comparison runs in the scores' precision (a Python float threshold against float32
    scores compares in float32). anomaly: any shape, float. Returns bool, same shape."""
    _check_rule(rule)
    a = np.asarray(anomaly)
    threshold = float(threshold)
    return a > threshold if rule == "reference" else a >= threshold


def open_set_labels(semantic: np.ndarray, anomaly: np.ndarray, threshold: float,
                    num_known: int, rule: str = "reference") -> np.ndarray:
    """Eq. 14 on label maps: (H, W) known-class labels and (H, W) scores -> (H, W) int64 with
    ``num_known`` where :func:`is_unknown` (``score > threshold`` under the default rule)."""
    return np.where(is_unknown(anomaly, threshold, rule), num_known, np.asarray(semantic)).astype(np.int64)


def threshold_at_tpr(scores_anomalous: np.ndarray, tpr: float = 0.95) -> float:
    """The ``kth-score`` rule: threshold whose true-positive rate on anomalous calibration
    pixels is at least ``tpr`` when pixels with ``score >= t`` are unknown (the ``f_hat`` cut
    of Eq. 14).

    Returns the largest ``t`` such that at least ``ceil(tpr * n)`` of the ``n`` anomalous
    scores satisfy ``score >= t`` (the k-th largest score); NaNs are ignored.

    Args:
        scores_anomalous: scores of ground-truth anomalous pixels, any shape (flattened),
            float, array-like (numpy, or a CPU tensor).
        tpr: target true-positive rate in (0, 1].
    Raises DatasetError when there is no anomalous score to calibrate on.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s = np.asarray(scores_anomalous, dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    n = s.size
    if n == 0:
        raise DatasetError("no anomalous pixels to calibrate the open-set threshold on")
    k = max(1, math.ceil(round(tpr * n, 9)))  # round: 0.95 * 100 must give 95, not 96
    return float(np.partition(s, n - k)[n - k])


class ReferenceCalibration:
    """The ``reference`` rule: DenseHybrid ``evaluate_osr.py`` (``OODCalibration``), streamed.

    The reference pools the scores of the calibration pixels that are known (label 0) or
    anomalous (label 1), void excluded, calls ``sklearn.metrics.roc_curve(labels, scores)``
    (default ``drop_intermediate=True``) and takes the first returned threshold whose TPR is
    ``> tpr``; the open-set prediction then marks ``score > threshold`` unknown. Spelled out,
    with ``v_0 > v_1 > ... > v_{m-1}`` the distinct calibration scores, ``c_j = (known count,
    anomalous count)`` of pixels scoring exactly ``v_j``, ``P`` the anomalous pixels and
    ``TP(v) = #{anomalous >= v}``:

    1. ``j*`` = the first ``j`` with ``TP(v_j) / P > tpr`` (float64 division). TP only rises at
       anomalous scores, so ``v_{j*}`` is the largest anomalous score value whose TPR exceeds
       ``tpr``: the ``(floor(tpr P) + 1)``-th largest anomalous score when no scores tie.
    2. ``drop_intermediate`` removes a point ``j`` (not the first or last) when the ROC step
       into it equals the step out of it; the step into ``j`` is ``c_j``, so ``j`` is dropped
       exactly when ``c_j == c_{j+1}``. The threshold is ``v_j`` for the first kept ``j >= j*``:
       the walk from ``j*`` continues down a run of anomalous score values with equal
       (known, anomalous) counts and stops at the first value followed by a different count
       pair, by a score only known pixels have, or by nothing.

    Hence, with the labelling ``score > t``: ties at ``t`` are *not* unknown, so the TPR on
    the calibration pixels can fall below ``tpr`` (to 0 when all anomalous scores are equal),
    and a threshold dropped by step 2 lets more pixels through than step 1 alone.

    Use: ``ReferenceCalibration(anomalous, tpr)``, then :meth:`add_known` with the scores of
    the known calibration pixels (any batches), then :meth:`threshold`. Memory: the distinct
    anomalous values at or below ``v_{j*}``.

    Args:
        anomalous: scores of the anomalous calibration pixels, any shape, float (compared as
            float32, like the reference's score tensors); NaNs are ignored.
        tpr: target rate in (0, 1); the reference compares ``TPR > tpr`` strictly.
    Raises DatasetError when there is no anomalous score.
    """

    def __init__(self, anomalous: np.ndarray, tpr: float = 0.95) -> None:
        if not 0.0 < tpr < 1.0:
            raise ValueError(f"tpr must be in (0, 1) for the reference rule, got {tpr}")
        s = np.asarray(anomalous, dtype=np.float32).ravel()
        s = s[~np.isnan(s)]
        if s.size == 0:
            raise DatasetError("no anomalous pixels to calibrate the open-set threshold on")
        values, counts = np.unique(s, return_counts=True)  # ascending
        values, counts = values[::-1], counts[::-1]
        first = int(np.argmax(np.cumsum(counts) / float(s.size) > tpr))  # step 1: j*
        self.values = np.ascontiguousarray(values[first:])  # (M,) float32, descending
        self.anomalous_at = np.ascontiguousarray(counts[first:]).astype(np.int64)  # (M,)
        self.at_top = first == 0  # v_{j*} is the highest anomalous score
        self._ascending = np.ascontiguousarray(self.values[::-1])
        m = self.values.size
        self.known_at = np.zeros(m, np.int64)   # known pixels scoring exactly values[i]
        self.known_gap = np.zeros(m, np.int64)  # known pixels strictly between values[i] and values[i+1]
        self.known_above = 0                    # known pixels scoring above values[0]

    def add_known(self, scores: np.ndarray) -> None:
        """Tally the scores of known (non-void, non-anomalous) calibration pixels; any shape."""
        x = np.asarray(scores, dtype=np.float32).ravel()
        x = x[~np.isnan(x)]
        top = self.values[0]
        self.known_above += int(np.count_nonzero(x > top))
        x = x[x <= top]
        m = self.values.size
        pos = np.searchsorted(self._ascending, x, side="left")  # asc[pos - 1] < x <= asc[pos]
        tie = self._ascending[pos] == x
        self.known_at += np.bincount(m - 1 - pos[tie], minlength=m)
        self.known_gap += np.bincount(m - 1 - pos[~tie], minlength=m)  # gap below values[m-1-pos]

    def threshold(self) -> float:
        """Step 2: the first kept ROC point at or after ``j*``; returns its score value."""
        m = self.values.size
        for i in range(m):
            if i == 0 and self.at_top and self.known_above == 0:
                return float(self.values[0])  # the first ROC point: always kept
            if self.known_gap[i] or i == m - 1:
                return float(self.values[i])  # next point scores only known pixels, or none is left
            if (self.known_at[i], self.anomalous_at[i]) != (self.known_at[i + 1], self.anomalous_at[i + 1]):
                return float(self.values[i])
        raise AssertionError("unreachable: the last value is always kept")


def reference_threshold(anomalous: np.ndarray, known: np.ndarray | Iterable[np.ndarray],
                        tpr: float = 0.95) -> float:
    """:class:`ReferenceCalibration` in one call. anomalous: any shape, float; known: an
    array of any shape, or an iterable of such batches (consumed once). Unknown is then
    ``score > threshold``."""
    cal = ReferenceCalibration(anomalous, tpr)
    for batch in [known] if isinstance(known, np.ndarray) else known:
        cal.add_known(batch)
    return cal.threshold()


def calibrate_threshold(anomalous_scores: list[np.ndarray] | np.ndarray, tpr: float = 0.95, *,
                        rule: str = "reference",
                        known_scores: np.ndarray | Iterable[np.ndarray] | None = None) -> float:
    """Threshold at TPR ``tpr`` by ``rule``: ``reference`` (:class:`ReferenceCalibration`,
    needs ``known_scores``; unknown is ``score > t``) or ``kth-score``
    (:func:`threshold_at_tpr`; unknown is ``score >= t``). Args: 1-D float arrays, or lists
    / iterables of them."""
    _check_rule(rule)
    if isinstance(anomalous_scores, list):
        anomalous_scores = np.concatenate([np.ravel(a) for a in anomalous_scores]) if anomalous_scores \
            else np.zeros(0, np.float32)
    anomalous = np.asarray(anomalous_scores, dtype=np.float32)
    if rule == "kth-score":
        return threshold_at_tpr(anomalous, tpr)
    if known_scores is None:
        raise ValueError("the reference threshold rule needs the known pixels' scores")
    return reference_threshold(anomalous, known_scores, tpr)


@dataclass
class OpenSetMetrics:
    """Fractions in [0, 1]: ``miou`` closed set, ``open_miou`` (Eq. 24 mean),
    ``open_iou_by_class`` / ``iou_by_class`` (K,) lists (NaN: class absent)."""

    miou: float
    open_miou: float
    open_iou_by_class: list[float]
    iou_by_class: list[float]
    threshold: float
    n_images: int


class OpenSetAccumulator:
    """Pool closed- and open-set confusion matrices over images at a fixed threshold.

    Args: num_known: K; threshold: anomaly threshold of Eq. 14; rule: its comparison
    (:data:`UNKNOWN_IF`: ``>`` for ``reference``, ``>=`` for ``kth-score``).
    """

    def __init__(self, num_known: int, threshold: float, rule: str = "reference") -> None:
        _check_rule(rule)
        self.num_known = num_known
        self.threshold = float(threshold)
        self.rule = rule
        self.closed = ConfusionMatrix(num_known)
        self.open = ConfusionMatrix(num_known + 1)
        self.n_images = 0

    def add(self, gt: np.ndarray, semantic: np.ndarray, anomaly: np.ndarray) -> None:
        """gt (H, W) in 0..K (K = anomaly) or 255; semantic (H, W) known-class prediction;
        anomaly (H, W) float scores."""
        self.closed.add(gt, semantic)  # gt == K falls outside the K x K matrix: ignored
        self.open.add(gt, open_set_labels(semantic, anomaly, self.threshold, self.num_known, self.rule))
        self.n_images += 1

    def result(self) -> OpenSetMetrics:
        iou = iou_per_class(self.closed.matrix, self.num_known)
        open_iou = iou_per_class(self.open.matrix, self.num_known)
        return OpenSetMetrics(
            miou=_nanmean(iou), open_miou=_nanmean(open_iou),
            open_iou_by_class=[float(v) for v in open_iou], iou_by_class=[float(v) for v in iou],
            threshold=self.threshold, n_images=self.n_images)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def weighted_average(parts: list[OpenSetMetrics]) -> dict[str, float]:
    """The Sec. 7.4 combination of t5/t6 results: means weighted by the image counts."""
    n = sum(p.n_images for p in parts)
    return {key: float(sum(getattr(p, key) * p.n_images for p in parts) / n) if n else float("nan")
            for key in ("miou", "open_miou")}
