"""Panoptic quality (Eq. 25) with the COCO panopticapi matching rules, reported in two
conventions: panopticapi's (the unknown category is one more category, a thing or stuff by its
``isthing``) and the paper's (Table IV: known things, known stuff, their union, and the unknown
category apart).

A panoptic image is an (H, W) integer map of segment ids (0 = void / unlabeled) plus a list of
segment dicts ``{"id", "category_id", "iscrowd" (ground truth only, default 0)}``.
Per image (:func:`pq_image`), as ``pq_compute_single_core`` of cocodataset/panopticapi
``panopticapi/evaluation.py``:

* areas are counted on the maps; a ground-truth and a predicted segment *match* when they have
  the same category and ``IoU > 0.5``, where the union leaves out the predicted segment's
  pixels on void ground truth (``IoU = I / (|p| + |g| - I - |p & void|)``); crowd ground
  truth never matches;
* unmatched non-crowd ground truth: FN (also one listed but absent from the map, as in
  panopticapi, where its area comes from the JSON); crowd ground truth: ignored, and it becomes
  its category's crowd region (the last listed crowd segment of a category, as panopticapi);
* an unmatched prediction is ignored when more than half of it lies on void or on the crowd
  region of its own category, else FP.

Per category ``PQ = sum IoU / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP`` (0 without TP),
``RQ = TP / (TP + FP/2 + FN/2)``; a group's PQ/SQ/RQ are the means over its categories with
``TP + FP + FN > 0`` (not products of means), as ``PQStat.pq_average``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m2a_pipe.errors import M2AError

OFFSET = 1 << 32
CONVENTIONS = ("panopticapi", "paper")


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

    def quality(self) -> dict[str, float] | None:
        """Eq. 25 of one category as fractions ``pq``, ``sq``, ``rq``; None without segments."""
        if self.tp + self.fp + self.fn == 0:
            return None
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return {"pq": self.iou / denom, "sq": self.iou / self.tp if self.tp else 0.0, "rq": self.tp / denom}


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
        categories: the ground truth's category ids; a predicted category outside it is an
            error (as panopticapi's ``unknown category_id``).
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
            raise PanopticInputError(f"segment id {seg_id} has category {seg['category_id']}, which is not a "
                                     f"ground-truth category ({sorted(categories)})")
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
        if g in gt_matched:
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
    (None: closed set); unknown_isthing: the unknown category's ``isthing`` (where
    panopticapi's convention counts it).
    """

    things: set[int]
    stuff: set[int]
    unknown: int | None = None
    unknown_isthing: bool = True
    stats: dict[int, CategoryStat] = field(default_factory=dict)
    n_images: int = 0

    @property
    def categories(self) -> set[int]:
        return self.things | self.stuff | ({self.unknown} if self.unknown is not None else set())

    def add(self, gt: np.ndarray, gt_segments: list[dict], pred: np.ndarray, pred_segments: list[dict]) -> None:
        """One image: (H, W) integer segment-id maps and their segment lists (see :func:`pq_image`)."""
        for cat, s in pq_image(gt, gt_segments, pred, pred_segments, self.categories).items():
            self.stats.setdefault(cat, CategoryStat())
            self.stats[cat].add(s)
        self.n_images += 1

    def group(self, cats: set[int]) -> dict[str, float]:
        """Eq. 25 averaged over the categories of ``cats`` that occur: pq, sq, rq (fractions,
        NaN when none occurs) and n (categories counted)."""
        found = [q for q in (self.stats.get(c, CategoryStat()).quality() for c in cats) if q is not None]
        if not found:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
        n = len(found)
        return {k: sum(q[k] for q in found) / n for k in ("pq", "sq", "rq")} | {"n": n}

    def groups(self, convention: str) -> dict[str, set[int]]:
        """The category sets of a convention.

        ``panopticapi``: ``all`` every category, ``things`` / ``stuff`` by ``isthing`` (the
        unknown category among the things when ``unknown_isthing``), as ``pq_compute``.
        ``paper`` (Table IV, as EOPSN's evaluation): ``all`` known things and stuff,
        ``things`` known things, ``stuff``, ``unknown`` the unknown category alone.
        """
        unk = {self.unknown} if self.unknown is not None else set()
        if convention == "panopticapi":
            return {"all": self.categories,
                    "things": self.things | (unk if self.unknown_isthing else set()),
                    "stuff": self.stuff | (set() if self.unknown_isthing else unk)}
        if convention == "paper":
            out = {"all": self.things | self.stuff, "things": set(self.things), "stuff": set(self.stuff)}
            return out | ({"unknown": unk} if unk else {})
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")

    def result(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{convention: {group: {pq, sq, rq, n}}}`` for both :data:`CONVENTIONS` (Eq. 25)."""
        return {conv: {name: self.group(cats) for name, cats in self.groups(conv).items()} for conv in CONVENTIONS}

    def per_category(self) -> dict[int, dict]:
        """Every category of :attr:`categories`: ``pq``, ``sq``, ``rq`` (fractions; None when
        it has no TP, FP or FN) and ``tp``, ``fp``, ``fn``, ``iou_sum``."""
        out = {}
        for cat in sorted(self.categories):
            s = self.stats.get(cat, CategoryStat())
            q = s.quality() or {"pq": None, "sq": None, "rq": None}
            out[cat] = q | {"tp": s.tp, "fp": s.fp, "fn": s.fn, "iou_sum": s.iou}
        return out
