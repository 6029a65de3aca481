"""Rasteriser: one world + one camera pose -> image, labels and instance ids.

Per-pixel work is done only where it must be (the ground plane, whose labels and texture
come from each pixel's world coordinates, and the sky); objects are painter-sorted polygons
(far to near) rasterised with OpenCV into a single *primitive id* canvas, and every per-pixel
attribute (colour, label, instance, depth, texture amplitude) is a table lookup of that id.
Anomaly materials are painted per pixel in object-local metres (anomalies.paint).

Appearance: shaded faces (sun direction), soft car shadows, bank noise per material, sky
gradient and clouds, distance haze, exposure / tint / contrast, sensor grain and a slight
blur. Labels are never blurred.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from m2a_pipe.synth import textures as tx
from m2a_pipe.synth.anomalies import paint
from m2a_pipe.synth.geometry import ANOMALY, NEAR_M, VOID, Camera, clip_near
from m2a_pipe.synth.objects import BUILDING, ROAD, SIDEWALK, SKY, TERRAIN, THING_IDS
from m2a_pipe.synth.scene import BUILT, SKYLINE_BINS, Pose, World

FAR_OBJECTS_M = 160.0
LOD_PPM = 6.0  # objects under this many pixels per metre are drawn without decals
FAR_ANOMALY_M = 80.0  # anomalies come into view here (a few pixels), so tracks start mid-clip
FAR_GROUND_M = 1500.0
SKY_DEPTH_M = 1e4
_GROUND_TEX = np.zeros(256, np.float32)
_GROUND_TEX[[ROAD, SIDEWALK, TERRAIN]] = (0.07, 0.08, 0.2)
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)), np.zeros(12),
                    np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], 1).astype(np.float32)


@dataclass
class Frame:
    """A rendered view. ``label`` holds train ids, :data:`ANOMALY` (19) and :data:`VOID` (255);
    ``instances`` ids > 0 index ``segments`` (one per thing or anomaly instance in view)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8
    instances: np.ndarray  # (H, W) int32
    segments: list[dict]


@functools.lru_cache(maxsize=8)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    return u, v


def _ground(world: World, cam: Camera, pose: Pose, du: np.ndarray, dv: np.ndarray):
    """Labels, colours and depth of the ground pixels (flattened index ``idx``)."""
    road, pal = world.road, world.palette
    idx = np.flatnonzero(dv.ravel() > 0.35)
    z = np.minimum(cam.focal * cam.height_m / dv.ravel()[idx], FAR_GROUND_M)
    xc = du.ravel()[idx] * z / cam.focal
    cy, sy = math.cos(pose.yaw), math.sin(pose.yaw)
    x = pose.x + z * sy + xc * cy
    s = pose.s + z * cy - xc * sy
    d = (x - road.center(s)).astype(np.float32)
    ad = np.abs(d)
    hw, lw = road.half_width, road.lane_w
    right = d > 0
    sw = np.where(right, road.sidewalk_w[1], road.sidewalk_w[0])
    label = np.full(idx.shape, TERRAIN, np.uint8)
    outer = np.where(right, road.zone(1, s), road.zone(0, s))
    label[(outer == BUILT) | (ad < hw + sw)] = SIDEWALK
    on_road = ad < hw
    label[on_road] = ROAD
    color = np.empty((idx.size, 3), np.float32)
    for cls, key in ((ROAD, "road"), (SIDEWALK, "sidewalk"), (TERRAIN, "terrain")):
        color[label == cls] = pal[key]
    color[(ad >= hw) & (ad < hw + 0.2)] = pal["curb"]
    # lane markings (road class): edge lines, lane dividers, centre line
    dash = np.mod(s, 9.0) < 3.0
    mark = on_road & (np.abs(ad - (road.lanes_half_width - (0.2 if road.parking_w == 0 else 0.0))) < 0.08)
    for k in range(1, road.lanes):
        mark |= (np.abs(ad - k * lw) < 0.07) & dash
    if road.center_line != "none":
        centre = ad < 0.07
        mark_c = centre & (dash if road.center_line == "dashed" else True)
        color[mark_c] = pal["center_marking"]
    color[mark] = pal["marking"]
    amp = _GROUND_TEX[label]
    noise = 0.7 * tx.sample_at(tx.MEDIUM, x * 20, s * 20) + 0.3 * tx.sample_at(tx.FINE, x * 90, s * 90)
    dirt = tx.sample_at(tx.SMOOTH, x * 4, s * 4)
    color *= (1 + amp * noise + 0.05 * dirt)[:, None]
    return idx, label, color, z.astype(np.float32)


