"""Whole-dataset evaluations returning the JSON-ready reports (values in percent, as the
paper prints them). The CLI delegates here; the metric math lives in pixel.py,
components.py, open_set.py and panoptic.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2a_pipe.evaluation.components import PROFILES, ComponentAccumulator
from m2a_pipe.evaluation.datasets import (
    UNKNOWN_CATEGORY_ID,
    DatasetError,
    PanopticDataset,
    map_labels,
    read_panoptic_png,
)
from m2a_pipe.evaluation.inputs import (
    EvaluationInputError,
    ScorePair,
    iterate,
    load_npy_scores,
)
from m2a_pipe.evaluation.open_set import (
    UNKNOWN_IF,
    OpenSetAccumulator,
    calibrate_threshold,
    is_unknown,
    weighted_average,
)
from m2a_pipe.evaluation.panoptic import PanopticAccumulator, PanopticInputError
from m2a_pipe.evaluation.pixel import DEFAULT_MAX_EXACT_PIXELS, FLOAT16_MAX, PixelAccumulator

Progress = Callable[[str], None]


def _pct(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(100.0 * float(value), 4)


def _check_float16_range(pair: ScorePair, scores: np.ndarray, labels: np.ndarray) -> None:
    """--ap smiyc rounds scores to float16 (the benchmark's storage): refuse what has no
    float16 value instead of counting it as infinite."""
    valid = scores[labels != 255]
    if valid.size and float(np.abs(valid).max()) > FLOAT16_MAX:
        raise EvaluationInputError(f"{pair.source or pair.stem}: scores beyond the float16 range (+-65504); "
                                   "--ap smiyc rounds them to float16 as the benchmark stores them (use --ap exact)")


def component_rule(ap_convention: str, method: str, given: bool) -> tuple[str, str]:
    """(comparison for :class:`ComponentAccumulator`, the rule in words for the report)."""
    if ap_convention == "smiyc":
        source = ("given (--threshold)" if given else
                  "the lower bin edge at the best-F1 point of the SMIYC binned pixel curve")
        return "float16 >", (f"score > t, both rounded to float16 (the SMIYC benchmark's float16 maps and "
                             f"comparison); t = {source}")
    source = ("given (--threshold)" if given else
              f"the best-F1 threshold of the exact pixel curve ({method}), whose point counts the "
              "pixels with score >= t")
    return ">=", f"score >= t; t = {source}"


def evaluate_anomaly(pairs: list[ScorePair], *, profile: str = "anomaly-track", ap_convention: str = "exact",
                     threshold: float | None = None, max_exact_pixels: int = DEFAULT_MAX_EXACT_PIXELS,
                     plots_dir: Path | None = None) -> dict:
    """Pixel (Eq. 16-19) then component (Eq. 20-22) metrics over ``pairs``, two streamed passes.

    The component threshold ``t`` is ``threshold`` or the best pixel-F1 threshold of pass 1,
    applied with one rule per ``ap_convention`` (:func:`component_rule`): ``exact``:
    ``score >= t``, the pixels the exact curve counts at ``t``; ``smiyc``: ``score > t`` with
    ``t`` the lower bin edge of the benchmark's binned curve, both in float16, as the benchmark
    does (scores beyond the float16 range are then an error naming their file).
    Returns the report dict (keys ``auprc``, ``fpr95``, ``auroc``, ``siou``, ``ppv``,
    ``f1_star``, ``f1_by_tau``, ``n_images``, ``n_valid_pixels``, ``component_threshold``,
    ``component_threshold_rule`` plus settings).
    """
    pixel = PixelAccumulator(ap_convention, max_exact_pixels)
    for pair, scores, labels in iterate(pairs):
        if ap_convention == "smiyc":
            _check_float16_range(pair, scores, labels)
        pixel.add(scores, labels)
    pm = pixel.result()
    thr = pm.best_f1_threshold if threshold is None else float(threshold)
    comparison, rule = component_rule(ap_convention, pm.method, given=threshold is not None)
    comp = ComponentAccumulator(thr, PROFILES[profile], comparison=comparison)
    if np.isfinite(thr):
        for _, scores, labels in iterate(pairs):
            comp.add(scores, labels)
    cm = comp.result()
    report = {
        "auprc": _pct(pm.auprc), "fpr95": _pct(pm.fpr95), "auroc": _pct(pm.auroc),
        "siou": _pct(cm.siou), "ppv": _pct(cm.ppv), "f1_star": _pct(cm.f1_star),
        "f1_by_tau": {f"{tau:.2f}": _pct(v) for tau, v in cm.f1_by_tau.items()},
        "n_images": pixel.n_images, "n_valid_pixels": pm.n_pos + pm.n_neg,
        "n_anomalous_pixels": pm.n_pos, "ap_convention": ap_convention, "pixel_method": pm.method,
        "component_threshold": thr, "component_threshold_source": "given" if threshold is not None else "best pixel F1",
        "component_threshold_rule": rule,
        "profile": profile, "n_gt_components": cm.n_gt, "n_pred_components": cm.n_pred,
    }
    if plots_dir is not None and pm.n_pos:
        from m2a_pipe.evaluation.plots import write_pr_roc

        report["plots"] = [str(p) for p in write_pr_roc(Path(plots_dir), pm.curve, pm.auprc, pm.auroc)]
    return report


# --------------------------------------------------------------------------------------
# Open set
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSetItem:
    """One image: anomaly scores ``<stem>.npy``, known-class prediction (``.npy`` or ``.png``),
    ground truth label PNG mapped by ``lut`` to 0..K-1 / K (unknown) / 255, and its subset."""

    stem: str
    scores: Path
    semantic: Path
    label: Path
    lut: np.ndarray
    subset: str = ""

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from PIL import Image

        try:
            with Image.open(self.label) as im:
                gt = map_labels(np.array(im), self.lut, self.label)
        except OSError as err:
            raise EvaluationInputError(f"{self.label}: cannot read label ({err})") from None
        except DatasetError as err:
            raise EvaluationInputError(str(err)) from None
        scores = load_npy_scores(self.scores)
        if self.semantic.suffix == ".npy":
            sem = np.load(self.semantic, allow_pickle=False)
            sem = sem[0] if sem.ndim == 3 and sem.shape[0] == 1 else sem
        else:
            with Image.open(self.semantic) as im:
                sem = np.array(im)
        for name, arr in ((self.scores, scores), (self.semantic, sem)):
            if arr.shape != gt.shape:
                raise EvaluationInputError(
                    f"{name}: size {arr.shape} does not match label {self.label.name} {gt.shape}")
        if not np.isfinite(scores).all():
            raise EvaluationInputError(f"{self.scores}: scores contain NaN or infinite values")
        return gt, sem.astype(np.int64), scores


def open_set_lut(num_known: int, anomaly_id: int) -> np.ndarray:
    """Generic ground truth: 0..K-1 known, ``anomaly_id`` -> K, 255 void; others invalid."""
    lut = np.full(1 << 16, -1, dtype=np.int16)
    lut[:num_known] = np.arange(num_known)
    lut[anomaly_id] = num_known
    lut[255] = 255
    return lut


def _anomalous_scores(items: list[OpenSetItem], num_known: int) -> list[np.ndarray]:
    """(n_i,) float32 scores of the anomalous pixels (ground truth K) of each item."""
    out = []
    for item in items:
        gt, _, scores = item.load()
        out.append(scores[gt == num_known].astype(np.float32))
    return out


def _known_scores(items: list[OpenSetItem], num_known: int) -> Iterator[np.ndarray]:
    """(n_i,) float32 scores of the known pixels (ground truth 0..K-1; void left out) of each
    item, loaded one item at a time."""
    for item in items:
        gt, _, scores = item.load()
        yield scores[gt < num_known].astype(np.float32)


def _folders(items: list[OpenSetItem]) -> str:
    folders = sorted({str(item.label.parent) for item in items})
    return folders[0] + (f" (and {len(folders) - 1} more folders)" if len(folders) > 1 else "")


def _calibrate(items: list[OpenSetItem], num_known: int, tpr: float, rule: str) -> tuple[float, float]:
    """The threshold at ``tpr`` on the calibration ``items`` by ``rule`` (two passes over the
    items for ``reference``: anomalous scores, then known ones), and the fraction of their
    anomalous pixels that the rule's comparison then labels unknown."""
    anomalous = _anomalous_scores(items, num_known)
    n = sum(a.size for a in anomalous)
    if n == 0:
        raise EvaluationInputError(f"{_folders(items)}: no anomalous pixels (ground truth {num_known}) to "
                                   "calibrate the open-set threshold on")
    known = _known_scores(items, num_known) if rule == "reference" else None
    thr = calibrate_threshold(anomalous, tpr, rule=rule, known_scores=known)
    return thr, sum(int(np.count_nonzero(is_unknown(a, thr, rule))) for a in anomalous) / n


def _evaluate_open(items: list[OpenSetItem], num_known: int, threshold: float, rule: str) -> OpenSetAccumulator:
    acc = OpenSetAccumulator(num_known, threshold, rule)
    for item in items:
        gt, sem, scores = item.load()
        acc.add(gt, sem, scores)
    return acc


def _open_report(acc: OpenSetAccumulator, class_names: list[str] | None,
                 calibration_tpr: float | None = None) -> dict:
    r = acc.result()
    names = class_names or [str(i) for i in range(acc.num_known)]
    return {"miou": _pct(r.miou), "open_miou": _pct(r.open_miou), "threshold": r.threshold,
            "calibration_tpr": _pct(calibration_tpr),
            "open_iou_by_class": {n: _pct(v) for n, v in zip(names, r.open_iou_by_class)},
            "iou_by_class": {n: _pct(v) for n, v in zip(names, r.iou_by_class)}, "n_images": r.n_images}


def evaluate_open_set(items: list[OpenSetItem], num_known: int, *, threshold: float | None = None,
                      calibration: list[OpenSetItem] | None = None, tpr: float = 0.95,
                      rule: str = "reference", class_names: list[str] | None = None) -> dict:
    """Open-IoU (Eq. 23-24) and closed-set mIoU.

    Threshold: ``threshold`` if given; else ``tpr`` TPR on ``calibration``; else, when the
    items come in several subsets (StreetHazards t5 / t6), each subset is evaluated at the
    threshold calibrated on the other subsets and the results are averaged weighted by image
    counts (Sec. 7.4). ``rule`` (:data:`~m2a_pipe.evaluation.open_set.THRESHOLD_RULES`) picks
    the calibration and the comparison that makes a pixel unknown (Eq. 14), a given
    ``threshold`` included: ``reference`` (DenseHybrid's; ``score > t``) or ``kth-score``
    (``score >= t``). The report names both (``threshold_rule``, ``unknown_if``) and, per
    calibration, ``calibration_tpr``: the percent of the calibration split's anomalous pixels
    labelled unknown at the threshold (below ``tpr`` where scores tie at it).
    """
    if rule not in UNKNOWN_IF:
        raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(UNKNOWN_IF)}")
    named = {"threshold_rule": rule, "unknown_if": UNKNOWN_IF[rule]}
    if threshold is not None or calibration:
        thr, achieved = (float(threshold), None) if threshold is not None else \
            _calibrate(calibration, num_known, tpr, rule)
        report = _open_report(_evaluate_open(items, num_known, thr, rule), class_names, achieved)
        source = "given" if threshold is not None else f"{tpr:.0%} TPR on the calibration split"
        return {**report, **named, "threshold_source": source, "tpr": None if threshold is not None else tpr}
    subsets = sorted({item.subset for item in items})
    if len(subsets) < 2:
        raise EvaluationInputError("open-set evaluation needs --threshold, a calibration split, or a "
                                   "dataset with two subsets (StreetHazards t5 / t6)")
    parts, per_subset = [], {}
    for subset in subsets:
        own = [i for i in items if i.subset == subset]
        other = [i for i in items if i.subset != subset]
        thr, achieved = _calibrate(other, num_known, tpr, rule)
        acc = _evaluate_open(own, num_known, thr, rule)
        parts.append(acc.result())
        per_subset[subset] = _open_report(acc, class_names, achieved)
    avg = weighted_average(parts)
    return {"miou": _pct(avg["miou"]), "open_miou": _pct(avg["open_miou"]),
            "open_iou_by_class": None, "threshold": {s: r["threshold"] for s, r in per_subset.items()},
            "subsets": per_subset, "n_images": len(items), **named,
            "threshold_source": "the other subsets", "tpr": tpr,
            "protocol": f"each subset at the {tpr:.0%} TPR threshold of the others, weighted by images"}


