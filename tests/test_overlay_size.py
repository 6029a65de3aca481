"""`--overlay-size source`: overlay.mp4 at the video's own size; nothing else changes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import h5py
import numpy as np
from conftest import assert_error_line, run_cli

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402


def video_size(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames[0].shape[1], frames[0].shape[0], len(frames)


def test_overlay_at_the_input_or_the_source_size(weights, tmp_path):
    clip = vf.make_video(tmp_path / "drive.mp4", n=6, size=(160, 96), fps=10)
    runs = {}
    for size in ("input", "source"):
        out = tmp_path / size
        result = run_cli("process", clip, "-o", out, "-w", weights, "--short-side", "48", "--overlay-size", size, "-q")
        assert result.exit_code == 0, result.output
        runs[size] = out / "drive.m2a"
    assert video_size(runs["input"] / "overlay.mp4") == (80, 48, 6)  # the network input: short side 48
    assert video_size(runs["source"] / "overlay.mp4") == (160, 96, 6)
    with h5py.File(runs["input"] / "scores.h5", "r") as a, h5py.File(runs["source"] / "scores.h5", "r") as b:
        np.testing.assert_array_equal(a["maps/anomaly"][:], b["maps/anomaly"][:])
        assert a.attrs["width"] == b.attrs["width"] == 160
    assert (runs["input"] / "events.jsonl").read_text() == (runs["source"] / "events.jsonl").read_text()
    assert_error_line(run_cli("process", clip, "-o", tmp_path / "x", "--overlay-size", "huge"),
                      "'huge' is not one of 'input', 'source'", exit_code=2)


def x264_options(path: Path) -> str:
    """The encoder settings libx264 writes into its stream (an SEI message)."""
    data = path.read_bytes()
    start = data.index(b"options: ")
    return data[start:data.index(b"\x00", start)].decode("ascii", "replace")


def test_overlay_preset_reaches_the_encoder(weights, tmp_path):
    """`--overlay-preset`: the encoder runs the preset asked (its settings are in the stream:
    ultrafast turns CABAC, B-frames, deblocking and the 8x8 transform off; the default lean keeps
    ultrafast's search without subpixel refinement and puts those four back; superfast refines
    at subpixel level 1) and the config in scores.h5 records it; an unknown preset is a usage error."""
    clip = vf.make_video(tmp_path / "drive.mp4", n=4, size=(96, 64), fps=10)
    seen = {}
    for preset in ("ultrafast", None, "superfast"):
        out = tmp_path / str(preset)
        extra = ["--overlay-preset", preset] if preset else []
        result = run_cli("process", clip, "-o", out, "-w", weights, "--short-side", "32", "-q", *extra)
        assert result.exit_code == 0, result.output
        seen[preset] = x264_options(out / "drive.m2a" / "overlay.mp4").split()
        with h5py.File(out / "drive.m2a" / "scores.h5", "r") as f:
            assert json.loads(f.attrs["config"])["overlay_preset"] == (preset or "lean")
    tools = ("cabac=1", "bframes=3", "8x8dct=1")
    assert not set(tools) & set(seen["ultrafast"]) and "deblock=0:0:0" in seen["ultrafast"]
    assert set(tools) <= set(seen[None]) and "deblock=1:0:0" in seen[None] and "subme=0" in seen[None]
    assert set(tools) <= set(seen["superfast"]) and "subme=1" in seen["superfast"]
    assert_error_line(run_cli("process", clip, "-o", tmp_path / "x", "--overlay-preset", "quick"),
                      "'quick' is not one of", exit_code=2)
