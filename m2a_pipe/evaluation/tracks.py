"""``m2a-pipe evaluate tracks``: a video's tracks and events against ground-truth tracks.

Ground truth: a ``CLIP.tracks.json`` as ``m2a-pipe synth video`` writes it (boxes
``[frame0, left, top, width, height, area]``, 0-based frames, ``area`` the anomaly's visible
pixels), or a MOTChallenge ``gt.txt`` (``frame, id, left, top, width, height, conf, ...`` with
1-based frames; rows with ``conf`` 0 are left out, as MOTChallenge marks boxes not to evaluate;
the box's area stands for the visible pixels).

**The visible-box rule.** A ground-truth box counts when its visible area is at least
``min_area_fraction`` of the frame (the run's own ``min_area_fraction``, the smallest instance the
pipeline is set to report; 0.0005 by default, about 102 pixels of 640x320). Smaller boxes are
ignored: neither misses nor, through the predictions that only overlap them, false positives. An
*anomaly* of the ground truth is a track with at least one visible box.

Figures: MOTA, IDF1, ID switches, fragmentations (py-motmetrics, a match is IoU >= 0.5) of
``tracks.csv``, over the visible boxes; and event-level figures of ``events.jsonl``: an event is
*true* when its box at the peak intersects the box a ground-truth anomaly has at the frame of
the event's span nearest the peak, the anomaly being visible somewhere in the span
(:func:`event_owner`: the object under the event at the time of its peak, however small it is
at that moment); *ignored* when the object it meets is too small to count all through the span
(an object the ground truth has, left out by the rule, as MOTA leaves out the predictions on
it); *false* otherwise. An anomaly is *found* when
at least one true event is its; recall = found / anomalies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from m2a_pipe.errors import M2AError
from m2a_pipe.evaluation.tracking import GtFrames, load_gt_tracks, mot_metrics
from m2a_pipe.io.layout import SCORES_FILE, TRACKS_FILE
from m2a_pipe.video.events import Event, event_field, read_events
from m2a_pipe.video.tracking import box_iou

DEFAULT_MIN_AREA_FRACTION = 0.0005  # ProcessConfig's default, for outputs whose run did not record one
_SECONDS_PER_MINUTE = 60.0


class TrackEvaluationError(M2AError):
    """A video output folder or a ground-truth file that cannot be evaluated."""


def read_ground_truth(path: str | Path) -> dict[str, Any]:
    """A ground-truth file as a ``tracks.json`` dict (``frames``, ``width``/``height`` when known,
    ``tracks``: ``id`` and ``boxes``): ``CLIP.tracks.json`` as is, a MOTChallenge ``gt.txt``
    converted (module docstring). Raises TrackEvaluationError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TrackEvaluationError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from err
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
            if not isinstance(data.get("tracks"), list):
                raise ValueError("no 'tracks' list")
            for track in data["tracks"]:
                int(track["id"])
                for box in track["boxes"]:
                    if len(box) != 6:
                        raise ValueError(f"track {track['id']}: a box needs 6 numbers")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise TrackEvaluationError(f"{path}: not a tracks.json of m2a-pipe synth video ({err})") from err
        return data
    tracks: dict[int, list] = {}
    last = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split(",")]
            frame, tid, left, top, width, height = values[:6]
        except ValueError:
            raise TrackEvaluationError(f"{path}: line {n}: not a MOTChallenge row "
                                       "(frame, id, left, top, width, height, conf, ...)") from None
        if len(values) >= 7 and values[6] == 0:
            continue
        if frame < 1:
            raise TrackEvaluationError(f"{path}: line {n}: frames are 1-based, got {frame:g}")
        tracks.setdefault(int(tid), []).append([int(frame) - 1, left, top, width, height, width * height])
        last = max(last, int(frame))
    return {"frames": last, "tracks": [{"id": tid, "boxes": boxes} for tid, boxes in sorted(tracks.items())]}


def event_owner(event: Event | Mapping[str, Any], gt: GtFrames, min_gt_area: int = 0) -> tuple[int | None, bool]:
    """``(id, counts)``: the ground-truth track an event is about, and whether it counts.

    Each ground-truth track present in the event's ``[start_frame, end_frame]`` is seen at the frame
    of the span nearest ``peak_frame`` (its box there, whatever its size: the object under the
    event's box at the time of the peak). The event is the track's whose box there intersects the
    event's ``bbox_at_peak``, the largest IoU winning, tracks visible in the span (a box of at least
    ``min_gt_area``) before the others; without a box, the track nearest the peak in time.
    ``counts`` is True when that track is visible somewhere in the span. ``(None, False)``: a false
    event."""
    start, end, peak = (int(event_field(event, k)) for k in ("start_frame", "end_frame", "peak_frame"))
    nearest: dict[int, tuple[int, np.ndarray]] = {}
    visible: set[int] = set()
    for frame0 in range(start, end + 1):
        for gid, box, area in gt.get(frame0, []):
            d = abs(frame0 - peak)
            if gid not in nearest or d < nearest[gid][0]:
                nearest[gid] = (d, box)
            if area >= min_gt_area:
                visible.add(gid)
    if not nearest:
        return None, False
    bbox = event_field(event, "bbox_at_peak")
    if bbox is None:
        gid = min(nearest, key=lambda g: (g not in visible, nearest[g][0], g))
        return gid, gid in visible
    ids = sorted(nearest)
    boxes = np.stack([nearest[gid][1] for gid in ids])
    ev_box = np.asarray(bbox, dtype=np.float64)[None]
    lo, hi = np.maximum(ev_box[:, :2], boxes[:, :2]), np.minimum(ev_box[:, 2:], boxes[:, 2:])
    touching = (hi > lo).all(axis=1)
    if not touching.any():
        return None, False
    iou = box_iou(ev_box, boxes)[0]
    best = max((i for i in range(len(ids)) if touching[i]), key=lambda i: (ids[i] in visible, iou[i]))
    return ids[best], ids[best] in visible


