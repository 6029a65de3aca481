"""``m2a-pipe process``: parse the options into a ProcessConfig and call :func:`m2a_pipe.pipeline.process.process`.

Every option maps to one :class:`~m2a_pipe.pipeline.config.ProcessConfig` field; ``--config
FILE`` supplies defaults (JSON), options given on the command line win.
"""

from __future__ import annotations

import json
import sys

import click

from m2a_pipe.pipeline.config import ProcessConfig
from m2a_pipe.settings import (
    DEFAULT_MIN_HITS,
    DEFAULT_OVERLAY_PRESET,
    EVENT_MODES,
    INSTANCE_MODES,
    MAP_STRIDES,
    OVERLAY_PRESETS,
    OVERLAY_SIZES,
    PRECISIONS,
    SCORE_NAMES,
)


@click.command("process")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output root OUT.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON file of ProcessConfig defaults.")
@click.option("-w", "--weights", metavar="NAME|PATH", help="Registry name or weights file.  [default: demo]")
@click.option("--device", help="auto, cpu, cuda or cuda:N.  [default: auto]")
@click.option("--batch-size", type=int, help="Frames per model batch.  [default: 1 on CPU, 8 on CUDA]")
@click.option("--short-side", type=int, help="Network input short side.  [default: the weights' test size]")
@click.option("--score", type=click.Choice(SCORE_NAMES), help="Anomaly score.  [default: official: Eq. 5 + Eq. 13]")
@click.option("--refine/--no-refine", default=None, help="Eq. 13 refinement of the official score.  [default: on]")
@click.option("--flip/--no-flip", default=None,
              help="Horizontal-flip test-time averaging: twice the model time for a little accuracy (evaluate "
                   "turns it on, as the official evaluation).  [default: off]")
@click.option("--map-stride", type=click.Choice([str(s) for s in MAP_STRIDES]),
              help="Maps at 1/N of the network input.  [default: 4]")
@click.option("--threads", type=int, help="Torch CPU threads.  [default: torch default]")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Network precision: auto = fp16 on CUDA, bf16 on a CPU with bf16 instructions, else fp32.  "
                   "[default: auto]")
@click.option("--sample-fps", type=float, help="Process frames at this rate (evenly in time).")
@click.option("--stride", type=int, help="Process every N-th frame.  [default: 1]")
@click.option("--max-decode-errors", type=int,
              help="Consecutive decode errors that declare a file broken.  [default: 25]")
@click.option("--threshold", type=float, help="Anomalous-pixel threshold.  [default: the weights' metadata, else 0.5]")
@click.option("--min-area-fraction", type=float, help="Smallest instance, fraction of the frame.  [default: 0.0005]")
@click.option("--instances", type=click.Choice(INSTANCE_MODES),
              help="Instances: components of the thresholded map, or open-set panoptic unknowns.  "
                   "[default: components]")
@click.option("--min-hits", type=int,
              help=f"Consecutive detections that confirm a track.  [default: {DEFAULT_MIN_HITS}]")
@click.option("--max-misses", type=int, help="Missed frames before a track ends.  [default: 5]")
@click.option("--events", "event_mode", type=click.Choice(EVENT_MODES), help="Events from tracks or frame runs.")
@click.option("--event-min-duration", "event_min_duration_s", type=float,
              help="Shortest event, seconds.  [default: 0.5]")
@click.option("--event-min-score", type=float, help="Smallest peak score of an event.  [default: the threshold]")
@click.option("--overlay/--no-overlay", default=None, help="Write overlay.mp4.  [default: on]")
@click.option("--overlay-size", type=click.Choice(OVERLAY_SIZES),
              help="overlay.mp4 at the network input size or at the video's own size.  [default: input]")
@click.option("--overlay-crf", type=int, help="H.264 quality of the overlay (0-51, lower = better).  [default: 23]")
@click.option("--overlay-preset", type=click.Choice(OVERLAY_PRESETS),
              help="Encoder preset of the overlay: lean (the project's: ultrafast's search with CABAC, "
                   "B-frames, deblocking and the 8x8 transform) or a libx264 preset (faster = more CPU left "
                   f"to the model, larger file).  [default: {DEFAULT_OVERLAY_PRESET}]")
@click.option("--overlay-threads", type=int,
              help="H.264 encoder threads, 0 = automatic (1 when the model runs on the CPU).  [default: 0]")
