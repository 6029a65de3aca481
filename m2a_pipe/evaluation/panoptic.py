"""Panoptic quality (Eq. 25) with the COCO panopticapi conventions, split into known things,
known stuff and the unknown class.

A panoptic image is an (H, W) integer map of segment ids (0 = void / unlabeled) plus a list of
segment dicts ``{"id", "category_id", "iscrowd" (ground truth only, default 0)}``.
Per image (:func:`pq_image`), as ``pq_compute_single_core``:

* areas are counted on the maps; a ground-truth and a predicted segment *match* when they have
  the same category and ``IoU > 0.5``, where the union leaves out the predicted segment's
  pixels on void ground truth (``IoU = I / (|p| + |g| - I - |p & void|)``); crowd ground
  truth never matches;
* unmatched non-crowd ground truth: FN; crowd ground truth: ignored;
* an unmatched prediction is ignored when more than half of it lies on void or on the crowd
  region of its own category, else FP.

Per category ``PQ = sum IoU / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP`` (0 without TP),
``RQ = TP / (TP + FP/2 + FN/2)``; a group's PQ/SQ/RQ are the means over its categories with
``TP + FP + FN > 0`` (not products of means).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m2a_pipe.errors import M2AError

OFFSET = 1 << 32


@dataclass
class CategoryStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: CategoryStat) -> None:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn


class PanopticInputError(M2AError):
    """A segment list that does not agree with its map."""


def _areas(pan: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(pan, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def pq_image(gt: np.ndarray, gt_segments: list[dict], pred: np.ndarray, pred_segments: list[dict],
             categories: set[int] | None = None) -> dict[int, CategoryStat]:
    """Per-category TP / FP / FN and matched IoU sum of one image (Eq. 25 ingredients).

    Args:
        gt, pred: (H, W) integer segment-id maps of the same shape (0 = void).
        gt_segments, pred_segments: dicts with ``id`` and ``category_id`` (``iscrowd`` for gt).
        categories: known category ids; a predicted category outside it is an error.
    """
    if gt.shape != pred.shape:
        raise PanopticInputError(f"size mismatch: ground truth {gt.shape}, prediction {pred.shape}")
    gt_info = {int(s["id"]): s for s in gt_segments}
    pred_info = {int(s["id"]): s for s in pred_segments}
    gt_area, pred_area = _areas(gt), _areas(pred)
    for seg_id in pred_area:
        if seg_id != 0 and seg_id not in pred_info:
            raise PanopticInputError(f"segment id {seg_id} is in the prediction map but not in its list")
    for seg_id, seg in pred_info.items():
        if seg_id not in pred_area:
            raise PanopticInputError(f"segment id {seg_id} is in the prediction list but not in its map")
        if categories is not None and int(seg["category_id"]) not in categories:
            raise PanopticInputError(f"segment id {seg_id} has unknown category {seg['category_id']}")
    joint = gt.astype(np.uint64) * np.uint64(OFFSET) + pred.astype(np.uint64)
    keys, counts = np.unique(joint, return_counts=True)
    inter = {(int(k // OFFSET), int(k % OFFSET)): int(c) for k, c in zip(keys, counts)}

    stats: dict[int, CategoryStat] = {}

    def stat(cat: int) -> CategoryStat:
        return stats.setdefault(int(cat), CategoryStat())

    gt_matched, pred_matched = set(), set()
    for (g, p), n in inter.items():
        if g not in gt_info or p not in pred_info:
            continue
        gs, ps = gt_info[g], pred_info[p]
        if gs.get("iscrowd", 0) == 1 or int(gs["category_id"]) != int(ps["category_id"]):
            continue
        union = pred_area[p] + gt_area.get(g, 0) - n - inter.get((0, p), 0)
        iou = n / union
        if iou > 0.5:
            s = stat(gs["category_id"])
            s.tp += 1
            s.iou += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd_of_category: dict[int, int] = {}
    for g, gs in gt_info.items():
        if g in gt_matched or g not in gt_area:
            continue
        if gs.get("iscrowd", 0) == 1:
            crowd_of_category[int(gs["category_id"])] = g
            continue
        stat(gs["category_id"]).fn += 1
    for p, ps in pred_info.items():
        if p in pred_matched:
            continue
        ignored = inter.get((0, p), 0)
        crowd = crowd_of_category.get(int(ps["category_id"]))
        if crowd is not None:
            ignored += inter.get((crowd, p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        stat(ps["category_id"]).fp += 1
    return stats


@dataclass
class PanopticAccumulator:
    """Pool :func:`pq_image` over images.

    Args: things / stuff: known thing and stuff category ids; unknown: the unknown category id
    (None: closed set).
    """

    things: set[int]
    stuff: set[int]
    unknown: int | None = None
    stats: dict[int, CategoryStat] = field(default_factory=dict)
    n_images: int = 0

    @property
    def categories(self) -> set[int]:
        return self.things | self.stuff | ({self.unknown} if self.unknown is not None else set())

    def add(self, gt: np.ndarray, gt_segments: list[dict], pred: np.ndarray, pred_segments: list[dict]) -> None:
        for cat, s in pq_image(gt, gt_segments, pred, pred_segments, self.categories).items():
            self.stats.setdefault(cat, CategoryStat())
            self.stats[cat].add(s)
        self.n_images += 1

    def group(self, cats: set[int]) -> dict[str, float]:
        """Eq. 25 averaged over the categories of ``cats`` that occur: pq, sq, rq (fractions)
        and n (categories counted)."""
        pq = sq = rq = 0.0
        n = 0
        for cat in cats:
            s = self.stats.get(cat)
            if s is None or s.tp + s.fp + s.fn == 0:
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            pq += s.iou / denom
            sq += s.iou / s.tp if s.tp else 0.0
            rq += s.tp / denom
        if n == 0:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}

    def result(self) -> dict[str, dict[str, float]]:
        """Groups ``all`` (known and unknown), ``known``, ``things``, ``stuff`` and ``unknown``."""
        out = {"all": self.group(self.categories), "known": self.group(self.things | self.stuff),
               "things": self.group(self.things), "stuff": self.group(self.stuff)}
        if self.unknown is not None:
            out["unknown"] = self.group({self.unknown})
        return out
