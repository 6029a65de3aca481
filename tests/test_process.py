"""`m2a-pipe process` end to end on real encoded files (PyAV fixtures) with small random weights."""

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402

from m2a_pipe.cli import cli  # noqa: E402
from m2a_pipe.inference.forward import precision_for  # noqa: E402
from m2a_pipe.io.video_reader import VideoReader  # noqa: E402
from m2a_pipe.pipeline.process import ProcessError, process  # noqa: E402

FAST = dict(short_side=64, quiet=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "a": vf.make_video(root / "a" / "drive.mp4", n=12, size=(96, 64), fps=10),
        "b": vf.make_video(root / "b" / "drive.mp4", n=8, size=(96, 64), fps=10),
        "vfr": vf.make_vfr_video(root / "vfr.mkv", [0.0, 0.05, 0.2, 0.25, 0.5, 0.9, 1.0]),
        "rotated": vf.make_rotated_video(root / "rotated.mp4", rotation=90),
        "odd": vf.make_video(root / "odd.mov", n=6, size=(97, 51), fps=12),
        "truncated": vf.make_truncated_ts(root / "cut.ts"),
        "garbage": vf.make_garbage(root / "garbage.mp4"),
        "noindex": vf.make_mp4_without_index(root / "noindex.mp4"),
        "audio": vf.make_audio_only(root / "audio.m4a"),
        "empty": vf.make_zero_frame_video(root / "empty.mp4"),
    }


def source_frames(path, **kw):
    with VideoReader(path, **kw) as reader:
        return [(f.index, f.pts_s) for f in reader]


def test_outputs_of_one_video(weights, clips, tmp_path):
    summary = process(clips["a"], tmp_path / "out", weights=weights, **FAST)
    assert summary.exit_code == 0 and [v.status for v in summary.videos] == ["complete"]
    out = tmp_path / "out" / "drive.m2a"
    assert {p.name for p in out.iterdir()} >= {"scores.h5", "overlay.mp4", "tracks.csv", "events.jsonl",
                                               "timeline.png", "summary.json"}
    src = source_frames(clips["a"])
    with h5py.File(out / "scores.h5", "r") as f:
        assert f.attrs["status"] == "complete" and f.attrs["n_frames"] == len(src)
        np.testing.assert_array_equal(f["frames/index"][:], [i for i, _ in src])
        np.testing.assert_allclose(f["frames/pts"][:], [t for _, t in src])
        for name in ("score_max", "score_p99", "anomalous_fraction", "n_instances"):
            assert len(f["frames"][name]) == len(src)
        assert f["maps/anomaly"].shape[0] == len(src)
        assert f.attrs["threshold"] == pytest.approx(0.6)
        assert f.attrs["weights_sha256"] and f.attrs["source_fingerprint"].startswith("size:")
        assert json.loads(f.attrs["config"])["short_side"] == 64
        assert f.attrs["width"] == 96 and f.attrs["height"] == 64
        assert f["instances"].shape[0] == f["frames/n_instances"][:].sum()
        # the precision as run, not the option: auto is bf16 on a CPU with bf16 instructions, else fp32
        assert json.loads(f.attrs["config"])["precision"] == "auto"
        assert f.attrs["precision"] == precision_for("cpu", "auto").name in ("bf16", "fp32")
    overlay = source_frames(out / "overlay.mp4")
    assert len(overlay) == len(src)
    np.testing.assert_allclose([t for _, t in overlay], [t for _, t in src], atol=1e-3)
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_vfr_timestamps_and_stride(weights, clips, tmp_path):
    process(clips["vfr"], tmp_path / "o1", weights=weights, **FAST)
    src = source_frames(clips["vfr"])
    overlay = source_frames(tmp_path / "o1" / "vfr.m2a" / "overlay.mp4")
    np.testing.assert_allclose([t for _, t in overlay], [t for _, t in src], atol=1e-3)
    process(clips["a"], tmp_path / "o2", weights=weights, stride=3, **FAST)
    with h5py.File(tmp_path / "o2" / "drive.m2a" / "scores.h5", "r") as f:
        np.testing.assert_array_equal(f["frames/index"][:], [0, 3, 6, 9])


def test_open_set_panoptic_instances(weights, clips, tmp_path):
    process(clips["a"], tmp_path / "out", weights=weights, instances="panoptic", event_min_score=-1.0, min_hits=3,
            **FAST)
    out = tmp_path / "out" / "drive.m2a"
    with h5py.File(out / "scores.h5", "r") as f:
        n = f["frames/n_instances"][:]
        inst = f["instances"][:]
        assert json.loads(f.attrs["config"])["instances"] == "panoptic"
    assert n.sum() == len(inst) > 0
    assert (inst["x1"] > inst["x0"]).all() and (inst["x1"] <= 96 + 1e-3).all() and (inst["y1"] <= 64 + 1e-3).all()
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events, "random weights: the mined unknown covers the frame, a track, an event (any peak score)"
    for ev in events:  # in source pixels, as /instances
        x0, y0, x1, y1 = ev["bbox_at_peak"]
        assert 0 <= x0 < x1 <= 96 + 1e-3 and 0 <= y0 < y1 <= 64 + 1e-3 and 0 < ev["max_area_px"] <= 96 * 64
        assert (out / ev["thumbnail"]).is_file()


