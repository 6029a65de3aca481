"""Hostile but real output conditions: a full disk (a real tmpfs), output folders that would nest
or collide, OUT inside the inputs, undecodable names, and tampered output trees under `mine`
and `clip`. Nothing already written is lost, half-written or leaked; no traceback."""

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402
from conftest import assert_error_line, fill_disk, run_cli  # noqa: E402

from m2a_pipe.mining import ClipError, cut_clip, mine  # noqa: E402
from m2a_pipe.pipeline.process import process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAST = dict(short_side=64, quiet=True, instances="panoptic", event_min_score=-1.0, min_hits=3)
CLI_FAST = ("--short-side", "64", "--device", "cpu", "-q")


def leftovers(root: Path) -> list[Path]:
    """Temporary files or folders a run left behind."""
    return [p for p in root.rglob("*") if ".partial-" in p.name or ".tmp-" in p.name or ".old-" in p.name]


# -- a full disk ------------------------------------------------------------------------------


def _run_cli_subprocess(*args, timeout=900):
    """The real console entry point in a child process: a crash shows as its exit status."""
    return subprocess.run([sys.executable, "-m", "m2a_pipe", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_full_disk_fails_videos_one_by_one_and_loses_nothing(weights, tmp_path, small_disk):
    clips = [vf.make_video(tmp_path / "in" / f"c{i}.mp4", n=10, size=(128, 64), fps=10) for i in range(4)]
    done = _run_cli_subprocess("process", tmp_path / "in", "-o", small_disk, "--weights", weights, *CLI_FAST)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])     # never 139 (a crash)
    assert "Traceback" not in done.stderr and "Segmentation" not in done.stderr
    complete = sorted(p.parent.name for p in small_disk.glob("*.m2a/summary.json"))
    failed = [line for line in done.stderr.splitlines() if line.startswith("m2a-pipe: error:")]
    assert failed, done.stderr
    assert len(complete) + len([f for f in failed if "No space left" in f]) == len(clips), done.stderr
    for name in complete:   # what was committed is whole
        with h5py.File(small_disk / name / "scores.h5", "r") as f:
            assert f.attrs["status"] == "complete" and f["frames/index"].shape[0] == 10
    assert not leftovers(small_disk)
    listed = (small_disk / "failures.jsonl")
    if listed.exists():
        rows = [json.loads(line) for line in listed.read_text().splitlines()]
        assert {Path(r["source"]).stem for r in rows} == {Path(c).stem for c in clips} - {
            n[:-4] for n in complete}


def test_no_space_at_all_is_one_line_per_video(weights, tmp_path, small_disk):
    vf.make_video(tmp_path / "in" / "a.mp4", n=6, size=(96, 64), fps=10)
    vf.make_video(tmp_path / "in" / "b.mp4", n=6, size=(96, 64), fps=10)
    fill_disk(small_disk)
    done = _run_cli_subprocess("process", tmp_path / "in", "-o", small_disk, "--weights", weights, *CLI_FAST)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("m2a-pipe: error:")]
    assert any("a.mp4" in e for e in errors) and any("b.mp4" in e for e in errors), done.stderr
    assert not leftovers(small_disk) and sorted(p.name for p in small_disk.iterdir()) == ["filler"]


# -- folders that would nest, collide or be deleted ---------------------------------------------------


def test_a_video_next_to_a_folder_of_its_name_keeps_both(weights, tmp_path):
    y = vf.make_video(tmp_path / "nest" / "x" / "y.mp4", n=6, size=(96, 64), fps=10)
    x = vf.make_video(tmp_path / "nest" / "x.mp4", n=6, size=(96, 64), fps=10)
    named = vf.make_video(tmp_path / "nest" / "failures.jsonl.mp4", n=6, size=(96, 64), fps=10)
    bad = vf.make_garbage(tmp_path / "nest" / "bad.mp4")
    out = tmp_path / "out"
    first = process([y, x, named, bad], out, **FAST, weights=weights)
    assert sorted(v.status for v in first.videos) == ["complete", "complete", "complete", "failed"]
    for rel in ("x/y.m2a", "x.m2a", "failures.jsonl.m2a"):
        assert (out / rel / "summary.json").is_file(), rel
    assert [json.loads(line)["source"] for line in (out / "failures.jsonl").read_text().splitlines()] == [str(bad)]
    again = process([y, x, named, bad], out, **FAST, weights=weights)
    assert sorted(v.status for v in again.videos) == ["failed", "skipped", "skipped", "skipped"]


def test_a_folder_the_pipeline_did_not_write_is_never_replaced(weights, tmp_path):
    clip = vf.make_video(tmp_path / "in" / "v.mp4", n=6, size=(96, 64), fps=10)
    mine_folder = tmp_path / "out" / "v.m2a"
    mine_folder.mkdir(parents=True)
    (mine_folder / "notes.txt").write_text("keep me")
    summary = process([clip], tmp_path / "out", **FAST, weights=weights)
    (result,) = summary.videos
    assert result.status == "failed" and "is not a video output folder" in result.error
    assert (mine_folder / "notes.txt").read_text() == "keep me" and not leftovers(tmp_path / "out")


