"""The ``synth`` click group: argument errors are one clear line; small runs succeed."""

from __future__ import annotations

import json

from click.testing import CliRunner

from m2a_pipe.synth.cli import synth


def test_images_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "ds"
    res = runner.invoke(synth, ["images", "--seed", "1", "--count", "2", "--anomalies", "hard", "-o", str(out),
                                "--size", "128x64", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "meta.json").read_text())["anomalies"] == "hard"
    res = runner.invoke(synth, ["images", "--seed", "1", "--count", "2", "-o", str(out), "--quiet"])
    assert res.exit_code == 1 and "already holds" in res.output and "Traceback" not in res.output
    res = runner.invoke(synth, ["images", "--seed", "1", "--count", "2", "-o", str(tmp_path / "x"),
                                "--size", "12x7"])
    assert res.exit_code == 1 and "Error: size 12x7" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(synth, ["images", "--seed", "1", "--count", "0", "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and "must be > 0" in res.output
    res = runner.invoke(synth, ["images", "--seed", "1", "--count", "1", "--anomalies", "cats", "-o", "z"])
    assert res.exit_code == 2


def test_outliers_and_video(tmp_path):
    runner = CliRunner()
    res = runner.invoke(synth, ["outliers", "--seed", "2", "--count", "2", "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o" / "outliers").glob("*.png"))) == 2
    clip = tmp_path / "c.mp4"
    res = runner.invoke(synth, ["video", "--seed", "3", "--seconds", "1", "--fps", "6", "-o", str(clip),
                                "--size", "128x64", "--quiet"])
    assert res.exit_code == 0, res.output
    assert clip.is_file() and (tmp_path / "c.gt.h5").is_file() and (tmp_path / "c.tracks.json").is_file()
    res = runner.invoke(synth, ["video", "--seed", "3", "--seconds", "1", "--fps", "6", "-o", str(tmp_path / "c.mkv")])
    assert res.exit_code == 1 and "must be an .mp4" in res.output
