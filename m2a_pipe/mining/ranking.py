"""The order of events across a fleet, in bounded memory.

Ranking rule (largest first, compared in this order; the first difference decides):

1. ``peak_score``          -- the event's highest anomaly score;
2. ``duration_s``          -- how long it lasted;
3. ``max_area_fraction``   -- its largest extent as a fraction of the frame (missing = 0);
4. ``max_area_px``         -- its largest extent in source pixels;
5. then the scan order (video folders sorted by path, events in file order), so the ranking
   is total and the same on every run.

:class:`TopEvents` keeps the best ``n`` events (a heap of ``n`` items); :class:`RankSpool` writes
every event to a spool file as it comes and keeps only its four ranking numbers and its
offset in the file (40 bytes an event in arrays), so that the full table can be written in
rank order at the end without holding the events in memory.
"""

from __future__ import annotations

import heapq
import json
import os
from array import array
from typing import IO, Any, Generic, Iterator, Mapping, TypeVar

import numpy as np

T = TypeVar("T")
RANK_FIELDS = ("peak_score", "duration_s", "max_area_fraction", "max_area_px")
RANKING_RULE = ("peak score, then duration, then largest area as a fraction of the frame, then largest area "
                "in pixels (all highest first), then video path and event order")


def rank_key(event: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """``(peak_score, duration_s, max_area_fraction, max_area_px)`` of an event dict, missing or
    null values as 0: the larger tuple ranks higher (see the module docstring)."""
    return tuple(float(event.get(name) or 0.0) for name in RANK_FIELDS)  # type: ignore[return-value]


class TopEvents(Generic[T]):
    """The ``n`` best items pushed, by (key descending, sequence ascending).

    A min-heap whose root is the worst kept item: each push is O(log n) and memory is n items.
    """

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = n
        self._heap: list[tuple[tuple[float, ...], int, T]] = []

    def push(self, key: tuple[float, ...], seq: int, item: T) -> None:
        """Offer one item; ``seq`` (unique, increasing in scan order) breaks ties: earlier wins."""
        if self.n == 0:
            return
        entry = (key, -seq, item)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        elif (key, -seq) > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def __len__(self) -> int:
        return len(self._heap)

    def best_first(self) -> list[T]:
        """The kept items, best first."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (e[0], e[1]), reverse=True)]


class RankSpool:
    """Rows in a spool file plus their ranking keys; :meth:`ranked` reads them back in rank order.

    Args:
        file: a binary file opened for writing and reading (``w+b``), positioned at its start.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._offset = 0
        self._keys = [array("d") for _ in RANK_FIELDS]
        self._offsets = array("q")

    def __len__(self) -> int:
        return len(self._offsets)

    def add(self, key: tuple[float, ...], row: Mapping[str, Any]) -> int:
        """Store a row (JSON-serialisable) with its :func:`rank_key`; returns its sequence number."""
        data = json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"
        self._file.write(data)
        for column, value in zip(self._keys, key):
            column.append(value)
        self._offsets.append(self._offset)
        self._offset += len(data)
        return len(self._offsets) - 1

    def order(self) -> np.ndarray:
        """Sequence numbers in rank order (best first)."""
        n = len(self._offsets)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        seq = np.arange(n, dtype=np.int64)
        keys = [-np.frombuffer(column, dtype=np.float64) for column in reversed(self._keys)]
        return np.lexsort([seq, *keys])  # the last key is the primary one

    def ranked(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """``(rank, seq, row)`` for every row, rank 1 first (reads the spool file back)."""
        self._file.flush()
        offsets = self._offsets
        for rank, seq in enumerate(self.order().tolist(), start=1):
            self._file.seek(offsets[seq], os.SEEK_SET)
            yield rank, seq, json.loads(self._file.readline())
