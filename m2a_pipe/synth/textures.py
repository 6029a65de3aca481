"""Procedural noise shared by every synthetic image: a fixed, periodic texture bank.

The bank is generated once per process from :data:`BANK_SEED` (never from a sample's seed),
so it is identical in every worker; a sample only chooses *where* it reads the bank (offsets,
flips), which keeps rendering deterministic and cheap (no per-pixel random draws).

Bank layers (all periodic ``BANK_SIZE x BANK_SIZE`` float32, zero mean, unit std):

=========  ===================================================================
``SMOOTH``  large blotches (clouds, dirt, camouflage, fur patches)
``MEDIUM``  mid-frequency grain (asphalt, foliage, plaster)
``FINE``    pixel-level grain (sensor noise, fine material texture)
``STREAK``  horizontally stretched noise (wood grain, fur direction)
=========  ===================================================================
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

BANK_SEED = 20240531
BANK_SIZE = 512
SMOOTH, MEDIUM, FINE, STREAK = 0, 1, 2, 3


def _periodic_octave(rng: np.random.Generator, cells: tuple[int, int], size: int) -> np.ndarray:
    """Value noise with ``cells`` random values per period, tiled so the result wraps seamlessly."""
    grid = rng.standard_normal(cells).astype(np.float32)
    tiled = np.tile(grid, (3, 3))
    big = cv2.resize(tiled, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
    return big[size:2 * size, size:2 * size]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    return (x / (x.std() + 1e-6)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def bank() -> np.ndarray:
    """(4, BANK_SIZE, BANK_SIZE) float32 periodic noise layers (see module docstring)."""
    rng = np.random.default_rng(BANK_SEED)
    s = BANK_SIZE
    smooth = sum(_periodic_octave(rng, (c, c), s) / (i + 1) for i, c in enumerate((4, 8, 16)))
    medium = sum(_periodic_octave(rng, (c, c), s) / (i + 1) for i, c in enumerate((32, 64, 128)))
    fine = rng.standard_normal((s, s)).astype(np.float32)
    fine = 0.7 * fine + 0.3 * _periodic_octave(rng, (256, 256), s)
    streak = _periodic_octave(rng, (256, 8), s) + 0.5 * _periodic_octave(rng, (128, 16), s)
    return np.stack([_normalise(smooth), _normalise(medium), _normalise(fine), _normalise(streak)])


def screen_crop(layer: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(height, width) float32 crop of a bank layer at a random wrapped offset and flip."""
    tex = bank()[layer]
    oy, ox = (int(v) for v in rng.integers(0, BANK_SIZE, 2))
    rows = (np.arange(height) + oy) % BANK_SIZE
    cols = (np.arange(width) + ox) % BANK_SIZE
    out = tex[rows][:, cols]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def sample_at(layer: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup of a bank layer at continuous texel coordinates (wrapped)."""
    tex = bank()[layer]
    xi = np.floor(x).astype(np.int64) % BANK_SIZE
    yi = np.floor(y).astype(np.int64) % BANK_SIZE
    return tex[yi, xi]
