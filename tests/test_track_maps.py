"""Hand-made score maps through the post-model path (instances with weak blobs and refined boxes,
then the tracker): the ids each object must keep."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_pipe.inference.instances import anomaly_instances, weak_instances
from m2a_pipe.settings import INSTANCE_GAP, TRACK_WEAK_RATIO
from m2a_pipe.video.tracking import Tracker, TrackerConfig

SHAPE = (60, 100)  # a 1/4 map
THRESHOLD = 0.5


def blob(amap: np.ndarray, cx: float, cy: float, w: float, h: float, peak: float = 0.9) -> None:
    """Paint a soft box (the area fraction of a w x h box at (cx, cy), times ``peak``) into ``amap``."""
    ys, xs = np.mgrid[0:amap.shape[0], 0:amap.shape[1]]
    fx = np.clip(np.minimum(xs + 1, cx + w / 2) - np.maximum(xs, cx - w / 2), 0, 1)
    fy = np.clip(np.minimum(ys + 1, cy + h / 2) - np.maximum(ys, cy - h / 2), 0, 1)
    np.maximum(amap, peak * fx * fy, out=amap)


def track_maps(maps: list[np.ndarray], config: TrackerConfig = TrackerConfig(),
               frame_size: tuple[float, float] | None = (SHAPE[1], SHAPE[0])) -> list[list[tuple]]:
    """Per frame, the (track id, box) of each detection, as the pipeline finds and tracks them
    (the frame is the whole map, as for an input that needs no padding)."""
    tracker, out = Tracker(config, frame_size=frame_size), []
    for k, amap in enumerate(maps):
        dets = anomaly_instances(amap, THRESHOLD, 1, upsample=4, gap=INSTANCE_GAP)
        weak = weak_instances(amap, TRACK_WEAK_RATIO * THRESHOLD, THRESHOLD, 1, upsample=4)
        out += tracker.update(k, dets, weak)
    out += tracker.finish()
    assert [f.frame for f in out] == list(range(len(maps)))
    return [[(tid, inst.box) for inst, tid in f.detections] for f in out]


def test_small_object_drifting_and_shrinking_keeps_one_id():
    # 5x4 cells shrinking to 2.7x2.2 while drifting 1.6 cells a frame: its last frames peak
    # under the threshold (weak blobs) yet stay on the track
    maps = []
    for t in range(24):
        amap = np.zeros(SHAPE, np.float32)
        size = 5.0 - 0.1 * t
        blob(amap, 10 + 1.6 * t, 20 + 0.3 * t, size, size * 0.8, peak=0.95 if t < 18 else 0.42)
        maps.append(amap)
    frames = track_maps(maps)
    assert all(len(f) == 1 for f in frames)
    assert [f[0][0] for f in frames] == [1] * 24
    x0, _, x1, _ = frames[10][0][1]  # refined box: within a fifth of a cell of the true extent
    true_cx, true_w = 10 + 16, 5.0 - 1.0
    assert x0 == pytest.approx(true_cx - true_w / 2, abs=0.25) and x1 == pytest.approx(true_cx + true_w / 2, abs=0.25)


def test_two_objects_crossing_keep_their_ids():
    maps = []
    for t in range(30):  # A goes right, B goes left, two cells apart vertically: boxes overlap mid-way
        amap = np.zeros(SHAPE, np.float32)
        blob(amap, 10 + 2.5 * t, 20, 6, 6)
        blob(amap, 85 - 2.5 * t, 29, 6, 6)
        maps.append(amap)
    frames = track_maps(maps)
    for t, f in enumerate(frames):
        assert len(f) == 2, t
        ids_top_to_bottom = [tid for tid, _ in sorted(f, key=lambda d: d[1][1])]
        assert ids_top_to_bottom == [1, 2], (t, f)  # A (the upper one) is 1 before, during and after


def test_object_split_into_fragments_is_one_track():
    maps = []
    for t in range(20):  # a 14x6 object whose middle drops out every other frame: two pieces 3 cells apart
        amap = np.zeros(SHAPE, np.float32)
        blob(amap, 30 + t, 30, 14, 6)
        if t % 2 and t > 3:
            amap[:, int(30 + t) - 1:int(30 + t) + 2] = 0.1
        maps.append(amap)
    assert len(anomaly_instances(maps[5], THRESHOLD, gap=INSTANCE_GAP)) == 2  # two fragments in the map
    frames = track_maps(maps)
    for t, f in enumerate(frames):
        assert [tid for tid, _ in f] == [1], (t, f)  # merged into one detection of track 1
        x0, _, x1, _ = f[0][1]
        assert x1 - x0 == pytest.approx(14, abs=0.5)


def test_object_lost_for_a_few_frames_takes_its_id_back():
    maps = []
    for t in range(30):  # hidden in frames 10..17 (8 misses: more than max_misses), then found again
        amap = np.zeros(SHAPE, np.float32)
        if not 10 <= t < 18:
            blob(amap, 20 + 0.8 * t, 25, 5, 5)
        if t >= 22:
            blob(amap, 80, 50, 4, 4)  # another object, far away: a new id
        maps.append(amap)
    config = TrackerConfig(max_misses=5)
    frames = track_maps(maps, config)
    assert [f[0][0] if f else None for f in frames[:10]] == [1] * 10
    assert all(f == [] for f in frames[10:18])
    ids_after = [sorted(tid for tid, _ in f) for f in frames[18:]]
    assert ids_after == [[1]] * 4 + [[1, 2]] * 8
    # without rejoining, the re-found object would have been a second track
    frames = track_maps(maps, TrackerConfig(max_misses=5, rejoin_frames=0))
    assert sorted({tid for f in frames[18:] for tid, _ in f}) == [2, 3]


def test_refined_box_follows_the_true_edge_and_weak_blobs_are_apart():
    amap = np.zeros(SHAPE, np.float32)
    blob(amap, 20.3, 15.6, 3.4, 2.2, peak=1.0)  # edges inside cells: the grid box is off by up to a cell
    blob(amap, 60, 40, 3, 3, peak=0.4)  # under the threshold, over its weak fraction
    (inst,) = anomaly_instances(amap, THRESHOLD, upsample=8)
    assert inst.bbox == (19, 14, 22, 17)
    for got, want in zip(inst.box, (18.6, 14.5, 22.0, 16.7)):
        assert got == pytest.approx(want, abs=0.2)
    (weak,) = weak_instances(amap, TRACK_WEAK_RATIO * THRESHOLD, THRESHOLD)
    assert weak.bbox[0] >= 58 and weak.peak_score == pytest.approx(0.4)
    assert anomaly_instances(amap, THRESHOLD)[0].fine_bbox is None  # not refined unless asked


def test_two_objects_that_touch_then_part_keep_apart():
    """A large object moving left and a small still one at its edge, touching at first (one blob
    in the map), then parting: the large one's detection still covers most of its predicted box,
    so the small one is no fragment of it; once apart it is its own track, and the large one's box
    is its own width (fragments are merged only into a detection that misses a good part of its
    track's box: here the small one would have ridden on the large one's track to the end)."""
    maps = []
    for t in range(30):
        amap = np.zeros(SHAPE, np.float32)
        blob(amap, 60 - 1.0 * t, 30, 24, 14)       # spans x 48..72 at t = 0
        blob(amap, 73, 33, 3, 3)                   # x 71.5..74.5: inside the large one's edge at t = 0
        maps.append(amap)
    assert len(anomaly_instances(maps[0], THRESHOLD, gap=INSTANCE_GAP)) == 1  # touching: one blob
    assert len(anomaly_instances(maps[5], THRESHOLD, gap=INSTANCE_GAP)) == 2  # apart from frame 5 on
    frames = track_maps(maps)
    for t, f in enumerate(frames[10:], start=10):
        assert len(f) == 2 and len({tid for tid, _ in f}) == 2 and 0 not in {tid for tid, _ in f}, (t, f)
        (_, large), = [d for d in f if d[1][0] < 60]
        assert large[2] - large[0] == pytest.approx(24, abs=1), (t, large)


def test_two_objects_that_overlap_then_drift_apart_part_tracks():
    """Two objects of about one size overlapping (one blob) then drifting apart, as two objects
    side by side on the road do while the car comes closer: their blob is one track; once the
    gap between them is wider than the smaller one, each has its own track, and the first keeps
    id 1. Without the gap limit the far piece is merged into the track's detection as long as it
    lies in the track's (growing) box, and the glued track is lost once the pieces are out of it."""
    maps = []
    for t in range(30):
        amap = np.zeros(SHAPE, np.float32)
        blob(amap, 44 - 0.8 * t, 30, 9, 8)
        blob(amap, 47 + 0.8 * t, 27, 7, 7)
        maps.append(amap)
    frames = track_maps(maps)
    assert [[tid for tid, _ in f] for f in frames[:5]] == [[1]] * 5  # one blob: one object for all we know
    for t, f in enumerate(frames[10:], start=10):
        assert sorted(tid for tid, _ in f) == [1, 2], (t, f)
        assert all(b[2] - b[0] < 10 for _, b in f), (t, f)  # each box one object's
    glued = track_maps(maps, TrackerConfig(merge_max_gap=1e9))
    assert sorted({tid for f in glued for tid, _ in f}) == [1, 2, 3]


