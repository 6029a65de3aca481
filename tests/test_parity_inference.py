"""Parity of the test-time path (semantic output, anomaly maps, flip averaging, the
refinement, the official predictor's resize) with the official implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close
from PIL import Image

from m2a_pipe.inference.predictor import Predictor, full_resolution_semantic
from m2a_pipe.inference.preprocess import resize_uint8, shortest_edge_size
from m2a_pipe.inference.scoring import official_semantic_inference, upsample_masks

TOL_SEM = dict(abs_tol=5e-4)
TOL_ANOMALY = dict(abs_tol=5e-4, allowed_frac=1e-3)
TOL_PRED_LOGITS = dict(abs_tol=5e-4, rel_scale=5e-4, rel=1e-3)
TOL_PRED_ANOMALY = dict(abs_tol=2e-3, allowed_frac=2e-3)


def run(golden, variant: str | None, resize: bool) -> dict:
    """Everything the official evaluation computes for one variant at one level."""
    predictor = Predictor(golden.model(variant), resize=resize, precision="fp32")
    image = golden.outputs["input_rgb_uint8"]
    size = image.shape[:2]
    out, out_lr = predictor.forward([image]), predictor.forward([np.ascontiguousarray(image[:, ::-1])])
    res = {"pred_logits": out["pred_logits"][0], "pred_logits_lr": out_lr["pred_logits"][0]}
    for name, o in (("na", out), ("lr", out_lr)):
        sem = predictor.sem_seg(o["pred_logits"][0], o["pred_masks"][0], o["input_size"], size)
        amap = predictor.anomaly_map(o["pred_logits"][0], o["pred_masks"][0], o["input_size"], size, sem)
        res[f"sem_{name}"], res[name] = sem, amap if name == "na" else amap.flip(-1)
    res["avg"] = ((res["na"] + res["lr"]) / 2)[None]
    res["predictor"] = predictor
    return res


@pytest.fixture(scope="module")
def model_level(golden):
    return {v: run(golden, v, resize=False) for v in [None, *golden.variants()]}


@pytest.fixture(scope="module")
def predictor_level(golden):
    if not golden.has("predictor.anomaly.avg"):
        pytest.skip("no predictor-level outputs in this golden folder")
    return {v: run(golden, v, resize=True) for v in [None, *golden.variants()]}


def prefixes(golden):
    return [(None, ""), *[(v, f"{v}.") for v in golden.variants()]]


def refine_allowance(golden, key: str):
    """Pixels where the refinement's max is within 1e-3 of 0.5 may flip (golden README)."""
    return None if key not in golden.outputs else np.abs(golden.outputs[key] - 0.5) <= 1e-3


def test_parity_sem_seg(golden, model_level):
    checked = 0
    for variant, p in prefixes(golden):
        if golden.has(f"{p}sem_seg"):
            ref = golden.outputs[f"{p}sem_seg"]
            got = model_level[variant]["sem_na"]
            assert got.shape[0] == ref.shape[0], f"{p}sem_seg: {got.shape[0]} channels, official {ref.shape[0]}"
            assert_close(f"{p}sem_seg", got, ref, **TOL_SEM)
            checked += 1
    assert checked >= 1


def test_parity_refinement_map(golden, model_level):
    """The max over the kept-query channels before binarisation (``refine_max_extra``)."""
    keys = [(v, p) for v, p in prefixes(golden) if golden.has(f"{p}refine_max_extra")]
    if not keys:
        pytest.skip("no refine_max_extra in this golden folder")
    k = golden.config.num_classes
    for variant, p in keys:
        sem = model_level[variant]["sem_na"]
        assert sem.shape[0] > k, f"{p}: the official model kept queries, this one none"
        assert_close(f"{p}refine_max_extra", sem[k:].max(0).values,
                     golden.outputs[f"{p}refine_max_extra"], **TOL_SEM)


@pytest.mark.parametrize("which", ["na", "lr", "avg"])
def test_parity_anomaly_model_level(golden, model_level, which):
    checked = 0
    for variant, p in prefixes(golden):
        key = f"{p}anomaly.model.{which}"
        if golden.has(key):
            allowed = refine_allowance(golden, f"{p}refine_max_extra") if which == "na" else None
            assert_close(key, model_level[variant][which], golden.outputs[key],
                         allowed_where=allowed, **TOL_ANOMALY)
            checked += 1
    assert checked >= 1


def test_parity_refinement_changes_the_map(golden, model_level):
    """Where the official model refines (>= 2 kept queries), so does ours, and it matters."""
    for variant, p in prefixes(golden):
        extra = model_level[variant]["sem_na"].shape[0] - golden.config.num_classes
        if extra > 1:
            sem = model_level[variant]["sem_na"]
            unrefined = 1 - sem.max(0).values
            assert (unrefined != model_level[variant]["na"]).float().mean() > 0.01


def test_parity_predictor_resize(golden):
    path = golden.path / "predictor_resized_input.png"
    if not path.is_file():
        pytest.skip("no predictor_resized_input.png")
    image = golden.outputs["input_rgb_uint8"]
    pre = golden.config.preprocess
    size = shortest_edge_size(*image.shape[:2], pre.min_size_test, pre.max_size_test)
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(resize_uint8(image, size), expected)


def test_parity_predictor_logits(golden, predictor_level):
    for variant, p in prefixes(golden):
        for name in ("pred_logits", "pred_logits_lr"):
            key = f"{p}predictor.{name}"
            if golden.has(key):
                assert_close(key, predictor_level[variant][name], golden.outputs[key], **TOL_PRED_LOGITS)


@pytest.mark.parametrize("which", ["na", "lr", "avg"])
def test_parity_predictor_anomaly(golden, predictor_level, which):
    checked = 0
    for variant, p in prefixes(golden):
        key = f"{p}predictor.anomaly.{which}"
        if golden.has(key):
            assert_close(key, predictor_level[variant][which], golden.outputs[key], **TOL_PRED_ANOMALY)
            checked += 1
    assert checked >= 1


def test_parity_predictor_sem_seg_max(golden, predictor_level):
    for variant, p in prefixes(golden):
        key = f"{p}predictor.sem_seg_max_over_channels"
        if golden.has(key):
            got = predictor_level[variant]["sem_na"].max(0).values
            assert_close(key, got, golden.outputs[key], **TOL_PRED_ANOMALY)
        key = f"{p}predictor.refine_max_extra"
        if golden.has(key):
            sem = predictor_level[variant]["sem_na"]
            got = sem[golden.config.num_classes:].max(0).values
            assert_close(key, got, golden.outputs[key], **TOL_PRED_ANOMALY)


def test_banded_semantic_equals_full_upsampling(golden):
    """Band-by-band semantic inference equals upsampling all masks at once (to rounding),
    for band heights that do and do not divide the image, with kept extra channels."""
    cfg = golden.config
    torch.manual_seed(0)
    masks = torch.randn(5, 13, 24) * 4
    logits = torch.randn(5, cfg.num_classes + 1) * 3
    logits[:3, 4] = 20.0  # three confident queries of a refinement class: 3 extra channels
    expected = official_semantic_inference(logits, upsample_masks(masks, (52, 96)), cfg.refine_ids, 0.95)
    assert expected.shape[0] == cfg.num_classes + 3
    for band in (4, 8, 12, 52, 128):
        got = full_resolution_semantic(logits, masks, cfg.refine_ids, 0.95, band_rows=band)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-6, f"band {band}"
