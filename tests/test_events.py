"""Events from tracks and frame runs, thumbnails, events.jsonl, tracks CSV, timeline PNG, Detections."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from m2a_pipe.inference.instances import Instance
from m2a_pipe.video.detections import Detections, as_detections
from m2a_pipe.video.events import Event, EventBuilder, EventConfig, read_events, write_events
from m2a_pipe.video.mot import TracksCsvWriter, read_tracks_csv, write_tracks_csv
from m2a_pipe.video.thumbnails import BOX_RGB, thumbnail, thumbnail_name, write_thumbnail
from m2a_pipe.video.timeline import draw_timeline, event_lanes, nice_step

FPS = 10.0
IMG_H, IMG_W = 400, 640  # frames; the map is 1/4 of it
SCALE = (4.0, 4.0)


def inst(x0: int, y0: int, w: int, h: int, peak: float) -> Instance:
    mask = np.ones((h, w), bool)
    return Instance(bbox=(x0, y0, x0 + w, y0 + h), area=w * h, peak_score=peak, mean_score=peak * 0.8,
                    centroid=(x0 + (w - 1) / 2, y0 + (h - 1) / 2), mask=mask)


def image(k: int) -> np.ndarray:
    img = np.zeros((IMG_H, IMG_W, 3), np.uint8)
    img[..., 0] = k  # the frame number in the red channel, to find which frame a thumbnail came from
    return img


def feed(builder: EventBuilder, frames: list[list[tuple[Instance, int]]], scores=None, images=True) -> None:
    for k, dets in enumerate(frames):
        detections = Detections([d for d, _ in dets], [t for _, t in dets])
        builder.add(frame=k, pts_s=k / FPS, detections=detections,
                    image=image(k) if images else None, scale=SCALE, frame_score=None if scores is None else scores[k],
                    source_index=100 + k, image_size=(IMG_H, IMG_W))


def test_track_event_fields():
    frames = [[] for _ in range(30)]
    for k in range(5, 17):  # track 1: 12 frames (1.2 s), peak 0.95 at frame 9, area grows to 20x10 at frame 16
        w = 8 + k - 5 if k < 16 else 20
        frames[k].append((inst(10 + k, 20, w, 10, 0.95 if k == 9 else 0.7), 1))
    for k in range(20, 23):  # track 2: 0.3 s, too short
        frames[k].append((inst(60, 60, 5, 5, 0.99), 2))
    for k in range(3, 25):  # track 3: long but weak
        frames[k].append((inst(100, 10, 5, 5, 0.4), 3))
    for k in range(12, 14):  # a detection with id 0 is ignored
        frames[k].append((inst(5, 5, 5, 5, 0.99), 0))
    builder = EventBuilder(EventConfig(mode="tracks", min_duration_s=0.5, min_peak_score=0.5))
    feed(builder, frames)
    events, thumbs = builder.finish()
    assert len(events) == 1
    ev = events[0]
    assert (ev.event_id, ev.kind, ev.track_id) == (1, "track", 1)
    assert (ev.start_frame, ev.end_frame, ev.n_frames) == (105, 116, 12)
    assert ev.start_s == pytest.approx(0.5) and ev.end_s == pytest.approx(1.6)
    assert ev.duration_s == pytest.approx(1.2)
    assert (ev.peak_score, ev.peak_frame, ev.peak_s) == (0.95, 109, pytest.approx(0.9))
    assert ev.max_area_px == 200 and ev.max_area_fraction == pytest.approx(200 * 16 / (IMG_H * IMG_W))
    assert ev.bbox_at_peak == [76.0, 80.0, 124.0, 120.0]  # (19, 20, 31, 30) x 4
    thumb = thumbs[1]
    assert thumb.dtype == np.uint8 and thumb.ndim == 3 and max(thumb.shape[:2]) <= 256
    assert int(np.median(thumb[..., 0])) == 9  # cropped from the peak frame (the box drawn over it)


def test_duration_threshold_is_inclusive_in_frames():
    # exactly 5 frames at 10 fps = 0.5 s: an event; 4 frames: not
    for n, want in ((5, 1), (4, 0)):
        frames = [[] for _ in range(12)]
        for k in range(2, 2 + n):
            frames[k].append((inst(10, 10, 6, 6, 0.9), 4))
        builder = EventBuilder(EventConfig(min_duration_s=0.5, min_peak_score=0.5))
        feed(builder, frames, images=False)
        events, thumbs = builder.finish()
        assert len(events) == want and thumbs == {}


def test_events_ordered_by_start_with_ids_from_one():
    frames = [[] for _ in range(40)]
    for k in range(20, 30):
        frames[k].append((inst(10, 10, 6, 6, 0.9), 1))  # track 1 starts later than track 2
    for k in range(5, 35):
        frames[k].append((inst(80, 10, 6, 6, 0.8), 2))
    builder = EventBuilder()
    feed(builder, frames, images=False)
    events, _ = builder.finish()
    assert [(e.event_id, e.track_id) for e in events] == [(1, 2), (2, 1)]


def test_thumbnail_is_small_copy():
    big = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), np.uint8)
    t = thumbnail(big, [100, 100, 1500, 900], 0.25, 256)
    assert max(t.shape[:2]) == 256 and not np.shares_memory(t, big)
    t = thumbnail(big, [10, 10, 30, 20], 0.25, 256, draw_box=False)  # small box: margin 5 px, not resized
    assert t.shape == (20, 30, 3) and (t == big[5:25, 5:35]).all()
    assert not np.shares_memory(t, big)


def test_thumbnail_draws_the_box_and_only_shrinks():
    """The event's box is drawn on the crop in BOX_RGB where the box is; outside it the crop
    is the frame's pixels; a crop larger than max_px is shrunk, a smaller one keeps its pixels."""
    frame = np.full((540, 960, 3), 40, np.uint8)
    t = thumbnail(frame, [400, 200, 480, 260], 0.25, 256)  # 80x60 box, 20 px margin: 120x100 crop
    assert t.shape == (100, 120, 3)
    assert tuple(t[20, 60]) == BOX_RGB and tuple(t[50, 20]) == BOX_RGB  # top edge, left edge
    assert tuple(t[50, 60]) == (40, 40, 40) and tuple(t[5, 5]) == (40, 40, 40)  # inside, margin
    assert (frame == 40).all()  # the frame itself is untouched
    whole = thumbnail(frame, [0, 0, 960, 540], 0.25, 256)  # a frame event: no box around everything
    assert whole.shape == (144, 256, 3) and (whole == 40).all()


