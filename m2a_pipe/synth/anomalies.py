"""Anomalies: objects of no known class, in three families with disjoint generators.

=========  =======================================  ===================================
family     shape generators                         materials (patterns)
=========  =======================================  ===================================
``train``  ``blob`` (radial-harmonic lumps),        ``smooth_noise``, ``planks``,
           ``polygon`` (random star / convex        ``gradient``, ``checker``,
           slabs), ``crate`` (solid box),           ``solid`` (one colour, faint grain),
           ``slab`` (low board lying flat),         ``marble`` (wavy veins), ``bricks``
           ``pipe`` (cylinder lying across),        (offset courses and mortar),
           ``mound`` (heap with a bumpy crest),     ``mosaic`` (tiles of 3 colours),
           ``frame`` (open rack of thin bars),      ``speckle`` (terrazzo grains)
           ``sack`` (bag, wide base, tied neck)
``train_   the ``train`` shapes                     the ``train`` materials and
ext``                                               ``weave`` (fabric, threads over and
                                                    under), ``rust`` (painted metal with
                                                    corroded patches), ``label`` (printed
                                                    band with rows of glyphs), ``sheen``
                                                    (glossy plastic, banded highlights);
                                                    half the colours drawn in HSV
``eval``   ``animal`` (quadruped silhouettes),      ``dots``, ``hazard`` (diagonal
           ``tyre`` (ring with hub or lying flat),  stripes), ``fur`` (streaked
           ``debris`` (scattered shards),           patches), ``rings`` (concentric),
           ``drum`` (barrel with bands),            ``camo`` (3-tone blotches)
           ``parcel`` (box with tape)
``hard``   the ``eval`` shapes, 0.35-0.8x size,      ``mimic``: the colour and texture of
           placed further away (15-60 m)            a *known* class (asphalt, sidewalk,
                                                    foliage, facade, car paint)
=========  =======================================  ===================================

``train`` (or ``train_ext``) is only ever the outlier source of AnomalyMix (``synth
outliers``, ``--anomalies train``); ``eval`` only ever evaluation. No generator or pattern name
is shared between them (:data:`GENERATORS`, :data:`PATTERNS`; asserted at import), and the
families differ in silhouette statistics (train: lumps, boxes, slabs, bars and heaps; eval:
animals, rings, scattered shards, banded barrels, taped parcels) and in material (train:
smooth, wood, flat, veined, masonry, tiled, granular, and in ``train_ext`` also fabric,
corroded metal, printed packaging and glossy plastic; eval: dots, diagonal stripes, fur,
concentric rings, camouflage). ``hard`` tests generalisation to unknown shapes whose
appearance copies known classes and to small, distant objects; it is meant for evaluation
only. ``train_ext`` also draws half of its objects' colours uniform in hue, saturation and
value (dull and greyish colours as often as vivid ones) and has its own random stream, so the
``train`` family of a seed stays what it was.

The train family grew from three shapes and four materials (demo weights v0-v2 were trained
on those) to eight and nine: the outlier source of AnomalyMix stands in for the paper's COCO
objects, and more steps on the first three shapes fitted the score to them (weights/README.md,
round 3) instead of carrying over to unseen anomalies.

Every anomaly part has the label :data:`~m2a_pipe.synth.geometry.ANOMALY`; the family and
generator of each object are stored with it (``AnomalySpec``) and in the written metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2a_pipe.errors import UsageError
from m2a_pipe.synth import textures
from m2a_pipe.synth.geometry import ANOMALY, Part, Pattern, box, decal, ellipse, face_rect, flat, rect

FAMILIES = ("train", "train_ext", "eval", "hard")
FAMILY_CODES = {"none": 0, "train": 1, "eval": 2, "hard": 3, "train_ext": 4}
_SHAPES_OF = {"train_ext": "train", "hard": "eval"}


@dataclass
class AnomalySpec:
    """One anomaly object: its parts (object frame) and provenance."""

    family: str
    generator: str
    pattern: str
    parts: list[Part]
    width_m: float
    length_m: float


def _colors(rng: np.random.Generator, k: int, lo: float = 10, hi: float = 245) -> np.ndarray:
    return rng.uniform(lo, hi, (k, 3)).astype(np.float32)


def _hsv_colors(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` colours uniform in hue, saturation (0-1) and value (0.15-0.95): as many dull and
    greyish colours as vivid ones, where a uniform RGB cube is mostly saturated."""
    h = rng.uniform(0, 6, k)
    sat, val = rng.uniform(0, 1, k), rng.uniform(0.15, 0.95, k)
    f = np.abs(np.mod(h[:, None] - np.array([0.0, 4.0, 2.0]), 6) - 3) - 1  # hue ramp per channel
    rgb = val[:, None] * (1 - sat[:, None] * (1 - np.clip(f, 0, 1)))
    return (255 * rgb).astype(np.float32)


