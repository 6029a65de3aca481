"""Tracking quality against the ground truth of synthetic clips (``CLIP.tracks.json``).

Frame convention: ground-truth boxes ``[frame0, left, top, width, height, area]`` have 0-based
frames (the clip's frame indices); the predicted MOTChallenge CSV (``tracks.csv``) has 1-based
frames. A CSV frame ``f`` is compared with the ground-truth frame
``frame0 = (f - frame_offset) * frame_step``: the defaults (``frame_offset=1``, ``frame_step=1``)
fit the pipeline run on every frame (its CSV frame is its processed-frame counter + 1); with
``--stride N`` use ``frame_step=N``. Only ground-truth frames ``0, frame_step, 2 frame_step, ...``
below the clip's frame count are evaluated.

Boxes: both files hold ``left, top, width, height`` in pixels of the same frame (the pipeline
writes source pixels; the synthetic ground truth is in source pixels); a box covers
``[left, left + width) x [top, top + height)``. ``box_scale`` multiplies predicted boxes if they
are in another resolution.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from m2a_pipe.video.events import Event, event_field
from m2a_pipe.video.mot import read_tracks_csv
from m2a_pipe.video.tracking import box_iou

MOT_METRICS = ("mota", "idf1", "motp", "num_switches", "num_fragmentations", "num_false_positives", "num_misses",
               "precision", "recall", "num_frames", "num_objects", "num_predictions", "num_unique_objects",
               "mostly_tracked")
_SECONDS_PER_MINUTE = 60.0

GtFrames = dict[int, list[tuple[int, np.ndarray, int]]]  # frame0 -> [(gt id, (4,) xyxy box, pixel area)]


def load_gt_tracks(gt_tracks_json: str | Path | Mapping[str, Any]) -> tuple[GtFrames, int]:
    """Ground-truth boxes by 0-based frame and the clip's frame count.

    ``gt_tracks_json``: a ``CLIP.tracks.json`` path or its parsed dict. The frame count is its
    ``frames`` attribute, else one past the last box.
    """
    data = gt_tracks_json if isinstance(gt_tracks_json, Mapping) else json.loads(Path(gt_tracks_json).read_text())
    frames: GtFrames = defaultdict(list)
    last = -1
    for track in data.get("tracks", []):
        for frame0, left, top, width, height, area in track["boxes"]:
            box = np.array([left, top, left + width, top + height], dtype=np.float64)
            frames[int(frame0)].append((int(track["id"]), box, int(area)))
            last = max(last, int(frame0))
    n_frames = int(data.get("frames", last + 1))
    return dict(frames), n_frames


def _pred_frames(rows: np.ndarray, frame_offset: int, frame_step: int,
                 box_scale: tuple[float, float]) -> dict[int, list[tuple[int, np.ndarray]]]:
    """CSV rows (N, >= 6) -> ground-truth frame0 -> [(pred id, (4,) xyxy box)]."""
    sx, sy = box_scale
    out: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for f, tid, left, top, width, height in rows[:, :6]:
        frame0 = (int(round(f)) - frame_offset) * frame_step
        box = np.array([left * sx, top * sy, (left + width) * sx, (top + height) * sy])
        out[frame0].append((int(round(tid)), box))
    return out


def _drop_ignored(preds: list[tuple[int, np.ndarray]], kept: np.ndarray, ignored: np.ndarray,
                  iou_threshold: float) -> list[tuple[int, np.ndarray]]:
    """Predictions minus those overlapping an ignored GT box (IoU > 0) that match no kept GT box."""
    if not preds or not len(ignored):
        return preds
    boxes = np.stack([b for _, b in preds])
    on_ignored = (box_iou(boxes, ignored) > 0).any(axis=1)
    on_kept = (box_iou(boxes, kept) >= iou_threshold).any(axis=1) if len(kept) else np.zeros(len(preds), bool)
    return [p for p, drop in zip(preds, on_ignored & ~on_kept) if not drop]


def mot_metrics(pred_tracks_csv: str | Path, gt_tracks_json: str | Path | Mapping[str, Any], *,
                iou_threshold: float = 0.5, frame_offset: int = 1, frame_step: int = 1, min_gt_area: int = 0,
                box_scale: tuple[float, float] = (1.0, 1.0)) -> dict[str, float]:
    """CLEAR-MOT and identity metrics of predicted tracks against synthetic ground truth (py-motmetrics).

    A prediction matches a ground-truth box when their IoU is >= ``iou_threshold``; matching per
    frame is motmetrics' (Hungarian on ``1 - IoU``, keeping previous matches when still valid).
    Ground-truth boxes of fewer than ``min_gt_area`` pixels (the file's ``area``) are ignored: they
    count neither as misses nor, through the predictions that only overlap them, as false positives.
    See the module docstring for the frame and box conventions.

    Returns floats: ``mota``, ``idf1``, ``motp`` (motmetrics' convention: mean ``1 - IoU`` of the
    matches, lower is better), ``mean_iou`` (``1 - motp``), ``num_switches``,
    ``num_fragmentations`` (a ground-truth track's coverage interrupted), ``num_false_positives``,
    ``num_misses``, ``precision``, ``recall`` and counts (``num_frames``,
    ``num_objects`` GT boxes, ``num_predictions``, ``num_unique_objects``, ``mostly_tracked``).
    NaN where undefined (e.g. ``motp`` without matches).
    """
    try:
        import motmetrics
    except ImportError as err:  # optional dependency, only needed here
        raise ImportError("mot_metrics needs py-motmetrics: pip install motmetrics") from err
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    gt, n_frames = load_gt_tracks(gt_tracks_json)
    preds = _pred_frames(read_tracks_csv(pred_tracks_csv), frame_offset, frame_step, box_scale)
    acc = motmetrics.MOTAccumulator(auto_id=False)
    for frame0 in range(0, n_frames, frame_step):
        objs = gt.get(frame0, [])
        kept = [(i, b) for i, b, area in objs if area >= min_gt_area]
        ignored = np.array([b for _, b, area in objs if area < min_gt_area]).reshape(-1, 4)
        kept_boxes = np.array([b for _, b in kept]).reshape(-1, 4)
        hyps = _drop_ignored(preds.get(frame0, []), kept_boxes, ignored, iou_threshold)
        hyp_boxes = np.array([b for _, b in hyps]).reshape(-1, 4)
        iou = box_iou(kept_boxes, hyp_boxes)
        dist = np.where(iou >= iou_threshold, 1.0 - iou, np.nan)
        acc.update([i for i, _ in kept], [i for i, _ in hyps], dist, frameid=frame0)
    summary = motmetrics.metrics.create().compute(acc, metrics=list(MOT_METRICS), name="clip")
    out = {name: float(summary.loc["clip", name]) for name in MOT_METRICS}
    out["mean_iou"] = 1.0 - out["motp"]
    return out


def instance_recall(instances: Mapping[int, np.ndarray], gt: GtFrames, frames: Sequence[int], *,
                    min_gt_area: int = 0, iou_threshold: float = 0.5) -> dict[str, float]:
    """How many visible ground-truth boxes an instance of their frame matches, whatever its track.

    ``instances``: 0-based frame -> (N, 4) float (x0, y0, x1, y1) boxes of every detection of that
    frame (``/instances``, track id 0 included), in the ground truth's pixels; ``frames``: the
    frames that were processed (the others are not counted). Each frame's boxes of at least
    ``min_gt_area`` pixels are matched one to one with its instances (Hungarian, as many pairs of
    IoU >= ``iou_threshold`` as there can be). A tracker that kept every matching instance and
    dropped every other would reach MOTA = ``recall`` on the visible boxes: the stage after the
    instances can do no better. Returns ``gt_boxes``, ``matched`` (ints) and ``recall`` (float,
    NaN without boxes).
    """
    n_boxes = n_matched = 0
    for frame0 in frames:
        boxes = np.array([b for _, b, area in gt.get(frame0, []) if area >= min_gt_area]).reshape(-1, 4)
        found = np.asarray(instances.get(frame0, np.zeros((0, 4))), np.float64).reshape(-1, 4)
        n_boxes += len(boxes)
        if not len(boxes) or not len(found):
            continue
        iou = box_iou(boxes, found)
        passing = iou >= iou_threshold
        rows, cols = linear_sum_assignment(-(passing + 1e-3 * iou))  # most passing pairs, then the best IoU
        n_matched += int(passing[rows, cols].sum())
    return {"gt_boxes": n_boxes, "matched": n_matched, "recall": n_matched / n_boxes if n_boxes else float("nan")}


# --------------------------------------------------------------------------------------
# False events
# --------------------------------------------------------------------------------------


def _intersects(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two (x0, y0, x1, y1) exclusive boxes share a positive area."""
    return bool(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]))


