"""Component-level anomaly metrics as the SegmentMeIfYouCan benchmark computes them
(Sec. 7.2, Eq. 20-22); reference: SegmentMeIfYouCan/road-anomaly-benchmark,
``road_anomaly_benchmark/metrics/instance_segmentation.py`` (``default_instancer``,
``segment_metrics``, ``MetricSegment.aggregate``).

Per image (:func:`image_components`):

1. prediction = the pixels the threshold selects, set to 0 on void pixels; ground truth =
   ``label == 1``. The comparison (``comparison``, :data:`COMPARISONS`):

   * ``"float16 >"`` -- the benchmark's own, ``anomaly_p > thresh_p`` on its float16 maps with
     its pinned numpy 1.23, which casts the float64 threshold to float16 for the comparison:
     ``float16(score) > float16(t)``. It goes with the threshold of the benchmark's binned
     curve (``--ap smiyc``);
   * ``">="`` -- ``score >= t`` in float64, the pixels an exact pixel curve counts at its
     threshold ``t`` (``--ap exact``: ``t`` is a score value, or a fine-histogram bin's lowest
     value);
   * ``">"`` -- ``score > t`` in float64 (the default of the classes here);
2. 8-connected components of both;
3. predicted components with fewer than ``profile.min_pred_size`` pixels are removed (they
   become normal predictions); ground-truth components with fewer than
   ``profile.min_gt_size`` pixels are made void (a component of exactly the minimum size
   stays, as the benchmark's ``size < thresh`` test);
4. everything below is counted on the non-void pixels only.

With ``K_hat(k)`` the union of predicted components that touch ground-truth component ``k``
and ``A(k)`` the pixels of ``K_hat(k)`` that lie in *another* ground-truth component:

* sIoU(k) = ``|k & K_hat(k)| / (|k| + |K_hat(k)| - |k & K_hat(k)| - |A(k)|)`` (Eq. 20; the
  adjustment term removes from the union what correctly belongs to other components);
* PPV(k_hat) = ``|k_hat & (ground-truth anomaly)| / |k_hat|`` (Eq. 21);
* at each ``tau`` of :data:`TAUS`: a ground-truth component is a TP when ``sIoU >= tau``, else
  a FN; a predicted component is a FP when ``PPV < tau`` (the benchmark code's tie rules; the
  paper's text writes ``>`` and ``<=``). :data:`TAUS` are the benchmark's own values,
  ``np.linspace(0.25, 0.75, 11)``, whose 8th is 0.6000000000000001, not 0.6: a ratio equal to
  3/5 is below it (an sIoU of 3/5 is a FN there, a PPV of 3/5 a FP);
* F1(tau) = 2 TP / (2 TP + FN + FP) pooled over the dataset (Eq. 22), F1* = mean over tau;
  mean sIoU over all ground-truth components and mean PPV over all predicted components.

An image without anomalies contributes only its predicted components (all FP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

TAUS = tuple(float(tau) for tau in np.linspace(0.25, 0.75, 11))
"""sIoU / PPV thresholds, bit for bit the benchmark's ``np.linspace(0.25, 0.75, 11)``."""
COMPARISONS = (">", ">=", "float16 >")
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class ComponentProfile:
    """Minimum component sizes in pixels (absolute counts)."""

    name: str
    min_pred_size: int
    min_gt_size: int


PROFILES = {
    "anomaly-track": ComponentProfile("anomaly-track", min_pred_size=500, min_gt_size=100),
    "obstacle-track": ComponentProfile("obstacle-track", min_pred_size=50, min_gt_size=10),
}


@dataclass
class ImageComponents:
    """Per-component values of one image: ``siou`` (G,) per ground-truth component,
    ``ppv`` (P,) per predicted component (float64)."""

    siou: np.ndarray
    ppv: np.ndarray


