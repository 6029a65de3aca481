"""Tests of m2a_pipe.inference.preprocess: resize sizes, Pillow bit-exactness, normalisation and padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import golden_dir
from PIL import Image

from m2a_pipe.config import PIXEL_MEAN_RGB, PIXEL_STD_RGB
from m2a_pipe.inference.preprocess import (
    normalize_and_pad,
    padded_size,
    resize_uint8,
    shortest_edge_size,
    to_chw_tensor,
)


@pytest.mark.parametrize("hw, expected", [
    ((160, 320), (1024, 2048)),
    ((480, 640), (1024, 1365)),   # 640 * 1024 / 480 = 1365.33
    ((640, 480), (1365, 1024)),   # portrait
    ((1080, 1920), (1024, 1820)),  # 1920 * 1024 / 1080 = 1820.44
    ((1000, 1000), (1024, 1024)),
    ((100, 1000), (205, 2048)),    # long side capped: 1024 * 2048 / 10240 = 204.8
    ((720, 1281), (1024, 1822)),   # 1281 * 1024 / 720 = 1821.87 -> rounds up
])
def test_shortest_edge_size(hw, expected):
    assert shortest_edge_size(*hw) == expected


def test_shortest_edge_size_custom_limits():
    # 300x400 with short 600: 600x800 exceeds max 700 -> 525x700
    assert shortest_edge_size(300, 400, short_edge=600, max_size=700) == (525, 700)


def test_resize_matches_official_predictor_bytes():
    g = golden_dir()
    image = np.asarray(Image.open(g / "input.png").convert("RGB"))
    expected = np.asarray(Image.open(g / "predictor_resized_input.png").convert("RGB"))
    size = shortest_edge_size(*image.shape[:2])
    assert size == expected.shape[:2]
    got = resize_uint8(image, size)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_resize_same_size_returns_input_and_rejects_bad_dtype():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert resize_uint8(img, (5, 7)) is img
    assert resize_uint8(img, (10, 14)).shape == (10, 14, 3)
    with pytest.raises(ValueError):
        resize_uint8(img.astype(np.float32), (10, 14))


def test_to_chw_tensor():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = to_chw_tensor(img)
    assert t.dtype == torch.uint8 and t.shape == (3, 2, 3)
    assert t[1, 1, 2].item() == img[1, 2, 1]


@pytest.mark.parametrize("hw, div, expected", [
    ((160, 320), 32, (160, 320)), ((161, 321), 32, (192, 352)), ((31, 1), 32, (32, 32)),
    ((7, 9), 0, (7, 9)), ((7, 9), 1, (7, 9)),
])
def test_padded_size(hw, div, expected):
    assert padded_size(*hw, div) == expected


def test_normalize_and_pad_values_and_padding():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (2, 3, 35, 40), dtype=np.uint8)
    out = normalize_and_pad(torch.from_numpy(img), PIXEL_MEAN_RGB, PIXEL_STD_RGB, 32)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 64, 64)
    mean = np.array(PIXEL_MEAN_RGB, dtype=np.float32)[:, None, None]
    std = np.array(PIXEL_STD_RGB, dtype=np.float32)[:, None, None]
    expected = (img.astype(np.float32) - mean) / std
    np.testing.assert_allclose(out[:, :, :35, :40].numpy(), expected, rtol=0, atol=1e-6)
    assert torch.count_nonzero(out[:, :, 35:, :]) == 0
    assert torch.count_nonzero(out[:, :, :, 40:]) == 0
    # float input 0..255 gives the same result
    out_f = normalize_and_pad(torch.from_numpy(img).double(), PIXEL_MEAN_RGB, PIXEL_STD_RGB, 32)
    assert torch.equal(out, out_f)


def test_normalize_and_pad_matches_golden_model_input():
    g = golden_dir()
    data = np.load(g / "outputs.npz")
    rgb = data["input_rgb_uint8"]
    batch = to_chw_tensor(rgb)[None]
    got = normalize_and_pad(batch, PIXEL_MEAN_RGB, PIXEL_STD_RGB, 32)[0].numpy()
    ref = data["model_input"]
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= 1e-5 + 1e-6 * np.abs(ref))
