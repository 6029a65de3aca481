"""Anomaly instances: the 8-connected blobs of a thresholded score map.

* :func:`anomaly_instances` -- the per-frame detections the video tracker consumes, optionally
  with boxes refined below the map's grid (``upsample``) and fragments a ``gap`` apart joined.
* :func:`weak_instances` -- the blobs between a lower threshold and the threshold: the
  low-score detections the tracker uses only to keep an established object.
* :func:`scored_instance` -- any region (a mined unknown instance of
  :mod:`m2a_pipe.inference.panoptic`) scored as a blob is.
* :func:`components` -- the connected components both build on.

Host-side and torch-free (numpy/scipy): the video layer uses it without the model stack.
Boxes are ``(x0, y0, x1, y1)`` in pixels with **exclusive** ``x1, y1`` (slice bounds: width is
``x1 - x0``); each instance keeps a boolean mask cropped to its box.

Refinement: a component is found on the map's grid (1/4 of the network input by default, so one
cell is several source pixels and a small object's box can be off by a cell on each side). With
``upsample = k > 1`` the map is interpolated bilinearly (cell values sit at cell centres) on a grid
``k`` times finer inside the component's box grown by one cell, thresholded there, and the extent
of the fine pixels that pass (in cells the component owns or no component owns) is the instance's
:attr:`Instance.fine_bbox`, in map pixels as floats. For a map that is the area fraction of an
object in each cell (a perfect detector seen at 1/4), this puts each edge within about 0.2 cell of
the true one instead of up to one cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Instance:
    """One 8-connected anomalous region of a score map.

    ``bbox`` is (x0, y0, x1, y1), x1/y1 exclusive; ``mask`` is (y1-y0, x1-x0) bool, the
    region inside its box; ``centroid`` is (x, y), the mean pixel index; ``peak_score`` and
    ``mean_score`` are the max and mean of the score map over the region. ``fine_bbox`` is the
    box refined below the grid (module docstring), (x0, y0, x1, y1) floats in map pixels, or None
    when not refined; :attr:`box` is the best box there is.
    """

    bbox: tuple[int, int, int, int]
    area: int
    peak_score: float
    mean_score: float
    centroid: tuple[float, float]
    mask: np.ndarray
    fine_bbox: tuple[float, float, float, float] | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) float map pixels: :attr:`fine_bbox` when refined, else :attr:`bbox`."""
        return self.fine_bbox if self.fine_bbox is not None else tuple(float(v) for v in self.bbox)


class Region(Protocol):
    """Anything with a box and the bool mask inside it (an :class:`Instance`, a mined unknown
    instance)."""

    bbox: tuple[int, int, int, int]
    mask: np.ndarray


def full_mask(inst: Region, shape: tuple[int, int]) -> np.ndarray:
    """The instance's (H, W) bool mask in a frame of ``shape``."""
    out = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = inst.bbox
    out[y0:y1, x0:x1] = inst.mask
    return out


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array of ``x`` (a torch tensor is copied to the host)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def component_labels(binary: np.ndarray, gap: int = 0) -> tuple[np.ndarray, int]:
    """(H, W) int32 labels (0 = background) and their count of the 8-connected components of
    ``binary`` (H, W) bool closed by ``gap`` pixels (dilated ``gap`` times, then eroded as many,
    the frame's edge not eroding): pixels up to about ``2 * gap`` background pixels apart, and the
    gaps between them, are one component (a speckled response on a textured object)."""
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    if gap > 0 and rows.size:  # close only around the pixels that are set
        y0, y1 = max(rows[0] - 2 * gap, 0), rows[-1] + 2 * gap + 1
        x0, x1 = max(cols[0] - 2 * gap, 0), cols[-1] + 2 * gap + 1
        part = binary[y0:y1, x0:x1]
        grown = ndimage.binary_dilation(part, _EIGHT_CONNECTED, iterations=gap)
        binary = binary.copy()
        binary[y0:y1, x0:x1] |= ndimage.binary_erosion(grown, _EIGHT_CONNECTED, iterations=gap, border_value=1)
    return ndimage.label(binary, structure=_EIGHT_CONNECTED)


