"""Synthetic dataset writers: the SMIYC / semantic / panoptic layout and the outlier source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from m2a_pipe.errors import UsageError
from m2a_pipe.evaluation.datasets import detect_dataset, read_coco_panoptic, read_label, read_panoptic_png
from m2a_pipe.synth import render_sample, write_image_dataset, write_outliers

SIZE = (160, 96)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    meta = write_image_dataset(out, seed=21, count=3, anomalies="eval", size=SIZE, workers=1)
    return out, meta


def test_layout_and_meta(dataset):
    out, meta = dataset
    for sub in ("images", "labels_masks", "semantic", "panoptic"):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{s}.png" for s in meta["stems"]]
    disk = json.loads((out / "meta.json").read_text())
    assert disk["generator"] == "m2a-pipe synth" and disk["seed"] == 21 and disk["count"] == 3
    assert disk["anomalies"] == "eval" and disk["size"] == list(SIZE) and len(disk["classes"]) == 19
    assert disk["stems"] == ["synth_21_000000", "synth_21_000001", "synth_21_000002"]


def test_pngs_read_back(dataset):
    out, meta = dataset
    stem = meta["stems"][1]
    sample = render_sample(21, 1, SIZE, "eval")
    image = np.array(Image.open(out / "images" / f"{stem}.png"))
    assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, sample.image)
    mask = np.array(Image.open(out / "labels_masks" / f"{stem}.png"))
    assert mask.ndim == 2 and set(np.unique(mask).tolist()) <= {0, 1, 255}
    np.testing.assert_array_equal(mask, sample.labels_mask)
    semantic = np.array(Image.open(out / "semantic" / f"{stem}.png"))
    np.testing.assert_array_equal(semantic, sample.semantic)
    assert ((semantic == 255) >= (mask != 0)).all()


def test_evaluation_reader_accepts_it(dataset):
    out, meta = dataset
    ds = detect_dataset(out)
    assert [s.stem for s in ds.samples] == meta["stems"]
    label = read_label(ds.samples[0].label, ds.samples[0].mapping)
    assert (label == 1).any()


def test_panoptic(dataset):
    out, meta = dataset
    data = json.loads((out / "panoptic.json").read_text())
    cats = {c["id"]: c for c in data["categories"]}
    assert cats[19] == {"id": 19, "name": "anomaly", "isthing": 1, "supercategory": "anomaly"}
    assert cats[13]["isthing"] == 1 and cats[0]["isthing"] == 0 and len(cats) == 20
    pan = read_coco_panoptic(out / "panoptic.json", out / "panoptic", out / "images")
    assert len(pan.images) == 3 and pan.unknown == 19 and 19 not in pan.things  # anomaly = the unknown category
    for entry in pan.images:
        ids = read_panoptic_png(entry.png)
        mask = np.array(Image.open(out / "labels_masks" / f"{entry.stem}.png"))
        segs = {s["id"]: s for s in entry.segments}
        assert set(np.unique(ids).tolist()) - {0} == set(segs)
        anomaly_ids = [sid for sid, s in segs.items() if s["category_id"] == 19]
        np.testing.assert_array_equal(np.isin(ids, anomaly_ids), mask == 1)
        assert all(segs[sid]["family"] == "eval" for sid in anomaly_ids)
        for sid, s in segs.items():
            assert s["area"] == int((ids == sid).sum())


def test_closed_set_has_no_anomaly(tmp_path):
    write_image_dataset(tmp_path / "cs", seed=4, count=2, anomalies="none", size=SIZE)
    for p in (tmp_path / "cs" / "labels_masks").iterdir():
        assert set(np.unique(np.array(Image.open(p))).tolist()) <= {0, 255}


def test_parallel_equals_serial(tmp_path):
    write_image_dataset(tmp_path / "a", seed=8, count=3, anomalies="train", size=SIZE, workers=1)
    write_image_dataset(tmp_path / "b", seed=8, count=3, anomalies="train", size=SIZE, workers=2)
    for sub in ("images", "labels_masks", "panoptic"):
        for p in (tmp_path / "a" / sub).iterdir():
            assert p.read_bytes() == (tmp_path / "b" / sub / p.name).read_bytes()
    assert (tmp_path / "a" / "panoptic.json").read_text() == (tmp_path / "b" / "panoptic.json").read_text()


def test_refuses_to_overwrite_but_outliers_join_a_dataset(dataset):
    out, _ = dataset
    with pytest.raises(FileExistsError, match="already holds images"):
        write_image_dataset(out, seed=1, count=1, size=SIZE)
    write_outliers(out, seed=1, count=2)  # the trainer reads <dataset>/outliers
    assert len(list((out / "outliers").glob("*.png"))) == 2
    with pytest.raises(FileExistsError, match="already holds outliers"):
        write_outliers(out, seed=1, count=2)


def test_outliers(tmp_path):
    meta = write_outliers(tmp_path, seed=3, count=4)
    files = sorted((tmp_path / "outliers").glob("*.png"))
    assert [p.name for p in files] == [f"{k:06d}.png" for k in range(4)]
    for p, info in zip(files, meta["files"]):
        rgba = np.array(Image.open(p))
        assert rgba.ndim == 3 and rgba.shape[2] == 4 and rgba.dtype == np.uint8
        assert set(np.unique(rgba[..., 3]).tolist()) <= {0, 255} and (rgba[..., 3] == 255).sum() >= 64
        assert info["family"] == "train"
    assert json.loads((tmp_path / "outliers_meta.json").read_text())["family"] == "train"


def test_outliers_of_the_extended_train_family(tmp_path):
    meta = write_outliers(tmp_path / "x", seed=3, count=3, family="train_ext")
    assert meta["family"] == "train_ext" and all(f["family"] == "train_ext" for f in meta["files"])
    base = write_outliers(tmp_path / "b", seed=3, count=3)
    # a stream of its own: the same seed draws other objects; the train family stays deterministic
    a = np.array(Image.open(tmp_path / "x" / "outliers" / "000000.png"))
    b = np.array(Image.open(tmp_path / "b" / "outliers" / "000000.png"))
    assert a.shape != b.shape or not np.array_equal(a, b)
    assert [f["pattern"] for f in base["files"]] == [f["pattern"] for f in write_outliers(
        tmp_path / "b2", seed=3, count=3)["files"]]
    with pytest.raises(UsageError, match="training family"):
        write_outliers(tmp_path / "e", seed=3, count=1, family="eval")
