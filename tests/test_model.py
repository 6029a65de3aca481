"""Unit tests of the network's parts (beyond the golden parity tests)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import m2a_pipe.model.ms_deform_attn as deform
from m2a_pipe.config import BackboneConfig, ConfigError, DecoderConfig, preset
from m2a_pipe.model.backbone import ResNet
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.model.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_reference,
    sampling_grid,
    softmax_last,
    use_reference_core,
)
from m2a_pipe.model.pixel_decoder import upsample_bilinear
from m2a_pipe.model.position_encoding import sine_position_encoding
from m2a_pipe.model.transformer_decoder import _allow_all_if_empty


def _lean(value, shapes, locations, weights, reference=None):
    """The lean core on normalised ``locations`` (B, Q, M, L, P, 2), from ``reference``
    points (Q, 2) (random when None)."""
    b, q, m, n_lvl, p, _ = locations.shape
    if reference is None:
        reference = torch.rand(q, 2, dtype=locations.dtype)
    size = torch.tensor([[w, h] for h, w in shapes], dtype=locations.dtype)
    offsets = (locations - reference[None, :, None, None, None, :]) * size[:, None, :]
    grid = sampling_grid(shapes, reference.float(), b, m, p)
    return ms_deform_attn(value, grid, offsets, weights)


def test_lean_deformable_core_equals_reference():
    torch.manual_seed(0)
    b, m, d, p = 2, 3, 4, 5
    shapes = [(3, 5), (6, 10), (12, 20)]
    s = sum(h * w for h, w in shapes)
    q = 17
    value = torch.randn(b, s, m, d)
    locations = torch.rand(b, q, m, len(shapes), p, 2) * 1.4 - 0.2  # some points fall outside
    weights = torch.rand(b, q, m, len(shapes), p)
    expected = ms_deform_attn_reference(value, shapes, locations, weights)  # (B, Q, M*D)
    torch.testing.assert_close(_lean(value, shapes, locations, weights), expected, atol=1e-5, rtol=1e-5)


def test_lean_deformable_core_at_and_beyond_the_borders():
    """Locations on the outermost pixel centres, on the map's edges, half a pixel and far
    beyond them, in both axes: zeros outside the map exactly as grid_sample pads them."""
    torch.manual_seed(3)
    shapes = [(4, 6), (2, 3)]  # the narrower level is padded to the wider one's rows
    s = sum(h * w for h, w in shapes)
    value = torch.randn(1, s, 2, 3)
    edges = torch.tensor([-3.0, -1.0 / 12, 0.0, 1.0 / 12, 0.5, 11.0 / 12, 1.0, 13.0 / 12, 1.5, 4.0])
    xs, ys = torch.meshgrid(edges, edges, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], -1)  # (Q, 2)
    q = points.shape[0]
    locations = points[None, :, None, None, None, :].expand(1, q, 2, 2, 1, 2).contiguous()
    weights = torch.rand(1, q, 2, 2, 1)
    expected = ms_deform_attn_reference(value, shapes, locations, weights)
    got = _lean(value, shapes, locations, weights, reference=torch.zeros(q, 2))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    far = (locations.abs() > 1.5).any(-1)[0, :, 0, 0, 0]  # every corner outside: exactly zero
    assert far.any() and got[0, far].abs().max() == 0


def test_lean_deformable_core_gradients_match_reference():
    torch.manual_seed(4)
    shapes = [(3, 4), (2, 2)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 2, 3, dtype=torch.float64)
    locations = (torch.rand(2, 5, 2, 2, 3, 2, dtype=torch.float64) * 1.2 - 0.1)
    weights = torch.rand(2, 5, 2, 2, 3, dtype=torch.float64)
    reference = torch.rand(5, 2, dtype=torch.float64)
    grads = []
    for lean in (False, True):
        v, loc, w = (t.clone().requires_grad_() for t in (value, locations, weights))
        out = _lean(v, shapes, loc, w, reference) if lean else ms_deform_attn_reference(v, shapes, loc, w)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads.append((v.grad, loc.grad, w.grad))
    for expected, got in zip(*grads):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_softmax_last_matches_torch_in_place_and_with_autograd():
    x = torch.randn(3, 5, 12) * 30
    expected = x.softmax(-1)
    torch.testing.assert_close(softmax_last(x.clone()), expected)
    y = x.clone().requires_grad_()
    got = softmax_last(y)
    torch.testing.assert_close(got, expected)
    got[..., 0].sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_deformable_layer_cores_agree():
    torch.manual_seed(1)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.1)
    torch.nn.init.normal_(layer.attention_weights.weight, std=0.1)
    shapes = [(4, 6), (2, 3)]
    s = sum(h * w for h, w in shapes)
    src = torch.randn(2, s, 16)
    ref = torch.rand(s, 2)
    lean = layer(src, ref, src, shapes)
    assert use_reference_core(layer, True) == 1
    straightforward = layer(src, ref, src, shapes)
    torch.testing.assert_close(lean, straightforward, atol=1e-5, rtol=1e-5)


def test_reference_core_switch_is_per_model(monkeypatch):
    torch.manual_seed(2)
    switched, other = build_model(preset("small")).eval(), build_model(preset("small")).eval()
    n = use_reference_core(switched, True)
    assert n > 0 and n == sum(isinstance(m, MSDeformAttn) for m in switched.modules())
    assert all(m.use_reference_core for m in switched.modules() if isinstance(m, MSDeformAttn))
    assert not any(m.use_reference_core for m in other.modules() if isinstance(m, MSDeformAttn))
    assert "use_reference_core" not in vars(MSDeformAttn)  # no process-wide flag
    calls = []
    real = deform.ms_deform_attn_reference
    monkeypatch.setattr(deform, "ms_deform_attn_reference", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        other(x)
        assert calls == []  # the other model still runs the lean core
        switched(x)
        assert len(calls) == n  # each switched layer ran the reference core once
    use_reference_core(switched, False)
    assert not any(m.use_reference_core for m in switched.modules() if isinstance(m, MSDeformAttn))


def test_sine_position_encoding_matches_formula():
    h, w, f = 3, 4, 6
    pos = sine_position_encoding(2, h, w, f)
    assert pos.shape == (2, 2 * f, h, w)
    scale = 2 * math.pi
    for y in range(h):
        for x in range(w):
            for i in range(f):
                freq = 10000 ** (2 * (i // 2) / f)
                ay = (y + 1) / (h + 1e-6) * scale / freq
                ax = (x + 1) / (w + 1e-6) * scale / freq
                fy = math.sin(ay) if i % 2 == 0 else math.cos(ay)
                fx = math.sin(ax) if i % 2 == 0 else math.cos(ax)
                assert pos[1, i, y, x].item() == pytest.approx(fy, abs=1e-5)
                assert pos[1, f + i, y, x].item() == pytest.approx(fx, abs=1e-5)


@pytest.mark.parametrize("depth,blocks,res2", [(18, (2, 2, 2, 2), 64), (34, (3, 4, 6, 3), 64),
                                                (50, (3, 4, 6, 3), 256), (101, (3, 4, 23, 3), 256)])
def test_resnet_depths(depth, blocks, res2):
    net = ResNet(BackboneConfig(depth=depth, res2_out_channels=res2))
    keys = net.state_dict().keys()
    for stage, n in zip(("res2", "res3", "res4", "res5"), blocks):
        assert f"{stage}.{n - 1}.conv1.weight" in keys and f"{stage}.{n}.conv1.weight" not in keys
    assert ("res2.0.conv3.weight" in keys) == (depth >= 50)
    out = net.eval()(torch.randn(1, 3, 64, 96))
    for i, (name, feat) in enumerate(out.items()):
        assert feat.shape == (1, res2 * 2**i, 64 // 2 ** (i + 2), 96 // 2 ** (i + 2)), name


def test_stride_in_1x1_moves_the_stride():
    a = ResNet(BackboneConfig(depth=50, stride_in_1x1=False))
    b = ResNet(BackboneConfig(depth=50, stride_in_1x1=True))
    assert a.res3[0].conv1.stride == (1, 1) and a.res3[0].conv2.stride == (2, 2)
    assert b.res3[0].conv1.stride == (2, 2) and b.res3[0].conv2.stride == (1, 1)


def test_res5_dilation_keeps_stride_16():
    net = ResNet(BackboneConfig(depth=50, res5_dilation=2)).eval()
    out = net(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape[-2:] == out["res4"].shape[-2:]


def test_config_validation():
    with pytest.raises(ConfigError, match="depth"):
        BackboneConfig(depth=42)
    with pytest.raises(ConfigError, match="attention"):
        DecoderConfig(attention="local")
    cfg = preset("small")
    assert cfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        cfg.from_dict({**cfg.to_dict(), "bogus": 1})


def test_empty_attention_rows_attend_everywhere():
    allowed = torch.tensor([[[True, False, False], [False, False, False]]])
    out = _allow_all_if_empty(allowed)
    assert out.tolist() == [[[True, False, False], [True, True, True]]]


def small_model(**decoder_changes):
    cfg = preset("small")
    cfg = cfg.replace(decoder=dataclasses.replace(cfg.decoder, **decoder_changes))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_forward_shapes_and_aux_count():
    model = small_model(dec_layers=6)  # 5 layers: the feature level wraps around (0,1,2,0,1)
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 96, 128))
    k = model.config.num_classes
    assert out["pred_logits"].shape == (2, 20, k + 1)
    assert out["pred_masks"].shape == (2, 20, 24, 32)
    assert len(out["aux_outputs"]) == 5


def test_batch_equals_single_images():
    model = small_model()
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        both = model(x)
        one = model(x[1:])
    torch.testing.assert_close(both["pred_masks"][1], one["pred_masks"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both["pred_logits"][1], one["pred_logits"][0], atol=1e-4, rtol=1e-4)


def test_global_and_plain_masked_attention_differ_and_pre_norm_runs():
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        gma = small_model()(x)["pred_logits"]
        plain = small_model(attention="masked")(x)["pred_logits"]
        pre = small_model(pre_norm=True)(x)["pred_logits"]
    assert not torch.allclose(gma, plain)
    assert torch.isfinite(pre).all()
    keys = small_model(attention="masked").state_dict().keys()
    assert not any("background" in k or "fusion_layer" in k for k in keys)


def test_folded_batch_norm_survives_device_moves_and_reloads():
    model = small_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model.backbone(x)["res5"]
        model.prepare_for_inference()
        folded = model.backbone(x)["res5"]
    torch.testing.assert_close(folded, expected, atol=1e-4, rtol=1e-4)
    conv = model.backbone.stem.conv1
    assert conv.folded_weight is not None and "stem.conv1.folded_weight" not in model.backbone.state_dict()
    model.load_state_dict(model.state_dict())
    assert conv.folded_weight is None  # reloading weights drops the stale folded copy
    model.prepare_for_inference().train()
    assert conv.folded_weight is None


@pytest.mark.parametrize("shape,size", [((2, 5, 3, 4), (6, 8)), ((1, 3, 2, 2), (4, 4)), ((1, 2, 3, 5), (7, 9))])
@pytest.mark.parametrize("channels_last", [True, False])
def test_upsample_bilinear_equals_interpolate(shape, size, channels_last):
    torch.manual_seed(5)
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        got = upsample_bilinear(x, size)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_sampling_grid_is_kept_for_the_next_frame_and_rebuilt_when_the_input_changes():
    torch.manual_seed(6)
    model = build_model(preset("small")).eval()
    encoder = model.sem_seg_head.pixel_decoder.transformer
    with torch.no_grad():
        first = model(torch.randn(1, 3, 64, 96))
        kept = encoder._sampling_cache
        again = model(torch.randn(1, 3, 64, 96))
        assert encoder._sampling_cache is kept  # same shapes and batch: not rebuilt
        model(torch.randn(2, 3, 64, 128))
        key, _, grid = encoder._sampling_cache
        assert key[1] == 2 and grid.first.shape[0] == 2 and grid.row == 128 // 8 + 3
        encoder._sampling_cache = None  # a fresh grid gives the same result as the kept one
        fresh = model(torch.randn(1, 3, 64, 96) * 0 + 1)
        encoder._sampling_cache = kept
        torch.testing.assert_close(model(torch.randn(1, 3, 64, 96) * 0 + 1)["pred_masks"], fresh["pred_masks"])
    assert first["pred_masks"].shape == again["pred_masks"].shape