def components(binary: np.ndarray, min_area: int, gap: int = 0):
    """Yield (bbox, local bool mask, slices) of the components of ``binary`` (see
    :func:`component_labels`) with at least ``min_area`` pixels, in label (raster-scan) order."""
    labels, n = component_labels(binary, gap)
    if n == 0:
        return
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or areas[i] < min_area:
            continue
        local = labels[sl] == i
        bbox = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        yield bbox, local, sl


def refined_box(scores: np.ndarray, labels: np.ndarray, label: int, bbox: tuple[int, int, int, int],
                threshold: float, upsample: int) -> tuple[float, float, float, float] | None:
    """The box of component ``label`` refined on a grid ``upsample`` times finer (module docstring).

    ``scores`` (H, W) float and ``labels`` (H, W) int of the map; ``bbox`` the component's grid
    box. Returns (x0, y0, x1, y1) float map pixels, or None when no fine pixel passes.
    """
    height, width = scores.shape
    x0, y0 = max(bbox[0] - 1, 0), max(bbox[1] - 1, 0)
    x1, y1 = min(bbox[2] + 1, width), min(bbox[3] + 1, height)
    fx = x0 + (np.arange((x1 - x0) * upsample) + 0.5) / upsample  # fine pixel centres, map units
    fy = y0 + (np.arange((y1 - y0) * upsample) + 0.5) / upsample
    cx0, cy0 = max(x0 - 1, 0), max(y0 - 1, 0)  # the cells the interpolation reads
    crop = scores[cy0:min(y1 + 1, height), cx0:min(x1 + 1, width)].astype(np.float64)
    crop = np.nan_to_num(crop, nan=-1e30, neginf=-1e30)  # NaN never passes
    (iy, ty), (ix, tx) = _linear_taps(fy - 0.5 - cy0, crop.shape[0]), _linear_taps(fx - 0.5 - cx0, crop.shape[1])
    rows = crop[iy] * (1 - ty)[:, None] + crop[np.minimum(iy + 1, crop.shape[0] - 1)] * ty[:, None]
    fine = rows[:, ix] * (1 - tx) + rows[:, np.minimum(ix + 1, crop.shape[1] - 1)] * tx  # bilinear
    owner = labels[np.floor(fy).astype(int)][:, np.floor(fx).astype(int)]
    keep = (fine >= threshold) & ((owner == label) | (owner == 0))
    if not keep.any():
        return None
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    return (float(x0 + cols[0] / upsample), float(y0 + rows[0] / upsample),
            float(x0 + (cols[-1] + 1) / upsample), float(y0 + (rows[-1] + 1) / upsample))


