"""Training losses of Mask2Anomaly.

Stage 1 (closed set), for every decoder layer (deep supervision, Sec. 3):

* Eq. 1: ``L_masks = 5.0 * L_bce + 5.0 * L_dice`` between each matched prediction and its
  target mask, on ``N_p = 12544`` importance-sampled points (oversample 3, importance 0.75),
  each summed over matched pairs and divided by the number of target masks in the batch;
* Eq. 2: ``L = L_masks + 2.0 * L_ce``, the cross-entropy over all Q queries with the
  no-object class weighted 0.1 (``criterion.empty_weight``).

Stage 2 (outlier fine-tuning) adds, on the last layer's outputs:

* Eq. 10-12 (:func:`mask_contrastive_loss`), or
* Eq. 26-27 (:func:`outlier_bce_loss`) as the appendix variant.

Both use ``g = max_k softmax(C)^T sigmoid(M)`` (Eq. 3 / Eq. 10), by default at the resolution
of the predicted masks (1/4 of the input) against the binary outlier mask pooled to that grid.
With ``resolution="input"`` the mask logits are first upsampled bilinearly to the input size,
as at inference, and the loss is taken on every input pixel against the outlier mask itself:
the pooled grid never sees the pixels between two cells, where the upsampled masks of two
neighbouring segments both fall to ~0.5 and ``1 - g`` is high along every known boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from m2a_pipe.inference.scoring import semantic_probs
from m2a_pipe.training.matcher import HungarianMatcher
from m2a_pipe.training.points import (
    IMPORTANCE_SAMPLE_RATIO,
    NUM_POINTS,
    OVERSAMPLE_RATIO,
    importance_points,
    point_sample,
)

VOID = 255
CONTRASTIVE_MARGIN = 0.75


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """L_bce of Eq. 1: mean over points, summed over masks, divided by ``num_masks``.
    Args: logits, targets (N, P)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """L_dice of Eq. 1 (+1 smoothing), summed over masks, divided by ``num_masks``.
    Args: logits, targets (N, P)."""
    x = logits.sigmoid()
    numerator = 2 * (x * targets).sum(-1)
    denominator = x.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


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


OUTLIER_RESOLUTIONS = ("mask", "input")