# --------------------------------------------------------------------------------------
# Panoptic
# --------------------------------------------------------------------------------------


def read_prediction_json(path: Path) -> dict[str, dict]:
    """COCO-format panoptic predictions: ``{"annotations": [{"file_name", "segments_info"}]}``
    -> {stem: annotation} (images are matched by file-name stem, not by ``image_id``)."""
    try:
        data = json.loads(Path(path).read_text())
        return {Path(a["file_name"]).stem: a for a in data["annotations"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvaluationInputError(f"{path}: not a COCO panoptic prediction JSON ({err})") from None


def _without_unknown(pred: np.ndarray, segments: list[dict]) -> tuple[np.ndarray, list[dict], int]:
    """Drop the segments of :data:`UNKNOWN_CATEGORY_ID` from a (H, W) integer id map and its
    list (their pixels become void); returns (map, list, number dropped)."""
    drop = [int(s["id"]) for s in segments if int(s["category_id"]) == UNKNOWN_CATEGORY_ID]
    if not drop:
        return pred, segments, 0
    pred = np.where(np.isin(pred, drop), 0, pred)
    return pred, [s for s in segments if int(s["id"]) not in drop], len(drop)


def _group_report(g: dict) -> dict:
    return {"pq": _pct(g["pq"]), "sq": _pct(g["sq"]), "rq": _pct(g["rq"]), "n_categories": g["n"]}


def evaluate_panoptic(gt: PanopticDataset, pred_json: Path, pred_dir: Path) -> dict:
    """PQ / SQ / RQ (Eq. 25) per category and per group, in both conventions.

    ``panopticapi``: groups ``all`` / ``things`` / ``stuff`` by ``isthing`` over every
    category, the unknown one included (as ``pq_compute``). ``paper`` (Table IV): ``all`` =
    known things and stuff, ``things`` = known things, ``stuff``, and ``unknown`` (PQ_unk)
    apart. Values in percent, null where no category of the group has a segment.

    Ids: a predicted segment must carry a ground-truth category id; the unknown one carries
    ``gt.unknown`` (a ``--dataset`` run writes the model's class K so). Against a closed-set
    ground truth (``gt.unknown`` None), predicted segments of :data:`UNKNOWN_CATEGORY_ID` are
    left out (counted in ``n_unknown_segments_left_out``).
    """
    preds = read_prediction_json(pred_json)
    acc = PanopticAccumulator(set(gt.things), set(gt.stuff), gt.unknown, gt.unknown_isthing)
    left_out = 0
    for image in gt.images:
        ann = preds.get(image.stem)
        if ann is None:
            raise EvaluationInputError(f"{image.png}: no prediction for {image.stem} in {pred_json}")
        png = Path(pred_dir) / ann["file_name"]
        try:
            pred, segments = read_panoptic_png(png), list(ann["segments_info"])
            if gt.unknown is None and UNKNOWN_CATEGORY_ID not in acc.categories:
                pred, segments, n = _without_unknown(pred, segments)
                left_out += n
            acc.add(read_panoptic_png(image.png), list(image.segments), pred, segments)
        except (PanopticInputError, DatasetError) as err:
            raise EvaluationInputError(f"{png}: {err}") from None
    groups = acc.result()
    unknown = None
    if gt.unknown is not None:
        unknown = {"id": gt.unknown, "name": gt.names.get(gt.unknown, str(gt.unknown)),
                   "isthing": gt.unknown_isthing, "chosen_by": gt.unknown_source,
                   "prediction": f"the prediction's unknown segments carry category {gt.unknown}"}
    per_category = {}
    for cat, st in acc.per_category().items():
        group = ("unknown" if cat == gt.unknown else "things" if cat in gt.things else "stuff")
        per_category[str(cat)] = {"name": gt.names.get(cat, str(cat)), "group": group,
                                  "pq": _pct(st["pq"]), "sq": _pct(st["sq"]), "rq": _pct(st["rq"]),
                                  "tp": st["tp"], "fp": st["fp"], "fn": st["fn"]}
    return {
        "paper": {name: _group_report(g) for name, g in groups["paper"].items()},
        "panopticapi": {name: _group_report(g) for name, g in groups["panopticapi"].items()},
        "unknown_category": unknown,
        "per_category": per_category,
        "n_images": acc.n_images,
        "n_unknown_segments_left_out": left_out,
        "units": "percent (panopticapi's fractions x 100); a category without TP, FP or FN has null PQ/SQ/RQ "
                 "and is left out of its groups' means",
        "conventions": {
            "panopticapi": "cocodataset/panopticapi pq_compute: all = every category, things / stuff by isthing "
                           "(the unknown category counted by its own isthing)",
            "paper": "Table IV (as EOPSN's evaluation): all / things / stuff = known categories only, "
                     "unknown = PQ_unk apart"},
    }
