"""Per-pixel maps from the mask-transformer outputs: semantic, anomaly and open-set.

Inputs are the decoder's class logits ``C`` and mask logits ``M``:

* ``pred_logits``: (B, Q, K+1) float, the last column is "no object";
* ``pred_masks``: (B, Q, H, W) float mask logits at whatever resolution the caller chooses
  (the decoder's 1/4 resolution for cheap video scoring, or upsampled).

Every function is pure torch, keeps the tensors on their device, and returns float32 when
given float32. Anomaly scores follow one convention: **higher = more anomalous**.

Two families live here:

* the official Mask2Anomaly rules (``official_semantic_inference``, ``crop_and_resize``,
  ``official_anomaly_map``, ``flip_average``), which reproduce the official evaluation
  numbers exactly (see ``shared/golden/README.md``);
* batched scores for the pipeline (:data:`SCORES`): MSP (Eq. 5) and the logit-based scores
  of the follow-up literature (RbA, max-logit, energy, entropy), plus open-set labels (Eq. 14).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from m2a_pipe.settings import BOUNDED_SCORES

# --------------------------------------------------------------------------------------
# Marginalisation (Eq. 3) and resampling
# --------------------------------------------------------------------------------------


def semantic_probs(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel known-class scores ``softmax(C)^T . sigmoid(M)`` (Eq. 3, before its max).

    Args:
        pred_logits: (B, Q, K+1) class logits.
        pred_masks: (B, Q, H, W) mask logits.

    Returns: (B, K, H, W), same dtype; the no-object column is dropped after the softmax.
    Values are >= 0 and may exceed 1 (several queries can cover one pixel).
    """
    probs = pred_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, pred_masks.sigmoid())


