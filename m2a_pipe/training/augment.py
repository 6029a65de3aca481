"""Training augmentation (Sec. 7.3): large-scale jitter with a random scale in [0.1, 2.0],
a fixed-size crop padded with ignore, colour jitter and horizontal flip.

Every random decision is drawn from a ``numpy.random.Generator`` made by :func:`rng_for`
from integers such as (seed, epoch, index): the same keys give the same sample, whatever
the process, worker or order it is made in.

Large-scale jitter follows detectron2's ``ResizeScale`` + ``FixedSizeCrop``: the image is
scaled so that it fits a ``r * crop`` box (``r ~ U(min_scale, max_scale)``), then a random
``crop`` window is cut where it is larger and the bottom/right is padded where it is
smaller -- the image with the mean colour (0 after normalisation), labels with 255.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from m2a_pipe.config import PIXEL_MEAN_RGB

IGNORE = 255
PAD_RGB = tuple(int(round(v)) for v in PIXEL_MEAN_RGB)


def rng_for(*keys: int) -> np.random.Generator:
    """A numpy generator determined by the integer ``keys`` (e.g. seed, epoch, index)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])))


@dataclass(frozen=True)
class AugmentConfig:
    """``crop``: (h, w) output size; ``min_scale``/``max_scale``: the jitter range;
    ``flip``: horizontal flip with probability 0.5; ``color``: photometric jitter."""

    crop: tuple[int, int] = (380, 760)
    min_scale: float = 0.1
    max_scale: float = 2.0
    flip: bool = True
    color: bool = True
    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        d = dict(d)
        for key in ("crop", "contrast_range", "saturation_range"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3), Pillow bilinear."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) integer label -> (h, w), nearest neighbour (dtype kept)."""
    if label.shape[:2] == tuple(size):
        return label
    if label.dtype == np.uint8:
        return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))
    im = Image.fromarray(label.astype(np.int32), mode="I")
    return np.asarray(im.resize((size[1], size[0]), Image.NEAREST)).astype(label.dtype)


def color_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """SSD-style photometric jitter: brightness, contrast, saturation, each with p = 0.5."""
    x = image.astype(np.float32)
    if rng.random() < 0.5:
        x += rng.uniform(-cfg.brightness_delta, cfg.brightness_delta)
    if rng.random() < 0.5:
        x *= rng.uniform(*cfg.contrast_range)
    if rng.random() < 0.5:
        gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        alpha = rng.uniform(*cfg.saturation_range)
        x = gray[..., None] + alpha * (x - gray[..., None])
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def pad_to(array: np.ndarray, size: tuple[int, int], value) -> np.ndarray:
    """Pad bottom/right of an (H, W[, C]) array to ``size`` with ``value``."""
    h, w = array.shape[:2]
    if (h, w) == tuple(size):
        return array
    out = np.empty((size[0], size[1]) + array.shape[2:], dtype=array.dtype)
    out[...] = np.asarray(value, dtype=array.dtype)
    out[:h, :w] = array
    return out


def augment(image: np.ndarray, labels: dict[str, np.ndarray], rng: np.random.Generator,
            cfg: AugmentConfig, label_pad: dict[str, int] | None = None
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scale-jitter, crop, colour-jitter, flip and pad one sample.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: name -> (H, W) integer maps aligned with the image (semantic, outlier mask,
            segment ids ...), transformed with nearest-neighbour resampling.
        rng: the sample's generator (:func:`rng_for`).
        cfg: :class:`AugmentConfig`.
        label_pad: pad value per label name (default 255).

    Returns: ``(image (ch, cw, 3) uint8, {name: (ch, cw)})``.
    """
    ch, cw = cfg.crop
    h, w = image.shape[:2]
    r = rng.uniform(cfg.min_scale, cfg.max_scale)
    scale = min(r * ch / h, r * cw / w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    image = resize_image(image, (nh, nw))
    labels = {k: resize_label(v, (nh, nw)) for k, v in labels.items()}
    y0 = int(rng.integers(0, nh - ch + 1)) if nh > ch else 0
    x0 = int(rng.integers(0, nw - cw + 1)) if nw > cw else 0
    image = image[y0:y0 + ch, x0:x0 + cw]
    labels = {k: v[y0:y0 + ch, x0:x0 + cw] for k, v in labels.items()}
    if cfg.color:
        image = color_jitter(image, rng, cfg)
    if cfg.flip and rng.random() < 0.5:
        image = image[:, ::-1]
        labels = {k: v[:, ::-1] for k, v in labels.items()}
    pads = label_pad or {}
    image = np.ascontiguousarray(pad_to(image, (ch, cw), PAD_RGB))
    labels = {k: np.ascontiguousarray(pad_to(v, (ch, cw), pads.get(k, IGNORE))) for k, v in labels.items()}
    return image, labels
