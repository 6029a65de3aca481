"""Heatmap overlay of an anomaly map on its frame, with instance contours, track boxes and a time code.

Pure functions (cv2 + vectorised numpy). Colours are RGB. Only the part of the frame where the
blend weight can be non-zero is coloured and blended (:func:`heat_region`), so cost grows with
the anomalous area: about 1 ms for a 1024x512 frame with a few small blobs, ~3 ms for a full one.

Coordinates: the anomaly map may have any resolution (h, w); it is resized to the frame (H, W)
with cv2 bilinear interpolation (pixel centres aligned). Instances are given in the **map's**
pixel coordinates (as :func:`m2a_pipe.inference.instances.anomaly_instances` makes them) and scaled by
``(W / w, H / h)``: map pixel column ``x`` covers image columns ``[x * W / w, (x + 1) * W / w)``.
"""

from __future__ import annotations

import colorsys
import functools
from typing import Sequence

import cv2
import numpy as np

from m2a_pipe.inference.instances import Instance
from m2a_pipe.video.detections import Detections, as_detections

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN_RATIO = 0.618033988749895
_UNTRACKED_RGB = (220, 220, 220)
_BACKING_RGB = (0, 0, 0)
_TEXT_RGB = (255, 255, 255)


def timecode(pts_s: float, frame: int) -> str:
    """``"HH:MM:SS.mmm  f N"``, e.g. ``timecode(83.456, 1234) == "00:01:23.456  f 1234"``.

    ``pts_s`` is rounded to the millisecond; negative times get a leading ``-``.
    """
    total_ms = int(round(abs(float(pts_s)) * 1000))
    sign = "-" if pts_s < 0 and total_ms else ""
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, ms = divmod(rest, 1000)
    return f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}  f {int(frame)}"


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A bright RGB colour per track id (hues spread by the golden ratio); grey for id 0."""
    if track_id <= 0:
        return _UNTRACKED_RGB
    r, g, b = colorsys.hsv_to_rgb((track_id * _GOLDEN_RATIO) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def heat_weights(scores: np.ndarray, alpha: float, vmin: float, vmax: float,
                 threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised score and per-pixel blend weight of an (H, W) float map.

    Returns ``(norm, weight)``, both (H, W) float32: ``norm = clip((s - vmin) / (vmax - vmin), 0, 1)``
    (NaN -> 0) and ``weight = alpha * norm``, zero where ``s < threshold`` when one is given.
    """
    if not vmax > vmin:
        raise ValueError(f"need vmax > vmin, got vmin={vmin}, vmax={vmax}")
    norm = scores.astype(np.float32, copy=True)
    norm -= np.float32(vmin)
    norm *= np.float32(1.0 / (vmax - vmin))
    np.fmax(norm, 0.0, out=norm)  # fmax / fmin return the number where the other is NaN: NaN -> 0
    np.fmin(norm, 1.0, out=norm)
    weight = norm * np.float32(alpha)
    if threshold is not None:
        np.multiply(weight, scores >= threshold, out=weight)
    return norm, weight


def heat_region(anomaly: np.ndarray, image_size: tuple[int, int], vmin: float,
                threshold: float | None) -> tuple[int, int, int, int] | None:
    """Image rows/columns ``(y0, y1, x0, x1)`` outside which the blend weight of an (h, w) map is 0.

    A map pixel can colour the image when its score is > ``vmin`` and >= ``threshold`` (if given);
    the bilinear upsampled score at an image pixel mixes its two nearest map pixels per axis, so
    the region is those pixels' bounding box grown by one map pixel, scaled to ``image_size``
    (H, W). None when no map pixel qualifies.
    """
    active = anomaly > vmin
    if threshold is not None:
        active &= anomaly >= threshold
    rows, cols = np.flatnonzero(active.any(axis=1)), np.flatnonzero(active.any(axis=0))
    if rows.size == 0:
        return None
    (height, width), (h, w) = image_size, anomaly.shape
    sy, sx = height / h, width / w
    return (max(0, int(np.floor((rows[0] - 1) * sy))), min(height, int(np.ceil((rows[-1] + 2) * sy))),
            max(0, int(np.floor((cols[0] - 1) * sx))), min(width, int(np.ceil((cols[-1] + 2) * sx))))


@functools.lru_cache(maxsize=None)
def _rgb_colormap(colormap: int) -> np.ndarray:
    """(256, 1, 3) uint8 RGB lookup table of a cv2 colormap (cv2's own tables are BGR)."""
    return np.ascontiguousarray(cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], colormap)[..., ::-1])


