"""Synthetic stills: determinism, label consistency, panoptic ids, disjoint anomaly families."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_pipe.errors import UsageError
from m2a_pipe.synth import GENERATORS, PATTERNS, render_sample
from m2a_pipe.synth.anomalies import _hsv_colors, make_pattern, paint, sample_anomaly
from m2a_pipe.synth.objects import THING_IDS, USED_TRAIN_IDS

SIZE = (192, 96)


@pytest.fixture(scope="module")
def samples():
    return {fam: [render_sample(11, i, SIZE, fam) for i in range(3)] for fam in ("eval", "train", "hard", "none")}


def test_same_seed_and_index_give_identical_arrays():
    a, b = render_sample(5, 2, SIZE, "eval"), render_sample(5, 2, SIZE, "eval")
    for name in ("image", "semantic", "instances", "anomaly_mask", "label"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.segments == b.segments


def test_different_seed_or_index_differ():
    a = render_sample(5, 2, SIZE, "eval")
    assert not np.array_equal(a.image, render_sample(6, 2, SIZE, "eval").image)
    assert not np.array_equal(a.image, render_sample(5, 3, SIZE, "eval").image)


def test_order_independent():
    later_first = render_sample(9, 4, SIZE, "train")
    render_sample(9, 0, SIZE, "train")
    np.testing.assert_array_equal(later_first.image, render_sample(9, 4, SIZE, "train").image)


def test_shapes_and_dtypes(samples):
    s = samples["eval"][0]
    assert s.image.shape == (96, 192, 3) and s.image.dtype == np.uint8
    assert s.semantic.shape == (96, 192) and s.semantic.dtype == np.uint8
    assert s.anomaly_mask.dtype == np.uint8 and s.instances.dtype == np.int32


@pytest.mark.parametrize("family", ["eval", "train", "hard", "none"])
def test_label_consistency(samples, family):
    for s in samples[family]:
        valid = set(USED_TRAIN_IDS) | {255}
        assert set(np.unique(s.semantic).tolist()) <= valid
        anomaly = s.anomaly_mask == 1
        assert set(np.unique(s.anomaly_mask).tolist()) <= {0, 1}
        assert (s.semantic[anomaly] == 255).all()
        # things and anomalies carry instance ids; stuff does not
        thing = np.isin(s.semantic, THING_IDS)
        assert (s.instances[thing | anomaly] > 0).all()
        assert (s.instances[~(thing | anomaly)] == 0).all()
        # one instance id = one class
        for seg in s.segments:
            labels = np.unique(s.label[s.instances == seg["id"]])
            assert labels.tolist() == [seg["label"]]
        # SMIYC mask: 1 anomaly, 255 exactly where semantic is void and not anomaly, else 0
        lm = s.labels_mask
        assert set(np.unique(lm).tolist()) <= {0, 1, 255}
        np.testing.assert_array_equal(lm == 1, anomaly)
        np.testing.assert_array_equal(lm == 255, (s.semantic == 255) & ~anomaly)
        if family == "none":
            assert not anomaly.any()
        else:
            assert anomaly.any()
            fams = {seg["family"] for seg in s.segments if seg["label"] == 19}
            assert fams == {family}


def test_panoptic_matches_labels(samples):
    for s in samples["eval"] + samples["none"]:
        ids, infos = s.panoptic()
        by_id = {i["id"]: i for i in infos}
        assert set(np.unique(ids).tolist()) - {0} == set(by_id)
        cat = np.zeros(ids.shape, np.int64) - 1
        for sid, info in by_id.items():
            m = ids == sid
            assert info["area"] == int(m.sum())
            x, y, w, h = info["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            cat[m] = info["category_id"]
        np.testing.assert_array_equal(cat == 19, s.anomaly_mask == 1)
        np.testing.assert_array_equal(ids == 0, (s.semantic == 255) & (s.anomaly_mask == 0))
        known = s.semantic != 255
        np.testing.assert_array_equal(cat[known], s.semantic[known])


def test_families_are_disjoint():
    assert not set(GENERATORS["train"]) & set(GENERATORS["eval"])
    assert not set(PATTERNS["train"]) & set(PATTERNS["eval"])
    seen = {"train": set(), "eval": set(), "hard": set()}
    for fam in seen:
        for k in range(40):
            spec = sample_anomaly(np.random.default_rng([k, 7]), fam)
            assert spec.family == fam
            assert spec.pattern in PATTERNS[fam]
            seen[fam].add(spec.generator)
    assert seen["train"] <= set(GENERATORS["train"]) and seen["eval"] <= set(GENERATORS["eval"])
    assert all(g.startswith("hard_") for g in seen["hard"])
    assert not seen["train"] & (seen["eval"] | seen["hard"])
    assert len(seen["train"]) == len(GENERATORS["train"]) and len(seen["eval"]) == len(GENERATORS["eval"])


def test_extended_train_family():
    extra = set(PATTERNS["train_ext"]) - set(PATTERNS["train"])
    assert extra and not set(PATTERNS["train_ext"]) & set(PATTERNS["eval"])
    ext = [sample_anomaly(np.random.default_rng([k, 7]), "train_ext") for k in range(120)]
    base = [sample_anomaly(np.random.default_rng([k, 7]), "train") for k in range(120)]
    assert {s.pattern for s in ext} >= extra and not {s.pattern for s in base} & extra
    assert {s.generator for s in ext} == set(GENERATORS["train"])
    x, y = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(0, 1, 32))
    for kind in sorted(extra):
        pat = make_pattern(np.random.default_rng(1), kind)
        rgb = paint(pat, x.ravel().astype(np.float32), y.ravel().astype(np.float32))
        assert rgb.shape == (x.size, 3) and np.isfinite(rgb).all()
        assert rgb.std(axis=0).max() > 5, kind  # a texture, not a flat colour
    cols = _hsv_colors(np.random.default_rng(0), 2000)
    assert cols.min() >= 0 and cols.max() <= 255
    sat = 1 - cols.min(1) / np.maximum(cols.max(1), 1e-6)
    assert (sat < 0.3).mean() > 0.2  # dull colours are common, unlike in a uniform RGB cube


def test_same_street_for_every_family():
    """The scene stream is independent of the anomaly stream: stuff far from anomalies agrees."""
    a, b = render_sample(3, 1, SIZE, "none"), render_sample(3, 1, SIZE, "eval")
    assert (a.semantic == b.semantic).mean() > 0.8


def test_bad_arguments():
    with pytest.raises(UsageError, match="anomalies"):
        render_sample(0, 0, SIZE, "weird")
    with pytest.raises(UsageError, match="even"):
        render_sample(0, 0, (101, 64), "eval")