def event_anomaly(event: Event | Mapping[str, Any], gt: GtFrames, min_gt_area: int = 0) -> int | None:
    """The ground-truth anomaly an event counts for (:func:`event_owner`), or None (an event that
    is false, or only on a track too small to count)."""
    gid, counts = event_owner(event, gt, min_gt_area)
    return gid if counts else None


def event_figures(events: Sequence[Event | Mapping[str, Any]], gt: GtFrames, minutes: float,
                  min_gt_area: int = 0) -> dict[str, Any]:
    """``gt_anomalies`` (tracks with a visible box), ``found`` (those with a true event),
    ``recall``, ``true_events``, ``false_events``, ``ignored_events`` (events about a ground-truth
    track too small to count in their span: the visible-box rule ignores them, as MOTA does the
    predictions on such boxes), ``false_per_minute`` and ``events_per_found`` (true events /
    found)."""
    anomalies = {gid for boxes in gt.values() for gid, _, area in boxes if area >= min_gt_area}
    owners = [event_owner(ev, gt, min_gt_area) for ev in events]
    found = {gid for gid, counts in owners if counts}
    true = sum(counts for _, counts in owners)
    false = sum(gid is None for gid, _ in owners)
    ignored = len(owners) - true - false
    return {"gt_anomalies": len(anomalies), "found": len(found & anomalies),
            "recall": round(len(found & anomalies) / len(anomalies), 4) if anomalies else None,
            "true_events": true, "false_events": false, "ignored_events": ignored,
            "false_per_minute": round(false / minutes, 3) if minutes > 0 else None,
            "events_per_found": round(true / len(found), 3) if found else None}


def evaluate_tracks(video_out: str | Path, gt_path: str | Path, *, iou_threshold: float = 0.5,
                    min_area_fraction: float | None = None) -> dict[str, Any]:
    """The report of ``m2a-pipe evaluate tracks`` for one video output folder (module docstring).

    ``min_area_fraction`` None: the run's own (from ``scores.h5``), else the default.
    """
    import h5py

    folder = Path(video_out)
    for name in (SCORES_FILE, TRACKS_FILE):
        if not (folder / name).is_file():
            raise TrackEvaluationError(f"{folder}: no {name} (not the output folder of one video)")
    try:
        with h5py.File(folder / SCORES_FILE, "r") as f:
            fps, width, height = float(f.attrs["fps"]), int(f.attrs["width"]), int(f.attrs["height"])
            index = f["frames/index"][:]
            run = json.loads(f.attrs.get("config", "{}"))
    except (OSError, KeyError, ValueError) as err:
        raise TrackEvaluationError(f"{folder / SCORES_FILE}: cannot read the frames ({err})") from err
    steps = np.unique(np.diff(index))
    if len(index) == 0 or len(steps) > 1 or index[0] != 0:
        raise TrackEvaluationError(f"{folder}: frames are not 0, N, 2N, ... of the clip (a sampled or cut run)")
    step = int(steps[0]) if len(steps) else 1
    gt_data = read_ground_truth(gt_path)
    gt, _ = load_gt_tracks(gt_data)
    fraction = min_area_fraction if min_area_fraction is not None else run.get("min_area_fraction",
                                                                                DEFAULT_MIN_AREA_FRACTION)
    min_gt_area = int(round(fraction * width * height))
    mot = mot_metrics(folder / TRACKS_FILE, gt_data, iou_threshold=iou_threshold, frame_step=step,
                      min_gt_area=min_gt_area)
    minutes = len(index) * step / fps / _SECONDS_PER_MINUTE
    events = read_events(folder)
    return {"video_out": str(folder), "ground_truth": str(gt_path), "frames": int(len(index)),
            "minutes": round(minutes, 4), "iou_threshold": iou_threshold,
            "visible_box_rule": f"ground-truth boxes of at least {min_gt_area} px ({fraction:g} of the "
                                f"{width}x{height} frame) count; smaller ones are ignored",
            "min_gt_area_px": min_gt_area,
            "mot_visible": {k: _number(mot[k]) for k in ("mota", "idf1", "num_switches", "num_fragmentations",
                                                        "num_misses", "num_false_positives", "num_objects",
                                                        "mostly_tracked", "num_unique_objects", "mean_iou")},
            "events": event_figures(events, gt, minutes, min_gt_area)}


def _number(value: float) -> float | int | None:
    if not np.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else round(float(value), 4)
