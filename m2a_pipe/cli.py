"""The ``m2a-pipe`` command line. It only parses and delegates."""

from __future__ import annotations

import json
from pathlib import Path

import click

from m2a_pipe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="m2a-pipe")
def cli() -> None:
    """Mask2Anomaly over dashcam video: anomaly heatmaps, scores, tracks and events."""


# -- weights -------------------------------------------------------------------------

_MAX_KEYS_PER_KIND = 8


def _fail(err: Exception) -> click.ClickException:
    """One clear error line (a key mismatch adds at most a few lines naming the keys)."""
    from m2a_pipe.model.checkpoint import StateDictMismatch

    if isinstance(err, StateDictMismatch):
        return click.ClickException("\n".join([err.summary, *err.details(_MAX_KEYS_PER_KIND)]))
    text = str(err).strip()
    return click.ClickException(text.splitlines()[0] if text else type(err).__name__)


def _user_errors() -> tuple[type[Exception], ...]:
    from m2a_pipe.config import ConfigError
    from m2a_pipe.model.checkpoint import CheckpointError
    from m2a_pipe.model.registry import WeightsError

    return (CheckpointError, WeightsError, ConfigError, OSError)


def _class_names(value: str | None) -> tuple[str, ...] | None:
    """``A,B,C`` or a file with one name per line."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines()]
    else:
        names = [part.strip() for part in value.split(",")]
    return tuple(name for name in names if name)


@cli.group()
def weights() -> None:
    """Known weights: list, inspect, convert official checkpoints, edit metadata, verify sha256."""


@weights.command("list")
def weights_list() -> None:
    """Registered weights: name, file, present?, sha256 prefix, description."""
    from m2a_pipe.model import registry

    rows = [("NAME", "FILE", "PRESENT", "SHA256", "DESCRIPTION")]
    for entry in registry.list_entries():
        digest = entry.sha256[:12] if entry.sha256 else "(not built)"
        rows.append((entry.name, str(entry.path), "yes" if entry.present else "no", digest, entry.description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[4]]).rstrip())


@weights.command("info")
@click.argument("weights_ref", metavar="NAME|PATH")
@click.option("--config", "config_spec", metavar="CONFIG",
              help="Preset or config JSON for .pth/.pkl files, which carry no config.")
def weights_info(weights_ref: str, config_spec: str | None) -> None:
    """Config summary, metadata, parameter count and sha256 of a weights file."""
    from m2a_pipe.model import registry

    try:
        cfg = registry.resolve_config(config_spec) if config_spec else None
        info = registry.describe(weights_ref, cfg)
    except _user_errors() as err:
        raise _fail(err) from None
    click.echo(f"file        {info['path']}")
    if info["name"]:
        click.echo(f"name        {info['name']}")
    click.echo(f"format      {info['format']}")
    click.echo(f"size        {info['size_bytes']:,} bytes")
    click.echo(f"sha256      {info['sha256']}")
    if info["registered_sha256"]:
        ok = "matches" if info["registered_sha256"] == info["sha256"] else "DIFFERS FROM"
        click.echo(f"registered  {ok} the registered sha256")
    click.echo(f"tensors     {info['num_tensors']} ({info['num_elements']:,} elements)")
    cfg = info["config"]
    if cfg is None:
        click.echo("config      none stored (pass --config for a summary and parameter count)")
    else:
        bb, pd, dec = cfg.backbone, cfg.pixel_decoder, cfg.decoder
        click.echo(f"parameters  {info['num_parameters']:,}")
        click.echo(f"backbone    ResNet-{bb.depth} (norm {bb.norm}, res2 {bb.res2_out_channels} channels)")
        click.echo(f"pixel dec.  conv_dim {pd.conv_dim}, mask_dim {pd.mask_dim}, "
                   f"{pd.enc_layers} encoder layers, {pd.nheads} heads")
        click.echo(f"decoder     hidden_dim {dec.hidden_dim}, {dec.num_queries} queries, "
                   f"{dec.num_layers} layers (dec_layers {dec.dec_layers}), {dec.nheads} heads, "
                   f"ffn {dec.dim_feedforward}, attention {dec.attention}")
        click.echo(f"classes     {cfg.num_classes}: {', '.join(cfg.class_names)}")
        click.echo(f"thing ids   {list(cfg.thing_ids)}")
    for key, value in sorted(info["metadata"].items()):
        click.echo(f"meta.{key}  {json.dumps(value, sort_keys=True)}")


@weights.command("convert")
@click.argument("src", metavar="SRC.pth|SRC.pkl")
@click.option("--config", "config_spec", required=True, metavar="CONFIG",
              help="Preset name, reference config.json, or JSON of ModelConfig.to_dict.")
@click.option("-o", "--output", required=True, metavar="OUT.safetensors",
              help="The safetensors file to write.")
@click.option("--class-names", default=None, metavar="A,B,...|FILE",
              help="Class names (comma-separated, or a file with one per line); same count as the config.")
def weights_convert(src: str, config_spec: str, output: str, class_names: str | None) -> None:
    """Load an official checkpoint strictly and save it as safetensors with its config."""
    from m2a_pipe.model import checkpoint, registry

    try:
        cfg = registry.resolve_config(config_spec, class_names=_class_names(class_names))
        path = checkpoint.convert_checkpoint(src, cfg, output)
        digest = checkpoint.sha256_file(path)
    except _user_errors() as err:
        raise _fail(err) from None
    click.echo(f"wrote {path}")
    click.echo(f"sha256 {digest}")


def _meta_entry(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw  # a bare word is a string
    return out


@weights.command("set")
@click.argument("weights_ref", metavar="NAME|PATH")
@click.option("-o", "--output", required=True, metavar="OUT.safetensors",
              help="The file to write (may be the input: it is replaced atomically).")
@click.option("--test-size", default=None, metavar="SHORT,LONG",
              help="Inference resize: short side, long-side cap (min_size_test, max_size_test).")
@click.option("--threshold", type=float, default=None, help="The stored anomaly_threshold.")
@click.option("--meta", "meta", multiple=True, callback=_meta_entry, metavar="KEY=JSON",
              help="Set a metadata entry (JSON, or a bare string); repeatable.")
@click.option("--drop-meta", multiple=True, metavar="KEY", help="Remove a metadata entry; repeatable.")
def weights_set(weights_ref: str, output: str, test_size: str | None, threshold: float | None, meta: dict,
                drop_meta: tuple[str, ...]) -> None:
    """Copy a weights file with a new test size, threshold or metadata; tensors unchanged."""
    from m2a_pipe.model import checkpoint, registry

    changes = {}
    if test_size is not None:
        try:
            short, long = (int(v) for v in test_size.split(","))
            if not 1 <= short <= long:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{test_size!r} is not SHORT,LONG with 1 <= SHORT <= LONG (e.g. 256,512)",
                                     param_hint="--test-size") from None
        changes["preprocess"] = {"min_size_test": short, "max_size_test": long}
    if threshold is not None:
        meta = {**meta, "anomaly_threshold": threshold}
    try:
        path = checkpoint.rewrite_weights(registry.resolve(weights_ref), output, config_changes=changes,
                                          metadata=meta, drop=drop_meta)
        digest = checkpoint.sha256_file(path)
    except _user_errors() as err:
        raise _fail(err) from None
    click.echo(f"wrote {path}")
    click.echo(f"sha256 {digest}")


@weights.command("verify")
@click.argument("weights_ref", metavar="NAME|PATH")
@click.option("--sha256", "expected", default=None, metavar="HEX",
              help="Expected sha256 (default: the registered one).")
def weights_verify(weights_ref: str, expected: str | None) -> None:
    """Recompute a file's sha256 and compare; exit 1 on mismatch."""
    from m2a_pipe.model import registry

    try:
        result = registry.check_sha256(weights_ref, expected)
    except _user_errors() as err:
        raise _fail(err) from None
    if not result.ok:
        raise click.ClickException(
            f"sha256 mismatch for {result.path}: expected {result.expected}, got {result.actual}")
    click.echo(f"OK {result.path} sha256 {result.actual}")


