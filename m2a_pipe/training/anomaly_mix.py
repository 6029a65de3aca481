"""AnomalyMix (Sec. 4.3 / 7.3): paste an outlier object cut from auxiliary data onto a
training image and record where it went in the binary outlier mask ``M_OOD``.

The pasted pixels are exactly the pixels of the (resized, possibly flipped) cut-out mask
inside the image: the image takes the cut-out's colours there, ``M_OOD`` becomes 1 and the
closed-set labels become void (the object belongs to no known class).

A hard paste leaves a seam no camera makes: a one-pixel step from the object to the scene,
where a real edge is as soft as the lens and sensor make the rest of the image. With
``edge_sigma`` > 0 the object layer is composited with a Gaussian-feathered edge instead:
``I' = G(o * F) + (1 - G(o)) * I`` (``o`` the object mask, ``F`` its colours, ``G`` a
Gaussian blur of a sigma drawn from ``edge_sigma``), i.e. the paste is rendered and then
blurred across its edge. ``M_OOD`` and the labels stay the binary mask, as in the paper.

Two placements (``AnomalyMixConfig.placement``):

* ``"image"`` -- the official mapper: each training image, with probability ``probability``
  (0.2), receives one object drawn from the whole outlier set, pasted at its native size at a
  uniformly random place on the full frame *before* the resize, crop, colour jitter and flip
  (:func:`paste_native`); an object larger than the frame is scaled down to fit (the official
  code fails on one);
* ``"batch"`` -- the project's earlier reading of Table V(e): a batch is an outlier batch with
  probability ``probability``, and each of its images, *after* augmentation, receives
  ``objects_per_image`` objects scaled to ``height_range`` of the crop height, optionally
  flipped and feathered (:func:`paste_outlier`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

IGNORE = 255


PLACEMENTS = ("image", "batch")


@dataclass(frozen=True)
class AnomalyMixConfig:
    """``placement``: ``"image"`` (official) or ``"batch"`` (module docstring);
    ``probability``: chance that an image (``"image"``) or a batch (``"batch"``) receives
    outliers. For ``"batch"`` only: ``height_range``, pasted object height as a fraction of
    the crop height; ``objects_per_image``; ``flip``; ``edge_sigma``, the (low, high) range of
    the edge feathering's Gaussian sigma in pixels, drawn per object ((0, 0) = a hard paste)."""

    placement: str = "image"
    probability: float = 0.2
    height_range: tuple[float, float] = (0.08, 0.4)
    objects_per_image: int = 1
    flip: bool = True
    edge_sigma: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"anomaly_mix.placement must be one of {PLACEMENTS}, got {self.placement!r}")
        lo, hi = self.edge_sigma
        if not 0 <= lo <= hi:
            raise ValueError(f"anomaly_mix.edge_sigma {list(self.edge_sigma)}: need 0 <= low <= high")

    @classmethod
    def from_dict(cls, d: dict) -> "AnomalyMixConfig":
        d = dict(d)
        for key in ("height_range", "edge_sigma"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def resize_cutout(rgb: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a cut-out to ``size`` (h, w): colours bilinear, mask nearest."""
    h, w = size
    rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) >= 128
    return rgb, mask


def paste_outlier(image: np.ndarray, labels: dict[str, np.ndarray], ood: np.ndarray,
                  rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  cfg: AnomalyMixConfig, label_void: dict[str, int] | None = None) -> np.ndarray:
    """Paste one cut-out in place.

    Args:
        image: (H, W, 3) uint8, modified in place.
        labels: name -> (H, W) label maps, set to their void value (``label_void``, default
            255) under the object, in place.
        ood: (H, W) uint8 outlier mask, set to 1 under the object, in place.
        rgb, mask: the cut-out, (h, w, 3) uint8 and (h, w) bool.
        rng: decides size, flip and position.

    Returns: (H, W) bool, the pasted pixels.
    """
    big_h, big_w = image.shape[:2]
    frac = rng.uniform(*cfg.height_range)
    scale = frac * big_h / rgb.shape[0]
    scale = min(scale, big_w / rgb.shape[1], big_h / rgb.shape[0])
    h = max(1, int(round(rgb.shape[0] * scale)))
    w = max(1, int(round(rgb.shape[1] * scale)))
    rgb, obj = resize_cutout(rgb, mask, (h, w))
    if cfg.flip and rng.random() < 0.5:
        rgb, obj = rgb[:, ::-1], obj[:, ::-1]
    return _place(image, labels, ood, rgb, obj, rng, label_void,
                  tuple(cfg.edge_sigma) if cfg.edge_sigma[1] > 0 else None)


def _place(image: np.ndarray, labels: dict[str, np.ndarray], ood: np.ndarray, rgb: np.ndarray,
           mask: np.ndarray, rng: np.random.Generator, label_void: dict[str, int] | None,
           edge_sigma: tuple[float, float] | None = None) -> np.ndarray:
    """Put the (h, w) cut-out at a uniformly random place of ``image`` (its edge feathered with
    a sigma drawn from the ``edge_sigma`` range after the place, else hard), mark it in ``ood``
    and void it in ``labels``, in place; the (H, W) bool pasted pixels."""
    big_h, big_w = image.shape[:2]
    h, w = mask.shape
    y = int(rng.integers(0, big_h - h + 1))
    x = int(rng.integers(0, big_w - w + 1))
    pasted = np.zeros((big_h, big_w), dtype=bool)
    pasted[y:y + h, x:x + w] = mask
    if edge_sigma is not None:
        _feathered_paste(image, rgb, mask, y, x, float(rng.uniform(*edge_sigma)))
    else:
        image[pasted] = rgb[mask]
    ood[pasted] = 1
    voids = label_void or {}
    for name, label in labels.items():
        label[pasted] = voids.get(name, IGNORE)
    return pasted


def paste_native(image: np.ndarray, labels: dict[str, np.ndarray], ood: np.ndarray,
                 rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 label_void: dict[str, int] | None = None) -> np.ndarray:
    """Paste one cut-out at its native size at a uniformly random place (official placement).

    Args: as :func:`paste_outlier` (``image`` the full frame before augmentation). A cut-out
    larger than the frame is first scaled down to fit it.

    Returns: (H, W) bool, the pasted pixels.
    """
    big_h, big_w = image.shape[:2]
    scale = min(1.0, big_h / rgb.shape[0], big_w / rgb.shape[1])
    if scale < 1.0:
        rgb, mask = resize_cutout(rgb, mask, (max(1, int(rgb.shape[0] * scale)), max(1, int(rgb.shape[1] * scale))))
    return _place(image, labels, ood, rgb, mask, rng, label_void)


def _feathered_paste(image: np.ndarray, rgb: np.ndarray, obj: np.ndarray, y: int, x: int, sigma: float) -> None:
    """Composite ``rgb`` under mask ``obj`` at (y, x) onto ``image`` with an edge blurred by a
    Gaussian of ``sigma`` px: ``G(o * F) + (1 - G(o)) * I`` over the object's box grown by 3 sigma."""
    pad = int(np.ceil(3 * sigma))
    o = np.pad(obj.astype(np.float32), pad)
    layer = np.pad(rgb.astype(np.float32) * obj[..., None], ((pad, pad), (pad, pad), (0, 0)))
    k = 2 * pad + 1
    cover = cv2.GaussianBlur(o, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    layer = cv2.GaussianBlur(layer, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    # the padded box in image coordinates, clipped to the image
    y0, x0 = y - pad, x - pad
    iy0, ix0 = max(y0, 0), max(x0, 0)
    iy1, ix1 = min(y0 + o.shape[0], image.shape[0]), min(x0 + o.shape[1], image.shape[1])
    sl = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    region = image[iy0:iy1, ix0:ix1].astype(np.float32)
    out = layer[sl] + (1 - cover[sl])[..., None] * region
    image[iy0:iy1, ix0:ix1] = np.clip(np.rint(out), 0, 255).astype(np.uint8)


def is_outlier_batch(rng: np.random.Generator, cfg: AnomalyMixConfig) -> bool:
    """Draw whether this batch receives outliers (probability ``cfg.probability``)."""
    return bool(rng.random() < cfg.probability)
