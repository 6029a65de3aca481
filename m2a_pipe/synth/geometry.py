"""The pinhole camera and the polygon parts every synthetic object is made of.

Frames (metres):

* object frame: x right, y up, z forward, origin on the ground at the object's centre;
* camera frame: the same axes, origin on the ground *below* the camera (the lens is at
  ``y = camera.height``), z along the optical axis;
* world frame: ``(x, s)``, ``s`` the distance along the road, ``x`` lateral (see scene.py).

Projection: ``u = cx + f X / Z``, ``v = horizon + f (height - Y) / Z``, then a roll by
``camera.roll`` radians about ``(cx, horizon)``. Pitch is a shift of the horizon row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

VOID = 255
"""Label of pixels that belong to nothing we annotate (the ego vehicle's bonnet)."""
ANOMALY = 19
"""Internal label of anomaly pixels (category 19 in panoptic; 255 in the semantic PNG)."""
NEAR_M = 0.5
"""Near clipping plane."""


@dataclass(frozen=True)
class Camera:
    """A forward camera: image ``width x height``, focal ``focal`` px, principal column
    ``cx``, horizon row ``horizon`` (pitch), lens height ``height_m`` and ``roll`` (rad)."""

    width: int
    height: int
    focal: float
    cx: float
    horizon: float
    height_m: float = 1.5
    roll: float = 0.0

    @classmethod
    def make(cls, width: int, height: int, pitch: float = 0.0, roll: float = 0.0,
             hfov_deg: float = 70.0, height_m: float = 1.5, horizon_frac: float = 0.42) -> "Camera":
        """Camera for an image size; ``pitch`` (rad, positive = looking down) moves the horizon up."""
        f = width / 2 / math.tan(math.radians(hfov_deg) / 2)
        return cls(width, height, f, width / 2, height * horizon_frac - f * math.tan(pitch), height_m, roll)

    def project(self, pts: np.ndarray) -> np.ndarray:
        """(..., 3) camera-frame points with ``Z >= NEAR_M`` -> (..., 2) pixel coordinates."""
        z = pts[..., 2]
        u = self.focal * pts[..., 0] / z
        v = self.focal * (self.height_m - pts[..., 1]) / z
        if self.roll:
            c, s = math.cos(self.roll), math.sin(self.roll)
            u, v = c * u - s * v, s * u + c * v
        return np.stack([u + self.cx, v + self.horizon], axis=-1)

    def unroll(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel grid -> coordinates relative to ``(cx, horizon)`` with the roll undone."""
        du, dv = u - self.cx, v - self.horizon
        if not self.roll:
            return du, dv
        c, s = math.cos(self.roll), math.sin(self.roll)
        return c * du + s * dv, -s * du + c * dv


@dataclass
class Pattern:
    """A per-pixel material painted in object-local metres (anomalies only, see anomalies.py)."""

    kind: str
    colors: np.ndarray  # (K, 3) float32 RGB 0..255
    scale_m: float = 0.2
    angle: float = 0.0
    offset: tuple[float, float] = (0.0, 0.0)
    center: tuple[float, float] = (0.0, 0.0)


@dataclass
class Part:
    """Polygons of one colour and label.

    ``polys`` (P, N, 3) object-frame vertices; drawn together, so nested contours make holes.
    ``normal`` (object frame) enables back-face culling and depth sorting of solid faces;
    ``None`` marks a billboard drawn in list order after the solid faces. ``decal`` parts lie on
    a face (windows, lights) and are drawn after every face when their normal is visible.
    ``tex`` is the amplitude of the screen-space material noise.
    """

    polys: np.ndarray
    color: np.ndarray
    label: int
    normal: tuple[float, float, float] | None = None
    decal: bool = False
    tex: float = 0.08
    pattern: Pattern | None = None
    extra: dict = field(default_factory=dict)


def rgb(c) -> np.ndarray:
    """A colour as float32 RGB (values outside 0..255 are clipped only in the final image)."""
    return np.asarray(c, dtype=np.float32)


def rect(x0: float, y0: float, x1: float, y1: float, z: float = 0.0) -> np.ndarray:
    """(4, 3) rectangle in the plane ``z``."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float32)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 16, z: float = 0.0,
            radial: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) ellipse in the plane ``z``; ``radial`` (n,) multiplies the radius (blobs)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n) if radial is None else radial
    return np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t), np.full(n, z)], axis=1).astype(np.float32)