@click.option("--save-maps/--no-save-maps", default=None, help="Store /maps/anomaly in scores.h5.  [default: on]")
@click.option("--save-semantic/--no-save-semantic", default=None, help="Store /maps/semantic.  [default: off]")
@click.option("--overwrite", is_flag=True, default=None, help="Redo videos whose outputs are complete.")
@click.option("--queue-size", type=int, help="Frames held between threads, per queue.  [default: 8]")
@click.option("--ray", "use_ray", is_flag=True, help="Run on Ray: a pool of inference workers, one job per video.")
@click.option("--address", "ray_address",
              help="With --ray: 'auto' or HOST:PORT joins a running cluster.  [default: start a local one]")
@click.option("--workers", "ray_workers", type=int,
              help="With --ray: inference workers.  [default: one per GPU, else per CPU]")
@click.option("--gpus-per-worker", "ray_gpus_per_worker", type=float,
              help="With --ray: GPUs per worker.  [default: 1 when the cluster has GPUs, else 0]")
@click.option("--cpus-per-worker", "ray_cpus_per_worker", type=float,
              help="With --ray: CPUs per worker, also its torch threads on the CPU.  [default: 1]")
@click.option("--jobs", "ray_jobs", type=int, help="With --ray: videos in progress at once.  [default: the workers]")
@click.option("--in-flight", "ray_in_flight", type=int,
              help="With --ray: batches a video keeps on the pool.  [default: 2 per worker over the running videos]")
@click.option("--cpus-per-job", "ray_cpus_per_job", type=float,
              help="With --ray: CPUs a video job reserves for decoding and writing.  [default: 0]")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the summary as JSON.")
def process_cmd(inputs, output, config_file, quiet, json_path, use_ray, **options):
    """Process dashcam videos: overlay.mp4, scores.h5, tracks.csv, events.jsonl per video.

    INPUTS are video files, folders (searched recursively), globs, or manifests (.txt/.lst:
    one path per line; .csv: a 'path' column plus columns carried into the outputs).
    Outputs mirror the input tree under OUTPUT; the inputs that failed are listed in
    OUTPUT/failures.jsonl. Exit code 0 only when every input is complete.
    With --ray, a pool of inference workers (one model replica each) serves one job per
    video, locally or on a cluster; the outputs are the same as without.

    \b
    Example:
      m2a-pipe process examples/drive.mp4 -o out
      m2a-pipe process /fleet/2026-11-27/ -o out --weights cityscapes-r50 --sample-fps 5
    """
    from m2a_pipe.pipeline.config import RayConfig
    from m2a_pipe.pipeline.process import process

    ray_options = {name[4:]: options.pop(name) for name in list(options) if name.startswith("ray_")}
    given = [name for name, value in ray_options.items() if value is not None]
    if given and not use_ray:
        raise click.UsageError(f"--{given[0].replace('_', '-')} needs --ray")

    if options.get("map_stride") is not None:
        options["map_stride"] = int(options["map_stride"])
    base = ProcessConfig.from_file(config_file) if config_file else ProcessConfig()
    config = base.updated(**options)
    ray_config = RayConfig().updated(**ray_options) if use_ray else None
    if json_path:
        _check_writable(json_path)
    summary = process(list(inputs), output, config, ray=ray_config, quiet=quiet,
                      log=lambda msg: click.echo(f"m2a-pipe: {msg}", err=True))
    click.echo(summary.table())
    if json_path:
        from m2a_pipe.io.layout import written_atomically

        try:
            with written_atomically(json_path) as tmp, open(tmp, "w") as f:
                json.dump({"output": summary.output, "seconds": round(summary.seconds, 3),
                           "exit_code": summary.exit_code, "videos": [v.to_dict() for v in summary.videos]},
                          f, indent=1)
        except OSError as err:
            raise click.FileError(json_path, f"cannot write the summary ({err.strerror or err}); "
                                             "the outputs are written") from None
    sys.exit(summary.exit_code)


def _check_writable(path: str) -> None:
    """Refuse, before anything runs, a ``--json`` file that cannot be written."""
    import os

    from m2a_pipe.errors import UsageError
    from m2a_pipe.io.layout import temporary_file

    if os.path.isdir(path):
        raise UsageError(f"--json {path}: is a folder")
    probe = temporary_file(path)
    try:
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"--json {path}: cannot write the file ({err.strerror or err})") from None
