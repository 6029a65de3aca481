"""Anomalous events of one video, built from its final frames, and ``events.jsonl``.

* :class:`EventBuilder` -- streaming, fed once per final frame (in order) with the frame's
  :class:`~m2a_pipe.video.detections.Detections`. Mode ``tracks``: one candidate per confirmed
  track; mode ``frames``: runs of frames whose frame score (given by the caller, e.g. the 99th
  percentile of the map) is >= ``frame_threshold``, bridging gaps of up to ``max_gap_frames``
  frames. A candidate becomes an :class:`Event` when it lasts at least ``min_duration_s`` and
  its peak score is >= ``min_peak_score``.
* :func:`write_events` / :func:`read_events` -- ``events.jsonl`` (and the thumbnails, written by
  :mod:`m2a_pipe.video.thumbnails`).

Conventions: ``frame`` is the caller's processed-frame key (used for gaps), ``source_index`` the
frame's index in the video (reported as ``start_frame``/``end_frame``/``peak_frame``; defaults to
``frame``). Instances are in map pixels; ``scale`` maps them to image pixels (the frame given).
``duration_s = end_s - start_s + frame period`` (the median pts step of the video), so N
consecutive frames at F fps last N / F s. ``n_frames`` counts the frames where the event was
observed (track detected / frame score above the threshold), gaps excluded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from m2a_pipe.inference.instances import Instance
from m2a_pipe.io.layout import EVENTS_FILE
from m2a_pipe.settings import EVENT_MAX_WIDTH_FRACTION, EVENT_MODES
from m2a_pipe.video.detections import Detections, as_detections
from m2a_pipe.video.thumbnails import thumbnail, write_thumbnail

_DURATION_EPS_S = 1e-6  # float slack when comparing durations with the minimum


@dataclass(frozen=True)
class EventConfig:
    """Event settings.

    ``mode``: ``"tracks"`` or ``"frames"``. ``min_duration_s``: shortest event. ``min_peak_score``:
    weakest peak (instance peak score in ``tracks`` mode, frame score in ``frames`` mode).
    ``max_gap_frames``: frames below ``frame_threshold`` bridged inside one ``frames`` event.
    ``thumb_max_px``: longest thumbnail side; ``thumb_margin``: crop margin around the box, as a
    fraction of the box's longer side. ``max_width_fraction``: a track wider than this fraction
    of the frame in more than half of its frames makes no event (needs the image or its size).
    """

    mode: str = "tracks"
    min_duration_s: float = 0.5
    min_peak_score: float = 0.5
    max_gap_frames: int = 2
    frame_threshold: float = 0.5
    thumb_max_px: int = 256
    thumb_margin: float = 0.25
    max_width_fraction: float = EVENT_MAX_WIDTH_FRACTION

    def __post_init__(self) -> None:
        if self.mode not in EVENT_MODES:
            raise ValueError(f"mode must be one of {EVENT_MODES}, got {self.mode!r}")
        if self.min_duration_s < 0 or self.max_gap_frames < 0 or self.thumb_max_px < 8 or self.thumb_margin < 0:
            raise ValueError("min_duration_s, max_gap_frames, thumb_margin must be >= 0 and thumb_max_px >= 8")


@dataclass(frozen=True)
class Event:
    """One anomalous event (fields as written to ``events.jsonl``).

    ``kind`` is ``"track"`` or ``"frames"``; ``track_id`` is None for ``frames`` events;
    frames are source indices, times pts seconds; ``max_area_px`` is in map pixels and
    ``max_area_fraction`` of the frame; ``bbox_at_peak`` [x0, y0, x1, y1] (x1/y1 exclusive) in
    image pixels (the pipeline rescales both to source pixels before writing), None for a
    ``frames`` event whose peak frame has no instance; ``thumbnail`` is
    the path relative to the output folder once written.
    """

    event_id: int
    kind: str
    track_id: int | None
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    duration_s: float
    n_frames: int
    peak_score: float
    peak_frame: int
    peak_s: float
    max_area_px: int
    max_area_fraction: float | None
    bbox_at_peak: list[float] | None
    thumbnail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One line of JSON (no NaN: JSON has none)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Event":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------


def scaled_box(bbox: Sequence[float], scale: tuple[float, float],
               size: tuple[int, int] | None = None) -> list[float]:
    """(x0, y0, x1, y1) map box -> image box [x0, y0, x1, y1] (floats, rounded to 0.01 px),
    clipped to an image of ``size`` (H, W) when given."""
    sx, sy = scale
    x0, y0, x1, y1 = bbox
    box = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
    if size is not None:
        height, width = size
        box = [min(max(v, 0.0), lim) for v, lim in zip(box, (width, height, width, height))]
    return [round(v, 2) for v in box]


def _as_scale(scale: float | Sequence[float]) -> tuple[float, float]:
    if np.ndim(scale) == 0:
        return float(scale), float(scale)
    sx, sy = scale
    return float(sx), float(sy)


# --------------------------------------------------------------------------------------
# Streaming builder
# --------------------------------------------------------------------------------------


@dataclass
class _Span:
    """A candidate event being accumulated."""

    track_id: int | None
    start_key: int
    start_frame: int
    start_s: float
    end_key: int = 0
    end_frame: int = 0
    end_s: float = 0.0
    n_frames: int = 0
    peak_score: float = -np.inf
    peak_frame: int = 0
    peak_s: float = 0.0
    max_area_px: int = 0
    max_area_fraction: float | None = None
    bbox_at_peak: list[float] | None = None
    thumb: np.ndarray | None = None
    n_wide: int = 0  # observed frames whose box is wider than max_width_fraction of the frame


class EventBuilder:
    """Accumulates the events of one video from its final frames (module docstring).

    Memory: one small record per track / run plus at most one thumbnail (<= ``thumb_max_px``
    per side) per candidate whose peak already reaches ``min_peak_score`` (a closed frame run
    clearly shorter than ``min_duration_s`` drops its thumbnail at once).
    """

    def __init__(self, config: EventConfig = EventConfig()) -> None:
        self.config = config
        self._spans: dict[int, _Span] = {}  # tracks mode: by track id
        self._run: _Span | None = None  # frames mode: the open run
        self._done: list[_Span] = []
        self._pts: list[float] = []
        self._last_key: int | None = None

    def add(self, *, frame: int, pts_s: float, detections: Detections | Sequence[Instance] = (),
            image: np.ndarray | None = None, scale: float | Sequence[float] = 1.0, frame_score: float | None = None,
            source_index: int | None = None, image_size: tuple[int, int] | None = None) -> None:
        """One final frame, in order.

        Args:
            frame: processed-frame key (strictly increasing); gaps are measured in it.
            pts_s: presentation time in seconds.
            detections: the frame's :class:`~m2a_pipe.video.detections.Detections` (map pixels),
                or bare instances, which count as unconfirmed (enough for ``frames`` mode).
            image: the (H, W, 3) uint8 RGB frame for thumbnails (None: no thumbnails).
            scale: map -> image pixels, a number or (sx, sy).
            frame_score: the frame's score (required in ``frames`` mode).
            source_index: the frame's index in the video (default: ``frame``).
            image_size: (H, W) when ``image`` is None, for ``max_area_fraction``.
        """
        if self._last_key is not None and frame <= self._last_key:
            raise ValueError(f"frames must increase: got {frame} after {self._last_key}")
        self._last_key = int(frame)
        self._pts.append(float(pts_s))
        index = int(frame if source_index is None else source_index)
        size = image.shape[:2] if image is not None else image_size
        obs = _Observation(int(frame), index, float(pts_s), image, _as_scale(scale),
                           None if size is None else (int(size[0]), int(size[1])))
        detections = as_detections(detections)
        if self.config.mode == "tracks":
            for inst, tid in detections.confirmed():
                span = self._spans.get(tid)
                if span is None:
                    span = self._spans[tid] = _Span(tid, obs.key, obs.index, obs.pts_s)
                self._observe(span, obs, inst.peak_score, inst)
        else:
            self._add_frame_score(obs, frame_score, detections)

    def finish(self) -> tuple[list[Event], dict[int, np.ndarray]]:
        """The events (ids 1, 2, ... in start order) and their thumbnails by event id."""
        spans = self._done + list(self._spans.values()) + ([self._run] if self._run is not None else [])
        self._spans, self._run, self._done = {}, None, []
        diffs = np.diff(self._pts)
        diffs = diffs[diffs > 0]
        period = float(np.median(diffs)) if diffs.size else 0.0
        keep = [s for s in spans if s.n_frames > 0 and s.peak_score >= self.config.min_peak_score
                and s.end_s - s.start_s + period >= self.config.min_duration_s - _DURATION_EPS_S
                and 2 * s.n_wide <= s.n_frames]
        keep.sort(key=lambda s: (s.start_frame, s.end_frame, s.track_id or 0))
        events, thumbs = [], {}
        for event_id, s in enumerate(keep, start=1):
            events.append(Event(
                event_id=event_id, kind="track" if s.track_id is not None else "frames", track_id=s.track_id,
                start_frame=s.start_frame, end_frame=s.end_frame, start_s=s.start_s, end_s=s.end_s,
                duration_s=round(s.end_s - s.start_s + period, 6), n_frames=s.n_frames,
                peak_score=float(s.peak_score), peak_frame=s.peak_frame, peak_s=s.peak_s,
                max_area_px=s.max_area_px, max_area_fraction=s.max_area_fraction, bbox_at_peak=s.bbox_at_peak))
            if s.thumb is not None:
                thumbs[event_id] = s.thumb
        return events, thumbs

    # -- internals ---------------------------------------------------------------------

    def _add_frame_score(self, obs: "_Observation", frame_score: float | None, detections: Detections) -> None:
        if frame_score is None:
            raise ValueError("frames mode needs frame_score")
        run = self._run
        if run is not None and obs.key - run.end_key - 1 > self.config.max_gap_frames:
            step = self._pts[-1] - self._pts[-2]  # the current pts step; the median is only known at the end
            if run.end_s - run.start_s + 2 * step < self.config.min_duration_s:
                run.thumb = None  # clearly too short: free its thumbnail now
            self._done.append(run)
            run = self._run = None
        if not frame_score >= self.config.frame_threshold:
            return
        if run is None:
            run = self._run = _Span(None, obs.key, obs.index, obs.pts_s)
        largest = max(detections.instances, key=lambda i: (i.area, i.peak_score), default=None)
        self._observe(run, obs, float(frame_score), largest)

    def _observe(self, span: _Span, obs: "_Observation", score: float, inst: Instance | None) -> None:
        """Extend ``span`` to this frame; ``score`` competes for the peak, ``inst`` gives box and area."""
        span.end_key, span.end_frame, span.end_s = obs.key, obs.index, obs.pts_s
        span.n_frames += 1
        if span.track_id is not None and inst is not None and obs.size:
            x0, _, x1, _ = inst.box
            span.n_wide += int((x1 - x0) * obs.scale[0] > self.config.max_width_fraction * obs.size[1])
        if inst is not None and inst.area > span.max_area_px:
            span.max_area_px = int(inst.area)
            if obs.size:
                frame_px = obs.size[0] * obs.size[1]
                span.max_area_fraction = round(inst.area * obs.scale[0] * obs.scale[1] / frame_px, 6)
        if score > span.peak_score:
            span.peak_score, span.peak_frame, span.peak_s = score, obs.index, obs.pts_s
            span.bbox_at_peak = scaled_box(inst.box, obs.scale, obs.size) if inst is not None else None
            if obs.image is not None and score >= self.config.min_peak_score:
                box = span.bbox_at_peak or [0, 0, obs.image.shape[1], obs.image.shape[0]]
                span.thumb = thumbnail(obs.image, box, self.config.thumb_margin, self.config.thumb_max_px)


@dataclass(frozen=True)
class _Observation:
    """One frame as the builder sees it; ``size`` is (H, W) of the image (None if unknown)."""

    key: int
    index: int
    pts_s: float
    image: np.ndarray | None
    scale: tuple[float, float]
    size: tuple[int, int] | None


# --------------------------------------------------------------------------------------
# events.jsonl
# --------------------------------------------------------------------------------------


def write_events(out_dir: str | Path, events: Sequence[Event], thumbnails: Mapping[int, np.ndarray]) -> list[Event]:
    """Write ``out_dir/events.jsonl`` (one UTF-8 JSON object per line, maybe none) and each
    thumbnail (RGB uint8) as ``out_dir/thumbs/event_NNNN.jpg``.

    Returns the events with ``thumbnail`` set to the relative path of the ones written.
    """
    out_dir = Path(out_dir)
    written = []
    for ev in events:
        thumb = thumbnails.get(ev.event_id)
        if thumb is not None:
            ev = replace(ev, thumbnail=write_thumbnail(out_dir, ev.event_id, thumb))
        written.append(ev)
    text = "".join(ev.to_json() + "\n" for ev in written)
    (out_dir / EVENTS_FILE).write_text(text, encoding="utf-8")
    return written


def read_events(path: str | Path) -> list[Event]:
    """Events from an ``events.jsonl`` file (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / EVENTS_FILE
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Event.from_dict(json.loads(line)) for line in lines if line.strip()]


def event_field(event: Event | Mapping[str, Any], name: str) -> Any:
    """A field of an :class:`Event` or of its dict (as read back from ``events.jsonl``)."""
    return event[name] if isinstance(event, Mapping) else getattr(event, name)
