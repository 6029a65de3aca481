"""The paper's recipes against the official training configuration, value by value.

The official values are transcribed in tests/official_training_config.json with the file and
key each comes from; every one must be what the recipe (its ``extends`` resolved and its
loss mode applied) runs with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m2a_pipe.training.augment import AugmentConfig, augment, rng_for
from m2a_pipe.training.recipes import Recipe

REPO = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((Path(__file__).with_name("official_training_config.json")).read_text())


def lookup(spec: dict, dotted: str):
    node = spec
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("recipe_path", sorted(FIXTURE["recipes"]))
def test_paper_recipe_is_the_official_configuration(recipe_path):
    spec = Recipe.load(REPO / recipe_path).to_dict()
    entries = FIXTURE["recipes"][recipe_path]
    assert entries and all(e["file"] and e["official_key"] for e in entries)
    wrong = [f"{e['key']}: recipe {lookup(spec, e['key'])!r}, official {e['value']!r} ({e['file']} {e['official_key']})"
             for e in entries if lookup(spec, e["key"]) != e["value"]]
    assert not wrong, "\n".join(wrong)


def test_every_paper_recipe_is_in_the_fixture():
    shipped = {f"train/{p.name}" for p in (REPO / "train").glob("*.json")}
    assert shipped == set(FIXTURE["recipes"])


def test_demo_recipes_name_their_deliberate_choices():
    spec = Recipe.load(REPO / "train/demo/09_stage2_v6g.json").to_dict()
    assert spec["loss"]["mode"] == "project"
    assert (spec["loss"]["point_padding"], spec["loss"]["outlier_score"], spec["loss"]["outlier_layers"],
            spec["loss"]["margin"]) == ("border", "one_minus_g", "last", 0.75)
    assert spec["loss"]["outlier_resolution"] == "input"  # demo v3 on
    assert spec["augment"]["resize"] == "box" and spec["augment"]["hue_delta"] == 0
    assert spec["anomaly_mix"]["placement"] == "batch"


def test_shortest_edge_resize_then_a_crop_inside_the_image():
    """Official geometry: the shorter side becomes one of the listed sizes, the crop lies
    inside the rescaled image (smaller where the image is), nothing is padded."""
    h, w = 64, 128
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :, 0] = np.arange(w, dtype=np.uint8)[None]
    sem = np.zeros((h, w), np.uint8)
    cfg = AugmentConfig(crop=(40, 80), short_edges=(32, 96), max_size=1000, color=False, flip=False)
    shapes = set()
    for i in range(40):
        img, labels = augment(image, {"semantic": sem}, rng_for(0, i), cfg)
        shapes.add(img.shape[:2])
        assert labels["semantic"].shape == img.shape[:2] and (labels["semantic"] != 255).all()
    assert shapes == {(32, 64), (40, 80)}  # the short edge 32 gives the whole 32x64 image
    capped = AugmentConfig(crop=(400, 800), short_edges=(96,), max_size=150, color=False, flip=False)
    assert augment(image, {"semantic": sem}, rng_for(1), capped)[0].shape[:2] == (75, 150)


def test_ssd_colour_jitter_changes_hue():
    """With hue_delta > 0 some draws rotate the hue: a pure red pixel gains green or blue."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 200
    cfg = AugmentConfig(crop=(8, 8), short_edges=(8,), flip=False, brightness_delta=0.0,
                        contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0), hue_delta=18)
    out = [augment(image, {}, rng_for(2, i), cfg)[0] for i in range(20)]
    assert any(int(o[..., 1:].max()) > 20 for o in out)
    assert any(np.array_equal(o, image) for o in out)  # p = 0.5: some draws leave it


def test_loss_mode_fills_the_options_left_null():
    from m2a_pipe.config import ConfigError

    base = {"name": "x", "stage": 2}
    official = Recipe.from_dict(base).loss
    assert (official.mode, official.point_padding, official.outlier_score, official.outlier_resolution,
            official.outlier_layers, official.margin) == ("official", "zeros", "neg_g", "crop", "all", 1.0)
    mixed = Recipe.from_dict({**base, "loss": {"mode": "project", "margin": 1.0}}).loss
    assert (mixed.point_padding, mixed.outlier_layers, mixed.margin) == ("border", "last", 1.0)
    for bad, needle in (({"mode": "paper"}, "loss.mode"), ({"point_padding": "reflect"}, "point_padding"),
                        ({"outlier": "bce"}, "bce needs")):
        with pytest.raises(ConfigError, match=needle):
            Recipe.from_dict({**base, "loss": bad})
    assert Recipe.from_dict({**base, "loss": {"outlier": "bce", "mode": "project"}}).loss.outlier == "bce"
