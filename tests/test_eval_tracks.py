"""``m2a-pipe evaluate tracks``: a video output folder made by the real analysis, scored against
ground truth written as tracks.json and as MOTChallenge gt.txt; boxes clipped to the frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_error_line, run_cli

from m2a_pipe.video.events import read_events
from m2a_pipe.video.mot import read_tracks_csv

SOURCE = (128, 192)  # height, width of the video; the map is 16 x 25 cells of 8 px (one past the frame)
N_FRAMES = 12


def object_cols(t: int) -> tuple[int, int]:
    """Map columns of the object in frame t: it drives right into the frame's (and the map's) edge."""
    return 12 + t, min(18 + t, 25)


def make_output(folder, blob_frames=()) -> None:
    """A video output folder from VideoAnalysis: one object (0.9 on rows 4..8), plus a short
    blob far from it in ``blob_frames`` (a false event when long enough)."""
    from m2a_pipe.inference.stage import FrameMaps
    from m2a_pipe.pipeline.analysis import AnalysisSettings, VideoAnalysis
    from m2a_pipe.pipeline.config import ProcessConfig

    settings = AnalysisSettings(input_size=(64, 96), map_shape=(16, 25), source_size=SOURCE, fps=10.0,
                                threshold=0.5, min_area=1, bounded=True, map_stride=4)
    folder.mkdir()
    attrs = {"source": "x", "fps": 10.0, "height": SOURCE[0], "width": SOURCE[1],
             "config": json.dumps({"min_area_fraction": 0.0005})}  # as the job records them
    analysis = VideoAnalysis(folder, settings, ProcessConfig(overlay=False, save_maps=False), attrs)
    for t in range(N_FRAMES):
        anomaly = np.zeros((16, 25), np.float32)
        c0, c1 = object_cols(t)
        anomaly[4:8, c0:c1] = 0.9
        if t in blob_frames:
            anomaly[12:14, 2:4] = 0.8
        analysis.add(t, t / 10, np.zeros((64, 96, 3), np.uint8), FrameMaps(anomaly, np.zeros((16, 25), np.uint8)))
    analysis.finish()


def gt_boxes() -> list[list[float]]:
    """The object's true boxes in source pixels (clipped to the frame): [frame0, l, t, w, h, area]."""
    out = []
    for t in range(N_FRAMES):
        c0, c1 = object_cols(t)
        x0, x1 = c0 * 8, min(c1 * 8, SOURCE[1])
        out.append([t, x0, 32, x1 - x0, 32, (x1 - x0) * 32])
    return out


def write_gt(tmp_path) -> tuple:
    tracks = tmp_path / "clip.tracks.json"
    tracks.write_text(json.dumps({"frames": N_FRAMES, "width": 192, "height": 128,
                                  "tracks": [{"id": 7, "boxes": gt_boxes()}]}))
    gt_txt = tmp_path / "gt.txt"
    rows = [f"{f + 1},7,{x},{y},{w},{h},1,1,1" for f, x, y, w, h, _ in gt_boxes()]
    rows.append("3,9,0,0,50,50,0,1,1")  # conf 0: a box not to evaluate
    gt_txt.write_text("\n".join(rows) + "\n")
    return tracks, gt_txt


def test_boxes_clipped_to_the_frame(tmp_path):
    make_output(tmp_path / "out")
    rows = read_tracks_csv(tmp_path / "out" / "tracks.csv")
    assert len(rows) == N_FRAMES
    right = rows[:, 2] + rows[:, 4]
    assert right.max() == pytest.approx(SOURCE[1])  # the map's last cell reaches 200 px: clipped to 192
    (event,) = read_events(tmp_path / "out")
    assert 0 <= event.bbox_at_peak[0] < event.bbox_at_peak[2] <= SOURCE[1]


