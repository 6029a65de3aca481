"""Input discovery: files, directories, globs and manifests -> videos with output folders.

Rules (the contract of ``m2a-pipe process`` inputs):

* a **file** is a video, unless its suffix is ``.txt``, ``.lst`` or ``.csv``: then it is a
  **manifest**, one path per line (blank lines and ``#`` comments skipped; relative paths
  are relative to the manifest's folder). A ``.csv`` manifest has a header row with a
  ``path`` column; its other columns (vehicle, drive id, ...) travel with the video as
  ``extra`` and end up in the outputs' attributes. A manifest may name other manifests, but
  not itself (directly or through others): a cycle is one error line;
* a **directory** is searched recursively for files with a video suffix
  (:data:`VIDEO_SUFFIXES`, case-insensitive), in sorted order, hidden entries skipped, links
  to folders not followed, the folders in ``exclude`` (OUT) not entered;
* anything else containing ``*``, ``?`` or ``[`` is a **glob** (``**`` recursive); a glob
  or a path that matches nothing is an error naming it.

Only regular files are videos: a FIFO, socket or device, a symbolic link that loops or points
nowhere, a folder named like a video with no video inside and a folder that cannot be listed
are each one error line naming the path as given (a link by its own name, not its target),
and discovery goes on. A manifest row that fails is one line ``<manifest>:<line>: <reason>``;
the other rows go on. File names that are not valid UTF-8 are kept as they are on disk
(surrogate-escaped strings, :func:`os.fsdecode`); messages show them with ``\\xNN`` escapes
(:func:`display_path`).

Output folders mirror the input tree: every video's folder is ``OUT/<path relative to the
common root>/<stem>.m2a``, where the common root is the deepest folder containing every
directory argument and every video's folder (links are not resolved, so a link cannot move
the tree). Each step is escaped by :func:`m2a_pipe.io.layout.output_name`, so a video's folder
can never be or hold another's, nor take the name of OUT's own files. Two videos of one folder
with the same stem (``a.mp4``, ``a.mov``) keep their suffix (``a.mp4.m2a/``, ``a.mov.m2a/``).
Folder names never contain ``..``, so nothing is written outside OUT. Inputs that are the same
file (through links or twice given) are processed once.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from m2a_pipe.errors import M2AError
from m2a_pipe.io.layout import output_name

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".ts", ".m2ts", ".mts", ".avi", ".webm", ".m4v",
                            ".mpg", ".mpeg", ".h264", ".h265", ".hevc", ".3gp", ".flv"})
MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".csv"})
_GLOB_CHARS = set("*?[")
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class InputError(M2AError):
    """An input argument that names nothing usable (one line: the argument and why)."""


@dataclass(frozen=True)
class VideoInput:
    """One video to process: its absolute ``source`` path (links not resolved), the folder
    name relative to OUT (``rel``, POSIX separators) and manifest columns (``extra``)."""

    source: Path
    rel: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def out_dir(self, out_root: str | os.PathLike) -> Path:
        return Path(out_root) / self.rel


def display_path(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _absolute(path: str | os.PathLike) -> Path:
    """An absolute, normalised path that keeps symbolic links as they are."""
    return Path(os.path.abspath(os.fspath(path)))


class _Discovery:
    """State of one :func:`discover` call: the videos found, the roots, the errors."""

    def __init__(self, errors: list[tuple[str, str]] | None, exclude: Iterable[str | os.PathLike]) -> None:
        self.errors = errors
        self.videos: dict[str, tuple[Path, dict[str, str]]] = {}   # real path -> (path as given, extra)
        self.roots: list[Path] = []
        self.excluded = set()
        for path in exclude:
            try:
                st = os.stat(path)
                self.excluded.add((st.st_dev, st.st_ino))
            except OSError:
                pass

    def fail(self, where: str | os.PathLike, reason: str) -> None:
        """One error line ``<where>: <reason>``; raised at once when no error list is kept."""
        where = display_path(where)
        message = f"{where}: {reason}"
        if self.errors is None:
            raise InputError(message)
        self.errors.append((where, message))

    def add(self, path: Path, extra: Mapping[str, str]) -> None:
        self.videos.setdefault(os.path.realpath(path), (path, dict(extra)))

    # -- one path ----------------------------------------------------------------------------

    def regular(self, path: Path, where: str | os.PathLike | None = None) -> os.stat_result | None:
        """The stat of ``path`` when it is a folder or a regular file; else one error line and None."""
        where = path if where is None else where
        try:
            st = os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                self.fail(where, "symbolic link loop (skipped)")
            elif path.is_symlink():
                self.fail(where, f"broken symbolic link to {display_path(os.readlink(path))} (skipped)")
            elif err.errno == errno.ENOENT:
                self.fail(where, "no such file or directory")
            else:
                self.fail(where, f"cannot read ({err.strerror or err})")
            return None
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            return st
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        self.fail(where, f"{kind}, not a video file (skipped)")
        return None

    def expand(self, path: Path, where: str | os.PathLike, extra: Mapping[str, str], manifests: tuple[str, ...],
               *, as_video: bool = False) -> None:
        """The videos named by one existing-or-not path: a folder, a video or a manifest."""
        st = self.regular(path, where)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            self.roots.append(_absolute(path))
            if not self.scan(path, extra):
                self.fail(where, "no video found in the folder"
                          + (" (a folder, not a video file)" if path.suffix.lower() in VIDEO_SUFFIXES else ""))
        elif path.suffix.lower() in MANIFEST_SUFFIXES and not as_video:
            self.manifest(path, extra, manifests)
        else:
            self.add(_absolute(path), extra)

    def scan(self, directory: Path, extra: Mapping[str, str]) -> int:
        """Add the videos of a folder tree; returns how many were found."""
        if self.excluded and self._excluded(directory):
            return 0
        before = len(self.videos)

        def unreadable(err: OSError) -> None:
            self.fail(err.filename if err.filename is not None else directory,
                      f"cannot list the folder ({err.strerror or err}; skipped)")

        for root, dirs, files in os.walk(directory, onerror=unreadable):
            kept = []
            for name in sorted(dirs):
                sub = Path(root) / name
                if name.startswith("."):
                    continue
                if sub.is_symlink():
                    self.fail(sub, "symbolic link to a folder, not followed (skipped)")
                elif not (self.excluded and self._excluded(sub)):
                    kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() not in VIDEO_SUFFIXES:
                    continue
                path = Path(root) / name
                st = self.regular(path)
                if st is not None and stat.S_ISREG(st.st_mode):
                    self.add(_absolute(path), extra)
                elif st is not None:   # a link to a folder named like a video
                    self.fail(path, "symbolic link to a folder, not followed (skipped)")
        return len(self.videos) - before

    def _excluded(self, path: Path) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self.excluded

    def glob(self, pattern: str, extra: Mapping[str, str], manifests: tuple[str, ...]) -> None:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            self.fail(pattern, "the pattern matches nothing")
            return
        for match in matches:
            self.expand(Path(match), match, extra, manifests, as_video=True)

    # -- manifests ---------------------------------------------------------------------------

    def manifest(self, path: Path, extra: Mapping[str, str], manifests: tuple[str, ...]) -> None:
        real = os.path.realpath(path)
        if real in manifests:
            self.fail(path, "manifest cycle: it lists itself" if manifests[-1] == real else
                      f"manifest cycle: listed again by {display_path(manifests[-1])}")
            return
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as err:
            self.fail(path, f"cannot read manifest ({err.strerror or err})")
            return
        except UnicodeDecodeError as err:
            self.fail(path, f"cannot read manifest (not UTF-8 text: byte {err.start})")
            return
        rows = _csv_rows(text) if path.suffix.lower() == ".csv" else _text_rows(text)
        for number, value, row_extra in rows:
            where = f"{display_path(path)}:{number}"
            if isinstance(value, InputError):
                self.fail(where, str(value))
                if number == 1:
                    return
                continue
            merged = {**extra, **row_extra}
            target = path.parent / value
            if _GLOB_CHARS & set(value) and not os.path.lexists(target):
                self.glob(os.fspath(target), merged, (*manifests, real))
                continue
            try:
                os.lstat(target)
            except OSError as err:
                self.fail(where, f"{display_path(value)}: " + ("no such file or directory" if err.errno == errno.ENOENT
                                                               else (err.strerror or str(err))))
                continue
            self.expand(target, f"{where}: {display_path(value)}", merged, (*manifests, real))


def _text_rows(text: str) -> list[tuple[int, str, dict[str, str]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.strip()
        if value and not value.startswith("#"):
            rows.append((number, value, {}))
    return rows


def _csv_rows(text: str) -> list[tuple[int, str | InputError, dict[str, str]]]:
    """(line, path or the row's error, other columns) of a CSV manifest; a header without a
    ``path`` column is one error at line 1."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, str | InputError, dict[str, str]]] = []
    end = 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(c.strip() for c in cells) or cells[0].startswith("#"):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                if "path" not in header:
                    return [(start, InputError("a CSV manifest needs a header row with a 'path' column"), {})]
                continue
            row = dict(zip(header, cells))
            value = (row.pop("path", "") or "").strip()
            if len(cells) != len(header):
                rows.append((start, InputError(f"{len(cells)} cells, the header has {len(header)}"), {}))
            elif not value:
                rows.append((start, InputError("empty path"), {}))
            elif "\n" in value or "\r" in value:
                rows.append((start, InputError("the path holds a line break (a quoted newline)"), {}))
            else:
                rows.append((start, value, {k: (v or "").strip() for k, v in row.items()}))
    except csv.Error as err:
        rows.append((end + 1, InputError(f"not CSV ({err})"), {}))
    if header is None:
        return [(1, InputError("a CSV manifest needs a header row with a 'path' column"), {})]
    return rows


def discover(args: Iterable[str | os.PathLike], errors: list[tuple[str, str]] | None = None, *,
             exclude: Iterable[str | os.PathLike] = ()) -> list[VideoInput]:
    """The videos named by command-line arguments, with their output folder names.

    An argument that names nothing, or anything skipped (see the module docstring), raises
    :class:`InputError`; with an ``errors`` list it is appended there as (where, message)
    instead and the rest goes on. Folders in ``exclude`` (OUT) are never scanned. No video
    found at all raises InputError (unless errors were listed).
    """
    args = [os.fspath(a) for a in args]
    if not args:
        raise InputError("no input given")
    found = _Discovery(errors, exclude)
    for arg in args:
        path = Path(arg).expanduser()
        if _GLOB_CHARS & set(arg) and not os.path.lexists(path):
            found.glob(arg, {}, ())
        else:
            found.expand(path, arg, {}, ())
    if not found.videos:
        if errors:
            return []
        raise InputError(f"no video found in {', '.join(display_path(a) for a in args)} "
                         f"(video suffixes: {', '.join(sorted(VIDEO_SUFFIXES))})")
    paths = [path for path, _ in found.videos.values()]
    common = Path(os.path.commonpath([os.fspath(p.parent) for p in paths] + [os.fspath(r) for r in found.roots]))
    by_folder_stem: dict[tuple[Path, str], int] = {}
    for p in paths:
        key = (p.parent, p.stem.lower())
        by_folder_stem[key] = by_folder_stem.get(key, 0) + 1
    out = []
    for p, extra in found.videos.values():
        name = p.name if by_folder_stem[(p.parent, p.stem.lower())] > 1 else p.stem
        parts = p.parent.relative_to(common).parts
        steps = [output_name(step, video=False, top=i == 0) for i, step in enumerate(parts)]
        rel = "/".join([*steps, output_name(name, video=True, top=not steps)])
        out.append(VideoInput(source=p, rel=rel, extra=extra))
    return out
