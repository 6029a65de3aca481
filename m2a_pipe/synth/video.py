"""Temporally coherent dashcam clips with per-frame anomaly ground truth.

One world is drawn per clip; the ego car drives along the road at a constant speed with a
slow lane wobble (smooth steering), small pitch / roll oscillations (road bumps); traffic
moves (same-direction cars never slower than the ego car in its lane, oncoming cars,
walking pedestrians, riders), and the anomalies are static objects spread along the route
so that each appears far ahead, grows, and leaves the view as the car passes it. Material
noise is fixed for the clip; only the sensor grain changes per frame.

Files written for ``CLIP.mp4``:

* ``CLIP.mp4``: H.264 (libx264, yuv420p), constant ``fps``, frame i at pts i / fps;
* ``CLIP.gt.h5``: datasets ``anomaly_mask`` (T, H, W) uint8 0/1, ``track_ids`` (T, H, W)
  uint16 (0 = no anomaly, else the anomaly's persistent track id), ``semantic`` (T, H, W)
  uint8 (train ids, 255 = void / anomaly), ``frame_index`` (T,) and ``pts_s`` (T,); attributes
  fps, width, height, frames, seed, anomalies, generator, version;
* ``CLIP.tracks.json``: ``{"tracks": [{"id", "family", "generator", "pattern", "first_frame",
  "last_frame", "visible_frames", "boxes": [[frame, left, top, width, height, area], ...]}], ...}``
  listing every anomaly visible in at least one frame (frames 0-based, boxes in pixels).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import h5py
import numpy as np

from m2a_pipe._version import __version__
from m2a_pipe.errors import UsageError
from m2a_pipe.synth.anomalies import FAMILY_CODES
from m2a_pipe.synth.geometry import ANOMALY, VOID
from m2a_pipe.synth.render import render
from m2a_pipe.synth.sample import ANOMALY_OPTIONS, parse_size
from m2a_pipe.synth.scene import Pose, World, place_anomalies, sample_world

GT_SUFFIX = ".gt.h5"
TRACKS_SUFFIX = ".tracks.json"
ANOMALY_SPACING_S = 4.0  # one anomaly per this many seconds of driving (at least 2)


def gt_paths(clip: Path) -> tuple[Path, Path]:
    clip = Path(clip)
    return clip.with_name(clip.stem + GT_SUFFIX), clip.with_name(clip.stem + TRACKS_SUFFIX)


def make_drive(seed: int, seconds: float, anomalies: str = "eval") -> tuple[World, Callable[[float], Pose], dict]:
    """The clip's world, its ego pose as a function of time, and drive parameters."""
    rng = np.random.default_rng([seed, 0, 100])
    speed = float(rng.uniform(8.0, 12.0))
    route = speed * seconds
    world = sample_world(rng, None, "none", length_m=route + 150.0, ego_speed=speed, video=True)
    ego_d = world.meta["ego_d"]
    wobble_a, wobble_p, wobble_ph = float(rng.uniform(0.1, 0.35)), float(rng.uniform(6, 14)), float(rng.uniform(0, 6))
    bump = (float(rng.uniform(0.002, 0.006)), float(rng.uniform(0.8, 1.6)), float(rng.uniform(0.001, 0.004)))
    if anomalies != "none":
        arng = np.random.default_rng([seed, 1, 100, FAMILY_CODES[anomalies]])
        n = max(2, int(round(seconds / ANOMALY_SPACING_S)))
        lo, hi = 30.0, max(45.0, route + 10.0)
        span = (hi - lo) / n
        for k in range(n):
            placed = place_anomalies(arng, anomalies, 1, world.road, (lo + k * span, lo + (k + 1) * span),
                                      world.objects, None)
            placed[0].track_id = k + 1
            world.objects += placed
    road = world.road

    def pose(t: float) -> Pose:
        s = speed * t
        d = ego_d + wobble_a * math.sin(2 * math.pi * t / wobble_p + wobble_ph)
        dd = wobble_a * 2 * math.pi / wobble_p * math.cos(2 * math.pi * t / wobble_p + wobble_ph) / speed
        yaw = float(road.heading(s)) + math.atan(dd)
        pitch = bump[0] * math.sin(2 * math.pi * bump[1] * t) + 0.6 * bump[0] * math.sin(2 * math.pi * 2.7 * t + 1)
        roll = bump[2] * math.sin(2 * math.pi * 0.7 * t + 2)
        return Pose(s, float(road.center(s)) + d, yaw, pitch, roll)

    return world, pose, {"ego_speed_mps": speed, "route_m": route}


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1), int(ys.size)]


