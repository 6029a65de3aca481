"""Training augmentation: a random rescale, a crop, colour jitter and horizontal flip.

Every random decision is drawn from a ``numpy.random.Generator`` made by :func:`rng_for`
from integers such as (seed, epoch, index): the same keys give the same sample, whatever
the process, worker or order it is made in.

Two rescales (``AugmentConfig.resize``):

* ``"shortest_edge"`` -- the official Mask2Anomaly pipeline (detectron2 ``ResizeShortestEdge``
  with "choice" sampling + ``RandomCrop`` "absolute"): the shorter side is set to one of
  ``short_edges`` (the longer side capped at ``max_size``), then a ``crop`` window is cut at a
  random place inside the image (smaller where the image is smaller; never padded here -- the
  batch pads to its largest image);
* ``"box"`` -- large-scale jitter as detectron2's ``ResizeScale`` + ``FixedSizeCrop`` (the
  paper's "scale 0.1-2.0" read this way): the image is scaled to fit a ``r * crop`` box
  (``r ~ U(min_scale, max_scale)``), a random ``crop`` window is cut where it is larger and the
  bottom/right is padded where it is smaller -- the image with the mean colour, labels with 255.

Colour: with ``hue_delta`` > 0 the SSD photometric distortion of the official pipeline
(detectron2 ``ColorAugSSDTransform``: brightness, then contrast first or last, saturation and
hue in HSV, each with p = 0.5); with ``hue_delta`` = 0 the project's jitter without hue.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from m2a_pipe.config import PIXEL_MEAN_RGB

IGNORE = 255
PAD_RGB = tuple(int(round(v)) for v in PIXEL_MEAN_RGB)


def rng_for(*keys: int) -> np.random.Generator:
    """A numpy generator determined by the integer ``keys`` (e.g. seed, epoch, index)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])))


OFFICIAL_SHORT_EDGES = tuple(int(x * 0.1 * 1024) for x in range(5, 21))
"""INPUT.MIN_SIZE_TRAIN of the official Cityscapes configs: 512, 614, ..., 2048."""
RESIZES = ("shortest_edge", "box")


@dataclass(frozen=True)
class AugmentConfig:
    """``crop``: (h, w) crop size; ``resize``: ``"shortest_edge"`` (official; ``short_edges``,
    ``max_size``) or ``"box"`` (``min_scale``/``max_scale``, see the module docstring);
    ``flip``: horizontal flip with probability 0.5; ``color``: photometric jitter, with hue
    when ``hue_delta`` > 0 (official 18)."""

    crop: tuple[int, int] = (380, 760)
    resize: str = "shortest_edge"
    short_edges: tuple[int, ...] = OFFICIAL_SHORT_EDGES
    max_size: int = 4096
    min_scale: float = 0.1
    max_scale: float = 2.0
    flip: bool = True
    color: bool = True
    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ValueError(f"augment.resize must be one of {RESIZES}, got {self.resize!r}")
        if self.resize == "shortest_edge" and not self.short_edges:
            raise ValueError("augment.short_edges must list at least one size")

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        d = dict(d)
        for key in ("crop", "contrast_range", "saturation_range", "short_edges"):
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


def ssd_color_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """SSD photometric distortion with hue (the official ``ColorAugSSDTransform``), on RGB.

    Brightness (+U(-d, d)), then -- in a random order, contrast first or last -- contrast
    (x U(range)), saturation (HSV S x U(range)) and hue (HSV H + randint(-hue_delta,
    hue_delta) mod 180); each step applied with p = 0.5, rounding to uint8 after each.
    """
    def scaled(x, alpha=1.0, beta=0.0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def contrast(x):
        return scaled(x, alpha=rng.uniform(*cfg.contrast_range)) if rng.random() < 0.5 else x

    x = image
    if rng.random() < 0.5:
        x = scaled(x, beta=rng.uniform(-cfg.brightness_delta, cfg.brightness_delta))
    contrast_first = rng.random() < 0.5
    if contrast_first:
        x = contrast(x)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = scaled(hsv[..., 1], alpha=rng.uniform(*cfg.saturation_range))
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        shift = int(rng.integers(-cfg.hue_delta, cfg.hue_delta + 1))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        x = contrast(x)
    return np.ascontiguousarray(x)


def rescaled_size(h: int, w: int, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[int, int]:
    """The (h, w) an (h, w) image is resized to before the crop (:data:`RESIZES`)."""
    if cfg.resize == "shortest_edge":
        short = cfg.short_edges[int(rng.integers(len(cfg.short_edges)))]
        scale = short / min(h, w)
        if max(h, w) * scale > cfg.max_size:
            scale = cfg.max_size / max(h, w)
    else:
        r = rng.uniform(cfg.min_scale, cfg.max_scale)
        scale = min(r * cfg.crop[0] / h, r * cfg.crop[1] / w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


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
    """Rescale, crop, colour-jitter, flip (and, with ``resize="box"``, pad) one sample.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: name -> (H, W) integer maps aligned with the image (semantic, outlier mask,
            segment ids ...), transformed with nearest-neighbour resampling.
        rng: the sample's generator (:func:`rng_for`).
        cfg: :class:`AugmentConfig`.
        label_pad: pad value per label name (default 255).

    Returns: ``(image (h, w, 3) uint8, {name: (h, w)})``: (h, w) = ``crop`` with
    ``resize="box"``, at most ``crop`` with ``"shortest_edge"``.
    """
    ch, cw = cfg.crop
    h, w = image.shape[:2]
    nh, nw = rescaled_size(h, w, rng, cfg)
    image = resize_image(image, (nh, nw))
    labels = {k: resize_label(v, (nh, nw)) for k, v in labels.items()}
    y0 = int(rng.integers(0, nh - ch + 1)) if nh > ch else 0
    x0 = int(rng.integers(0, nw - cw + 1)) if nw > cw else 0
    image = image[y0:y0 + ch, x0:x0 + cw]
    labels = {k: v[y0:y0 + ch, x0:x0 + cw] for k, v in labels.items()}
    if cfg.color:
        image = ssd_color_jitter(image, rng, cfg) if cfg.hue_delta > 0 else color_jitter(image, rng, cfg)
    if cfg.flip and rng.random() < 0.5:
        image = image[:, ::-1]
        labels = {k: v[:, ::-1] for k, v in labels.items()}
    if cfg.resize == "shortest_edge":
        return np.ascontiguousarray(image), {k: np.ascontiguousarray(v) for k, v in labels.items()}
    pads = label_pad or {}
    image = np.ascontiguousarray(pad_to(image, (ch, cw), PAD_RGB))
    labels = {k: np.ascontiguousarray(pad_to(v, (ch, cw), pads.get(k, IGNORE))) for k, v in labels.items()}
    return image, labels
