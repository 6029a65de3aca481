"""Short H.264 clips around an event, cut from the source video or from ``overlay.mp4``.

The clip holds every frame whose presentation time lies in ``[start_s - before, end_s + after]``
(the event's first and last frame times, seconds of the source), clipped to the video.
**Its timestamps start at 0**: the clip's first frame is shown at 0 s and each later frame at
its source time minus :attr:`ClipResult.clip_start_s` (the source time of the clip's first
frame), so gaps and variable frame rates are kept; the event starts
:attr:`ClipResult.event_offset_s` seconds into the clip.

Frames come from the source at full resolution, or from the overlay (network-input size, the
heatmap drawn in, only the processed frames: with ``--sample-fps``/``--stride`` runs it has
fewer frames than the source). The source is found through the ``source`` attribute of
``scores.h5``; with ``use="auto"`` the overlay is used when the source is gone or its size
differs from the one recorded at processing time (``source_fingerprint``).

Decoding starts at the key frame before the window (:meth:`VideoReader.seek
<m2a_pipe.io.video_reader.VideoReader.seek>`), so a clip from the end of an hour-long file does
not decode the hour before it; a container that cannot seek there is decoded from its start.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av

from m2a_pipe.errors import M2AError, first_line
from m2a_pipe.io.layout import temporary_file
from m2a_pipe.io.video_reader import PTS_EPSILON_S, Frame, VideoError, VideoReader
from m2a_pipe.io.video_writer import VideoWriter
from m2a_pipe.mining.outputs import EVENTS_FILE, OVERLAY_FILE, SCORES_FILE, OutputError, find_event, read_root_attrs

CLIP_CRF = 20              # a little better than x264's default: clips are for looking at
MIN_STEP_S = 1e-3          # timestamps that do not increase are moved this much after the previous one
CLIP_SOURCES = ("auto", "source", "overlay")


class ClipError(M2AError):
    """A clip that cannot be made; ``str(err)`` is one line."""


@dataclass(frozen=True)
class ClipResult:
    """What was written.

    ``kind``: ``"source"`` or ``"overlay"``; ``video``: the file the frames came from;
    ``clip_start_s`` / ``clip_end_s``: source times of the clip's first and last frames;
    ``event_offset_s``: where the event starts in the clip; ``note``: why the overlay was used
    instead of the source, or a warning ("" when none).
    """

    path: Path
    kind: str
    video: str
    event_id: int
    n_frames: int
    clip_start_s: float
    clip_end_s: float
    event_offset_s: float
    note: str = ""


MAX_EVENT_TIME_S = 1e7
"""Event times beyond this many seconds (116 days) are taken as damage, not as a moment of a video."""


def _size_from_fingerprint(fingerprint: str) -> int | None:
    """The file size in a ``"size:<n>:sha256:<hex>"`` fingerprint, None when absent or malformed."""
    parts = fingerprint.split(":")
    if len(parts) >= 2 and parts[0] == "size" and parts[1].isdigit():
        return int(parts[1])
    return None


def _reason(err: BaseException) -> str:
    """The first line of an error's text (its ``strerror`` for OS errors), or its type's name."""
    return first_line(getattr(err, "strerror", None) or err)


def choose_video(folder: Path, use: str = "auto") -> tuple[str, Path, str]:
    """``(kind, file, note)``: the video to cut from for ``use`` in :data:`CLIP_SOURCES`.

    Raises:
        ClipError: the requested video (or, for ``auto``, both) is missing.
    """
    if use not in CLIP_SOURCES:
        raise ValueError(f"use must be one of {CLIP_SOURCES}, got {use!r}")
    overlay = folder / OVERLAY_FILE
    try:
        attrs = read_root_attrs(folder / SCORES_FILE)
    except OutputError:
        attrs = {}
    source = str(attrs.get("source", ""))
    source_ok = bool(source) and os.path.isfile(source)
    note = ""
    if source_ok:
        recorded = _size_from_fingerprint(str(attrs.get("source_fingerprint", "")))
        if recorded is not None and recorded != os.path.getsize(source):
            note = (f"the source {source} changed since it was processed ({recorded} bytes then, "
                    f"{os.path.getsize(source)} now)")
    if use == "source" or (use == "auto" and source_ok and not note):
        if not source:
            raise ClipError(f"{folder}: {SCORES_FILE} names no source video (use --overlay)")
        if not source_ok:
            raise ClipError(f"source video {source} not found (use --overlay to cut from {OVERLAY_FILE})")
        return "source", Path(source), note
    if overlay.is_file():
        if use == "auto":
            note = note or (f"source video {source} not found" if source else f"{SCORES_FILE} names no source")
            note += f"; cut from {OVERLAY_FILE}"
        return "overlay", overlay, note
    if use == "overlay":
        raise ClipError(f"{folder}: no {OVERLAY_FILE} (processed with --no-overlay?); use --source")
    if note:
        return "source", Path(source), note
    raise ClipError(f"{folder}: neither the source video ({source or 'not recorded'}) nor {OVERLAY_FILE} exists")


def frames_between(reader: VideoReader, t0: float, t1: float) -> Iterator[Frame]:
    """The frames of an open ``reader`` with ``t0 <= pts_s <= t1`` (seconds, with the reader's
    :data:`~m2a_pipe.io.video_reader.PTS_EPSILON_S` tolerance), from :meth:`VideoReader.seek`:
    ``image`` (H, W, 3) uint8 RGB, upright; ``index`` -1."""
    for frame in reader.seek(t0):
        if frame.pts_s > t1 + PTS_EPSILON_S:
            break
        yield frame


def cut_clip(folder: str | os.PathLike, event_id: int, output: str | os.PathLike, *, before: float = 2.0,
             after: float = 2.0, use: str = "auto", crf: int = CLIP_CRF) -> ClipResult:
    """Write an H.264 MP4 clip of event ``event_id`` of the video output ``folder`` to ``output``
    (see the module docstring for the window, the timestamps and the choice of video).

    The file is written under a temporary name and renamed, so ``output`` is whole or absent.

    Raises:
        ClipError: no such folder or event, no video to cut from, no frame in the window
            (one-line message).
        ValueError: negative ``before``/``after`` or an unknown ``use``.
    """
    if before < 0 or after < 0:
        raise ValueError(f"before and after must be >= 0, got {before} and {after}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ClipError(f"{folder}: no such folder")
    if not (folder / EVENTS_FILE).is_file():
        raise ClipError(f"{folder}: not a video output folder (no {EVENTS_FILE})")
    try:
        event = find_event(folder, int(event_id))
    except OutputError as err:
        raise ClipError(str(err) if str(err).startswith(str(folder)) else f"{folder}: {err}") from None
    kind, video, note = choose_video(folder, use)
    t0, t1 = float(event["start_s"]) - before, float(event["end_s"]) + after
    if not (math.isfinite(t0) and math.isfinite(t1) and abs(t0) <= MAX_EVENT_TIME_S and abs(t1) <= MAX_EVENT_TIME_S):
        raise ClipError(f"{folder}: event {event_id} has times no video has (start_s {event['start_s']!r}, "
                        f"end_s {event['end_s']!r})")
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ClipError(f"{output}: cannot write the clip ({_reason(err)})") from None
    tmp = temporary_file(output)
    writer: VideoWriter | None = None
    first_pts = last_pts = last_clip_pts = None
    try:
        with VideoReader(video) as reader:
            for frame in frames_between(reader, t0, t1):
                pts, image = frame.pts_s, frame.image
                if writer is None:
                    writer = VideoWriter(tmp, image.shape[1], image.shape[0], reader.info.fps, crf=crf)
                    first_pts = pts
                clip_pts = pts - first_pts
                if last_clip_pts is not None and clip_pts < last_clip_pts + MIN_STEP_S:
                    clip_pts = last_clip_pts + MIN_STEP_S
                writer.write(image, clip_pts)
                last_pts, last_clip_pts = pts, clip_pts
        if writer is None:
            raise ClipError(f"{video}: no frame between {t0:.3f} s and {t1:.3f} s")
        writer.close()
        os.replace(tmp, output)
    except VideoError as err:
        raise ClipError(str(err)) from None
    except (av.error.FFmpegError, OSError) as err:
        raise ClipError(f"{output}: cannot make the clip ({_reason(err)})") from None
    finally:
        if writer is not None:
            try:
                writer.close()  # a no-op after a successful close
            except (av.error.FFmpegError, OSError):
                pass  # the error being raised already says what went wrong
        tmp.unlink(missing_ok=True)
    return ClipResult(path=output, kind=kind, video=str(video), event_id=int(event["event_id"]),
                      n_frames=writer.frames_written, clip_start_s=float(first_pts), clip_end_s=float(last_pts),
                      event_offset_s=float(event["start_s"]) - float(first_pts), note=note)