def _linear_taps(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation at ``positions`` (P,) float array coordinates of a length-``size``
    axis (edge values held beyond it): the (P,) int lower index and (P,) float weight of the next."""
    pos = np.clip(positions, 0, size - 1)
    lo = np.floor(pos).astype(int)
    return lo, pos - lo


def anomaly_instances(score_map: np.ndarray, threshold: float, min_area: int = 1, *,
                      upsample: int = 1, gap: int = 0, support_threshold: float | None = None) -> list[Instance]:
    """8-connected components of ``score_map >= threshold`` with at least ``min_area`` pixels.

    Host-side. Args: ``score_map`` (H, W) float (numpy, or a tensor that is copied to the
    host), typically a 1/4-resolution anomaly map; ``upsample`` >= 2 also sets each instance's
    ``fine_bbox`` (module docstring); ``gap``: the binary map is closed by ``gap`` cells first
    (:func:`component_labels`: the fragments of one object are one instance, mask included);
    ``support_threshold`` (<= ``threshold``): a
    component's size, for ``min_area``, is that of its *support*, the component of
    ``score_map >= support_threshold`` that holds it (hysteresis: a small object the model
    scores high only at its core keeps the extent of its softer rim; box, mask and ``area``
    stay those at ``threshold``, so a caller can tell such instances by ``area < min_area``).
    Returns instances in raster-scan order of their first pixel; NaN scores
    never pass the threshold.
    """
    scores = to_numpy(score_map)
    if scores.ndim != 2:
        raise ValueError(f"score_map must be (H, W), got {scores.shape}")
    if upsample < 1 or gap < 0:
        raise ValueError(f"need upsample >= 1 and gap >= 0, got {upsample}, {gap}")
    labels, n = component_labels(scores >= threshold, gap)
    if support_threshold is not None and support_threshold < threshold and n:
        support, n_support = component_labels(scores >= support_threshold, gap)
        support_area = np.bincount(support.ravel(), minlength=n_support + 1)
        sizes = np.zeros(n + 1, np.int64)
        sizes[labels.ravel()] = support_area[support.ravel()]  # each component's support's size
    else:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
    out = []
    for label, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sizes[label] < min_area:
            continue
        local = labels[sl] == label
        bbox = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        fine = refined_box(scores, labels, label, bbox, threshold, upsample) if upsample > 1 else None
        out.append(_instance(scores, bbox, local, sl, fine))
    return out


def weak_instances(score_map: np.ndarray, low_threshold: float, threshold: float, min_area: int = 1, *,
                   upsample: int = 1) -> list[Instance]:
    """Components of ``score_map >= low_threshold`` (H, W) float with no pixel >= ``threshold``
    and at least ``min_area`` pixels: the blobs the model is unsure of, in raster-scan order
    (``upsample`` as in :func:`anomaly_instances`, at ``low_threshold``)."""
    scores = to_numpy(score_map)
    weak = scores >= low_threshold
    if not weak.any() or (scores[weak] >= threshold).all():
        return []
    return [inst for inst in anomaly_instances(scores, low_threshold, min_area, upsample=upsample)
            if inst.peak_score < threshold]


def _instance(scores: np.ndarray, bbox, local: np.ndarray, sl, fine_bbox) -> Instance:
    vals = scores[sl][local]
    ys, xs = np.nonzero(local)
    return Instance(bbox=tuple(int(v) for v in bbox), area=int(local.sum()), peak_score=float(vals.max()),
                    mean_score=float(vals.mean()), centroid=(float(xs.mean() + bbox[0]), float(ys.mean() + bbox[1])),
                    mask=local, fine_bbox=fine_bbox)


def merged_instance(parts: Sequence[Instance]) -> Instance:
    """One instance of several (the fragments of one object): union box and mask, summed area,
    max peak, area-weighted mean score and centroid, union of the fine boxes."""
    if len(parts) == 1:
        return parts[0]
    x0, y0 = min(p.bbox[0] for p in parts), min(p.bbox[1] for p in parts)
    x1, y1 = max(p.bbox[2] for p in parts), max(p.bbox[3] for p in parts)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for p in parts:
        mask[p.bbox[1] - y0:p.bbox[3] - y0, p.bbox[0] - x0:p.bbox[2] - x0] |= p.mask
    boxes = np.array([p.box for p in parts])
    area = sum(p.area for p in parts)
    weights = np.array([p.area for p in parts], dtype=np.float64) / max(area, 1)
    centroid = tuple(float(v) for v in weights @ np.array([p.centroid for p in parts]))
    return Instance(bbox=(x0, y0, x1, y1), area=int(mask.sum()), peak_score=max(p.peak_score for p in parts),
                    mean_score=float(weights @ np.array([p.mean_score for p in parts])), centroid=centroid,
                    mask=mask, fine_bbox=(float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                                          float(boxes[:, 2].max()), float(boxes[:, 3].max())))


def scored_instance(region: Region, score_map: np.ndarray) -> Instance:
    """An :class:`Instance` of ``region`` (its box and mask) scored on ``score_map`` (H, W)
    float, as :func:`anomaly_instances` scores a component: how mined unknown instances are
    tracked and ranked like the components."""
    x0, y0, x1, y1 = region.bbox
    vals = np.asarray(score_map)[y0:y1, x0:x1][region.mask]
    ys, xs = np.nonzero(region.mask)
    return Instance(bbox=region.bbox, area=int(region.mask.sum()), peak_score=float(vals.max()),
                    mean_score=float(vals.mean()), centroid=(float(xs.mean() + x0), float(ys.mean() + y0)),
                    mask=region.mask)
