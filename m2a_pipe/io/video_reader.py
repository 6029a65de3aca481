"""Decoding edge of the pipeline: one video file in, upright RGB frames out (PyAV).

:class:`VideoReader` opens a file, decodes its first frame at once (so that a file that cannot
give a single frame fails at open, and so that the rotation and displayed size are known),
then yields :class:`Frame` objects one at a time. Damaged data does not stop it: packets that
fail to demux or decode are counted in ``errors`` and skipped, and decoding goes on until the
end of the file or until ``max_consecutive_errors`` failures in a row. ``partial_reason`` then
says, on one line, why the result is incomplete. :meth:`VideoReader.seek` gives the frames
from a time on, decoding from the key frame before it instead of from the start.

Every failure to open is a :class:`VideoError` whose text is one line: ``"<path>: <reason>"``.
"""

from __future__ import annotations

import itertools
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from m2a_pipe.errors import M2AError
from m2a_pipe.io.video_diagnosis import (
    count,
    ffmpeg_message,
    frame_time,
    mp4_missing_bytes,
    one_line,
    open_failure_reason,
    packet_time,
    positive_float,
    stream_duration_s,
    ts_last_pes_cut,
    ts_truncation,
)

DEFAULT_FPS = 30.0
MP4_FORMAT_NAMES = ("mov", "mp4")
PTS_EPSILON_S = 1e-6           # tolerance when comparing timestamps to sample times
EARLY_END_FRAMES = 1           # a stream may end this many frame intervals before its announced duration ...
EARLY_END_FRACTION = 0.002     # ... or this fraction of it (7 s an hour), whichever is larger
CONTAINER_END_SLACK_S = 0.5    # the same when only the container announces a duration (audio may run on)
SEEK_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # retries of a seek that lands after its target


class VideoError(M2AError):
    """A video that cannot be read.

    ``str(err)`` is one line, ``"<path>: <reason>"``, e.g.
    ``"clips/a.mp4: not a video (no video stream)"``.

    Attributes:
        path: the file as given (str).
        reason: why it cannot be read, one line.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = one_line(reason)
        super().__init__(f"{os.fsencode(self.path).decode('utf-8', 'backslashreplace')}: {self.reason}")


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video once it is opened.

    ``width``/``height`` are the displayed size, after ``rotation``; ``rotation`` is the
    clockwise angle in degrees (0, 90, 180 or 270) applied to decoded pictures to make them
    upright (the convention of the legacy ``rotate`` tag that phones write).
    ``n_frames`` is the container's estimate (the MP4 index count, else duration * fps),
    ``None`` if unknown; the true count is :attr:`VideoReader.n_decoded` after iteration.
    """

    path: str
    width: int
    height: int
    fps: float
    n_frames: int | None
    duration_s: float | None
    rotation: int
    codec: str
    container: str


