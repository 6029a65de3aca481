"""``scores.h5``: the per-frame scores of one video, written as frames arrive.

Layout (format version :data:`FORMAT_VERSION`; every per-frame dataset has one row per
processed frame, in processing order):

* ``/frames/index`` int64 (source frame index), ``/frames/pts`` float64 (seconds),
  ``/frames/score_max``, ``/frames/score_p99``, ``/frames/anomalous_fraction`` float32,
  ``/frames/n_instances`` int32;
* ``/maps/anomaly`` (N, h, w), chunked one frame per chunk, gzip-compressed: uint8 with
  attribute ``scale`` = 1/255 for scores in [0, 1] (value = stored * scale, clipped to
  [0, 1]), float16 with ``scale`` = 1 otherwise; ``/maps/semantic`` (N, h, w) uint8 known-class
  labels (optional); attributes ``stride`` (map pixels per network-input pixel) and
  ``to_source`` (x, y scale from map pixels to source pixels);
* ``/instances``: a table (compound dtype) with one row per anomaly instance: ``frame``
  (source frame index), ``track_id`` (0 = not part of a confirmed track), box ``x0, y0, x1,
  y1`` and ``area`` in source pixels (x1, y1 exclusive), ``score_mean``, ``score_max``;
* root attributes: ``format_version``, ``source``, ``source_fingerprint``, ``fps``, ``width``,
  ``height``, ``n_frames``, ``weights``, ``weights_sha256``, ``precision`` (the network's, as
  run), ``config`` (JSON),
  ``m2a_pipe_version``, ``status`` (``complete`` / ``partial``, ``running`` while written) and
  ``error`` (the reason when partial), plus any extra attributes given (manifest columns).

Rows are buffered and appended in blocks (:data:`BLOCK_ROWS`), so the file is written at a
steady pace with flat memory however long the video.

A full disk (or any failed write) never reaches the HDF5 library: the file is written through
:class:`_GuardedFile`, which records the first failed write and drops the later ones, so HDF5
always closes cleanly (HDF5 left with a failed write crashes the process when its handles are
released). :meth:`ScoresWriter.flush` and :meth:`ScoresWriter.close` then raise the recorded
OSError, naming the file; the caller discards the half-written file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from m2a_pipe.errors import first_line

FORMAT_VERSION = 1
BLOCK_ROWS = 256
MAP_GZIP_LEVEL = 4

INSTANCE_DTYPE = np.dtype([
    ("frame", np.int64), ("track_id", np.int32),
    ("x0", np.float32), ("y0", np.float32), ("x1", np.float32), ("y1", np.float32),
    ("area", np.float32), ("score_mean", np.float32), ("score_max", np.float32),
])

FRAME_COLUMNS = {
    "index": np.int64, "pts": np.float64, "score_max": np.float32, "score_p99": np.float32,
    "anomalous_fraction": np.float32, "n_instances": np.int32,
}


def _attr(value: Any) -> Any:
    """HDF5-storable form of an attribute value (None -> "", mappings -> JSON, text that is
    not UTF-8, such as a file name's undecodable bytes, with ``\\xNN`` escapes)."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


class _GuardedFile(io.RawIOBase):
    """The file object HDF5 writes through (h5py's ``fileobj`` driver): positioned writes
    with :func:`os.pwrite`; the first failed write is kept in :attr:`error` and every later
    write is dropped (reported as done), so the library never sees an error."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self._pos = 0
        self._size = 0
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = 0
        if self.error is None:
            data = os.pread(self._fd, len(view), self._pos)
            n = len(data)
            view[:n] = data
        else:   # nothing written after the failure is on disk: read zeros
            n = max(0, min(len(view), self._size - self._pos))
            view[:n] = bytes(n)
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as err:
                self.error = err
        self._pos += len(view)
        self._size = max(self._size, self._pos)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as err:
                self.error = err
        self._size = size
        return size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class ScoresWriter:
    """Append-only writer of ``scores.h5``.

    Args:
        path: file to create (truncated if it exists).
        attrs: root attributes (see the module docstring); ``status`` is set by the writer.
        map_shape: (h, w) of the maps, or None to store no maps.
        bounded: the score lies in [0, 1] (uint8 maps) or not (float16 maps).
        semantic: also store ``/maps/semantic``.
        map_attrs: attributes of the ``/maps`` group.
    """

    def __init__(self, path: str | Path, attrs: Mapping[str, Any], *, map_shape: tuple[int, int] | None = None,
                 bounded: bool = True, semantic: bool = False, map_attrs: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._raw = _GuardedFile(self.path)
        self._file = h5py.File(self._raw, "w")
        self._file.attrs["format_version"] = FORMAT_VERSION
        for key, value in attrs.items():
            self._file.attrs[key] = _attr(value)
        self._file.attrs["status"] = "running"
        frames = self._file.create_group("frames")
        self._columns = {name: frames.create_dataset(name, (0,), dtype=dtype, maxshape=(None,), chunks=(BLOCK_ROWS,))
                         for name, dtype in FRAME_COLUMNS.items()}
        self._instances = self._file.create_dataset("instances", (0,), dtype=INSTANCE_DTYPE, maxshape=(None,),
                                                    chunks=(BLOCK_ROWS,))
        self._rows: dict[str, list] = {name: [] for name in FRAME_COLUMNS}
        self._inst_rows: list[tuple] = []
        self._maps: list[np.ndarray] = []
        self._sems: list[np.ndarray] = []
        self.map_scale = 1.0 / 255.0 if bounded else 1.0
        self._map = self._sem = None
        if map_shape is not None:
            h, w = map_shape
            group = self._file.create_group("maps")
            for key, value in (map_attrs or {}).items():
                group.attrs[key] = _attr(value)
            opts = dict(maxshape=(None, h, w), chunks=(1, h, w), compression="gzip",
                        compression_opts=MAP_GZIP_LEVEL, shuffle=not bounded)
            self._map = group.create_dataset("anomaly", (0, h, w), dtype=np.uint8 if bounded else np.float16, **opts)
            self._map.attrs["scale"] = self.map_scale
            self._map.attrs["dtype_note"] = "value = stored * scale"
            if semantic:
                self._sem = group.create_dataset("semantic", (0, h, w), dtype=np.uint8, **opts)
        self.n_frames = 0

    def add_frame(self, *, index: int, pts: float, score_max: float, score_p99: float, anomalous_fraction: float,
                  n_instances: int, anomaly: np.ndarray | None = None, semantic: np.ndarray | None = None) -> None:
        """One processed frame: its scalars and (if maps are stored) its (h, w) maps."""
        for name, value in (("index", index), ("pts", pts), ("score_max", score_max), ("score_p99", score_p99),
                            ("anomalous_fraction", anomalous_fraction), ("n_instances", n_instances)):
            self._rows[name].append(value)
        if self._map is not None:
            if anomaly is None:
                raise ValueError("this file stores maps: add_frame needs the anomaly map")
            self._maps.append(self.encode_map(anomaly))
            if self._sem is not None:
                if semantic is None:
                    raise ValueError("this file stores semantic maps: add_frame needs the semantic map")
                self._sems.append(np.asarray(semantic, dtype=np.uint8))
        self.n_frames += 1
        if len(self._rows["index"]) >= BLOCK_ROWS or len(self._maps) >= BLOCK_ROWS // 8:
            self.flush()

    def encode_map(self, anomaly: np.ndarray) -> np.ndarray:
        """(h, w) float map -> stored dtype (uint8 steps of 1/255, or float16)."""
        if self._map is not None and self._map.dtype == np.uint8:
            return np.round(np.clip(anomaly, 0.0, 1.0) / self.map_scale).astype(np.uint8)
        return np.asarray(anomaly, dtype=np.float16)

    def add_instance(self, frame: int, track_id: int, box: tuple[float, float, float, float], area: float,
                     score_mean: float, score_max: float) -> None:
        """One row of ``/instances`` (box and area in source pixels)."""
        self._inst_rows.append((frame, track_id, *box, area, score_mean, score_max))

    @staticmethod
    def _append(dataset: h5py.Dataset, rows: np.ndarray) -> None:
        n = dataset.shape[0]
        dataset.resize(n + len(rows), axis=0)
        dataset[n:] = rows

    def _check(self) -> None:
        """Raise the first write that failed (a full disk), naming the file."""
        err = self._raw.error
        if err is not None:
            raise OSError(err.errno, err.strerror or str(err), str(self.path))

    def flush(self) -> None:
        """Write the buffered rows. Raises OSError when a write failed (a full disk)."""
        self._check()
        if self._rows["index"]:
            for name, dataset in self._columns.items():
                self._append(dataset, np.asarray(self._rows[name], dtype=FRAME_COLUMNS[name]))
                self._rows[name].clear()
        if self._maps:
            self._append(self._map, np.stack(self._maps))
            self._maps.clear()
        if self._sems:
            self._append(self._sem, np.stack(self._sems))
            self._sems.clear()
        if self._inst_rows:
            self._append(self._instances, np.array(self._inst_rows, dtype=INSTANCE_DTYPE))
            self._inst_rows.clear()
        self._check()

    def close(self, status: str = "complete", error: str | None = None, **attrs: Any) -> None:
        """Flush, set ``n_frames``, ``status``, ``error`` and extra attributes, close.
        Raises OSError when a write failed (the file is closed all the same)."""
        if self._file is None:
            return
        try:
            self.flush()
            self._file.attrs["n_frames"] = self.n_frames
            for key, value in attrs.items():
                self._file.attrs[key] = _attr(value)
            self._file.attrs["status"] = status
            self._file.attrs["error"] = _attr(error or "")
        finally:
            self._file.close()
            self._file = None
            self._raw.close()
        self._check()


def read_status(path: str | Path) -> tuple[str, str]:
    """(status, error) of a ``scores.h5``; ("missing", reason) when it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("status", "")), str(f.attrs.get("error", ""))
    except (OSError, ValueError) as err:
        return "missing", first_line(err)
