"""``mine``: one streaming pass over an output tree, then the report files.

Memory does not grow with the number of videos beyond the ranking numbers of each event (see
:mod:`m2a_pipe.mining.ranking`): a video is read (root attributes, ``events.jsonl``), its events
go to the top-N heap and to a spool file, its report row to another spool file, and it is
dropped. The spool files live in a hidden temporary folder inside the report folder and are
removed at the end.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from m2a_pipe.errors import M2AError
from m2a_pipe.mining.clips import ClipError, cut_clip
from m2a_pipe.mining.outputs import OUTPUT_FILES, OutputError, Skipped, file_inside, read_video_events, walk_outputs
from m2a_pipe.mining.ranking import RankSpool, TopEvents, rank_key
from m2a_pipe.mining.report import (
    CLIPS_DIR,
    CONTACT_SHEET,
    EVENTS_CSV,
    REPORT_HTML,
    TopEvent,
    plural,
    skipped_item_html,
    spool_row,
    video_row_html,
    write_contact_sheet,
    write_events_csv,
    write_report_html,
)

DEFAULT_TOP = 50
DEFAULT_REPORT_DIR = "report"
CLIP_BEFORE_S = 2.0
CLIP_AFTER_S = 2.0


class MineError(M2AError):
    """Mining cannot start or finish (bad OUT_ROOT, unwritable report folder); one line."""


@dataclass
class MineResult:
    """What :func:`mine` did.

    ``videos``: folders mined; ``skipped``: folders skipped (``skipped_kinds`` counts them by
    kind); ``events``: events read; ``ranked``: events that passed the filters (rows of
    ``events.csv``); ``top``: the top events, best first; ``clips``: clips written;
    ``clip_errors``: one line each.
    """

    out_root: Path
    report_dir: Path
    videos: int = 0
    skipped: int = 0
    skipped_kinds: Counter = field(default_factory=Counter)
    events: int = 0
    ranked: int = 0
    top: list[TopEvent] = field(default_factory=list)
    clips: int = 0
    clip_errors: list[str] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)
    """The weights the mined videos were made with: name -> their notice (empty when none)."""

    @property
    def csv_path(self) -> Path:
        """``events.csv`` in the report folder."""
        return self.report_dir / EVENTS_CSV

    @property
    def html_path(self) -> Path:
        """``report.html`` in the report folder."""
        return self.report_dir / REPORT_HTML

    @property
    def contact_sheet_path(self) -> Path:
        """``contact_sheet.jpg`` in the report folder."""
        return self.report_dir / CONTACT_SHEET

    def summary(self) -> str:
        """One line: counts and where the report is."""
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped_kinds.items()))
        skipped = f"{self.skipped} skipped ({kinds})" if self.skipped else "0 skipped"
        clips = f", {self.clips} clips" if self.clips or self.clip_errors else ""
        return (f"{plural(self.videos, 'video')} mined, {skipped}; {self.ranked} of {self.events} events ranked, "
                f"top {len(self.top)}{clips} -> {self.html_path}")


def _rel_to(path: Path, root: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def _video_folder_holding(path: Path) -> Path | None:
    """The video output folder (a folder holding pipeline output files) that is ``path`` or
    one of its parents, or None."""
    for folder in (path.resolve(), *path.resolve().parents):
        try:
            if any((folder / name).is_file() for name in OUTPUT_FILES):
                return folder
        except OSError:
            continue
    return None


def clip_name(item: TopEvent) -> str:
    """``0001_<video folder with / as __>_event_0003.mp4``: rank first, so the files sort by rank."""
    video = item.video.rel.replace("/", "__") if item.video.rel != "." else item.video.path.name
    return f"{item.rank:04d}_{video}_event_{int(item.event['event_id']):04d}.mp4"


def mine(out_root: str | os.PathLike, report_dir: str | os.PathLike | None = None, *, top: int = DEFAULT_TOP,
         min_score: float | None = None, min_duration: float | None = None, clips: bool = False,
         include_partial: bool = False, clip_before: float = CLIP_BEFORE_S, clip_after: float = CLIP_AFTER_S,
         log: Callable[[str], None] | None = None) -> MineResult:
    """Rank the events of every complete video under ``out_root`` and write the report.

    Args:
        out_root: the pipeline's output root (or one video's folder).
        report_dir: where to write ``events.csv``, ``contact_sheet.jpg``, ``report.html`` and
            ``clips/`` (default ``out_root/report``; never scanned as a video folder).
        top: events on the contact sheet and in the HTML (and clipped with ``clips``).
        min_score: keep events with ``peak_score >= min_score``.
        min_duration: keep events with ``duration_s >= min_duration``.
        clips: cut a clip of each top event into ``report_dir/clips/`` (source video when it is
            there, else the overlay; ``clip_before``/``clip_after`` seconds around it).
        include_partial: also mine videos whose decoding lost frames (``status = partial``).
        log: called with one line per skipped folder and per failed clip.

    Ranking: see :mod:`m2a_pipe.mining.ranking` (peak score, then duration, then size).

    Raises:
        MineError: ``out_root`` is not a readable folder, or ``report_dir`` cannot be written.
        ValueError: ``top`` < 0.
    """
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    say = log or (lambda line: None)
    out_root = Path(out_root)
    if not out_root.is_dir():
        raise MineError(f"{out_root}: no such folder")
    report = Path(report_dir) if report_dir is not None else out_root / DEFAULT_REPORT_DIR
    holder = _video_folder_holding(report)
    if holder is not None:
        raise MineError(f"{report}: inside the video output folder {holder}; the report is never written into a "
                        "video's folder (give -o REPORT_DIR elsewhere)")
    try:
        report.mkdir(parents=True, exist_ok=True)
        work = tempfile.TemporaryDirectory(prefix=".mine-", dir=report)
    except OSError as err:
        raise MineError(f"{report}: cannot write the report folder ({err.strerror or err})") from None
    result = MineResult(out_root=out_root, report_dir=report)
    heap: TopEvents[TopEvent] = TopEvents(top)
    extra_keys: set[str] = set()
    with work as tmp, open(Path(tmp) / "events.jsonl", "w+b") as event_file, \
            open(Path(tmp) / "videos.html", "w+", encoding="utf-8") as videos_html, \
            open(Path(tmp) / "skipped.html", "w+", encoding="utf-8") as skipped_html:
        spool = RankSpool(event_file)

        def skip(item: Skipped) -> None:
            result.skipped += 1
            result.skipped_kinds[item.kind] += 1
            skipped_html.write(skipped_item_html(item))
            say(item.line())

        try:
            for item in walk_outputs(out_root, exclude=[report], include_partial=include_partial):
                if isinstance(item, Skipped):
                    skip(item)
                    continue
                try:
                    events = read_video_events(item.path, lambda line, rel=item.rel: say(f"{rel}: {line}"))
                except OutputError as err:
                    skip(Skipped(item.rel, "unreadable", str(err)))
                    continue
                kept = 0
                for event in events:
                    result.events += 1
                    if min_score is not None and float(event["peak_score"]) < min_score:
                        continue
                    if min_duration is not None and float(event["duration_s"]) < min_duration:
                        continue
                    thumb = file_inside(item.path, event.get("thumbnail")) if event.get("thumbnail") else None
                    if event.get("thumbnail") and thumb is None:
                        say(f"{item.rel}: event {event['event_id']}: thumbnail {event['thumbnail']!r} is not a "
                            "file inside the video folder; left out")
                    thumb_rel = _rel_to(thumb, out_root) if thumb is not None else ""
                    key = rank_key(event)
                    seq = spool.add(key, spool_row(item, event, thumb_rel))
                    heap.push(key, seq, TopEvent(seq=seq, video=item, video_index=result.videos, event=event,
                                                 thumbnail=thumb))
                    kept += 1
                extra_keys.update(item.extra)
                result.weights.setdefault(str(item.attrs.get("weights", "?")), str(item.attrs.get("weights_note", "")))
                videos_html.write(video_row_html(item, result.videos, len(events), kept, report))
                result.videos += 1
                result.ranked += kept
        except OutputError as err:
            raise MineError(str(err)) from None
        result.top = heap.best_first()
        for rank, entry in enumerate(result.top, start=1):
            entry.rank = rank
        clip_paths: dict[int, str] = {}
        if clips:
            for entry in result.top:
                target = report / CLIPS_DIR / clip_name(entry)
                try:
                    made = cut_clip(entry.video.path, int(entry.event["event_id"]), target, before=clip_before,
                                    after=clip_after)
                except ClipError as err:
                    result.clip_errors.append(f"clip of rank {entry.rank}: {err}")
                    say(result.clip_errors[-1])
                    continue
                entry.clip, entry.clip_note = made.path, made.note
                clip_paths[entry.seq] = _rel_to(made.path, out_root)
                result.clips += 1
        filters = "".join([f", peak score >= {min_score:g}" if min_score is not None else "",
                           f", duration >= {min_duration:g} s" if min_duration is not None else ""])
        try:
            write_events_csv(report / EVENTS_CSV, spool, extra_keys, clip_paths)
            write_contact_sheet(report / CONTACT_SHEET, result.top)
            write_report_html(report / REPORT_HTML, out_root=out_root,
                              counts={"videos": result.videos, "skipped": result.skipped, "events": result.events,
                                      "kept": result.ranked},
                              top=result.top, weights=result.weights, videos_fragment=videos_html,
                              skipped_fragment=skipped_html,
                              filters=f" ({filters[2:]})" if filters else "")
        except OSError as err:
            raise MineError(f"{report}: cannot write the report ({err.strerror or err})") from None
    return result
