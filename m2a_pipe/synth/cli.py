"""``m2a-pipe synth``: make synthetic datasets, outlier sources and clips. Parses and delegates."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import click

_FAMILIES = click.Choice(["eval", "train", "train_ext", "hard", "none"])


def _size(value: str) -> tuple[int, int]:
    from m2a_pipe.synth.sample import parse_size

    return parse_size(value)


@contextmanager
def _bar(total: int, label: str, quiet: bool):
    if quiet:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="img", leave=False) as bar:
        yield bar.update


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be > 0")
    return value


@click.group()
def synth() -> None:
    """Synthetic dashcam world: labelled stills (SMIYC layout), outliers, video clips.

    \b
    Example:
      m2a-pipe synth images --seed 1 --count 100 -o data/val
      m2a-pipe synth video --seed 7 --seconds 60 --fps 10 -o clips/drive7.mp4
    """


@synth.command("images")
@click.option("--seed", type=int, required=True, help="Dataset seed; stems are synth_<seed>_<index>.")
@click.option("--count", type=int, required=True, callback=_positive, help="Number of images.")
@click.option("--anomalies", type=_FAMILIES, default="eval", show_default=True,
              help="Anomaly family: eval (evaluation only), train (AnomalyMix source only), hard, none.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--size", default="512x256", show_default=True, help="WIDTHxHEIGHT (even).")
@click.option("--workers", type=int, default=1, show_default=True, callback=_positive,
              help="Processes that render images in parallel.")
@click.option("--start", type=int, default=0, show_default=True, help="First image index.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def images(seed, count, anomalies, out, size, workers, start, overwrite, quiet):
    """Write a still-image dataset: images/, labels_masks/, semantic/, panoptic/, panoptic.json, meta.json.

    \b
    Example:
      m2a-pipe synth images --seed 1 --count 100 --anomalies eval -o data/val
    """
    from m2a_pipe.synth.dataset import write_image_dataset

    wh = _size(size)
    t0 = time.perf_counter()
    with _bar(count, "synth images", quiet) as progress:
        write_image_dataset(out, seed, count, anomalies, wh, workers=workers, start=start, overwrite=overwrite,
                            progress=progress)
    dt = time.perf_counter() - t0
    if not quiet:
        click.echo(f"{count} images ({anomalies}) {wh[0]}x{wh[1]} -> {out} in {dt:.1f} s ({count / dt:.1f} img/s)")


@synth.command("outliers")
@click.option("--seed", type=int, required=True, help="Seed of the cut-outs; the same seed gives the same files.")
@click.option("--count", type=int, required=True, callback=_positive, help="Number of cut-outs.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Output folder (cut-outs go to OUT/outliers/).")
@click.option("--family", type=click.Choice(["train", "train_ext"]), default="train", show_default=True,
              help="train_ext: the train family with four more materials and HSV colours.")
@click.option("--workers", type=int, default=1, show_default=True, callback=_positive,
              help="Processes that render cut-outs in parallel.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def outliers(seed, count, out, family, workers, overwrite, quiet):
    """Write RGBA cut-outs of a train anomaly family (the AnomalyMix outlier source).

    \b
    Example:
      m2a-pipe synth outliers --seed 5 --count 500 --family train -o data/train
    """
    from m2a_pipe.synth.dataset import write_outliers

    with _bar(count, "synth outliers", quiet) as progress:
        write_outliers(out, seed, count, family=family, workers=workers, overwrite=overwrite, progress=progress)
    if not quiet:
        click.echo(f"{count} outliers -> {out / 'outliers'}")


@synth.command("video")
@click.option("--seed", type=int, required=True, help="Seed of the drive; the same seed gives the same clip.")
@click.option("--seconds", type=float, required=True, callback=_positive, help="Length of the clip.")
@click.option("--fps", type=float, required=True, callback=_positive, help="Frame rate of the clip.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="CLIP.mp4")
@click.option("--size", default="640x320", show_default=True, help="WIDTHxHEIGHT (even).")
@click.option("--anomalies", type=_FAMILIES, default="eval", show_default=True,
              help="Anomaly family: eval (evaluation only), train (AnomalyMix source only), hard, none.")
@click.option("--crf", type=click.IntRange(0, 51), default=28, show_default=True, help="x264 quality.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def video(seed, seconds, fps, out, size, anomalies, crf, quiet):
    """Write an H.264 clip with CLIP.gt.h5 (per-frame masks, track ids) and CLIP.tracks.json.

    \b
    Example:
      m2a-pipe synth video --seed 7 --seconds 60 --fps 10 -o clips/drive7.mp4
    """
    from m2a_pipe.synth.video import write_video

    wh = _size(size)
    with _bar(max(1, round(seconds * fps)), "synth video", quiet) as progress:
        summary = write_video(out, seed, seconds, fps, wh, anomalies, crf=crf, progress=progress)
    if not quiet:
        click.echo(f"{summary['frames']} frames -> {out} ({summary['bytes'] / 1e6:.2f} MB), "
                   f"{len(summary['tracks'])} anomaly tracks")