# -- bench ---------------------------------------------------------------------------

def _size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HEIGHTxWIDTH (e.g. 512x1024)") from None
    if h <= 0 or w <= 0:
        raise click.BadParameter(f"{value!r}: sizes must be positive")
    return h, w


@cli.group()
def bench() -> None:
    """Benchmarks that print figures (latency, throughput, memory)."""


@bench.command("model")
@click.option("--preset", "preset_name", default="cityscapes-r50", show_default=True,
              help="Model preset (random weights: speed does not depend on their values).")
@click.option("--size", default="512x1024", show_default=True, metavar="HxW", callback=_size,
              help="Input size.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads (default: torch's).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--baseline", is_flag=True, help="Run as the official code does, for comparison.")
@click.option("--amp", is_flag=True, help="bfloat16 autocast (CUDA).")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Also write the figures as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench_model_cmd(preset_name: str, size: tuple[int, int], device: str, batch: int, threads: int | None,
                    warmup: int, repeats: int, baseline: bool, amp: bool, json_path: str | None,
                    quiet: bool) -> None:
    """Per-frame latency by stage and peak memory of forward + semantic inference."""
    import torch

    from m2a_pipe.bench import bench_model
    from m2a_pipe.config import ConfigError, preset

    height, width = size
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.ClickException(f"--device {device}: CUDA is not available on this machine")
    try:
        cfg = preset(preset_name)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    result = bench_model(cfg, preset=preset_name, height=height, width=width, device=device,
                         batch=batch, warmup=warmup, repeats=repeats, threads=threads,
                         baseline=baseline, amp=amp, progress=progress)
    click.echo(result.format())
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_dict(), indent=1) + "\n")