@dataclass(frozen=True)
class Frame:
    """One decoded video frame.

    Attributes:
        index: 0-based position among all decoded video frames of the file (before sampling);
            -1 for frames from :meth:`VideoReader.seek`, whose position is not known.
        pts_s: presentation time in seconds (stream timestamps, not shifted to start at 0).
        image: (H, W, 3) uint8 RGB, upright (rotation applied), C-contiguous.
    """

    index: int
    pts_s: float
    image: np.ndarray


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open ``path``, decode its first frame and return its :class:`VideoInfo`.

    Raises:
        VideoError: the file cannot be read or holds no decodable video frame.
    """
    with VideoReader(path) as reader:
        return reader.info


class VideoReader:
    """Frames of one video file, decoded with PyAV (frame-threaded), one at a time.

    Args:
        path: the video file.
        sample_fps: keep at most one frame per 1/sample_fps seconds: the first frame whose
            pts is at or after ``t0 + k / sample_fps`` (t0 = first frame's pts, k = 0, 1, ...);
            evenly spaced samples even for variable-frame-rate input.
        stride: keep every ``stride``-th decoded frame (``index % stride == 0``).
        max_consecutive_errors: stop decoding after this many demux/decode failures in a row.
        threads: decoder threads, 0 for FFmpeg's automatic choice.

    ``sample_fps`` and ``stride`` (other than 1) exclude each other.

    Raises:
        VideoError: at construction, for a file that cannot be read (missing, unreadable, not a
            video, no video stream, MP4 index missing, no decodable frame).
        ValueError: invalid arguments.

    After iteration:
        errors: list[str], the demux/decode problems met, one line each.
        partial_reason: None if the whole file decoded, else one line saying why frames were lost.
        n_decoded: video frames decoded (before sampling).

    The reader is read once, by iterating it or by :meth:`seek` (which may be called again),
    and is a context manager.
    """

    def __init__(self, path: str | os.PathLike, *, sample_fps: float | None = None, stride: int = 1,
                 max_consecutive_errors: int = 25, threads: int = 0) -> None:
        if sample_fps is not None and stride != 1:
            raise ValueError("give either sample_fps or stride, not both")
        if sample_fps is not None and not (sample_fps > 0 and math.isfinite(sample_fps)):
            raise ValueError(f"sample_fps must be a positive number, got {sample_fps!r}")
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
        if int(max_consecutive_errors) != max_consecutive_errors or max_consecutive_errors < 1:
            raise ValueError(f"max_consecutive_errors must be an integer >= 1, got {max_consecutive_errors!r}")
        if int(threads) != threads or threads < 0:
            raise ValueError(f"threads must be an integer >= 0, got {threads!r}")
        self.path = str(path)
        self.sample_fps = None if sample_fps is None else float(sample_fps)
        self.stride = int(stride)
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.errors: list[str] = []
        self.partial_reason: str | None = None
        self.n_decoded = 0
        self._stopped_on_errors = False
        self._first_pts_s: float | None = None
        self._last_pts_s: float | None = None
        self._threads = int(threads)
        self._mode: str | None = None    # "iter" or "seek" once reading has begun
        self._container = _open_container(self.path)
        try:
            self._stream = self._open_stream()
            self._raw = self._decode_frames()
            first = next(self._raw, None)
            if first is None:
                raise VideoError(self.path, self._no_frame_reason())
            self._first: av.VideoFrame | None = first
            self._start_s = float(first.time) if first.time is not None else 0.0
            self.info = self._make_info(first)
        except BaseException:
            self.close()
            raise

    # -- public --------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        if self._mode is not None:
            raise RuntimeError("a VideoReader can be iterated only once (and not after a seek); open a new one")
        self._mode = "iter"
        return self._frames()

    def seek(self, t_s: float) -> Iterator[Frame]:
        """Every frame with ``pts_s >= t_s`` (seconds, on the scale of :attr:`Frame.pts_s`), in
        presentation order to the end of the file (stop early by leaving the loop).

        Decoding starts at the key frame at or before ``t_s``. Some demuxers (MPEG-TS) land on
        the key frame *after* it: the seek is then retried 1, 2, 4, ... s earlier
        (:data:`SEEK_BACKOFF_S`); a file that cannot seek there is decoded from its start. A
        ``t_s`` past the last frame yields nothing.

        Frames are those of iteration: ``image`` (H, W, 3) uint8 RGB, upright, at the size of
        :attr:`info`; but ``sample_fps`` and ``stride`` are not applied and ``index`` is -1.
        Damaged data is skipped and recorded in ``errors``; ``partial_reason`` stays None (only
        a full iteration sets it). Each call ends the iterator the previous one returned.

        Raises:
            ValueError: ``t_s`` is not a finite number.
            RuntimeError: the reader is closed or has been iterated.
            VideoError: the file, decoded from its start, cannot be opened again.
        """
        t_s = float(t_s)
        if not math.isfinite(t_s):
            raise ValueError(f"t_s must be a finite number of seconds, got {t_s!r}")
        if self._container is None:
            raise RuntimeError("the VideoReader is closed")
        if self._mode == "iter":
            raise RuntimeError("a VideoReader cannot seek once iterated; open a new one")
        self._mode = "seek"
        first, self._raw = self._position(t_s)
        return self._frames_from(first, self._raw, t_s)

    def close(self) -> None:
        """Release the file. Safe to call more than once."""
        container = getattr(self, "_container", None)
        if container is not None:
            self._container = None
            raw = getattr(self, "_raw", None)
            if raw is not None:
                raw.close()
            container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- frames --------------------------------------------------------------------------

    def _frames(self) -> Iterator[Frame]:
        """Converted, sampled frames; sets ``partial_reason`` when the file has been read to its end."""
        stored_w, stored_h, k_rot = self._geometry()
        step_s = 1.0 / self.info.fps if self.info.fps > 0 else 1.0 / DEFAULT_FPS
        pts_s: float | None = None
        t0: float | None = None
        next_slot = 0
        index = -1
        raw = self._raw
        frame = self._first
        self._first = None
        while frame is not None:
            index += 1
            time = frame.time
            pts_s = float(time) if time is not None else (0.0 if pts_s is None else pts_s + step_s)
            keep = index % self.stride == 0
            if self.sample_fps is not None:
                if t0 is None:
                    t0 = pts_s
                keep = pts_s + PTS_EPSILON_S >= t0 + next_slot / self.sample_fps
                if keep:
                    next_slot = math.floor((pts_s - t0) * self.sample_fps + PTS_EPSILON_S) + 1
            if self._first_pts_s is None:
                self._first_pts_s = pts_s
            self._last_pts_s = pts_s
            if keep:
                yield Frame(index=index, pts_s=pts_s, image=_to_rgb(frame, stored_w, stored_h, k_rot))
            frame = next(raw, None)
        self.partial_reason = self._partial_reason()

    def _frames_from(self, first: av.VideoFrame | None, raw: Iterator[av.VideoFrame], t_s: float) -> Iterator[Frame]:
        """Converted frames (``first``, then ``raw``) with pts at or after ``t_s``, pts as in :meth:`_frames`."""
        stored_w, stored_h, k_rot = self._geometry()
        step_s = 1.0 / self.info.fps if self.info.fps > 0 else 1.0 / DEFAULT_FPS
        pts_s: float | None = None
        for frame in raw if first is None else itertools.chain((first,), raw):
            time = frame.time
            pts_s = float(time) if time is not None else (0.0 if pts_s is None else pts_s + step_s)
            if pts_s >= t_s - PTS_EPSILON_S:
                yield Frame(index=-1, pts_s=pts_s, image=_to_rgb(frame, stored_w, stored_h, k_rot))

    def _position(self, t_s: float) -> tuple[av.VideoFrame | None, Iterator[av.VideoFrame]]:
        """(first frame or None, decoder of the frames after it), from a key frame at or before ``t_s``."""
        first, self._first = self._first, None
        if first is not None and t_s <= self._start_s + PTS_EPSILON_S:
            return first, self._raw   # nothing read yet: the start is where we are
        self._raw.close()
        time_base = self._stream.time_base
        for back_s in (0.0, *SEEK_BACKOFF_S):
            target_s = t_s - back_s
            if time_base is None or target_s <= self._start_s:
                break
            try:
                self._container.seek(int(target_s / time_base), stream=self._stream, backward=True,
                                     any_frame=False)
            except av.error.FFmpegError:
                break
            raw = self._decode_frames()
            first = next(raw, None)
            if first is not None and first.time is not None and first.time <= t_s + PTS_EPSILON_S:
                return first, raw
            raw.close()
        container = _open_container(self.path)   # decode from the start on a fresh container
        self._container.close()
        self._container = container
        self._stream = self._open_stream()
        return None, self._decode_frames()

    def _open_stream(self) -> av.video.stream.VideoStream:
        stream = _video_stream(self.path, self._container)
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = self._threads
        return stream

    def _geometry(self) -> tuple[int, int, int]:
        """(stored width, stored height, np.rot90 turns): the decoded size before rotation, and
        the counter-clockwise quarter turns that make it upright."""
        k_rot = (-self.info.rotation // 90) % 4
        width, height = self.info.width, self.info.height
        return (height, width, k_rot) if k_rot % 2 else (width, height, k_rot)

    def _decode_frames(self) -> Iterator[av.VideoFrame]:
        """Decoded frames of the video stream, in presentation order, skipping packets that fail.

        A failure of the demuxer (reading the file) or of the decoder is recorded in
        ``errors``; ``max_consecutive_errors`` failures without a decoded frame in between
        end decoding. Packets and frames FFmpeg flags as corrupt are recorded too.
        """
        container, stream = self._container, self._stream
        consecutive = 0
        at_end = False
        while not at_end:
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    at_end = True
                    break
                except av.error.FFmpegError as err:
                    # The demux generator is finished after raising: start a new one, which
                    # resumes reading where the file position is.
                    self.errors.append(f"demux: {ffmpeg_message(err)}")
                    consecutive += 1
                    break
                if packet.is_corrupt:
                    self.errors.append(f"corrupt packet at {packet_time(packet)} (damaged or missing data)")
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as err:
                    self.errors.append(f"decode at {packet_time(packet)}: {ffmpeg_message(err)}")
                    consecutive += 1
                    if consecutive >= self.max_consecutive_errors:
                        break
                    continue
                for frame in frames:
                    consecutive = 0
                    self.n_decoded += 1
                    if frame.is_corrupt:
                        self.errors.append(f"corrupt frame at {frame_time(frame)} (decoded with errors)")
                    yield frame
            if consecutive >= self.max_consecutive_errors and not at_end:
                self._stopped_on_errors = True
                return

    # -- reasons and info ----------------------------------------------------------------

    def _no_frame_reason(self) -> str:
        if self._stopped_on_errors:
            return (f"no decodable video frame (stopped after {self.max_consecutive_errors} consecutive "
                    f"errors, last: {self.errors[-1]})")
        if self.errors:
            return f"no decodable video frame ({count(len(self.errors), 'error')}, last: {self.errors[-1]})"
        return "no decodable video frame"

    def _partial_reason(self) -> str | None:
        """One line on what was lost, or None when the whole file decoded cleanly."""
        parts = []
        truncated = ts_truncation(self.path, self.info.container)
        if truncated is None and self.info.container == "mpegts":
            truncated = ts_last_pes_cut(self.path, self._stream.id)
        if truncated:
            parts.append(truncated)
        index_frames = self._stream.frames
        is_mp4 = self.info.container.startswith(MP4_FORMAT_NAMES)
        if index_frames and self.n_decoded < index_frames:
            missing_bytes = mp4_missing_bytes(self.path, self._stream) if is_mp4 else 0
            if missing_bytes:
                parts.append(f"truncated: index lists {index_frames} frames, decoded {self.n_decoded} "
                             f"(the file ends {missing_bytes} bytes before the data its index points to)")
            else:
                parts.append(f"index lists {index_frames} frames, decoded {self.n_decoded}")
        stream_s = own_s = stream_duration_s(self._stream)
        slack_s = max(EARLY_END_FRAMES / self.info.fps, EARLY_END_FRACTION * (stream_s or 0.0))
        if stream_s is None and self.info.container != "mpegts" and self.info.duration_s:
            # the container's duration (FLV metadata, AVI header) may include an audio tail
            stream_s = self.info.duration_s
            slack_s = max(CONTAINER_END_SLACK_S, EARLY_END_FRACTION * stream_s)
        if not is_mp4 and stream_s and self._last_pts_s is not None:
            start_s = self._first_pts_s
            if self._stream.start_time is not None and self._stream.time_base is not None:
                start_s = min(start_s, float(self._stream.start_time * self._stream.time_base))
            covered_s = self._last_pts_s + 1.0 / self.info.fps - start_s
            if covered_s < stream_s - slack_s:
                parts.append(f"stream ends early: decoded {covered_s:.2f} s of the {stream_s:.2f} s "
                             "the container announces")
            expected = round(stream_s * self.info.fps)   # frames lost inside (B-frames of a cut tail)
            if own_s and not index_frames and not parts and self.n_decoded < expected - EARLY_END_FRAMES:
                parts.append(f"the container announces {stream_s:.2f} s at {self.info.fps:g} fps (about {expected} "
                             f"frames), decoded {self.n_decoded}")
        if self._stopped_on_errors:
            parts.append(f"stopped after {self.max_consecutive_errors} consecutive decode errors, "
                         f"last: {self.errors[-1]}")
        elif self.errors:
            parts.append(f"{count(len(self.errors), 'decode error')}, last: {self.errors[-1]}")
        return one_line("; ".join(parts)) if parts else None

    def _make_info(self, first: av.VideoFrame) -> VideoInfo:
        stream, container = self._stream, self._container
        rotation = (-round(first.rotation / 90) * 90) % 360
        width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
        duration_s = stream_duration_s(stream)
        if duration_s is None and container.duration is not None:
            duration_s = container.duration / av.time_base
        if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
            duration_s = None
        fps = positive_float(stream.average_rate) or positive_float(stream.guessed_rate)
        if fps is None and stream.frames and duration_s:
            fps = stream.frames / duration_s
        fps = fps or DEFAULT_FPS
        n_frames = int(stream.frames) if stream.frames else None
        if n_frames is None and duration_s:
            n_frames = max(1, round(duration_s * fps))
        return VideoInfo(path=self.path, width=width, height=height, fps=fps, n_frames=n_frames,
                         duration_s=duration_s, rotation=rotation, codec=stream.codec_context.name,
                         container=container.format.name)


# -- opening ----------------------------------------------------------------------------------


def _open_container(path: str) -> av.container.InputContainer:
    """The opened input container, or a one-line VideoError saying why not."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):   # a FIFO would block the run
            raise VideoError(path, "not a regular file (a FIFO, socket or device), not a video file")
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise VideoError(path, "file not found") from None
    except IsADirectoryError:
        raise VideoError(path, "is a directory, not a video file") from None
    except PermissionError:
        raise VideoError(path, "permission denied (cannot read the file)") from None
    except OSError as err:
        raise VideoError(path, f"cannot read the file ({err.strerror or err})") from None
    if not head:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        return av.open(path, mode="r", metadata_errors="replace")
    except av.error.FFmpegError as err:
        raise VideoError(path, open_failure_reason(path, err)) from None
    except (UnicodeDecodeError, ValueError) as err:
        raise VideoError(path, f"cannot open ({type(err).__name__}: {err})") from None


def _video_stream(path: str, container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream that is not an attached picture (cover art)."""
    video = [s for s in container.streams.video
             if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not video:
        kinds = sorted({s.type for s in container.streams})
        found = f"only {', '.join(kinds)}" if kinds else "no streams at all"
        if container.streams.video:
            found = "only a cover picture"
        raise VideoError(path, f"not a video (no video stream; {found})")
    stream = video[0]
    if stream.codec_context is None:  # PyAV then knows nothing of the codec, not even its name
        raise VideoError(path, "unknown or unsupported video codec (no decoder in this FFmpeg build)")
    return stream


# -- small helpers ----------------------------------------------------------------------------


def _to_rgb(frame: av.VideoFrame, stored_w: int, stored_h: int, k_rot: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright, C-contiguous; frames whose size changed mid-stream are
    scaled back to the first frame's (stored) size."""
    if frame.width == stored_w and frame.height == stored_h:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(format="rgb24", width=stored_w, height=stored_h)
    if k_rot:
        rgb = np.rot90(rgb, k_rot)
    return np.ascontiguousarray(rgb)


