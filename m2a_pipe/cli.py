"""The ``m2a-pipe`` command line. It only parses and delegates."""

from __future__ import annotations

import click

from m2a_pipe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="m2a-pipe")
def cli() -> None:
    """Mask2Anomaly over dashcam video: anomaly heatmaps, scores, tracks and events."""


def main() -> None:
    cli()
