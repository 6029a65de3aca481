"""Synthetic clips: H.264 decodes to the requested frames; ground truth and tracks agree."""

from __future__ import annotations

import json

import av
import h5py
import numpy as np
import pytest

from m2a_pipe.errors import UsageError
from m2a_pipe.synth import write_video
from m2a_pipe.synth.video import gt_paths

SECONDS, FPS, SIZE = 3.0, 8, (128, 64)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "drive.mp4"
    summary = write_video(path, seed=2, seconds=SECONDS, fps=FPS, size=SIZE, anomalies="eval")
    return path, summary


def test_decodes_to_requested_frames(clip):
    path, summary = clip
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f for f in container.decode(stream)]
    assert len(frames) == int(SECONDS * FPS) == summary["frames"]
    assert (frames[0].width, frames[0].height) == SIZE
    assert frames[0].format.name == "yuv420p"
    assert [round(float(f.time) * FPS) for f in frames] == list(range(len(frames)))


def test_ground_truth_matches(clip):
    path, summary = clip
    gt, tracks_path = gt_paths(path)
    with h5py.File(gt, "r") as h5:
        assert h5["anomaly_mask"].shape == (summary["frames"], SIZE[1], SIZE[0])
        mask, ids = h5["anomaly_mask"][:], h5["track_ids"][:]
        assert h5.attrs["fps"] == FPS and h5.attrs["frames"] == summary["frames"]
        assert (h5["semantic"][:][mask == 1] == 255).all()
    assert set(np.unique(mask).tolist()) <= {0, 1}
    np.testing.assert_array_equal(ids > 0, mask == 1)
    data = json.loads(tracks_path.read_text())
    assert data["frames"] == summary["frames"]
    tracks = {t["id"]: t for t in data["tracks"]}
    assert tracks, "the clip should show at least one anomaly"
    assert set(np.unique(ids).tolist()) - {0} == set(tracks)
    for tid, tr in tracks.items():
        visible = np.flatnonzero((ids == tid).any(axis=(1, 2)))
        assert tr["first_frame"] == visible[0] and tr["last_frame"] == visible[-1]
        assert [b[0] for b in tr["boxes"]] == visible.tolist() and tr["family"] == "eval"


def test_track_ids_persist_across_consecutive_frames(clip):
    """An anomaly keeps its id: consecutive frames overlap where the same id is present."""
    path, _ = clip
    with h5py.File(gt_paths(path)[0], "r") as h5:
        ids = h5["track_ids"][:]
    checked = 0
    for i in range(len(ids) - 1):
        for tid in set(np.unique(ids[i]).tolist()) & set(np.unique(ids[i + 1]).tolist()) - {0}:
            a, b = ids[i] == tid, ids[i + 1] == tid
            ya, xa = np.nonzero(a)
            yb, xb = np.nonzero(b)
            # the object moves by a few pixels per frame, never jumps across the image
            assert abs(xa.mean() - xb.mean()) < SIZE[0] / 4 and abs(ya.mean() - yb.mean()) < SIZE[1] / 4
            checked += 1
    assert checked > 0


def test_deterministic(tmp_path, clip):
    _, summary = clip
    again = write_video(tmp_path / "again.mp4", seed=2, seconds=SECONDS, fps=FPS, size=SIZE, anomalies="eval")
    assert again["tracks"] == summary["tracks"]


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError, match="mp4"):
        write_video(tmp_path / "x.avi", 0, 1, 5)
    with pytest.raises(UsageError, match="even"):
        write_video(tmp_path / "x.mp4", 0, 1, 5, size=(127, 64))
