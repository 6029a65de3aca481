"""Event thumbnails: a small crop of a frame around a box, the box drawn, and its JPEG
``thumbs/event_NNNN.jpg``.

The :class:`~m2a_pipe.video.events.EventBuilder` cuts one crop per candidate event (the frame
of its peak; the pipeline gives it the decoded frame at the source size, so a crop is only
ever shrunk, never enlarged); :func:`~m2a_pipe.video.events.write_events` writes the kept
ones with :func:`write_thumbnail`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from m2a_pipe.io.layout import THUMBS_DIR

JPEG_QUALITY = 90
BOX_RGB = (255, 214, 0)
"""The colour of the event's box on its thumbnail (yellow: visible on road, sky and foliage)."""


def thumbnail(image: np.ndarray, box: Sequence[float], margin: float, max_px: int,
              draw_box: bool = True) -> np.ndarray:
    """Crop of an (H, W, 3) uint8 frame around an image-pixel box, with ``margin`` x the box's
    longer side (at least 4 px) on each side, shrunk (never enlarged) to at most ``max_px`` per
    side, with the box drawn in :data:`BOX_RGB` (unless ``draw_box`` is False or the box is
    the whole frame).

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
    factor = min(1.0, max_px / max(crop.shape[:2]))
    if factor < 1:
        size = (max(1, int(round(crop.shape[1] * factor))), max(1, int(round(crop.shape[0] * factor))))
        out = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    else:
        out = crop.copy()
    whole = x0 <= 0 and y0 <= 0 and x1 >= width and y1 >= height
    if draw_box and not whole:
        thickness = max(1, int(round(max(out.shape[:2]) / 128)))
        p0 = (int(round((x0 - cx0) * factor)), int(round((y0 - cy0) * factor)))
        p1 = (int(round((x1 - cx0) * factor)) - 1, int(round((y1 - cy0) * factor)) - 1)
        cv2.rectangle(out, p0, p1, BOX_RGB, thickness)
    return out


def thumbnail_name(event_id: int) -> str:
    """Relative path of an event's thumbnail: ``thumbs/event_0001.jpg``."""
    return f"{THUMBS_DIR}/event_{event_id:04d}.jpg"


def write_thumbnail(out_dir: str | Path, event_id: int, image: np.ndarray) -> str:
    """Write an (h, w, 3) uint8 RGB thumbnail as ``out_dir/thumbs/event_NNNN.jpg`` (JPEG quality
    :data:`JPEG_QUALITY`), creating ``thumbs/``; returns its path relative to ``out_dir``."""
    out_dir = Path(out_dir)
    name = thumbnail_name(event_id)
    (out_dir / THUMBS_DIR).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(out_dir / name, format="JPEG", quality=JPEG_QUALITY)
    return name
