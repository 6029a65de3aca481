"""Stage-by-stage parity of the network with the official implementation (golden folder).

Tolerances are the golden README's table. Select with ``pytest -k parity``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import assert_close

from m2a_pipe.inference.preprocess import normalize_and_pad
from m2a_pipe.model.checkpoint import load_into
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.model.transformer_decoder import plain_state_dict_from_gma

TOL_BACKBONE = dict(rel_scale=3e-4, rel=1e-4)
TOL_PIXEL_DECODER = dict(rel_scale=5e-4, rel=1e-4)
TOL_LOGITS = dict(abs_tol=1e-4, rel_scale=1e-4, rel=1e-4)
TOL_MASKS = dict(rel_scale=2e-4, rel=1e-4)


def model_input(golden) -> torch.Tensor:
    rgb = torch.from_numpy(golden.outputs["input_rgb_uint8"]).permute(2, 0, 1)[None]
    pre = golden.config.preprocess
    return normalize_and_pad(rgb, pre.pixel_mean, pre.pixel_std, pre.size_divisibility)


@pytest.fixture(scope="module")
def stages(golden):
    """Backbone, pixel decoder and decoder outputs of the golden model on the golden input."""
    model = golden.model()
    with torch.inference_mode():
        x = model_input(golden)
        feats = model.backbone(x)
        mask_features, encoder_features, multi_scale = \
            model.sem_seg_head.pixel_decoder.forward_features(feats)
        decoder = model.sem_seg_head.predictor(multi_scale, mask_features)
    return dict(x=x, feats=feats, mask_features=mask_features,
                encoder_features=encoder_features, multi_scale=multi_scale, decoder=decoder)


def check_decoder(golden, prefix: str, out: dict) -> int:
    """Compare final and aux predictions stored under ``prefix``; returns how many arrays."""
    checked = 0
    preds = {"": out, **{f"aux.{i}.": a for i, a in enumerate(out["aux_outputs"])}}
    for sub, pred in preds.items():
        for field, tol in (("pred_logits", TOL_LOGITS), ("pred_masks", TOL_MASKS)):
            key = f"{prefix}{sub}{field}"
            if golden.has(key):
                assert_close(key, pred[field][0], golden.outputs[key], **tol)
                checked += 1
    aux = f"{prefix}aux."
    stored_aux = {k[len(aux):].split(".")[0] for k in golden.outputs if k.startswith(aux)}
    assert len(stored_aux) in (0, len(out["aux_outputs"])), \
        f"{prefix}: {len(stored_aux)} aux predictions stored, model made {len(out['aux_outputs'])}"
    return checked


def test_parity_model_input(golden, stages):
    assert_close("model_input", stages["x"][0], golden.outputs["model_input"],
                 abs_tol=1e-5, rel=1e-6)


@pytest.mark.parametrize("level", ["res2", "res3", "res4", "res5"])
def test_parity_backbone(golden, stages, level):
    assert_close(f"backbone.{level}", stages["feats"][level][0],
                 golden.outputs[f"backbone.{level}"], **TOL_BACKBONE)


def test_parity_pixel_decoder(golden, stages):
    assert_close("pixel_decoder.mask_features", stages["mask_features"][0],
                 golden.outputs["pixel_decoder.mask_features"], **TOL_PIXEL_DECODER)
    for i, feat in enumerate(stages["multi_scale"]):
        key = f"pixel_decoder.multi_scale_features.{i}"
        assert_close(key, feat[0], golden.outputs[key], **TOL_PIXEL_DECODER)
    assert stages["encoder_features"] is stages["multi_scale"][0]


def test_parity_decoder(golden, stages):
    assert check_decoder(golden, "decoder.", stages["decoder"]) >= 2


def test_parity_decoder_from_full_forward(golden, stages):
    """``model(x)`` is the same computation as the three stages called one by one."""
    with torch.inference_mode():
        out = golden.model()(stages["x"])
    assert torch.equal(out["pred_logits"], stages["decoder"]["pred_logits"])
    assert torch.equal(out["pred_masks"], stages["decoder"]["pred_masks"])


def test_parity_folded_batch_norm(golden, stages):
    """prepare_for_inference (batch norm folded into the convolutions) keeps parity."""
    model = build_model(golden.config)
    load_into(model, golden.state_dict())
    model.prepare_for_inference()
    with torch.inference_mode():
        feats = model.backbone(stages["x"])
        out = model(stages["x"])
    for level in feats:
        assert_close(f"backbone.{level} (folded)", feats[level][0],
                     golden.outputs[f"backbone.{level}"], **TOL_BACKBONE)
    check_decoder(golden, "decoder.", out)


def test_parity_plain_mask2former(golden, stages):
    if not golden.has("plain_m2f.decoder.pred_logits"):
        pytest.skip("no plain_m2f outputs in this golden folder")
    cfg = golden.config
    model = build_model(cfg.replace(decoder=dataclasses.replace(cfg.decoder, attention="masked")))
    load_into(model, plain_state_dict_from_gma(golden.state_dict()))
    model.eval()
    with torch.inference_mode():
        out = model.sem_seg_head.predictor(stages["multi_scale"], stages["mask_features"])
    assert check_decoder(golden, "plain_m2f.decoder.", out) >= 2


def test_parity_class_embed_variants(golden, stages):
    """Each ``<variant>_class_embed_override.pth`` reproduces ``<variant>.decoder.*``."""
    variants = [v for v in golden.variants() if golden.has(f"{v}.decoder.pred_logits")]
    if not variants:
        pytest.skip("no class-embed variants in this golden folder")
    for variant in variants:
        with torch.inference_mode():
            out = golden.model(variant).sem_seg_head.predictor(
                stages["multi_scale"], stages["mask_features"])
        assert check_decoder(golden, f"{variant}.decoder.", out) >= 1


def test_parity_golden_outputs_are_all_recognised(golden):
    """Every array of the golden folder is checked by some parity test."""
    known_prefixes = ("input_rgb_uint8", "model_input", "backbone.", "pixel_decoder.",
                      "decoder.", "plain_m2f.decoder.", "sem_seg", "anomaly.model.", "predictor.")
    variants = tuple(f"{v}." for v in golden.variants())
    unknown = [k for k in golden.outputs
               if not k.startswith(known_prefixes) and not k.startswith(variants)]
    assert not unknown, f"golden arrays no test compares: {unknown}"