def _object_cameras(world: World, pose: Pose, t: float):
    objs = world.objects
    s = np.array([o.s_at(t) for o in objs])
    d = np.array([o.d for o in objs])
    x = world.road.center(s) + d
    yaw = world.road.heading(s) + np.array([o.yaw for o in objs]) - pose.yaw
    cy, sy = math.cos(pose.yaw), math.sin(pose.yaw)
    dx, ds = x - pose.x, s - pose.s
    return dx * cy - ds * sy, dx * sy + ds * cy, yaw


def _pack(obj) -> dict:
    """All vertices of an object's parts in one array (cached on the object)."""
    if "verts" not in obj.cache:
        parts = obj.parts
        sizes = np.array([p.polys.shape[0] * p.polys.shape[1] for p in parts])
        verts = np.concatenate([p.polys.reshape(-1, 3) for p in parts]).astype(np.float32)
        starts = np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.int64)
        obj.cache.update(
            verts=verts, starts=starts,
            normals=np.array([p.normal if p.normal is not None else (0, 0, 0) for p in parts], np.float32),
            solid=np.array([p.normal is not None for p in parts]),
            decal=np.array([p.decal for p in parts]),
            centres=(np.add.reduceat(verts, starts, axis=0) / sizes[:, None]).astype(np.float32))
    return obj.cache


def _object_polys(obj, rot: np.ndarray, origin: np.ndarray, cam: Camera, sun: np.ndarray, amb: float):
    """Yield ``(part, pixel polygons, bbox lo, bbox hi, light factor)`` in painter order:
    visible solid faces far to near, visible decals, then billboards in list order."""
    pk = _pack(obj)
    lens = np.array([0.0, cam.height_m, 0.0], np.float32)
    normals = pk["normals"] @ rot
    centres = pk["centres"] @ rot + origin
    facing = np.einsum("ij,ij->i", normals, lens - centres) > 0
    light = amb + (1 - amb) * np.where(pk["solid"], np.maximum(normals @ sun, 0), 0.55)
    dist = np.sum((centres - lens) ** 2, axis=1)
    solid = np.flatnonzero(pk["solid"] & facing & ~pk["decal"])
    order = list(solid[np.argsort(-dist[solid], kind="stable")])
    order += list(np.flatnonzero(pk["solid"] & facing & pk["decal"])) + list(np.flatnonzero(~pk["solid"]))
    verts = pk["verts"] @ rot + origin
    parts = obj.parts
    if verts[:, 2].min() >= NEAR_M:
        pix_all = np.round(cam.project(verts)).astype(np.int32)
        lo_all = np.minimum.reduceat(pix_all, pk["starts"], axis=0)
        hi_all = np.maximum.reduceat(pix_all, pk["starts"], axis=0)
        for i in order:
            shape = parts[i].polys.shape
            a = pk["starts"][i]
            yield parts[i], pix_all[a:a + shape[0] * shape[1]].reshape(shape[0], shape[1], 2), lo_all[i], hi_all[i], \
                light[i]
        return
    for i in order:  # some vertex behind the near plane: clip polygon by polygon
        pts = parts[i].polys @ rot + origin
        polys = [q for q in (clip_near(p) for p in pts) if q is not None]
        if polys:
            pix = [np.round(cam.project(p)).astype(np.int32) for p in polys]
            allp = np.concatenate(pix)
            yield parts[i], pix, allp.min(0), allp.max(0), light[i]


