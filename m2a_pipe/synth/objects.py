"""Builders of the known-class objects (Cityscapes train ids) as lists of :class:`Part`.

Every builder takes a numpy Generator and returns parts in the object frame (metres, origin
on the ground at the object's centre, z along the road). Vehicles, buildings, walls and
hedges are solid boxes (back-face culled, sorted by depth); people, poles, signs, lights,
trees and two-wheelers are billboards facing the camera.

Classes rendered (train id: name): 0 road, 1 sidewalk, 2 building, 3 wall, 4 fence, 5 pole,
6 traffic light, 7 traffic sign, 8 vegetation, 9 terrain, 10 sky, 11 person, 12 rider,
13 car, 14 truck, 15 bus, 17 motorcycle, 18 bicycle. Class 16 (train) never occurs.
Lane markings are road (as in Cityscapes); tree trunks are vegetation; the ego bonnet is void.
"""

from __future__ import annotations

import numpy as np

from m2a_pipe.synth.geometry import Part, box, decal, ellipse, face_rect, flat, rect

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)
USED_TRAIN_IDS = tuple(i for i in range(19) if i != TRAIN)
THING_IDS = (PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE)

_GLASS = (40, 50, 60)
_TYRE = (25, 25, 27)


def vehicle_color(rng: np.random.Generator) -> np.ndarray:
    """Car paint: greys and whites most often (so cars are not separable from road by colour)."""
    if rng.random() < 0.55:
        g = rng.uniform(20, 230)
        return np.array([g, g, g * rng.uniform(0.95, 1.08)])
    return rng.uniform(30, 220, 3) * np.array([1.0, 0.9, 0.9])


