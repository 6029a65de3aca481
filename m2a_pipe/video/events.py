"""Anomalous events of one video: building them from final frames, thumbnails, writers and a timeline.

* :class:`EventBuilder` -- streaming, fed once per final frame (in order). Mode ``tracks``: one
  candidate per confirmed track; mode ``frames``: runs of frames whose frame score (given by the
  caller, e.g. the 99th percentile of the map) is >= ``frame_threshold``, bridging gaps of up to
  ``max_gap_frames`` frames. A candidate becomes an :class:`Event` when it lasts at least
  ``min_duration_s`` and its peak score is >= ``min_peak_score``.
* :func:`write_events` / :func:`read_events` -- ``events.jsonl`` and ``thumbs/event_NNNN.jpg``.
* :class:`TracksCsvWriter` / :func:`write_tracks_csv` / :func:`read_tracks_csv` -- MOTChallenge rows.
* :func:`draw_timeline` -- frame score over time with the threshold and the events, as a PNG.

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
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from m2a_pipe.inference.instances import Instance
from m2a_pipe.io.layout import EVENTS_FILE, THUMBS_DIR
from m2a_pipe.settings import EVENT_MODES

JPEG_QUALITY = 90
_DURATION_EPS_S = 1e-6  # float slack when comparing durations with the minimum


@dataclass(frozen=True)
class EventConfig:
    """Event settings.

    ``mode``: ``"tracks"`` or ``"frames"``. ``min_duration_s``: shortest event. ``min_peak_score``:
    weakest peak (instance peak score in ``tracks`` mode, frame score in ``frames`` mode).
    ``max_gap_frames``: frames below ``frame_threshold`` bridged inside one ``frames`` event.
    ``thumb_max_px``: longest thumbnail side; ``thumb_margin``: crop margin around the box, as a
    fraction of the box's longer side.
    """

    mode: str = "tracks"
    min_duration_s: float = 0.5
    min_peak_score: float = 0.5
    max_gap_frames: int = 2
    frame_threshold: float = 0.5
    thumb_max_px: int = 256
    thumb_margin: float = 0.25

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


def scaled_box(bbox: Sequence[float], scale: tuple[float, float]) -> list[float]:
    """(x0, y0, x1, y1) map box -> image box [x0, y0, x1, y1] (floats, rounded to 0.01 px)."""
    sx, sy = scale
    x0, y0, x1, y1 = bbox
    return [round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)]


def thumbnail(image: np.ndarray, box: Sequence[float], margin: float, max_px: int) -> np.ndarray:
    """Crop of an (H, W, 3) uint8 frame around an image-pixel box, with ``margin`` x the box's
    longer side (at least 4 px) on each side, shrunk (never enlarged) to at most ``max_px`` per side.

    Returns a new (h, w, 3) uint8 array that shares no memory with ``image``.
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box
    pad = max(4.0, margin * max(x1 - x0, y1 - y0))
    cx0, cy0 = int(max(0, np.floor(x0 - pad))), int(max(0, np.floor(y0 - pad)))
    cx1, cy1 = int(min(width, np.ceil(x1 + pad))), int(min(height, np.ceil(y1 + pad)))
    if cx1 <= cx0 or cy1 <= cy0:  # box outside the frame: the whole frame
        cx0, cy0, cx1, cy1 = 0, 0, width, height
    crop = image[cy0:cy1, cx0:cx1]
    factor = max_px / max(crop.shape[:2])
    if factor < 1:
        size = (max(1, int(round(crop.shape[1] * factor))), max(1, int(round(crop.shape[0] * factor))))
        return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    return crop.copy()


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

    def add(self, *, frame: int, pts_s: float, instances: Sequence[Instance] = (), track_ids: Sequence[int] = (),
            image: np.ndarray | None = None, scale: float | Sequence[float] = 1.0, frame_score: float | None = None,
            source_index: int | None = None, image_size: tuple[int, int] | None = None) -> None:
        """One final frame, in order.

        Args:
            frame: processed-frame key (strictly increasing); gaps are measured in it.
            pts_s: presentation time in seconds.
            instances / track_ids: the frame's detections (map pixels) and their ids (0 = none).
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
                           None if size is None else int(size[0]) * int(size[1]))
        if self.config.mode == "tracks":
            if track_ids and len(track_ids) != len(instances):
                raise ValueError(f"{len(track_ids)} track ids for {len(instances)} instances")
            for inst, tid in zip(instances, track_ids):
                if tid:
                    span = self._spans.get(int(tid))
                    if span is None:
                        span = self._spans[int(tid)] = _Span(int(tid), obs.key, obs.index, obs.pts_s)
                    self._observe(span, obs, inst.peak_score, inst)
        else:
            self._add_frame_score(obs, frame_score, instances)

    def finish(self) -> tuple[list[Event], dict[int, np.ndarray]]:
        """The events (ids 1, 2, ... in start order) and their thumbnails by event id."""
        spans = self._done + list(self._spans.values()) + ([self._run] if self._run is not None else [])
        self._spans, self._run, self._done = {}, None, []
        diffs = np.diff(self._pts)
        diffs = diffs[diffs > 0]
        period = float(np.median(diffs)) if diffs.size else 0.0
        keep = [s for s in spans if s.n_frames > 0 and s.peak_score >= self.config.min_peak_score
                and s.end_s - s.start_s + period >= self.config.min_duration_s - _DURATION_EPS_S]
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

    def _add_frame_score(self, obs: "_Observation", frame_score: float | None,
                         instances: Sequence[Instance]) -> None:
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
        largest = max(instances, key=lambda i: (i.area, i.peak_score), default=None)
        self._observe(run, obs, float(frame_score), largest)

    def _observe(self, span: _Span, obs: "_Observation", score: float, inst: Instance | None) -> None:
        """Extend ``span`` to this frame; ``score`` competes for the peak, ``inst`` gives box and area."""
        span.end_key, span.end_frame, span.end_s = obs.key, obs.index, obs.pts_s
        span.n_frames += 1
        if inst is not None and inst.area > span.max_area_px:
            span.max_area_px = int(inst.area)
            if obs.frame_px:
                span.max_area_fraction = round(inst.area * obs.scale[0] * obs.scale[1] / obs.frame_px, 6)
        if score > span.peak_score:
            span.peak_score, span.peak_frame, span.peak_s = score, obs.index, obs.pts_s
            span.bbox_at_peak = scaled_box(inst.bbox, obs.scale) if inst is not None else None
            if obs.image is not None and score >= self.config.min_peak_score:
                box = span.bbox_at_peak or [0, 0, obs.image.shape[1], obs.image.shape[0]]
                span.thumb = thumbnail(obs.image, box, self.config.thumb_margin, self.config.thumb_max_px)


@dataclass(frozen=True)
class _Observation:
    """One frame as the builder sees it; ``frame_px`` is H * W of the image (None if unknown)."""

    key: int
    index: int
    pts_s: float
    image: np.ndarray | None
    scale: tuple[float, float]
    frame_px: int | None


# --------------------------------------------------------------------------------------
# Writers and readers
# --------------------------------------------------------------------------------------


def thumbnail_name(event_id: int) -> str:
    """Relative path of an event's thumbnail: ``thumbs/event_0001.jpg``."""
    return f"{THUMBS_DIR}/event_{event_id:04d}.jpg"


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
            name = thumbnail_name(ev.event_id)
            (out_dir / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(thumb)).save(out_dir / name, format="JPEG", quality=JPEG_QUALITY)
            ev = replace(ev, thumbnail=name)
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


