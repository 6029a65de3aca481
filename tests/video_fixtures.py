"""Real encoded video files for tests, made with PyAV at test time (small and fast).

Every ``make_*`` function takes the target path (its parent folders are created), writes the
file and returns the path as a :class:`pathlib.Path`. The container follows the suffix
(``.mp4``, ``.mov``, ``.mkv``, ``.ts``, ...).

Frames of :func:`make_video` and friends show :func:`pattern_image`: a flat grey picture whose
level encodes the frame number (read back with :func:`pattern_index`) and a white block in its
top-left corner (so a test can see whether a picture is upright). Sizes are ``(width, height)``.

Import from a test with::

    sys.path.insert(0, str(Path(__file__).parent))
    import video_fixtures as vf
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np

LEVEL_BASE = 20            # grey level of frame 0
LEVEL_STEP = 5             # grey level step between consecutive frames
LEVEL_PERIOD = 40          # frame numbers repeat after this many frames (levels stay <= 215)
MARKER_LEVEL = 255         # the upright marker block
FIXTURE_CRF = 12           # near-lossless, so levels survive encoding
VFR_TIME_BASE = Fraction(1, 1000)  # 1 ms, what Matroska stores
AUDIO_RATE_HZ = 16_000


def pattern_image(index: int, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB picture for frame ``index``: flat grey at level
    ``LEVEL_BASE + LEVEL_STEP * (index % LEVEL_PERIOD)``, with a white block over the top-left
    third (width // 3 x height // 3, at least 1 pixel) as an upright marker."""
    level = LEVEL_BASE + LEVEL_STEP * (index % LEVEL_PERIOD)
    image = np.full((height, width, 3), level, dtype=np.uint8)
    image[: max(1, height // 3), : max(1, width // 3)] = MARKER_LEVEL
    return image


def pattern_index(image: np.ndarray) -> int:
    """Frame number (modulo ``LEVEL_PERIOD``) shown by a decoded :func:`pattern_image`, read
    from the median of the central part of the (H, W, 3) uint8 image (rotation invariant)."""
    h, w = image.shape[:2]
    centre = image[int(h * 0.4): max(int(h * 0.6), int(h * 0.4) + 1), int(w * 0.4): max(int(w * 0.6), int(w * 0.4) + 1)]
    level = float(np.median(centre))
    return int(round((level - LEVEL_BASE) / LEVEL_STEP)) % LEVEL_PERIOD


def marker_corner(image: np.ndarray) -> str:
    """Which corner of the (H, W, 3) image holds the white marker: "tl", "tr", "bl" or "br"."""
    h, w = image.shape[:2]
    corners = {"tl": image[: h // 6 + 1, : w // 6 + 1], "tr": image[: h // 6 + 1, w - w // 6 - 1:],
               "bl": image[h - h // 6 - 1:, : w // 6 + 1], "br": image[h - h // 6 - 1:, w - w // 6 - 1:]}
    return max(corners, key=lambda k: float(corners[k].mean()))


def _target(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _pix_fmt(width: int, height: int) -> str:
    """yuv420p, or yuv444p for odd sizes, which 4:2:0 cannot hold."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


def _encode(path: Path, images_and_pts, width: int, height: int, *, codec: str, rate: Fraction,
            time_base: Fraction, gop: int | None = None, rotation_ccw: int = 0,
            container_options: dict | None = None) -> Path:
    """Encode (image, pts in ``time_base`` units) pairs into ``path``."""
    options = {"crf": str(FIXTURE_CRF)}
    if gop:
        options["g"] = str(gop)
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, _pix_fmt(width, height)
        stream.codec_context.time_base = time_base
        if rotation_ccw:
            stream.set_display_rotation(rotation_ccw)
        for image, pts in images_and_pts:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_video(path: str | os.PathLike, n: int = 20, size: tuple[int, int] = (96, 64), fps: float = 10,
               codec: str = "libx264", *, gop: int | None = None) -> Path:
    """A constant-frame-rate video of ``n`` :func:`pattern_image` frames, ``size`` = (width,
    height), frame i at i / fps seconds (containers may add a start offset, e.g. MPEG-TS).
    ``codec``: "libx264" (H.264) or "libx265" (HEVC); odd sizes use yuv444p.
    ``gop``: key-frame interval (encoder default if None)."""
    path = _target(path)
    width, height = size
    rate = Fraction(fps).limit_denominator(100_000)
    frames = ((pattern_image(i, width, height), i) for i in range(n))
    return _encode(path, frames, width, height, codec=codec, rate=rate, time_base=1 / rate, gop=gop)


def make_vfr_video(path: str | os.PathLike, pts_s: Sequence[float], size: tuple[int, int] = (96, 64),
                   codec: str = "libx264") -> Path:
    """A variable-frame-rate video: frame i shows :func:`pattern_image` (i) at ``pts_s[i]``
    seconds (strictly increasing, millisecond precision)."""
    path = _target(path)
    width, height = size
    ticks = [round(t / VFR_TIME_BASE) for t in pts_s]
    if any(b <= a for a, b in zip(ticks, ticks[1:])):
        raise ValueError("pts_s must increase by at least 1 ms per frame")
    span_s = (pts_s[-1] - pts_s[0]) if len(pts_s) > 1 else 1.0
    rate = Fraction(max(1, round((len(pts_s) - 1) / span_s))) if span_s > 0 else Fraction(10)
    frames = ((pattern_image(i, width, height), t) for i, t in enumerate(ticks))
    return _encode(path, frames, width, height, codec=codec, rate=rate, time_base=VFR_TIME_BASE)


def make_rotated_video(path: str | os.PathLike, rotation: int = 90, n: int = 10, size: tuple[int, int] = (96, 64),
                       fps: float = 10) -> Path:
    """A video stored sideways with display-matrix rotation metadata, the way phones and some
    dashcams record: shown upright it is ``size`` = (width, height) and frame i looks like
    :func:`pattern_image` (i, width, height); stored, its pictures are turned by ``rotation``
    degrees counter-clockwise and the metadata says "turn clockwise by ``rotation``"
    (ffprobe: ``rotate=90`` / display matrix "rotation of -90.00 degrees")."""
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90 degrees")
    path = _target(path)
    width, height = size
    k = (rotation // 90) % 4
    stored_w, stored_h = (height, width) if k % 2 else (width, height)
    rate = Fraction(fps).limit_denominator(100_000)
    frames = ((np.ascontiguousarray(np.rot90(pattern_image(i, width, height), k)), i) for i in range(n))
    return _encode(path, frames, stored_w, stored_h, codec="libx264", rate=rate, time_base=1 / rate,
                   rotation_ccw=-rotation)


def make_truncated_ts(path: str | os.PathLike, n: int = 30, size: tuple[int, int] = (96, 64), fps: float = 10,
                      keep_fraction: float = 0.6) -> Path:
    """An MPEG-TS recording of ``n`` frames cut, as by a power loss, after ``keep_fraction`` of
    its bytes (never on a 188-byte packet boundary). Decodes to fewer than ``n`` frames."""
    path = _target(path)
    make_video(path, n=n, size=size, fps=fps, gop=5)
    data = path.read_bytes()
    cut = int(len(data) * keep_fraction)
    if cut % 188 == 0:
        cut += 77
    path.write_bytes(data[:cut])
    return path


def make_truncated_mp4(path: str | os.PathLike, n: int = 30, size: tuple[int, int] = (96, 64), fps: float = 10,
                       keep_fraction: float = 0.6) -> Path:
    """An MP4 with its index at the front (``movflags=+faststart``) cut after ``keep_fraction``
    of its media data: it opens, the index lists ``n`` frames, fewer decode."""
    path = _target(path)
    width, height = size
    rate = Fraction(fps).limit_denominator(100_000)
    frames = ((pattern_image(i, width, height), i) for i in range(n))
    _encode(path, frames, width, height, codec="libx264", rate=rate, time_base=1 / rate, gop=5,
            container_options={"movflags": "+faststart"})
    data = path.read_bytes()
    mdat = data.find(b"mdat") + 4
    if not 0 < data.find(b"moov") < mdat:
        raise RuntimeError("expected the moov atom before the media data")
    path.write_bytes(data[: mdat + int((len(data) - mdat) * keep_fraction)])
    return path


def make_corrupt_middle(path: str | os.PathLike, n: int = 30, size: tuple[int, int] = (96, 64), fps: float = 10,
                        n_damaged: int = 2, seed: int = 0) -> Path:
    """A video of ``n`` frames (key frame every 5) whose ``n_damaged`` packets from frame
    ``n // 2`` on (in file order) are overwritten with random bytes, as by a bad storage
    sector. Frames before the damage and from the next key frame on still decode. Best as
    .ts or .mp4 (an MP4 keeps its index at the end, away from the damage)."""
    path = _target(path)
    make_video(path, n=n, size=size, fps=fps, gop=5)
    with av.open(str(path)) as container:
        spans = sorted((p.pos, p.size) for p in container.demux(video=0) if p.size and p.pos is not None)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for pos, size_bytes in spans[n // 2: n // 2 + n_damaged]:
        data[pos: pos + size_bytes] = rng.integers(0, 256, size_bytes, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def make_mp4_without_index(path: str | os.PathLike, n: int = 20, size: tuple[int, int] = (96, 64),
                           fps: float = 10) -> Path:
    """An MP4 whose index (the ``moov`` atom) was never written: an MP4 recorded with the index
    at the end, cut in its media data (the dashcam power-loss case). FFmpeg: "moov atom not found"."""
    path = _target(path)
    make_video(path, n=n, size=size, fps=fps)
    data = path.read_bytes()
    moov = data.find(b"moov") - 4
    mdat = data.find(b"mdat") - 4
    if not 0 <= mdat < moov:
        raise RuntimeError("expected the moov atom after the media data")
    path.write_bytes(data[: mdat + int((moov - mdat) * 0.9)])
    return path


def make_garbage(path: str | os.PathLike, n_bytes: int = 4096, seed: int = 0) -> Path:
    """``n_bytes`` random bytes (not a video, whatever the suffix)."""
    path = _target(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return path


def make_text_file(path: str | os.PathLike) -> Path:
    """A plain text file (not a video, whatever the suffix)."""
    path = _target(path)
    path.write_text("this is not a video\n" * 50)
    return path


def make_zero_frame_video(path: str | os.PathLike, n_packets: int = 5, size: tuple[int, int] = (96, 64)) -> Path:
    """A valid container (.mkv or .mp4) with an H.264 video stream whose ``n_packets`` packets
    hold no picture (zero bytes): it opens, but no frame decodes."""
    path = _target(path)
    width, height = size
    time_base = Fraction(1, 10)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_packets):
            packet = av.Packet(bytes(64))
            packet.stream = stream
            packet.pts = packet.dts = i
            packet.time_base = time_base
            container.mux(packet)
    return path


def make_audio_only(path: str | os.PathLike, seconds: float = 1.0) -> Path:
    """An audio-only file with a 440 Hz tone: AAC in .m4a/.mp4/.mka/.mkv, PCM in .wav."""
    path = _target(path)
    codec = "pcm_s16le" if path.suffix.lower() == ".wav" else "aac"
    n = int(AUDIO_RATE_HZ * seconds)
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(n) / AUDIO_RATE_HZ)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=AUDIO_RATE_HZ, layout="mono")
        if codec == "aac":
            frame = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None], format="fltp", layout="mono")
        else:
            frame = av.AudioFrame.from_ndarray((tone * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE_HZ
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def h5_datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file, by name."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_outputs(got_root: Path, ref_root: Path) -> int:
    """Every scores.h5 dataset of ``ref_root`` equal in ``got_root`` (same names, dtypes and
    bytes); tracks.csv and events.jsonl byte for byte. Returns the videos compared."""
    compared = 0
    for ref in sorted(ref_root.rglob("scores.h5")):
        got = got_root / ref.relative_to(ref_root)
        a, b = h5_datasets(got), h5_datasets(ref)
        assert a.keys() == b.keys(), got
        for name in b:
            assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), f"{got}: {name}"
        for name in ("tracks.csv", "events.jsonl"):
            assert (got.parent / name).read_bytes() == (ref.parent / name).read_bytes(), f"{got.parent}: {name}"
        compared += 1
    return compared
