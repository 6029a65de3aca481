"""``m2a-pipe weights``: list, inspect, convert, edit and verify weights. Parses and delegates
to :mod:`m2a_pipe.model.registry`, :mod:`.checkpoint` and :mod:`.loading`."""

from __future__ import annotations

import json
from pathlib import Path

import click


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


@click.group()
def weights() -> None:
    """Weights by name: list, add or fetch checkpoints, inspect, convert, edit metadata, verify sha256.

    \b
    Example:
      m2a-pipe weights list
      m2a-pipe weights add model_final.pth --name cityscapes-r50 --config cityscapes-r50
    """


@weights.command("list")
def weights_list() -> None:
    """Known weights: name, present?, sha256 prefix, description, and how to get the missing ones.

    \b
    Example:
      m2a-pipe weights list
    """
    from m2a_pipe.model import registry

    entries = registry.list_entries()
    rows = [("NAME", "PRESENT", "SHA256", "DESCRIPTION")]
    for entry in entries:
        digest = entry.sha256[:12] if entry.sha256 else "-"
        rows.append((entry.name, "yes" if entry.present else "no", digest, entry.description))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[3]]).rstrip())
    click.echo(f"\nfiles: {registry.weights_dir()} (the package's), {registry.user_weights_dir()} (added; "
               f"${registry.CACHE_ENV} moves it)")
    for entry in entries:
        if entry.present:
            click.echo(f"{entry.name}: {entry.path}")
        elif entry.source:
            click.echo(f"{entry.name}: not present; download {entry.source_file or 'the checkpoint'} from "
                       f"{entry.source} (its README links the checkpoints), then: {entry.how_to_add()}")
        else:
            click.echo(f"{entry.name}: not present ({entry.path})")


@weights.command("info")
@click.argument("weights_ref", metavar="NAME|PATH")
@click.option("--config", "config_spec", metavar="CONFIG",
              help="Preset or config JSON for .pth/.pkl files, which carry no config.")
def weights_info(weights_ref: str, config_spec: str | None) -> None:
    """Config summary, metadata, parameter count and sha256 of a weights file.

    \b
    Example:
      m2a-pipe weights info demo
    """
    from m2a_pipe.model import loading, registry

    cfg = registry.resolve_config(config_spec) if config_spec else None
    info = loading.describe(weights_ref, cfg)
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
    """Load an official checkpoint strictly and save it as safetensors with its config
    (`weights add` does this and registers the result under a name).

    \b
    Example:
      m2a-pipe weights convert model_final.pth --config cityscapes-r50 -o cityscapes-r50.safetensors
    """
    from m2a_pipe.model import checkpoint, loading, registry

    cfg = registry.resolve_config(config_spec, class_names=_class_names(class_names))
    path = loading.convert_checkpoint(src, cfg, output)
    digest = checkpoint.sha256_file(path)
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
    """Copy a weights file with a new test size, threshold or metadata; tensors unchanged.

    \b
    Example:
      m2a-pipe weights set demo -o demo-256.safetensors --test-size 256,512 --threshold 0.6
    """
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
    path = checkpoint.rewrite_weights(registry.resolve(weights_ref), output, config_changes=changes,
                                      metadata=meta, drop=drop_meta)
    digest = checkpoint.sha256_file(path)
    click.echo(f"wrote {path}")
    click.echo(f"sha256 {digest}")


@weights.command("verify")
@click.argument("weights_ref", metavar="NAME|PATH")
@click.option("--sha256", "expected", default=None, metavar="HEX",
              help="Expected sha256.  [default: the registered one]")
def weights_verify(weights_ref: str, expected: str | None) -> None:
    """Recompute a file's sha256 and compare; exit 1 on mismatch.

    \b
    Example:
      m2a-pipe weights verify demo
    """
    from m2a_pipe.model import registry
    from m2a_pipe.model.registry import WeightsError

    result = registry.check_sha256(weights_ref, expected)
    if not result.ok:
        raise WeightsError(f"{result.path}: sha256 mismatch: expected {result.expected}, got {result.actual}")
    click.echo(f"OK {result.path} sha256 {result.actual}")


def _registration_options(command):
    """--name, --config and --overwrite, shared by ``weights add`` and ``weights fetch``."""
    for option in reversed((
            click.option("--name", required=True, metavar="NAME", help="The name --weights will know it by."),
            click.option("--config", "config_spec", default=None, metavar="PRESET|config.json",
                         help="Preset name or config.json of a .pth/.pkl checkpoint.  "
                              "[default: the preset of an official name; a .safetensors carries its own]"),
            click.option("--overwrite", is_flag=True, help="Replace weights already added under NAME."))):
        command = option(command)
    return command


@weights.command("add")
@click.argument("file", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@_registration_options
def weights_add(file: str, name: str, config_spec: str | None, overwrite: bool) -> None:
    """Convert a checkpoint, verify it loads, and register it as NAME in the user weights folder.

    The folder is $M2A_CACHE/weights (default ~/.cache/m2a-pipe/weights); afterwards
    --weights NAME works in every command.

    \b
    Example:
      m2a-pipe weights add model_final.pth --name cityscapes-r50 --config cityscapes-r50
      m2a-pipe process drive.mp4 -o out --weights cityscapes-r50
    """
    from m2a_pipe.model import loading

    entry = loading.add_weights(file, name, config_spec, overwrite=overwrite)
    click.echo(f"added {entry.name}: {entry.path}")
    click.echo(f"sha256 {entry.sha256}")


@weights.command("fetch")
@click.argument("url", metavar="URL")
@click.option("--sha256", "sha256", required=True, metavar="HEX",
              help="The sha256 the downloaded file must have (checked before anything is converted).")
@_registration_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
def weights_fetch(url: str, sha256: str, name: str, config_spec: str | None, overwrite: bool, quiet: bool) -> None:
    """Download a checkpoint (http, https or file URL), check its sha256, then add it as NAME.

    A wrong sha256 or an unreachable server is one error line, and nothing is left in the
    weights folder; the same command gives the same weights on every machine of a cluster,
    and run again it does nothing (the weights of that sha256 are already there).

    \b
    Example:
      m2a-pipe weights fetch https://models.example.com/fleet-v3.pth \\
          --sha256 3f2a...c9 --name fleet-v3 --config cityscapes-r50
    """
    import os
    import sys

    from tqdm import tqdm

    from m2a_pipe.model import fetch, loading, registry

    digest = fetch.check_sha256_text(sha256)
    added = registry.user_entries().get(registry.check_name(name))
    if added is not None and not overwrite:
        if added.metadata.get("source_sha256") == digest and added.present:
            click.echo(f"{name}: already added from a file of this sha256 ({added.path}); nothing to fetch")
            return
        raise registry.WeightsError(f"{name}: already added from another file ({added.path}); "
                                    "pass --overwrite to replace it")
    suffix = "".join(Path(fetch.url_file_name(url)).suffixes[-1:])
    folder = registry.user_weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    download = folder / f".{name}.download-{os.getpid()}{suffix}"
    with tqdm(desc=name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
              disable=True if quiet else None, leave=False) as bar:  # None: off when stderr is no terminal
        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        fetch.download(url, download, digest, progress=progress)
    try:
        entry = loading.add_weights(download, name, config_spec, source=url, source_file=fetch.url_file_name(url),
                                    overwrite=overwrite)
    finally:
        download.unlink(missing_ok=True)
    click.echo(f"added {entry.name}: {entry.path} (from {url}, sha256 {digest[:12]}... verified)")
