"""The stage-2 outlier losses: the mask contrastive loss (Eq. 10-12) and its BCE variant
(Eq. 26-27), with the choices in which implementations differ as named options.

Both start from ``g = max_k softmax(C)^T sigmoid(M)`` (Eq. 3, the known-class likelihood of a
pixel; :func:`known_likelihood`) on the grid of the predicted masks. Three choices:

* the per-pixel score ``s`` (:data:`OUTLIER_SCORES`): ``"neg_g"`` -- ``s = l_N = -g``,
  Eq. 10 as written and the official code (in-distribution pixels are then pushed to
  ``g = 0``, outlier pixels too: with ``s <= 0`` the margin term never reaches zero);
  ``"one_minus_g"`` -- the anomaly score ``s = 1 - g`` (Eq. 5), which pushes known pixels
  to ``g = 1`` and outliers below ``1 - m`` as Sec. 4.3 describes;
* the grid of the loss (:data:`OUTLIER_RESOLUTIONS`): ``"crop"`` -- the official geometry:
  the score on the padded 1/4 grid is interpolated bilinearly with ``align_corners=True``
  onto each image's *unpadded* crop (the padded grid is stretched, not cropped) and every
  pixel that is not an outlier counts as in-distribution, void included; ``"mask"`` -- the
  1/4 grid against the outlier mask pooled to it (:func:`pool_outlier_mask`), void and
  padding ignored; ``"input"`` -- the mask logits upsampled to the padded input
  (align_corners=False, as inference does), void and padding ignored;
* the margin ``m`` (the official configuration's default 1.0; the paper's 0.75).

The loss (Eq. 11-12) is ``1/2 mean(s_in^2) + 1/2 mean(max(0, m - s_out)^2)``, each mean over
the batch's pixels of its kind, the second only when the batch has an outlier pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m2a_pipe.inference.scoring import semantic_probs

VOID = 255
OUTLIER_SCORES = ("neg_g", "one_minus_g")
OUTLIER_RESOLUTIONS = ("crop", "mask", "input")
OFFICIAL_MARGIN = 1.0  # mask2former/config.py MODEL.MASK_FORMER.MARGIN (anomaly_ft.yaml keeps it)
PAPER_MARGIN = 0.75  # Sec. 7.3


def pool_outlier_mask(ood: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Outlier mask (B, H, W) uint8 {0 in-distribution, 1 outlier, 255 void} -> (B, h, w).

    A cell of the coarse grid is an outlier where at least half its pixels are, in
    distribution where at least half are and none is an outlier, void otherwise.
    """
    if tuple(ood.shape[-2:]) == tuple(size):
        return ood
    x = ood.long()
    frac_ood = F.adaptive_avg_pool2d((x == 1).float()[:, None], size)[:, 0]
    frac_id = F.adaptive_avg_pool2d((x == 0).float()[:, None], size)[:, 0]
    out = torch.full(frac_ood.shape, VOID, dtype=torch.uint8, device=ood.device)
    out[(frac_id >= 0.5) & (frac_ood == 0)] = 0
    out[frac_ood >= 0.5] = 1
    return out


