"""Open-set semantic segmentation metrics (Sec. 7.2, Eq. 23-24; protocol of Sec. 7.4).

Labels use ``K`` known classes ``0..K-1``, the unknown (anomaly) class ``K`` and void 255.

* closed-set mIoU: IoU of the known classes from the closed-set prediction (argmax over known
  classes) on pixels whose ground truth is a known class (anomaly and void pixels ignored);
* open-IoU (Eq. 24): the prediction is first made open-set (Eq. 14: pixels with
  ``anomaly >= threshold`` become ``K``), then per known class ``a``
  ``TP_a / (TP_a + FP_a^OOD + FN_a^OOD)`` where (Eq. 23) ``FP_a^OOD`` sums the pixels predicted
  ``a`` whose ground truth is any other class *including the unknown one*, and ``FN_a^OOD``
  the pixels of class ``a`` predicted as any other class *including unknown*; void ignored;
* the threshold is chosen at 95 % TPR of the anomalous pixels of a calibration split
  (:func:`calibrate_threshold`, the StreetHazards t5/t6 protocol: calibrate on one part,
  evaluate on the other, then average the two open-mIoUs weighted by their image counts).

Means run over the classes that occur (in ground truth or prediction); the others are NaN in
the per-class list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from m2a_pipe.evaluation.datasets import DatasetError

VOID = 255


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


def open_set_labels(semantic: np.ndarray, anomaly: np.ndarray, threshold: float,
                    num_known: int) -> np.ndarray:
    """Eq. 14 on label maps: (H, W) known-class labels and (H, W) scores -> (H, W) int64 with
    ``num_known`` where ``anomaly >= threshold``."""
    return np.where(np.asarray(anomaly) >= threshold, num_known, np.asarray(semantic)).astype(np.int64)


def threshold_at_tpr(scores_anomalous: np.ndarray, tpr: float = 0.95) -> float:
    """Threshold whose true-positive rate on anomalous calibration pixels is ``tpr``, the
    ``f_hat`` cut of Eq. 14.

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


def calibrate_threshold(anomalous_scores: list[np.ndarray] | np.ndarray, tpr: float = 0.95) -> float:
    """Threshold with TPR ``tpr`` on the anomalous calibration pixels (the k-th largest
    score; :func:`threshold_at_tpr`). Args: 1-D float arrays."""
    if isinstance(anomalous_scores, list):
        anomalous_scores = np.concatenate([np.ravel(a) for a in anomalous_scores]) if anomalous_scores \
            else np.zeros(0, np.float32)
    return threshold_at_tpr(np.asarray(anomalous_scores, dtype=np.float32), tpr)


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

    Args: num_known: K; threshold: anomaly threshold of Eq. 14.
    """

    def __init__(self, num_known: int, threshold: float) -> None:
        self.num_known = num_known
        self.threshold = float(threshold)
        self.closed = ConfusionMatrix(num_known)
        self.open = ConfusionMatrix(num_known + 1)
        self.n_images = 0

    def add(self, gt: np.ndarray, semantic: np.ndarray, anomaly: np.ndarray) -> None:
        """gt (H, W) in 0..K (K = anomaly) or 255; semantic (H, W) known-class prediction;
        anomaly (H, W) float scores."""
        self.closed.add(gt, semantic)  # gt == K falls outside the K x K matrix: ignored
        self.open.add(gt, open_set_labels(semantic, anomaly, self.threshold, self.num_known))
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