def write_video(path, seed: int, seconds: float, fps: float, size=(640, 320), anomalies: str = "eval", *,
                crf: int = 28, progress: Callable[[int], None] | None = None) -> dict:
    """Render and encode a clip with its ground truth (module docstring); returns a summary."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise UsageError(f"{path}: the clip must be an .mp4 file")
    if anomalies not in ANOMALY_OPTIONS:
        raise UsageError(f"anomalies must be one of {ANOMALY_OPTIONS}, got {anomalies!r}")
    if not seconds > 0 or not fps > 0 or fps > 120:
        raise UsageError(f"seconds must be > 0 and fps in (0, 120], got {seconds} s at {fps} fps")
    width, height = parse_size(size)
    frames = max(1, int(round(seconds * fps)))
    world, pose_at, drive = make_drive(seed, seconds, anomalies)
    world.light["grain"] *= 0.35  # grain changes every frame; keep it low so the clip stays small
    path.parent.mkdir(parents=True, exist_ok=True)
    gt_path, tracks_path = gt_paths(path)
    tex_seed = [seed, 2, 100]
    tracks: dict[int, dict] = {}
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w") as container, h5py.File(gt_path, "w") as h5:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        opts = {"chunks": (1, height, width), "compression": "gzip", "compression_opts": 4}
        d_mask = h5.create_dataset("anomaly_mask", (frames, height, width), np.uint8, **opts)
        d_track = h5.create_dataset("track_ids", (frames, height, width), np.uint16, **opts)
        d_sem = h5.create_dataset("semantic", (frames, height, width), np.uint8, **opts)
        h5.create_dataset("frame_index", data=np.arange(frames, dtype=np.int64))
        h5.create_dataset("pts_s", data=np.arange(frames, dtype=np.float64) / float(rate))
        for i in range(frames):
            t = i / float(rate)
            frame = render(world, pose_at(t), width, height, t=t, tex_rng=np.random.default_rng(tex_seed),
                           grain_rng=np.random.default_rng([seed, 3, i]))
            anomaly = frame.label == ANOMALY
            track_map = np.zeros(len(frame.segments) + 1, np.uint16)
            for seg in frame.segments:
                if seg["label"] == ANOMALY:
                    track_map[seg["id"]] = seg["track_id"]
            track_ids = np.where(anomaly, track_map[frame.instances], 0).astype(np.uint16)
            d_mask[i] = anomaly.astype(np.uint8)
            d_track[i] = track_ids
            d_sem[i] = np.where(frame.label >= ANOMALY, np.uint8(VOID), frame.label)
            for seg in frame.segments:
                if seg["label"] != ANOMALY:
                    continue
                m = track_ids == seg["track_id"]
                if not m.any():
                    continue
                tr = tracks.setdefault(seg["track_id"], {"id": seg["track_id"], "family": seg["family"],
                                                         "generator": seg["generator"], "pattern": seg["pattern"],
                                                         "first_frame": i, "boxes": []})
                tr["last_frame"] = i
                tr["boxes"].append([i, *_box(m)])
            vf = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            vf.pts = i
            vf.time_base = 1 / rate
            for packet in stream.encode(vf):
                container.mux(packet)
            if progress:
                progress(1)
        for packet in stream.encode():
            container.mux(packet)
        attrs = {"fps": float(rate), "width": width, "height": height, "frames": frames, "seed": int(seed),
                 "anomalies": anomalies, "generator": "m2a-pipe synth", "version": 1, "package_version": __version__,
                 "clip": path.name, **drive}
        h5.attrs.update(attrs)
    for tr in tracks.values():
        tr["visible_frames"] = len(tr["boxes"])
    summary = {**attrs, "tracks": sorted(tracks.values(), key=lambda tr: tr["id"]),
               "placed_anomalies": len(world.anomalies)}
    tracks_path.write_text(json.dumps(summary))
    summary["bytes"] = path.stat().st_size
    return summary