@bench.command("pipeline")
@click.argument("video", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("-w", "--weights", default="demo", show_default=True, help="Registry name or weights file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Frames per batch [1 on CPU, 8 on CUDA].")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads (default: torch's).")
@click.option("--short-side", type=click.IntRange(min=32), help="Network input short side.")
@click.option("--stride", type=click.IntRange(min=1), help="Process every N-th frame.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Also write the figures to FILE.")
def bench_pipeline_cmd(video: str | None, json_path: str | None, **options) -> None:
    """decode_fps, model_fps, end_to_end_fps, efficiency and peak_rss_mb on VIDEO (JSON)
    [default: examples/drive.mp4]."""
    from m2a_pipe.bench_pipeline import DEFAULT_VIDEO, bench_pipeline
    from m2a_pipe.io.video_reader import VideoError
    from m2a_pipe.pipeline import ProcessError
    from m2a_pipe.process_config import ProcessConfig

    path = Path(video) if video else DEFAULT_VIDEO
    if not path.is_file():
        raise click.ClickException(f"{path}: no such video (give VIDEO)")
    try:
        result = bench_pipeline(path, ProcessConfig().updated(**options))
    except (ProcessError, VideoError) as err:
        raise click.ClickException(str(err).splitlines()[0]) from None
    click.echo(result.to_json())
    if json_path:
        Path(json_path).write_text(result.to_json() + "\n")


def _register_subgroups() -> None:
    from m2a_pipe.evaluation.cli import evaluate
    from m2a_pipe.mine_cli import clip_cmd, mine_cmd
    from m2a_pipe.process_cli import process_cmd
    from m2a_pipe.synth.cli import synth
    from m2a_pipe.training.cli import train

    for group in (process_cmd, mine_cmd, clip_cmd, evaluate, synth, train):
        cli.add_command(group)


_register_subgroups()


def main() -> None:
    cli()
