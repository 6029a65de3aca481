"""The ``m2a-pipe`` command line: a thin entry point that registers the sub-commands lazily.

Each sub-command lives in the ``cli`` module of its package and is imported only when it
runs, so ``m2a-pipe --help`` and the light commands (``mine``, ``clip``) start without torch.
Errors end the same way everywhere:

* a bad option or setting (click's usage errors, :class:`~m2a_pipe.errors.UsageError`):
  the usage line, ``m2a-pipe: error: <reason>``, exit code 2;
* a failed run (an :class:`~m2a_pipe.errors.M2AError`, an OSError):
  ``m2a-pipe: error: <input>: <reason>``, exit code 1;
* Ctrl-C: ``m2a-pipe: interrupted``, exit code 130;
* anything else is a bug and surfaces as a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from m2a_pipe._version import __version__
from m2a_pipe.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, M2AError, os_error_line

COMMANDS: dict[str, tuple[str, str, str]] = {
    "process": ("m2a_pipe.pipeline.cli", "process_cmd",
                "Process dashcam videos: overlay, scores, tracks and events per video."),
    "mine": ("m2a_pipe.mining.cli", "mine_cmd", "Rank the anomalous events of every processed video."),
    "clip": ("m2a_pipe.mining.cli", "clip_cmd", "Cut an H.264 clip around one event of a processed video."),
    "evaluate": ("m2a_pipe.evaluation.cli", "evaluate",
                 "Benchmark metrics: anomaly, open-set and open-set panoptic segmentation."),
    "weights": ("m2a_pipe.model.cli", "weights", "Weights by name: list, add, fetch, inspect, convert, edit, verify."),
    "bench": ("m2a_pipe.bench.cli", "bench", "Benchmarks that print figures: the model alone, the whole pipeline."),
    "synth": ("m2a_pipe.synth.cli", "synth", "Synthetic dashcam world: labelled stills, outliers, video clips."),
    "train": ("m2a_pipe.training.cli", "train", "Train Mask2Anomaly: stage 1 (closed set), stage 2 (outliers)."),
}
"""Sub-command name -> (module, attribute, one-line help shown by ``m2a-pipe --help``)."""

PROG = "m2a-pipe"


def error_line(message: str) -> None:
    """Print ``m2a-pipe: error: <message>`` to stderr."""
    click.echo(f"{PROG}: error: {message}", err=True)


class LazyGroup(click.Group):
    """A group whose sub-commands are imported when used (see :data:`COMMANDS`), and which
    turns project errors into one line and an exit code (see the module docstring)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS`, without importing the commands."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name or PROG, complete_var, standalone_mode=False, **extra)
        except click.UsageError as err:
            if err.ctx is not None:
                click.echo(err.ctx.get_usage(), err=True)
            error_line(err.format_message())
            sys.exit(EXIT_USAGE)
        except click.ClickException as err:
            error_line(err.format_message())
            sys.exit(err.exit_code)
        except M2AError as err:
            error_line(err.user_message())
            sys.exit(err.exit_code)
        except OSError as err:
            error_line(os_error_line(err))
            sys.exit(EXIT_FAILED)
        except (KeyboardInterrupt, click.Abort):
            click.echo(f"{PROG}: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def cli() -> None:
    """Mask2Anomaly over dashcam video: anomaly heatmaps, scores, tracks and events.

    Start with `m2a-pipe process drive.mp4 -o out`; `m2a-pipe COMMAND --help` shows each
    command's options and examples.

    \b
    Example:
      m2a-pipe process examples/drive.mp4 -o out
      m2a-pipe mine out
    """


def main() -> None:
    """The console script ``m2a-pipe``."""
    cli()