def is_true_event(event: Event | Mapping[str, Any], gt: GtFrames, box_scale: tuple[float, float] = (1.0, 1.0)) -> bool:
    """Whether an event overlaps a ground-truth anomaly in time and space.

    With a box (``bbox_at_peak``, scaled by ``box_scale`` into GT pixels): true if some GT track
    has, at the GT frame in ``[start_frame, end_frame]`` nearest to ``peak_frame`` where that track
    is visible (the peak frame itself when it is), a box that intersects the event's box (IoU > 0).
    Without a box (a frame-run event whose peak frame has no instance): true if any GT track is
    visible in ``[start_frame, end_frame]``. Event frames are 0-based clip frames (source indices).
    """
    start, end, peak = (int(event_field(event, k)) for k in ("start_frame", "end_frame", "peak_frame"))
    nearest: dict[int, tuple[int, np.ndarray]] = {}  # gt id -> (distance to the peak, box)
    for frame0 in range(start, end + 1):
        for gid, box, _ in gt.get(frame0, []):
            d = abs(frame0 - peak)
            if gid not in nearest or d < nearest[gid][0]:
                nearest[gid] = (d, box)
    bbox = event_field(event, "bbox_at_peak")
    if bbox is None:
        return bool(nearest)
    sx, sy = box_scale
    x0, y0, x1, y1 = bbox
    ev_box = np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
    return any(_intersects(ev_box, box) for _, box in nearest.values())


def false_events(events: Sequence[Event | Mapping[str, Any]], gt_tracks_json: str | Path | Mapping[str, Any], *,
                 box_scale: tuple[float, float] = (1.0, 1.0)) -> list[int]:
    """Ids of the events that are not true (:func:`is_true_event`)."""
    gt, _ = load_gt_tracks(gt_tracks_json)
    return [int(event_field(ev, "event_id")) for ev in events if not is_true_event(ev, gt, box_scale)]


def false_events_per_minute(events: Sequence[Event | Mapping[str, Any]],
                            gt_tracks_json: str | Path | Mapping[str, Any], fps: float, n_frames: int, *,
                            box_scale: tuple[float, float] = (1.0, 1.0)) -> float:
    """False events (:func:`false_events`) per minute of video (``n_frames / fps`` seconds)."""
    if not fps > 0 or n_frames < 1:
        raise ValueError(f"need fps > 0 and n_frames >= 1, got {fps}, {n_frames}")
    minutes = n_frames / fps / _SECONDS_PER_MINUTE
    return len(false_events(events, gt_tracks_json, box_scale=box_scale)) / minutes
