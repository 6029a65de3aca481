"""The ``synth`` click group: argument errors are one clear line; small runs succeed."""

from __future__ import annotations

import json

from conftest import assert_error_line, run_cli


def _run(args):
    return run_cli("synth", *args)


def test_images_and_errors(tmp_path):
    out = tmp_path / "ds"
    res = _run(["images", "--seed", "1", "--count", "2", "--anomalies", "hard", "-o", str(out),
                                "--size", "128x64", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "meta.json").read_text())["anomalies"] == "hard"
    res = _run(["images", "--seed", "1", "--count", "2", "-o", str(out), "--quiet"])
    assert res.exit_code == 1 and "already holds" in res.output and "Traceback" not in res.output
    res = _run(["images", "--seed", "1", "--count", "2", "-o", str(tmp_path / "x"),
                                "--size", "12x7"])
    assert_error_line(res, "size 12x7", exit_code=2)
    res = _run(["images", "--seed", "1", "--count", "0", "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and "must be > 0" in res.output
    res = _run(["images", "--seed", "1", "--count", "1", "--anomalies", "cats", "-o", "z"])
    assert res.exit_code == 2


def test_outliers_and_video(tmp_path):
    res = _run(["outliers", "--seed", "2", "--count", "2", "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o" / "outliers").glob("*.png"))) == 2
    clip = tmp_path / "c.mp4"
    res = _run(["video", "--seed", "3", "--seconds", "1", "--fps", "6", "-o", str(clip),
                                "--size", "128x64", "--quiet"])
    assert res.exit_code == 0, res.output
    assert clip.is_file() and (tmp_path / "c.gt.h5").is_file() and (tmp_path / "c.tracks.json").is_file()
    res = _run(["video", "--seed", "3", "--seconds", "1", "--fps", "6", "-o", str(tmp_path / "c.mkv"), "-q"])
    assert_error_line(res, "must be an .mp4", exit_code=2)
