"""Why a video file cannot be read, or was cut short: the diagnoses behind the one-line
reasons of :class:`~m2a_pipe.io.video_reader.VideoError` and ``partial_reason``.

Each function inspects the file's bytes or PyAV's view of it and says, in words a user can act
on, what is wrong: an MP4 whose index (moov atom) was never written, a transport stream cut
inside a packet, an index listing samples past the end of the file, a stream shorter than it
announces. No decoding happens here.
"""

from __future__ import annotations

import math
import os
import struct
from fractions import Fraction

import av

TS_PACKET_BYTES = 188          # MPEG-TS packet size
M2TS_PACKET_BYTES = 192        # Blu-ray / AVCHD transport packet (4-byte timecode + 188)
TS_SUFFIXES = (".ts", ".mts", ".m2ts", ".m2t", ".tsv", ".tts")
MP4_TOP_LEVEL_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"meta", b"pnot",
                       b"udta", b"moof", b"mfra", b"styp", b"sidx", b"pdin", b"junk", b"prfl", b"PICT"}
MP4_BOX_SCAN_LIMIT = 10_000    # top-level boxes inspected before giving up
MAX_REASON_CHARS = 300         # error messages are clipped to this many characters


def open_failure_reason(path: str, err: av.error.FFmpegError) -> str:
    """Why FFmpeg could not open ``path`` (``err``), in one line: a missing MP4 index, a
    header cut short, no container format at all, or FFmpeg's own words."""
    boxes = mp4_top_level_boxes(path)
    if boxes and b"moov" not in boxes:
        return ("MP4 index (moov atom) is missing: the file was probably cut off while recording "
                "(e.g. power loss) and cannot be decoded without the index "
                "(a repair tool that rebuilds the index from a good file of the same camera may help)")
    if boxes:
        return f"cannot read the MP4 index (moov atom): {ffmpeg_message(err)}"
    if isinstance(err, av.error.EOFError):
        return "truncated or not a video (the file ends before its container header is complete)"
    if isinstance(err, av.error.InvalidDataError):
        return "not a video (FFmpeg recognises no container format in it)"
    return f"cannot open ({ffmpeg_message(err)})"


def mp4_top_level_boxes(path: str) -> list[bytes]:
    """Types of the top-level ISO-BMFF (MP4/MOV) boxes, in file order; [] if the file is not MP4-like.

    The walk stops at the end of the file, at a box that claims to extend past it (a file cut
    while recording), or at bytes that are not a box header.
    """
    boxes: list[bytes] = []
    try:
        size_bytes = os.path.getsize(path)
        with open(path, "rb") as f:
            pos = 0
            while pos + 8 <= size_bytes and len(boxes) < MP4_BOX_SCAN_LIMIT:
                f.seek(pos)
                header = f.read(16)
                box_size, box_type = struct.unpack(">I4s", header[:8])
                if box_type not in MP4_TOP_LEVEL_BOXES:
                    break
                boxes.append(box_type)
                if box_size == 1 and len(header) == 16:
                    box_size = struct.unpack(">Q", header[8:16])[0]
                elif box_size == 0:  # box runs to the end of the file
                    break
                if box_size < 8:
                    break
                pos += box_size
    except OSError:
        return []
    if not boxes or boxes[0] not in (b"ftyp", b"wide", b"free", b"skip", b"mdat", b"moov"):
        return []
    return boxes


def ts_truncation(path: str, container_name: str) -> str | None:
    """For an MPEG-TS file whose size is not a whole number of transport packets, a reason
    saying it was cut mid-packet (what a recording cut by power loss looks like)."""
    if container_name != "mpegts" and not path.lower().endswith(TS_SUFFIXES):
        return None
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    if size % TS_PACKET_BYTES and size % M2TS_PACKET_BYTES:
        return (f"truncated: the file ends inside a {TS_PACKET_BYTES}-byte transport packet "
                f"({size} bytes), the recording was cut off")
    return None


TS_TAIL_BYTES = 1 << 20        # bytes at the end of a transport stream searched for its last PES packet


