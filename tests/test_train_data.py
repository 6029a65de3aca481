"""Augmentation determinism, AnomalyMix masks, dataset readers and the batch stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from m2a_pipe.training.anomaly_mix import AnomalyMixConfig, paste_outlier
from m2a_pipe.training.augment import AugmentConfig, augment, rng_for
from m2a_pipe.training.batches import StepBatches, semantic_targets
from m2a_pipe.training.data import (
    CityscapesSemantic,
    CocoPanoptic,
    OutlierFolder,
    SemanticFolder,
    decode_segmentation,
    rle_counts_from_string,
)


def make_synth(root, n=4, h=48, w=96, outliers=True):
    """A tiny dataset in the synthetic world's layout."""
    rng = np.random.default_rng(0)
    for d in ("images", "semantic", "labels_masks", "outliers"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sem = np.zeros((h, w), np.uint8)
        sem[: h // 3] = 10
        sem[h // 3: 2 * h // 3] = 2
        sem[h // 2: h // 2 + 6, 10 * i: 10 * i + 12] = 13
        img = np.stack([sem * 9, sem * 5 + 40, 200 - sem * 7], -1).astype(np.uint8)
        img = np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        if i % 2:
            lab[-8:-2, w // 2: w // 2 + 8] = 1
            sem[lab == 1] = 255
            img[lab == 1] = (250, 200, 0)
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
        Image.fromarray(sem).save(root / "semantic" / f"f{i}.png")
        Image.fromarray(lab).save(root / "labels_masks" / f"f{i}.png")
    if outliers:
        for k in range(2):
            rgba = np.zeros((20, 16, 4), np.uint8)
            rgba[..., :3] = (255, 0, 255)
            rgba[4:16, 3:13, 3] = 255
            rgba[8, 0, 3] = 0
            Image.fromarray(rgba).save(root / "outliers" / f"{k}.png")
    return root


def test_augment_is_deterministic_per_keys():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (60, 120, 3), dtype=np.uint8)
    sem = rng.integers(0, 19, (60, 120), dtype=np.uint8)
    cfg = AugmentConfig(crop=(32, 64))
    a = augment(image, {"semantic": sem}, rng_for(0, 3, 7), cfg)
    b = augment(image, {"semantic": sem}, rng_for(0, 3, 7), cfg)
    c = augment(image, {"semantic": sem}, rng_for(0, 3, 8), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1]["semantic"], b[1]["semantic"])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (32, 64, 3) and a[1]["semantic"].shape == (32, 64)


def test_augment_small_scale_pads_with_ignore():
    image = np.full((60, 120, 3), 7, np.uint8)
    sem = np.full((60, 120), 3, np.uint8)
    cfg = AugmentConfig(crop=(64, 128), resize="box", min_scale=0.25, max_scale=0.25, color=False, flip=False)
    img, labels = augment(image, {"semantic": sem}, rng_for(0), cfg)
    assert (labels["semantic"][:16, :32] == 3).all() and (labels["semantic"][20:] == 255).all()
    assert set(np.unique(labels["semantic"])) == {3, 255}
    assert (img[:16, :32] == 7).all()


def test_anomaly_mix_mask_is_exactly_the_pasted_alpha():
    image = np.zeros((64, 96, 3), np.uint8)
    sem = np.full((64, 96), 4, np.uint8)
    ood = np.zeros((64, 96), np.uint8)
    cut = np.zeros((30, 20, 3), np.uint8)
    cut[...] = (255, 0, 255)
    alpha = np.zeros((30, 20), bool)
    alpha[5:25, 2:18] = True
    alpha[10:12, 5:9] = False  # a hole
    for seed in range(5):
        im, se, oo = image.copy(), sem.copy(), ood.copy()
        pasted = paste_outlier(im, {"semantic": se}, oo, cut, alpha, rng_for(seed), AnomalyMixConfig())
        changed = (im != 0).any(-1)
        assert pasted.any() and np.array_equal(changed, pasted) and np.array_equal(oo == 1, pasted)
        assert (se[pasted] == 255).all() and (se[~pasted] == 4).all()


def test_anomaly_mix_feathered_edge_blends_only_across_the_seam():
    # a flat object on a flat scene: the hard paste's step becomes a ramp a few sigma wide,
    # while M_OOD, the labels and everything 3 sigma away are exactly as with a hard paste
    bg, fg, sigma = 40, 200, 1.0
    cut = np.full((30, 20, 3), fg, np.uint8)
    alpha = np.zeros((30, 20), bool)
    alpha[4:26, 3:17] = True
    for seed in range(4):
        res = {}
        for name, cfg in (("hard", AnomalyMixConfig()), ("soft", AnomalyMixConfig(edge_sigma=(sigma, sigma)))):
            im = np.full((64, 96, 3), bg, np.uint8)
            se, oo = np.full((64, 96), 4, np.uint8), np.zeros((64, 96), np.uint8)
            pasted = paste_outlier(im, {"semantic": se}, oo, cut, alpha, rng_for(seed), cfg)
            res[name] = im[..., 0].astype(int), se, oo, pasted
        (hard, se_h, oo_h, m), (soft, se_s, oo_s, m_s) = res["hard"], res["soft"]
        assert np.array_equal(m, m_s) and np.array_equal(oo_h, oo_s) and np.array_equal(se_h, se_s)
        inside = ndimage.distance_transform_edt(m)
        outside = ndimage.distance_transform_edt(~m)
        far = (inside > 3 * sigma + 1) | (outside > 3 * sigma + 1)
        assert np.array_equal(soft[far], hard[far])
        rim_in, rim_out = m & (inside <= 1), ~m & (outside <= 1)
        assert ((soft[rim_in] > bg) & (soft[rim_in] < fg)).all()
        assert ((soft[rim_out] > bg) & (soft[rim_out] < fg)).all()
        assert soft[rim_in].mean() > soft[rim_out].mean()  # the ramp rises into the object


def test_anomaly_mix_edge_sigma_is_checked():
    with pytest.raises(ValueError, match="edge_sigma"):
        AnomalyMixConfig.from_dict({"edge_sigma": [1.5, 0.5]})


def test_semantic_folder_and_targets(tmp_path):
    ds = SemanticFolder(make_synth(tmp_path / "d"))
    assert len(ds) == 4
    s = ds.load(1)
    assert s.ood is not None and s.ood.max() == 1 and (s.semantic[s.ood == 1] == 255).all()
    t = semantic_targets(s.semantic, 19)
    assert t["labels"].tolist() == [0, 2, 10, 13]
    assert t["masks"].shape == (4, 48, 96) and int(t["masks"].sum()) == int((s.semantic < 19).sum())


def test_step_batches_deterministic_with_outliers(tmp_path):
    root = make_synth(tmp_path / "d")
    ds = SemanticFolder(root)
    def mk():
        return StepBatches(ds, 19, 3, seed=5, augment_cfg=AugmentConfig(crop=(40, 80), resize="box"),
                           outliers=OutlierFolder(root / "outliers"),
                           mix_cfg=AnomalyMixConfig(placement="batch", probability=1.0))
    a, b = mk()[3], mk()[3]
    assert a["images"].shape == (3, 3, 64, 96)  # padded to /32
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["ood"], b["ood"])
    assert a["outlier_batch"] and (a["ood"] == 1).any()
    assert (a["ood"][:, 40:] == 255).all()
    # every dataset index appears once per epoch
    stream = mk()
    seen = [i for step in range(4) for e, i in stream.positions(step) if e == 0]
    assert sorted(seen) == [0, 1, 2, 3]


def test_cityscapes_and_coco_readers(tmp_path):
    city = tmp_path / "cs"
    (city / "leftImg8bit/train/aachen").mkdir(parents=True)
    (city / "gtFine/train/aachen").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(city / "leftImg8bit/train/aachen/a_000001_leftImg8bit.png")
    Image.fromarray(np.full((8, 16), 7, np.uint8)).save(city / "gtFine/train/aachen/a_000001_gtFine_labelTrainIds.png")
    assert CityscapesSemantic(city).load(0).semantic.max() == 7

    coco = tmp_path / "coco"
    (coco / "png").mkdir(parents=True)
    (coco / "img").mkdir()
    ids = np.zeros((8, 8), np.int64)
    ids[:4], ids[4:] = 1, 2
    rgb = np.stack([ids % 256, ids // 256, ids * 0], -1).astype(np.uint8)
    Image.fromarray(rgb).save(coco / "png" / "x.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(coco / "img" / "x.jpg")
    cats = [{"id": 3, "name": "car", "isthing": 1}, {"id": 5, "name": "road", "isthing": 0},
            {"id": 7, "name": "dog", "isthing": 1}]
    (coco / "p.json").write_text(json.dumps({"categories": cats, "images": [{"id": 1, "file_name": "x.jpg"}],
        "annotations": [{"image_id": 1, "file_name": "x.png", "segments_info": [
            {"id": 1, "category_id": 3}, {"id": 2, "category_id": 5}]}]}))
    ds = CocoPanoptic(coco / "p.json", coco / "png", coco / "img", unknown_percent=5)
    assert ds.class_names == ("road", "dog")  # "car" is unknown in the 5 % split
    assert ds.load(0).segment_classes == {2: 0}


def test_coco_rle_decoding():
    mask = np.zeros((5, 4), bool)
    mask[1:3, 1:3] = True
    flat = mask.T.ravel()
    counts, value, run = [], False, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    assert np.array_equal(decode_segmentation({"counts": counts, "size": [5, 4]}, 5, 4), mask)
    # compressed string form: encode the counts the way pycocotools does
    chars = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not ch & 0x10) or (x == -1 and ch & 0x10))
            chars.append(chr(ch + 48 + (0x20 if more else 0)))
    assert rle_counts_from_string("".join(chars)) == counts
    poly = decode_segmentation([[1, 1, 6, 1, 6, 4, 1, 4]], 8, 8)
    assert poly[2, 3] and not poly[6, 6]


def test_step_batches_paste_per_image_at_native_size_before_augmentation(tmp_path):
    """Official AnomalyMix: each image (probability 1 here) receives one cut-out at its native
    size on the full frame; the resize (to the frame's own height: scale 1) and the crop
    covering the frame keep it whole, so each image's outlier pixels are exactly one cut-out's."""
    root = make_synth(tmp_path / "d")
    ds = SemanticFolder(root)
    outliers = OutlierFolder(root / "outliers")
    h, w = ds.load(0).image.shape[:2]
    cfg = AugmentConfig(crop=(h, w), short_edges=(h,), color=False, flip=False)
    stream = StepBatches(ds, 19, 2, seed=5, augment_cfg=cfg, outliers=outliers,
                         mix_cfg=AnomalyMixConfig(probability=1.0))
    batch = stream[0]
    assert batch["outlier_batch"] and batch["image_sizes"].tolist() == [[h, w], [h, w]]
    sizes = {int(outliers.cutout(i)[1].sum()) for i in range(len(outliers))
             if max(outliers.cutout(i)[1].shape) <= max(h, w)}
    for b in range(2):
        assert int((batch["ood"][b] == 1).sum()) in sizes
    none = StepBatches(ds, 19, 2, seed=5, augment_cfg=cfg, outliers=outliers,
                       mix_cfg=AnomalyMixConfig(probability=0.0))[0]
    assert not none["outlier_batch"] and not (none["ood"] == 1).any()