def test_a_coasting_track_takes_no_faint_blob_away_from_its_prediction():
    """An object hidden from frame 12 on; 2.6 of its diagonals away another one shows faintly
    (under the threshold) from frame 15, while the hidden one's track still coasts, then clearly
    from frame 18. Weak detections are matched without the coasting slack, so the faint blob
    does not carry the hidden object's id: it is a new object, 2."""
    maps = []
    for t in range(30):
        amap = np.zeros(SHAPE, np.float32)
        if t < 12:
            blob(amap, 30, 30, 6, 6)
        if t >= 15:
            blob(amap, 52, 31, 6, 6, peak=0.4 if t < 18 else 0.9)
        maps.append(amap)
    frames = track_maps(maps)
    assert [[tid for tid, _ in f] for f in frames] == [[1]] * 12 + [[]] * 6 + [[2]] * 12


def test_a_wide_band_never_takes_a_small_objects_track():
    """A small object tracked for 12 frames, then missed for two while a wide band lights up
    along the bottom of the map (as a model may light up the road's edge): the band is far
    apart in size, so it neither continues the small track nor, found again later, takes its id;
    the small object keeps its id when it comes back."""
    maps = []
    for t in range(30):
        amap = np.zeros(SHAPE, np.float32)
        if not 12 <= t < 14:
            blob(amap, 30 + 0.5 * t, 20, 4, 4)
        if t >= 12:
            blob(amap, 50, 54, 90, 6)
        maps.append(amap)
    frames = track_maps(maps)
    small = [[tid for tid, box in f if box[2] - box[0] < 10] for f in frames]
    band = {tid for f in frames for tid, box in f if box[2] - box[0] > 80}
    assert small[:12] == [[1]] * 12 and small[14:] == [[1]] * 16
    assert band == {2}
    # without the size gate, the coasting small track takes the band the first frame it misses
    frames = track_maps(maps, TrackerConfig(max_size_change=1e9))
    assert [tid for tid, box in frames[12] if box[2] - box[0] > 80] == [1]