def test_frame_run_events_with_gaps():
    scores = np.zeros(60)
    scores[5:12] = 0.8  # frames 5..11
    scores[14:20] = 0.9  # gap of 2 (12, 13) is bridged -> run 5..19
    scores[19] = 0.95
    scores[30:33] = 0.9  # 0.3 s: too short
    scores[40:46] = 0.7  # frames 40..45
    scores[49:52] = 0.7  # gap of 3 (46, 47, 48): separate, too short
    frames = [[(inst(20, 20, 10, 8, 0.9), 0)] if k == 19 else [] for k in range(60)]
    builder = EventBuilder(EventConfig(mode="frames", min_duration_s=0.5, min_peak_score=0.5,
                                       frame_threshold=0.6, max_gap_frames=2))
    feed(builder, frames, scores=scores)
    events, thumbs = builder.finish()
    spans = [(e.kind, e.track_id, e.start_frame, e.end_frame, e.n_frames) for e in events]
    assert spans == [("frames", None, 105, 119, 13), ("frames", None, 140, 145, 6)]
    first = events[0]
    assert first.peak_score == pytest.approx(0.95) and first.peak_frame == 119
    assert first.bbox_at_peak == [80.0, 80.0, 120.0, 112.0] and first.max_area_px == 80
    assert events[1].bbox_at_peak is None and events[1].max_area_px == 0
    assert set(thumbs) == {1, 2} and max(thumbs[2].shape[:2]) <= 256  # whole frame, shrunk
    with pytest.raises(ValueError):
        EventBuilder(EventConfig(mode="frames")).add(frame=0, pts_s=0.0)


