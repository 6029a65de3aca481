"""Writers of still-image datasets (SMIYC layout + semantic + COCO panoptic) and of the
AnomalyMix outlier source.

Image dataset ``DIR/`` (``stem = synth_<seed>_<index:06d>``)::

    images/<stem>.png        RGB uint8
    labels_masks/<stem>.png  uint8 0 normal, 1 anomaly, 255 void (the ego bonnet)
    semantic/<stem>.png      uint8 Cityscapes train ids, 255 = void or anomaly
    panoptic/<stem>.png      COCO panoptic RGB, id = R + 256 G + 256^2 B, 0 = void
    panoptic.json            COCO panoptic: images, annotations (segments_info), categories
                             (train ids 0..18 + 19 "anomaly", isthing 1)
    meta.json                generator, version, seed, count, anomalies, size, classes, stems, ...

Outlier source ``DIR/``: ``outliers/<k:06d>.png`` RGBA cut-outs (alpha 255 on the object,
0 elsewhere) of single ``train``-family anomalies rendered on an empty road, and
``outliers_meta.json`` (generator / pattern per file).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from m2a_pipe._version import __version__
from m2a_pipe.config import CITYSCAPES_CLASSES, CITYSCAPES_THING_IDS
from m2a_pipe.errors import UsageError
from m2a_pipe.synth.anomalies import FAMILY_CODES
from m2a_pipe.synth.geometry import ANOMALY
from m2a_pipe.synth.objects import USED_TRAIN_IDS
from m2a_pipe.synth.render import render
from m2a_pipe.synth.sample import ANOMALY_OPTIONS, parse_size, render_sample
from m2a_pipe.synth.scene import add_anomalies, sample_world, still_pose

FORMAT_VERSION = 1
GENERATOR = "m2a-pipe synth"
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def stem_for(seed: int, index: int) -> str:
    return f"synth_{seed}_{index:06d}"


def panoptic_categories() -> list[dict]:
    cats = [{"id": i, "name": name, "isthing": int(i in CITYSCAPES_THING_IDS), "supercategory": "cityscapes"}
            for i, name in enumerate(CITYSCAPES_CLASSES)]
    return cats + [{"id": ANOMALY, "name": "anomaly", "isthing": 1, "supercategory": "anomaly"}]


def _panoptic_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), array, _PNG):
        raise OSError(f"{path}: cannot write PNG")


def _write_one(job: tuple) -> dict:
    out, seed, index, size, anomalies = job
    out = Path(out)
    sample = render_sample(seed, index, size, anomalies)
    stem = stem_for(seed, index)
    ids, infos = sample.panoptic()
    extra = {s["label"] * 1000 + s["id"]: s for s in sample.segments if s["label"] == ANOMALY}
    for info in infos:
        if info["id"] in extra:
            seg = extra[info["id"]]
            info.update(family=seg["family"], generator=seg["generator"], pattern=seg["pattern"])
    _write_png(out / "images" / f"{stem}.png", sample.image)
    _write_png(out / "labels_masks" / f"{stem}.png", sample.labels_mask)
    _write_png(out / "semantic" / f"{stem}.png", sample.semantic)
    _write_png(out / "panoptic" / f"{stem}.png", _panoptic_rgb(ids))
    return {"index": index, "stem": stem, "segments_info": infos,
            "anomaly_pixels": int(sample.anomaly_mask.sum())}


def _run(fn: Callable, jobs: list, workers: int, progress: Callable[[int], None] | None):
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            res = fn(job)
            if progress:
                progress(1)
            yield res
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers) as pool:
        for res in pool.imap(fn, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))):
            if progress:
                progress(1)
            yield res


def _prepare(out: Path, subdirs: tuple[str, ...], overwrite: bool, files: tuple[str, ...] = ()) -> None:
    """Create the sub-folders; refuse (unless ``overwrite``) when any of them or of ``files``
    already holds data, so outliers can be written into an existing dataset folder."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    taken = [sub for sub in subdirs if (out / sub).is_dir() and any((out / sub).iterdir())]
    taken += [name for name in files if (out / name).exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{out}: already holds {', '.join(taken)} (use --overwrite to write into it)")
    for sub in subdirs:
        (out / sub).mkdir(parents=True, exist_ok=True)


def write_image_dataset(out_dir, seed: int, count: int, anomalies: str = "eval", size=(512, 256), *,
                        workers: int = 1, start: int = 0, overwrite: bool = False,
                        progress: Callable[[int], None] | None = None) -> dict:
    """Write ``count`` stills (indices ``start..start+count-1``) of dataset ``seed``; returns meta."""
    if anomalies not in ANOMALY_OPTIONS:
        raise UsageError(f"anomalies must be one of {ANOMALY_OPTIONS}, got {anomalies!r}")
    if count < 1:
        raise UsageError(f"count must be >= 1, got {count}")
    width, height = parse_size(size)
    out = Path(out_dir)
    _prepare(out, ("images", "labels_masks", "semantic", "panoptic"), overwrite,
             ("meta.json", "panoptic.json"))
    jobs = [(str(out), int(seed), i, (width, height), anomalies) for i in range(start, start + count)]
    results = sorted(_run(_write_one, jobs, workers, progress), key=lambda r: r["index"])
    panoptic = {
        "info": {"description": f"{GENERATOR} seed {seed}, anomalies {anomalies}", "version": FORMAT_VERSION},
        "images": [{"id": r["index"], "file_name": f"{r['stem']}.png", "width": width, "height": height}
                   for r in results],
        "annotations": [{"file_name": f"{r['stem']}.png", "image_id": r["index"], "segments_info": r["segments_info"]}
                        for r in results],
        "categories": panoptic_categories(),
    }
    (out / "panoptic.json").write_text(json.dumps(panoptic))
    meta = {
        "generator": GENERATOR, "version": FORMAT_VERSION, "package_version": __version__,
        "seed": int(seed), "count": count, "start": start, "anomalies": anomalies, "size": [width, height],
        "classes": list(CITYSCAPES_CLASSES), "present_train_ids": list(USED_TRAIN_IDS),
        "anomaly_category_id": ANOMALY, "void": 255,
        "labels_masks": {"0": "normal", "1": "anomaly", "255": "void"},
        "stems": [r["stem"] for r in results],
        "anomaly_pixels": [r["anomaly_pixels"] for r in results],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


# -- outlier source --------------------------------------------------------------------

OUTLIER_RENDER_SIZE = (384, 192)


def render_outlier(seed: int, index: int, family: str = "train") -> tuple[np.ndarray, dict]:
    """One anomaly on an empty road, cropped to its mask -> ((h, w, 4) RGBA uint8, info)."""
    width, height = OUTLIER_RENDER_SIZE
    for attempt in range(8):
        scene_rng = np.random.default_rng([seed, index, 10, attempt])
        world = sample_world(scene_rng, None, "none")
        world.objects, world.hood = [], 0.0
        pose = still_pose(scene_rng, world)
        add_anomalies(world, np.random.default_rng([seed, index, 11, FAMILY_CODES[family], attempt]), family,
                      count=1, s_range=(3.5, 7.0))
        frame = render(world, pose, width, height, tex_rng=np.random.default_rng([seed, index, 12]))
        mask = frame.label == ANOMALY
        if mask.sum() >= 64:
            break
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.dstack([frame.image[y0:y1, x0:x1], (mask[y0:y1, x0:x1] * 255).astype(np.uint8)])
    seg = next(s for s in frame.segments if s["label"] == ANOMALY)
    return rgba, {"family": seg["family"], "generator": seg["generator"], "pattern": seg["pattern"]}


def _write_outlier(job: tuple) -> dict:
    out, seed, k, family = job
    rgba, info = render_outlier(seed, k, family)
    name = f"{k:06d}.png"
    _write_png(Path(out) / "outliers" / name, rgba)
    return {"k": k, "file": name, **info, "height": int(rgba.shape[0]), "width": int(rgba.shape[1])}


OUTLIER_FAMILIES = ("train", "train_ext")


def write_outliers(out_dir, seed: int, count: int, *, family: str = "train", workers: int = 1,
                   overwrite: bool = False, progress: Callable[[int], None] | None = None) -> dict:
    """Write ``count`` RGBA cut-outs of ``family`` (``train`` or ``train_ext``) to ``out_dir/outliers/``."""
    if count < 1:
        raise UsageError(f"count must be >= 1, got {count}")
    if family not in OUTLIER_FAMILIES:
        raise UsageError(f"the outlier source is a training family {OUTLIER_FAMILIES}, got {family!r}")
    out = Path(out_dir)
    _prepare(out, ("outliers",), overwrite, ("outliers_meta.json",))
    jobs = [(str(out), int(seed), k, family) for k in range(count)]
    results = sorted(_run(_write_outlier, jobs, workers, progress), key=lambda r: r["k"])
    meta = {"generator": GENERATOR, "version": FORMAT_VERSION, "seed": int(seed), "count": count,
            "family": family, "files": results}
    (out / "outliers_meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
