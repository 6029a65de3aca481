"""``m2a-pipe bench``: the model alone and the whole pipeline. Parses and delegates to
:mod:`m2a_pipe.bench.model` and :mod:`m2a_pipe.bench.pipeline`."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    """WIDTHxHEIGHT (every command's size notation) -> (height, width)."""
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT (e.g. 1024x512)") from None
    if h <= 0 or w <= 0:
        raise click.BadParameter(f"{value!r}: sizes must be positive")
    return h, w


@click.group()
def bench() -> None:
    """Benchmarks that print figures (latency, throughput, memory).

    \b
    Example:
      m2a-pipe bench model --preset cityscapes-r50 --size 1024x512 --threads 2
      m2a-pipe bench pipeline examples/drive.mp4
    """


@bench.command("model")
@click.option("--preset", "preset_name", default="cityscapes-r50", show_default=True,
              help="Model preset (random weights: speed does not depend on their values).")
@click.option("--size", default="1024x512", show_default=True, metavar="WIDTHxHEIGHT", callback=_size,
              help="Network input size.")
@click.option("--device", default="cpu", show_default=True,
              help="auto, cpu, cuda or cuda:N (cpu unless asked, so that a figure says what it measured).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Frames per forward pass.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads.  [default: torch's]")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0),
              help="Untimed passes before the timed ones.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed passes; the median is reported.")
@click.option("--baseline", is_flag=True, help="Run as the official code does, for comparison.")
@click.option("--amp", is_flag=True, help="bfloat16 autocast (CUDA).")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Also write the figures as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench_model_cmd(preset_name: str, size: tuple[int, int], device: str, batch: int, threads: int | None,
                    warmup: int, repeats: int, baseline: bool, amp: bool, json_path: str | None,
                    quiet: bool) -> None:
    """Per-frame latency by stage and peak memory of forward + semantic inference.

    \b
    Example:
      m2a-pipe bench model --preset cityscapes-r50 --size 1024x512 --threads 2
    """
    from m2a_pipe.bench.model import bench_model
    from m2a_pipe.config import preset
    from m2a_pipe.inference.device import resolve_device

    height, width = size
    device = str(resolve_device(device))
    cfg = preset(preset_name)
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    result = bench_model(cfg, preset=preset_name, height=height, width=width, device=device,
                         batch=batch, warmup=warmup, repeats=repeats, threads=threads,
                         baseline=baseline, amp=amp, progress=progress)
    click.echo(result.format())
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_dict(), indent=1) + "\n")


@bench.command("pipeline")
@click.argument("video", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("-w", "--weights", default="demo", show_default=True, metavar="NAME|PATH",
              help="Registry name or weights file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Frames per batch.  [default: 1 on CPU, 8 on CUDA]")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads.  [default: torch's]")
@click.option("--short-side", type=click.IntRange(min=32), help="Network input short side.")
@click.option("--stride", type=click.IntRange(min=1), help="Process every N-th frame.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Also write the figures to FILE.")
def bench_pipeline_cmd(video: str | None, json_path: str | None, **options) -> None:
    """decode_fps, model_fps, end_to_end_fps, efficiency and peak_rss_mb on VIDEO (JSON)
    [default: examples/drive.mp4].

    \b
    Example:
      m2a-pipe bench pipeline examples/drive.mp4 --threads 2 --json bench.json
    """
    from m2a_pipe.bench.pipeline import DEFAULT_VIDEO, bench_pipeline
    from m2a_pipe.pipeline.config import ProcessConfig, ProcessError

    path = Path(video) if video else DEFAULT_VIDEO
    if not path.is_file():
        raise ProcessError(f"{path}: no such video (give VIDEO)")
    result = bench_pipeline(path, ProcessConfig().updated(**options))
    click.echo(result.to_json())
    if json_path:
        Path(json_path).write_text(result.to_json() + "\n")
