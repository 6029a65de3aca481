"""Encoding edge of the pipeline: RGB frames with their timestamps in, a browser-playable
H.264 MP4 out (PyAV, libx264, yuv420p, ``movflags=+faststart``).

Each frame keeps the presentation time it is given, so variable-frame-rate input and sampled
frames keep their timing: reading the file back with
:class:`~m2a_pipe.io.video_reader.VideoReader` gives the same ``pts_s`` within 1 ms.

yuv420p stores colour at half resolution, so H.264 needs even sizes: a frame with an odd
width (height) is padded with a copy of its last column (row) on the right (bottom). The
original pixels are unchanged; the file is then one pixel wider (taller) than given.
"""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction

import av
import cv2
import numpy as np

from m2a_pipe.settings import OVERLAY_X264_PARAMS

DEFAULT_TIME_BASE = Fraction(1, 90_000)   # 90 kHz ticks, ~11 us: exact for 24/25/30/50/60 fps and ms times
PREFERRED_ENCODER = "libx264"
FALLBACK_ENCODER = "h264"                 # FFmpeg's default H.264 encoder of the build, whatever it is
PIXEL_FORMAT = "yuv420p"


class VideoWriter:
    """H.264 MP4 (libx264, yuv420p, browser-playable: faststart) written frame by frame with
    the given timestamps.

    Args:
        path: the output file, written as MP4 whatever its suffix.
        width, height: size of the frames that :meth:`write` takes, in pixels (odd sizes are
            padded by one pixel to even, see the module doc).
        fps: nominal frame rate (rate control and the stream's announced rate); the real
            timing comes from each frame's ``pts_s``.
        crf: libx264 constant rate factor (0 lossless ... 51 worst; 23 is x264's default).
        preset: libx264 speed preset ("ultrafast" ... "veryslow"), or one of the project's
            (:data:`~m2a_pipe.settings.OVERLAY_X264_PARAMS`, e.g. "lean").
        threads: encoder threads, 0 for FFmpeg's automatic choice (one per core and more);
            1 keeps the encoder off the cores a CPU model is using.
        time_base: timestamp unit in seconds, default 1/90000.

    Attributes:
        frames_written: frames given to :meth:`write` so far.
        coded_width, coded_height: the size stored in the file (even).
        encoder: the FFmpeg encoder used ("libx264", or another H.264 encoder if libx264 is
            missing from PyAV's FFmpeg).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, *, crf: int = 23,
                 preset: str = "veryfast", threads: int = 0, time_base: Fraction | None = None) -> None:
        if int(width) != width or int(height) != height or width < 1 or height < 1:
            raise ValueError(f"width and height must be positive integers, got {width!r} x {height!r}")
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.path = str(path)
        self.width, self.height = int(width), int(height)
        self.coded_width, self.coded_height = self.width + self.width % 2, self.height + self.height % 2
        self.time_base = Fraction(time_base) if time_base is not None else DEFAULT_TIME_BASE
        if self.time_base <= 0:
            raise ValueError(f"time_base must be positive, got {time_base!r}")
        self.frames_written = 0
        self._broken = False
        self._last_pts: int | None = None
        self.encoder = _h264_encoder()
        options = {"crf": str(int(crf)), **x264_preset_options(preset)} if self.encoder == PREFERRED_ENCODER else {}
        if threads:
            options["threads"] = str(int(threads))
        self._container = av.open(self.path, mode="w", format="mp4", options={"movflags": "+faststart"})
        try:
            rate = Fraction(fps).limit_denominator(1001 * 1000)
            self._stream = self._container.add_stream(self.encoder, rate=rate, options=options)
            self._stream.width, self._stream.height = self.coded_width, self.coded_height
            self._stream.pix_fmt = PIXEL_FORMAT
            self._stream.codec_context.time_base = self.time_base
            # The MP4 muxer keeps a stream time base of 1/N (N >= 10000) as the track timescale.
            self._stream.time_base = self.time_base
        except BaseException:
            self._container.close()
            self._container = None
            raise

    def write(self, image: np.ndarray, pts_s: float) -> None:
        """Encode one frame shown from ``pts_s`` seconds on.

        Args:
            image: (height, width, 3) uint8 RGB.
            pts_s: presentation time in seconds; must increase from frame to frame (after
                rounding to the time base).

        Raises:
            ValueError: wrong shape or dtype, or a timestamp not after the previous one.
            RuntimeError: the writer is closed.
        """
        if self._container is None:
            raise RuntimeError(f"{self.path}: write() after close()")
        image = np.asarray(image)
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(f"expected a ({self.height}, {self.width}, 3) uint8 RGB image, "
                             f"got {image.shape} {image.dtype}")
        if not math.isfinite(pts_s):
            raise ValueError(f"pts_s must be finite, got {pts_s!r}")
        pts = round(Fraction(float(pts_s)) / self.time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"timestamps must increase: {pts_s:.6f} s is not after the previous frame "
                             f"({float(self._last_pts * self.time_base):.6f} s)")
        # OpenCV's RGB -> I420 (BT.601, limited range, as FFmpeg's default conversion) is
        # about 15x faster than PyAV's swscale path here, and this runs on the model's cores.
        yuv = cv2.cvtColor(_pad_to_even(image), cv2.COLOR_RGB2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format=PIXEL_FORMAT)
        frame.pts, frame.time_base = pts, self.time_base
        try:
            self._container.mux(self._stream.encode(frame))
        except BaseException:
            self._broken = True  # FFmpeg crashes if a failed output is written to again
            raise
        self._last_pts = pts
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (the index is moved to the front). Safe to
        call more than once. A writer closed without frames leaves no valid video; one whose
        write failed (a full disk) is closed without flushing: FFmpeg's encoder flush into an
        output that already failed ends the process with a segmentation fault."""
        container, self._container = self._container, None
        if container is None:
            return
        try:
            if self.frames_written and not self._broken:
                container.mux(self._stream.encode())
        finally:
            container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def x264_preset_options(preset: str) -> dict[str, str]:
    """The libx264 options of ``preset``: ``{"preset": preset}`` for one of libx264's, the base
    preset and its ``x264-params`` for one of the project's (:data:`OVERLAY_X264_PARAMS`)."""
    if preset in OVERLAY_X264_PARAMS:
        base, params = OVERLAY_X264_PARAMS[preset]
        return {"preset": base, "x264-params": params}
    return {"preset": str(preset)}


def _pad_to_even(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H + H % 2, W + W % 2, 3) uint8, repeating the last row/column."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _h264_encoder() -> str:
    """libx264 if PyAV's FFmpeg has it, else the build's default H.264 encoder (with a warning)."""
    try:
        av.codec.Codec(PREFERRED_ENCODER, "w")
        return PREFERRED_ENCODER
    except av.codec.codec.UnknownCodecError:
        pass
    try:
        name = av.codec.Codec(FALLBACK_ENCODER, "w").name
    except av.codec.codec.UnknownCodecError:
        raise RuntimeError("this FFmpeg build (PyAV) has no H.264 encoder: install a PyAV wheel with libx264") from None
    warnings.warn(f"libx264 is not available in PyAV's FFmpeg; encoding H.264 with '{name}' "
                  "(crf and preset are ignored)", RuntimeWarning, stacklevel=3)
    return name