def test_rotation_and_odd_size(weights, clips, tmp_path):
    summary = process([clips["rotated"], clips["odd"]], tmp_path / "out", weights=weights, **FAST)
    assert summary.exit_code == 0
    with VideoReader(clips["rotated"]) as r:
        w, h = r.info.width, r.info.height
    with h5py.File(tmp_path / "out" / "rotated.m2a" / "scores.h5", "r") as f:
        assert (f.attrs["width"], f.attrs["height"]) == (w, h)
    with h5py.File(tmp_path / "out" / "odd.m2a" / "scores.h5", "r") as f:
        assert (f.attrs["width"], f.attrs["height"]) == (97, 51) and f.attrs["status"] == "complete"


def test_bad_inputs_fail_one_line_each_and_the_others_go_on(weights, clips, tmp_path):
    messages = []
    inputs = [clips["garbage"], clips["a"], clips["noindex"], clips["audio"], tmp_path / "missing.mp4",
              clips["truncated"], clips["empty"]]
    summary = process(inputs, tmp_path / "out", weights=weights, log=messages.append, **FAST)
    status = {Path(v.source).name: v.status for v in summary.videos}
    assert status["drive.mp4"] == "complete"
    assert status["garbage.mp4"] == status["noindex.mp4"] == status["audio.m4a"] == status["empty.mp4"] == "failed"
    assert status["cut.ts"] == "partial"
    assert summary.exit_code == 1
    assert all("\n" not in m for m in messages)
    assert any("moov" in m or "index" in m for m in messages if "noindex" in m)
    assert any("missing.mp4" in m for m in messages)
    with h5py.File(tmp_path / "out" / "cut.m2a" / "scores.h5", "r") as f:
        assert f.attrs["status"] == "partial" and f.attrs["error"] and f.attrs["n_frames"] > 0
    assert any("empty.mp4" in m and "frame" in m for m in messages)
    assert not (tmp_path / "out" / "garbage.m2a").exists() and not (tmp_path / "out" / "empty.m2a").exists()
    assert not list((tmp_path / "out").rglob(".*partial*"))


def test_two_inputs_with_the_same_name(weights, clips, tmp_path):
    summary = process([clips["a"], clips["b"]], tmp_path / "out", weights=weights, **FAST)
    assert summary.exit_code == 0
    assert (tmp_path / "out" / "a" / "drive.m2a" / "scores.h5").is_file()
    assert (tmp_path / "out" / "b" / "drive.m2a" / "scores.h5").is_file()
    # the summary table names each output folder under OUT, so two videos called alike stay apart
    header, *rows = summary.table().splitlines()[:3]
    assert header.split()[0] == "output" and [r.split()[0] for r in rows] == ["a/drive.m2a", "b/drive.m2a"]


def test_rerun_skips_complete_and_overwrite_redoes(weights, clips, tmp_path):
    process(clips["a"], tmp_path / "out", weights=weights, **FAST)
    again = process(clips["a"], tmp_path / "out", weights=weights, **FAST)
    assert [v.status for v in again.videos] == ["skipped"] and again.exit_code == 0
    redo = process(clips["a"], tmp_path / "out", weights=weights, overwrite=True, **FAST)
    assert [v.status for v in redo.videos] == ["complete"]


def test_interrupted_run_then_rerun_loses_and_duplicates_nothing(weights, clips, tmp_path):
    def interrupt(video, done):
        if video.source == Path(clips["b"]).resolve() and done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        process([clips["a"], clips["b"]], tmp_path / "out", weights=weights, batch_size=1, on_batch=interrupt,
                **FAST)
    out = tmp_path / "out"
    assert (out / "a" / "drive.m2a" / "summary.json").is_file()
    assert not (out / "b" / "drive.m2a").exists()
    assert not list(out.rglob(".*partial*"))
    summary = process([clips["a"], clips["b"]], out, weights=weights, **FAST)
    assert {Path(v.source).parent.name: v.status for v in summary.videos} == {"a": "skipped", "b": "complete"}
    for clip, folder in ((clips["a"], "a"), (clips["b"], "b")):
        with h5py.File(out / folder / "drive.m2a" / "scores.h5", "r") as f:
            np.testing.assert_array_equal(f["frames/index"][:], [i for i, _ in source_frames(clip)])


def test_missing_weights_and_unwritable_output(clips, tmp_path):
    with pytest.raises(ProcessError, match="nope.safetensors"):
        process(clips["a"], tmp_path / "out", weights=str(tmp_path / "nope.safetensors"), **FAST)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ProcessError, match="cannot write"):
        process(clips["a"], blocker / "out", weights="x", **FAST)


def test_cli_exit_codes_and_messages(weights, clips, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["process", str(clips["a"]), "-o", str(tmp_path / "out"), "-w", weights,
                             "--short-side", "64", "-q", "--json", str(tmp_path / "s.json")])
    assert ok.exit_code == 0, ok.output
    assert "complete" in ok.output and json.loads((tmp_path / "s.json").read_text())["exit_code"] == 0
    bad = runner.invoke(cli, ["process", str(clips["garbage"]), "-o", str(tmp_path / "out"), "-w", weights,
                              "--short-side", "64", "-q"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output and "garbage.mp4" in bad.output
    missing = runner.invoke(cli, ["process", str(clips["a"]), "-o", str(tmp_path / "o2"), "-w",
                                  str(tmp_path / "none.safetensors"), "-q"])
    assert missing.exit_code == 2 and "none.safetensors" in missing.output and "Traceback" not in missing.output
    usage = runner.invoke(cli, ["process", str(clips["a"]), "-o", str(tmp_path / "o3"), "--stride", "0"])
    assert usage.exit_code == 2 and "stride" in usage.output