def test_events_jsonl_round_trip_and_thumbnails(tmp_path):
    frames = [[(inst(10 + k, 20, 12, 10, 0.5 + k / 100), 1)] if 2 <= k < 20 else [] for k in range(25)]
    builder = EventBuilder()
    feed(builder, frames)
    events, thumbs = builder.finish()
    written = write_events(tmp_path, events, thumbs)
    assert written[0].thumbnail == "thumbs/event_0001.jpg"
    jpg = tmp_path / written[0].thumbnail
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and max(im.size) <= 256
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert set(data) == {"event_id", "kind", "track_id", "start_frame", "end_frame", "start_s", "end_s",
                         "duration_s", "n_frames", "peak_score", "peak_frame", "peak_s", "max_area_px",
                         "max_area_fraction", "bbox_at_peak", "thumbnail"}
    assert read_events(tmp_path) == written
    assert Event.from_dict(json.loads(written[0].to_json())) == written[0]
    (tmp_path / "empty").mkdir()
    write_events(tmp_path / "empty", [], {})
    assert (tmp_path / "empty" / "events.jsonl").read_text() == ""


def test_tracks_csv_is_one_based(tmp_path):
    path = tmp_path / "tracks.csv"
    with TracksCsvWriter(path) as w:
        w.write(0, 1, (10, 20, 30.5, 60), 0.875)
        w.write(9, 3, (0, 0, 4, 4), 1.0)
        with pytest.raises(ValueError):
            w.write(0, 0, (0, 0, 1, 1), 1.0)
    assert path.read_text().splitlines() == ["1,1,10,20,20.5,40,0.8750,-1,-1,-1", "10,3,0,0,4,4,1.0000,-1,-1,-1"]
    rows = read_tracks_csv(path)
    np.testing.assert_allclose(rows[:, :6], [[1, 1, 10, 20, 20.5, 40], [10, 3, 0, 0, 4, 4]])
    assert write_tracks_csv(tmp_path / "b.csv", [(4, 2, (1, 2, 3, 4), 0.5)]) == 1
    assert (tmp_path / "b.csv").read_text().startswith("5,2,1,2,2,2,")
    (tmp_path / "empty.csv").touch()
    assert read_tracks_csv(tmp_path / "empty.csv").shape == (0, 10)


def test_timeline_png(tmp_path):
    t = np.arange(300) / 30.0
    s = 0.3 + 0.6 * np.exp(-((t - 5) ** 2))
    s[100:110] = np.nan
    ev = Event(1, "frames", None, 130, 170, 130 / 30, 170 / 30, 41 / 30, 41, 0.9, 150, 5.0, 0, None, None)
    path = tmp_path / "sub" / "timeline.png"
    draw_timeline(path, t, s, [ev], threshold=0.6, title="clip.mp4", size=(900, 240))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (900, 240)
        arr = np.asarray(im.convert("RGB"))
    assert (np.all(arr == (255, 214, 160), axis=2)).sum() > 1000  # the event is shaded
    assert (np.all(arr == (210, 30, 30), axis=2)).sum() > 100  # the threshold line
    draw_timeline(tmp_path / "empty.png", np.zeros(0), np.zeros(0), [])  # no frames: still a PNG
    with Image.open(tmp_path / "empty.png") as im:
        assert im.size == (1200, 300)


def test_timeline_label_rows_never_overlap():
    # spans in pixels, labels 20 px wide: overlapping or close events go to the next row
    assert event_lanes([(0, 50), (10, 60), (20, 30), (100, 120), (105, 110)], [20] * 5) == [0, 1, 2, 0, 1]
    assert event_lanes([(0, 5), (8, 12)], [20, 20]) == [0, 1]  # short spans: the label's width counts
    assert event_lanes([(i, i + 1) for i in range(7)], [20] * 7) == [0, 1, 2, 3, 4, -1, -1]  # no room: no label


def test_timeline_legend_reference_and_busy_events(tmp_path):
    t = np.arange(200) / 10.0
    tracked = np.where((t > 3) & (t < 15), 0.8, np.nan)
    p99 = np.full(200, 0.2)
    events = [Event(i, "track", i, 30 + 5 * i, 60 + 5 * i, 3 + 0.5 * i, 6 + 0.5 * i, 3.1, 30, 0.8, 40, 4.0, 10,
                    None, None) for i in range(1, 13)]  # twelve overlapping events
    path = tmp_path / "timeline.png"
    draw_timeline(path, t, tracked, events, threshold=0.5, title="busy.mp4", signal="tracked score",
                  references=[(p99, "99th percentile")])
    arr = np.asarray(Image.open(path).convert("RGB"))
    assert (np.all(arr == (160, 160, 160), axis=2)).sum() > 500  # the reference curve (and its legend line)
    assert (np.all(arr == (30, 80, 200), axis=2)).sum() > 500  # the signal, thick
    assert (np.all(arr == (235, 150, 60), axis=2)).sum() > 5 * 2 * 100  # a bar in each of the 5 rows
    with pytest.raises(ValueError):
        draw_timeline(path, t, tracked, references=[(p99[:5], "short")])


