"""Dataset readers on tiny fake layouts; the one label map; pipeline HDF5 scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from m2a_pipe.evaluation import datasets as ds
from m2a_pipe.evaluation.inputs import EvaluationInputError, pair_h5, score_pairs


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr)).save(path)


def _rgb(path, h=4, w=6):
    _png(path, np.zeros((h, w, 3), np.uint8))


def test_smiyc_layout(tmp_path):
    _rgb(tmp_path / "images" / "validation0000.jpg")
    _png(tmp_path / "labels_masks" / "validation0000_labels_semantic.png", np.array([[0, 1], [255, 0]], np.uint8))
    data = ds.read_smiyc(tmp_path)
    assert [s.stem for s in data.samples] == ["validation0000"]
    assert ds.read_label(data.samples[0].label, data.samples[0].mapping).tolist() == [[0, 1], [255, 0]]
    assert ds.detect_dataset(tmp_path).samples == data.samples


def test_fishyscapes_layout_and_missing_label(tmp_path):
    _rgb(tmp_path / "images" / "a.png")
    _png(tmp_path / "labels_masks" / "a.png", np.zeros((4, 6), np.uint8))
    assert len(ds.read_fishyscapes(tmp_path).samples) == 1
    _rgb(tmp_path / "images" / "b.png")
    with pytest.raises(ds.DatasetError, match="b.png"):
        ds.read_fishyscapes(tmp_path)


def test_road_anomaly_original_layout(tmp_path):
    _rgb(tmp_path / "frames" / "cow.jpg")
    _png(tmp_path / "frames" / "cow.labels" / "labels_semantic.png", np.array([[0, 2]], np.uint8))
    data = ds.read_road_anomaly(tmp_path)
    assert ds.read_label(data.samples[0].label, "road-anomaly").tolist() == [[0, 1]]


def test_lost_and_found_raw_remap(tmp_path):
    _rgb(tmp_path / "leftImg8bit" / "test" / "city" / "x_leftImg8bit.png")
    _png(tmp_path / "gtCoarse" / "test" / "city" / "x_gtCoarse_labelIds.png", np.array([[0, 1, 2, 37]], np.uint8))
    data = ds.detect_dataset(tmp_path)
    s = data.samples[0]
    assert s.stem == "city/x" and s.mapping == "lost-and-found"
    assert ds.read_label(s.label, s.mapping).tolist() == [[255, 0, 1, 1]]


def test_lost_and_found_preprocessed_is_not_remapped(tmp_path):
    root = tmp_path / "LostAndFound"
    _rgb(root / "images" / "x.png")
    _png(root / "labels_masks" / "x.png", np.array([[0, 1, 255]], np.uint8))
    s = ds.read_lost_and_found(root).samples[0]
    assert ds.read_label(s.label, s.mapping).tolist() == [[0, 1, 255]]


def test_streethazards_layout_and_maps(tmp_path):
    for sub in ("t5", "t6"):
        _rgb(tmp_path / "test" / "images" / "test" / sub / "300.png")
        _png(tmp_path / "test" / "annotations" / "test" / sub / "300.png", np.array([[1, 2, 13, 14]], np.uint8))
    data = ds.read_streethazards(tmp_path)
    assert sorted(s.subset for s in data.samples) == ["t5", "t6"]
    s = data.samples[0]
    assert ds.read_label(s.label, s.mapping).tolist() == [[0, 0, 0, 1]]
    raw = np.array(Image.open(s.label))
    assert ds.map_labels(raw, ds.STREETHAZARDS_SEMANTIC, s.label).tolist() == [[255, 0, 11, 12]]


def test_label_values_outside_map_name_the_file(tmp_path):
    _png(tmp_path / "bad.png", np.array([[0, 7]], np.uint8))
    with pytest.raises(ds.DatasetError, match=r"bad.png.*\[7\]"):
        ds.read_label(tmp_path / "bad.png")


def test_coco_panoptic_unknown_split(tmp_path):
    cats = [{"id": 3, "name": "car", "isthing": 1}, {"id": 1, "name": "person", "isthing": 1},
            {"id": 184, "name": "sky", "isthing": 0}, {"id": 21, "name": "cow", "isthing": 1},
            {"id": 59, "name": "pizza", "isthing": 1}, {"id": 70, "name": "toilet", "isthing": 1}]
    ann = {"file_name": "0001.png", "image_id": 1,
           "segments_info": [{"id": 5, "category_id": 3}, {"id": 6, "category_id": 1}]}
    (tmp_path / "gt.json").write_text(json.dumps({"categories": cats, "annotations": [ann]}))
    ids = np.zeros((2, 2), np.int64); ids[0] = 5; ids[1] = 6
    (tmp_path / "png").mkdir()
    ds.write_panoptic_png(tmp_path / "png" / "0001.png", ids)
    data = ds.read_coco_panoptic(tmp_path / "gt.json", tmp_path / "png", unknown_percent=5)
    assert data.unknown == ds.UNKNOWN_CATEGORY_ID
    assert data.things == {1} and data.stuff == {184}
    assert [s["category_id"] for s in data.images[0].segments] == [ds.UNKNOWN_CATEGORY_ID, 1]
    assert data.unknown_isthing and data.unknown_source == "--unknown-split 5"
    assert data.class_ids == (3, 1, 184, 21, 59, 70)  # a model's classes: the split's stay, as unknown
    assert ds.read_panoptic_png(data.images[0].png).tolist() == ids.tolist()
    assert set(ds.COCO_UNKNOWN_SPLITS[20]) > set(ds.COCO_UNKNOWN_SPLITS[10]) > set(ds.COCO_UNKNOWN_SPLITS[5])
    assert len(ds.COCO_UNKNOWN_SPLITS[20]) == 16


def _synthetic_like(tmp_path, extra=()):
    """Categories as ``m2a-pipe synth images`` writes them (road, car, ..., 19 anomaly isthing 1)."""
    cats = [{"id": 0, "name": "road", "isthing": 0, "supercategory": "cityscapes"},
            {"id": 13, "name": "car", "isthing": 1, "supercategory": "cityscapes"},
            {"id": 19, "name": "anomaly", "isthing": 1, "supercategory": "anomaly"}, *extra]
    ann = {"file_name": "s.png", "image_id": 0,
           "segments_info": [{"id": 1, "category_id": 0}, {"id": 19001, "category_id": 19}]}
    (tmp_path / "panoptic.json").write_text(json.dumps({"categories": cats, "annotations": [ann]}))
    return tmp_path / "panoptic.json"


def test_declared_anomaly_category_is_the_unknown_one_not_a_thing(tmp_path):
    path = _synthetic_like(tmp_path)
    data = ds.read_coco_panoptic(path, tmp_path)
    assert data.unknown == 19 and data.unknown_isthing and "declared" in data.unknown_source
    assert data.things == {13} and data.stuff == {0}  # isthing 1, yet not a known thing
    assert data.class_ids == (0, 13) and data.names[19] == "anomaly"
    assert [s["category_id"] for s in data.images[0].segments] == [0, 19]  # ids kept as written
    closed = ds.read_coco_panoptic(path, tmp_path, unknown_id=None)  # --unknown-id none
    assert closed.unknown is None and closed.things == {13, 19} and closed.class_ids == (0, 13, 19)


def test_unknown_id_names_a_category(tmp_path):
    path = _synthetic_like(tmp_path, [{"id": 7, "name": "void-ish", "isthing": 0}])
    data = ds.read_coco_panoptic(path, tmp_path, unknown_id=7)
    assert data.unknown == 7 and not data.unknown_isthing and data.unknown_source == "--unknown-id"
    assert data.stuff == {0} and data.things == {13, 19}
    with pytest.raises(ds.DatasetError, match=r"panoptic.json: --unknown-id 42 is not one of"):
        ds.read_coco_panoptic(path, tmp_path, unknown_id=42)


def test_ambiguous_or_conflicting_unknown(tmp_path):
    path = _synthetic_like(tmp_path, [{"id": 20, "name": "Unknown", "isthing": 1}])
    with pytest.raises(ds.DatasetError, match=r"panoptic.json: categories \[19, 20\].*--unknown-id"):
        ds.read_coco_panoptic(path, tmp_path)
    assert ds.read_coco_panoptic(path, tmp_path, unknown_id=20).things == {13, 19}
    path = _synthetic_like(tmp_path, [{"id": i, "name": n, "isthing": 1} for i, n in
                                      ((21, "cow"), (59, "pizza"), (70, "toilet"))])
    with pytest.raises(ds.DatasetError, match="panoptic.json: .*exclude each other"):
        ds.read_coco_panoptic(path, tmp_path, unknown_percent=5, unknown_id=19)
    with pytest.raises(ds.DatasetError, match="panoptic.json: already declares unknown category 19"):
        ds.read_coco_panoptic(path, tmp_path, unknown_percent=5)


def test_pipeline_h5_scores(tmp_path):
    h5py = pytest.importorskip("h5py")
    maps = np.zeros((2, 4, 5), np.uint8)  # quarter-resolution maps quantised to 1/200
    maps[1, 1:3, 1:3] = 180
    with h5py.File(tmp_path / "scores.h5", "w") as f:
        f.create_dataset("maps/anomaly", data=maps).attrs["scale"] = 1 / 200
        f.create_dataset("frames/index", data=np.array([10, 11]))
    lab = np.zeros((8, 10), np.uint8)
    _png(tmp_path / "labels" / "000011.png", lab)
    pairs = score_pairs(tmp_path / "scores.h5", tmp_path / "labels")
    scores, _ = pairs[0].load()
    assert scores.shape == (8, 10) and scores[0, 0] == 0
    assert scores.max() == pytest.approx(0.9, abs=1e-6)  # 180 x 1/200, the bilinear peak
    _png(tmp_path / "labels" / "000012.png", lab)
    with pytest.raises(EvaluationInputError, match="000012.png.*frame 12"):
        pair_h5(tmp_path / "scores.h5", tmp_path / "labels")
