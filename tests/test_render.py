"""Overlay rendering: blending, scaling of instances to the frame, time code."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_pipe.inference.instances import anomaly_instances
from m2a_pipe.video.detections import Detections
from m2a_pipe.video.render import heat_weights, overlay, timecode, track_colour

H, W = 96, 160


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 200, (H, W, 3), dtype=np.uint8)


def test_shape_dtype_and_new_array():
    img = frame()
    out = overlay(img, np.random.default_rng(1).random((24, 40), dtype=np.float32))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert out is not img and not np.shares_memory(out, img)


def test_zero_map_leaves_frame_unchanged_except_timecode():
    img = frame()
    out = overlay(img, np.zeros((H // 4, W // 4), np.float32), timecode=timecode(1.5, 45))
    changed = np.any(out != img, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.size > 0  # the time code is drawn
    assert ys.min() > H // 2 and xs.min() == 0  # ... in the bottom-left corner only
    assert not changed[: H // 2].any() and not changed[:, W - 10:].any()
    np.testing.assert_array_equal(overlay(img, np.zeros((H, W), np.float32)), img)


def test_high_score_region_changes_colours_there_only():
    img = np.full((H, W, 3), 100, np.uint8)
    amap = np.zeros((H // 2, W // 2), np.float32)
    amap[10:20, 30:50] = 1.0  # image rows 20..40, columns 60..100
    out = overlay(img, amap, alpha=0.6)
    inside = out[24:36, 64:96].astype(int)
    assert np.abs(inside - 100).max() > 40
    far = out[60:, :40]
    np.testing.assert_array_equal(far, img[60:, :40])


def test_threshold_hides_low_scores():
    img = frame()
    amap = np.full((H, W), 0.4, np.float32)
    assert np.any(overlay(img, amap) != img)
    np.testing.assert_array_equal(overlay(img, amap, threshold=0.5), img)
    norm, weight = heat_weights(np.array([[np.nan, -1.0, 0.5, 2.0]], np.float32), 0.5, 0.0, 1.0, None)
    np.testing.assert_allclose(norm, [[0, 0, 0.5, 1]])
    np.testing.assert_allclose(weight, [[0, 0, 0.25, 0.5]])


def test_box_at_right_place_for_half_resolution_map():
    img = np.zeros((H, W, 3), np.uint8)
    amap = np.zeros((H // 2, W // 2), np.float32)
    amap[10:20, 30:45] = 0.9  # map box (30, 10, 45, 20) -> image box (60, 20, 90, 40)
    insts = anomaly_instances(amap, 0.5)
    assert [i.bbox for i in insts] == [(30, 10, 45, 20)]
    out = overlay(img, amap, detections=Detections(insts, [7]), alpha=0.0)
    colour = np.array(track_colour(7))
    hit = np.all(out == colour, axis=2)
    # box edges: columns 60 and 89 between rows 20 and 39, rows 20 and 39 between columns 60 and 89
    assert hit[25:39, 60].all() and hit[25:39, 89].all()
    assert hit[39, 60:90].all()
    assert not hit[25:39, 58].any() and not hit[25:39, 91].any() and not hit[41, 60:90].any()
    assert hit[:18].any()  # the "#7" label sits above the box
    # track id 0: contour only (grey), no box in the track colour
    out0 = overlay(img, amap, detections=Detections(insts, [0]), alpha=0.0)
    assert not np.all(out0 == colour, axis=2).any() and out0.any()
    np.testing.assert_array_equal(overlay(img, amap, detections=insts, alpha=0.0), out0)  # bare: unconfirmed


def test_only_confirmed_detections_get_boxes():
    img = np.zeros((H, W, 3), np.uint8)
    amap = np.zeros((H // 2, W // 2), np.float32)
    amap[10:20, 5:15] = 0.9
    amap[10:20, 50:60] = 0.9
    dets = Detections(anomaly_instances(amap, 0.5), [0, 3])
    out = overlay(img, amap, detections=dets, alpha=0.0)
    hit = np.all(out == np.array(track_colour(3)), axis=2)
    assert hit[:, 95:125].any() and not hit[:, :35].any()  # box of #3 only, none around the id-0 blob


def test_timecode_format():
    assert timecode(83.456, 1234) == "00:01:23.456  f 1234"
    assert timecode(0.0, 0) == "00:00:00.000  f 0"
    assert timecode(3600 * 2 + 61.9996, 7) == "02:01:02.000  f 7"


@pytest.mark.parametrize("threshold", [None, 0.55])
def test_region_blend_equals_full_frame_blend(threshold):
    import cv2

    from m2a_pipe.video.render import _rgb_colormap

    rng = np.random.default_rng(5)
    img = frame(2)
    amap = np.zeros((H // 4, W // 4), np.float32)
    amap[3:7, 20:26] = rng.uniform(0.3, 1.0, (4, 6))  # one blob; the region is much smaller than the frame
    amap[10, 2] = np.nan
    scores = cv2.resize(amap, (W, H), interpolation=cv2.INTER_LINEAR)
    norm, weight = heat_weights(scores, 0.5, 0.0, 1.0, threshold)
    colours = cv2.applyColorMap((norm * 255).astype(np.uint8), _rgb_colormap(cv2.COLORMAP_INFERNO))
    want = cv2.blendLinear(colours, img, weight, 1.0 - weight)
    np.testing.assert_array_equal(overlay(img, amap, threshold=threshold), want)
    assert np.any(want != img)
