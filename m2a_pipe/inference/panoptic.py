"""Open-set panoptic segmentation: the background region (Eq. 15), unknown-instance mining
(Sec. 6.3) and the panoptic map of the known queries plus the mined unknowns.

* :func:`background_region` (Eq. 15) and :func:`mine_unknown_instances` (Sec. 6.3) -- the
  paper's recipe for finding unknown *things* in the background.
* :func:`open_set_panoptic` -- Mask2Former panoptic inference over the known queries, with the
  mined unknown instances added under the unknown category K.

Host-side (numpy/scipy) except :func:`background_region`, which is torch on any device.
Boxes are ``(x0, y0, x1, y1)`` with exclusive ``x1, y1``, as in
:mod:`m2a_pipe.inference.instances`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from m2a_pipe.inference.instances import components, full_mask, to_numpy


@dataclass(frozen=True)
class UnknownInstance:
    """A background component mined as an unknown thing (Sec. 6.3).

    ``bbox``/``mask`` as in :class:`Instance`; ``query`` is the index of the best-overlapping
    predicted mask, ``iou`` that overlap, ``stuff_entropy``/``thing_entropy`` the averages
    E_S/E_T of that query's class probabilities (E_S > E_T made it unknown).
    """

    bbox: tuple[int, int, int, int]
    area: int
    query: int
    iou: float
    stuff_entropy: float
    thing_entropy: float
    mask: np.ndarray



# --------------------------------------------------------------------------------------
# Unknown-instance mining (Eq. 15, Sec. 6.3)
# --------------------------------------------------------------------------------------


def known_queries(pred_logits: torch.Tensor, min_score: float = 0.0) -> torch.Tensor:
    """Queries predicting a known class: ``argmax softmax(C_q) != K`` and the max > ``min_score``.

    Args: pred_logits (Q, K+1). Returns: (Q,) bool on the same device.
    """
    scores, labels = pred_logits.softmax(dim=-1).max(dim=-1)
    return (labels != pred_logits.shape[-1] - 1) & (scores > min_score)


def background_region(pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                      min_score: float = 0.0) -> torch.Tensor:
    """Background region ``B = 1 - max_{N_k}(max_Z(softmax(C_k)) * sigmoid(M_k))`` (Eq. 15).

    The known masks M_k are the queries of :func:`known_queries` (argmax over the K+1
    columns is not no-object, optionally with a class score above ``min_score``);
    ``max_Z softmax(C_k)`` is the query's best known-class probability (softmax over K+1).
    With no known query the whole image is background (B = 1).

    Args:
        pred_logits: (Q, K+1) class logits; pred_masks: (Q, H, W) mask logits, any device.

    Returns: (H, W) in [0, 1], dtype and device of ``pred_masks``.
    """
    known = known_queries(pred_logits, min_score)
    conf = pred_logits.softmax(dim=-1)[:, :-1].max(dim=-1).values
    weighted = conf[known][:, None, None] * pred_masks[known].sigmoid()
    if weighted.shape[0] == 0:
        return torch.ones_like(pred_masks[0])
    return 1.0 - weighted.max(dim=0).values


def class_entropies(probs: np.ndarray, thing_ids: Sequence[int]) -> tuple[float, float]:
    """Average stuff and thing class entropies (E_S, E_T) of Sec. 6.3, step 3.

    ``probs`` (K,) are the known-class probabilities ``softmax(C_i)[:K]`` of one query (not
    renormalised). Each class contributes its entropy term ``-p_k log p_k`` (0 for p_k = 0);
    E_S is their mean over stuff classes, E_T over thing classes (0 for an empty group).
    """
    p = np.asarray(probs, dtype=np.float64)
    terms = -p * np.log(np.where(p > 0, p, 1.0))
    is_thing = np.zeros(p.shape[0], dtype=bool)
    is_thing[list(thing_ids)] = True
    e_s = float(terms[~is_thing].mean()) if (~is_thing).any() else 0.0
    e_t = float(terms[is_thing].mean()) if is_thing.any() else 0.0
    return e_s, e_t


def mine_unknown_instances(background: np.ndarray | torch.Tensor, pred_logits: np.ndarray | torch.Tensor,
                           pred_masks: np.ndarray | torch.Tensor, thing_ids: Sequence[int], *,
                           bg_threshold: float = 0.5, iou_threshold: float = 0.5,
                           min_area: int = 1) -> list[UnknownInstance]:
    """Mine unknown things from the background region (Sec. 6.3). Host-side.

    1. 8-connected components of ``background > bg_threshold`` with >= ``min_area`` pixels.
    2. IoU of each component with every predicted mask binarised at ``sigmoid(M_i) > 0.5``
       (all Q queries, as the paper compares with "the individual masks of M").
    3. If the best IoU is >= ``iou_threshold`` ("significant overlap"), that query's known-class
       probabilities give E_S and E_T (:func:`class_entropies`).
    4. ``E_S > E_T`` -- the query is more uncertain among stuff than among things, read by
       the paper as "more likely a thing" -- makes the component an unknown instance.

    A component that no mask overlaps significantly carries no instance evidence and is left
    as background stuff (not returned); so is one with ``E_S <= E_T``.

    Args:
        background: (H, W) from :func:`background_region`.
        pred_logits: (Q, K+1) class logits; pred_masks: (Q, H, W) mask logits at the same
            resolution as ``background``.
        thing_ids: known thing classes; the other known classes are stuff.

    Returns: the unknown instances in raster-scan order of their first pixel.
    """
    bg = to_numpy(background)
    logits = torch.as_tensor(to_numpy(pred_logits), dtype=torch.float64)
    probs = logits.softmax(dim=-1)[:, :-1].numpy()
    masks = to_numpy(pred_masks) > 0  # sigmoid(m) > 0.5  <=>  m > 0
    if masks.shape[1:] != bg.shape:
        raise ValueError(f"masks {masks.shape[1:]} and background {bg.shape} differ in size")
    mask_areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
    out = []
    for bbox, local, sl in components(bg > bg_threshold, min_area):
        area = int(local.sum())
        inter = masks[(slice(None),) + sl][:, local].sum(axis=1)  # (Q,)
        iou = inter / np.maximum(area + mask_areas - inter, 1)
        best = int(iou.argmax()) if iou.size else -1
        if best < 0 or iou[best] < iou_threshold:
            continue
        e_s, e_t = class_entropies(probs[best], thing_ids)
        if e_s > e_t:
            out.append(UnknownInstance(bbox=tuple(int(v) for v in bbox), area=area, query=best,
                                       iou=float(iou[best]), stuff_entropy=e_s, thing_entropy=e_t,
                                       mask=local))
    return out


# --------------------------------------------------------------------------------------
# Open-set panoptic segmentation
# --------------------------------------------------------------------------------------


def open_set_panoptic(pred_logits: torch.Tensor, pred_masks: torch.Tensor, thing_ids: Sequence[int],
                      unknown: Sequence[UnknownInstance] = (), *, object_mask_threshold: float = 0.8,
                      overlap_threshold: float = 0.8) -> tuple[np.ndarray, list[dict]]:
    """Panoptic map of the known queries plus the mined unknown instances.

    Known part, as Mask2Former's ``panoptic_inference``: with ``scores, labels =
    softmax(C).max(-1)``, keep the queries with ``labels != K and scores >
    object_mask_threshold``; each pixel goes to the kept query maximising
    ``scores * sigmoid(M)``; a query's segment is its won pixels where ``sigmoid(M) >= 0.5``,
    dropped when empty or when (won pixels) / (pixels with ``sigmoid(M) >= 0.5``) <
    ``overlap_threshold``; stuff segments of one class merge into one id.

    Unknown part: each instance of ``unknown`` becomes one thing segment of category K, painted
    only on still-unassigned pixels (known segments win: assumption 2 of Sec. 6.2); an
    instance left with no pixel is dropped.

    Args:
        pred_logits: (Q, K+1); pred_masks: (Q, H, W) mask logits (any device; the (H, W)
            result is built on the host).
        thing_ids: known thing classes.
        unknown: from :func:`mine_unknown_instances` at the same (H, W).

    Returns: ``(panoptic, segments_info)``: (H, W) int32 ids (0 = void), and one dict per
    segment ``{"id", "category_id", "isthing", "area"}`` in id order (ids 1, 2, ...).
    """
    num_classes = pred_logits.shape[-1] - 1
    things = set(int(t) for t in thing_ids)
    scores, labels = pred_logits.softmax(dim=-1).max(dim=-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    masks = pred_masks[keep].sigmoid()
    scores, labels = scores[keep], labels[keep].tolist()
    height, width = pred_masks.shape[-2:]
    panoptic = np.zeros((height, width), dtype=np.int32)
    info: list[dict] = []
    if masks.shape[0]:
        owner = (scores[:, None, None] * masks).argmax(dim=0)
        stuff_ids: dict[int, int] = {}
        for q, cls in enumerate(labels):
            won = owner == q
            on = masks[q] >= 0.5
            seg = (won & on).cpu().numpy()
            won_area, on_area = int(won.sum()), int(on.sum())
            if won_area == 0 or on_area == 0 or not seg.any():
                continue
            if won_area / on_area < overlap_threshold:
                continue
            isthing = cls in things
            if not isthing and cls in stuff_ids:
                panoptic[seg] = stuff_ids[cls]
                continue
            seg_id = len(info) + 1
            if not isthing:
                stuff_ids[cls] = seg_id
            panoptic[seg] = seg_id
            info.append({"id": seg_id, "category_id": int(cls), "isthing": isthing, "area": 0})
    for inst in unknown:
        paint = full_mask(inst, (height, width)) & (panoptic == 0)
        if paint.any():
            seg_id = len(info) + 1
            panoptic[paint] = seg_id
            info.append({"id": seg_id, "category_id": num_classes, "isthing": True, "area": 0})
    areas = np.bincount(panoptic.ravel(), minlength=len(info) + 1)
    for seg in info:
        seg["area"] = int(areas[seg["id"]])
    return panoptic, info