def test_out_inside_the_input_folder_does_not_grow(weights, tmp_path):
    fleet = tmp_path / "fleet"
    vf.make_video(fleet / "a.mp4", n=6, size=(96, 64), fps=10)
    first = process([fleet], fleet / "out", **FAST, weights=weights)
    second = process([fleet], fleet / "out", **FAST, weights=weights)
    assert [v.status for v in first.videos] == ["complete"] and [v.status for v in second.videos] == ["skipped"]
    assert sorted(p.name for p in (fleet / "out").iterdir()) == ["a.m2a"]


def test_an_undecodable_name_runs_and_is_stored_losslessly(weights, tmp_path):
    folder = tmp_path / "in"
    vf.make_video(folder / "good.mp4", n=6, size=(96, 64), fps=10)
    raw = os.fsencode(folder) + b"/caf\xe9.mp4"
    shutil.copy(folder / "good.mp4", os.fsdecode(raw))
    vf.make_video(folder / "zlast.mp4", n=6, size=(96, 64), fps=10)
    summary = process([folder], tmp_path / "out", **FAST, weights=weights)
    assert [v.status for v in summary.videos] == ["complete"] * 3
    assert "caf\\xe9" in summary.table().encode("utf-8").decode()   # printable as it is shown
    out = os.fsencode(tmp_path / "out") + b"/caf\xe9.m2a/scores.h5"
    with h5py.File(os.fsdecode(out), "r") as f:
        assert f.attrs["source"].endswith("caf\\xe9.mp4")
        assert f.attrs["source_bytes"].tobytes() == raw


# -- mine and clip on a tampered tree ------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered")
    vf.make_video(root / "in" / "=1+1" / "v.mp4", n=20, size=(96, 64), fps=10)
    vf.make_video(root / "in" / "report.mp4", n=20, size=(96, 64), fps=10)
    summary = process([root / "in"], root / "out", **FAST, weights=weights)
    assert [v.status for v in summary.videos] == ["complete", "complete"]
    return root


def _events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_mine_reads_no_file_outside_the_tree_and_skips_bad_events(tree, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tree / "out", out)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"TOP-SECRET-BYTES" * 8)
    folder = out / "=1+1" / "v.m2a"
    events = _events(folder)
    assert len(events) >= 1
    base = dict(events[0])
    tampered = [dict(base, event_id=101, thumbnail=str(secret)),
                dict(base, event_id=102, thumbnail="../../../secret.jpg"),
                dict(base, event_id=103, max_area_fraction="abc"),
                dict(base, event_id=104, thumbnail=123),
                dict(base, event_id=105, peak_s="x"),
                dict(base, event_id=106)]
    os.symlink(secret, folder / "thumbs" / "link.jpg")
    tampered.append(dict(base, event_id=107, thumbnail="thumbs/link.jpg"))
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in tampered))
    lines = []
    result = mine(out, log=lines.append)
    html = (out / "report" / "report.html").read_text()
    leaked = base64.b64encode(secret.read_bytes()).decode()[:40]
    assert leaked not in html and "TOP-SECRET" not in html
    bad = [line for line in lines if "event skipped" in line]
    assert len(bad) == 3 and all(line.startswith("=1+1/v.m2a: events.jsonl line") for line in bad), lines
    assert sum("not a file inside the video folder" in line for line in lines) == 3, lines
    rows = list(csv.DictReader((out / "report" / "events.csv").open()))
    ids = sorted(int(r["event_id"]) for r in rows if r["video"].endswith("v.m2a"))
    assert ids == [101, 102, 106, 107]
    assert all(r["video"].startswith("'=") for r in rows if r["video"].endswith("v.m2a"))
    assert result.videos == 2
    assert not (out / "report.m2a" / "report.html").exists() and not (out / "report.m2a" / "events.csv").exists()


def test_mine_refuses_to_write_into_a_video_folder(tree):
    folder = tree / "out" / "report.m2a"
    result = run_cli("mine", folder)
    assert_error_line(result, "the report is never written into a video's folder")
    result = run_cli("mine", tree / "out", "-o", folder / "sub")
    assert_error_line(result, "the report is never written into a video's folder")
    assert not (folder / "report").exists() and not (folder / "sub").exists()


def test_clip_with_absurd_times_is_one_line(tree, tmp_path):
    folder = tmp_path / "v.m2a"
    shutil.copytree(tree / "out" / "report.m2a", folder)
    event = _events(folder)[0]
    (folder / "events.jsonl").write_text(json.dumps(dict(event, start_s=1e308, end_s=1e308)) + "\n")
    with pytest.raises(ClipError, match="has times no video has"):
        cut_clip(folder, event["event_id"], tmp_path / "c.mp4")
    result = run_cli("clip", folder, event["event_id"], "-o", tmp_path / "c.mp4")
    assert_error_line(result, "has times no video has")
    assert not (tmp_path / "c.mp4").exists()