def clothing(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(15, 220, 3) if rng.random() < 0.6 else np.full(3, rng.uniform(15, 200))


def _wheels(w: float, length: float, r: float, inset: float) -> list[Part]:
    parts = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts += box(0.24, 2 * r, 2 * r, _TYRE, 0, x0=sx * (w / 2 - 0.1), z0=sz * (length / 2 - inset),
                         tex=0.03)
    return parts


def _label(parts: list[Part], label: int) -> list[Part]:
    for p in parts:
        p.label = label
    return parts


def car(rng: np.random.Generator) -> list[Part]:
    length, w, h = rng.uniform(3.7, 4.9), rng.uniform(1.65, 1.9), rng.uniform(1.35, 1.6)
    col = vehicle_color(rng)
    body_h, y0 = 0.5 * h, 0.28
    parts = _label(_wheels(w, length, 0.32, 0.8), CAR)
    parts += box(w, body_h, length, col, CAR, y0=y0, faces={"top": col * 1.05})
    cab_l = length * rng.uniform(0.45, 0.6)
    glass = np.array(_GLASS) * rng.uniform(0.7, 1.6)
    parts += box(w - 0.14, h - body_h - y0, cab_l, glass, CAR, y0=y0 + body_h, z0=-0.1 * length,
                 faces={"top": col})
    zr, zf = -length / 2, length / 2
    for face, plane, lamp in (("rear", zr, (190, 20, 25)), ("front", zf, (235, 235, 215))):
        normal = (0, 0, -1) if face == "rear" else (0, 0, 1)
        lights = [face_rect(face, -w / 2 + 0.1, y0 + body_h * 0.55, -w / 2 + 0.4, y0 + body_h * 0.85, plane),
                  face_rect(face, w / 2 - 0.4, y0 + body_h * 0.55, w / 2 - 0.1, y0 + body_h * 0.85, plane)]
        parts.append(decal(lights, normal, lamp, CAR))
        parts.append(decal(face_rect(face, -0.25, y0 + 0.1, 0.25, y0 + 0.25, plane), normal, (220, 220, 210), CAR))
    return parts


def truck(rng: np.random.Generator) -> list[Part]:
    w, cab_l, cargo_l = rng.uniform(2.2, 2.5), rng.uniform(1.8, 2.3), rng.uniform(4.5, 8.0)
    cab_col, cargo_col = vehicle_color(rng), rng.uniform(60, 240, 3) if rng.random() < 0.5 else np.full(3, 225.0)
    length = cab_l + cargo_l
    parts = _label(_wheels(w, length, 0.5, 1.1), TRUCK)
    cargo_h = rng.uniform(2.6, 3.4)
    parts += box(w, cargo_h, cargo_l, cargo_col, TRUCK, y0=0.9, z0=-length / 2 + cargo_l / 2)
    parts += box(w - 0.1, 2.2, cab_l, cab_col, TRUCK, y0=0.7, z0=length / 2 - cab_l / 2)
    zf = length / 2
    parts.append(decal(face_rect("front", -w / 2 + 0.2, 1.8, w / 2 - 0.2, 2.7, zf), (0, 0, 1), _GLASS, TRUCK))
    parts.append(decal(face_rect("rear", -w / 2 + 0.05, 0.95, w / 2 - 0.05, 1.1, -length / 2), (0, 0, -1),
                       (200, 40, 30), TRUCK))
    return parts


def bus(rng: np.random.Generator) -> list[Part]:
    w, length, h = 2.55, rng.uniform(10.0, 12.5), rng.uniform(2.9, 3.3)
    col = rng.uniform(40, 230, 3)
    parts = _label(_wheels(w, length, 0.5, 2.2), BUS)
    parts += box(w, h, length, col, BUS, y0=0.35, faces={"top": col * 0.8})
    for face, plane, normal in (("left", -w / 2, (-1, 0, 0)), ("right", w / 2, (1, 0, 0))):
        n = int(length // 1.6)
        wins = [face_rect(face, -length / 2 + 0.8 + i * 1.55, 1.6, -length / 2 + 2.1 + i * 1.55, 2.9, plane)
                for i in range(n - 1)]
        parts.append(decal(wins, normal, _GLASS, BUS))
    parts.append(decal(face_rect("rear", -w / 2 + 0.2, 1.9, w / 2 - 0.2, 2.9, -length / 2), (0, 0, -1), _GLASS, BUS))
    parts.append(decal(face_rect("front", -w / 2 + 0.1, 1.2, w / 2 - 0.1, 3.0, length / 2), (0, 0, 1), _GLASS, BUS))
    return parts


def _body(rng: np.random.Generator, label: int, height: float, seated: bool = False) -> list[Part]:
    """A person billboard (legs, torso, arms, head); ``seated`` spreads the legs (riders)."""
    s = height / 1.75
    skin = rng.uniform(90, 230) * np.array([1.0, 0.8, 0.65])
    top, bottom = clothing(rng), clothing(rng)
    hip = 0.9 * s
    if seated:
        legs = [np.array([[-0.2, hip - 0.9 * s, 0], [-0.08, hip - 0.9 * s, 0], [-0.02, hip, 0], [-0.2, hip, 0]]),
                np.array([[0.08, hip - 0.9 * s, 0], [0.2, hip - 0.9 * s, 0], [0.2, hip, 0], [0.02, hip, 0]])]
    else:
        stride = rng.uniform(-0.12, 0.12) * s
        legs = [rect(-0.17 * s + stride, 0, -0.02 * s, hip), rect(0.02 * s, 0, 0.17 * s - stride, hip)]
    torso = np.array([[-0.2 * s, hip, 0], [0.2 * s, hip, 0], [0.23 * s, 1.45 * s, 0], [-0.23 * s, 1.45 * s, 0]])
    arms = [rect(-0.3 * s, 0.85 * s, -0.2 * s, 1.42 * s), rect(0.2 * s, 0.85 * s, 0.3 * s, 1.42 * s)]
    head = ellipse(0, 1.6 * s, 0.11 * s, 0.14 * s, n=12)
    hair = ellipse(0, 1.67 * s, 0.115 * s, 0.08 * s, n=10)
    return [flat(legs, bottom, label, 0.1), flat(torso, top, label, 0.1), flat(arms, top * 0.9, label, 0.1),
            flat(head, skin, label, 0.05), flat(hair, rng.uniform(10, 120, 3), label, 0.1)]


def person(rng: np.random.Generator) -> list[Part]:
    parts = _body(rng, PERSON, rng.uniform(1.5, 1.95))
    if rng.random() < 0.25:  # a bag
        parts.append(flat(rect(0.22, 0.7, 0.42, 1.05), rng.uniform(20, 200, 3), PERSON))
    return parts


def _two_wheeler_rear(rng: np.random.Generator, label: int) -> list[Part]:
    """A bicycle / motorcycle seen from behind or in front: tyre, frame, handlebar."""
    if label == MOTORCYCLE:
        col = vehicle_color(rng)
        return [flat(rect(-0.07, 0, 0.07, 0.62), _TYRE, label, 0.03),
                flat(np.array([[-0.3, 0.45, 0], [0.3, 0.45, 0], [0.25, 0.95, 0], [-0.25, 0.95, 0]]), col, label),
                flat(rect(-0.4, 1.0, 0.4, 1.06), (40, 40, 40), label)]
    return [flat(rect(-0.03, 0, 0.03, 0.68), _TYRE, label, 0.03),
            flat(rect(-0.035, 0.68, 0.035, 0.95), rng.uniform(20, 220, 3), label),
            flat(rect(-0.32, 0.95, 0.32, 0.99), (50, 50, 50), label)]


def rider(rng: np.random.Generator) -> list[Part]:
    """Rider (class 12) on a bicycle (18) or motorcycle (17): two labels, two instances."""
    vehicle = MOTORCYCLE if rng.random() < 0.4 else BICYCLE
    parts = _two_wheeler_rear(rng, vehicle)
    body = _body(rng, RIDER, rng.uniform(1.55, 1.85), seated=True)
    lift = 0.35 if vehicle == BICYCLE else 0.3
    for p in body:
        p.polys = p.polys + np.array([0, lift, 0.01], dtype=np.float32)
    if vehicle == MOTORCYCLE:
        body.append(flat(ellipse(0, 1.72 + lift * 0.9, 0.16, 0.15, n=12), rng.uniform(10, 240, 3), RIDER))
    # the legs hang either side of the tyre, so draw the tyre first and the body over it
    return parts[:1] + body + parts[1:]


def parked_bicycle(rng: np.random.Generator, label: int = BICYCLE) -> list[Part]:
    """A two-wheeler seen side on: two tyre rings and a frame."""
    r = 0.34 if label == BICYCLE else 0.32
    wb = 1.05 if label == BICYCLE else 1.35
    rings = []
    for cx in (-wb / 2, wb / 2):
        rings += [ellipse(cx, r, r, r, n=16), ellipse(cx, r, r * (0.82 if label == BICYCLE else 0.6),
                                                     r * (0.82 if label == BICYCLE else 0.6), n=16)]
    col = rng.uniform(20, 230, 3)
    parts = [flat(rings[0:2], _TYRE, label, 0.03), flat(rings[2:4], _TYRE, label, 0.03)]
    if label == BICYCLE:
        frame = [np.array([[-wb / 2, r, 0], [0, r, 0], [0.25, 0.9, 0], [-0.2, 0.9, 0]]),
                 rect(-0.25, 0.88, -0.05, 0.95), rect(0.2, 0.98, 0.45, 1.02)]
        frame = [np.array(f, dtype=np.float32) for f in frame]
        for f in frame:
            parts.append(flat(f, col, label))
    else:
        parts.append(flat(np.array([[-0.45, 0.35, 0], [0.5, 0.35, 0], [0.55, 0.85, 0], [-0.5, 0.8, 0]]),
                          col, label))
        parts.append(flat(rect(-0.5, 0.8, 0.1, 0.92), (30, 30, 30), label))
    return parts


def pole(rng: np.random.Generator, height: float | None = None) -> list[Part]:
    h = height or rng.uniform(4.0, 8.0)
    w = rng.uniform(0.08, 0.16)
    col = np.full(3, rng.uniform(70, 170))
    return [flat(rect(-w / 2, 0, w / 2, h), col, POLE, 0.05)]


def sign(rng: np.random.Generator) -> list[Part]:
    """A pole with a sign plate (pole = class 5, plate = class 7)."""
    y = rng.uniform(2.0, 3.0)
    parts = pole(rng, y + 0.4)
    kind = rng.integers(4)
    r = rng.uniform(0.28, 0.4)
    if kind == 0:  # round prohibition sign
        parts += [flat(ellipse(0, y, r, r, n=16), (200, 30, 30), SIGN, 0.03),
                  flat(ellipse(0, y, 0.75 * r, 0.75 * r, n=16), (235, 235, 235), SIGN, 0.03)]
    elif kind == 1:  # triangle
        tri = np.array([[-r, y - 0.7 * r, 0], [r, y - 0.7 * r, 0], [0, y + r, 0]], dtype=np.float32)
        parts += [flat(tri, (200, 30, 30), SIGN, 0.03), flat(tri * np.array([0.7, 1, 1]) +
                                                             np.array([0, 0.06 * r, 0]), (235, 235, 230), SIGN)]
    elif kind == 2:  # blue mandatory
        parts.append(flat(ellipse(0, y, r, r, n=16), (30, 70, 170), SIGN, 0.03))
    else:  # rectangular direction board
        col = (30, 110, 60) if rng.random() < 0.5 else (30, 60, 150)
        parts.append(flat(rect(-2 * r, y - r, 2 * r, y + r), col, SIGN, 0.05))
    return parts


def traffic_light(rng: np.random.Generator) -> list[Part]:
    y = rng.uniform(2.8, 4.5)
    parts = pole(rng, y + 0.9)
    parts.append(flat(rect(-0.17, y, 0.17, y + 0.9), (25, 25, 28), LIGHT, 0.04))
    lit = rng.integers(3)
    for i, col in enumerate(((220, 40, 30), (230, 170, 30), (40, 210, 90))):
        c = np.array(col) if i == lit else np.array(col) * 0.25
        parts.append(flat(ellipse(0, y + 0.75 - 0.3 * i, 0.1, 0.1, n=10), c, LIGHT, 0.02))
    return parts


def foliage_color(rng: np.random.Generator) -> np.ndarray:
    g = rng.uniform(50, 140)
    return np.array([g * rng.uniform(0.4, 0.95), g, g * rng.uniform(0.25, 0.6)])


def tree(rng: np.random.Generator) -> list[Part]:
    h = rng.uniform(4.0, 10.0)
    trunk = flat(rect(-0.12, 0, 0.12, h * 0.55), (70, 55, 40), VEGETATION, 0.15)
    col = foliage_color(rng)
    blobs = [ellipse(rng.uniform(-0.8, 0.8), h * rng.uniform(0.6, 0.85), h * rng.uniform(0.18, 0.3),
                     h * rng.uniform(0.18, 0.28), n=14, radial=1 + 0.15 * rng.standard_normal(14))
             for _ in range(int(rng.integers(3, 6)))]
    return [trunk] + [flat(b, col * rng.uniform(0.8, 1.15), VEGETATION, 0.35) for b in blobs]


def hedge(rng: np.random.Generator, length: float) -> list[Part]:
    return box(rng.uniform(0.8, 1.5), rng.uniform(0.8, 1.8), length, foliage_color(rng), VEGETATION, tex=0.35)


def wall(rng: np.random.Generator, length: float) -> list[Part]:
    g = rng.uniform(90, 200)
    return box(0.3, rng.uniform(0.8, 2.4), length, np.array([g, g * 0.95, g * 0.88]), WALL, tex=0.15)


def fence(rng: np.random.Generator, length: float) -> list[Part]:
    """Posts and rails in the plane x = 0 (facing the road on both sides)."""
    h = rng.uniform(1.0, 1.8)
    col = np.full(3, rng.uniform(50, 160))
    polys = []
    for z in np.arange(-length / 2, length / 2 + 1e-3, rng.uniform(1.5, 2.5)):
        polys.append(np.array([[0, 0, z - 0.05], [0, 0, z + 0.05], [0, h, z + 0.05], [0, h, z - 0.05]]))
    for y in (h * 0.45, h * 0.92):
        polys.append(np.array([[0, y, -length / 2], [0, y, length / 2], [0, y + 0.07, length / 2],
                               [0, y + 0.07, -length / 2]]))
    part = flat([np.asarray(p, np.float32) for p in polys], col, FENCE, 0.08)
    return [part]


def building(rng: np.random.Generator, length: float, side: int) -> list[Part]:
    """A building block; ``side`` -1 = left of the road (facade faces +x), +1 = right."""
    h, depth = rng.uniform(6.0, 26.0), rng.uniform(8.0, 14.0)
    base = rng.choice([(200, 190, 170), (170, 90, 70), (150, 150, 155), (225, 220, 210), (120, 110, 100),
                       (190, 160, 120)]) * rng.uniform(0.7, 1.15, 3)
    parts = box(depth, h, length, base, BUILDING, x0=side * depth / 2, tex=0.12,
                faces={"top": base * 0.8})
    face = "left" if side > 0 else "right"
    normal = (-1.0, 0.0, 0.0) if side > 0 else (1.0, 0.0, 0.0)
    rows, cols = max(1, int((h - 3.5) // 3.2)), max(1, int(length // 2.6))
    win_w, win_h = rng.uniform(0.8, 1.5), rng.uniform(1.0, 1.7)
    wins = [face_rect(face, -length / 2 + (c + 0.5) * length / cols - win_w / 2, 3.8 + r * 3.2,
                      -length / 2 + (c + 0.5) * length / cols + win_w / 2, 3.8 + r * 3.2 + win_h, 0.0)
            for r in range(rows) for c in range(cols)]
    glass = np.array(_GLASS) * rng.uniform(0.6, 2.2)
    parts.append(decal(wins, normal, glass, BUILDING, 0.1))
    if rng.random() < 0.6:  # ground-floor shop front / doors
        doors = [face_rect(face, -length / 2 + 0.5 + i * 4.0, 0.0, -length / 2 + 1.7 + i * 4.0, 2.4, 0.0)
                 for i in range(max(1, int(length // 4.0)))]
        parts.append(decal(doors, normal, np.array(_GLASS) * rng.uniform(0.5, 1.5), BUILDING, 0.1))
    return parts


def with_offset(parts: list[Part], dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> list[Part]:
    for p in parts:
        p.polys = p.polys + np.array([dx, dy, dz], dtype=np.float32)
    return parts


BUILDERS = {"car": car, "truck": truck, "bus": bus, "person": person, "rider": rider, "sign": sign,
            "traffic_light": traffic_light, "pole": pole, "tree": tree}


def part_labels(parts: list[Part]) -> set[int]:
    return {p.label for p in parts}


__all__ = ["BUILDERS", "Part", "USED_TRAIN_IDS", "THING_IDS", "building", "fence", "hedge", "wall",
           "parked_bicycle", "with_offset", "part_labels"]
