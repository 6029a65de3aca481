"""The timeline picture of a video: its frame score over time, the threshold and the events, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from m2a_pipe.video.events import Event, event_field

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


def draw_timeline(path: str | Path, pts_s: np.ndarray, frame_scores: np.ndarray,
                  events: Sequence[Event | Mapping[str, Any]] = (), *, threshold: float | None = None,
                  title: str = "", size: tuple[int, int] = (1200, 300)) -> None:
    """Write a PNG of the frame score over time, the threshold (dashed red), events (shaded, "#id").

    Args: ``pts_s`` and ``frame_scores`` (T,) float, NaN scores leave gaps; ``events`` as from
    :meth:`~m2a_pipe.video.events.EventBuilder.finish` or
    :func:`~m2a_pipe.video.events.read_events` (or their dicts); ``size`` (width, height) px.
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