def pixel_class_logits(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel class logits ``L = C[:, :K]^T . sigmoid(M)`` (the RbA marginalisation).

    Args:
        pred_logits: (B, Q, K+1) class logits (the no-object column is dropped).
        pred_masks: (B, Q, H, W) mask logits.

    Returns: (B, K, H, W), same dtype.
    """
    return torch.einsum("bqc,bqhw->bchw", pred_logits[..., :-1], pred_masks.sigmoid())


def upsample_masks(pred_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of mask logits to ``size = (H, W)``.

    Args:
        pred_masks: (Q, h, w) or (B, Q, h, w).

    Returns: the same leading shape with spatial size ``size``.
    """
    if pred_masks.ndim == 3:
        return upsample_masks(pred_masks[None], size)[0]
    if tuple(pred_masks.shape[-2:]) == tuple(size):
        return pred_masks
    return F.interpolate(pred_masks, size=tuple(size), mode="bilinear", align_corners=False)


def crop_and_resize(sem: torch.Tensor, image_size: tuple[int, int],
                    output_size: tuple[int, int]) -> torch.Tensor:
    """Official ``sem_seg_postprocess``: drop the padding, then resize to the output size.

    Args:
        sem: (C, Hp, Wp) or (B, C, Hp, Wp) maps at the padded input size.
        image_size: (h, w) of the un-padded network input; the crop is ``[..., :h, :w]``.
        output_size: (H, W) requested, e.g. the original frame size.

    Returns: (C, H, W) or (B, C, H, W); bilinear, align_corners=False, no antialias.
    The resize is skipped when the cropped size already equals ``output_size`` (a bilinear
    resize to the same size is the identity).
    """
    if sem.ndim == 3:
        return crop_and_resize(sem[None], image_size, output_size)[0]
    h, w = image_size
    out = sem[..., :h, :w]
    if tuple(out.shape[-2:]) != tuple(output_size):
        out = F.interpolate(out, size=tuple(output_size), mode="bilinear", align_corners=False)
    return out


# --------------------------------------------------------------------------------------
# The official Mask2Anomaly rules
# --------------------------------------------------------------------------------------


def official_semantic_inference(pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                                refine_ids: Sequence[int], keep_threshold: float = 0.95) -> torch.Tensor:
    """Official ``MaskFormer.semantic_inference`` of Mask2Anomaly (Eq. 3 plus Eq. 13's queries).

    ``semseg = einsum("qc,qhw->chw", softmax(C)[:, :K], sigmoid(M))`` (Eq. 3), followed by one
    extra channel per query kept for the refinement mask (Eq. 13): with
    ``scores, labels = softmax(C).max(-1)`` taken over **all** K+1 columns, a query is kept when
    ``labels != K and scores > keep_threshold and labels in refine_ids``; its channel is
    ``scores[q] * sigmoid(M[q])``. Kept channels follow query order.

    Args:
        pred_logits: (Q, K+1) class logits of one image.
        pred_masks: (Q, H, W) mask logits, already upsampled to the padded input size.
        refine_ids: class ids whose confident masks the refinement zeroes (Cityscapes 2..10).
        keep_threshold: class confidence a query needs (strictly greater).

    Returns: (K + n_kept, H, W), dtype of the inputs.
    """
    num_classes = pred_logits.shape[-1] - 1
    probs = pred_logits.softmax(dim=-1)
    masks = pred_masks.sigmoid()
    semseg = torch.einsum("qc,qhw->chw", probs[:, :-1], masks)
    scores, labels = probs.max(dim=-1)
    refine = torch.as_tensor(list(refine_ids), dtype=labels.dtype, device=labels.device)
    keep = (labels != num_classes) & (scores > keep_threshold) & torch.isin(labels, refine)
    extra = scores[keep][:, None, None] * masks[keep]
    return torch.cat((semseg, extra), dim=0)


def msp_anomaly(sem: torch.Tensor) -> torch.Tensor:
    """Maximum-softmax-probability anomaly ``f(x) = 1 - max_Z(S(x))`` (Eq. 4); with ``sem``
    the mask-classification scores of Eq. 3 it is Eq. 5.

    Args:
        sem: (C, H, W) or (B, C, H, W) per-pixel class scores (e.g. :func:`semantic_probs`).

    Returns: (H, W) or (B, H, W). Can be negative where channels exceed 1.
    """
    return 1.0 - sem.max(dim=-3).values


def refinement_from_extras(extra: torch.Tensor) -> torch.Tensor:
    """Refinement mask R_M of Eq. 13 from the kept-query channels.

    Args:
        extra: (n, H, W) or (B, n, H, W) channels ``score_q * sigmoid(M_q)`` of the kept
            queries (n >= 1).

    Returns: (H, W) or (B, H, W), 1.0 where ``max_q extra < 0.5`` and 0.0 elsewhere (the
    official code binarises the max at ``>= 0.5`` and takes one minus it).
    """
    return (extra.max(dim=-3).values < 0.5).to(extra.dtype)


def official_anomaly_map(sem_with_extras: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Anomaly map as the official evaluation script computes it (Eq. 5, refined by Eq. 13).

    ``score = 1 - max`` over all channels (Eq. 5; including the extra channels, which can
    never exceed the first K). When there are **at least two** extra channels
    (``C - num_classes > 1``; one kept query does *not* refine), the score is multiplied by
    :func:`refinement_from_extras` of those channels (Eq. 13).

    Args:
        sem_with_extras: (K + n, H, W) or (B, K + n, H, W), the output of
            :func:`official_semantic_inference` (after :func:`crop_and_resize`).
        num_classes: K.

    Returns: (H, W) or (B, H, W).
    """
    score = msp_anomaly(sem_with_extras)
    extra = sem_with_extras[..., num_classes:, :, :]
    if extra.shape[-3] > 1:
        score = score * refinement_from_extras(extra)
    return score


def flip_average(map_na: torch.Tensor, map_of_flipped_input: torch.Tensor) -> torch.Tensor:
    """Horizontal-flip test-time augmentation of the official evaluation.

    Args:
        map_na: (..., H, W) map of the image.
        map_of_flipped_input: (..., H, W) map computed on the horizontally flipped image (not
            yet flipped back).

    Returns: (..., H, W) ``(map_na + flip_w(map_of_flipped_input)) / 2``.
    """
    return (map_na + map_of_flipped_input.flip(-1)) / 2


def refinement_mask(pred_logits: torch.Tensor, pred_masks: torch.Tensor, refine_ids: Sequence[int],
                    keep_threshold: float = 0.95, min_kept: int = 2) -> torch.Tensor:
    """Batched refinement mask R_M (Eq. 13) straight from the decoder outputs.

    The official rule of :func:`official_semantic_inference` + :func:`official_anomaly_map`
    evaluated at the resolution of ``pred_masks`` (e.g. 1/4), so a pipeline can refine a
    low-resolution map and upsample one map. An image with fewer than ``min_kept`` kept
    queries is not refined (the official code needs two).

    Args:
        pred_logits: (B, Q, K+1); pred_masks: (B, Q, H, W) mask logits.

    Returns: (B, H, W), 1.0 = keep the anomaly score, 0.0 = zero it.
    """
    num_classes = pred_logits.shape[-1] - 1
    scores, labels = pred_logits.softmax(dim=-1).max(dim=-1)  # (B, Q)
    refine = torch.as_tensor(list(refine_ids), dtype=labels.dtype, device=labels.device)
    keep = (labels != num_classes) & (scores > keep_threshold) & torch.isin(labels, refine)
    extra = scores[..., None, None] * pred_masks.sigmoid()  # (B, Q, H, W)
    extra = extra.masked_fill(~keep[..., None, None], 0.0)  # dropped queries never reach 0.5
    r = refinement_from_extras(extra)
    enough = keep.sum(dim=-1) >= min_kept  # (B,)
    return torch.where(enough[:, None, None], r, torch.ones_like(r))


# --------------------------------------------------------------------------------------
# Batched anomaly scores (higher = more anomalous), all (B,Q,K+1), (B,Q,H,W) -> (B,H,W)
# --------------------------------------------------------------------------------------


def msp_score(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """MSP anomaly (Eq. 5) without refinement: ``1 - max_k semantic_probs``. Returns (B, H, W)."""
    return msp_anomaly(semantic_probs(pred_logits, pred_masks))


def rba_score(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Rejected-by-All: ``-sum_k tanh(L_k)`` of :func:`pixel_class_logits`. Returns (B, H, W).

    It assumes every pixel is covered by some mask whose class logits reject all classes. A
    model trained with the mask contrastive loss (Eq. 10-12) leaves anomalies covered by no
    mask, so ``L ~ 0`` and the score ~0 there, below in-distribution pixels: inverted (the
    demo weights: AUROC 19 % on the dev split)."""
    return -torch.tanh(pixel_class_logits(pred_logits, pred_masks)).sum(dim=-3)


def max_logit_score(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Max-logit: ``-max_k L_k`` of :func:`pixel_class_logits`. Returns (B, H, W)."""
    return -pixel_class_logits(pred_logits, pred_masks).max(dim=-3).values


def energy_score(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Free energy: ``-logsumexp_k L_k`` of :func:`pixel_class_logits`. Returns (B, H, W)."""
    return -torch.logsumexp(pixel_class_logits(pred_logits, pred_masks), dim=-3)


def entropy_score(pred_logits: torch.Tensor, pred_masks: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Entropy (nats) of the per-pixel known-class distribution.

    ``p = s / sum_k s`` with ``s`` = :func:`semantic_probs` (Eq. 3), the sum clamped at ``eps``;
    returns ``-sum_k p_k log(max(p_k, eps))`` as (B, H, W), in ``[0, log K]``.
    """
    s = semantic_probs(pred_logits, pred_masks)
    p = s / s.sum(dim=-3, keepdim=True).clamp_min(eps)
    return -(p * p.clamp_min(eps).log()).sum(dim=-3)


ScoreName = Literal["msp", "rba", "max_logit", "energy", "entropy"]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SCORES: dict[str, ScoreFn] = {
    "msp": msp_score,
    "rba": rba_score,
    "max_logit": max_logit_score,
    "energy": energy_score,
    "entropy": entropy_score,
}
"""Anomaly scores by name; each maps (B,Q,K+1) logits and (B,Q,H,W) mask logits to (B,H,W)
at the masks' resolution, higher = more anomalous."""



def grid_anomaly(name: str, pred_logits: torch.Tensor, pred_masks: torch.Tensor, refine_ids: Sequence[int],
                 keep_threshold: float, sem: torch.Tensor | None = None) -> torch.Tensor:
    """Anomaly score on the grid of ``pred_masks``: ``"official"`` = Eq. 5 refined by Eq. 13
    (:func:`refinement_mask`), ``"msp"`` = Eq. 5, else :data:`SCORES`.

    Args: (B, Q, K+1) logits, (B, Q, H, W) mask logits; ``sem`` = their
    :func:`semantic_probs` when the caller already has it. Returns (B, H, W).
    """
    if name not in BOUNDED_SCORES:
        return anomaly_score(name, pred_logits, pred_masks)
    score = msp_anomaly(semantic_probs(pred_logits, pred_masks) if sem is None else sem)
    if name == "official":
        score = score * refinement_mask(pred_logits, pred_masks, refine_ids, keep_threshold)
    return score


def anomaly_score(name: str, pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Look up :data:`SCORES` by name and apply it; an unknown name is a ``ValueError``."""
    try:
        fn = SCORES[name]
    except KeyError:
        raise ValueError(f"unknown anomaly score {name!r}; known: {sorted(SCORES)}") from None
    return fn(pred_logits, pred_masks)


# --------------------------------------------------------------------------------------
# Open-set semantic segmentation (Eq. 14)
# --------------------------------------------------------------------------------------


def open_set_semantic(sem: torch.Tensor, anomaly: torch.Tensor, threshold: float) -> torch.Tensor:
    """Open-set labels ``argmax(concat(g(x), f_hat(x)))`` (Eq. 14).

    ``f_hat`` is the anomaly score thresholded at ``threshold``: a pixel with
    ``anomaly > threshold`` (strictly) takes the unknown label K, every other pixel the argmax
    of its known-class scores ``g(x)`` (Eq. 3). This is the comparison of the reference
    open-set protocol (DenseHybrid's ``evaluate_osr.py``) and of ``m2a-pipe evaluate open-set``
    under its default ``--threshold-rule reference``, so the threshold that command reports
    gives the labels it scored. A ``kth-score`` threshold is meant for ``anomaly >= threshold``;
    here a pixel scoring exactly at it stays known.

    Args:
        sem: (B, K, H, W) or (K, H, W) known-class scores (extra channels must be removed).
        anomaly: (B, H, W) or (H, W) anomaly scores, higher = more anomalous.

    Returns: (B, H, W) or (H, W) int64 labels in 0..K.
    """
    num_classes = sem.shape[-3]
    labels = sem.argmax(dim=-3)
    return torch.where(anomaly > threshold, torch.full_like(labels, num_classes), labels)
