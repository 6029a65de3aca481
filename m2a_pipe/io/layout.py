"""The names of a video's output folder, shared by the pipeline that writes it and the tools
that read it (``m2a-pipe mine``, ``m2a-pipe clip``). No heavy imports: readers stay light.

    OUT/<rel>/<stem>.m2a/                 a finished video (renamed into place when complete)
    OUT/<rel>/.<stem>.m2a.partial-<pid>   the folder being written by process <pid>
    OUT/<rel>/.<stem>.m2a.old-<pid>       a replaced output, removed right after the rename
    OUT/failures.jsonl                    the inputs that failed in the latest run (path, reason)
    OUT/report/                           the default report folder of ``m2a-pipe mine``

    <any file>/.<name>.tmp-<pid>      a file being written, renamed onto <name> when whole

Every video's folder name ends with :data:`VIDEO_DIR_SUFFIX`, and no other name of the tree
does: :func:`output_name` escapes the names taken from the input tree (folders and stems)
so that a folder ``x/`` of the inputs can never be, or hold, the output of ``x.mp4``, and no
input folder can take the name of OUT's own files (:data:`RESERVED_TOP_NAMES`) or of a
temporary folder. The escape is one-to-one: distinct input names stay distinct.

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
REPORT_DIR = "report"
VIDEO_DIR_SUFFIX = ".m2a"
RESERVED_TOP_NAMES = (FAILURES_FILE, REPORT_DIR)
"""Names OUT keeps for itself: no input folder is written under them."""

PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"
TMP_FILE_MARK = ".tmp-"
TEMPORARY_MARKS = (PARTIAL_MARK, OLD_MARK)

_MARKS_RE = "|".join(re.escape(mark) for mark in TEMPORARY_MARKS)
_TEMPORARY_RE = re.compile(rf"\.(?P<stem>.+)(?P<mark>{_MARKS_RE})(?P<pid>[0-9]+)")


_HIDDEN_RE = re.compile(r"_*\.")
_SUFFIXED_RE = re.compile(rf"{re.escape(VIDEO_DIR_SUFFIX)}_*\Z", re.IGNORECASE)
_RESERVED_RE = re.compile(rf"(?:{'|'.join(re.escape(n) for n in RESERVED_TOP_NAMES)})_*", re.IGNORECASE)


def output_name(name: str, *, video: bool, top: bool = False) -> str:
    """The OUT name of one input path step: a folder's name, or (``video=True``) the name of a
    video's output folder made from its stem (or file name).

    Escapes, each by one more ``_``, so that the result is never hidden nor temporary
    (``.x`` -> ``_.x``, ``_.x`` -> ``__.x``), a folder never ends with :data:`VIDEO_DIR_SUFFIX`
    (``a.m2a`` -> ``a.m2a_``) and a folder at the top of OUT never takes a reserved name
    (``report`` -> ``report_``); a video's name then gets :data:`VIDEO_DIR_SUFFIX`.
    """
    if _HIDDEN_RE.match(name):
        name = "_" + name
    if not video and _SUFFIXED_RE.search(name):
        name += "_"
    if top and not video and _RESERVED_RE.fullmatch(name):
        name += "_"
    return name + VIDEO_DIR_SUFFIX if video else name


def is_video_dir_name(name: str) -> bool:
    """Whether the file name ``name`` is that of a video's output folder (:func:`output_name`)."""
    return name.lower().endswith(VIDEO_DIR_SUFFIX) and not name.startswith(".")


def is_video_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a real folder (not a link) that the pipeline wrote for a video: it
    has a video-folder name and holds ``scores.h5`` or ``summary.json``. Only such a folder
    is ever replaced by a new output."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not is_video_dir_name(path.name):
        return False
    return (path / SCORES_FILE).is_file() or (path / SUMMARY_FILE).is_file()


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
