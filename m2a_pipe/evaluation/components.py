"""Component-level anomaly metrics as the SegmentMeIfYouCan benchmark computes them
(Sec. 7.2, Eq. 20-22).

Per image (:func:`image_components`):

1. prediction = ``score > threshold`` (strictly greater, as the benchmark code), set to 0 on
   void pixels; ground truth = ``label == 1``;
2. 8-connected components of both;
3. predicted components with fewer than ``profile.min_pred_size`` pixels are removed (they
   become normal predictions); ground-truth components with fewer than
   ``profile.min_gt_size`` pixels are made void;
4. everything below is counted on the non-void pixels only.

With ``K_hat(k)`` the union of predicted components that touch ground-truth component ``k``
and ``A(k)`` the pixels of ``K_hat(k)`` that lie in *another* ground-truth component:

* sIoU(k) = ``|k & K_hat(k)| / (|k| + |K_hat(k)| - |k & K_hat(k)| - |A(k)|)`` (Eq. 20; the
  adjustment term removes from the union what correctly belongs to other components);
* PPV(k_hat) = ``|k_hat & (ground-truth anomaly)| / |k_hat|`` (Eq. 21);
* at each ``tau`` in {0.25, 0.30, ..., 0.75}: a ground-truth component is a TP when
  ``sIoU >= tau``, else a FN; a predicted component is a FP when ``PPV < tau`` (the benchmark
  code's tie rules; the paper's text writes ``>`` and ``<=``);
* F1(tau) = 2 TP / (2 TP + FN + FP) pooled over the dataset (Eq. 22), F1* = mean over tau;
  mean sIoU over all ground-truth components and mean PPV over all predicted components.

An image without anomalies contributes only its predicted components (all FP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

TAUS = tuple(round(0.25 + 0.05 * i, 2) for i in range(11))
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


def image_components(scores: np.ndarray, labels: np.ndarray, threshold: float,
                     profile: ComponentProfile) -> ImageComponents:
    """sIoU (Eq. 20) and PPV (Eq. 21) of the components of one image.

    Args:
        scores: (H, W) float anomaly scores; labels: (H, W) uint8 in {0, 1, 255}.
        threshold: pixels with ``score > threshold`` are predicted anomalous.
    """
    void = labels == 255
    pred = (np.asarray(scores) > threshold) & ~void
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
    """Dataset component metrics as fractions (Eq. 22): ``f1_by_tau`` maps tau to F1."""

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


@dataclass
class ComponentAccumulator:
    """Pool component counts over images at one score threshold."""

    threshold: float
    profile: ComponentProfile
    taus: tuple[float, ...] = TAUS
    _siou: list[np.ndarray] = field(default_factory=list)
    _ppv: list[np.ndarray] = field(default_factory=list)

    def add(self, scores: np.ndarray, labels: np.ndarray) -> ImageComponents:
        """Add one image: scores (H, W) float, labels (H, W) uint8 in {0, 1, 255}."""
        comp = image_components(scores, labels, self.threshold, self.profile)
        self._siou.append(comp.siou)
        self._ppv.append(comp.ppv)
        return comp

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
            siou=float(siou.mean()) if siou.size else float("nan"),
            ppv=float(ppv.mean()) if ppv.size else float("nan"),
            f1_star=float(np.mean(vals)) if vals else float("nan"),
            f1_by_tau=f1, tp=tp, fn=fn, fp=fp, n_gt=int(siou.size), n_pred=int(ppv.size),
            threshold=float(self.threshold), profile=self.profile.name)