def outlier_scores(pred_logits: torch.Tensor, pred_masks: torch.Tensor, ood: torch.Tensor,
                   resolution: str = "mask") -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly score ``s = 1 - g`` (Eq. 5) and its 0/1/255 target on the loss grid.

    Args:
        pred_logits: (B, Q, K+1); pred_masks: (B, Q, h, w) mask logits.
        ood: (B, H, W) uint8 outlier mask at the input size.
        resolution: ``"mask"`` -- the (h, w) grid, ``ood`` pooled to it
            (:func:`pool_outlier_mask`); ``"input"`` -- the (H, W) grid, mask logits upsampled
            bilinearly (align_corners=False, as inference does).

    Returns: s (B, h, w) or (B, H, W) float32 and the target (same shape) uint8.
    """
    if resolution not in OUTLIER_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {OUTLIER_RESOLUTIONS}, got {resolution!r}")
    if resolution == "input" and tuple(pred_masks.shape[-2:]) != tuple(ood.shape[-2:]):
        pred_masks = F.interpolate(pred_masks.float(), size=tuple(ood.shape[-2:]), mode="bilinear",
                                   align_corners=False)
    s = 1.0 - known_likelihood(pred_logits, pred_masks)
    return s, pool_outlier_mask(ood, tuple(s.shape[-2:]))


def mask_contrastive_loss(pred_logits: torch.Tensor, pred_masks: torch.Tensor, ood: torch.Tensor,
                          margin: float = CONTRASTIVE_MARGIN, resolution: str = "mask",
                          hard_inlier_fraction: float = 1.0,
                          outlier_pixel_weight: float = 1.0) -> torch.Tensor:
    """Mask contrastive loss L_CL (Eq. 10-11; added to Eq. 1-2 it is L_ood, Eq. 12).

    With ``l_N = -g`` (Eq. 10) the per-pixel score used here is the anomaly score
    ``s = 1 + l_N = 1 - g`` (Eq. 5), so that -- as Sec. 4.3 intends -- in-distribution
    pixels are pushed to ``s = 0`` and outlier pixels beyond the margin:

        l_CL = s               where M_OOD = 0
        l_CL = max(0, m - s)   where M_OOD = 1
        L_CL = 1/2 l_CL^2,

    averaged over in-distribution pixels and over outlier pixels separately (as PEBAL's
    energy loss; an image's few outlier pixels would vanish in one global mean) and summed.
    With ``hard_inlier_fraction`` f < 1 the in-distribution mean is taken over the fraction f
    of in-distribution pixels of the batch with the highest ``s`` only (online hard-example
    mining; not in the paper, whose plain mean is f = 1): most known pixels sit at ``s ~ 0``
    and dilute the few along class boundaries, where the upsampled masks of two segments both
    fall to ~0.5. ``outlier_pixel_weight`` w multiplies the outlier-pixel term (w = 1 in the
    paper): a stronger pull on the known pixels also lets confident stuff masks spread over
    the anomalies, where the refinement (Eq. 13) then zeroes the score; w > 1 pushes back.
    (Taken literally, Eq. 11 applied to ``l_N = -g`` would push known pixels towards
    ``g = 0``, contradicting the text; the shift by 1 restores the stated behaviour.)

    Args:
        pred_logits: (B, Q, K+1); pred_masks: (B, Q, h, w) mask logits.
        ood: (B, H, W) uint8 0/1/255 outlier mask (pooled to (h, w) by :func:`pool_outlier_mask`).
        margin: m (0.75 in the paper).
        resolution: the grid of the loss, ``"mask"`` or ``"input"`` (:func:`outlier_scores`).
        hard_inlier_fraction: f in (0, 1], the share of in-distribution pixels averaged.
        outlier_pixel_weight: w > 0, the weight of the outlier-pixel term.

    Returns: scalar; 0 when known pixels have s = 0 and outliers s >= m.
    """
    if not 0.0 < hard_inlier_fraction <= 1.0:
        raise ValueError(f"hard_inlier_fraction must be in (0, 1], got {hard_inlier_fraction}")
    if not outlier_pixel_weight > 0.0:
        raise ValueError(f"outlier_pixel_weight must be > 0, got {outlier_pixel_weight}")
    s, target = outlier_scores(pred_logits, pred_masks, ood, resolution)
    loss = s.new_zeros(())
    inlier, outlier = s[target == 0], s[target == 1]
    if inlier.numel() and hard_inlier_fraction < 1.0:
        inlier = inlier.topk(max(1, round(hard_inlier_fraction * inlier.numel()))).values
    if inlier.numel():
        loss = loss + 0.5 * inlier.pow(2).mean()
    if outlier.numel():
        loss = loss + outlier_pixel_weight * 0.5 * (margin - outlier).clamp(min=0).pow(2).mean()
    return loss


def outlier_bce_loss(pred_logits: torch.Tensor, pred_masks: torch.Tensor, ood: torch.Tensor,
                     eps: float = 1e-6, resolution: str = "mask") -> torch.Tensor:
    """Outlier binary cross-entropy L_BCE (Eq. 26; with Eq. 1-2 it is Eq. 27).

    The appendix writes ``M_OOD log(l_N) + (1 - M_OOD) log(1 - l_N)``; as ``l_N = -g`` is
    not a probability, the anomaly probability ``p = clamp(1 - g, eps, 1 - eps)`` takes its
    place and the negative log-likelihood is minimised, averaged over non-void pixels.

    Args: as :func:`mask_contrastive_loss`. Returns: scalar.
    """
    s, target = outlier_scores(pred_logits, pred_masks, ood, resolution)
    p = s.clamp(eps, 1 - eps)
    valid = target != VOID
    if not valid.any():
        return p.sum() * 0.0
    return F.binary_cross_entropy(p[valid], target[valid].float())


@dataclass
class LossWeights:
    ce: float = 2.0
    mask: float = 5.0
    dice: float = 5.0
    no_object: float = 0.1
    outlier: float = 1.0


class SetCriterion(torch.nn.Module):
    """Eq. 1-2 with deep supervision, plus the stage-2 outlier loss.

    Args:
        num_classes: K.
        weights: loss weights (:class:`LossWeights`, the paper's by default).
        matcher: the Hungarian matcher (its own cost weights).
        num_points, oversample_ratio, importance_ratio: point sampling of the mask losses.
        deep_supervision: also supervise every ``aux_outputs`` entry.
        outlier_loss: None (stage 1), ``"contrastive"`` (Eq. 10-12) or ``"bce"`` (Eq. 26-27).
        margin: the contrastive margin m.
        outlier_resolution: grid of the outlier loss, ``"mask"`` (1/4) or ``"input"``.
        hard_inlier_fraction: share of in-distribution pixels in the contrastive loss's
            mean (:func:`mask_contrastive_loss`; 1.0 = the paper's plain mean).
        outlier_pixel_weight: weight of the contrastive loss's outlier-pixel term relative to
            its known-pixel term (1.0 = the paper).
    """

    def __init__(self, num_classes: int, weights: LossWeights | None = None,
                 matcher: HungarianMatcher | None = None, num_points: int = NUM_POINTS,
                 oversample_ratio: float = OVERSAMPLE_RATIO,
                 importance_ratio: float = IMPORTANCE_SAMPLE_RATIO, deep_supervision: bool = True,
                 outlier_loss: str | None = None, margin: float = CONTRASTIVE_MARGIN,
                 outlier_resolution: str = "mask", hard_inlier_fraction: float = 1.0,
                 outlier_pixel_weight: float = 1.0) -> None:
        super().__init__()
        if outlier_loss not in (None, "contrastive", "bce"):
            raise ValueError(f"outlier_loss must be None, 'contrastive' or 'bce', got {outlier_loss!r}")
        if outlier_resolution not in OUTLIER_RESOLUTIONS:
            raise ValueError(f"outlier_resolution must be one of {OUTLIER_RESOLUTIONS}, got {outlier_resolution!r}")
        if not 0.0 < hard_inlier_fraction <= 1.0:
            raise ValueError(f"hard_inlier_fraction must be in (0, 1], got {hard_inlier_fraction}")
        if hard_inlier_fraction < 1.0 and outlier_loss != "contrastive":
            raise ValueError("hard_inlier_fraction applies to the contrastive outlier loss only")
        if not outlier_pixel_weight > 0.0:
            raise ValueError(f"outlier_pixel_weight must be > 0, got {outlier_pixel_weight}")
        if outlier_pixel_weight != 1.0 and outlier_loss != "contrastive":
            raise ValueError("outlier_pixel_weight applies to the contrastive outlier loss only")
        self.num_classes = num_classes
        self.weights = weights or LossWeights()
        self.matcher = matcher or HungarianMatcher(num_points=num_points)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_ratio = importance_ratio
        self.deep_supervision = deep_supervision
        self.outlier_loss = outlier_loss
        self.margin = margin
        self.outlier_resolution = outlier_resolution
        self.hard_inlier_fraction = hard_inlier_fraction
        self.outlier_pixel_weight = outlier_pixel_weight
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = self.weights.no_object
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def loss_labels(self, pred_logits: torch.Tensor, targets: list[dict],
                    indices: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """L_ce of Eq. 2 over all B x Q queries (unmatched ones target no-object)."""
        b, q, _ = pred_logits.shape
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64, device=pred_logits.device)
        for i, ((src, tgt), target) in enumerate(zip(indices, targets)):
            target_classes[i, src.to(pred_logits.device)] = target["labels"][tgt].to(pred_logits.device)
        return F.cross_entropy(pred_logits.float().transpose(1, 2), target_classes,
                               self.empty_weight.to(pred_logits.device))

    def loss_masks(self, pred_masks: torch.Tensor, targets: list[dict],
                   indices: list[tuple[torch.Tensor, torch.Tensor]], num_masks: float,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_bce, L_dice) of Eq. 1 on importance-sampled points of the matched pairs."""
        src = torch.cat([pred_masks[i, s.to(pred_masks.device)] for i, (s, _) in enumerate(indices)])
        if src.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return zero, zero
        tgt = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src.device)
        src = src.float()
        coords = importance_points(src, self.num_points, self.oversample_ratio,
                                   self.importance_ratio, generator)
        with torch.no_grad():
            labels = point_sample(tgt.float(), coords)
        logits = point_sample(src, coords)
        return sigmoid_bce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    def layer_losses(self, outputs: dict, targets: list[dict], num_masks: float,
                     generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Weighted Eq. 1-2 terms of one decoder layer: ``ce``, ``mask``, ``dice``."""
        indices = self.matcher(outputs, targets, generator)
        bce, dice = self.loss_masks(outputs["pred_masks"], targets, indices, num_masks, generator)
        w = self.weights
        return {"ce": w.ce * self.loss_labels(outputs["pred_logits"], targets, indices),
                "mask": w.mask * bce, "dice": w.dice * dice}

    def forward(self, outputs: dict, targets: list[dict], ood: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All losses of a batch.

        Args:
            outputs: the model's dict (``pred_logits``, ``pred_masks``, ``aux_outputs``).
            targets: B dicts, ``labels`` (T_b,) int64 and ``masks`` (T_b, H, W) binary, at the
                padded input size.
            ood: (B, H, W) uint8 outlier mask, needed when ``outlier_loss`` is set.
            generator: torch generator of the point draws (reproducible steps).

        Returns: dict of weighted scalars ``ce``, ``mask``, ``dice`` (last layer), ``aux``
        (sum over the earlier layers), ``outlier`` (0 in stage 1) and the total ``loss``.
        """
        num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        out = self.layer_losses(outputs, targets, num_masks, generator)
        aux = outputs["pred_logits"].new_zeros((), dtype=torch.float32)
        if self.deep_supervision:
            for layer in outputs.get("aux_outputs", []):
                aux = aux + sum(self.layer_losses(layer, targets, num_masks, generator).values())
        out["aux"] = aux
        outlier = aux.new_zeros(())
        if self.outlier_loss is not None:
            if ood is None:
                raise ValueError("the outlier loss needs the outlier mask `ood`")
            fn = mask_contrastive_loss if self.outlier_loss == "contrastive" else outlier_bce_loss
            args = (outputs["pred_logits"], outputs["pred_masks"], ood.to(outputs["pred_masks"].device))
            kw = ({"margin": self.margin, "hard_inlier_fraction": self.hard_inlier_fraction,
                   "outlier_pixel_weight": self.outlier_pixel_weight}
                  if self.outlier_loss == "contrastive" else {})
            outlier = self.weights.outlier * fn(*args, resolution=self.outlier_resolution, **kw)
        out["outlier"] = outlier
        out["loss"] = out["ce"] + out["mask"] + out["dice"] + aux + outlier
        return out
