"""`m2a-pipe mine` and `m2a-pipe clip` on the outputs of real pipeline runs (small random weights)."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402
from conftest import assert_error_line  # noqa: E402

from m2a_pipe.cli import cli  # noqa: E402
from m2a_pipe.io.video_reader import VideoReader  # noqa: E402
from m2a_pipe.mining import ClipError, cut_clip, mine, rank_key, walk_outputs  # noqa: E402
from m2a_pipe.mining.outputs import Skipped, VideoFolder  # noqa: E402
from m2a_pipe.mining.report import FIRST_THUMB_BOX, THUMB_BACKGROUND  # noqa: E402
from m2a_pipe.pipeline import job as video_job  # noqa: E402
from m2a_pipe.pipeline.process import process  # noqa: E402

FAST = dict(short_side=64, quiet=True, instances="panoptic", event_min_score=-1.0, min_hits=3)
MANIFEST = [("videos/car1/front.mp4", "V1", "d1"), ("videos/car2/front.mp4", "V2", "d2"),
            ("videos/car2/rear.mp4", "V2", "d3"), ("videos/car3/cut.ts", "V3", "d4")]
COMPLETE = ("car1/front.m2a", "car2/front.m2a", "car2/rear.m2a")


@pytest.fixture(scope="module")
def fleet(weights, tmp_path_factory):
    """One pipeline run over a CSV manifest (3 complete videos, 1 truncated = partial), plus a
    temporary folder, a folder missing summary.json and one whose scores.h5 is still 'running'."""
    root = tmp_path_factory.mktemp("fleet")
    vf.make_video(root / "videos/car1/front.mp4", n=40, size=(96, 64), fps=10)
    vf.make_video(root / "videos/car2/front.mp4", n=20, size=(128, 64), fps=10)
    vf.make_video(root / "videos/car2/rear.mp4", n=12, size=(64, 64), fps=10)
    vf.make_truncated_ts(root / "videos/car3/cut.ts")
    manifest = root / "manifest.csv"
    manifest.write_text("path,vehicle,drive\n" + "".join(f"{p},{v},{d}\n" for p, v, d in MANIFEST))
    out = root / "out"
    summary = process([manifest], out, weights=weights, **FAST)
    assert sorted(v.status for v in summary.videos) == ["complete"] * 3 + ["partial"]
    shutil.copytree(out / "car2/rear.m2a", out / "car4/.rear.partial-999")
    shutil.copytree(out / "car2/rear.m2a", out / "car5/broken")
    (out / "car5/broken/summary.json").unlink()
    shutil.copytree(out / "car2/rear.m2a", out / "car6/running")
    with h5py.File(out / "car6/running/scores.h5", "r+") as f:
        f.attrs["status"] = "running"
    events = {rel: [json.loads(line) for line in (out / rel / "events.jsonl").read_text().splitlines()]
              for rel in COMPLETE}
    assert all(events.values()), "random weights with panoptic instances give every video an event"
    return SimpleNamespace(root=root, out=out, events=events)


@pytest.fixture(scope="module")
def mined(fleet, tmp_path_factory):
    report = tmp_path_factory.mktemp("report")
    lines = []
    result = mine(fleet.out, report, top=3, clips=True, log=lines.append)
    with open(report / "events.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return SimpleNamespace(result=result, report=report, lines=lines, rows=rows,
                           html=(report / "report.html").read_text())


def read_frames(path):
    with VideoReader(path) as reader:
        return reader.info, [(f.pts_s, f.image) for f in reader]


def copy_tree(fleet, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fleet.out, out)
    return out


def rewrite_events(folder, updates):
    """Replace fields of the events of one folder: ``updates[i]`` for its i-th event."""
    path = folder / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**ev, **upd}) + "\n" for ev, upd in zip(events, updates)))


# -- reading the tree -----------------------------------------------------------------------


def test_walk_agrees_with_is_complete(fleet):
    found = list(walk_outputs(fleet.out))
    mined_rels = [item.rel for item in found if isinstance(item, VideoFolder)]
    assert mined_rels == list(COMPLETE)
    for item in found:  # a temporary folder may hold whole files: it is skipped by its name
        if not (isinstance(item, Skipped) and item.kind == "temporary"):
            assert video_job.is_complete(fleet.out / item.rel) == isinstance(item, VideoFolder), item
    assert {item.rel: item.kind for item in found if isinstance(item, Skipped)} == {
        "car3/cut.m2a": "partial", "car4/.rear.partial-999": "temporary", "car5/broken": "missing",
        "car6/running": "unfinished"}
    front = next(item for item in found if item.rel == "car1/front.m2a")
    assert front.extra == {"vehicle": "V1", "drive": "d1"} and front.attrs["status"] == "complete"


def test_skipped_folders_are_reported_one_line_each(mined):
    lines = mined.lines
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    by_rel = {line.split(":")[0].removeprefix("skipped "): line for line in lines}
    assert "truncated" in by_rel["car3/cut.m2a"] and "partial" in by_rel["car3/cut.m2a"]
    assert "temporary" in by_rel["car4/.rear.partial-999"]
    assert "missing summary.json" in by_rel["car5/broken"]
    assert "running" in by_rel["car6/running"]
    assert mined.result.skipped == 4 and mined.result.videos == 3
    for rel in by_rel:
        assert f"<code>{rel}</code>" in mined.html
    assert {row["video"] for row in mined.rows} == set(COMPLETE)


# -- ranking and the CSV --------------------------------------------------------------------


def test_every_event_is_ranked_in_order(fleet, mined):
    n_events = sum(len(evs) for evs in fleet.events.values())
    assert len(mined.rows) == n_events == mined.result.ranked == mined.result.events
    assert [int(r["rank"]) for r in mined.rows] == list(range(1, n_events + 1))
    keys = [rank_key({k: float(r[k]) for k in ("peak_score", "duration_s", "max_area_fraction", "max_area_px")})
            for r in mined.rows]
    assert keys == sorted(keys, reverse=True)
    top = [(item.video.rel, item.event["event_id"]) for item in mined.result.top]
    assert top == [(r["video"], int(r["event_id"])) for r in mined.rows[:3]]
    assert [item.rank for item in mined.result.top] == [1, 2, 3]


def test_ties_are_broken_by_duration_then_size_then_scan_order(fleet, tmp_path):
    out = copy_tree(fleet, tmp_path)
    same = dict(peak_score=0.75, max_area_fraction=0.5)
    n1 = len(fleet.events["car1/front.m2a"])
    rewrite_events(out / "car1/front.m2a", [dict(same, duration_s=1.0, max_area_px=100)] * n1)
    rewrite_events(out / "car2/front.m2a", [dict(same, duration_s=2.0, max_area_px=50)])
    rewrite_events(out / "car2/rear.m2a", [dict(same, duration_s=1.0, max_area_px=200)])
    result = mine(out, tmp_path / "report", top=10)
    order = [(item.video.rel, item.event["event_id"]) for item in result.top]
    ids1 = [ev["event_id"] for ev in fleet.events["car1/front.m2a"]]
    assert order == [("car2/front.m2a", 1), ("car2/rear.m2a", 1), *(("car1/front.m2a", i) for i in ids1)]
    with open(tmp_path / "report/events.csv", newline="") as f:
        assert [(r["video"], int(r["event_id"])) for r in csv.DictReader(f)] == order


def test_csv_columns_manifest_and_paths(fleet, mined):
    with open(mined.report / "events.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["rank", "video", "source", "drive", "vehicle"]
    for column in ("event_id", "track_id", "start_s", "end_s", "start_frame", "end_frame", "duration_s",
                   "peak_score", "peak_frame", "max_area_px", "max_area_fraction", "bbox_x0", "bbox_y0",
                   "bbox_x1", "bbox_y1", "thumbnail", "clip"):
        assert column in header
    manifest = {f"{Path(p).parent.name}/{Path(p).stem}.m2a": (v, d) for p, v, d in MANIFEST}
    for row in mined.rows:
        assert (row["vehicle"], row["drive"]) == manifest[row["video"]]
        assert Path(row["source"]) == fleet.root / "videos" / (row["video"].removesuffix(".m2a") + ".mp4")
        event = next(ev for ev in fleet.events[row["video"]] if ev["event_id"] == int(row["event_id"]))
        assert float(row["peak_score"]) == event["peak_score"] and int(row["start_frame"]) == event["start_frame"]
        assert [float(row[f"bbox_{c}"]) for c in ("x0", "y0", "x1", "y1")] == event["bbox_at_peak"]
        assert (fleet.out / row["thumbnail"]).is_file()  # paths in the CSV are relative to OUT_ROOT
        if int(row["rank"]) <= 3:
            assert (fleet.out / row["clip"]).is_file() and row["clip"].endswith(".mp4")
        else:
            assert row["clip"] == ""


def test_filters_and_top(fleet, tmp_path):
    scores = sorted(ev["peak_score"] for evs in fleet.events.values() for ev in evs)
    cut = scores[len(scores) // 2]
    result = mine(fleet.out, tmp_path / "r1", top=1, min_score=cut)
    with open(tmp_path / "r1/events.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(s >= cut for s in scores) == result.ranked and result.events == len(scores)
    assert all(float(r["peak_score"]) >= cut for r in rows)
    html = (tmp_path / "r1/report.html").read_text()
    assert html.count('class="card"') == 1 and len(result.top) == 1
    result = mine(fleet.out, tmp_path / "r2", min_duration=0.7)
    durations = [ev["duration_s"] for evs in fleet.events.values() for ev in evs]
    assert result.ranked == sum(d >= 0.7 for d in durations)


def test_partial_videos_can_be_included(fleet, tmp_path):
    result = mine(fleet.out, tmp_path / "r", include_partial=True)
    assert result.videos == 4 and result.skipped_kinds.get("partial", 0) == 0
    assert "car3/cut.m2a" in (tmp_path / "r/report.html").read_text()


# -- report.html and the contact sheet ------------------------------------------------------


def test_report_html_embeds_the_top_thumbnail_and_links_the_rest(fleet, mined):
    import base64

    top = mined.result.top[0]
    thumb = base64.b64encode(top.thumbnail.read_bytes()).decode()
    html = mined.html
    first_card = html.index('id="rank-1"')
    assert html.index(thumb) > first_card and html.index(thumb) < html.index('id="rank-2"')
    assert html.count("<video ") == 3
    links = re.findall(r'(?:href|src)="([^"#:]+)(?:#[^"]*)?"', html)
    assert links, "relative links"
    for link in links:
        assert (mined.report / link).exists(), link
    for rel in COMPLETE:
        assert any(link.endswith(f"{rel}/timeline.png") for link in links)
        assert any(link.endswith(f"{rel}/overlay.mp4") for link in links)


def test_contact_sheet_shows_the_top_thumbnail(mined):
    sheet = np.asarray(Image.open(mined.report / "contact_sheet.jpg").convert("RGB"), dtype=np.float64)
    assert sheet.shape[1] == 8 + 3 * (256 + 8)
    thumb = np.asarray(Image.open(mined.result.top[0].thumbnail).convert("RGB"), dtype=np.float64)
    centre = sheet[8 + 96 - 10: 8 + 96 + 10, 8 + 128 - 10: 8 + 128 + 10]
    h, w = thumb.shape[:2]
    expected = thumb[h // 2 - 2: h // 2 + 2, w // 2 - 2: w // 2 + 2].mean(axis=(0, 1))
    assert np.abs(centre.mean(axis=(0, 1)) - expected).max() < 10


def _contain(image, width, height, background):
    """What CSS object-fit: contain draws in a width x height box."""
    canvas = Image.new("RGB", (width, height), background)
    scale = min(width / image.width, height / image.height)
    size = (round(image.width * scale), round(image.height * scale))
    canvas.paste(image.resize(size, Image.Resampling.BILINEAR), ((width - size[0]) // 2, (height - size[1]) // 2))
    return np.asarray(canvas, dtype=np.float64)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_screenshot_shows_the_top_thumbnail(mined, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1280,2000", (mined.report / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    page = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert page.shape[:2] == (2000, 1280)
    x, y, w, h = FIRST_THUMB_BOX
    region = page[y: y + h, x: x + w]
    with Image.open(mined.result.top[0].thumbnail) as thumb:
        expected = _contain(thumb.convert("RGB"), w, h, THUMB_BACKGROUND)
    background = np.asarray(Image.new("RGB", (1, 1), THUMB_BACKGROUND), dtype=np.float64)[0, 0]
    assert region.std() > 10, "the thumbnail box is blank"
    assert np.abs(region - background).mean() > 20, "the thumbnail box shows only its background"
    assert np.abs(region - expected).mean() < 4, "the thumbnail box does not show the top thumbnail"


# -- clips ----------------------------------------------------------------------------------


def _window(source, start_s, end_s, before, after):
    _, frames = read_frames(source)
    return [(t, img) for t, img in frames if start_s - before - 1e-6 <= t <= end_s + after + 1e-6]


def test_clip_frames_and_timestamps(fleet, tmp_path):
    folder = fleet.out / "car1/front.m2a"
    event = max(fleet.events["car1/front.m2a"], key=lambda ev: ev["start_s"])
    source = fleet.root / "videos/car1/front.mp4"
    for before, after in ((0.5, 0.3), (0.0, 0.0), (2.0, 2.0)):
        clip = tmp_path / f"clip_{before}_{after}.mp4"
        result = cut_clip(folder, event["event_id"], clip, before=before, after=after)
        assert result.kind == "source" and result.note == ""
        expected = _window(source, event["start_s"], event["end_s"], before, after)
        info, frames = read_frames(clip)
        assert (info.width, info.height) == (96, 64)
        assert len(frames) == len(expected) == result.n_frames
        assert frames[0][0] == pytest.approx(0.0, abs=1e-3)
        np.testing.assert_allclose([t for t, _ in frames], [t - expected[0][0] for t, _ in expected], atol=1e-3)
        assert [vf.pattern_index(img) for _, img in frames] == [vf.pattern_index(img) for _, img in expected]
        assert result.clip_start_s == pytest.approx(expected[0][0])
        assert result.event_offset_s == pytest.approx(event["start_s"] - expected[0][0])
        # duration = before + event + after, clipped to the video (0 .. 3.9 s at 10 fps)
        span = min(event["end_s"] + after, 3.9) - max(event["start_s"] - before, 0.0) + 0.1
        assert frames[-1][0] + 0.1 == pytest.approx(span, abs=1e-3)


def test_clip_from_the_overlay_and_missing_source(fleet, tmp_path):
    out = tmp_path / "car2"
    shutil.copytree(fleet.out / "car2/front.m2a", out)
    result = cut_clip(out, 1, tmp_path / "overlay.mp4", before=0.2, after=0.2, use="overlay")
    overlay_info, _ = read_frames(out / "overlay.mp4")
    info, frames = read_frames(tmp_path / "overlay.mp4")
    assert result.kind == "overlay" and (info.width, info.height) == (overlay_info.width, overlay_info.height)
    event = fleet.events["car2/front.m2a"][0]
    assert len(frames) == len(_window(out / "overlay.mp4", event["start_s"], event["end_s"], 0.2, 0.2))
    with h5py.File(out / "scores.h5", "r+") as f:
        f.attrs["source"] = str(tmp_path / "gone.mp4")
    result = cut_clip(out, 1, tmp_path / "auto.mp4")
    assert result.kind == "overlay" and "not found" in result.note
    with pytest.raises(ClipError, match="gone.mp4 not found"):
        cut_clip(out, 1, tmp_path / "src.mp4", use="source")
    with pytest.raises(ClipError, match="no event 9"):
        cut_clip(out, 9, tmp_path / "x.mp4")
    assert not (tmp_path / "src.mp4").exists() and not (tmp_path / "x.mp4").exists()


# -- command line ---------------------------------------------------------------------------


def test_cli_mine_default_report_dir(fleet, tmp_path):
    out = copy_tree(fleet, tmp_path)
    result = CliRunner().invoke(cli, ["mine", str(out), "--top", "2"])
    assert result.exit_code == 0, result.output
    assert "3 videos mined, 4 skipped" in result.stdout
    assert sum(line.startswith("m2a-pipe: skipped ") for line in result.stderr.splitlines()) == 4
    for name in ("events.csv", "contact_sheet.jpg", "report.html"):
        assert (out / "report" / name).is_file()
    again = CliRunner().invoke(cli, ["mine", str(out), "--top", "2"])  # the report folder is not a video
    assert again.exit_code == 0 and "3 videos mined, 4 skipped" in again.stdout


def test_cli_clip_and_one_line_errors(fleet, tmp_path):
    runner = CliRunner()
    folder = fleet.out / "car1/front.m2a"
    event_id = fleet.events["car1/front.m2a"][-1]["event_id"]
    clip = tmp_path / "c.mp4"
    ok = runner.invoke(cli, ["clip", str(folder), str(event_id), "--before", "0.5", "--after", "0.5", "-o", str(clip)])
    assert ok.exit_code == 0, ok.output
    assert "the clip starts at 0" in ok.stdout and clip.is_file()
    overlay = runner.invoke(cli, ["clip", str(folder), str(event_id), "--overlay", "-o", str(tmp_path / "o.mp4")])
    assert overlay.exit_code == 0 and "from the overlay" in overlay.stdout
    gone = tmp_path / "gone"
    shutil.copytree(folder, gone)
    with h5py.File(gone / "scores.h5", "r+") as f:
        f.attrs["source"] = str(tmp_path / "missing.mp4")
    for args, message in (([str(tmp_path / "nope"), "1"], "no such folder"),
                          ([str(folder), "99"], "no event 99"),
                          ([str(gone), "1", "--source", "-o", str(tmp_path / "s.mp4")], "missing.mp4 not found"),
                          ([str(fleet.root), "1"], "events.jsonl")):
        assert_error_line(runner.invoke(cli, ["clip", *args]), message)
    result = runner.invoke(cli, ["mine", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.strip() == f"m2a-pipe: error: {tmp_path / 'nope'}: no such folder"


def test_clip_window_seeks_and_gives_the_frames_of_a_full_decode(tmp_path):
    from m2a_pipe.mining.clips import frames_between

    for name in ("gop.mp4", "gop.ts"):
        path = vf.make_video(tmp_path / name, n=60, fps=10, gop=8)
        with VideoReader(path) as reader:
            full = [(f.pts_s, f.image) for f in reader]
        t_first = full[0][0]  # MPEG-TS starts at an offset
        t0, t1 = t_first + 3.25, t_first + 4.5
        with VideoReader(path) as reader:
            got = list(frames_between(reader, t0, t1))
            assert reader.n_decoded < 40, f"{path.suffix}: the clip decoded the file from its start"
        expected = [(t, img) for t, img in full if t0 - 1e-6 <= t <= t1 + 1e-6]
        assert len(got) == len(expected) == 13  # 3.3 .. 4.5 s
        np.testing.assert_allclose([f.pts_s for f in got], [t for t, _ in expected], atol=1e-6)
        assert [vf.pattern_index(f.image) for f in got] == [vf.pattern_index(i) for _, i in expected]