def _contour_polylines(inst: Instance, sx: float, sy: float) -> list[np.ndarray]:
    """Outer contours of an instance's mask as int32 (K, 1, 2) image-pixel polylines."""
    contours, _ = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    x0, y0 = inst.bbox[:2]
    out = []
    for c in contours:
        pts = c.astype(np.float32) + np.float32([x0, y0])
        pts = (pts + 0.5) * np.float32([sx, sy]) - 0.5  # map pixel centre -> image pixel centre
        out.append(np.round(pts).astype(np.int32))
    return out


def _label(img: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int], scale: float,
           thickness: int) -> None:
    """Text with its baseline-left corner at (x, y) on a filled ``colour`` box, black letters."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    h, w = img.shape[:2]
    x = int(min(max(x, 0), max(w - tw - 2, 0)))
    y = int(min(max(y, th + 2), h - base - 1))
    cv2.rectangle(img, (x, y - th - 2), (x + tw + 2, y + base), colour, cv2.FILLED)
    cv2.putText(img, text, (x + 1, y), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def _timecode_box(img: np.ndarray, text: str, scale: float, thickness: int) -> None:
    """``text`` in white on a dark box in the bottom-left corner."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(2, int(round(4 * scale)))
    h = img.shape[0]
    cv2.rectangle(img, (0, h - th - base - 2 * pad), (tw + 2 * pad, h - 1), _BACKING_RGB, cv2.FILLED)
    cv2.putText(img, text, (pad, h - base - pad), _FONT, scale, _TEXT_RGB, thickness, cv2.LINE_AA)


def overlay(image: np.ndarray, anomaly: np.ndarray, *, detections: Detections | Sequence[Instance] = (),
            timecode: str | None = None, alpha: float = 0.5,
            vmin: float = 0.0, vmax: float = 1.0, threshold: float | None = None,
            colormap: int = cv2.COLORMAP_INFERNO) -> np.ndarray:
    """The frame with the anomaly heatmap blended over it, contours, track boxes and a time code.

    Args:
        image: (H, W, 3) uint8 RGB frame.
        anomaly: (h, w) float map at any resolution (resized bilinearly to (H, W)).
        detections: the frame's :class:`~m2a_pipe.video.detections.Detections` in the map's pixel
            coordinates (module docstring), or bare instances (all unconfirmed). Each gets its
            outer contour drawn in its track's colour (grey for id 0); a confirmed one (id >= 1)
            also gets its scaled box labelled ``"#<id>"``.
        timecode: text drawn bottom-left on a dark box (e.g. from :func:`timecode`).
        alpha: blend weight at ``vmax``; the weight is ``alpha * clip((s - vmin) / (vmax - vmin),
            0, 1)``, so low scores keep the frame visible, and 0 below ``threshold`` if given.
        colormap: a cv2 colormap applied to the normalised score.

    Returns: a new (H, W, 3) uint8 RGB array.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    anomaly = np.asarray(anomaly, dtype=np.float32)
    if anomaly.ndim != 2:
        raise ValueError(f"anomaly must be (h, w), got {anomaly.shape}")
    detections = as_detections(detections)
    height, width = image.shape[:2]
    sx, sy = width / anomaly.shape[1], height / anomaly.shape[0]
    scores = anomaly if anomaly.shape == (height, width) else cv2.resize(
        anomaly, (width, height), interpolation=cv2.INTER_LINEAR)

    out = np.array(image, dtype=np.uint8, order="C", copy=True)
    roi = heat_region(anomaly, (height, width), vmin, threshold) if alpha > 0 else None
    if roi is not None:  # blend only where the weight can be > 0 (the rest keeps the frame as is)
        y0, y1, x0, x1 = roi
        norm, weight = heat_weights(scores[y0:y1, x0:x1], alpha, vmin, vmax, threshold)
        colours = cv2.applyColorMap((norm * 255).astype(np.uint8), _rgb_colormap(colormap))
        out[y0:y1, x0:x1] = cv2.blendLinear(colours, out[y0:y1, x0:x1], weight, 1.0 - weight)

    thickness = max(1, int(round(min(height, width) / 400)))
    font_scale = max(0.4, min(height, width) / 900)
    for inst, tid in detections:
        colour = track_colour(tid)
        cv2.polylines(out, _contour_polylines(inst, sx, sy), True, colour, thickness, cv2.LINE_AA)
        if tid:
            x0, y0, x1, y1 = inst.box
            p0 = (int(round(x0 * sx)), int(round(y0 * sy)))
            p1 = (int(round(x1 * sx)) - 1, int(round(y1 * sy)) - 1)
            cv2.rectangle(out, p0, p1, colour, thickness)
            _label(out, f"#{tid}", p0[0], p0[1] - thickness, colour, font_scale, thickness)
    if timecode:
        _timecode_box(out, timecode, font_scale, thickness)
    return out