def box_map(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A map of the area fraction of the box (x0, y0)-(x1, y1) in each cell, times 0.9; the part
    outside the map is cut off."""
    ys, xs = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    fx = np.clip(np.minimum(xs + 1, x1) - np.maximum(xs, x0), 0, 1)
    fy = np.clip(np.minimum(ys + 1, y1) - np.maximum(ys, y0), 0, 1)
    return (0.9 * fx * fy).astype(np.float32)


def test_an_object_leaving_the_frame_keeps_its_id_to_its_last_frame():
    """An object coming closer grows and slides down-left out of the frame, as one passing beside
    the car does (boxes scaled from a synthetic clip): its box is cut at the bottom edge from frame
    12 on, and in its last frame only its top strip shows. Its predicted box runs past the bottom;
    the part of it inside the frame is 2.8x as high as that strip, the whole of it more than 3x."""
    boxes = []
    for t in range(10):
        s = 1.25 ** (t - 10)
        cx, cy = 36 + 0.6 * (10 - t), 38 - 1.1 * (10 - t)
        boxes.append((cx - 11 * s, cy - 11 * s, cx + 11 * s, cy + 11 * s))
    boxes += [(25, 27, 47, 49), (20, 28, 47, 54), (13, 28.5, 46, 63), (1.5, 29, 44, 70), (0, 49, 40, 90)]
    maps = [box_map(*b) for b in boxes]
    frames = track_maps(maps)
    assert [[tid for tid, _ in f] for f in frames] == [[1]] * len(boxes)
    assert frames[-1][0][1][1] == pytest.approx(49, abs=0.3) and frames[-1][0][1][3] == 60
    # compared whole with the strip, the prediction is another size: the last frame is no track's
    assert [tid for tid, _ in track_maps(maps, frame_size=None)[-1]] == [0]
