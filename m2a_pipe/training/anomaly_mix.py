"""AnomalyMix (Sec. 4.3 / 7.3): paste an outlier object cut from auxiliary data onto a
training image and record where it went in the binary outlier mask ``M_OOD``.

The pasted pixels are exactly the pixels of the (resized, possibly flipped) cut-out mask
inside the image: the image takes the cut-out's colours there, ``M_OOD`` becomes 1 and the
closed-set labels become void (the object belongs to no known class).

In stage 2 a batch is an outlier batch with probability 0.2 (Table V(e)); every image of
an outlier batch receives ``objects_per_image`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

IGNORE = 255


@dataclass(frozen=True)
class AnomalyMixConfig:
    """``probability``: chance that a batch is an outlier batch; ``height_range``: pasted
    object height as a fraction of the image height; ``objects_per_image``; ``flip``."""

    probability: float = 0.2
    height_range: tuple[float, float] = (0.08, 0.4)
    objects_per_image: int = 1
    flip: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "AnomalyMixConfig":
        d = dict(d)
        if "height_range" in d:
            d["height_range"] = tuple(d["height_range"])
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
    y = int(rng.integers(0, big_h - h + 1))
    x = int(rng.integers(0, big_w - w + 1))
    pasted = np.zeros((big_h, big_w), dtype=bool)
    pasted[y:y + h, x:x + w] = obj
    image[pasted] = rgb[obj]
    ood[pasted] = 1
    voids = label_void or {}
    for name, label in labels.items():
        label[pasted] = voids.get(name, IGNORE)
    return pasted


def is_outlier_batch(rng: np.random.Generator, cfg: AnomalyMixConfig) -> bool:
    """Draw whether this batch receives outliers (probability ``cfg.probability``)."""
    return bool(rng.random() < cfg.probability)