def render(world: World, pose: Pose, width: int, height: int, *, t: float = 0.0,
           tex_rng: np.random.Generator, grain_rng: np.random.Generator | None = None) -> Frame:
    """Render ``world`` at time ``t`` from ``pose``. ``tex_rng`` places the material noise
    (keep it fixed across a clip), ``grain_rng`` the sensor grain (defaults to ``tex_rng``)."""
    grain_rng = grain_rng or tex_rng
    cam = Camera.make(width, height, pose.pitch, pose.roll)
    u, v = _grid(width, height)
    du, dv = cam.unroll(u, v)
    pal, light = world.palette, world.light
    n = width * height
    label = np.full(n, SKY, np.uint8)
    color = np.empty((n, 3), np.float32)
    depth = np.full(n, SKY_DEPTH_M, np.float32)
    # sky gradient and far skyline
    up = np.flatnonzero(dv.ravel() <= 0.35)
    tsky = np.sqrt(np.clip(-dv.ravel()[up] / (0.6 * height), 0, 1))[:, None]
    sky = pal["sky_horizon"] * (1 - tsky) + pal["sky_top"] * tsky
    clouds = tx.screen_crop(tx.SMOOTH, height, width, tex_rng).ravel()[up]
    cloud_amt = 0.15 if pal["overcast"] else 0.45
    color[up] = sky + (np.clip(clouds - 0.3, 0, None) * cloud_amt)[:, None] * (250 - sky)
    az = pose.yaw + np.arctan(du[0] / cam.focal)
    bins = (np.mod(az / (2 * np.pi), 1.0) * SKYLINE_BINS).astype(np.int64) % SKYLINE_BINS
    sk_h, sk_lab = world.skyline[bins, 0], world.skyline[bins, 1].astype(np.uint8)
    above = (-dv < cam.focal * np.tan(sk_h)[None, :]) & (sk_h[None, :] > 0)
    sk = np.flatnonzero(above.ravel())
    label[sk] = np.broadcast_to(sk_lab[None, :], (height, width)).ravel()[sk]
    color[sk] = np.where((label[sk] == BUILDING)[:, None], np.float32([120, 120, 130]), np.float32([70, 95, 60]))
    depth[sk] = 400.0
    gi, glab, gcol, gz = _ground(world, cam, pose, du, dv)
    label[gi], color[gi], depth[gi] = glab, gcol, gz
    tex = np.zeros(n, np.float32)
    tex[sk] = 0.1

    # objects, far to near
    xc, zc, oyaw = _object_cameras(world, pose, t)
    half_fov = width / 2 / cam.focal
    dist = np.hypot(xc, zc)
    far = np.array([FAR_ANOMALY_M if o.anomaly is not None else FAR_OBJECTS_M for o in world.objects])
    vis = np.flatnonzero((zc > -25) & (zc < far) & (np.abs(xc) < np.maximum(zc, 0) * half_fov * 1.3 + 25))
    vis = vis[np.argsort(-dist[vis], kind="stable")]
    prim = np.full((height, width), -1, np.int32)
    shade = np.ones((height, width), np.float32)
    shadow_val = 0.78 if pal["overcast"] else 0.55
    sun, amb = light["sun"], light["ambient"]
    tab_col, tab_lab, tab_inst, tab_depth, tab_tex, patterned = [], [], [], [], [], []
    segments: list[dict] = []
    inst_of: dict[tuple[int, int], int] = {}
    for oi in vis:
        obj = world.objects[oi]
        c, s_ = math.cos(oyaw[oi]), math.sin(oyaw[oi])
        rot = np.array([[c, 0, -s_], [0, 1, 0], [s_, 0, c]], np.float32)  # row vectors: p @ rot
        origin = np.array([xc[oi], 0.0, zc[oi]], np.float32)
        if obj.shadow is not None and zc[oi] > 1.0:
            w, ln = obj.shadow
            fp = (_CIRCLE * np.float32([w * 1.15, 0.0, ln * 1.1])) @ rot + origin
            fp = clip_near(fp)
            if fp is not None:
                cv2.fillPoly(shade, [np.round(cam.project(fp)).astype(np.int32)], shadow_val)
        ppm = cam.focal / max(float(zc[oi]), NEAR_M)
        ou, ov = cam.project(np.array([xc[oi], 0.0, max(float(zc[oi]), NEAR_M)], np.float32))
        far_lod = ppm < LOD_PPM
        for part, pix, lo, hi, light_f in _object_polys(obj, rot, origin, cam, sun, amb):
            if hi[0] < 0 or hi[1] < 0 or lo[0] >= width or lo[1] >= height or (far_lod and part.decal):
                continue
            pid = len(tab_col)
            cv2.fillPoly(prim, pix, pid)
            lab = part.label
            inst = 0
            if lab in THING_IDS or lab == ANOMALY:
                key = (int(oi), lab)
                if key not in inst_of:
                    inst_of[key] = len(segments) + 1
                    info = {"id": inst_of[key], "label": int(lab), "object": int(oi), "kind": obj.kind}
                    if obj.anomaly is not None:
                        info.update(track_id=obj.track_id, family=obj.anomaly.family,
                                    generator=obj.anomaly.generator, pattern=obj.anomaly.pattern)
                    segments.append(info)
                inst = inst_of[key]
            tab_col.append(part.color * light_f)
            tab_lab.append(lab)
            tab_inst.append(inst)
            tab_depth.append(float(zc[oi]))
            tab_tex.append(part.tex)
            if part.pattern is not None:
                patterned.append((pid, part.pattern, light_f, lo, hi, ou, ov, ppm))

    flat_prim = prim.ravel()
    on = np.flatnonzero(flat_prim >= 0)
    if tab_col:
        ids = flat_prim[on]
        label[on] = np.asarray(tab_lab, np.uint8)[ids]
        color[on] = np.asarray(tab_col, np.float32)[ids]
        depth[on] = np.asarray(tab_depth, np.float32)[ids]
        tex[on] = np.asarray(tab_tex, np.float32)[ids]
    instances = np.zeros(n, np.int32)
    if tab_col:
        instances[on] = np.asarray(tab_inst, np.int32)[flat_prim[on]]
    for pid, pat, light_f, lo, hi, ou, ov, ppm in patterned:
        x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        x1, y1 = min(int(hi[0]) + 1, width), min(int(hi[1]) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.nonzero(prim[y0:y1, x0:x1] == pid)
        if yy.size == 0:
            continue
        yy, xx = yy + y0, xx + x0
        col = paint(pat, (xx - ou) / ppm, (ov - yy) / ppm)
        color[yy * width + xx] = col * light_f

    # materials, shadows, haze, camera response
    grain_noise = 0.6 * tx.screen_crop(tx.MEDIUM, height, width, tex_rng) + \
        0.4 * tx.screen_crop(tx.FINE, height, width, tex_rng)
    color *= (1 + tex * grain_noise.ravel())[:, None]
    shade_f = shade.ravel()
    shade_f[on] = 1.0
    color *= shade_f[:, None]
    haze = (1 - np.exp(-depth / light["fog_m"]))[:, None]
    color = color * (1 - haze) + pal["sky_horizon"] * haze
    img = color.reshape(height, width, 3)
    if world.hood > 0:
        _draw_hood(img, label.reshape(height, width), instances.reshape(height, width), world.hood, tex_rng)
    img = ((img / 255.0 - 0.5) * light["contrast"] + 0.5) * (light["exposure"] * light["tint"])
    img += light["grain"] * tx.screen_crop(tx.FINE, height, width, grain_rng)[..., None]
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    image = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return Frame(image, label.reshape(height, width), instances.reshape(height, width), segments)


def _draw_hood(img: np.ndarray, label: np.ndarray, instances: np.ndarray, frac: float,
               rng: np.random.Generator) -> None:
    """The ego vehicle's bonnet at the bottom of the frame (void)."""
    h, w = label.shape
    x = np.arange(w, dtype=np.float32)
    top = h * (1 - frac) + h * frac * 0.6 * ((x - w / 2) / (w / 2)) ** 2
    mask = np.arange(h, dtype=np.float32)[:, None] >= top[None, :]
    g = float(rng.uniform(20, 120))
    shine = np.clip(1.3 - (np.arange(h)[:, None] - top[None, :]) / (h * frac + 1), 0.6, 1.3)
    img[mask] = (np.array([g, g, g * 1.05], np.float32)[None, :] * shine[mask][:, None])
    label[mask] = VOID
    instances[mask] = 0
