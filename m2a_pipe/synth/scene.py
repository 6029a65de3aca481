"""A road world: the road's geometry, its roadside zones and every object placed along it.

World frame: ``s`` metres along the road, ``x`` metres lateral (right positive). The road's
centre line is ``x = Road.center(s)``, a sum of slow sinusoids (bends), so a world is
infinite in ``s`` and a camera anywhere on it sees a consistent scene. Objects are placed by
road coordinates ``(s, d)`` (``d`` = lateral offset from the centre line) and may move along
the road at ``speed`` m/s (negative = oncoming), which is all a video needs.

:func:`sample_world` draws a world from a Generator: road (1-2 lanes per direction, lane
markings, sidewalks), zones of buildings or greenery (terrain, trees, hedges, fences, walls),
poles with signs and traffic lights, parked and moving vehicles, pedestrians, riders, parked
two-wheelers, and the anomalies of one family (anomalies.py) drawn from a *separate* Generator
so the same base scene can carry any family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from m2a_pipe.synth import objects as ob
from m2a_pipe.synth.anomalies import AnomalySpec, sample_anomaly
from m2a_pipe.synth.geometry import Part

BUILT, GREEN = 0, 1
ZONE_STEP_M = 1.0


@dataclass
class Road:
    """Centre line, cross-section and roadside zones (per side, per metre from ``s_min``)."""

    amps: np.ndarray
    wavelengths: np.ndarray
    phases: np.ndarray
    lanes: int
    lane_w: float
    sidewalk_w: tuple[float, float]  # (left, right)
    center_line: str  # "dashed", "solid" or "none"
    zones: np.ndarray  # (2, n) uint8 BUILT / GREEN for the left (0) and right (1) side
    s_min: float
    parking_w: float = 0.0  # a parking strip outside the edge line on both sides (0 = none)

    @property
    def lanes_half_width(self) -> float:
        return self.lanes * self.lane_w

    @property
    def half_width(self) -> float:
        return self.lanes * self.lane_w + self.parking_w

    def center(self, s):
        s = np.asarray(s, dtype=np.float64)
        return np.sum(self.amps[:, None] * np.sin(2 * np.pi * s.reshape(1, -1) / self.wavelengths[:, None]
                                                   + self.phases[:, None]), axis=0).reshape(s.shape)

    def heading(self, s) -> np.ndarray:
        """Direction of the road at ``s`` (radians, positive = bending right)."""
        s = np.asarray(s, dtype=np.float64)
        k = 2 * np.pi / self.wavelengths[:, None]
        slope = np.sum(self.amps[:, None] * k * np.cos(k * s.reshape(1, -1) + self.phases[:, None]), axis=0)
        return np.arctan(slope).reshape(s.shape)

    def zone(self, side: int, s: np.ndarray) -> np.ndarray:
        idx = np.clip(((s - self.s_min) / ZONE_STEP_M).astype(np.int64), 0, self.zones.shape[1] - 1)
        return self.zones[side, idx]


@dataclass
class WorldObject:
    """Something standing on the ground at road coordinates ``(s, d)`` at time 0."""

    kind: str
    s: float
    d: float
    parts: list[Part]
    yaw: float = 0.0  # relative to the road direction (pi = facing us)
    speed: float = 0.0
    shadow: tuple[float, float] | None = None  # footprint half width, half length
    anomaly: AnomalySpec | None = None
    track_id: int = 0
    cache: dict = field(default_factory=dict, repr=False)  # the renderer's packed vertices

    def s_at(self, t: float) -> float:
        return self.s + self.speed * t


@dataclass
class World:
    road: Road
    objects: list[WorldObject]
    palette: dict
    light: dict
    skyline: np.ndarray  # (SKYLINE_BINS, 2): angular height (rad), label
    hood: float = 0.0  # bonnet height as a fraction of the image (0 = none)
    meta: dict = field(default_factory=dict)

    @property
    def anomalies(self) -> list[WorldObject]:
        return [o for o in self.objects if o.anomaly is not None]


@dataclass(frozen=True)
class Pose:
    """Camera pose: world position ``(x, s)``, yaw (rad, world), pitch and roll (rad)."""

    s: float
    x: float
    yaw: float
    pitch: float = 0.0
    roll: float = 0.0


SKYLINE_BINS = 1440


def _road(rng: np.random.Generator, s_min: float, s_max: float) -> Road:
    n_bends = 2
    wavelengths = rng.uniform(150, 450, n_bends)
    amps = rng.uniform(0, 1, n_bends) * wavelengths * rng.uniform(0.0, 0.035)
    lanes = 1 if rng.random() < 0.65 else 2
    n = int((s_max - s_min) / ZONE_STEP_M) + 1
    zones = np.zeros((2, n), np.uint8)
    for side in range(2):
        i = 0
        while i < n:
            length = int(rng.uniform(25, 90) / ZONE_STEP_M)
            zones[side, i:i + length] = GREEN if rng.random() < 0.4 else BUILT
            i += length
    return Road(amps, wavelengths, rng.uniform(0, 2 * np.pi, n_bends), lanes, float(rng.uniform(3.0, 3.7)),
                (float(rng.uniform(1.5, 4.0)), float(rng.uniform(1.5, 4.0))),
                str(rng.choice(["dashed", "dashed", "solid", "none"])), zones, s_min,
                float(rng.uniform(2.1, 2.6)) if rng.random() < 0.6 else 0.0)


def _palette(rng: np.random.Generator) -> dict:
    g = rng.uniform(65, 125)
    road = np.array([g, g, g * rng.uniform(0.97, 1.06)])
    if rng.random() < 0.3:
        sidewalk = rng.uniform(120, 170) * np.array([1.0, 0.7, 0.6])  # brick
    else:
        sidewalk = np.full(3, rng.uniform(105, 185)) * rng.uniform(0.95, 1.05, 3)
    overcast = rng.random() < 0.4
    sky_top = np.array([200, 205, 210.0]) * rng.uniform(0.8, 1.1) if overcast else \
        np.array([60, 120, 200.0]) * rng.uniform(0.8, 1.2, 3)
    sky_hor = np.array([215, 220, 225.0]) * rng.uniform(0.85, 1.05)
    return {"road": road, "sidewalk": sidewalk, "curb": sidewalk * 0.8,
            "terrain": np.array([rng.uniform(70, 140), rng.uniform(90, 150), rng.uniform(40, 80)]),
            "marking": np.array([235, 235, 230.0]) * rng.uniform(0.7, 1.0),
            "center_marking": np.array([235, 200, 60.0]) if rng.random() < 0.25 else np.array([235, 235, 230.0]),
            "sky_top": sky_top, "sky_horizon": sky_hor, "overcast": overcast}


def _light(rng: np.random.Generator) -> dict:
    az = rng.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(az), rng.uniform(0.4, 1.0), np.sin(az)])
    return {"sun": sun / np.linalg.norm(sun), "ambient": float(rng.uniform(0.55, 0.8)),
            "exposure": float(rng.uniform(0.75, 1.2)), "tint": rng.uniform(0.92, 1.08, 3),
            "fog_m": float(rng.uniform(120, 600)), "contrast": float(rng.uniform(0.85, 1.15)),
            "grain": float(rng.uniform(0.015, 0.04))}


def _skyline(rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((SKYLINE_BINS, 2), np.float32)
    i = 0
    while i < SKYLINE_BINS:
        w = int(rng.integers(4, 40))
        r = rng.random()
        out[i:i + w] = (0.0, 10) if r < 0.25 else (rng.uniform(0.005, 0.06), 2 if r < 0.7 else 8)
        i += w
    return out


def _roadside(rng: np.random.Generator, road: Road, s0: float, s1: float) -> list[WorldObject]:
    """Buildings, walls, fences, trees, hedges, poles, signs and lights along both sides."""
    objs: list[WorldObject] = []
    hw = road.half_width
    for side_idx, side in ((0, -1), (1, 1)):
        sw = road.sidewalk_w[side_idx]
        s = s0
        while s < s1:  # zone-following blocks
            zone = road.zone(side_idx, np.array([s]))[0]
            if zone == BUILT:
                length = float(rng.uniform(8, 24))
                setback = float(rng.uniform(0, 2.5)) if rng.random() < 0.4 else 0.0
                d = side * (hw + sw + setback)
                if rng.random() < 0.9:
                    objs.append(WorldObject("building", s + length / 2, d, ob.building(rng, length, side)))
                else:
                    maker = ob.wall if rng.random() < 0.5 else ob.fence
                    objs.append(WorldObject(maker.__name__, s + length / 2, d + side * 0.3, maker(rng, length)))
                s += length
            else:
                length = float(rng.uniform(4, 14))
                r = rng.random()
                d = side * (hw + sw + rng.uniform(0.5, 7.0))
                if r < 0.55:
                    objs.append(WorldObject("tree", s, d, ob.tree(rng)))
                elif r < 0.75:
                    objs.append(WorldObject("hedge", s + length / 2, side * (hw + sw + 0.8),
                                            ob.hedge(rng, length)))
                elif r < 0.85:
                    objs.append(WorldObject("fence", s + length / 2, side * (hw + sw + 0.2), ob.fence(rng, length)))
                s += length
        s = s0 + rng.uniform(0, 20)
        while s < s1:
            kind = str(rng.choice(["pole", "sign", "traffic_light", "tree"], p=[0.3, 0.35, 0.15, 0.2]))
            objs.append(WorldObject(kind, s, side * (hw + rng.uniform(0.3, 0.8)), ob.BUILDERS[kind](rng)))
            s += rng.uniform(10, 35)
    return objs


def _traffic(rng: np.random.Generator, road: Road, s0: float, s1: float, ego_d: float, ego_speed: float,
             video: bool) -> list[WorldObject]:
    """Parked and moving vehicles, pedestrians, riders and parked two-wheelers."""
    objs: list[WorldObject] = []
    hw, lw = road.half_width, road.lane_w

    def vehicle(kind: str | None = None) -> tuple[str, list[Part], float]:
        kind = kind or str(rng.choice(["car", "truck", "bus"], p=[0.8, 0.12, 0.08]))
        parts = ob.BUILDERS[kind](rng)
        length = float(max(p.polys[..., 2].max() for p in parts) * 2)
        return kind, parts, length

    for side in (-1, 1):  # parked along the kerb
        s = s0 + rng.uniform(0, 15)
        while s < s1 and road.parking_w > 0:
            if rng.random() < 0.35:
                kind, parts, length = vehicle("car" if rng.random() < 0.9 else "truck")
                objs.append(WorldObject(kind, s, side * (hw - road.parking_w / 2), parts, float(rng.normal(0, 0.03)),
                                        shadow=(1.0, length / 2)))
                s += length + rng.uniform(0.8, 3)
            else:
                s += rng.uniform(5, 25)
    density = rng.uniform(0.01, 0.04)
    for lane in range(road.lanes):  # same direction
        d = lw * (lane + 0.5)
        s = s0 + rng.uniform(5, 30)
        while s < s1:
            kind, parts, length = vehicle()
            near_ego = abs(d - ego_d) < 1.0
            if not (s < 10 and near_ego) and not (video and s < 15):
                # in a clip, cars ahead in the ego lane pull away; in other lanes, the ones far
                # ahead are slower (overtaken) and the near ones faster
                faster = near_ego or s < 60
                speed = ego_speed + (rng.uniform(0.3, 2.5) if faster else -rng.uniform(0.5, 2.5)) if video else 0.0
                objs.append(WorldObject(kind, s, d + rng.normal(0, 0.15), parts, 0.0, speed, (1.1, length / 2)))
            s += length + rng.exponential(1 / density) + (25 if near_ego and video else 4)
    for lane in range(road.lanes):  # oncoming
        d = -lw * (lane + 0.5)
        s = s0 + rng.uniform(0, 20)
        while s < s1 + (300 if video else 0):
            kind, parts, length = vehicle()
            speed = -rng.uniform(7, 13) if video else 0.0
            objs.append(WorldObject(kind, s, d + rng.normal(0, 0.15), parts, math.pi, speed, (1.1, length / 2)))
            s += length + rng.exponential(1 / density) + 4
    for side_idx, side in ((0, -1), (1, 1)):  # people and bicycles on the sidewalks
        sw = road.sidewalk_w[side_idx]
        s = s0 + rng.uniform(0, 10)
        while s < s1:
            d = side * (hw + rng.uniform(0.3, max(0.4, sw - 0.3)))
            if rng.random() < 0.8:
                for _ in range(int(rng.integers(1, 4))):
                    speed = rng.choice([-1, 1]) * rng.uniform(0.8, 1.6) if video else 0.0
                    objs.append(WorldObject("person", s + rng.uniform(-1, 1), d + rng.uniform(-0.4, 0.4),
                                            ob.person(rng), 0.0, speed, (0.3, 0.3)))
            else:
                label = ob.BICYCLE if rng.random() < 0.7 else ob.MOTORCYCLE
                objs.append(WorldObject("parked_two_wheeler", s, d, ob.parked_bicycle(rng, label), 0.0, 0.0,
                                        (0.3, 0.8)))
            s += rng.exponential(18) + 2
    s = max(s0, 0.0) + rng.uniform(12, 40)
    while s < s1:  # riders near the right edge
        speed = ego_speed * rng.uniform(0.3, 0.7) if video else 0.0
        d = road.lanes_half_width - rng.uniform(0.6, 1.0)
        if abs(d - ego_d) >= (1.8 if video else 0.0) and not (abs(d - ego_d) < 1.5 and s < 15):
            objs.append(WorldObject("rider", s, d, ob.rider(rng), 0.0, speed, (0.3, 0.9)))
        s += rng.exponential(60) + 10
    return objs


def place_anomalies(rng: np.random.Generator, family: str, count: int, road: Road, s_range: tuple[float, float],
                     taken: list[WorldObject], view_d: float | None) -> list[WorldObject]:
    """Anomalies on the road (70 %) or beside it, not overlapping parked objects; with ``view_d``
    (the camera's lateral offset) they are kept inside the camera's view cone."""
    out: list[WorldObject] = []
    hw = road.half_width
    occupied = [(o.s, o.d, (o.shadow or (0.5, 0.5))) for o in taken if o.shadow is not None and o.speed == 0]
    for k in range(count):
        spec = sample_anomaly(rng, family)
        lo, hi = (max(s_range[0], 12.0), s_range[1] + 10.0) if family == "hard" else s_range
        for _ in range(20):
            s = float(rng.uniform(lo, hi))
            if rng.random() < 0.7:  # on the road
                d = float(rng.uniform(-hw + 0.3 + spec.width_m / 2, hw - 0.3 - spec.width_m / 2))
            else:  # beside it: sidewalk or verge
                side = int(rng.choice([0, 1]))
                d = (1 if side else -1) * float(hw + rng.uniform(0.3, road.sidewalk_w[side] + 1.5))
            if view_d is not None and abs(d - view_d) > 0.55 * s - 0.5:
                continue
            clash = any(abs(s - os) < ol + spec.length_m / 2 + 0.5 and abs(d - od) < ow + spec.width_m / 2 + 0.3
                        for os, od, (ow, ol) in occupied)
            if not clash:
                break
        occupied.append((s, d, (spec.width_m / 2, spec.length_m / 2)))
        yaw = float(rng.uniform(0, 2 * np.pi)) if spec.generator in ("crate", "parcel", "hard_parcel") else 0.0
        out.append(WorldObject("anomaly", s, d, spec.parts, yaw, 0.0, (spec.width_m / 2, spec.length_m / 2),
                               spec, track_id=k + 1))
    return out


def sample_world(scene_rng: np.random.Generator, anomaly_rng: np.random.Generator | None, anomalies: str,
                 *, length_m: float = 100.0, ego_speed: float = 0.0, video: bool = False,
                 n_anomalies: int | None = None, anomaly_range: tuple[float, float] | None = None) -> World:
    """A world covering ``s`` in [-10, length_m + 10]; ``anomalies`` is a family or ``"none"``."""
    s0, s1 = -10.0, length_m + 10.0
    road = _road(scene_rng, s0 - 10, s1 + 400)
    ego_lane = int(scene_rng.integers(road.lanes))
    ego_d = road.lane_w * (ego_lane + 0.5)
    objs = _roadside(scene_rng, road, s0, s1)
    objs += _traffic(scene_rng, road, s0, s1, ego_d, ego_speed, video)
    world = World(road, objs, _palette(scene_rng), _light(scene_rng), _skyline(scene_rng),
                  hood=float(scene_rng.uniform(0.06, 0.12)) if scene_rng.random() < 0.3 else 0.0,
                  meta={"ego_d": ego_d})
    if anomaly_rng is not None and anomalies != "none":
        add_anomalies(world, anomaly_rng, anomalies, n_anomalies, anomaly_range, in_view=not video)
    return world


def add_anomalies(world: World, rng: np.random.Generator, family: str, count: int | None = None,
                  s_range: tuple[float, float] | None = None, in_view: bool = True) -> World:
    """Append anomalies of ``family`` (1-3 unless ``count``) drawn only from ``rng``; any previous
    anomalies are removed first."""
    world.objects = [o for o in world.objects if o.anomaly is None]
    count = count if count is not None else int(rng.integers(1, 4))
    world.objects += place_anomalies(rng, family, count, world.road, s_range or (5.0, 35.0), world.objects,
                                      world.meta["ego_d"] if in_view else None)
    return world


def still_pose(rng: np.random.Generator, world: World) -> Pose:
    road = world.road
    x = float(road.center(0.0)) + world.meta["ego_d"] + float(rng.normal(0, 0.3))
    yaw = float(road.heading(0.0)) + float(rng.normal(0, 0.03))
    return Pose(0.0, x, yaw, float(rng.normal(0, 0.012)), float(rng.normal(0, 0.012)))
