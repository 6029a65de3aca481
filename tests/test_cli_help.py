"""The command line reads as one tool: every command's --help has an example, every option
has help, defaults are written one way, outputs are ``-o/--output``, sizes WIDTHxHEIGHT, and
every command fails the same way on a bad option."""

from __future__ import annotations

import re

import click
import pytest
from conftest import ERROR_PREFIX, run_cli

from m2a_pipe.cli import COMMANDS, cli


def all_commands() -> list[tuple[tuple[str, ...], click.Command]]:
    """(path, command) for the root, every group and every leaf command, via the lazy group."""
    found = [((), cli)]
    ctx = click.Context(cli)

    def walk(path: tuple[str, ...], group: click.Group) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            found.append(((*path, name), command))
            if isinstance(command, click.Group):
                walk((*path, name), command)

    walk((), cli)
    return found


COMMAND_PATHS = [path for path, _ in all_commands()]


def test_the_walk_finds_every_command():
    names = {path[0] for path in COMMAND_PATHS if path}
    assert names == set(COMMANDS)
    assert {("weights", "add"), ("weights", "fetch"), ("evaluate", "anomaly"), ("synth", "video")} <= set(COMMAND_PATHS)


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "m2a-pipe")
def test_help_has_an_example_and_every_option_has_help(path):
    result = run_cli(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Example:" in text, f"m2a-pipe {' '.join(path)} --help has no example"
    example = text.split("Example:", 1)[1].split("Options:", 1)[0]
    assert re.search(r"^\s+m2a-pipe \S+", example, re.M), example
    command = dict(all_commands())[path]
    for param in command.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        flags = "/".join(param.opts + param.secondary_opts)
        assert param.help and param.help.strip(), f"{' '.join(path)} {flags}: no help"
        assert "(default" not in param.help and "Default:" not in param.help, (
            f"{' '.join(path)} {flags}: write the default as [default: ...] like click does: {param.help!r}")
        assert not re.search(r"\[(?!default: )[^\]]*\]\.?$", param.help), (
            f"{' '.join(path)} {flags}: a bare [...] default; write [default: ...]: {param.help!r}")
        if "[default: " in param.help:  # as click writes it: after the text, two spaces before
            assert re.search(r"\S  \[default: [^\]]+\]$", param.help), f"{' '.join(path)} {flags}: {param.help!r}"
        assert "--out" not in param.opts and "--output-dir" not in param.opts, f"{flags}: the output is -o/--output"
        if "-o" in param.opts:
            assert "--output" in param.opts, f"{' '.join(path)} {flags}: -o is short for --output"
        if "--weights" in param.opts:
            assert "-w" in param.opts and param.metavar == "NAME|PATH", f"{' '.join(path)} {flags}"
        if "--size" in param.opts:
            assert param.metavar in (None, "WIDTHxHEIGHT") and "HxW" not in (param.help or ""), flags


@pytest.mark.parametrize("path", [p for p in COMMAND_PATHS if p], ids=lambda p: " ".join(p))
def test_a_bad_option_is_one_error_line_and_exit_code_2(path):
    result = run_cli(*path, "--no-such-option")
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(("Usage:", "Try "))]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result.output
    assert "Error:" not in result.output


def test_sizes_are_width_by_height_everywhere(tmp_path):
    """bench model --size 96x64 is 96 wide and 64 high, as synth's --size."""
    import json

    out = tmp_path / "b.json"
    result = run_cli("bench", "model", "--preset", "small", "--size", "96x64", "--repeats", "1", "--warmup", "0",
                     "--quiet", "--json", out)
    assert result.exit_code == 0, result.output
    (figures,) = json.loads(out.read_text())["results"]
    assert (figures["width"], figures["height"]) == (96, 64)