def test_nice_step():
    assert nice_step(10.0, 10) == 1.0 and nice_step(95.0, 10) == 10.0 and nice_step(0.8, 4) == 0.2


def test_thumbnail_written_as_jpeg(tmp_path):
    thumb = np.full((30, 40, 3), (200, 10, 10), np.uint8)
    assert thumbnail_name(7) == "thumbs/event_0007.jpg"
    assert write_thumbnail(tmp_path, 7, thumb) == "thumbs/event_0007.jpg"
    with Image.open(tmp_path / "thumbs" / "event_0007.jpg") as im:
        assert im.format == "JPEG" and im.size == (40, 30)
        assert np.abs(np.asarray(im).astype(int) - (200, 10, 10)).max() < 8


# --------------------------------------------------------------------------------------
# Detections: a frame's instances with their track ids
# --------------------------------------------------------------------------------------


def test_detections_pairs_and_confirmed():
    a, b, c = inst(0, 0, 4, 4, 0.9), inst(10, 0, 4, 4, 0.8), inst(20, 0, 4, 4, 0.7)
    dets = Detections([a, b, c], [3, 0, 1])
    assert isinstance(dets.instances, tuple) and dets.track_ids == (3, 0, 1) and len(dets) == 3
    assert list(dets) == [(a, 3), (b, 0), (c, 1)]
    conf = dets.confirmed()
    assert list(conf) == [(a, 3), (c, 1)]  # id 0 dropped, order kept
    assert len(Detections().confirmed()) == 0
    untracked = Detections.untracked([a, b])
    assert untracked.track_ids == (0, 0) and len(untracked.confirmed()) == 0
    assert as_detections(dets) is dets and as_detections([a]).track_ids == (0,)


def test_detections_reject_mismatched_or_negative_ids():
    a = inst(0, 0, 4, 4, 0.9)
    with pytest.raises(ValueError, match="2 track ids for 1 instances"):
        Detections([a], [1, 2])
    with pytest.raises(ValueError):
        Detections([a], [])
    with pytest.raises(ValueError):
        Detections([a], [-1])


def test_unconfirmed_detections_make_no_track_event():
    frames = [[(inst(10, 10, 6, 6, 0.9), 0)] for _ in range(20)]  # detected all along, never confirmed
    builder = EventBuilder(EventConfig(mode="tracks", min_duration_s=0.5))
    feed(builder, frames, images=False)
    assert builder.finish()[0] == []


def test_a_track_wider_than_half_the_frame_makes_no_event():
    """A band along the frame's edge (the bonnet, a border response) is tracked but raises no event."""
    builder = EventBuilder(EventConfig(min_duration_s=0.0))
    band = Instance(bbox=(0, 70, 60, 80), area=600, peak_score=0.9, mean_score=0.9, centroid=(30, 75),
                    mask=np.ones((10, 60), bool))
    small = Instance(bbox=(10, 10, 20, 20), area=100, peak_score=0.9, mean_score=0.9, centroid=(15, 15),
                     mask=np.ones((10, 10), bool))
    for k in range(6):  # the band is 60 of 100 map px wide in 4 of its 6 frames, the object never
        wide = band if k < 4 else Instance(bbox=(0, 70, 30, 80), area=300, peak_score=0.9, mean_score=0.9,
                                           centroid=(15, 75), mask=np.ones((10, 30), bool))
        builder.add(frame=k, pts_s=k / 10, detections=Detections((wide, small), (1, 2)), image_size=(80, 100))
    events, _ = builder.finish()
    assert [ev.track_id for ev in events] == [2]
    builder = EventBuilder(EventConfig(min_duration_s=0.0, max_width_fraction=0.7))
    builder.add(frame=0, pts_s=0.0, detections=Detections((band,), (1,)), image_size=(80, 100))
    assert [ev.track_id for ev in builder.finish()[0]] == [1]
