"""Run a model over a dataset and write its outputs to files, so that an evaluation can be
repeated without the model (a file already there is kept and reused).

* anomaly: ``<out>/scores/<stem>.npy`` (H, W) float32 anomaly maps;
* open set: the same plus ``<out>/semantic/<stem>.npy`` (H, W) int16 known-class labels;
* panoptic: ``<out>/panoptic/<stem>.png`` (COCO RGB ids) + ``<out>/panoptic.json``.

Stems with sub-folders (``t5/300``) are written with ``__`` in place of ``/``.

``<out>/run.json`` records how the outputs were made (weights and their sha256, score,
flip); a later run with other settings is refused rather than mixed with them (see
:func:`claim_run_folder`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from m2a_pipe.evaluation.datasets import (
    UNKNOWN_CATEGORY_ID,
    AnomalyDataset,
    PanopticDataset,
    read_image,
    write_panoptic_png,
)
from m2a_pipe.io.layout import written_atomically


def file_stem(stem: str) -> str:
    return stem.replace("/", "__").replace("\\", "__")


RUN_FILE = "run.json"


def load_predictor(weights: str, device: str = "cpu", flip: bool = False, score: str = "official",
                   map_stride: int = 1, precision: str = "fp32"):
    """``Predictor.from_weights(weights, ...)``; ``score`` official = Eq. 5 refined by Eq. 13."""
    from m2a_pipe.inference.device import resolve_device
    from m2a_pipe.inference.predictor import Predictor

    return Predictor.from_weights(weights, device=resolve_device(device), resize=True, flip=flip, score=score,
                                  map_stride=map_stride, precision=precision)


def resolved_precision(device: str, precision: str) -> str:
    """``--precision`` as the model will run on ``device``: fp32, bf16 or fp16 (``auto``
    resolved by :func:`m2a_pipe.inference.forward.precision_for`)."""
    from m2a_pipe.inference.device import resolve_device
    from m2a_pipe.inference.forward import precision_for

    return precision_for(resolve_device(device), precision).name


RUN_DEFAULTS = {"map_stride": 1, "precision": "fp32"}
"""Settings a run.json written before they existed holds implicitly."""


def run_settings(weights: str, flip: bool, score: str, map_stride: int = 1, precision: str = "fp32") -> dict:
    """What makes a model run's outputs: the weights as given and their file's sha256 (None
    when the weights cannot be found: outputs already written may still be reused), score,
    flip, the score's map stride and the network's (resolved) precision."""
    from m2a_pipe.model.checkpoint import sha256_file
    from m2a_pipe.model.registry import WeightsError, resolve

    try:
        sha = sha256_file(resolve(weights))
    except (WeightsError, OSError):
        sha = None
    return {"weights": str(weights), "weights_sha256": sha, "score": score, "flip": bool(flip),
            "map_stride": int(map_stride), "precision": precision}


def claim_run_folder(out: Path, settings: dict, writing: bool) -> None:
    """Check ``settings`` against the ones recorded in ``out/run.json``, and record them when
    the model is about to write there (``writing``).

    Raises EvaluationInputError (one line naming the folder and the first differing setting)
    when the folder holds outputs of another score, flip or weights file; a folder without
    run.json (outputs from elsewhere) is reused as it is.
    """
    from m2a_pipe.evaluation.inputs import EvaluationInputError

    path = Path(out) / RUN_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except ValueError:
            raise EvaluationInputError(f"{path}: not a JSON file; delete it or choose another --output") from None
        for key in ("score", "flip", "map_stride", "precision", "weights_sha256"):
            was, now = recorded.get(key, RUN_DEFAULTS.get(key)), settings.get(key, RUN_DEFAULTS.get(key))
            if key == "weights_sha256" and (was is None or now is None):
                continue
            if was != now:
                what = f"weights {recorded.get('weights')} (sha256 {str(was)[:12]}...)" if key == "weights_sha256" \
                    else f"{key} {was}"
                raise EvaluationInputError(f"{out}: holds model outputs made with {what}, not with this run's; "
                                           f"choose another --output or delete the folder")
    elif writing:
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path) as tmp:
            tmp.write_text(json.dumps(settings, indent=1) + "\n")


def write_anomaly_scores(predictor, dataset: AnomalyDataset, out: Path, semantic: bool = False,
                         progress: Callable[[Iterable], Iterable] = iter) -> Path:
    """Anomaly maps (and known-class labels with ``semantic``) of every sample; returns the
    scores folder."""
    scores_dir = Path(out) / "scores"
    sem_dir = Path(out) / "semantic"
    scores_dir.mkdir(parents=True, exist_ok=True)
    if semantic:
        sem_dir.mkdir(parents=True, exist_ok=True)
    for sample in progress(dataset.samples):
        name = file_stem(sample.stem)
        score_path, sem_path = scores_dir / f"{name}.npy", sem_dir / f"{name}.npy"
        if score_path.is_file() and (not semantic or sem_path.is_file()):
            continue
        result = predictor(read_image(sample.image))
        np.save(score_path, result.anomaly.astype(np.float32))
        if semantic:
            np.save(sem_path, result.semantic.astype(np.int16))
    return scores_dir


def panoptic_id_map(dataset: PanopticDataset) -> dict:
    """How a model's classes become the dataset's categories: ``class_category_ids[c]`` for a
    known class index ``c < K`` (:attr:`PanopticDataset.class_ids`), ``unknown_category_id``
    for the model's unknown class K: the ground truth's unknown id, or
    :data:`UNKNOWN_CATEGORY_ID` for a closed-set ground truth."""
    unknown = dataset.unknown if dataset.unknown is not None else UNKNOWN_CATEGORY_ID
    return {"class_category_ids": list(dataset.class_ids), "unknown_category_id": int(unknown)}


def check_panoptic_ids(json_path: Path, dataset: PanopticDataset) -> None:
    """Refuse predictions written under another class -> category map than ``dataset``'s
    (an EvaluationInputError naming the file); a file that records none is accepted."""
    from m2a_pipe.evaluation.inputs import EvaluationInputError

    try:
        recorded = json.loads(Path(json_path).read_text())
    except (OSError, ValueError):
        return
    want = panoptic_id_map(dataset)
    for key, value in want.items():
        if key in recorded and recorded[key] != value:
            raise EvaluationInputError(f"{json_path}: written with {key} {recorded[key]}, this ground truth needs "
                                       f"{value}; delete it or choose another --output")


def write_panoptic(predictor, dataset: PanopticDataset, out: Path,
                   progress: Callable[[Iterable], Iterable] = iter) -> tuple[Path, Path]:
    """Open-set panoptic predictions in COCO format.

    The model's class index ``c < K`` becomes ``dataset.class_ids[c]`` and its unknown class K
    (:func:`m2a_pipe.inference.panoptic.open_set_panoptic`) becomes the ground truth's unknown
    id (:func:`panoptic_id_map`), so the two line up; a class of the dataset's unknown split
    also becomes the unknown id (a model that still names a removed class is credited as
    having found an unknown object; an open-set model never does). The map is recorded in
    ``panoptic.json``. Raises EvaluationInputError when the model's K is not the number of
    ``class_ids``. Returns (json path, png folder).
    """
    from m2a_pipe.evaluation.inputs import EvaluationInputError

    id_map = panoptic_id_map(dataset)
    class_ids, unknown = id_map["class_category_ids"], id_map["unknown_category_id"]
    k = getattr(getattr(predictor, "config", None), "num_classes", None)
    if k is not None and k != len(class_ids):
        raise EvaluationInputError(f"{dataset.source}: the model has K = {k} known classes, the ground truth "
                                   f"{len(class_ids)} categories besides the unknown one")
    png_dir = Path(out) / "panoptic"
    png_dir.mkdir(parents=True, exist_ok=True)
    json_path = Path(out) / "panoptic.json"
    known = dataset.things | dataset.stuff
    annotations = json.loads(json_path.read_text())["annotations"] if json_path.is_file() else []
    done = {Path(a["file_name"]).stem for a in annotations}
    for image in progress(dataset.images):
        if image.stem in done and (png_dir / f"{image.stem}.png").is_file():
            continue
        if image.image is None:
            raise FileNotFoundError(f"{image.png}: no image path for {image.stem}")
        result = predictor(read_image(image.image))
        ids, info = predictor.panoptic(result)
        segments = []
        for seg in info:
            c = int(seg["category_id"])
            cat = class_ids[c] if c < len(class_ids) else unknown
            segments.append({"id": int(seg["id"]), "category_id": cat if cat in known else unknown,
                             "isthing": bool(seg.get("isthing", True))})
        write_panoptic_png(png_dir / f"{image.stem}.png", ids)
        annotations.append({"file_name": f"{image.stem}.png", "segments_info": segments})
        with written_atomically(json_path) as tmp:
            tmp.write_text(json.dumps({"annotations": annotations} | id_map))
    return json_path, png_dir
