"""Tracker: identities, birth / death, the fixed output lag, its Detections; MOT metrics."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_pipe.inference.instances import Instance
from m2a_pipe.video.detections import Detections
from m2a_pipe.video.tracking import FrameTracks, Tracker, TrackerConfig, association_cost, box_gap, box_iou, size_ratio


def inst(cx: float, cy: float, w: float = 10, h: float = 10, score: float = 0.9) -> Instance:
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    x1, y1 = x0 + int(round(w)), y0 + int(round(h))
    mask = np.ones((y1 - y0, x1 - x0), bool)
    return Instance(bbox=(x0, y0, x1, y1), area=int(mask.sum()), peak_score=score, mean_score=score,
                    centroid=((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2), mask=mask)


def run(tracker: Tracker, frames: list[list[Instance]], start: int = 0) -> list[FrameTracks]:
    out = []
    for k, dets in enumerate(frames):
        out += tracker.update(start + k, dets)
    return out + tracker.finish()


def frames_and_ids(out: list[FrameTracks]) -> list[tuple[int, tuple[int, ...]]]:
    return [(f.frame, f.track_ids) for f in out]


def test_box_iou_and_cost():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])
    cost = association_cost(a, b, 1.0, 0.5)
    assert cost[0, 0] == 0.0 and cost[0, 0] < cost[0, 1] < cost[0, 2]


def test_size_ratio_is_the_larger_side_ratio_either_way():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [0, 0, 30, 12], [5, 5, 7.5, 10], [0, 0, 0.2, 10]], float)
    np.testing.assert_allclose(size_ratio(a, b), [[1.0, 3.0, 4.0, 10.0]])  # a sliver counts as 1 px
    np.testing.assert_allclose(size_ratio(b, a), size_ratio(a, b).T)
    with pytest.raises(ValueError, match="max_size_change"):
        TrackerConfig(max_size_change=0.5)
    with pytest.raises(ValueError, match="merge_max_gap"):
        TrackerConfig(merge_max_gap=-1)
    with pytest.raises(ValueError, match="frame_size"):
        Tracker(frame_size=(100, 0))


def test_box_gap_is_the_larger_distance_between_the_sides():
    a = np.array([0, 0, 10, 10], float)
    assert box_gap(a, np.array([5, 5, 20, 20], float)) == 0  # overlapping
    assert box_gap(a, np.array([10, 0, 20, 10], float)) == 0  # touching
    assert box_gap(a, np.array([14, 12, 20, 30], float)) == 4  # 4 apart across, 2 down
    assert box_gap(np.array([14, 12, 20, 30], float), a) == 4


def test_a_detection_three_times_wider_is_another_object():
    # a 10x10 object tracked for 8 frames, then only a 40x10 blob over it: not its continuation
    frames = [[inst(50 + t, 50)] for t in range(8)] + [[inst(58 + t, 50, 40, 10)] for t in range(8)]
    out = run(Tracker(TrackerConfig(max_misses=2)), frames)
    assert [f.track_ids for f in out] == [(1,)] * 8 + [(2,)] * 8
    out = run(Tracker(TrackerConfig(max_misses=2, max_size_change=5.0)), frames)
    assert [f.track_ids for f in out] == [(1,)] * 16


def test_crossing_objects_keep_ids():
    rng = np.random.default_rng(0)
    frames = []
    for t in range(30):  # A goes right, B goes left; at t = 15 their boxes overlap
        a = inst(20 + 4 * t + rng.normal(0, 0.7), 50 + rng.normal(0, 0.7), 12, 12)
        b = inst(140 - 4 * t + rng.normal(0, 0.7), 53 + rng.normal(0, 0.7), 12, 12)
        frames.append([a, b] if t % 2 else [b, a])  # detection order changes every frame
    out = run(Tracker(), frames)
    assert [f.frame for f in out] == list(range(30))
    for t, f in enumerate(out):
        want = (2, 1) if t % 2 else (1, 2)  # B is first in frame 0, so B is 1
        assert f.track_ids == want, (t, f.track_ids)


def test_small_fast_object_matches_without_overlap():
    # 6x6 box moving 9 px per frame: consecutive boxes never overlap, the velocity carries it
    frames = [[inst(10 + 9 * t, 40, 6, 6)] for t in range(12)]
    out = run(Tracker(), frames)
    assert all(f.track_ids == (1,) for f in out)


def test_gap_of_two_misses_keeps_id():
    frames = [[inst(30 + 3 * t, 40)] if t not in (8, 9) else [] for t in range(20)]
    out = run(Tracker(TrackerConfig(max_misses=5)), frames)
    for t, f in enumerate(out):
        assert f.track_ids == (() if t in (8, 9) else (1,))


def test_single_frame_false_detection_never_confirmed():
    frames = [[inst(50, 50)] for _ in range(10)]
    frames[4] = frames[4] + [inst(150, 20, 5, 5)]
    out = run(Tracker(), frames)
    assert out[4].track_ids == (1, 0)
    assert {i for f in out for i in f.track_ids} == {0, 1}


def test_birth_needs_min_hits_and_lag_labels_first_frames():
    tracker = Tracker(TrackerConfig(min_hits=3))
    assert tracker.lag == 2
    assert tracker.update(0, [inst(20, 20)]) == []
    assert tracker.update(1, [inst(22, 20)]) == []
    out = tracker.update(2, [inst(24, 20)])
    assert frames_and_ids(out) == [(0, (1,))]  # frame 0 already carries the id confirmed at frame 2
    assert frames_and_ids(tracker.update(3, [inst(26, 20)])) == [(1, (1,))]
    assert frames_and_ids(tracker.finish()) == [(2, (1,)), (3, (1,))]
    # two hits only (then lost): never confirmed
    out = run(Tracker(TrackerConfig(min_hits=3)), [[inst(20, 20)], [inst(22, 20)], [], []])
    assert [f.track_ids for f in out] == [(0,), (0,), (), ()]


def test_min_hits_one_has_no_lag():
    tracker = Tracker(TrackerConfig(min_hits=1))
    assert tracker.lag == 0
    assert frames_and_ids(tracker.update(5, [inst(20, 20), inst(80, 80)])) == [(5, (1, 2))]


def test_every_frame_once_in_order_and_ids_without_gaps():
    rng = np.random.default_rng(3)
    frames, keys = [], []
    for t in range(60):  # three objects appearing at different times, random clutter
        dets = [inst(10 + 2 * t, 30)] if t >= 0 else []
        if 10 <= t < 40:
            dets.append(inst(200 - 3 * t, 100))
        if t >= 25:
            dets.append(inst(60, 160 + t, 14, 8))
        if rng.random() < 0.3:
            dets.append(inst(rng.uniform(0, 300), rng.uniform(0, 300), 4, 4))
        frames.append(dets)
        keys.append(3 * t + 7)  # any increasing keys
    tracker = Tracker()
    out = []
    for key, dets in zip(keys, frames):
        out += tracker.update(key, dets)
    out += tracker.finish()
    assert [f.frame for f in out] == keys
    assert [len(f.track_ids) for f in out] == [len(d) for d in frames]
    ids = sorted({i for f in out for i in f.track_ids if i})
    assert ids == list(range(1, tracker.n_confirmed + 1)) and len(ids) >= 3
    first_seen = [next(k for k, f in enumerate(out) if i in f.track_ids) for i in ids]
    assert first_seen == sorted(first_seen)  # ids in confirmation (= first appearance) order


def test_death_after_max_misses_then_new_id():
    cfg = TrackerConfig(min_hits=3, max_misses=2, rejoin_frames=0)
    # same place: a gap of 2 misses is bridged, a gap of 3 kills the track
    frames = [[inst(50, 50)]] * 4 + [[]] * 2 + [[inst(50, 50)]] * 4 + [[]] * 3 + [[inst(50, 50)]] * 4
    out = run(Tracker(cfg), frames)
    ids = [f.track_ids for f in out]
    assert ids[:4] == [(1,)] * 4 and ids[6:10] == [(1,)] * 4
    assert ids[13:] == [(2,)] * 4
    # remembered for rejoin_frames: the object found again at the same place takes id 1 back,
    # but one found far away is another object
    out = run(Tracker(TrackerConfig(min_hits=3, max_misses=2, rejoin_frames=10)), frames)
    assert [f.track_ids for f in out][13:] == [(1,)] * 4
    far = frames[:13] + [[inst(150, 150)]] * 4
    assert [f.track_ids for f in run(Tracker(TrackerConfig(min_hits=3, max_misses=2)), far)][13:] == [(2,)] * 4


def test_frames_must_increase_and_no_update_after_finish():
    tracker = Tracker()
    tracker.update(3, [])
    with pytest.raises(ValueError):
        tracker.update(3, [])
    tracker.finish()
    with pytest.raises(RuntimeError):
        tracker.update(4, [])


def test_deterministic():
    rng = np.random.default_rng(1)
    frames = [[inst(*rng.uniform(0, 100, 2)) for _ in range(rng.integers(0, 6))] for _ in range(40)]
    a, b = run(Tracker(), frames), run(Tracker(), frames)
    def key(out):  # merged fragments are new Instance objects: compare what they hold
        return [(f.frame, f.track_ids, [(i.box, i.area) for i in f.detections.instances]) for f in out]
    assert key(a) == key(b) and len(a) == 40


def test_output_pairs_each_instance_with_its_id():
    tracker = Tracker(TrackerConfig(min_hits=2))
    frames = [[inst(20 + 2 * t, 20), inst(90, 90 - 2 * t)] for t in range(6)]
    frames[2] = [inst(150, 10, 4, 4)] + frames[2]  # a one-frame blob, first in its frame
    out = run(tracker, frames)
    for dets, f in zip(frames, out):
        assert isinstance(f.detections, Detections)
        assert f.detections.instances == tuple(dets)  # the very instances given, in the order given
        assert f.track_ids == f.detections.track_ids
    assert list(out[2].detections) == [(frames[2][0], 0), (frames[2][1], 1), (frames[2][2], 2)]
    assert out[2].detections.confirmed().instances == tuple(frames[2][1:])


# --------------------------------------------------------------------------------------
# Evaluation against synthetic ground truth (m2a_pipe.evaluation.tracking)
# --------------------------------------------------------------------------------------

N_GT_FRAMES = 40


def gt_json(tmp_path):
    """Two GT tracks over 40 frames: id 4 moves right, id 9 moves down (frames 5..34), plus a tiny one."""
    import json

    tracks = [
        {"id": 4, "boxes": [[f, 10 + 3 * f, 50, 20, 16, 320] for f in range(N_GT_FRAMES)]},
        {"id": 9, "boxes": [[f, 200, 5 + 2 * f, 12, 24, 288] for f in range(5, 35)]},
        {"id": 11, "boxes": [[f, 300, 300, 2, 2, 4] for f in range(10, 20)]},
    ]
    path = tmp_path / "clip.tracks.json"
    path.write_text(json.dumps({"frames": N_GT_FRAMES, "tracks": tracks}))
    return path


def gt_rows(swap_from: int | None = None, keep=lambda f: True):
    """Prediction rows (frame0, id, xyxy, conf) copying GT tracks 4 and 9 as ids 1 and 2."""
    rows = []
    for f in range(N_GT_FRAMES):
        a = (10 + 3 * f, 50, 30 + 3 * f, 66)
        ida, idb = (2, 1) if swap_from is not None and f >= swap_from else (1, 2)
        if keep(f):
            rows.append((f, ida, a, 0.9))
        if 5 <= f < 35 and keep(f):
            rows.append((f, idb, (200, 5 + 2 * f, 212, 29 + 2 * f), 0.8))
    return rows


def test_mot_metrics_perfect_prediction(tmp_path):
    pytest.importorskip("motmetrics")
    from m2a_pipe.evaluation.tracking import mot_metrics
    from m2a_pipe.video.mot import write_tracks_csv

    write_tracks_csv(tmp_path / "tracks.csv", gt_rows())
    m = mot_metrics(tmp_path / "tracks.csv", gt_json(tmp_path), min_gt_area=10)
    assert m["mota"] == 1.0 and m["idf1"] == 1.0 and m["num_switches"] == 0
    assert m["motp"] == pytest.approx(0.0) and m["mean_iou"] == pytest.approx(1.0)
    assert m["num_objects"] == 70 and m["recall"] == 1.0 and m["precision"] == 1.0
    # without ignoring the tiny GT track its 10 boxes are misses
    m = mot_metrics(tmp_path / "tracks.csv", gt_json(tmp_path))
    assert m["num_misses"] == 10 and m["recall"] == pytest.approx(70 / 80)
    # reading the 1-based CSV as if it were 0-based shifts every box by one frame (3 px of a 20 px box)
    shifted = mot_metrics(tmp_path / "tracks.csv", gt_json(tmp_path), frame_offset=0, min_gt_area=10)
    assert shifted["mean_iou"] < 0.95 and shifted["num_misses"] > 0


def test_mot_metrics_id_swap_lowers_idf1(tmp_path):
    pytest.importorskip("motmetrics")
    from m2a_pipe.evaluation.tracking import mot_metrics
    from m2a_pipe.video.mot import write_tracks_csv

    write_tracks_csv(tmp_path / "tracks.csv", gt_rows(swap_from=20))
    m = mot_metrics(tmp_path / "tracks.csv", gt_json(tmp_path), min_gt_area=10)
    assert m["num_switches"] == 2 and m["idf1"] < 0.8 and m["mota"] < 1.0
    assert m["recall"] == 1.0


def test_mot_metrics_half_the_boxes_gives_half_recall(tmp_path):
    pytest.importorskip("motmetrics")
    from m2a_pipe.evaluation.tracking import mot_metrics
    from m2a_pipe.video.mot import write_tracks_csv

    write_tracks_csv(tmp_path / "tracks.csv", gt_rows(keep=lambda f: f % 2 == 0))
    m = mot_metrics(tmp_path / "tracks.csv", gt_json(tmp_path), min_gt_area=10)
    assert m["recall"] == pytest.approx(0.5) and m["precision"] == 1.0 and m["num_misses"] == 35


def test_mot_metrics_frame_step(tmp_path):
    pytest.importorskip("motmetrics")
    from m2a_pipe.evaluation.tracking import mot_metrics
    from m2a_pipe.video.mot import write_tracks_csv

    # a run with stride 2 writes processed-frame counters: counter c is clip frame 2 c
    rows = [(f // 2, tid, box, conf) for f, tid, box, conf in gt_rows(keep=lambda f: f % 2 == 0)]
    write_tracks_csv(tmp_path / "tracks.csv", rows)
    m = mot_metrics(tmp_path / "tracks.csv", gt_json(tmp_path), frame_step=2, min_gt_area=10)
    assert m["mota"] == 1.0 and m["num_frames"] == N_GT_FRAMES // 2


def test_false_events_per_minute(tmp_path):
    from m2a_pipe.evaluation.tracking import false_events, false_events_per_minute
    from m2a_pipe.video.events import Event

    def ev(event_id, start, end, peak, box):
        return Event(event_id, "track", event_id, start, end, start / 10, end / 10, (end - start + 1) / 10,
                     end - start + 1, 0.9, peak, peak / 10, 10, 0.01, box)

    events = [
        ev(1, 0, 10, 5, [25, 52, 40, 60]),  # on GT 4 at frame 5 (box x 25..45)
        ev(2, 0, 10, 5, [100, 100, 120, 120]),  # nowhere near a GT box: false
        ev(3, 36, 39, 38, [205, 75, 210, 85]),  # where GT 9 was at frame 34, but it is gone by 36: false
        ev(4, 30, 39, 37, [205, 75, 210, 85]),  # GT 9 at frame 34 (its visible frame nearest the peak): true
        ev(6, 30, 39, 37, [205, 60, 210, 70]),  # GT 9 covered this at frame 30, not at 34: false
        ev(5, 0, 3, 1, [10, 10, 20, 20]).to_dict(),  # dicts (read back from events.jsonl) work too
    ]
    events[5]["bbox_at_peak"] = None  # a frame-run event without box: true if any GT track is visible
    assert false_events(events, gt_json(tmp_path)) == [2, 3, 6]
    rate = false_events_per_minute(events, gt_json(tmp_path), fps=10.0, n_frames=N_GT_FRAMES)
    assert rate == pytest.approx(3 / (4 / 60))
    # event boxes at half the GT resolution: scaled back, event 2 lands on GT 9 at frame 5 (x 200..212)
    events[1] = ev(2, 0, 10, 5, [101, 8, 104, 16])
    assert false_events(events, gt_json(tmp_path)) == [2, 3, 6]
    assert 2 not in false_events(events, gt_json(tmp_path), box_scale=(2.0, 2.0))


# --------------------------------------------------------------------------------------
# VideoAnalysis: every detection to /instances, confirmed ones to tracks.csv
# --------------------------------------------------------------------------------------


def test_only_confirmed_ids_reach_tracks_csv(tmp_path):
    h5py = pytest.importorskip("h5py")
    from m2a_pipe.inference.stage import FrameMaps
    from m2a_pipe.pipeline.analysis import AnalysisSettings, VideoAnalysis
    from m2a_pipe.pipeline.config import ProcessConfig
    from m2a_pipe.video.mot import read_tracks_csv

    settings = AnalysisSettings(input_size=(64, 96), map_shape=(16, 24), source_size=(128, 192), fps=10.0,
                                threshold=0.5, min_area=1, bounded=True, map_stride=4)
    analysis = VideoAnalysis(tmp_path, settings, ProcessConfig(overlay=False, save_maps=False), {"source": "x"})
    for t in range(8):
        anomaly = np.zeros((16, 24), np.float32)
        anomaly[4:8, 2 + t:6 + t] = 0.9  # one object moving right: a confirmed track
        if t == 3:
            anomaly[12:14, 20:22] = 0.8  # a one-frame blob: detected, never confirmed
        analysis.add(100 + t, t / 10, np.zeros((64, 96, 3), np.uint8), FrameMaps(anomaly, np.zeros((16, 24), np.uint8)))
        assert analysis.frames_received == t + 1
    summary = analysis.finish()
    assert summary["frames"] == 8 and analysis.frames_received == 8
    rows = read_tracks_csv(tmp_path / "tracks.csv")
    assert rows.shape == (8, 10) and set(rows[:, 1]) == {1}  # the blob (id 0) is not there
    with h5py.File(tmp_path / "scores.h5", "r") as f:
        instances = f["instances"][:]
    assert len(instances) == 9 and sorted(instances["track_id"].tolist()) == [0] + [1] * 8
    blob = instances[instances["track_id"] == 0][0]
    # grid box (160, 96, 176, 112) in source pixels; refined on the bilinear map, each edge sits
    # where 0.8 -> 0 between cell centres crosses 0.5: 5/8 of a cell (8 px) outside the centre
    assert blob["frame"] == 103 and (blob["x0"], blob["y0"], blob["x1"], blob["y1"]) == (161, 97, 175, 111)


def test_tracker_lifetimes_checked_once_for_the_process_settings_and_the_tracker():
    from m2a_pipe.errors import UsageError
    from m2a_pipe.pipeline.config import ProcessConfig

    for bad in ({"min_hits": 0}, {"max_misses": -1}):
        with pytest.raises(UsageError) as from_tracker:
            TrackerConfig(**bad)
        with pytest.raises(UsageError) as from_settings:
            ProcessConfig(**bad)
        assert str(from_tracker.value) == str(from_settings.value) and next(iter(bad)) in str(from_tracker.value)


def test_instance_recall_counts_visible_boxes_any_instance_matches():
    from m2a_pipe.evaluation.tracking import instance_recall

    a, b, tiny = np.array([0, 0, 10, 10.]), np.array([20, 0, 30, 10.]), np.array([50, 50, 52, 52.])
    gt = {0: [(1, a, 100), (2, b, 100), (3, tiny, 4)], 1: [(1, a, 100)], 2: [(1, a, 100)]}
    instances = {
        0: np.array([[1, 0, 10, 10], [0, 0, 30, 10], [50, 50, 52, 52]], float),  # a; a blob over a and b; tiny
        1: np.array([[0, 0, 4, 10]], float),  # IoU 0.4 with a: no match
        2: np.array([[0, 0, 10, 10]], float),  # frame 2 was not processed: not counted
    }
    got = instance_recall(instances, gt, frames=[0, 1], min_gt_area=10)
    assert got == {"gt_boxes": 3, "matched": 1, "recall": pytest.approx(1 / 3)}
    # one instance matches one box only, however well it fits two
    twin = {0: [(1, a, 100), (2, a + 0.5, 100)]}
    assert instance_recall({0: a[None]}, twin, frames=[0])["matched"] == 1
    assert np.isnan(instance_recall({}, {}, frames=[0])["recall"])
