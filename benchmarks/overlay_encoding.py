"""Time the overlay's H.264 encoding at each encoder preset and print CPU time, size and quality.

    python benchmarks/overlay_encoding.py VIDEO [--presets veryfast,superfast,lean,ultrafast]
        [--crf 23] [--size 768x384] [--frames 150] [--rounds 3]

The frames of VIDEO (an overlay.mp4 that ``process`` wrote is the most faithful input) are
decoded once, resized to ``--size``, and encoded by the project's VideoWriter (libx264 through
PyAV, one encoder thread, as ``process`` runs it beside a model on the CPU) once per preset and
round (libx264's presets, and the project's ``lean``: see ``OVERLAY_X264_PARAMS`` in
m2a_pipe/settings.py), the presets interleaved so that a changing load falls on all of them alike. Printed per
preset: the encoder's CPU time per frame (median, min-max over the rounds; the process's CPU
time, all threads, which other processes disturb little), the file size, and the PSNR of
the decoded result against the frames given (RGB, all frames). The first line printed is the
command line.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2a_pipe.io.video_writer import VideoWriter  # noqa: E402
from m2a_pipe.settings import OVERLAY_PRESETS  # noqa: E402


def read_frames(path: Path, size: tuple[int, int], limit: int) -> list[np.ndarray]:
    """Up to ``limit`` RGB frames of ``path`` resized to ``size`` (width, height)."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray())
            if len(frames) == limit:
                break
    if not frames:
        raise SystemExit(f"overlay_encoding.py: error: {path}: no frames decoded")
    return frames


def encode(frames: list[np.ndarray], path: Path, preset: str, crf: int) -> float:
    """Encode ``frames`` at 10 fps; returns the process CPU seconds per frame (all threads)."""
    height, width = frames[0].shape[:2]
    start = time.process_time()
    with VideoWriter(path, width, height, 10.0, crf=crf, preset=preset, threads=1) as writer:
        for i, image in enumerate(frames):
            writer.write(image, i / 10.0)
    return (time.process_time() - start) / len(frames)


def psnr(frames: list[np.ndarray], path: Path) -> float:
    """PSNR in dB of the decoded ``path`` against ``frames`` (RGB, 8 bits, all frames pooled)."""
    squared, count = 0.0, 0
    with av.open(str(path)) as container:
        for original, frame in zip(frames, container.decode(video=0)):
            decoded = frame.to_ndarray(format="rgb24").astype(np.float64)
            squared += float(((decoded - original) ** 2).sum())
            count += decoded.size
    mse = squared / max(count, 1)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be even and >= 16")
    return width, height


def parse_presets(text: str) -> list[str]:
    presets = [p for p in text.split(",") if p]
    unknown = [p for p in presets if p not in OVERLAY_PRESETS]
    if unknown or not presets:
        raise argparse.ArgumentTypeError(f"unknown preset(s) {unknown}; known: {', '.join(OVERLAY_PRESETS)}")
    return presets


def main() -> None:
    parser = argparse.ArgumentParser(prog="overlay_encoding.py", description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, help="Frames to encode (an overlay.mp4 is the most faithful).")
    parser.add_argument("--presets", type=parse_presets, default=["veryfast", "superfast", "lean", "ultrafast"],
                        help="Comma-separated encoder presets.  [default: veryfast,superfast,lean,ultrafast]")
    parser.add_argument("--crf", type=int, default=23, help="Constant rate factor.  [default: 23]")
    parser.add_argument("--size", type=parse_size, default=(768, 384),
                        help="WIDTHxHEIGHT of the encoded frames.  [default: 768x384, the demo's overlay]")
    parser.add_argument("--frames", type=int, default=150, help="Frames to encode, at most.  [default: 150]")
    parser.add_argument("--rounds", type=int, default=3, help="Encodings per preset, interleaved.  [default: 3]")
    args = parser.parse_args()
    if not args.video.is_file():
        parser.error(f"{args.video}: no such file")
    print("command: python benchmarks/overlay_encoding.py " + shlex.join(sys.argv[1:]), flush=True)
    frames = read_frames(args.video, args.size, args.frames)
    print(f"{len(frames)} frames {args.size[0]}x{args.size[1]} from {args.video.name}, crf {args.crf}, "
          f"1 encoder thread, {args.rounds} rounds", flush=True)
    times: dict[str, list[float]] = {p: [] for p in args.presets}
    with tempfile.TemporaryDirectory(prefix="overlay-encoding-") as tmp:
        for _ in range(args.rounds):
            for preset in args.presets:
                times[preset].append(encode(frames, Path(tmp) / f"{preset}.mp4", preset, args.crf))
        print(f"{'preset':10s} {'CPU ms/frame (min-max)':>24s} {'size kB':>9s} {'PSNR dB':>8s}")
        for preset, values in times.items():
            path = Path(tmp) / f"{preset}.mp4"
            ms = [v * 1000 for v in values]
            print(f"{preset:10s} {statistics.median(ms):9.2f} ({min(ms):.2f}-{max(ms):.2f}){'':4s} "
                  f"{path.stat().st_size / 1000:9.1f} {psnr(frames, path):8.2f}")


if __name__ == "__main__":
    main()
