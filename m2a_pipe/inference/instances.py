"""Anomaly instances: the 8-connected blobs of a thresholded score map.

* :func:`anomaly_instances` -- the per-frame detections the video tracker consumes.
* :func:`scored_instance` -- any region (a mined unknown instance of
  :mod:`m2a_pipe.inference.panoptic`) scored as a blob is.
* :func:`components` -- the connected components both build on.

Host-side and torch-free (numpy/scipy): the video layer uses it without the model stack.
Boxes are ``(x0, y0, x1, y1)`` in pixels with **exclusive** ``x1, y1`` (slice bounds: width is
``x1 - x0``); each instance keeps a boolean mask cropped to its box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Instance:
    """One 8-connected anomalous region of a score map.

    ``bbox`` is (x0, y0, x1, y1), x1/y1 exclusive; ``mask`` is (y1-y0, x1-x0) bool, the
    region inside its box; ``centroid`` is (x, y), the mean pixel index; ``peak_score`` and
    ``mean_score`` are the max and mean of the score map over the region.
    """

    bbox: tuple[int, int, int, int]
    area: int
    peak_score: float
    mean_score: float
    centroid: tuple[float, float]
    mask: np.ndarray


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


def components(binary: np.ndarray, min_area: int):
    """Yield (bbox, local bool mask, slices) of the 8-connected components of ``binary``
    with at least ``min_area`` pixels, in label (raster-scan) order."""
    labels, n = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    if n == 0:
        return
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or areas[i] < min_area:
            continue
        local = labels[sl] == i
        bbox = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        yield bbox, local, sl


def anomaly_instances(score_map: np.ndarray, threshold: float,
                      min_area: int = 1) -> list[Instance]:
    """8-connected components of ``score_map >= threshold`` with at least ``min_area`` pixels.

    Host-side. Args: ``score_map`` (H, W) float (numpy, or a tensor that is copied to the
    host), typically a 1/4-resolution anomaly map. Returns instances in raster-scan order of
    their first pixel; NaN scores never pass the threshold.
    """
    scores = to_numpy(score_map)
    if scores.ndim != 2:
        raise ValueError(f"score_map must be (H, W), got {scores.shape}")
    out = []
    for bbox, local, sl in components(scores >= threshold, min_area):
        vals = scores[sl][local]
        ys, xs = np.nonzero(local)
        out.append(Instance(
            bbox=tuple(int(v) for v in bbox),
            area=int(local.sum()),
            peak_score=float(vals.max()),
            mean_score=float(vals.mean()),
            centroid=(float(xs.mean() + bbox[0]), float(ys.mean() + bbox[1])),
            mask=local,
        ))
    return out


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
