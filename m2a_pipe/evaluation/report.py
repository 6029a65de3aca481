"""Whole-dataset evaluations returning the JSON-ready reports (values in percent, as the
paper prints them). The CLI delegates here; the metric math lives in pixel.py,
components.py, open_set.py and panoptic.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2a_pipe.evaluation.components import PROFILES, ComponentAccumulator
from m2a_pipe.evaluation.datasets import (
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
    OpenSetAccumulator,
    calibrate_threshold,
    weighted_average,
)
from m2a_pipe.evaluation.panoptic import PanopticAccumulator, PanopticInputError
from m2a_pipe.evaluation.pixel import DEFAULT_MAX_EXACT_PIXELS, PixelAccumulator

Progress = Callable[[str], None]


def _pct(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(100.0 * float(value), 4)


def evaluate_anomaly(pairs: list[ScorePair], *, profile: str = "anomaly-track", ap_convention: str = "exact",
                     threshold: float | None = None, max_exact_pixels: int = DEFAULT_MAX_EXACT_PIXELS,
                     plots_dir: Path | None = None) -> dict:
    """Pixel (Eq. 16-19) then component (Eq. 20-22) metrics over ``pairs``, two streamed passes.

    The component threshold is ``threshold`` or the best pixel-F1 threshold of pass 1.
    Returns the report dict (keys ``auprc``, ``fpr95``, ``auroc``, ``siou``, ``ppv``,
    ``f1_star``, ``f1_by_tau``, ``n_images``, ``n_valid_pixels`` plus settings).
    """
    pixel = PixelAccumulator(ap_convention, max_exact_pixels)
    for _, scores, labels in iterate(pairs):
        pixel.add(scores, labels)
    pm = pixel.result()
    thr = pm.best_f1_threshold if threshold is None else float(threshold)
    comp = ComponentAccumulator(thr, PROFILES[profile])
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
    out = []
    for item in items:
        gt, _, scores = item.load()
        out.append(scores[gt == num_known].astype(np.float32))
    return out


def _evaluate_open(items: list[OpenSetItem], num_known: int, threshold: float) -> OpenSetAccumulator:
    acc = OpenSetAccumulator(num_known, threshold)
    for item in items:
        gt, sem, scores = item.load()
        acc.add(gt, sem, scores)
    return acc


def _open_report(acc: OpenSetAccumulator, class_names: list[str] | None) -> dict:
    r = acc.result()
    names = class_names or [str(i) for i in range(acc.num_known)]
    return {"miou": _pct(r.miou), "open_miou": _pct(r.open_miou), "threshold": r.threshold,
            "open_iou_by_class": {n: _pct(v) for n, v in zip(names, r.open_iou_by_class)},
            "iou_by_class": {n: _pct(v) for n, v in zip(names, r.iou_by_class)}, "n_images": r.n_images}


def evaluate_open_set(items: list[OpenSetItem], num_known: int, *, threshold: float | None = None,
                      calibration: list[OpenSetItem] | None = None, tpr: float = 0.95,
                      class_names: list[str] | None = None) -> dict:
    """Open-IoU (Eq. 23-24) and closed-set mIoU.

    Threshold: ``threshold`` if given; else 95 % TPR on ``calibration``; else, when the items
    come in several subsets (StreetHazards t5 / t6), each subset is evaluated at the threshold
    calibrated on the other subsets and the results are averaged weighted by image counts
    (Sec. 7.4).
    """
    if threshold is not None or calibration:
        thr = threshold
        if thr is None:
            thr = calibrate_threshold(_anomalous_scores(calibration, num_known), tpr)
        return _open_report(_evaluate_open(items, num_known, thr), class_names)
    subsets = sorted({item.subset for item in items})
    if len(subsets) < 2:
        raise EvaluationInputError("open-set evaluation needs --threshold, a calibration split, or a "
                                   "dataset with two subsets (StreetHazards t5 / t6)")
    parts, per_subset = [], {}
    for subset in subsets:
        own = [i for i in items if i.subset == subset]
        other = [i for i in items if i.subset != subset]
        thr = calibrate_threshold(_anomalous_scores(other, num_known), tpr)
        acc = _evaluate_open(own, num_known, thr)
        parts.append(acc.result())
        per_subset[subset] = _open_report(acc, class_names)
    avg = weighted_average(parts)
    return {"miou": _pct(avg["miou"]), "open_miou": _pct(avg["open_miou"]),
            "open_iou_by_class": None, "threshold": {s: r["threshold"] for s, r in per_subset.items()},
            "subsets": per_subset, "n_images": len(items),
            "protocol": "each subset at the 95% TPR threshold of the others, weighted by images"}


# --------------------------------------------------------------------------------------
# Panoptic
# --------------------------------------------------------------------------------------


def read_prediction_json(path: Path) -> dict[str, dict]:
    """COCO-format panoptic predictions: ``{"annotations": [{"file_name", "segments_info"}]}``
    -> {stem: annotation}."""
    try:
        data = json.loads(Path(path).read_text())
        return {Path(a["file_name"]).stem: a for a in data["annotations"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvaluationInputError(f"{path}: not a COCO panoptic prediction JSON ({err})") from None


def evaluate_panoptic(gt: PanopticDataset, pred_json: Path, pred_dir: Path) -> dict:
    """PQ / SQ / RQ (Eq. 25) overall and per group (things, stuff, unknown, known)."""
    preds = read_prediction_json(pred_json)
    acc = PanopticAccumulator(set(gt.things), set(gt.stuff), gt.unknown)
    for image in gt.images:
        ann = preds.get(image.stem)
        if ann is None:
            raise EvaluationInputError(f"{image.png}: no prediction for {image.stem} in {pred_json}")
        png = Path(pred_dir) / ann["file_name"]
        try:
            acc.add(read_panoptic_png(image.png), list(image.segments), read_panoptic_png(png),
                    list(ann["segments_info"]))
        except (PanopticInputError, DatasetError) as err:
            raise EvaluationInputError(f"{png}: {err}") from None
    groups = acc.result()
    report = {k: _pct(groups["all"][k]) for k in ("pq", "sq", "rq")}
    for name, g in groups.items():
        report[name] = {"pq": _pct(g["pq"]), "sq": _pct(g["sq"]), "rq": _pct(g["rq"]), "n_categories": g["n"]}
    report["n_images"] = acc.n_images
    return report