def ts_last_pes_cut(path: str, pid: int) -> str | None:
    """For a transport stream of whole packets, a reason when the last PES packet of ``pid``
    (the video stream) is incomplete: shorter than its header's ``PES_packet_length``, or, for
    an unbounded video PES (length 0), ending in a packet whose payload fills it to the last
    byte. A muxer ends every PES packet with adaptation-field stuffing, so a full last packet
    means the recording was cut on a packet boundary (a PES that fits its packets exactly, about
    one in 184, is taken for cut too: it is reported, never hidden)."""
    try:
        size = os.path.getsize(path)
        unit = TS_PACKET_BYTES if size % TS_PACKET_BYTES == 0 else M2TS_PACKET_BYTES
        skip = unit - TS_PACKET_BYTES
        start = max(0, size - TS_TAIL_BYTES // unit * unit)
        with open(path, "rb") as f:
            f.seek(start)
            tail = f.read()
    except OSError:
        return None
    payloads: list[tuple[bool, bytes]] = []
    for offset in range(0, len(tail) - unit + 1, unit):
        packet = tail[offset + skip: offset + unit]
        if packet[0] != 0x47 or ((packet[1] & 0x1F) << 8 | packet[2]) != pid:
            continue
        control = (packet[3] >> 4) & 0x3
        body = 4 + (1 + packet[4] if control & 0x2 else 0)
        payload = packet[body:] if control & 0x1 else b""
        start_indicator = bool(packet[1] & 0x40)
        if start_indicator:
            payloads = []
        payloads.append((start_indicator, payload))
    if not payloads or not payloads[0][0]:
        return None
    pes = b"".join(p for _, p in payloads)
    if len(pes) < 6 or pes[:3] != b"\x00\x00\x01":
        return None
    declared = struct.unpack(">H", pes[4:6])[0]
    if declared and len(pes) < 6 + declared:
        return (f"truncated: the last video PES packet holds {len(pes) - 6} of its {declared} bytes, "
                "the recording was cut off")
    if not declared and len(payloads[-1][1]) == TS_PACKET_BYTES - 4:
        return ("truncated: the last video transport packet is full, without the stuffing that ends a "
                "PES packet, the recording was cut off")
    return None


def mp4_missing_bytes(path: str, stream: av.video.stream.VideoStream) -> int:
    """How many bytes of the samples the MP4 index lists lie past the end of the file (0 if none)."""
    try:
        end = max((entry.pos + entry.size for entry in stream.index_entries), default=0)
        return max(0, end - os.path.getsize(path))
    except (OSError, AttributeError):
        return 0


def stream_duration_s(stream: av.video.stream.VideoStream) -> float | None:
    """The stream's own duration in seconds: its header value, else Matroska's per-stream
    ``DURATION`` tag ("HH:MM:SS.nnnnnnnnn"); None if unknown."""
    if stream.duration is not None and stream.time_base is not None:
        return positive_float(stream.duration * stream.time_base)
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    if tag:
        try:
            hours, minutes, seconds = tag.strip().split(":")
            return positive_float(int(hours) * 3600 + int(minutes) * 60 + float(seconds))
        except ValueError:
            return None
    return None


def positive_float(value: Fraction | float | None) -> float | None:
    """``value`` as a float when it is finite and > 0, else None."""
    if value is None:
        return None
    value = float(value)
    return value if value > 0 and math.isfinite(value) else None


def count(n: int, noun: str) -> str:
    """``"1 frame"``, ``"2 frames"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def packet_time(packet: av.Packet) -> str:
    """The time of a packet, for an error message (``"12.040 s"``)."""
    if packet.size == 0:
        return "end of stream (decoder flush)"
    t = packet.pts if packet.pts is not None else packet.dts
    if t is None or packet.time_base is None:
        return "unknown time"
    return f"{float(t * packet.time_base):.3f} s"


def frame_time(frame: av.VideoFrame) -> str:
    """The time of a frame, for an error message."""
    return "unknown time" if frame.time is None else f"{frame.time:.3f} s"


def ffmpeg_message(err: Exception) -> str:
    """FFmpeg's error text without the errno prefix, e.g. "Invalid data found when processing input"."""
    text = getattr(err, "strerror", None) or str(err)
    return one_line(text)


def one_line(text: str) -> str:
    """``text`` on one line (whitespace runs collapsed), clipped to :data:`MAX_REASON_CHARS`."""
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
