"""The high-level Predictor API on a small random network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from m2a_pipe.config import preset
from m2a_pipe.inference.forward import ForwardCore, grid_maps, precision_for, upsample_map
from m2a_pipe.inference.predictor import Predictor
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.settings import MAP_STRIDES


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(preset("small"))


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_single_batch_and_list_inputs(model):
    predictor = Predictor(model, resize=False)
    a, b = image(64, 96, 1), image(64, 96, 2)
    one = predictor(a)
    assert one.anomaly.shape == (64, 96) and one.anomaly.dtype == np.float32
    assert one.semantic.shape == (64, 96) and one.semantic.max() < 19
    batch = predictor(np.stack([a, b]))
    assert len(batch) == 2
    np.testing.assert_allclose(batch[0].anomaly, one.anomaly, atol=1e-4)
    mixed = predictor([a, image(50, 70, 3)])  # different sizes: padding, then cropping back
    assert mixed[1].anomaly.shape == (50, 70) and mixed[1].sem_seg.shape[-2:] == (50, 70)
    np.testing.assert_allclose(mixed[0].anomaly, one.anomaly, atol=1e-4)


def test_flip_average_is_the_mean_of_both_passes(model):
    a = image(64, 96)
    plain = Predictor(model, resize=False)(a).anomaly
    flipped = Predictor(model, resize=False)(np.ascontiguousarray(a[:, ::-1])).anomaly
    both = Predictor(model, resize=False, flip=True)(a).anomaly
    np.testing.assert_allclose(both, (plain + flipped[:, ::-1]) / 2, atol=1e-5)


def test_other_scores_and_open_set(model):
    a = image(64, 96)
    rba = Predictor(model, resize=False, score="rba")(a)
    assert rba.anomaly.shape == (64, 96) and np.isfinite(rba.anomaly).all()
    threshold = float(np.sort(rba.anomaly.ravel())[rba.anomaly.size // 2])  # a pixel's own value: a tie
    res = Predictor(model, resize=False, score="rba", open_set_threshold=threshold)(a)
    unknown = res.open_set == model.config.num_classes
    np.testing.assert_array_equal(unknown, res.anomaly > threshold)  # strict, as the reference labels
    np.testing.assert_array_equal(res.open_set[~unknown], res.semantic[~unknown])
    with pytest.raises(ValueError, match="unknown score"):
        Predictor(model, score="nonsense")


def test_resize_runs_the_network_at_the_test_size(model):
    predictor = Predictor(model, resize=True)
    predictor.config = predictor.config.replace(preprocess=dataclasses.replace(
        predictor.config.preprocess, min_size_test=96, max_size_test=192))
    out = predictor.forward([image(40, 60)])
    assert out["input_size"] == (96, 144)
    assert out["pred_masks"].shape[-2:] == (24, 40)  # padded to 96x160, over 4
    assert predictor(image(40, 60)).anomaly.shape == (40, 60)


def test_panoptic_at_image_size(model):
    predictor = Predictor(model, resize=False)
    res = predictor(image(50, 70))
    panoptic, segments = predictor.panoptic(res)
    assert panoptic.shape == (50, 70)
    ids = set(np.unique(panoptic)) - {0}
    assert ids == {s["id"] for s in segments}
    assert sum(s["area"] for s in segments) == int((panoptic > 0).sum())


def test_bad_input_names_the_image(model):
    predictor = Predictor(model, resize=False)
    with pytest.raises(ValueError, match="image 1"):
        predictor([image(32, 32), np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((32, 32, 3), dtype=np.float32))


def test_from_weights_loads_a_saved_file(model, tmp_path):
    from m2a_pipe.model.checkpoint import save_weights

    path = save_weights(model, model.config, tmp_path / "small.safetensors")
    a = image(64, 96)
    loaded = Predictor.from_weights(path, resize=False)
    np.testing.assert_allclose(loaded(a).anomaly, Predictor(model, resize=False)(a).anomaly, atol=1e-5)
    with pytest.raises(Exception, match="missing.safetensors: no such weights file"):
        Predictor.from_weights(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("map_stride", MAP_STRIDES)
def test_every_map_stride_gives_image_size_maps_and_flip_averages(model, map_stride):
    a = image(50, 70, 4)  # padded to 64x96 inside the network
    plain = Predictor(model, resize=False, map_stride=map_stride)(a)
    assert plain.anomaly.shape == (50, 70) and plain.anomaly.dtype == np.float32
    mirrored = Predictor(model, resize=False, map_stride=map_stride)(np.ascontiguousarray(a[:, ::-1])).anomaly
    both = Predictor(model, resize=False, map_stride=map_stride, flip=True)(a).anomaly
    np.testing.assert_allclose(both, (plain.anomaly + mirrored[:, ::-1]) / 2, atol=1e-6)
    official = Predictor(model, resize=False)(a)
    np.testing.assert_array_equal(plain.semantic, official.semantic)  # semantic: official at every stride
    assert np.array_equal(plain.anomaly, official.anomaly) == (map_stride == 1)


@pytest.mark.parametrize("map_stride", [2, 4])
def test_grid_strides_are_the_core_maps_upsampled(model, map_stride):
    predictor = Predictor(model, resize=False, map_stride=map_stride, score="msp")
    a = image(50, 70, 5)
    out = predictor.forward([a])
    grid, labels = grid_maps("msp", out["pred_logits"], out["pred_masks"], (50, 70), map_stride,
                             model.config.refine_ids, model.config.keep_threshold)
    assert grid.shape == labels.shape == (1, -(-50 // map_stride), -(-70 // map_stride))
    expected = upsample_map(grid, (50, 70), map_stride, (50, 70))[0].numpy()
    assert np.array_equal(predictor(a).anomaly, expected)


def test_forward_is_the_shared_core_with_the_precision_rule(model):
    predictor = Predictor(model, resize=False)
    assert isinstance(predictor.core, ForwardCore)
    assert predictor.core.precision == precision_for("cpu") and not predictor.core.precision.autocast
    assert Predictor(model, precision="fp32").core.precision == precision_for("cpu", "fp32")
    a = image(64, 96, 6)
    out = predictor.forward([a])
    logits, masks = predictor.core(predictor.core.batch([a]))
    assert out["pred_logits"].dtype == out["pred_masks"].dtype == torch.float32
    assert torch.equal(out["pred_logits"], logits) and torch.equal(out["pred_masks"], masks)
    with pytest.raises(ValueError, match="map_stride must be one of"):
        Predictor(model, map_stride=8)
