"""Throughput of the Ray runner with 1, 2, ... CPU workers against the local runner, on the
same videos, and the Ray runner's overhead against the local runner at equal model threads.

    python benchmarks/ray_scaling.py VIDEO_OR_FOLDER... [--weights demo] [--workers 1 2]
                                     [--cpus 2] [--local-threads 1 2] [--batch-size 1]
                                     [--short-side PX]

Every configuration processes every input from scratch (``overwrite``) into a temporary
folder and prints frames, wall seconds and frames per second:

* ``local T``: the local runner with T torch threads (reader, model, writer threads);
* ``ray W``: ``ray.init(num_cpus=--cpus)`` once, then the Ray runner with W workers of one
  CPU and one torch thread each, one job per worker. The wall time includes starting the
  pool (weights through the object store, one model built per worker), not starting Ray;
  the pool start is also printed on its own (a run over a single frame).

The overhead line compares ``ray 1`` with ``local 1``: both run the model on one thread,
both decode and write beside it, so the difference is what Ray adds (pool start, moving
frames and maps through the object store, scheduling).

The first line printed is the command line.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from m2a_pipe.pipeline.config import RayConfig
from m2a_pipe.pipeline.process import process


def _run(inputs: list[str], out: Path, ray: RayConfig | None, **options) -> tuple[int, float]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = process(inputs, out, ray=ray, quiet=True, overwrite=True, **options)
    wall = time.perf_counter() - started
    if summary.exit_code != 0:
        raise SystemExit(summary.table())
    return sum(v.frames for v in summary.videos), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="videos, folders, globs or manifests")
    parser.add_argument("--weights", default="demo", help="weights name or file [demo]")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray workers, one run each [1 2]")
    parser.add_argument("--local-threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads of the local runner, one run each [1 2]")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance [2]")
    parser.add_argument("--batch-size", type=int, default=1, help="frames a model batch [1]")
    parser.add_argument("--short-side", type=int, help="network input short side [the weights' test size]")
    args = parser.parse_args()
    print("command:", shlex.join(["python", *sys.argv]), flush=True)

    import ray

    options = dict(weights=args.weights, batch_size=args.batch_size, short_side=args.short_side)
    rows: dict[str, tuple[int, float]] = {}
    start_s = 0.0
    with tempfile.TemporaryDirectory(prefix="m2a-ray-bench-") as tmp:
        tmp_path = Path(tmp)
        for threads in args.local_threads:
            rows[f"local {threads}"] = _run(args.inputs, tmp_path / "local", None, threads=threads, **options)
            print(_line(f"local {threads}", *rows[f"local {threads}"]), flush=True)
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            first = _first_frame_clip(args.inputs, tmp_path)
            _, start_s = _run([str(first)], tmp_path / "start", RayConfig(workers=max(args.workers)), **options)
            print(f"pool start and one frame, {max(args.workers)} worker(s): {start_s:.2f} s", flush=True)
            for workers in args.workers:
                ray_config = RayConfig(workers=workers, cpus_per_worker=1, jobs=workers)
                rows[f"ray {workers}"] = _run(args.inputs, tmp_path / "ray", ray_config, **options)
                frames, wall = rows[f"ray {workers}"]
                print(_line(f"ray {workers}", frames, wall) + f"  ({frames / (wall - start_s):.2f} fps without "
                      f"the pool start)", flush=True)
        finally:
            ray.shutdown()
    if "ray 1" in rows:
        base = rows["ray 1"][0] / rows["ray 1"][1]
        for name, (frames, wall) in rows.items():
            if name.startswith("ray "):
                print(f"{name}: speed-up over ray 1 = {frames / wall / base:.2f}")
    if "ray 1" in rows and "local 1" in rows:
        overhead = rows["ray 1"][1] / rows["local 1"][1] - 1
        steady = (rows["ray 1"][1] - start_s) / rows["local 1"][1] - 1
        print(f"overhead of the Ray runner against the local runner, one model thread: {100 * overhead:+.1f} % "
              f"({100 * steady:+.1f} % without the pool start)")


def _line(name: str, frames: int, wall: float) -> str:
    return f"{name:8s} {frames:5d} frames {wall:7.2f} s {frames / wall:6.2f} fps"


def _first_frame_clip(inputs: list[str], tmp: Path) -> Path:
    """A one-frame copy of the first input video (its pool start costs as much as any)."""
    from m2a_pipe.io.inputs import discover
    from m2a_pipe.io.video_reader import VideoReader
    from m2a_pipe.io.video_writer import VideoWriter

    source = discover(inputs)[0].source
    with VideoReader(source) as reader:
        frame = next(iter(reader))
        fps = reader.info.fps or 10.0
    path = tmp / "one.mp4"
    writer = VideoWriter(path, frame.image.shape[1], frame.image.shape[0], fps)
    writer.write(frame.image, 0.0)
    writer.close()
    return path


if __name__ == "__main__":
    main()
