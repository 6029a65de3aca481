"""The names of a video's output folder, shared by the pipeline that writes it and the tools
that read it (``m2a-pipe mine``, ``m2a-pipe clip``). No heavy imports: readers stay light.

    OUT/<rel>/<stem>/                 a finished video (renamed into place when complete)
    OUT/<rel>/.<stem>.partial-<pid>   the folder being written by process <pid>
    OUT/<rel>/.<stem>.old-<pid>       a replaced output, removed right after the rename
    OUT/failures.jsonl                the inputs that failed in the latest run (path, reason)

    <any file>/.<name>.tmp-<pid>      a file being written, renamed onto <name> when whole

The temporary names are built and recognised here only: :func:`partial_dir`, :func:`old_dir`,
:func:`is_temporary`, :func:`temporary_dirs`, :func:`temporary_file`, and files are written
under them by :func:`written_atomically`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCORES_FILE = "scores.h5"
OVERLAY_FILE = "overlay.mp4"
TRACKS_FILE = "tracks.csv"
EVENTS_FILE = "events.jsonl"
TIMELINE_FILE = "timeline.png"
SUMMARY_FILE = "summary.json"
THUMBS_DIR = "thumbs"
FAILURES_FILE = "failures.jsonl"

PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"
TMP_FILE_MARK = ".tmp-"
TEMPORARY_MARKS = (PARTIAL_MARK, OLD_MARK)

_MARKS_RE = "|".join(re.escape(mark) for mark in TEMPORARY_MARKS)
_TEMPORARY_RE = re.compile(rf"\.(?P<stem>.+)(?P<mark>{_MARKS_RE})(?P<pid>[0-9]+)")


def _temporary_name(out_dir: Path, mark: str, pid: int) -> Path:
    if int(pid) != pid or pid < 0:
        raise ValueError(f"pid must be an integer >= 0, got {pid!r}")
    if not out_dir.name or out_dir.name in (".", ".."):
        raise ValueError(f"{out_dir}: not an output folder name")
    return out_dir.parent / f".{out_dir.name}{mark}{int(pid)}"


def partial_dir(out_dir: str | os.PathLike, pid: int) -> Path:
    """``<parent>/.<name>.partial-<pid>``: where process ``pid`` writes the outputs of
    ``out_dir`` before renaming them into place (a sibling, so the rename stays on one file system).

    Raises:
        ValueError: ``pid`` is not an integer >= 0, or ``out_dir`` has no name (``/``, ``.``).
    """
    return _temporary_name(Path(out_dir), PARTIAL_MARK, pid)


def old_dir(out_dir: str | os.PathLike, pid: int) -> Path:
    """``<parent>/.<name>.old-<pid>``: where process ``pid`` moves the previous ``out_dir``
    while the new one is renamed into place (removed right after).

    Raises:
        ValueError: as :func:`partial_dir`.
    """
    return _temporary_name(Path(out_dir), OLD_MARK, pid)


def is_temporary(name: str) -> bool:
    """Whether the file name ``name`` (one path component) is a pipeline temporary folder,
    ``.<stem>.partial-<pid>`` or ``.<stem>.old-<pid>``, written by any process."""
    return _TEMPORARY_RE.fullmatch(name) is not None


def temporary_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """The temporary folders of ``out_dir`` (:func:`partial_dir` and :func:`old_dir` names, any
    pid) that exist, sorted by name; ``[]`` when its parent folder does not exist or cannot be
    listed. Folders of other outputs of the same parent (``.<other>.partial-1``) are not included."""
    out_dir = Path(out_dir)
    try:
        with os.scandir(out_dir.parent) as entries:
            names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    found = []
    for name in names:
        match = _TEMPORARY_RE.fullmatch(name)
        if match and match["stem"] == out_dir.name:
            found.append(out_dir.parent / name)
    return found


def temporary_file(path: str | os.PathLike, pid: int | None = None) -> Path:
    """``<parent>/.<name>.tmp-<pid>``: where process ``pid`` (default: this one) writes the
    file ``path`` before renaming it into place (a sibling: the rename stays on one file system)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_FILE_MARK}{os.getpid() if pid is None else int(pid)}")


@contextmanager
def written_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file so that it appears whole or not at all.

    Yields :func:`temporary_file` ``(path)`` for the caller to write; when the block ends
    normally the temporary file is renamed onto ``path`` (``os.replace``); when it raises
    (a full disk, Ctrl-C) the temporary file is removed and the error goes on, so nothing
    half-written is left under either name.
    """
    path = Path(path)
    tmp = temporary_file(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