def flat(polys, color, label: int, tex: float = 0.08, pattern: Pattern | None = None) -> Part:
    """A billboard part from one (N, 3) polygon or a list of them (padded to equal length)."""
    if isinstance(polys, np.ndarray) and polys.ndim == 2:
        return Part(polys[None].astype(np.float32, copy=False), rgb(color), label, None, False, tex, pattern)
    n = max(len(p) for p in polys)
    padded = [np.concatenate([p, np.repeat(p[-1:], n - len(p), 0)]) for p in polys]
    return Part(np.stack(padded).astype(np.float32), rgb(color), label, None, False, tex, pattern)


_FACES = {  # name: (normal, corner indices into the 8 box corners)
    "rear": ((0, 0, -1), (0, 1, 2, 3)),
    "front": ((0, 0, 1), (4, 5, 6, 7)),
    "left": ((-1, 0, 0), (0, 3, 7, 4)),
    "right": ((1, 0, 0), (1, 2, 6, 5)),
    "top": ((0, 1, 0), (3, 2, 6, 7)),
}


def box(w: float, h: float, length: float, color, label: int, *, x0: float = 0.0, y0: float = 0.0,
        z0: float = 0.0, faces: dict | None = None, tex: float = 0.06, skip=("bottom",),
        pattern: Pattern | None = None) -> list[Part]:
    """Solid faces of an axis-aligned box centred at ``(x0, ., z0)`` from ``y0`` to ``y0 + h``;
    ``faces`` overrides the colour of named faces (rear, front, left, right, top)."""
    xs, zs = (x0 - w / 2, x0 + w / 2), (z0 - length / 2, z0 + length / 2)
    corners = np.array([[xs[0], y0, zs[0]], [xs[1], y0, zs[0]], [xs[1], y0 + h, zs[0]], [xs[0], y0 + h, zs[0]],
                        [xs[0], y0, zs[1]], [xs[1], y0, zs[1]], [xs[1], y0 + h, zs[1]], [xs[0], y0 + h, zs[1]]],
                       dtype=np.float32)
    parts = []
    for name, (normal, idx) in _FACES.items():
        if name in skip:
            continue
        col = (faces or {}).get(name, color)
        parts.append(Part(corners[list(idx)][None], rgb(col), label, normal, False, tex, pattern))
    return parts


def decal(poly_or_list, normal: tuple[float, float, float], color, label: int, tex: float = 0.04) -> Part:
    """A part lying on a solid face with that face's ``normal``."""
    part = flat(poly_or_list, color, label, tex)
    part.normal, part.decal = normal, True
    return part


def face_rect(face: str, a0: float, b0: float, a1: float, b1: float, plane: float, eps: float = 0.02) -> np.ndarray:
    """Rectangle on a box face: ``(a, b)`` are (x, y) on rear/front, (z, y) on left/right; ``plane``
    is the face's coordinate (z for rear/front, x for left/right), pushed ``eps`` outwards."""
    if face in ("rear", "front"):
        z = plane - eps if face == "rear" else plane + eps
        return rect(a0, b0, a1, b1, z)
    x = plane - eps if face == "left" else plane + eps
    return np.array([[x, b0, a0], [x, b0, a1], [x, b1, a1], [x, b1, a0]], dtype=np.float32)


def clip_near(poly: np.ndarray, near: float = NEAR_M) -> np.ndarray | None:
    """Sutherland-Hodgman clip of one (N, 3) camera-frame polygon to ``Z >= near``."""
    inside = poly[:, 2] >= near
    if inside.all():
        return poly
    if not inside.any():
        return None
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ia, ib = a[2] >= near, b[2] >= near
        if ia:
            out.append(a)
        if ia != ib:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out, dtype=np.float32) if len(out) >= 3 else None
