"""Tests of m2a_pipe.inference.scoring against explicit numpy loops and the official golden outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import golden_dir

from m2a_pipe.config import CITYSCAPES_REFINE_IDS
from m2a_pipe.inference import scoring as S

# -- independent numpy references (explicit loops) --------------------------------------


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _loop_marginal(logits, masks, use_softmax):
    """(Q, K+1), (Q, H, W) -> (K, H, W): sum_q w[q, k] * sigmoid(m[q])."""
    q_n, k1 = logits.shape
    _, h, w = masks.shape
    out = np.zeros((k1 - 1, h, w))
    for q in range(q_n):
        weights = _softmax(logits[q]) if use_softmax else logits[q]
        for k in range(k1 - 1):
            for y in range(h):
                for x in range(w):
                    out[k, y, x] += weights[k] * _sigmoid(masks[q, y, x])
    return out


@pytest.fixture
def small_outputs():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, (2, 4, 5)).astype(np.float64)  # B=2, Q=4, K=4
    masks = rng.normal(0, 3, (2, 4, 3, 5)).astype(np.float64)
    return logits, masks


def test_semantic_probs_and_pixel_logits_match_loops(small_outputs):
    logits, masks = small_outputs
    sem = S.semantic_probs(torch.from_numpy(logits), torch.from_numpy(masks)).numpy()
    lg = S.pixel_class_logits(torch.from_numpy(logits), torch.from_numpy(masks)).numpy()
    assert sem.shape == (2, 4, 3, 5) and lg.shape == (2, 4, 3, 5)
    for b in range(2):
        np.testing.assert_allclose(sem[b], _loop_marginal(logits[b], masks[b], True), atol=1e-12)
        np.testing.assert_allclose(lg[b], _loop_marginal(logits[b], masks[b], False), atol=1e-12)


def test_logit_scores_match_loops(small_outputs):
    logits, masks = small_outputs
    lt, mt = torch.from_numpy(logits), torch.from_numpy(masks)
    for b in range(2):
        L = _loop_marginal(logits[b], masks[b], False)
        P = _loop_marginal(logits[b], masks[b], True)
        rba = np.zeros(L.shape[1:]); ml = np.zeros(L.shape[1:])
        en = np.zeros(L.shape[1:]); ent = np.zeros(L.shape[1:]); msp = np.zeros(L.shape[1:])
        for y in range(L.shape[1]):
            for x in range(L.shape[2]):
                col = L[:, y, x]
                rba[y, x] = -sum(math.tanh(v) for v in col)
                ml[y, x] = -max(col)
                en[y, x] = -math.log(sum(math.exp(v) for v in col))
                p = P[:, y, x] / P[:, y, x].sum()
                ent[y, x] = -sum(v * math.log(v) for v in p)
                msp[y, x] = 1 - P[:, y, x].max()
        np.testing.assert_allclose(S.rba_score(lt, mt)[b].numpy(), rba, atol=1e-10)
        np.testing.assert_allclose(S.max_logit_score(lt, mt)[b].numpy(), ml, atol=1e-10)
        np.testing.assert_allclose(S.energy_score(lt, mt)[b].numpy(), en, atol=1e-10)
        np.testing.assert_allclose(S.entropy_score(lt, mt)[b].numpy(), ent, atol=1e-10)
        np.testing.assert_allclose(S.msp_score(lt, mt)[b].numpy(), msp, atol=1e-10)


def test_entropy_bounds_and_zero_mass():
    # one query, certain class 0 everywhere -> entropy ~ 0; masks all -inf-ish -> clamped, finite
    logits = torch.tensor([[[20.0, -20.0, -20.0, -20.0]]])
    on = torch.full((1, 1, 2, 2), 30.0)
    assert S.entropy_score(logits, on).abs().max() < 1e-6
    off = torch.full((1, 1, 2, 2), -200.0)
    assert torch.isfinite(S.entropy_score(logits, off)).all()


def test_score_registry():
    logits = torch.randn(2, 5, 4)
    masks = torch.randn(2, 5, 6, 7)
    assert set(S.SCORES) == {"msp", "rba", "max_logit", "energy", "entropy"}
    for name in S.SCORES:
        out = S.anomaly_score(name, logits, masks)
        assert out.shape == (2, 6, 7) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="known"):
        S.anomaly_score("nope", logits, masks)


def test_upsample_and_crop_and_resize_bilinear_half_pixel():
    base = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    # align_corners=False 2x: sample positions -0.25, 0.25, 0.75, 1.25 clamp to 0, .25, .75, 1
    row = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = 2 * row[:, None] + row[None, :]
    up3 = S.upsample_masks(base[None], (4, 4))
    up4 = S.upsample_masks(base[None, None], (4, 4))
    assert up3.shape == (1, 4, 4) and up4.shape == (1, 1, 4, 4)
    torch.testing.assert_close(up3[0], expected)
    # crop_and_resize: padding (row 2, col 2 of 9s) must be dropped before resizing
    padded = torch.full((1, 3, 3), 9.0)
    padded[0, :2, :2] = base
    got = S.crop_and_resize(padded, (2, 2), (4, 4))
    torch.testing.assert_close(got[0], expected)
    assert torch.equal(S.crop_and_resize(padded, (2, 2), (2, 2))[0], base)
    assert S.crop_and_resize(padded[None], (2, 2), (4, 4)).shape == (1, 1, 4, 4)


def _logits_for(probs):
    """Class logits whose softmax is exactly-ish ``probs`` (rows sum to 1)."""
    return torch.tensor(np.log(np.asarray(probs, dtype=np.float64)))


def test_official_semantic_inference_keep_rule():
    # K = 4 (ids 0..3), no-object = column 4; refine ids {1, 2}
    probs = [
        [0.01, 0.97, 0.01, 0.005, 0.005],  # q0: label 1, 0.97 -> kept
        [0.99, 0.0025, 0.0025, 0.0025, 0.0025],  # q1: label 0 not refinable
        [0.0025, 0.0025, 0.0025, 0.0025, 0.99],  # q2: no-object
        [0.02, 0.02, 0.90, 0.03, 0.03],  # q3: label 2 but 0.90 <= 0.95
        [0.01, 0.01, 0.96, 0.01, 0.01],  # q4: label 2, 0.96 -> kept
        [0.005, 0.005, 0.005, 0.98, 0.005],  # q5: label 3 not refinable
    ]
    logits = _logits_for(probs)
    masks = torch.tensor(np.random.default_rng(3).normal(0, 3, (6, 3, 4)))
    out = S.official_semantic_inference(logits, masks, refine_ids=(1, 2), keep_threshold=0.95)
    assert out.shape == (4 + 2, 3, 4)
    sig = 1 / (1 + np.exp(-masks.numpy()))
    np.testing.assert_allclose(out[4].numpy(), 0.97 * sig[0], atol=1e-12)
    np.testing.assert_allclose(out[5].numpy(), 0.96 * sig[4], atol=1e-12)
    np.testing.assert_allclose(out[:4].numpy(), _loop_marginal(logits.numpy(), masks.numpy(), True),
                               atol=1e-12)
    # empty refine ids -> nothing kept
    assert S.official_semantic_inference(logits, masks, refine_ids=()).shape[0] == 4


def test_official_anomaly_map_refinement_needs_two_extra_channels():
    sem = torch.tensor([[[0.2, 0.9]], [[0.5, 0.05]]])  # K=2, H=1, W=2 -> 1 - max = [0.5, 0.1]
    base = torch.tensor([[0.5, 0.1]])
    torch.testing.assert_close(S.official_anomaly_map(sem, 2), base)
    # extra channels never exceed the semseg max (score_q * sigmoid <= semseg[label_q])
    one = torch.cat((sem, torch.tensor([[[0.5, 0.9]]])))  # a single kept query: NOT applied
    torch.testing.assert_close(S.official_anomaly_map(one, 2), base)
    # two extra channels: max = [0.3, 0.6]; >= 0.5 zeroes pixel 1 only
    two = torch.cat((sem, torch.tensor([[[0.3, 0.6]], [[0.2, 0.1]]])))
    torch.testing.assert_close(S.official_anomaly_map(two, 2), torch.tensor([[0.5, 0.0]]))
    # binarisation is at >= 0.5 (exactly 0.5 refines)
    half = torch.cat((sem, torch.tensor([[[0.5, 0.4999]]]), torch.zeros(1, 1, 2)))
    torch.testing.assert_close(S.official_anomaly_map(half, 2), torch.tensor([[0.0, 0.1]]))
    # batched input behaves like the single image
    torch.testing.assert_close(S.official_anomaly_map(two[None], 2)[0], torch.tensor([[0.5, 0.0]]))


def test_msp_anomaly_can_be_negative():
    sem = torch.tensor([[[1.3]], [[0.2]]])
    torch.testing.assert_close(S.msp_anomaly(sem), torch.tensor([[-0.3]]))


def test_refinement_mask_equals_official_rule_at_mask_resolution():
    rng = np.random.default_rng(5)
    probs = np.full((5, 4), 0.01)
    probs[0, 1] = probs[1, 2] = 0.97  # two kept (refine ids 1, 2)
    probs[2, 0] = 0.97  # confident but excluded
    probs[3, 3] = probs[4, 3] = 0.97  # no-object
    logits = _logits_for(probs / probs.sum(1, keepdims=True))
    masks = torch.tensor(rng.normal(0, 3, (5, 6, 7)))
    sem = S.official_semantic_inference(logits, masks, (1, 2))
    assert sem.shape[0] == 3 + 2
    official = S.official_anomaly_map(sem, 3)
    r = S.refinement_mask(logits[None], masks[None], (1, 2))
    assert r.shape == (1, 6, 7)
    assert 0 < r.sum() < r.numel()  # the case really refines some pixels
    torch.testing.assert_close(r[0] * S.msp_anomaly(sem[:3]), official)
    # with only one kept query, no refinement
    r1 = S.refinement_mask(logits[None, :1], masks[None, :1], (1, 2))
    assert torch.equal(r1, torch.ones_like(r1))


def test_flip_average():
    na = torch.tensor([[1.0, 2.0, 3.0]])
    flipped_pass = torch.tensor([[30.0, 20.0, 10.0]])  # map of the mirrored image
    torch.testing.assert_close(S.flip_average(na, flipped_pass), torch.tensor([[5.5, 11.0, 16.5]]))


def test_open_set_semantic_eq14():
    sem = torch.tensor([[[0.9, 0.1, 0.2]], [[0.1, 0.8, 0.3]]])  # K=2, H=1, W=3
    anomaly = torch.tensor([[0.1, 0.5, 0.7]])
    got = S.open_set_semantic(sem, anomaly, threshold=0.5)
    assert got.dtype == torch.int64
    # unknown is anomaly > threshold (the reference's strict comparison): 0.5 at 0.5 stays known
    assert got.tolist() == [[0, 1, 2]]
    assert S.open_set_semantic(sem, anomaly, threshold=0.1).tolist() == [[0, 2, 2]]
    assert S.open_set_semantic(sem, anomaly, threshold=0.0999).tolist() == [[2, 2, 2]]
    assert S.open_set_semantic(sem[None], anomaly[None], 0.8).tolist() == [[[0, 1, 1]]]


# -- golden parity ------------------------------------------------------------------------


def _within(got, ref, tol, frac_allowed, extra_ok=None):
    bad = np.abs(got - ref) > tol
    if extra_ok is not None:
        bad &= ~extra_ok
    assert bad.mean() <= frac_allowed, f"{bad.sum()} pixels off, max diff {np.abs(got - ref).max()}"


def test_golden_semantic_inference_and_anomaly_map():
    data = np.load(golden_dir() / "outputs.npz")
    ref_sem = data["sem_seg"]
    h, w = ref_sem.shape[-2:]
    logits = torch.from_numpy(data["decoder.pred_logits"])
    masks = torch.from_numpy(data["decoder.pred_masks"])
    hp, wp = masks.shape[-2] * 4, masks.shape[-1] * 4
    sem = S.official_semantic_inference(logits, S.upsample_masks(masks, (hp, wp)), CITYSCAPES_REFINE_IDS)
    sem = S.crop_and_resize(sem, (h, w), (h, w))
    assert sem.shape == ref_sem.shape
    assert np.abs(sem.numpy() - ref_sem).max() <= 5e-4
    na = S.official_anomaly_map(sem, 19).numpy()
    _within(na, data["anomaly.model.na"], 5e-4, 1e-3)


def test_golden_class_embed_variants_anomaly_map():
    """For each class-embed variant of the golden folder (``biased``, ``biased1``, ...): the
    official rule on its stored sem_seg gives its anomaly map, and its logits with the
    un-biased masks (the override changes only class_embed) give its sem_seg."""
    folder = golden_dir()
    data = np.load(folder / "outputs.npz")
    variants = sorted(p.name[: -len("_class_embed_override.pth")]
                      for p in folder.glob("*_class_embed_override.pth"))
    variants = [v for v in variants if f"{v}.sem_seg" in data.files]
    if not variants:
        pytest.skip("no class-embed variant with a stored sem_seg in this golden folder")
    for v in variants:
        sem = torch.from_numpy(data[f"{v}.sem_seg"])
        logits = torch.from_numpy(data[f"{v}.decoder.pred_logits"])
        k = logits.shape[-1] - 1
        assert sem.shape[0] > k  # the variant keeps at least one query
        near_half = (np.abs(data[f"{v}.refine_max_extra"] - 0.5) <= 1e-3
                     if f"{v}.refine_max_extra" in data.files else None)
        na = S.official_anomaly_map(sem, k).numpy()
        _within(na, data[f"{v}.anomaly.model.na"], 5e-4, 1e-3, extra_ok=near_half)
        masks = torch.from_numpy(data["decoder.pred_masks"])
        padded = (masks.shape[-2] * 4, masks.shape[-1] * 4)
        ours = S.official_semantic_inference(logits, S.upsample_masks(masks, padded),
                                             CITYSCAPES_REFINE_IDS)
        ours = S.crop_and_resize(ours, tuple(sem.shape[-2:]), tuple(sem.shape[-2:]))
        assert ours.shape == sem.shape, v
        assert (ours - sem).abs().max() <= 5e-4, v
