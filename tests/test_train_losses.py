"""Matcher, point sampling and losses of m2a_pipe.training on hand-made cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from m2a_pipe.training.losses import SetCriterion, dice_loss, sigmoid_bce_loss
from m2a_pipe.training.matcher import HungarianMatcher, hungarian
from m2a_pipe.training.outlier_loss import (
    mask_contrastive_loss,
    outlier_bce_loss,
    outlier_scores,
    pool_outlier_mask,
)
from m2a_pipe.training.points import importance_points, point_sample


def brute_force(cost: np.ndarray) -> float:
    q, t = cost.shape
    return min(sum(cost[p[j], j] for j in range(t)) for p in itertools.permutations(range(q), t))


@pytest.mark.parametrize("seed", range(6))
def test_hungarian_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    q, t = int(rng.integers(2, 6)), 0
    t = int(rng.integers(1, q + 1))
    cost = rng.normal(size=(q, t))
    rows, cols = hungarian(torch.from_numpy(cost))
    assert len(rows) == t and len(set(rows.tolist())) == t
    assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(brute_force(cost))
    r2, c2 = linear_sum_assignment(cost)
    assert cost[r2, c2].sum() == pytest.approx(brute_force(cost))


def test_matcher_cost_recovers_permutation():
    torch.manual_seed(0)
    t, q, h, w = 3, 5, 16, 16
    masks = torch.zeros(t, h, w, dtype=torch.bool)
    masks[0, :8], masks[1, 8:, :8], masks[2, 8:, 8:] = True, True, True
    labels = torch.tensor([2, 0, 1])
    perm = [4, 1, 3]  # prediction perm[j] predicts target j
    logits = torch.full((1, q, 4), -5.0)
    logits[0, :, 3] = 5.0
    pm = torch.full((1, q, h, w), -8.0)
    for j, p in enumerate(perm):
        logits[0, p] = -5.0
        logits[0, p, labels[j]] = 5.0
        pm[0, p][masks[j]] = 8.0
    matcher = HungarianMatcher(num_points=512)
    g = torch.Generator().manual_seed(0)
    cost = matcher.cost_matrix(logits[0], pm[0], labels, masks, g).numpy()
    assert cost[np.array(perm), np.arange(t)].sum() == pytest.approx(brute_force(cost))
    (rows, cols), = matcher({"pred_logits": logits, "pred_masks": pm},
                            [{"labels": labels, "masks": masks}], g)
    assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(perm))


def test_point_sample_reads_pixel_centres():
    m = torch.arange(16.0).view(1, 4, 4)
    coords = torch.tensor([[[0.125, 0.125], [0.875, 0.375]]])  # centres of (0,0) and (1,3)
    assert point_sample(m, coords).tolist() == [[0.0, 7.0]]
    pts = importance_points(torch.randn(2, 8, 8), num_points=40)
    assert pts.shape == (2, 40, 2) and pts.min() >= 0 and pts.max() <= 1


def _perfect(num_classes=3):
    h = w = 32
    sem = torch.zeros(h, w, dtype=torch.long)
    sem[:, 16:] = 2
    labels = torch.tensor([0, 2])
    masks = torch.stack([sem == 0, sem == 2])
    q = 4
    logits = torch.full((1, q, num_classes + 1), -30.0)
    logits[0, :, -1] = 30.0
    logits[0, 1, 0], logits[0, 1, -1] = 30.0, -30.0
    logits[0, 3, 2], logits[0, 3, -1] = 30.0, -30.0
    pm = torch.full((1, q, h // 4, w // 4), -60.0)
    pm[0, 1, :, :4] = 60.0
    pm[0, 3, :, 4:] = 60.0
    return logits, pm, [{"labels": labels, "masks": masks}]


def test_mask_terms_of_a_perfect_prediction_are_zero():
    targets = (torch.rand(3, 500) > 0.5).float()
    logits = 40.0 * (2 * targets - 1)
    assert float(sigmoid_bce_loss(logits, targets, 3.0)) < 1e-12
    assert float(dice_loss(logits, targets, 3.0)) < 1e-6
    assert float(dice_loss(-logits, targets, 3.0)) > 0.99


def test_perfect_prediction_gives_near_zero_loss_only_with_border_padding():
    """One class covering the image, predicted perfectly: every term ~0 (Eq. 1-2) when the
    points read the edge pixel; with the official zero padding the outer half pixel blends
    the prediction towards logit 0 (and the target towards 0), so a loss remains there."""
    h = w = 32
    logits = torch.full((1, 4, 4), -30.0)
    logits[0, :, -1] = 30.0
    logits[0, 2, 1], logits[0, 2, -1] = 30.0, -30.0
    pm = torch.full((1, 4, h // 4, w // 4), -60.0)
    pm[0, 2] = 60.0
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, h, w, dtype=torch.bool)}]
    outputs = {"pred_logits": logits, "pred_masks": pm, "aux_outputs": []}
    border = SetCriterion(3, num_points=2048, point_padding="border")
    assert float(border(outputs, targets, generator=torch.Generator().manual_seed(0))["loss"]) < 1e-6
    zeros = SetCriterion(3, num_points=2048)(outputs, targets, generator=torch.Generator().manual_seed(0))
    assert float(zeros["ce"]) < 1e-6 and float(zeros["mask"]) > 0.1 and float(zeros["dice"]) > 1e-3


def test_two_region_prediction_is_far_better_than_empty():
    """With two regions the sampled points concentrate on the boundary (importance
    sampling), where bilinear sampling blurs a sharp edge; still far below empty masks."""
    logits, pm, targets = _perfect()
    crit = SetCriterion(3, num_points=2048)
    g = torch.Generator().manual_seed(0)
    out = crit({"pred_logits": logits, "pred_masks": pm, "aux_outputs": []}, targets, generator=g)
    empty = torch.full_like(pm, -60.0)  # right classes, no mask
    bad = crit({"pred_logits": logits, "pred_masks": empty, "aux_outputs": []}, targets,
               generator=torch.Generator().manual_seed(0))
    assert float(out["ce"]) < 1e-6
    assert float(bad["mask"]) > 20 * float(out["mask"]) and float(bad["dice"]) > 4.0 > 10 * float(out["dice"])


def test_deep_supervision_adds_aux_layers():
    logits, pm, targets = _perfect()
    crit = SetCriterion(3, num_points=256)
    aux = [{"pred_logits": torch.zeros_like(logits), "pred_masks": torch.zeros_like(pm)}] * 2
    out = crit({"pred_logits": logits, "pred_masks": pm, "aux_outputs": aux}, targets,
               generator=torch.Generator().manual_seed(0))
    assert out["aux"] > 1.0
    assert float(out["loss"]) == pytest.approx(float(out["ce"] + out["mask"] + out["dice"] + out["aux"]))


def _score_case(in_score: float, out_score: float):
    """Logits/masks whose anomaly score s = 1 - g is ``in_score`` left, ``out_score`` right."""
    h, w = 4, 8
    logits = torch.tensor([[[30.0, -30.0, -30.0]]])  # one query, class 0 with prob 1
    g = torch.empty(1, 1, h, w)
    g[..., :4] = 1 - in_score
    g[..., 4:] = 1 - out_score
    masks = torch.logit(g.clamp(1e-7, 1 - 1e-7))
    ood = torch.zeros(1, h * 4, w * 4, dtype=torch.uint8)
    ood[..., 16:] = 1
    return logits, masks, ood


def test_contrastive_loss_zero_at_ideal_and_positive_otherwise():
    logits, masks, ood = _score_case(0.0, 0.8)  # known pixels s = 0, outliers beyond m = 0.75
    assert float(mask_contrastive_loss(logits, masks, ood, margin=0.75)) < 1e-6
    logits, masks, ood = _score_case(0.3, 0.5)
    expected = 0.5 * 0.3**2 + 0.5 * (0.75 - 0.5) ** 2
    assert float(mask_contrastive_loss(logits, masks, ood, 0.75)) == pytest.approx(expected, rel=1e-4)
    ood_void = ood.clone()
    ood_void[..., 16:] = 255  # void pixels do not count
    assert float(mask_contrastive_loss(logits, masks, ood_void, 0.75)) == pytest.approx(0.5 * 0.09, rel=1e-4)


def test_hard_inlier_fraction_averages_the_worst_known_pixels():
    logits, masks, ood = _score_case(0.0, 0.8)  # outliers beyond the margin: only the known term counts
    g = torch.sigmoid(masks)
    g[0, 0, 0, :2] = 0.4  # 2 of the 16 known cells score s = 0.6, the rest 0
    masks = torch.logit(g)
    plain = mask_contrastive_loss(logits, masks, ood, resolution="mask")
    assert float(plain) == pytest.approx(0.5 * 0.36 * 2 / 16, rel=1e-4)
    hard = mask_contrastive_loss(logits, masks, ood, resolution="mask", hard_inlier_fraction=2 / 16)
    assert float(hard) == pytest.approx(0.5 * 0.36, rel=1e-4)
    quarter = mask_contrastive_loss(logits, masks, ood, resolution="mask", hard_inlier_fraction=0.25)
    assert float(quarter) == pytest.approx(0.5 * 0.36 / 2, rel=1e-4)
    ideal = _score_case(0.0, 0.8)
    assert float(mask_contrastive_loss(*ideal, hard_inlier_fraction=0.1)) < 1e-6
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="hard_inlier_fraction"):
            mask_contrastive_loss(logits, masks, ood, hard_inlier_fraction=bad)
    with pytest.raises(ValueError, match="contrastive"):
        SetCriterion(2, outlier_loss="bce", outlier_resolution="mask", outlier_score="one_minus_g",
                         hard_inlier_fraction=0.5)


def test_outlier_pixel_weight_scales_the_outlier_term_only():
    logits, masks, ood = _score_case(0.3, 0.5)  # known s = 0.3, outliers 0.25 short of the margin
    known, short = 0.5 * 0.3**2, 0.5 * (0.75 - 0.5) ** 2
    for w in (1.0, 3.0):
        got = mask_contrastive_loss(logits, masks, ood, 0.75, outlier_pixel_weight=w)
        assert float(got) == pytest.approx(known + w * short, rel=1e-4)
    beyond = _score_case(0.3, 0.8)  # outliers past the margin: the weight changes nothing
    assert float(mask_contrastive_loss(*beyond, 0.75, outlier_pixel_weight=4.0)) == pytest.approx(known, rel=1e-4)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="outlier_pixel_weight"):
            mask_contrastive_loss(logits, masks, ood, outlier_pixel_weight=bad)
    with pytest.raises(ValueError, match="contrastive"):
        SetCriterion(2, outlier_loss="bce", outlier_resolution="mask", outlier_score="one_minus_g",
                         outlier_pixel_weight=2.0)


def test_outlier_bce_prefers_separated_scores():
    good = outlier_bce_loss(*_score_case(0.01, 0.99))
    bad = outlier_bce_loss(*_score_case(0.99, 0.01))
    assert float(good) < 0.02 < 4.0 < float(bad)


def test_outlier_loss_at_input_resolution_sees_the_pixels_between_cells():
    logits, masks, ood = _score_case(0.0, 0.8)  # ideal on the 1/4 grid
    assert float(mask_contrastive_loss(logits, masks, ood, resolution="mask")) < 1e-6
    s, target = outlier_scores(logits, masks, ood, "input")
    assert s.shape == (1, 16, 32) and torch.equal(target, ood)
    assert float(s[..., :12].abs().max()) < 1e-4 and float((s[..., 20:] - 0.8).abs().max()) < 1e-4
    # upsampled as at inference, the outlier columns next to the known half score far below the margin
    assert float(s[..., 16:18].max()) < 0.5
    assert float(mask_contrastive_loss(logits, masks, ood, resolution="input")) > 0.01
    assert float(outlier_bce_loss(logits, masks, ood, resolution="input")) > float(outlier_bce_loss(logits, masks, ood))
    with pytest.raises(ValueError, match="resolution"):
        outlier_scores(logits, masks, ood, "full")


def test_pool_outlier_mask():
    ood = torch.zeros(1, 8, 8, dtype=torch.uint8)
    ood[0, :4, :4] = 1
    ood[0, 4:, 4:] = 255
    ood[0, 4:6, :4] = 1  # half of the bottom-left cells
    out = pool_outlier_mask(ood, (2, 2))
    assert out.tolist() == [[[1, 0], [1, 255]]]


def test_official_outlier_geometry_stretches_the_padded_grid_onto_the_crop():
    """The ``crop`` geometry (official): the score on the padded grid is interpolated with
    align_corners=True onto the unpadded crop; every non-outlier pixel, void included, is
    in distribution; with ``-g`` an outlier pixel costs 1/2 (m + g)^2."""
    logits = torch.tensor([[[8.0, -8.0, -8.0]]])  # one query, class 0 with p ~ 1
    masks = torch.full((1, 1, 2, 2), 30.0)  # g = 1 on the whole grid
    ood = torch.zeros(1, 8, 8, dtype=torch.uint8)
    ood[0, :4, :4] = 255  # void inside the crop: in distribution here
    ood[0, 5, 5] = 1
    ood[0, 6:, :] = 255  # padding below the 6-row crop
    sizes = torch.tensor([[6, 8]])
    got = mask_contrastive_loss(logits, masks, ood, 1.0, "crop", score="neg_g", image_sizes=sizes)
    assert float(got) == pytest.approx(0.5 * 1.0 + 0.5 * (1.0 + 1.0) ** 2, rel=1e-3)
    # no outlier pixel in the crop: the in-distribution term only (the outlier at row 6 is padding)
    ood2 = torch.zeros(1, 8, 8, dtype=torch.uint8)
    ood2[0, 7, 7] = 1
    assert float(mask_contrastive_loss(logits, masks, ood2, 1.0, "crop", score="neg_g",
                                       image_sizes=sizes)) == pytest.approx(0.5, rel=1e-3)
    # the paper's score 1 - g: the same known pixels cost nothing
    assert float(mask_contrastive_loss(logits, masks, ood2, 0.75, "crop", score="one_minus_g",
                                       image_sizes=sizes)) < 1e-6


def test_outlier_layers_all_adds_the_outlier_term_of_every_output():
    logits, pm, targets = _perfect()
    ood = torch.zeros(1, *targets[0]["masks"].shape[-2:], dtype=torch.uint8)
    ood[0, :4, :4] = 1
    outputs = {"pred_logits": logits, "pred_masks": pm,
               "aux_outputs": [{"pred_logits": logits, "pred_masks": pm}] * 2}
    per = {}
    for layers in ("all", "last"):
        crit = SetCriterion(3, num_points=256, outlier_loss="contrastive", outlier_layers=layers)
        per[layers] = float(crit(outputs, targets, ood, torch.Generator().manual_seed(0))["outlier"])
    assert per["last"] > 0 and per["all"] == pytest.approx(3 * per["last"], rel=1e-6)
