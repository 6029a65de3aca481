"""``tracks.csv``: the confirmed track boxes of a video as MOTChallenge rows.

One row per box: ``frame, id, bb_left, bb_top, bb_width, bb_height, conf, -1, -1, -1`` with a
**1-based** ``frame`` (the 0-based processed-frame counter + 1) and ``id`` (a confirmed track id,
>= 1); boxes in the pixels given (source pixels in the pipeline), numbers with at most two
decimals, ``conf`` with four.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


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