def _num(value: float) -> str:
    """Compact decimal: at most 2 decimals, no trailing zeros."""
    text = f"{float(value):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


class TracksCsvWriter:
    """Streaming MOTChallenge writer: ``frame, id, bb_left, bb_top, bb_width, bb_height, conf, -1, -1, -1``.

    ``frame`` and ``id`` are **1-based** in the file (``frame0 + 1``); boxes in the pixels given.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = self.path.open("w", encoding="utf-8", newline="")
        self.rows = 0

    def write(self, frame0: int, track_id: int, bbox_xyxy: Sequence[float], conf: float) -> None:
        """One box: 0-based ``frame0``, ``track_id`` >= 1, (x0, y0, x1, y1) exclusive box, confidence."""
        if frame0 < 0 or track_id < 1:
            raise ValueError(f"need frame0 >= 0 and track_id >= 1, got {frame0}, {track_id}")
        x0, y0, x1, y1 = (float(v) for v in bbox_xyxy)
        self._file.write(f"{int(frame0) + 1},{int(track_id)},{_num(x0)},{_num(y0)},{_num(x1 - x0)},"
                         f"{_num(y1 - y0)},{float(conf):.4f},-1,-1,-1\n")
        self.rows += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "TracksCsvWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_tracks_csv(path: str | Path, rows: Iterable[tuple[int, int, Sequence[float], float]]) -> int:
    """Write ``(frame0, track_id, bbox_xyxy, conf)`` rows with :class:`TracksCsvWriter`; returns the count."""
    with TracksCsvWriter(path) as writer:
        for frame0, track_id, box, conf in rows:
            writer.write(frame0, track_id, box, conf)
        return writer.rows


def read_tracks_csv(path: str | Path) -> np.ndarray:
    """A MOTChallenge CSV as an (N, 10) float64 array (columns as in the file: 1-based frame and id)."""
    text = Path(path).read_text(encoding="utf-8").strip()
    if not text:
        return np.zeros((0, 10))
    rows = [[float(v) for v in line.split(",")] for line in text.splitlines() if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


# --------------------------------------------------------------------------------------
# Timeline
# --------------------------------------------------------------------------------------

_TIMELINE_MARGINS_PX = (56, 28, 16, 36)  # left, top, right, bottom
_BG, _AXIS, _GRID, _CURVE = (255, 255, 255), (40, 40, 40), (225, 225, 225), (30, 80, 200)
_THRESH, _EVENT_FILL, _EVENT_TEXT = (210, 30, 30), (255, 214, 160), (150, 70, 0)


def nice_step(span: float, target_ticks: int) -> float:
    """A tick step of 1, 2 or 5 x 10^k giving about ``target_ticks`` ticks over ``span``."""
    if not span > 0:
        return 1.0
    raw = span / max(target_ticks, 1)
    power = 10.0 ** np.floor(np.log10(raw))
    for mult in (1.0, 2.0, 5.0, 10.0):
        if raw <= mult * power:
            return float(mult * power)
    return float(10 * power)


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, int(-np.floor(np.log10(step)))) if step < 1 else 0
    return f"{value:.{decimals}f}"


def event_field(event: Event | Mapping[str, Any], name: str) -> Any:
    """A field of an :class:`Event` or of its dict (as read back from ``events.jsonl``)."""
    return event[name] if isinstance(event, Mapping) else getattr(event, name)


def draw_timeline(path: str | Path, pts_s: np.ndarray, frame_scores: np.ndarray,
                  events: Sequence[Event | Mapping[str, Any]] = (), *, threshold: float | None = None,
                  title: str = "", size: tuple[int, int] = (1200, 300)) -> None:
    """Write a PNG of the frame score over time, the threshold (dashed red), events (shaded, "#id").

    Args: ``pts_s`` and ``frame_scores`` (T,) float, NaN scores leave gaps; ``events`` as from
    :meth:`EventBuilder.finish` or :func:`read_events` (or their dicts); ``size`` (width, height) px.
    The y range is [0, 1] when all scores (and the threshold) lie in it, else their range.
    """
    width, height = size
    t = np.asarray(pts_s, dtype=np.float64).ravel()
    s = np.asarray(frame_scores, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"pts_s {t.shape} and frame_scores {s.shape} differ")
    left, top, right, bottom = _TIMELINE_MARGINS_PX
    x_lo, x_hi = (float(t.min()), float(t.max())) if t.size else (0.0, 1.0)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
    finite = s[np.isfinite(s)]
    values = np.concatenate([finite, [threshold] if threshold is not None else []])
    y_lo, y_hi = 0.0, 1.0
    if values.size and (values.min() < 0 or values.max() > 1):
        y_lo, y_hi = min(0.0, float(values.min())), float(values.max())
        y_hi = y_hi if y_hi > y_lo else y_lo + 1.0
        y_hi += 0.05 * (y_hi - y_lo)

    def px(tx: np.ndarray | float) -> np.ndarray | float:
        return left + (np.asarray(tx) - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(vy: np.ndarray | float) -> np.ndarray | float:
        return height - bottom - (np.asarray(vy) - y_lo) / (y_hi - y_lo) * (height - top - bottom)

    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    plot_box = (left, top, width - right, height - bottom)

    for ev in events:  # shaded spans first, under everything else
        x0 = min(max(float(px(event_field(ev, "start_s"))), left), width - right - 2)
        x1 = min(max(float(px(event_field(ev, "end_s"))), x0 + 2), width - right)
        draw.rectangle((x0, top, x1, height - bottom), fill=_EVENT_FILL)
        draw.text((x0 + 2, top + 2), f"#{event_field(ev, 'event_id')}", fill=_EVENT_TEXT, font=font)

    y_step = nice_step(y_hi - y_lo, 4)
    for v in np.arange(np.ceil(y_lo / y_step) * y_step, y_hi + 1e-9, y_step):
        y = float(py(v))
        draw.line((left, y, width - right, y), fill=_GRID)
        draw.text((4, y - 6), _tick_label(v, y_step), fill=_AXIS, font=font)
    x_step = nice_step(x_hi - x_lo, max(2, (width - left - right) // 110))
    for v in np.arange(np.ceil(x_lo / x_step) * x_step, x_hi + 1e-9, x_step):
        x = float(px(v))
        draw.line((x, height - bottom, x, height - bottom + 4), fill=_AXIS)
        draw.text((x - 8, height - bottom + 6), _tick_label(v, x_step), fill=_AXIS, font=font)
    draw.text((width - right - 48, height - 14), "time (s)", fill=_AXIS, font=font)
    draw.text((4, 4), "frame score" + (f"   {title}" if title else ""), fill=_AXIS, font=font)

    if threshold is not None:
        y = float(py(threshold))
        for x in range(left, width - right, 12):
            draw.line((x, y, min(x + 6, width - right), y), fill=_THRESH, width=1)

    ok = np.isfinite(s)
    if ok.any():
        xs, ys = px(t), py(np.clip(s, y_lo, y_hi))
        breaks = np.flatnonzero(np.diff(ok.astype(np.int8)) != 0) + 1  # split at NaN gaps
        for seg in np.split(np.arange(t.size), breaks):
            if seg.size and ok[seg[0]]:
                points = list(zip(xs[seg].tolist(), ys[seg].tolist()))
                if len(points) == 1:
                    draw.point(points, fill=_CURVE)
                else:
                    draw.line(points, fill=_CURVE, width=1)
    draw.rectangle(plot_box, outline=_AXIS)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
