"""``m2a-pipe bench``: the model alone and the whole pipeline. Parses and delegates to
:mod:`m2a_pipe.bench.model` and :mod:`m2a_pipe.bench.pipeline`."""

from __future__ import annotations

import json
import shlex
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


def _precisions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from m2a_pipe.settings import PRECISIONS

    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in PRECISIONS]
    if bad or not names:
        raise click.BadParameter(f"{value!r}: give one or more of {', '.join(PRECISIONS)}, comma-separated")
    return names


def _command_line() -> str:
    """The running command with every option that was given (for the JSON, so that a figure
    can be re-measured): ``m2a-pipe bench NAME --option value ...``."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    parts = ["m2a-pipe", "bench", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if ctx.get_parameter_source(param.name) is ParameterSource.DEFAULT or value is None:
            continue
        if param.name == "size":  # (height, width) back to WIDTHxHEIGHT
            value = f"{value[1]}x{value[0]}"
        elif isinstance(value, tuple):
            value = ",".join(value)
        if isinstance(param, click.Argument):
            parts.append(shlex.quote(str(value)))
        elif getattr(param, "is_flag", False) and isinstance(value, bool):
            parts.append(param.opts[-1] if value else param.secondary_opts[-1])
        else:
            parts += [param.opts[-1], shlex.quote(str(value))]
    return " ".join(parts)


def _write_json(json_path: str, payload: dict) -> None:
    """``-`` prints ``payload`` to stdout, anything else writes it to that file."""
    text = json.dumps(payload, indent=1)
    if json_path == "-":
        click.echo(text)
    else:
        Path(json_path).write_text(text + "\n")


@bench.command("model")
@click.option("--preset", "preset_name", default="cityscapes-r50", show_default=True,
              help="Model preset (random weights: speed does not depend on their values).")
@click.option("--size", default="1024x512", show_default=True, metavar="WIDTHxHEIGHT", callback=_size,
              help="Network input size.")
@click.option("--device", default="cpu", show_default=True,
              help="auto, cpu, cuda or cuda:N (cpu unless asked, so that a figure says what it measured).")
@click.option("--precision", "precisions", default="auto", show_default=True, callback=_precisions,
              metavar="P[,P...]", help="auto, fp32, bf16 or fp16; several (e.g. fp32,bf16) are timed "
                                        "interleaved in one process and their speed ratios printed.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Frames per forward pass.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads.  [default: torch's]")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0),
              help="Untimed passes before the timed ones.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed passes; the median is reported.")
@click.option("--unoptimised", is_flag=True,
              help="The same network without this project's optimisations (float32; not the official code).")
@click.option("--json", "json_path", default=None, is_flag=False, flag_value="-", metavar="[FILE]",
              help="The figures as JSON: to FILE, or to stdout (instead of the table) with no FILE.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench_model_cmd(preset_name: str, size: tuple[int, int], device: str, precisions: tuple[str, ...],
                    batch: int, threads: int | None, warmup: int, repeats: int, unoptimised: bool,
                    json_path: str | None, quiet: bool) -> None:
    """Per-frame latency by stage and peak memory of forward + semantic inference.

    \b
    Example:
      m2a-pipe bench model --preset cityscapes-r50 --size 1024x512 --threads 2 --precision fp32,bf16
    """
    from m2a_pipe.bench.model import bench_model, machine_info, speed_ratios
    from m2a_pipe.config import preset
    from m2a_pipe.inference.device import resolve_device

    height, width = size
    device = str(resolve_device(device))
    cfg = preset(preset_name)
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    if threads:
        import torch

        torch.set_num_threads(threads)
    before = machine_info()
    results = bench_model(cfg, preset=preset_name, height=height, width=width, device=device,
                          batch=batch, warmup=warmup, repeats=repeats, threads=threads,
                          unoptimised=unoptimised, precisions=precisions, progress=progress)
    ratios, cpu_ratios = speed_ratios(results), speed_ratios(results, cpu=True)
    if json_path != "-":
        click.echo("\n".join(r.format() for r in results))
        for name, ratio in ratios.items():
            click.echo(f"speed-up {name}: {ratio:.2f}x wall time, {cpu_ratios[name]:.2f}x CPU time "
                       "(medians of the paired runs)")
    if json_path:
        _write_json(json_path, {"command": _command_line(), "machine": before,
                                "load_average_after": machine_info()["load_average"],
                                "results": [r.to_dict() for r in results], "speed_ratios": ratios,
                                "cpu_time_speed_ratios": cpu_ratios})


@bench.command("pipeline")
@click.argument("video", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("-w", "--weights", default="demo", show_default=True, metavar="NAME|PATH",
              help="Registry name or weights file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Frames per batch.  [default: 1 on CPU, 8 on CUDA]")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads.  [default: torch's]")
@click.option("--short-side", type=click.IntRange(min=32), help="Network input short side.")
@click.option("--stride", type=click.IntRange(min=1), help="Process every N-th frame.")
@click.option("--precision", "precisions", default="auto", show_default=True, callback=_precisions,
              metavar="P[,P...]", help="auto, fp32, bf16 or fp16; several (e.g. fp32,auto) are measured "
                                        "alternately in one process, --rounds times each.")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Measurements of each precision (alternating); the figures are their medians.")
@click.option("--json", "json_path", default=None, is_flag=False, flag_value="-", metavar="[FILE]",
              help="Also write the figures to FILE (with no FILE: stdout only, as always).")
def bench_pipeline_cmd(video: str | None, json_path: str | None, precisions: tuple[str, ...], rounds: int,
                       **options) -> None:
    """decode_fps, model_fps, end_to_end_fps, efficiency and peak_rss_mb on VIDEO (JSON)
    [default: examples/drive.mp4], with the command and the machine (CPU, load average).

    \b
    Example:
      m2a-pipe bench pipeline examples/drive.mp4 --threads 2 --precision fp32,auto --json bench.json
    """
    from m2a_pipe.bench.model import machine_info
    from m2a_pipe.bench.pipeline import DEFAULT_VIDEO, bench_pipeline, summarise
    from m2a_pipe.pipeline.config import ProcessConfig, ProcessError

    path = Path(video) if video else DEFAULT_VIDEO
    if not path.is_file():
        raise ProcessError(f"{path}: no such video (give VIDEO)")
    if options.get("threads"):
        import torch

        torch.set_num_threads(options["threads"])
    before = machine_info()
    runs = [[bench_pipeline(path, ProcessConfig().updated(precision=p, **options)) for p in precisions]
            for _ in range(rounds)]
    payload = {"command": _command_line(), "machine": before,
               "load_average_after": machine_info()["load_average"], **summarise(runs)}
    click.echo(json.dumps(payload, indent=1))
    if json_path and json_path != "-":
        Path(json_path).write_text(json.dumps(payload, indent=1) + "\n")
