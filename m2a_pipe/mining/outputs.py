"""Reading a pipeline output tree without loading it: which folders are videos, their root
attributes and their events.

:func:`walk_outputs` walks OUT_ROOT with :func:`os.scandir` (depth first, names sorted, so the
order is reproducible) and yields, for every folder that holds pipeline outputs, either a
:class:`VideoFolder` (complete, ready to mine) or a :class:`Skipped` (why not). It never
descends into a video folder (its ``thumbs/``) and never follows symbolic links to folders.
Hidden folders are not entered: the pipeline's temporary folders (``.<stem>.partial-<pid>``,
``.<stem>.old-<pid>``, :func:`m2a_pipe.io.layout.is_temporary`) are reported as skipped, other
hidden folders are ignored silently.

Only the root attributes of ``scores.h5`` are read (a handful of scalars and short strings),
never the maps or the per-frame tables; a video's ``events.jsonl`` is read one video at a time.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from m2a_pipe.errors import M2AError
from m2a_pipe.io.layout import (
    EVENTS_FILE,
    OVERLAY_FILE,
    SCORES_FILE,
    SUMMARY_FILE,
    TIMELINE_FILE,
    TRACKS_FILE,
    is_temporary,
)

OUTPUT_FILES = (SCORES_FILE, SUMMARY_FILE, EVENTS_FILE, OVERLAY_FILE, TRACKS_FILE, TIMELINE_FILE)
REQUIRED_FILES = (SCORES_FILE, SUMMARY_FILE, EVENTS_FILE)

ROOT_ATTRS = ("source", "source_fingerprint", "fps", "width", "height", "n_frames", "status", "error", "weights",
              "weights_note", "threshold", "extra")
EXTRA_ATTR_PREFIX = "extra_"
EVENT_REQUIRED_FIELDS = ("event_id", "start_frame", "end_frame", "start_s", "end_s", "duration_s", "peak_score")
MAX_REASON_CHARS = 200


class OutputError(M2AError):
    """A video output folder or file that cannot be read; ``str(err)`` is one line."""


@dataclass(frozen=True)
class Skipped:
    """A folder under OUT_ROOT that is not mined.

    ``kind``: ``temporary`` (a pipeline work folder), ``partial`` (decoding lost frames),
    ``unfinished`` (status other than complete/partial), ``missing`` (output files missing) or
    ``unreadable``; ``reason`` says it on one line.
    """

    rel: str
    kind: str
    reason: str

    def line(self) -> str:
        """``skipped <rel>: <reason>``."""
        return f"skipped {self.rel}: {self.reason}"


@dataclass(frozen=True)
class VideoFolder:
    """A finished video output folder: where it is and its ``scores.h5`` root attributes.

    ``rel`` is the folder relative to OUT_ROOT (POSIX separators, ``"."`` for OUT_ROOT itself);
    ``extra`` the manifest columns the video was processed with (strings).
    """

    path: Path
    rel: str
    attrs: Mapping[str, Any]
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``complete`` (or ``partial`` when partial videos are mined)."""
        return str(self.attrs.get("status", ""))

    @property
    def source(self) -> str:
        """The source video's path as recorded at processing time."""
        return str(self.attrs.get("source", ""))

    def has(self, name: str) -> bool:
        """Whether the folder holds the file ``name``."""
        return (self.path / name).is_file()


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _plain(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_root_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of a ``scores.h5`` that mining uses (:data:`ROOT_ATTRS` and every
    ``extra_*``), as plain Python values. Opens the file for its attributes only.

    Raises:
        OutputError: the file cannot be opened as HDF5.
    """
    try:
        with h5py.File(path, "r") as f:
            names = [k for k in f.attrs.keys() if k in ROOT_ATTRS or k.startswith(EXTRA_ATTR_PREFIX)]
            return {k: _plain(f.attrs[k]) for k in names}
    except (OSError, ValueError, KeyError) as err:
        raise OutputError(f"unreadable {Path(path).name} ({_one_line(str(err) or type(err).__name__)})") from None


def manifest_extra(attrs: Mapping[str, Any]) -> dict[str, str]:
    """The manifest columns of a video: the ``extra`` JSON attribute, completed by the
    ``extra_<column>`` attributes (both are written by the pipeline; either may be absent)."""
    extra = {k[len(EXTRA_ATTR_PREFIX):]: str(v) for k, v in attrs.items() if k.startswith(EXTRA_ATTR_PREFIX)}
    text = attrs.get("extra")
    if isinstance(text, str) and text:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            extra.update({str(k): "" if v is None else str(v) for k, v in parsed.items()})
    return extra


def classify(path: Path, rel: str, names: Sequence[str] | set[str], *,
             include_partial: bool = False) -> VideoFolder | Skipped:
    """A folder holding pipeline outputs (``names``: its file names) as a :class:`VideoFolder`
    when it is finished and complete (``summary.json`` present and ``scores.h5`` status
    ``complete``, the rule of :func:`m2a_pipe.pipeline.job.is_complete`), or as partial
    when ``include_partial``; otherwise a :class:`Skipped` saying why."""
    present = set(names)
    missing = [name for name in REQUIRED_FILES if name not in present]
    if missing:
        return Skipped(rel, "missing", f"missing {', '.join(missing)} (not a finished output folder)")
    try:
        attrs = read_root_attrs(path / SCORES_FILE)
    except OutputError as err:
        return Skipped(rel, "unreadable", str(err))
    status = str(attrs.get("status", ""))
    if status == "partial" and not include_partial:
        error = str(attrs.get("error", "")) or "no reason recorded"
        return Skipped(rel, "partial", _one_line(f"partial ({error})"))
    if status not in ("complete", "partial"):
        return Skipped(rel, "unfinished", f"scores.h5 status is '{status or 'unset'}', not complete")
    return VideoFolder(path=path, rel=rel, attrs=attrs, extra=manifest_extra(attrs))


def walk_outputs(out_root: str | os.PathLike, *, exclude: Sequence[str | os.PathLike] = (),
                 include_partial: bool = False) -> Iterator[VideoFolder | Skipped]:
    """Every video output folder under ``out_root`` (itself included), in sorted depth-first
    order, as a :class:`VideoFolder` or a :class:`Skipped` (see the module docstring).

    A folder is a video output folder when it holds any of :data:`OUTPUT_FILES`. Folders in
    ``exclude`` (e.g. the report folder) are not entered. Memory: the stack of folders still
    to visit, never the whole tree.

    Raises:
        OutputError: ``out_root`` is not a readable folder.
    """
    root = Path(out_root)
    if not root.is_dir():
        raise OutputError(f"{root}: no such folder")
    excluded = {os.path.realpath(p) for p in exclude}
    stack: list[tuple[Path, str]] = [(root, ".")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(((e.name, e.is_dir(follow_symlinks=False), e.is_file()) for e in it))
        except OSError as err:
            if folder == root:
                raise OutputError(f"{root}: cannot list the folder ({err.strerror or err})") from None
            yield Skipped(rel, "unreadable", f"cannot list the folder ({err.strerror or err})")
            continue
        files = {name for name, _, is_file in entries if is_file}
        if files.intersection(OUTPUT_FILES):
            yield classify(folder, rel, files, include_partial=include_partial)
            continue
        children = []
        for name, is_dir, _ in entries:
            if not is_dir:
                continue
            child_rel = name if rel == "." else f"{rel}/{name}"
            if name.startswith("."):
                if is_temporary(name):
                    yield Skipped(child_rel, "temporary", "temporary folder of an unfinished or interrupted run")
                continue
            if excluded and os.path.realpath(folder / name) in excluded:
                continue
            children.append((folder / name, child_rel))
        stack.extend(reversed(children))


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


OPTIONAL_NUMBER_FIELDS = ("track_id", "n_frames", "peak_frame", "peak_s", "max_area_px", "max_area_fraction")
OPTIONAL_TEXT_FIELDS = ("kind", "thumbnail")


def event_problem(event: Any) -> str | None:
    """Why a parsed ``events.jsonl`` line cannot be used as an event, or None: every field
    the tools read must have its type (required numbers finite; optional numbers finite or
    null; ``kind``/``thumbnail`` text or null; ``bbox_at_peak`` four numbers or null)."""
    if not isinstance(event, dict):
        return "not a JSON object"
    bad = [k for k in EVENT_REQUIRED_FIELDS if not _finite_number(event.get(k))]
    if bad:
        return f"missing or non-numeric {', '.join(bad)}"
    if event["event_id"] != int(event["event_id"]):
        return f"event_id {event['event_id']!r} is not a whole number"
    bad = [k for k in OPTIONAL_NUMBER_FIELDS if event.get(k) is not None and not _finite_number(event[k])]
    bad += [k for k in OPTIONAL_TEXT_FIELDS if event.get(k) is not None and not isinstance(event[k], str)]
    box = event.get("bbox_at_peak")
    if box is not None and not (isinstance(box, list) and len(box) == 4 and all(_finite_number(v) for v in box)):
        bad.append("bbox_at_peak")
    return f"wrong type of {', '.join(bad)}" if bad else None


def read_video_events(folder: str | os.PathLike, on_bad: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The events of one video folder, as the dicts of its ``events.jsonl`` lines.

    A line that is not a usable event (:func:`event_problem`, or not JSON) is left out and
    reported to ``on_bad`` as one line ``events.jsonl line N: <why>``; the other events stay.

    Raises:
        OutputError: the file is missing, unreadable or not UTF-8 text.
    """
    path = Path(folder) / EVENTS_FILE
    events = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    problem = event_problem(event)
                except ValueError as err:
                    problem = f"not JSON ({getattr(err, 'msg', err)})"
                if problem is None:
                    events.append(event)
                elif on_bad is not None:
                    on_bad(f"{EVENTS_FILE} line {number}: {problem}; event skipped")
    except OSError as err:
        raise OutputError(f"cannot read {EVENTS_FILE} ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise OutputError(f"{EVENTS_FILE} is not UTF-8 text") from None
    return events


def file_inside(folder: str | os.PathLike, name: Any) -> Path | None:
    """The regular file ``name`` (a path read from an output file) when it lies inside
    ``folder`` once every link is resolved, else None: an absolute name, ``..`` steps or a
    link that leads out of the folder never make a tool read a file elsewhere."""
    if not isinstance(name, str) or not name or "\0" in name:
        return None
    base = Path(folder).resolve()
    try:
        target = (base / name).resolve()
    except (OSError, RuntimeError):
        return None
    return target if base in target.parents and target.is_file() else None


def find_event(folder: str | os.PathLike, event_id: int) -> dict[str, Any]:
    """The event ``event_id`` of one video folder.

    Raises:
        OutputError: no such event (the message lists the ids there are) or unreadable events.
    """
    events = read_video_events(folder)
    for event in events:
        if event["event_id"] == event_id:
            return event
    ids = [int(e["event_id"]) for e in events]
    if not ids:
        listed = "the video has no events"
    elif len(ids) <= 12:
        listed = "events: " + ", ".join(str(i) for i in ids)
    else:
        listed = f"{len(ids)} events, ids {min(ids)}-{max(ids)}"
    raise OutputError(f"{Path(folder)}: no event {event_id} ({listed})")
