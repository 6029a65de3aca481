"""Test-time preprocessing of the official Mask2Anomaly models.

The official path (detectron2 ``DefaultPredictor`` + ``MaskFormer.forward``) does, in order:

1. resize the RGB uint8 frame so its short side is 1024 and its long side at most 2048
   (``ResizeShortestEdge``), with **Pillow bilinear on uint8** -- rounded back to uint8;
2. convert to float32 CHW and normalise, ``(x - pixel_mean) / pixel_std`` on 0..255 values;
3. zero-pad bottom and right to a multiple of 32, *after* normalisation.

Step 1 is host-side (numpy/Pillow, bit-exact with the official resize); steps 2-3 are
torch and run on whatever device the batch lives on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def shortest_edge_size(h: int, w: int, short_edge: int = 1024, max_size: int = 2048) -> tuple[int, int]:
    """Output size ``(new_h, new_w)`` of detectron2 ``ResizeShortestEdge.get_output_shape``.

    The short side is scaled to ``short_edge``; if the long side then exceeds ``max_size``
    both are scaled down again so the long side equals ``max_size``; each side is finally
    rounded half up (``int(x + 0.5)``).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    scale = short_edge / min(h, w)
    if h < w:
        new_h, new_w = float(short_edge), scale * w
    else:
        new_h, new_w = scale * h, float(short_edge)
    if max(new_h, new_w) > max_size:
        s = max_size / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 RGB image to ``size = (h, w)`` with Pillow bilinear.

    Host-side. Bit-exact with the official predictor's resize (detectron2 ``ResizeTransform``
    on uint8 uses ``Image.fromarray(img).resize((w, h), Image.BILINEAR)``). Returns the input
    object itself when it already has the requested size.

    Returns: (h, w, 3) uint8.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR)
    return np.asarray(resized)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 numpy image -> (3, H, W) uint8 torch tensor (a contiguous copy)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3), got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def padded_size(h: int, w: int, divisibility: int) -> tuple[int, int]:
    """(h, w) rounded up to multiples of ``divisibility`` (unchanged when it is 0 or 1)."""
    if divisibility <= 1:
        return h, w
    return -(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility


def normalize_and_pad(images: torch.Tensor, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                      size_divisibility: int = 32) -> torch.Tensor:
    """Normalise a batch and zero-pad it to a multiple of ``size_divisibility``.

    Args:
        images: (B, 3, H, W) RGB, uint8 or float with values 0..255, any device.
        pixel_mean, pixel_std: per-channel RGB statistics on the 0..255 scale.
        size_divisibility: pad bottom/right so H and W become multiples of it.

    Returns: (B, 3, Hp, Wp) float32 on the input's device: ``(x - mean) / std`` computed in
    float32, then padded with 0 (the pad is applied after normalisation, as the official
    ``ImageList.from_tensors`` does).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W), got {tuple(images.shape)}")
    x = images.to(torch.float32)
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    hp, wp = padded_size(h, w, size_divisibility)
    if (hp, wp) != (h, w):
        x = F.pad(x, (0, wp - w, 0, hp - h), value=0.0)
    return x