def _label(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels of ``mask`` ((H, W) int32) and the bool (n+1,) table of components
    smaller than ``min_size`` (index 0 = background, never small)."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes < min_size
    small[0] = False
    return labels, small


def binarise(scores: np.ndarray, threshold: float, comparison: str = ">") -> np.ndarray:
    """Anomalous pixels: ``score > threshold`` or ``score >= threshold`` in float64, or
    ``float16(score) > float16(threshold)`` (``"float16 >"``, the SMIYC benchmark's: it stores
    float16 maps and numpy 1.x compares them with a scalar in float16).
    (H, W) float -> (H, W) bool."""
    if comparison not in COMPARISONS:
        raise ValueError(f"unknown comparison {comparison!r}; known: {', '.join(COMPARISONS)}")
    if comparison == "float16 >":
        with np.errstate(over="ignore"):  # beyond +-65504: +-inf, as a float16 map holds it
            return np.asarray(scores).astype(np.float16) > np.float16(threshold)
    s = np.asarray(scores, dtype=np.float64)
    return s >= float(threshold) if comparison == ">=" else s > float(threshold)


def image_components(scores: np.ndarray, labels: np.ndarray, threshold: float,
                     profile: ComponentProfile, comparison: str = ">") -> ImageComponents:
    """sIoU (Eq. 20) and PPV (Eq. 21) of the components of one image.

    Args:
        scores: (H, W) float anomaly scores; labels: (H, W) uint8 in {0, 1, 255}.
        threshold, comparison: the pixels :func:`binarise` selects are predicted anomalous.
    """
    void = labels == 255
    pred = binarise(scores, threshold, comparison) & ~void
    gt_ids, gt_small = _label(labels == 1, profile.min_gt_size)
    pred_ids, pred_small = _label(pred, profile.min_pred_size)
    pred_ids[pred_small[pred_ids]] = 0
    roi = ~void & ~gt_small[gt_ids]
    g = gt_ids[roi].astype(np.int64)
    p = pred_ids[roi].astype(np.int64)
    # Compact the ids that survive in the region of interest (0 = background stays 0).
    g_vals = np.unique(np.concatenate([[0], g]))
    p_vals = np.unique(np.concatenate([[0], p]))
    g, p = np.searchsorted(g_vals, g), np.searchsorted(p_vals, p)
    n_g, n_p = len(g_vals), len(p_vals)
    both = (g > 0) | (p > 0)
    pairs = np.unique(g[both] * n_p + p[both], return_counts=True)
    overlap = np.zeros((n_g, n_p), dtype=np.int64)  # overlap[gt, pred], background at 0
    overlap.flat[pairs[0]] = pairs[1]
    gt_size = overlap.sum(1)
    pred_size = overlap.sum(0)
    fg = overlap[1:, 1:] > 0  # (G, P) touching pairs
    inter_gp = overlap[1:, 1:]
    siou = np.zeros(n_g - 1)
    for k in range(n_g - 1):
        touching = fg[k]
        inter = inter_gp[k, touching].sum()
        union_pred = pred_size[1:][touching].sum()
        others = inter_gp[:, touching].sum() - inter  # pixels of K_hat(k) in other components
        denom = gt_size[k + 1] + union_pred - inter - others
        siou[k] = inter / denom if denom > 0 else 0.0
    ppv = np.zeros(n_p - 1)
    for j in range(n_p - 1):
        ppv[j] = inter_gp[:, j].sum() / pred_size[j + 1] if pred_size[j + 1] else 0.0
    return ImageComponents(siou=siou, ppv=ppv)


@dataclass
class ComponentMetrics:
    """Dataset component metrics as fractions (Eq. 22): ``f1_by_tau`` maps tau to F1;
    ``comparison`` is how ``threshold`` binarised the scores (:data:`COMPARISONS`)."""

    siou: float
    ppv: float
    f1_star: float
    f1_by_tau: dict[float, float]
    tp: dict[float, int]
    fn: dict[float, int]
    fp: dict[float, int]
    n_gt: int
    n_pred: int
    threshold: float
    profile: str
    comparison: str = ">"


def _sequential_mean(parts: list[np.ndarray]) -> float:
    """Mean of the values of ``parts`` (each (n_i,) float64) summed part by part in order, as
    the benchmark's ``MetricSegment.aggregate`` sums them (the last bit follows the order);
    NaN when there are none."""
    total, count = 0.0, 0
    for part in parts:
        total += float(np.sum(part))
        count += part.size
    return total / count if count else float("nan")


@dataclass
class ComponentAccumulator:
    """Pool component counts over images at one score threshold; ``comparison`` as
    :func:`binarise` (``">"`` unless told)."""

    threshold: float
    profile: ComponentProfile
    taus: tuple[float, ...] = TAUS
    comparison: str = ">"
    _siou: list[np.ndarray] = field(default_factory=list)
    _ppv: list[np.ndarray] = field(default_factory=list)

    def add(self, scores: np.ndarray, labels: np.ndarray) -> ImageComponents:
        """Add one image: scores (H, W) float, labels (H, W) uint8 in {0, 1, 255}."""
        comp = image_components(scores, labels, self.threshold, self.profile, self.comparison)
        self._siou.append(comp.siou)
        self._ppv.append(comp.ppv)
        return comp

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise ValueError(f"unknown comparison {self.comparison!r}; known: {', '.join(COMPARISONS)}")

    def result(self) -> ComponentMetrics:
        siou = np.concatenate(self._siou) if self._siou else np.zeros(0)
        ppv = np.concatenate(self._ppv) if self._ppv else np.zeros(0)
        tp, fn, fp, f1 = {}, {}, {}, {}
        for tau in self.taus:
            tp[tau] = int(np.count_nonzero(siou >= tau))
            fn[tau] = int(np.count_nonzero(siou < tau))
            fp[tau] = int(np.count_nonzero(ppv < tau))
            denom = 2 * tp[tau] + fn[tau] + fp[tau]
            f1[tau] = 2 * tp[tau] / denom if denom else float("nan")
        vals = [v for v in f1.values() if not np.isnan(v)]
        return ComponentMetrics(
            siou=_sequential_mean(self._siou), ppv=_sequential_mean(self._ppv),
            f1_star=_sequential_mean([np.array([v]) for v in vals]),
            f1_by_tau=f1, tp=tp, fn=fn, fp=fp, n_gt=int(siou.size), n_pred=int(ppv.size),
            threshold=float(self.threshold), profile=self.profile.name, comparison=self.comparison)
