"""`m2a-pipe bench model` on a tiny input."""

from __future__ import annotations

import json
import statistics

from click.testing import CliRunner
from conftest import assert_error_line

from m2a_pipe.bench.model import STAGES
from m2a_pipe.cli import cli


def test_bench_model_prints_stages_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "model", "--preset", "small", "--size", "96x64",  # WIDTHxHEIGHT
                                      "--precision", "fp32",
                                      "--repeats", "2", "--warmup", "0", "--quiet", "--json", str(out)])
    assert result.exit_code == 0, result.output
    for stage in STAGES:
        assert stage in result.output
    payload = json.loads(out.read_text())
    assert payload["command"] == f"m2a-pipe bench model --preset small --size 96x64 --precision fp32 --warmup 0 " \
        f"--repeats 2 --json {out} --quiet"
    assert "cpu_native_bf16" in payload["machine"]
    assert len(payload["machine"]["load_average"]) == 3 and len(payload["load_average_after"]) == 3
    (figures,) = payload["results"]
    assert figures["height"] == 64 and figures["width"] == 96 and figures["repeats"] == 2
    assert figures["precision"] == "fp32" and len(figures["totals_s"]) == 2
    assert set(figures["stage_median_s"]) == set(STAGES)
    assert abs(sum(figures["stage_median_s"].values()) - figures["total_median_s"]) < 0.5 * figures["total_median_s"]
    assert figures["peak_memory_mb"] > 0 and figures["parameters"] > 1_000_000
    assert payload["speed_ratios"] == {}


def test_bench_model_two_precisions_interleaved_json_to_stdout():
    result = CliRunner().invoke(cli, ["bench", "model", "--preset", "small", "--size", "64x64", "--precision",
                                      "fp32,bf16", "--repeats", "2", "--warmup", "0", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)  # --json without FILE: the JSON alone on stdout
    assert [r["precision"] for r in payload["results"]] == ["fp32", "bf16"]
    ratio, cpu_ratio = payload["speed_ratios"]["bf16/fp32"], payload["cpu_time_speed_ratios"]["bf16/fp32"]
    assert ratio > 0 and cpu_ratio > 0
    assert all(len(r["totals_s"]) == len(r["cpu_totals_s"]) == 2 for r in payload["results"])
    assert all(0 < cpu for r in payload["results"] for cpu in r["cpu_totals_s"])


def test_bench_model_unoptimised_and_bad_precision():
    result = CliRunner().invoke(cli, ["bench", "model", "--preset", "small", "--size", "64x64",
                                      "--repeats", "1", "--warmup", "0", "--quiet", "--unoptimised"])
    assert result.exit_code == 0, result.output
    assert "unoptimised" in result.output and "fp32" in result.output
    bad = CliRunner().invoke(cli, ["bench", "model", "--precision", "fp64"])
    assert bad.exit_code == 2 and "--precision" in bad.output and "Traceback" not in bad.output
    fp16 = CliRunner().invoke(cli, ["bench", "model", "--preset", "small", "--size", "64x64", "--precision", "fp16",
                                    "--device", "cpu", "--quiet"])
    assert_error_line(fp16, "fp16 needs a CUDA device", exit_code=2)


def test_bench_model_bad_size_and_preset():
    bad_size = CliRunner().invoke(cli, ["bench", "model", "--size", "12x"])
    assert bad_size.exit_code == 2 and "--size" in bad_size.output and "Traceback" not in bad_size.output
    bad_preset = CliRunner().invoke(cli, ["bench", "model", "--preset", "nope", "--quiet"])
    assert_error_line(bad_preset, "unknown preset 'nope'", exit_code=2)


def test_bench_pipeline_precisions_alternating(tmp_path):
    out = tmp_path / "pipeline.json"
    result = CliRunner().invoke(cli, ["bench", "pipeline", "--device", "cpu", "--short-side", "64", "--stride", "30",
                                      "--precision", "fp32,bf16", "--rounds", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert json.loads(result.output) == payload
    assert payload["command"] == f"m2a-pipe bench pipeline --device cpu --short-side 64 --stride 30 " \
        f"--precision fp32,bf16 --rounds 2 --json {out}"
    assert "cpu" in payload["machine"]
    fp32, bf16 = payload["results"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    for r in (fp32, bf16):
        assert r["frames"] == 5 and r["input_size"] == [64, 128] and len(r["rounds_end_to_end_fps"]) == 2
        assert r["efficiency"] == round(statistics.median(r["rounds_efficiency"]), 3)
        assert all(abs(e - a / b) < 2e-3  # each round's own end to end / model
                   for e, a, b in zip(r["rounds_efficiency"], r["rounds_end_to_end_fps"], r["rounds_model_fps"]))
        assert 0 < r["end_to_end_fps"] and 0 < r["efficiency"] and r["model_fps"] > 0
    assert payload["speed_ratios"]["bf16/fp32"] > 0
