"""Time ``m2a-pipe mine`` over thousands of synthetic video output folders and print its wall
time and peak RSS.

    python benchmarks/mine_scale.py [--videos 2000] [--events 3] [--top 50] [--keep DIR]

Each synthetic folder ``OUT/vehicle_VV/day_DD/clip_NNNNN/`` holds what mining reads: a tiny
``scores.h5`` (root attributes only: status complete, source, fps, size, n_frames, weights,
threshold, config and manifest columns), ``summary.json``, ``events.jsonl`` (``--events``
events with seeded random scores, durations and sizes), one small JPEG thumbnail per event and
a small ``timeline.png``. One folder in 100 is partial and one in 200 is a left-over temporary
folder, so the skip path is exercised too.

Mining runs in a child process, so its peak RSS is its own (not the generator's): the child
reports the RSS after its imports (``baseline``) and the peak after mining (``peak``).
``--videos`` takes several sizes (e.g. ``--videos 500 2000``) to show how memory scales. The
first line printed is the command line.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

VEHICLES = 40
DAYS = 5
THUMB_SIZE = (48, 32)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", THUMB_SIZE, colour).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (240, 240, 240)).save(buf, format="PNG")
    return buf.getvalue()


def generate(out: Path, n_videos: int, n_events: int, seed: int = 0) -> dict[str, int]:
    """Write ``n_videos`` synthetic output folders under ``out``; returns counts by kind."""
    rng = np.random.default_rng(seed)
    thumbs = [_jpeg(tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in range(16)]
    timeline = _png((300, 75))
    config = json.dumps({"instances": "components", "short_side": 512, "events": "tracks"})
    counts = {"complete": 0, "partial": 0, "temporary": 0, "events": 0}
    for i in range(n_videos):
        vehicle, day = f"vehicle_{i % VEHICLES:02d}", f"day_{(i // VEHICLES) % DAYS}"
        name = f"clip_{i:05d}"
        temporary = i % 200 == 199
        folder = out / vehicle / day / (f".{name}.partial-4242" if temporary else name)
        (folder / "thumbs").mkdir(parents=True)
        partial = i % 100 == 42
        status = "partial" if partial else "complete"
        fps, n_frames = 30.0, 1800
        events = []
        for k in range(1, n_events + 1):
            start = int(rng.integers(0, n_frames - 200))
            length = int(rng.integers(5, 200))
            peak = start + int(rng.integers(0, length))
            area = int(rng.integers(100, 200_000))
            x0, y0 = float(rng.integers(0, 1500)), float(rng.integers(0, 800))
            events.append({"event_id": k, "kind": "track", "track_id": k, "start_frame": start,
                           "end_frame": start + length - 1, "start_s": start / fps, "end_s": (start + length - 1) / fps,
                           "duration_s": length / fps, "n_frames": length, "peak_score": float(rng.random()),
                           "peak_frame": peak, "peak_s": peak / fps, "max_area_px": area,
                           "max_area_fraction": area / (1920 * 1080),
                           "bbox_at_peak": [x0, y0, x0 + 200.0, y0 + 150.0], "thumbnail": f"thumbs/event_{k:04d}.jpg"})
            (folder / "thumbs" / f"event_{k:04d}.jpg").write_bytes(thumbs[int(rng.integers(0, len(thumbs)))])
        (folder / "events.jsonl").write_text("".join(json.dumps(ev) + "\n" for ev in events))
        (folder / "summary.json").write_text(json.dumps({"status": status, "error": "", "frames": n_frames,
                                                         "events": len(events)}))
        (folder / "timeline.png").write_bytes(timeline)
        extra = {"vehicle": vehicle, "drive": f"{vehicle}-{day}"}
        with h5py.File(folder / "scores.h5", "w") as f:
            attrs = {"format_version": 1, "source": f"/fleet/{vehicle}/{day}/{name}.mp4",
                     "source_fingerprint": "size:1000:sha256:0", "fps": fps, "width": 1920, "height": 1080,
                     "n_frames": n_frames, "weights": "demo", "weights_sha256": "0" * 64, "threshold": 0.5,
                     "config": config, "status": status, "error": "truncated" if partial else "",
                     "extra": json.dumps(extra, sort_keys=True), **{f"extra_{k}": v for k, v in extra.items()}}
            for key, value in attrs.items():
                f.attrs[key] = value
            f.create_dataset("frames/score_p99", data=np.zeros(4, np.float32))
        kind = "temporary" if temporary else status
        counts[kind] += 1
        counts["events"] += 0 if temporary else len(events)
    return counts


def child(out: str, report: str, top: int) -> None:
    """Run mine in this process and print JSON figures (called by the parent)."""
    from m2a_pipe.mining import mine

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = mine(out, report, top=top)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sizes = {p.name: p.stat().st_size for p in Path(report).iterdir() if p.is_file()}
    print(json.dumps({"wall_s": wall, "baseline_rss_mib": baseline / 1024, "peak_rss_mib": peak / 1024,
                      "videos": result.videos, "skipped": result.skipped, "ranked": result.ranked,
                      "top": len(result.top), "report_bytes": sizes}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, nargs="+", default=[2000], help="folders to generate (several: one run each)")
    ap.add_argument("--events", type=int, default=3, help="events per video (default 3)")
    ap.add_argument("--top", type=int, default=50, help="top events in the report (default 50)")
    ap.add_argument("--keep", type=Path, default=None, help="generate here and keep it (default: a temp dir)")
    ap.add_argument("--child", nargs=2, metavar=("OUT", "REPORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.top)
        return
    print("command:", shlex.join(["python", *sys.argv]), flush=True)
    for n in args.videos:
        with tempfile.TemporaryDirectory(prefix="mine-scale-") as tmp:
            base = args.keep / f"n{n}" if args.keep else Path(tmp)
            out, report = base / "out", base / "report"
            t0 = time.perf_counter()
            counts = generate(out, n, args.events)
            gen_s = time.perf_counter() - t0
            proc = subprocess.run([sys.executable, __file__, "--child", str(out), str(report), "--top", str(args.top)],
                                  capture_output=True, text=True, check=True)
            fig = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{n} folders ({counts['complete']} complete, {counts['partial']} partial, "
                  f"{counts['temporary']} temporary; {counts['events']} events), generated in {gen_s:.1f} s")
            print(f"  mine: {fig['wall_s']:.2f} s wall ({1000 * fig['wall_s'] / n:.2f} ms a folder), "
                  f"peak RSS {fig['peak_rss_mib']:.1f} MiB (after imports {fig['baseline_rss_mib']:.1f} MiB, "
                  f"+{fig['peak_rss_mib'] - fig['baseline_rss_mib']:.1f} MiB mining)")
            print(f"  mined {fig['videos']} videos, skipped {fig['skipped']}, ranked {fig['ranked']} events, "
                  f"top {fig['top']}; report files: "
                  + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sorted(fig["report_bytes"].items())))


if __name__ == "__main__":
    main()
