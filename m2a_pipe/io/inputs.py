"""Input discovery: files, directories, globs and manifests -> videos with output folders.

Rules (the contract of ``m2a-pipe process`` inputs):

* a **file** is a video, unless its suffix is ``.txt``, ``.lst`` or ``.csv``: then it is a
  **manifest**, one path per line (blank lines and ``#`` comments skipped; relative paths
  are relative to the manifest's folder). A ``.csv`` manifest has a header row with a
  ``path`` column; its other columns (vehicle, drive id, ...) travel with the video as
  ``extra`` and end up in the outputs' attributes;
* a **directory** is searched recursively for files with a video suffix
  (:data:`VIDEO_SUFFIXES`, case-insensitive), in sorted order, hidden entries skipped;
* anything else containing ``*``, ``?`` or ``[`` is a **glob** (``**`` recursive); a glob
  or a path that matches nothing is an error naming it.

Output folders mirror the input tree so that two ``drive.mp4`` in different folders never
collide: every video's folder is ``OUT/<path relative to the common root>/<stem>`` where the
common root is the deepest folder containing every directory argument and every video's
folder. Two videos of one folder with the same stem (``a.mp4``, ``a.mov``) keep their
suffix in the folder name (``a.mp4/``, ``a.mov/``). Folder names never contain ``..``, so
nothing is written outside OUT. Duplicated inputs are processed once.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from m2a_pipe.errors import M2AError

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".ts", ".m2ts", ".mts", ".avi", ".webm", ".m4v",
                            ".mpg", ".mpeg", ".h264", ".h265", ".hevc", ".3gp", ".flv"})
MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".csv"})
_GLOB_CHARS = set("*?[")


class InputError(M2AError):
    """An input argument that names nothing usable (one line: the argument and why)."""


@dataclass(frozen=True)
class VideoInput:
    """One video to process: its absolute ``source`` path, the folder name relative to OUT
    (``rel``, POSIX separators) and manifest columns (``extra``)."""

    source: Path
    rel: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def out_dir(self, out_root: str | os.PathLike) -> Path:
        return Path(out_root) / self.rel


def _manifest_rows(path: Path) -> list[tuple[Path, dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read manifest ({err.__class__.__name__}: {err})") from None
    base = path.parent
    rows: list[tuple[Path, dict[str, str]]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise InputError(f"{path}: a CSV manifest needs a header row with a 'path' column")
        for n, row in enumerate(reader, start=2):
            value = (row.pop("path") or "").strip()
            if not value:
                raise InputError(f"{path}:{n}: empty path")
            extra = {str(k): (v or "").strip() for k, v in row.items() if k is not None}
            rows.append((base / value, extra))
    else:
        for line in text.splitlines():
            value = line.strip()
            if value and not value.startswith("#"):
                rows.append((base / value, {}))
    return rows


def _scan(directory: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES]
    return found


def _expand(arg: str) -> tuple[list[tuple[Path, dict[str, str]]], list[Path]]:
    """(videos with extras, directory roots) named by one argument."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return [(p, {}) for p in _scan(path)], [path]
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            videos, roots = [], []
            for p, extra in _manifest_rows(path):
                sub, sub_roots = _expand(str(p))
                if not sub and not sub_roots:
                    raise InputError(f"{path}: manifest entry {p} does not exist")
                videos += [(v, {**e, **extra}) for v, e in sub]
                roots += sub_roots
            return videos, roots
        return [(path, {})], []
    if _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
        if not matches:
            raise InputError(f"{arg}: the pattern matches nothing")
        videos = []
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                videos += [(p, {}) for p in _scan(mp)]
            elif mp.is_file():
                videos.append((mp, {}))
        return videos, []
    if path.exists() or path.is_symlink():
        raise InputError(f"{arg}: not a file or directory")
    raise InputError(f"{arg}: no such file or directory")


def discover(args: Iterable[str | os.PathLike], errors: list[tuple[str, str]] | None = None) -> list[VideoInput]:
    """The videos named by command-line arguments, with their output folder names.

    An argument that names nothing, or a manifest that cannot be read, raises
    :class:`InputError`; with an ``errors`` list it is appended there as (argument, message)
    instead and the other arguments go on. No video found at all raises InputError.
    """
    args = [os.fspath(a) for a in args]
    if not args:
        raise InputError("no input given")
    videos: dict[Path, dict[str, str]] = {}
    roots: list[Path] = []
    for arg in args:
        try:
            found, arg_roots = _expand(arg)
        except InputError as err:
            if errors is None:
                raise
            errors.append((arg, str(err)))
            continue
        roots += [r.resolve() for r in arg_roots]
        for p, extra in found:
            videos.setdefault(p.resolve(), dict(extra))
    if not videos:
        if errors:
            return []
        raise InputError(f"no video found in {', '.join(args)} (video suffixes: {', '.join(sorted(VIDEO_SUFFIXES))})")
    folders = [p.parent for p in videos] + roots
    common = Path(os.path.commonpath([str(f) for f in folders]))
    by_folder_stem: dict[tuple[Path, str], int] = {}
    for p in videos:
        key = (p.parent, p.stem.lower())
        by_folder_stem[key] = by_folder_stem.get(key, 0) + 1
    out = []
    for p, extra in videos.items():
        name = p.name if by_folder_stem[(p.parent, p.stem.lower())] > 1 else p.stem
        if not name.strip(".") or name.startswith("."):  # "...mp4" has the stem "..": never a path step
            name = "_" + name
        rel_parent = p.parent.relative_to(common)
        rel = (rel_parent / name).as_posix()
        out.append(VideoInput(source=p, rel=rel, extra=extra))
    return out