def known_likelihood(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """``g = max_k (softmax(C)^T sigmoid(M))_k`` per pixel (Eq. 3; Eq. 10 is ``l_N = -g``).
    Args: (B, Q, K+1), (B, Q, h, w). Returns (B, h, w) float32."""
    return semantic_probs(pred_logits.float(), pred_masks.float()).max(dim=1).values


def pixel_score(g: torch.Tensor, score: str) -> torch.Tensor:
    """The per-pixel score of the outlier loss: ``-g`` (Eq. 10) or ``1 - g`` (Eq. 5)."""
    if score not in OUTLIER_SCORES:
        raise ValueError(f"score must be one of {OUTLIER_SCORES}, got {score!r}")
    return -g if score == "neg_g" else 1.0 - g


def outlier_scores(pred_logits: torch.Tensor, pred_masks: torch.Tensor, ood: torch.Tensor,
                   resolution: str = "mask", score: str = "one_minus_g"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The score and its 0/1/255 target on the ``"mask"`` or ``"input"`` grid.

    Args:
        pred_logits: (B, Q, K+1); pred_masks: (B, Q, h, w) mask logits.
        ood: (B, H, W) uint8 outlier mask at the (padded) input size.
        resolution: ``"mask"`` -- the (h, w) grid, ``ood`` pooled to it; ``"input"`` -- the
            (H, W) grid, mask logits upsampled bilinearly (align_corners=False).
        score: :data:`OUTLIER_SCORES`.

    Returns: s (B, h, w) or (B, H, W) float32 and the target (same shape) uint8.
    """
    if resolution not in ("mask", "input"):
        raise ValueError(f"resolution must be 'mask' or 'input' here, got {resolution!r}")
    if resolution == "input" and tuple(pred_masks.shape[-2:]) != tuple(ood.shape[-2:]):
        pred_masks = F.interpolate(pred_masks.float(), size=tuple(ood.shape[-2:]), mode="bilinear",
                                   align_corners=False)
    s = pixel_score(known_likelihood(pred_logits, pred_masks), score)
    return s, pool_outlier_mask(ood, tuple(s.shape[-2:]))


def crop_pixels(s: torch.Tensor, ood: torch.Tensor, image_sizes: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The official geometry of Eq. 11's two pixel sets: (in-distribution scores, outlier
    scores), both 1-D.

    Args:
        s: (B, h, w) score on the padded mask grid.
        ood: (B, Hp, Wp) uint8, 1 on outlier pixels (anything else is in distribution).
        image_sizes: (B, 2) int (H, W) of each unpadded crop; None = the whole ``ood``.
    """
    inlier, outlier = [], []
    for b in range(s.shape[0]):
        h, w = (int(v) for v in image_sizes[b]) if image_sizes is not None else ood.shape[-2:]
        sb = F.interpolate(s[b][None, None], size=(h, w), mode="bilinear", align_corners=True)[0, 0]
        is_out = ood[b, :h, :w] == 1
        inlier.append(sb[~is_out])
        outlier.append(sb[is_out])
    return torch.cat(inlier), torch.cat(outlier)


def mask_contrastive_loss(pred_logits: torch.Tensor, pred_masks: torch.Tensor, ood: torch.Tensor,
                          margin: float = PAPER_MARGIN, resolution: str = "mask",
                          hard_inlier_fraction: float = 1.0, outlier_pixel_weight: float = 1.0,
                          score: str = "one_minus_g",
                          image_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Mask contrastive loss L_CL (Eq. 10-11; added to Eq. 1-2 it is L_ood, Eq. 12):

        l_CL = s               where M_OOD = 0
        l_CL = max(0, m - s)   where M_OOD = 1
        L_CL = 1/2 mean(l_CL^2 | M_OOD = 0) + w * 1/2 mean(l_CL^2 | M_OOD = 1).

    With ``score="neg_g"``, ``resolution="crop"``, ``margin=1.0``, f = w = 1 this is the
    official ``loss_ood`` ("margin"). Two project options, not in the paper: with
    ``hard_inlier_fraction`` f < 1 the in-distribution mean is over the fraction f of known
    pixels of the batch with the highest ``s`` (online hard-example mining: the few known
    pixels along class boundaries, where two upsampled masks both fall to ~0.5, are not
    diluted by the many at ``s ~ 0``); ``outlier_pixel_weight`` w scales the outlier term.

    Args:
        pred_logits: (B, Q, K+1); pred_masks: (B, Q, h, w) mask logits.
        ood: (B, H, W) uint8 0/1/255 outlier mask at the padded input size.
        margin: m.
        resolution: :data:`OUTLIER_RESOLUTIONS` (module docstring).
        hard_inlier_fraction: f in (0, 1]. outlier_pixel_weight: w > 0.
        score: :data:`OUTLIER_SCORES`.
        image_sizes: (B, 2) unpadded (H, W) per image, for ``resolution="crop"``.

    Returns: scalar float32.
    """
    if not 0.0 < hard_inlier_fraction <= 1.0:
        raise ValueError(f"hard_inlier_fraction must be in (0, 1], got {hard_inlier_fraction}")
    if not outlier_pixel_weight > 0.0:
        raise ValueError(f"outlier_pixel_weight must be > 0, got {outlier_pixel_weight}")
    if resolution == "crop":
        s = pixel_score(known_likelihood(pred_logits, pred_masks), score)
        inlier, outlier = crop_pixels(s, ood, image_sizes)
    else:
        s, target = outlier_scores(pred_logits, pred_masks, ood, resolution, score)
        inlier, outlier = s[target == 0], s[target == 1]
    loss = s.new_zeros(())
    if inlier.numel() and hard_inlier_fraction < 1.0:
        inlier = inlier.topk(max(1, round(hard_inlier_fraction * inlier.numel()))).values
    if inlier.numel():
        loss = loss + 0.5 * inlier.pow(2).mean()
    if outlier.numel():
        loss = loss + outlier_pixel_weight * 0.5 * (margin - outlier).clamp(min=0).pow(2).mean()
    return loss


def outlier_bce_loss(pred_logits: torch.Tensor, pred_masks: torch.Tensor, ood: torch.Tensor,
                     eps: float = 1e-6, resolution: str = "mask") -> torch.Tensor:
    """Outlier binary cross-entropy L_BCE (Eq. 26; with Eq. 1-2 it is Eq. 27), a project variant.

    The appendix writes ``M_OOD log(l_N) + (1 - M_OOD) log(1 - l_N)``; as ``l_N = -g`` is
    not a probability, the anomaly probability ``p = clamp(1 - g, eps, 1 - eps)`` takes its
    place and the negative log-likelihood is minimised, averaged over non-void pixels (the
    official ``OOD_LOSS: bce`` applies a logistic to ``-g`` instead and runs on CUDA only).

    Args: as :func:`mask_contrastive_loss` (``resolution`` ``"mask"`` or ``"input"``).
    Returns: scalar.
    """
    s, target = outlier_scores(pred_logits, pred_masks, ood, resolution, "one_minus_g")
    p = s.clamp(eps, 1 - eps)
    valid = target != VOID
    if not valid.any():
        return p.sum() * 0.0
    return F.binary_cross_entropy(p[valid], target[valid].float())
