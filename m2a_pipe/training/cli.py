"""``m2a-pipe train``: run a training recipe. Parses and delegates to :mod:`m2a_pipe.training.trainer`."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def train() -> None:
    """Train Mask2Anomaly: stage 1 (closed set) and stage 2 (outlier fine-tuning).

    \b
    Example:
      m2a-pipe train run train/demo/01_stage1.json --data data/train -o runs/stage1
    """


@train.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Training data folder (replaces the recipe's data.root).")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder.  [default: runs/<recipe name>]")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --output.")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda"]), help="Training device.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after this step (the schedule still spans the recipe's max_steps).")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Initial weights (replaces the recipe's init_weights; stage 2 from stage 1).")
@click.option("--val", "val", type=click.Path(file_okay=False), default=None,
              help="Validation folder (images/ + labels_masks/), replaces the recipe's val.root.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Change one recipe value, e.g. loss.outlier_pixel_weight=64 or solver.max_steps=1000 "
                   "(VALUE as JSON, else a string); repeatable, applied in order after `extends`.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def run(recipe: Path, data: Path | None, out: Path | None, resume: bool, device: str,
        max_steps: int | None, init: str | None, val: str | None, sets: tuple[str, ...], quiet: bool) -> None:
    """Train with RECIPE.json (see train/README.md).

    The run folder gets recipe.json: the recipe as run, itself a recipe (extends resolved;
    --set, --init, --val and --data applied; --max-steps and --resume are not recipe values).

    \b
    Example:
      m2a-pipe train run train/demo/01_stage1.json --data data/train -o runs/stage1 --resume
    """
    from m2a_pipe.training.recipes import Recipe, parse_override
    from m2a_pipe.training.trainer import Trainer

    r = Recipe.load(recipe, [parse_override(s) for s in sets])
    if init:
        r.init_weights, r.init_from = init, None
    if val:
        r.val = {**(r.val or {"every": 0}), "root": val}
    trainer = Trainer(r, out or Path("runs") / r.name, data_root=data, device=device,
                      resume=resume, max_steps=max_steps, progress=not quiet)
    summary = trainer.run()
    click.echo(json.dumps(summary, default=str))
