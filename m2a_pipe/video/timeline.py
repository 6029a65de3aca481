"""The timeline picture of a video as a PNG: the signal its events were made from, over time, the
threshold that signal is held to, a second signal for reference, and each event's span.

The pipeline plots, in ``tracks`` event mode, the *tracked score* (per frame, the highest peak score
of a detection on a track that made an event; no line where there is none) against the events'
minimum peak score, with the same score of the confirmed tracks that made no event (too short or
too weak) in light blue and the map's 99th percentile thin and grey; in ``frames`` mode the 99th
percentile against the threshold. A legend names each.
Event spans are shaded and drawn as bars labelled ``#id`` in rows under the top edge, so the
labels of overlapping or close events never cover each other; a label with no room is left out
(its bar stays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from m2a_pipe.video.events import Event, event_field

_TIMELINE_MARGINS_PX = (56, 28, 16, 36)  # left, top, right, bottom
_BG, _AXIS, _GRID, _CURVE = (255, 255, 255), (40, 40, 40), (225, 225, 225), (30, 80, 200)
_THRESH, _EVENT_FILL, _EVENT_TEXT = (210, 30, 30), (255, 214, 160), (150, 70, 0)
_REFERENCES, _EVENT_BAR = ((160, 160, 160), (140, 185, 240)), (235, 150, 60)
_LANE_PX, _MAX_LANES, _CHAR_PX = 12, 5, 6  # event label rows: height, count; default font width
SIGNAL_TRACKED = "tracked score (best peak of a track with an event)"
SIGNAL_P99 = "99th percentile of the map"
SIGNAL_NO_EVENT = "tracks without an event"


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


def event_lanes(spans: Sequence[tuple[float, float]], min_width: Sequence[float]) -> list[int]:
    """Row of each event label: the first row whose last label ends before this one starts.

    ``spans`` (x0, x1) pixels of each event in start order, ``min_width`` the pixels its label
    needs; returns one row per event, -1 when all :data:`_MAX_LANES` rows are taken there."""
    ends = [-np.inf] * _MAX_LANES
    rows = []
    for (x0, x1), need in zip(spans, min_width):
        row = next((r for r, end in enumerate(ends) if end < x0), -1)
        if row >= 0:
            ends[row] = max(x1, x0 + need) + 2
        rows.append(row)
    return rows


def draw_timeline(path: str | Path, pts_s: np.ndarray, frame_scores: np.ndarray,
                  events: Sequence[Event | Mapping[str, Any]] = (), *, threshold: float | None = None,
                  title: str = "", size: tuple[int, int] = (1200, 300), signal: str = "frame score",
                  references: Sequence[tuple[np.ndarray, str]] = (), threshold_label: str = "threshold") -> None:
    """Write a PNG of ``frame_scores`` over time (module docstring), the threshold (dashed red),
    events (shaded spans, bars labelled "#id") and a legend.

    Args: ``pts_s`` and ``frame_scores`` (T,) float, NaN scores leave gaps; ``signal`` names the
    curve in the legend; ``references``: up to two more (T,) float signals with their names,
    drawn thin, grey then light blue; ``threshold_label`` names the dashed line; ``events`` as
    from :meth:`~m2a_pipe.video.events.EventBuilder.finish` or
    :func:`~m2a_pipe.video.events.read_events` (or their dicts); ``size`` (width, height) px.
    The y range is [0, 1] when all scores (and the threshold) lie in it, else their range.
    """
    width, height = size
    t = np.asarray(pts_s, dtype=np.float64).ravel()
    s = np.asarray(frame_scores, dtype=np.float64).ravel()
    refs = [(np.asarray(values, dtype=np.float64).ravel(), name) for values, name in references]
    if t.shape != s.shape or any(ref.shape != t.shape for ref, _ in refs) or len(refs) > len(_REFERENCES):
        raise ValueError(f"pts_s {t.shape}, frame_scores {s.shape} and the references differ (or more than two)")
    left, top, right, bottom = _TIMELINE_MARGINS_PX
    x_lo, x_hi = (float(t.min()), float(t.max())) if t.size else (0.0, 1.0)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
    every = np.concatenate([s, *[ref for ref, _ in refs], [threshold] if threshold is not None else []])
    values = every[np.isfinite(every)]
    y_lo, y_hi = 0.0, 1.0
    if values.size and (values.min() < 0 or values.max() > 1):
        y_lo, y_hi = min(0.0, float(values.min())), float(values.max())
        y_hi = y_hi if y_hi > y_lo else y_lo + 1.0
        y_hi += 0.05 * (y_hi - y_lo)
    lanes_px = _LANE_PX * _MAX_LANES if len(events) else 0  # label rows above the curve's range
    plot_top = top + lanes_px

    def px(tx: np.ndarray | float) -> np.ndarray | float:
        return left + (np.asarray(tx) - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(vy: np.ndarray | float) -> np.ndarray | float:
        return height - bottom - (np.asarray(vy) - y_lo) / (y_hi - y_lo) * (height - plot_top - bottom)

    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    spans = []
    for ev in events:  # shaded spans first, under everything else
        x0 = min(max(float(px(event_field(ev, "start_s"))), left), width - right - 2)
        x1 = min(max(float(px(event_field(ev, "end_s"))), x0 + 2), width - right)
        draw.rectangle((x0, top, x1, height - bottom), fill=_EVENT_FILL)
        spans.append((x0, x1))
    labels = [f"#{event_field(ev, 'event_id')}" for ev in events]
    for (x0, x1), label, row in zip(spans, labels, event_lanes(spans, [_CHAR_PX * len(n) + 4 for n in labels])):
        if row < 0:
            continue
        y = top + row * _LANE_PX
        draw.rectangle((x0, y + _LANE_PX - 3, x1, y + _LANE_PX - 2), fill=_EVENT_BAR)
        draw.text((x0 + 2, y), label, fill=_EVENT_TEXT, font=font)

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

    if threshold is not None:
        y = float(py(threshold))
        for x in range(left, width - right, 12):
            draw.line((x, y, min(x + 6, width - right), y), fill=_THRESH, width=1)
    for (ref, _), colour in zip(refs, _REFERENCES):
        _curve(draw, px(t), py(np.clip(ref, y_lo, y_hi)), np.isfinite(ref), colour, 1)
    _curve(draw, px(t), py(np.clip(s, y_lo, y_hi)), np.isfinite(s), _CURVE, 2)
    draw.rectangle((left, top, width - right, height - bottom), outline=_AXIS)

    legend = [(_CURVE, "line", signal)] + [(colour, "line", name) for (_, name), colour in zip(refs, _REFERENCES)] \
        + ([(_THRESH, "dash", threshold_label)] if threshold is not None else []) \
        + ([(_EVENT_BAR, "box", "event span (#id)")] if len(events) else [])
    x = _legend(draw, font, legend, width - right, 8)
    room = max(0, (x - 12 - 4) // _CHAR_PX)
    draw.text((4, 4), title if len(title) <= room else "..." + title[len(title) - room + 3:], fill=_AXIS, font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def _curve(draw: ImageDraw.ImageDraw, xs: np.ndarray, ys: np.ndarray, ok: np.ndarray, colour, width: int) -> None:
    """A polyline through (xs, ys) (T,) pixels, broken where ``ok`` (T,) bool is False."""
    breaks = np.flatnonzero(np.diff(ok.astype(np.int8)) != 0) + 1
    for seg in np.split(np.arange(ok.size), breaks):
        if seg.size and ok[seg[0]]:
            points = list(zip(xs[seg].tolist(), ys[seg].tolist()))
            if len(points) == 1:
                x, y = points[0]
                draw.rectangle((x - 1, y - 1, x + 1, y + 1), fill=colour)
            else:
                draw.line(points, fill=colour, width=width)


def _legend(draw: ImageDraw.ImageDraw, font, items: list[tuple], right: float, y: float) -> float:
    """Legend entries (colour, "line" | "dash" | "box", text) in one row ending at ``right``;
    returns the x where the row starts."""
    widths = [22 + _CHAR_PX * len(text) + 14 for _, _, text in items]
    x = right - sum(widths)
    start = x
    for (colour, kind, text), w in zip(items, widths):
        if kind == "line":
            draw.line((x, y, x + 16, y), fill=colour, width=2)
        elif kind == "dash":
            draw.line((x, y, x + 6, y), fill=colour)
            draw.line((x + 10, y, x + 16, y), fill=colour)
        else:
            draw.rectangle((x, y - 4, x + 16, y + 4), fill=_EVENT_FILL, outline=colour)
        draw.text((x + 22, y - 6), text, fill=_AXIS, font=font)
        x += w
    return start