@pytest.mark.parametrize("kind", ["tracks.json", "gt.txt"])
def test_evaluate_tracks_perfect_and_with_a_false_event(tmp_path, kind):
    tracks, gt_txt = write_gt(tmp_path)
    gt = tracks if kind == "tracks.json" else gt_txt
    make_output(tmp_path / "out")
    result = run_cli("evaluate", "tracks", tmp_path / "out", "--gt", gt, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report == json.loads(result.output)
    mot = report["mot_visible"]
    assert mot["num_objects"] == N_FRAMES and mot["mota"] == 1.0 and mot["idf1"] == 1.0
    assert mot["num_switches"] == 0 and mot["num_fragmentations"] == 0 and mot["mean_iou"] > 0.9
    assert report["events"] == {"gt_anomalies": 1, "found": 1, "recall": 1.0, "true_events": 1, "false_events": 0,
                                "ignored_events": 0, "false_per_minute": 0.0, "events_per_found": 1.0}
    assert "102 px" not in report["visible_box_rule"] and "12 px" in report["visible_box_rule"]

    make_output(tmp_path / "noisy", blob_frames=range(2, 9))  # a second, false event of 0.7 s
    report = json.loads(run_cli("evaluate", "tracks", tmp_path / "noisy", "--gt", gt).output)
    assert report["events"]["true_events"] == 1 and report["events"]["false_events"] == 1
    assert report["events"]["false_per_minute"] == pytest.approx(1 / (N_FRAMES / 10 / 60), abs=0.01)
    assert report["mot_visible"]["num_false_positives"] == 7 and report["mot_visible"]["mota"] < 1
    # the visible-box rule: the object (at least 96 x 32 px) counts, unless boxes must be 1/3 of the frame
    report = json.loads(run_cli("evaluate", "tracks", tmp_path / "out", "--gt", gt,
                                "--min-area-fraction", "0.33").output)
    assert report["mot_visible"]["num_objects"] == 0 and report["events"]["gt_anomalies"] == 0


def test_evaluate_tracks_bad_input(tmp_path):
    tracks, _ = write_gt(tmp_path)
    assert_error_line(run_cli("evaluate", "tracks", tmp_path / "none", "--gt", tracks), "no scores.h5")
    make_output(tmp_path / "out")
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2,three,4,5,6\n")
    assert_error_line(run_cli("evaluate", "tracks", tmp_path / "out", "--gt", bad), "bad.txt: line 1")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"frames": 3}')
    assert_error_line(run_cli("evaluate", "tracks", tmp_path / "out", "--gt", bad_json), "not a tracks.json")
    assert_error_line(run_cli("evaluate", "tracks", tmp_path / "out", "--gt", tmp_path / "missing.json"),
                      "missing.json: cannot read")


def test_events_on_boxes_too_small_to_count_are_ignored_not_false():
    """The visible-box rule for events: an event on an object whose boxes are all below the
    minimum area is neither true nor false; one on no object is false."""
    from m2a_pipe.evaluation.tracks import event_figures

    small, large = np.array([10.0, 10, 20, 20]), np.array([100.0, 100, 150, 150])
    gt = {f: [(1, small, 50)] for f in range(0, 10)}
    gt.update({f: [(2, large, 2500)] for f in range(20, 30)})
    def event(frames, box):
        return {"start_frame": frames[0], "end_frame": frames[1], "peak_frame": frames[0] + 2, "bbox_at_peak": box}
    events = [event((2, 8), [12, 12, 25, 25]), event((21, 28), [110, 110, 140, 140]),
              event((21, 28), [300, 300, 320, 320])]
    figures = event_figures(events, gt, minutes=1.0, min_gt_area=100)
    assert (figures["gt_anomalies"], figures["found"], figures["true_events"]) == (1, 1, 1)
    assert (figures["false_events"], figures["ignored_events"], figures["false_per_minute"]) == (1, 1, 1.0)
    everything = event_figures(events, gt, minutes=1.0, min_gt_area=0)  # every box counts
    assert (everything["gt_anomalies"], everything["found"], everything["true_events"]) == (2, 2, 2)
    assert (everything["false_events"], everything["ignored_events"]) == (1, 0)


def test_an_event_peaking_while_its_object_is_small_is_the_objects():
    """An object that approaches: small (below the visible-box rule) and at the left when the
    event peaks, large and further right later in the event. The event's box at the peak covers
    the object as it was then, so the event is that object's (true, the object found), even
    though its box does not meet the object's later, visible boxes. An event about another,
    never-visible object in the same span is ignored, not true."""
    from m2a_pipe.evaluation.tracks import event_figures, event_owner

    gt = {f: [(1, np.array([10.0 + 8 * f, 10, 18 + 10 * f, 18 + 2 * f]), 30 * f)] for f in range(12)}
    for f in range(12):
        gt[f].append((2, np.array([300.0, 10, 306, 16]), 36))
    event = {"start_frame": 2, "end_frame": 11, "peak_frame": 2, "bbox_at_peak": [26, 10, 38, 22]}
    assert event_owner(event, gt, min_gt_area=200) == (1, True)  # boxes of >= 200 px from frame 7 on
    other = {**event, "bbox_at_peak": [299, 9, 305, 15]}
    assert event_owner(other, gt, min_gt_area=200) == (2, False)
    figures = event_figures([event, other], gt, minutes=1.0, min_gt_area=200)
    assert (figures["gt_anomalies"], figures["found"], figures["true_events"]) == (1, 1, 1)
    assert (figures["false_events"], figures["ignored_events"]) == (0, 1)