# -- patterns --------------------------------------------------------------------------

def _pattern_colors(rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "planks":
        base = rng.uniform(90, 200) * np.array([1.0, 0.75, 0.5])
        return np.stack([base, base * 0.55]).astype(np.float32)
    if kind == "hazard":
        return np.array([rng.choice([(235, 200, 20), (240, 240, 240), (230, 110, 20)]), (20, 20, 20)], np.float32)
    if kind == "fur":
        return np.array([rng.uniform(60, 200) * np.array([1, 0.8, 0.6]), (240, 235, 225), (25, 20, 18)], np.float32)
    return _colors(rng, 3)


def make_pattern(rng: np.random.Generator, kind: str, colors: np.ndarray | None = None) -> Pattern:
    return Pattern(kind, _pattern_colors(rng, kind) if colors is None else colors,
                   float(rng.uniform(0.08, 0.3)), float(rng.uniform(0, np.pi)),
                   (float(rng.uniform(0, 512)), float(rng.uniform(0, 512))))


def paint(p: Pattern, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) object-local metres -> (N, 3) float32 RGB of pattern ``p``."""
    c = p.colors
    ox, oy = p.offset
    ca, sa = np.cos(p.angle), np.sin(p.angle)
    xr, yr = ca * x + sa * y, -sa * x + ca * y

    def mix(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        t = np.clip(t, 0, 1)[:, None]
        return a * (1 - t) + b * t

    if p.kind == "smooth_noise":
        n = textures.sample_at(textures.SMOOTH, x * 60 + ox, y * 60 + oy)
        return mix(0.5 + 0.35 * n, c[0], c[1])
    if p.kind == "planks":
        w = p.scale_m * 0.8
        grain = textures.sample_at(textures.STREAK, x * 200 + ox, y * 40 + oy)
        gap = (np.mod(y, w) < 0.12 * w).astype(np.float32)
        return mix(0.25 + 0.15 * grain + gap, c[0], c[1])
    if p.kind == "gradient":
        return mix(0.5 + xr / (4 * p.scale_m + 0.4), c[0], c[1])
    if p.kind == "checker":
        s = p.scale_m
        return np.where(((np.floor(x / s) + np.floor(y / s)) % 2 == 0)[:, None], c[0], c[1])
    if p.kind == "solid":
        return c[0] * (1 + 0.06 * textures.sample_at(textures.MEDIUM, x * 120 + ox, y * 120 + oy)[:, None])
    if p.kind == "marble":
        n = textures.sample_at(textures.SMOOTH, x * 90 + ox, y * 90 + oy)
        vein = np.abs(np.sin(xr / p.scale_m * 2.0 + 3.0 * n))
        return mix(vein ** 0.3, c[1], c[0])
    if p.kind == "bricks":
        h, w = 0.45 * p.scale_m + 0.03, 1.1 * p.scale_m + 0.06
        row = np.floor(y / h)
        u = np.mod(x + 0.5 * w * np.mod(row, 2), w)
        mortar = (np.mod(y, h) < 0.15 * h) | (u < 0.08 * w)
        return np.where(mortar[:, None], c[1] * 0.3 + 170, c[0])
    if p.kind == "mosaic":
        s = p.scale_m * 0.7
        ix, iy = np.floor(xr / s).astype(np.int64), np.floor(yr / s).astype(np.int64)
        k = np.mod(ix * 73856093 ^ iy * 19349663, 3)
        return c[k]
    if p.kind == "speckle":
        grain = textures.sample_at(textures.FINE, x * 500 + ox, y * 500 + oy)
        return np.where((grain > 1.3)[:, None], c[1], np.where((grain < -1.3)[:, None], c[2], c[0]))
    if p.kind == "weave":
        s = 0.15 * p.scale_m + 0.02
        u, v = np.floor(xr / s), np.floor(yr / s)
        warp = np.mod(u + v, 2) == 0
        thread = 0.75 + 0.25 * np.sin(np.pi * np.mod(np.where(warp, yr, xr), s) / s)
        return np.where(warp[:, None], c[0], c[1]) * thread[:, None]
    if p.kind == "rust":
        n = textures.sample_at(textures.MEDIUM, x * 140 + ox, y * 140 + oy)
        n = n + 0.6 * textures.sample_at(textures.FINE, x * 400 + oy, y * 400 + ox)
        return mix(0.5 * (n - 0.6 - 0.8 * p.scale_m), c[0], c[1] * 0.55)
    if p.kind == "label":
        band = np.abs(yr - 0.5 * p.scale_m) < 0.6 * p.scale_m
        glyph = ((np.mod(xr, 0.05) < 0.03) & (np.mod(yr, 0.08) < 0.05)
                 & (textures.sample_at(textures.FINE, xr * 20 + ox, yr * 12 + oy) > 0))
        return np.where((band & glyph)[:, None], c[2] * 0.25, np.where(band[:, None], c[1], c[0]))
    if p.kind == "sheen":
        wave = np.cos(xr / (p.scale_m + 0.1))
        return mix(0.7 * wave ** 8, c[0] * (0.75 + 0.25 * wave[:, None]), np.full(3, 245.0))
    if p.kind == "dots":
        s = p.scale_m
        dx, dy = np.mod(xr, s) - s / 2, np.mod(yr, s) - s / 2
        return np.where((dx * dx + dy * dy < (0.3 * s) ** 2)[:, None], c[1], c[0])
    if p.kind == "hazard":
        return np.where((np.mod(xr + yr, 2 * p.scale_m) < p.scale_m)[:, None], c[0], c[1])
    if p.kind == "fur":
        streak = textures.sample_at(textures.STREAK, y * 900 + ox, x * 120 + oy)
        patch = textures.sample_at(textures.SMOOTH, x * 150 + oy, y * 150 + ox)
        base = np.where((patch > 0.4)[:, None], c[1], np.where((patch < -0.6)[:, None], c[2], c[0]))
        return base * (1 + 0.25 * streak[:, None])
    if p.kind == "rings":
        r = np.hypot(x - p.center[0], y - p.center[1])
        return np.where((np.mod(r, p.scale_m) < 0.5 * p.scale_m)[:, None], c[0], c[1])
    if p.kind == "camo":
        n = textures.sample_at(textures.SMOOTH, x * 220 + ox, y * 220 + oy)
        return np.where((n > 0.45)[:, None], c[0], np.where((n < -0.45)[:, None], c[1], c[2]))
    if p.kind == "mimic":
        n = textures.sample_at(textures.MEDIUM, x * 150 + ox, y * 150 + oy)
        return c[0] * (1 + 0.12 * n[:, None])
    raise ValueError(f"unknown pattern {p.kind!r}")


# -- train family ----------------------------------------------------------------------

def _blob(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    w, h = rng.uniform(0.4, 1.6), rng.uniform(0.3, 1.3)
    n = 24
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radial = 1 + sum(rng.uniform(0, 0.25 / k) * np.cos(k * t + rng.uniform(0, 6.3)) for k in range(2, 6))
    poly = ellipse(0, h / 2, w / 2, h / 2, n=n, radial=radial)
    poly[:, 1] -= poly[:, 1].min()
    return [flat(poly, pat.colors[0], ANOMALY, 0.1, pat)], w, w * 0.6


def _polygon(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    k = int(rng.integers(5, 10))
    size = rng.uniform(0.4, 1.5)
    t = np.sort(rng.uniform(0, 2 * np.pi, k))
    star = rng.random() < 0.4
    r = np.where(np.arange(k) % 2 == 0, 1.0, 0.5) if star else rng.uniform(0.7, 1.0, k)
    poly = np.stack([size / 2 * r * np.cos(t), size / 2 * r * np.sin(t) * rng.uniform(0.5, 1.0), np.zeros(k)], 1)
    poly[:, 1] -= poly[:, 1].min()
    return [flat(poly.astype(np.float32), pat.colors[0], ANOMALY, 0.1, pat)], size, size * 0.5


def _crate(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    w, h, length = rng.uniform(0.5, 1.3), rng.uniform(0.4, 1.1), rng.uniform(0.5, 1.3)
    return box(w, h, length, pat.colors[0], ANOMALY, tex=0.1, pattern=pat), w, length


def _slab(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    w, h, length = rng.uniform(0.8, 2.0), rng.uniform(0.05, 0.25), rng.uniform(0.6, 1.8)
    return box(w, h, length, pat.colors[0], ANOMALY, tex=0.08, pattern=pat), w, length


def _pipe(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    r, length = rng.uniform(0.08, 0.3), rng.uniform(0.8, 2.5)
    side = flat(rect(-length / 2, 0, length / 2, 2 * r), pat.colors[0], ANOMALY, 0.08, pat)
    end = flat(ellipse(length / 2, r, 0.45 * r, r, n=16), pat.colors[0] * 0.6 + 30, ANOMALY, 0.05)
    return [side, end], length, 2 * r


def _mound(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    w, h = rng.uniform(0.6, 2.0), rng.uniform(0.2, 0.7)
    t = np.linspace(0, np.pi, 20)
    crest = h * np.sin(t) ** rng.uniform(0.6, 1.5) * (1 + rng.uniform(-0.15, 0.15, t.size))
    poly = np.stack([-w / 2 * np.cos(t), crest, np.zeros_like(t)], 1)
    poly = np.concatenate([poly, [[w / 2 + 0.05 * w, 0, 0], [-w / 2 - 0.05 * w, 0, 0]]]).astype(np.float32)
    return [flat(poly, pat.colors[0], ANOMALY, 0.2, pat)], w, w * 0.7


def _frame(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    w, h, bar = rng.uniform(0.4, 1.2), rng.uniform(0.6, 1.8), rng.uniform(0.03, 0.07)
    bars = [rect(-w / 2, 0, -w / 2 + bar, h), rect(w / 2 - bar, 0, w / 2, h)]
    for f in np.sort(rng.uniform(0.15, 1.0, int(rng.integers(2, 6)))):
        bars.append(rect(-w / 2, f * h - bar / 2, w / 2, f * h + bar / 2))
    return [flat(bars, pat.colors[0], ANOMALY, 0.05, pat)], w, 0.2


def _sack(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    w, h = rng.uniform(0.4, 0.9), rng.uniform(0.4, 1.0)
    n = 24
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radial = 1 + 0.25 * np.clip(-np.sin(t), 0, None) + rng.uniform(-0.06, 0.06, n)  # wider base
    body = ellipse(0, h / 2, w / 2, h / 2, n=n, radial=radial)
    body[:, 1] -= body[:, 1].min()
    top = body[:, 1].max()
    neck = np.array([[-0.06 * w, top - 0.05 * h, 0], [0.06 * w, top - 0.05 * h, 0], [0.12 * w, top + 0.15 * h, 0],
                     [-0.12 * w, top + 0.15 * h, 0]], np.float32)
    return [flat([body, neck], pat.colors[0], ANOMALY, 0.12, pat)], w, w * 0.8


# -- eval family -----------------------------------------------------------------------

def _animal(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    s = rng.uniform(0.5, 1.6)  # shoulder height
    body_l, body_h = s * rng.uniform(1.0, 1.5), s * rng.uniform(0.35, 0.5)
    leg_h = s - body_h / 2
    face = -1 if rng.random() < 0.5 else 1
    legs = [rect(x - 0.05 * s, 0, x + 0.05 * s, leg_h + 0.1 * s)
            for x in (-body_l * 0.38, -body_l * 0.25, body_l * 0.28, body_l * 0.4)]
    body = ellipse(0, leg_h + body_h / 2, body_l / 2, body_h / 2, n=18)
    nx = face * body_l * 0.5
    neck = np.array([[nx - face * 0.15 * s, leg_h + body_h * 0.6, 0], [nx + face * 0.05 * s, leg_h + body_h * 0.4, 0],
                     [nx + face * 0.25 * s, leg_h + body_h + 0.3 * s, 0], [nx + face * 0.1 * s,
                                                                          leg_h + body_h + 0.32 * s, 0]],
                    np.float32)
    head = ellipse(nx + face * 0.3 * s, leg_h + body_h + 0.3 * s, 0.17 * s, 0.1 * s, n=12)
    ear = np.array([[nx + face * 0.2 * s, leg_h + body_h + 0.36 * s, 0], [nx + face * 0.26 * s,
                                                                         leg_h + body_h + 0.5 * s, 0],
                    [nx + face * 0.3 * s, leg_h + body_h + 0.36 * s, 0]], np.float32)
    tail = np.array([[-nx, leg_h + body_h * 0.8, 0], [-nx - face * 0.25 * s, leg_h + body_h * 0.1, 0],
                     [-nx - face * 0.2 * s, leg_h + body_h * 0.05, 0]], np.float32)
    c = pat.colors[0]
    return ([flat(legs, c * 0.8, ANOMALY, 0.15, pat), flat(tail, c, ANOMALY, 0.15, pat),
             flat([body, neck], c, ANOMALY, 0.15, pat), flat([head, ear], c, ANOMALY, 0.15, pat)],
            body_l, 0.4 * s)


def _tyre(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    r = rng.uniform(0.3, 0.55)
    pat.colors[0] = pat.colors[0] * 0.3 + 10  # dark rubber
    pat.center = (0.0, float(r))
    if rng.random() < 0.5:  # upright, facing the camera
        rings = [ellipse(0, r, r, r, n=24), ellipse(0, r, 0.6 * r, 0.6 * r, n=24)]
        hub = flat(ellipse(0, r, 0.4 * r, 0.4 * r, n=16), rng.uniform(120, 220, 3), ANOMALY, 0.05)
        return [flat(rings, pat.colors[0], ANOMALY, 0.05, pat), hub], 2 * r, 0.3
    t = 0.28 * r  # lying flat: a squashed ring seen from above
    rings = [ellipse(0, t, r, 0.45 * r, n=24), ellipse(0, t + 0.08 * r, 0.55 * r, 0.2 * r, n=20)]
    side = flat(rect(-r, 0, r, t), pat.colors[0] * 0.8, ANOMALY, 0.05, pat)
    return [side, flat(rings, pat.colors[0], ANOMALY, 0.05, pat)], 2 * r, 2 * r


def _debris(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    spread = rng.uniform(0.6, 2.0)
    parts = []
    for _ in range(int(rng.integers(5, 13))):
        cx, sz = rng.uniform(-spread / 2, spread / 2), rng.uniform(0.08, 0.35)
        k = int(rng.integers(3, 6))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        shard = np.stack([cx + sz * np.cos(ang), sz * 0.6 * (1 + np.sin(ang)), np.zeros(k)], 1).astype(np.float32)
        parts.append(flat(shard, pat.colors[int(rng.integers(len(pat.colors)))], ANOMALY, 0.15, pat))
    return parts, spread, spread * 0.5


def _drum(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    r, h = rng.uniform(0.25, 0.4), rng.uniform(0.7, 1.0)
    body = flat(rect(-r, 0, r, h), pat.colors[0], ANOMALY, 0.08, pat)
    top = flat(ellipse(0, h, r, 0.3 * r, n=16), pat.colors[-1] * 0.8 + 40, ANOMALY, 0.05)
    bands = flat([rect(-r, h * f - 0.03, r, h * f + 0.03) for f in (0.3, 0.65)], pat.colors[-1] * 0.6, ANOMALY, 0.05)
    return [body, bands, top], 2 * r, 2 * r


def _parcel(rng: np.random.Generator, pat: Pattern) -> tuple[list[Part], float, float]:
    w, h, length = rng.uniform(0.35, 1.0), rng.uniform(0.3, 0.8), rng.uniform(0.35, 1.0)
    parts = box(w, h, length, pat.colors[0], ANOMALY, tex=0.05, pattern=pat)
    tape = rng.uniform(150, 240, 3)
    for face, plane, normal in (("rear", -length / 2, (0, 0, -1)), ("front", length / 2, (0, 0, 1))):
        parts.append(decal(face_rect(face, -0.04, 0, 0.04, h, plane), normal, tape, ANOMALY))
    parts.append(decal(np.array([[-0.04, h + 0.01, -length / 2], [0.04, h + 0.01, -length / 2],
                                 [0.04, h + 0.01, length / 2], [-0.04, h + 0.01, length / 2]], np.float32),
                       (0, 1, 0), tape, ANOMALY))
    return parts, w, length


GENERATORS = {
    "train": {"blob": _blob, "polygon": _polygon, "crate": _crate, "slab": _slab, "pipe": _pipe, "mound": _mound,
              "frame": _frame, "sack": _sack},
    "eval": {"animal": _animal, "tyre": _tyre, "debris": _debris, "drum": _drum, "parcel": _parcel},
}
PATTERNS = {
    "train": ("smooth_noise", "planks", "gradient", "checker", "solid", "marble", "bricks", "mosaic", "speckle"),
    "eval": ("dots", "hazard", "fur", "rings", "camo"),
    "hard": ("mimic",),
}
PATTERNS["train_ext"] = PATTERNS["train"] + ("weave", "rust", "label", "sheen")
_PREFERRED = {"crate": ("planks", "checker", "bricks"), "animal": ("fur", "camo", "dots"), "tyre": ("rings",)}
assert not set(GENERATORS["train"]) & set(GENERATORS["eval"])
assert not set(PATTERNS["train_ext"]) & set(PATTERNS["eval"]) and not set(PATTERNS["hard"]) & set(PATTERNS["train_ext"])

KNOWN_LOOKALIKES = np.array([(95, 95, 98), (150, 145, 140), (70, 100, 45), (200, 190, 170), (170, 90, 70),
                             (40, 40, 45), (200, 200, 205)], np.float32)
"""Colours of known classes (asphalt, sidewalk, foliage, facades, dark / white car paint)
that the ``hard`` family's ``mimic`` material copies."""


def sample_anomaly(rng: np.random.Generator, family: str) -> AnomalySpec:
    """Draw one anomaly of ``family`` (``train``, ``train_ext``, ``eval`` or ``hard``)."""
    if family not in FAMILIES:
        raise UsageError(f"unknown anomaly family {family!r}; expected one of {FAMILIES}")
    shapes = GENERATORS[_SHAPES_OF.get(family, family)]
    name = str(rng.choice(sorted(shapes)))
    if family == "hard":
        base = KNOWN_LOOKALIKES[int(rng.integers(len(KNOWN_LOOKALIKES)))] * rng.uniform(0.85, 1.15)
        pat = make_pattern(rng, "mimic", np.stack([base, base * 0.9, base * 1.1]).astype(np.float32))
    else:
        kinds = _PREFERRED.get(name, PATTERNS[family]) if rng.random() < 0.6 else PATTERNS[family]
        kind = str(rng.choice(kinds))
        hsv = family == "train_ext" and kind != "planks" and rng.random() < 0.5
        pat = make_pattern(rng, kind, _hsv_colors(rng, 3) if hsv else None)
    parts, w, length = shapes[name](rng, pat)
    if family == "hard":
        scale = float(rng.uniform(0.35, 0.8))
        for p in parts:
            p.polys = p.polys * scale
            p.tex = 0.12
        w, length = w * scale, length * scale
    gen = f"hard_{name}" if family == "hard" else name
    return AnomalySpec(family, gen, pat.kind, parts, float(w), float(length))
