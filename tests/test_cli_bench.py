"""`m2a-pipe bench model` on a tiny input."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import assert_error_line

from m2a_pipe.bench.model import STAGES
from m2a_pipe.cli import cli


def test_bench_model_prints_stages_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "model", "--preset", "small", "--size", "96x64",  # WIDTHxHEIGHT
                                      "--repeats", "2", "--warmup", "0", "--quiet", "--json", str(out)])
    assert result.exit_code == 0, result.output
    for stage in STAGES:
        assert stage in result.output
    figures = json.loads(out.read_text())
    assert figures["height"] == 64 and figures["width"] == 96 and figures["repeats"] == 2
    assert set(figures["stage_median_s"]) == set(STAGES)
    assert abs(sum(figures["stage_median_s"].values()) - figures["total_median_s"]) < 0.5 * figures["total_median_s"]
    assert figures["peak_memory_mb"] > 0 and figures["parameters"] > 1_000_000


def test_bench_model_baseline_flag(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "model", "--preset", "small", "--size", "64x64",
                                      "--repeats", "1", "--warmup", "0", "--quiet", "--baseline"])
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output


def test_bench_model_bad_size_and_preset():
    bad_size = CliRunner().invoke(cli, ["bench", "model", "--size", "12x"])
    assert bad_size.exit_code == 2 and "--size" in bad_size.output and "Traceback" not in bad_size.output
    bad_preset = CliRunner().invoke(cli, ["bench", "model", "--preset", "nope", "--quiet"])
    assert_error_line(bad_preset, "unknown preset 'nope'", exit_code=2)
