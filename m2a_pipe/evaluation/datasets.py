"""Readers for the benchmark layouts, and THE place where dataset labels are mapped.

Every anomaly label is mapped to ``0`` normal / ``1`` anomaly / ``255`` void by the lookup
tables of :data:`ANOMALY_LABEL_MAPS`; a raw value the table does not list is an error naming the
file (never silently kept). The mapping is chosen by the *layout* found on disk, not by a
substring of the path.

=====================  ===================================  ===============================
mapping                raw values                           source layout
=====================  ===================================  ===============================
``binary``             0 -> 0, 1 -> 1, 255 -> 255           ``--labels DIR``, SMIYC
                                                            ``labels_masks``, Fishyscapes
                                                            and Lost & Found as distributed
                                                            for evaluation (``images/`` +
                                                            ``labels_masks/``)
``road-anomaly``       0 -> 0, 1 and 2 -> 1, 255 -> 255     Road Anomaly (anomaly is 2 in
                                                            the original masks)
``lost-and-found``     0 -> 255 (unlabeled), 1 -> 0 (free   raw Lost & Found
                       road), 2..200 -> 1 (obstacles),      ``gtCoarse/*_labelIds.png``
                       255 -> 255
``streethazards``      1..13 -> 0, 14 -> 1, 0/255 -> 255    StreetHazards ``annotations``
=====================  ===================================  ===============================

Where the official Mask2Anomaly script differs: it skips every image without an anomaly pixel
(their false positives then never count -- here they are evaluated), and it applies the raw
Lost & Found remap to any mask whose *path* contains ``LostAndFound``, so masks already in
0/1/255 form get their road turned into void and their anomalies into road; here the raw remap
is applied only to raw ``gtCoarse`` label-id files.

StreetHazards open-set labels (:data:`STREETHAZARDS_SEMANTIC`): raw 2..13 -> known classes
0..11 (building ... traffic sign), 14 -> 12 (unknown), 1 (unlabeled) and others -> 255.

COCO panoptic (:func:`read_coco_panoptic`): the unknown category is the one the JSON declares
(name or supercategory ``unknown`` / ``anomaly``, as the synthetic world's category 19
``anomaly``, isthing 1), or one named by id, or the one an open-set split makes: the known
thing classes removed cumulatively for 5 / 10 / 20 % unknown classes (Sec. 7.1) are
:data:`COCO_UNKNOWN_SPLITS`, and their ground-truth segments are relabelled to
:data:`UNKNOWN_CATEGORY_ID`. Whatever its ``isthing``, the unknown category is never among the
known ``things`` / ``stuff``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from m2a_pipe.errors import M2AError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
UNKNOWN_CATEGORY_ID = 1000
UNKNOWN_NAMES = ("unknown", "anomaly")


class DatasetError(M2AError):
    """Bad dataset input; the message starts with the file or folder concerned."""


def _table(pairs: dict[range | int, int]) -> np.ndarray:
    lut = np.full(1 << 16, -1, dtype=np.int16)
    for raw, value in pairs.items():
        if isinstance(raw, range):
            lut[raw.start:raw.stop] = value
        else:
            lut[raw] = value
    return lut


ANOMALY_LABEL_MAPS: dict[str, np.ndarray] = {
    "binary": _table({0: 0, 1: 1, 255: 255}),
    "road-anomaly": _table({0: 0, 1: 1, 2: 1, 255: 255}),
    "lost-and-found": _table({0: 255, 1: 0, range(2, 201): 1, 255: 255}),
    "streethazards": _table({0: 255, range(1, 14): 0, 14: 1, 255: 255}),
}
STREETHAZARDS_SEMANTIC = _table({0: 255, 1: 255, **{raw: raw - 2 for raw in range(2, 14)}, 14: 12, 255: 255})
STREETHAZARDS_NUM_KNOWN = 12

COCO_UNKNOWN_SPLITS: dict[int, tuple[str, ...]] = {
    5: ("car", "cow", "pizza", "toilet"),
    10: ("car", "cow", "pizza", "toilet", "boat", "tie", "zebra", "stop sign"),
    20: ("car", "cow", "pizza", "toilet", "boat", "tie", "zebra", "stop sign", "dining table",
         "banana", "bicycle", "cake", "sink", "cat", "keyboard", "bear"),
}


def map_labels(raw: np.ndarray, lut: np.ndarray, path: Path | str) -> np.ndarray:
    """Apply a lookup table; raw values it does not list raise :class:`DatasetError`.
    Args: raw (H, W) integer label image. Returns (H, W) uint8."""
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise DatasetError(f"{path}: label must be a single-channel image, got shape {raw.shape}")
    if raw.dtype.kind not in "ui" or (raw.size and (raw.min() < 0 or raw.max() >= len(lut))):
        raise DatasetError(f"{path}: label values must be integers in 0..65535")
    out = lut[raw]
    if (out < 0).any():
        bad = np.unique(raw[out < 0])[:8].tolist()
        raise DatasetError(f"{path}: label values {bad} are not in this dataset's label map")
    return out.astype(np.uint8)


def read_label(path: Path, mapping: str = "binary") -> np.ndarray:
    """Read a label PNG and map it with ``ANOMALY_LABEL_MAPS[mapping]`` -> (H, W) uint8."""
    try:
        with Image.open(path) as im:
            raw = np.array(im)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read label image ({err})") from None
    return map_labels(raw, ANOMALY_LABEL_MAPS[mapping], path)


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read image ({err})") from None


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: ``stem`` (unique name), ``image`` and ``label`` paths, the
    label ``mapping`` name and an optional ``subset`` (e.g. StreetHazards t5 / t6)."""

    stem: str
    image: Path
    label: Path
    mapping: str
    subset: str = ""


@dataclass(frozen=True)
class AnomalyDataset:
    name: str
    root: Path
    samples: tuple[Sample, ...]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _masks_layout(root: Path, mapping: str, name: str) -> AnomalyDataset:
    """``images/<stem>.<ext>`` + ``labels_masks/<stem>.png`` or ``<stem>_labels_semantic.png``."""
    samples = []
    for image in _images(root / "images"):
        rel = image.relative_to(root / "images").with_suffix("")
        candidates = [root / "labels_masks" / f"{rel}.png", root / "labels_masks" / f"{rel}_labels_semantic.png"]
        label = next((c for c in candidates if c.is_file()), None)
        if label is None:
            raise DatasetError(f"{image}: no label in {root / 'labels_masks'} "
                               f"(looked for {candidates[0].name} and {candidates[1].name})")
        samples.append(Sample(str(rel), image, label, mapping))
    return AnomalyDataset(name, root, tuple(samples))


def read_smiyc(root: Path) -> AnomalyDataset:
    """SMIYC RoadAnomaly21 / RoadObstacle21: ``images/`` + ``labels_masks/`` (0 / 1 / 255)."""
    return _masks_layout(Path(root), "binary", "smiyc")


def read_fishyscapes(root: Path) -> AnomalyDataset:
    """Fishyscapes Static / Lost & Found as distributed for evaluation: ``images/`` +
    ``labels_masks/`` (0 in-distribution, 1 anomaly, 255 void)."""
    return _masks_layout(Path(root), "binary", "fishyscapes")


def read_road_anomaly(root: Path) -> AnomalyDataset:
    """Road Anomaly: ``images/`` + ``labels_masks/`` or the original ``frames/<x>.jpg`` +
    ``frames/<x>.labels/labels_semantic.png`` (anomaly = 2 or 1)."""
    root = Path(root)
    if (root / "images").is_dir():
        return _masks_layout(root, "road-anomaly", "road-anomaly")
    samples = []
    for image in sorted(p for p in (root / "frames").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label = image.with_suffix(".labels") / "labels_semantic.png"
        if not label.is_file():
            raise DatasetError(f"{image}: no label at {label}")
        samples.append(Sample(image.stem, image, label, "road-anomaly"))
    return AnomalyDataset("road-anomaly", root, tuple(samples))


def read_lost_and_found(root: Path, split: str = "test") -> AnomalyDataset:
    """Lost & Found: raw ``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` +
    ``gtCoarse/<split>/<city>/<x>_gtCoarse_labelIds.png`` (raw label ids, remapped), or the
    ``images/`` + ``labels_masks/`` evaluation layout (already 0 / 1 / 255)."""
    root = Path(root)
    if (root / "images").is_dir():
        return _masks_layout(root, "binary", "lost-and-found")
    samples = []
    for image in _images(root / "leftImg8bit" / split):
        base = image.name.replace("_leftImg8bit", "").rsplit(".", 1)[0]
        label = root / "gtCoarse" / split / image.parent.name / f"{base}_gtCoarse_labelIds.png"
        if not label.is_file():
            raise DatasetError(f"{image}: no label at {label}")
        samples.append(Sample(f"{image.parent.name}/{base}", image, label, "lost-and-found"))
    return AnomalyDataset("lost-and-found", root, tuple(samples))


def read_streethazards(root: Path) -> AnomalyDataset:
    """StreetHazards test: ``images/test/<t5|t6>/<x>.png`` + ``annotations/test/<t5|t6>/<x>.png``
    (under ``root`` or ``root/test``); ``subset`` is the t5 / t6 folder."""
    root = Path(root)
    base = root / "test" if (root / "test" / "images").is_dir() else root
    samples = []
    for image in _images(base / "images"):
        rel = image.relative_to(base / "images")
        label = base / "annotations" / rel
        if not label.is_file():
            raise DatasetError(f"{image}: no label at {label}")
        samples.append(Sample(str(rel.with_suffix("")), image, label, "streethazards", image.parent.name))
    return AnomalyDataset("streethazards", root, tuple(samples))


READERS = {"smiyc": read_smiyc, "fishyscapes": read_fishyscapes, "road-anomaly": read_road_anomaly,
           "lost-and-found": read_lost_and_found, "streethazards": read_streethazards}


def detect_dataset(root: Path) -> AnomalyDataset:
    """Pick the reader from the layout: ``images``+``labels_masks`` (0/1/255), ``frames``
    (Road Anomaly), ``gtCoarse`` (Lost & Found), ``annotations`` (StreetHazards)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if (root / "labels_masks").is_dir():
        return _masks_layout(root, "binary", root.name)
    if (root / "frames").is_dir():
        return read_road_anomaly(root)
    if (root / "gtCoarse").is_dir():
        return read_lost_and_found(root)
    if (root / "annotations").is_dir() or (root / "test" / "annotations").is_dir():
        return read_streethazards(root)
    raise DatasetError(f"{root}: unknown dataset layout (expected images/ + labels_masks/, frames/, "
                       "gtCoarse/ or annotations/)")


# --------------------------------------------------------------------------------------
# COCO panoptic
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanopticImage:
    """One annotated image: ``stem``, ``image`` path, ``png`` segment map path, ``segments``."""

    stem: str
    image: Path | None
    png: Path
    segments: tuple[dict, ...]


@dataclass(frozen=True)
class PanopticDataset:
    """COCO-format panoptic annotations.

    ``things`` / ``stuff``: the *known* category ids by ``isthing``; ``unknown``: the unknown
    category id (None: closed set), never in ``things`` or ``stuff``; ``unknown_isthing``: its
    ``isthing`` (panopticapi's convention counts it there); ``unknown_source``: how it was
    chosen; ``names`` id -> name; ``class_ids``: the category of a model's class index ``c``
    (the JSON's categories in order without the unknown one, so a model's K, its unknown,
    is the next index); ``source``: the JSON file.
    """

    images: tuple[PanopticImage, ...]
    things: frozenset[int]
    stuff: frozenset[int]
    unknown: int | None
    names: dict[int, str]
    unknown_isthing: bool = True
    unknown_source: str = ""
    class_ids: tuple[int, ...] = ()
    source: Path | None = None


def read_panoptic_png(path: Path) -> np.ndarray:
    """COCO panoptic PNG -> (H, W) int64 ids ``R + 256 G + 256^2 B``."""
    try:
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"), dtype=np.int64)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read panoptic PNG ({err})") from None
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def write_panoptic_png(path: Path, ids: np.ndarray) -> None:
    """(H, W) ids < 2**24 -> COCO panoptic RGB PNG."""
    ids = np.asarray(ids, dtype=np.int64)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def declared_unknown(categories: list[dict]) -> list[int]:
    """Ids of the categories a dataset declares as its unknown one: ``name`` or
    ``supercategory`` in :data:`UNKNOWN_NAMES` (case-insensitive), e.g. the synthetic world's
    ``{"id": 19, "name": "anomaly", "isthing": 1, "supercategory": "anomaly"}``."""
    return [int(c["id"]) for c in categories
            if str(c.get("name", "")).lower() in UNKNOWN_NAMES
            or str(c.get("supercategory", "")).lower() in UNKNOWN_NAMES]


def _choose_unknown(json_path: Path, categories: list[dict], unknown_id: int | str | None,
                    unknown_percent: int | None) -> tuple[int | None, str]:
    """The ground truth category that is the unknown one, and how it was chosen."""
    ids = [int(c["id"]) for c in categories]
    if unknown_percent is not None:
        if unknown_id not in (None, "auto"):
            raise DatasetError(f"{json_path}: an unknown split and --unknown-id exclude each other")
        declared = declared_unknown(categories)
        if declared:
            raise DatasetError(f"{json_path}: already declares unknown category {declared[0]}; an unknown split "
                               "needs a closed-set ground truth")
        if UNKNOWN_CATEGORY_ID in ids:
            raise DatasetError(f"{json_path}: category id {UNKNOWN_CATEGORY_ID} is taken, so the split's "
                               "unknown category cannot have it")
        return UNKNOWN_CATEGORY_ID, f"--unknown-split {unknown_percent}"
    if unknown_id is None:
        return None, ""
    if unknown_id == "auto":
        declared = declared_unknown(categories)
        if len(declared) > 1:
            raise DatasetError(f"{json_path}: categories {declared} all look like the unknown one; "
                               "choose one with --unknown-id")
        if not declared:
            return None, ""
        return declared[0], f"declared by the dataset (name or supercategory in {list(UNKNOWN_NAMES)})"
    if int(unknown_id) not in ids:
        raise DatasetError(f"{json_path}: --unknown-id {unknown_id} is not one of its category ids {sorted(ids)}")
    return int(unknown_id), "--unknown-id"


def read_coco_panoptic(json_path: Path, png_dir: Path, image_dir: Path | None = None,
                       unknown_percent: int | None = None, unknown_id: int | str | None = "auto") -> PanopticDataset:
    """Read a COCO panoptic JSON + PNG folder and choose its unknown category.

    ``unknown_id``: ``"auto"`` -- the category the JSON declares as unknown
    (:func:`declared_unknown`), else none; an int -- that category of the JSON; None -- none
    (closed set). With ``unknown_percent`` in 5 / 10 / 20 the split's classes (Sec. 7.1)
    leave the known sets and their segments become :data:`UNKNOWN_CATEGORY_ID` (a thing).
    The unknown category leaves ``things`` / ``stuff`` whatever its ``isthing``.
    """
    json_path, png_dir = Path(json_path), Path(png_dir)
    try:
        data = json.loads(json_path.read_text())
        cat_list = list(data["categories"])
        cats = {int(c["id"]): c for c in cat_list}
        annotations = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{json_path}: not a COCO panoptic JSON ({err})") from None
    names = {cid: str(c.get("name", cid)) for cid, c in cats.items()}
    removed: set[int] = set()
    if unknown_percent is not None:
        if unknown_percent not in COCO_UNKNOWN_SPLITS:
            raise DatasetError(f"{json_path}: unknown split must be one of {sorted(COCO_UNKNOWN_SPLITS)}")
        by_name = {n: cid for cid, n in names.items()}
        missing = [n for n in COCO_UNKNOWN_SPLITS[unknown_percent] if n not in by_name]
        if missing:
            raise DatasetError(f"{json_path}: categories {missing} of the {unknown_percent}% split are missing")
        removed = {by_name[n] for n in COCO_UNKNOWN_SPLITS[unknown_percent]}
    unknown, how = _choose_unknown(json_path, cat_list, unknown_id, unknown_percent)
    file_names = {int(im["id"]): im.get("file_name") for im in data.get("images", [])} if "images" in data else {}
    images = []
    for ann in annotations:
        segs = []
        for seg in ann["segments_info"]:
            seg = dict(seg)
            if int(seg["category_id"]) in removed:
                seg["category_id"] = UNKNOWN_CATEGORY_ID
            segs.append(seg)
        png = png_dir / ann["file_name"]
        image = None
        if image_dir is not None:
            name = file_names.get(int(ann.get("image_id", -1))) or Path(ann["file_name"]).with_suffix(".jpg").name
            image = Path(image_dir) / name
        images.append(PanopticImage(Path(ann["file_name"]).stem, image, png, tuple(segs)))
    out = removed | {unknown}
    things = frozenset(c for c, v in cats.items() if v.get("isthing", 0) == 1 and c not in out)
    stuff = frozenset(c for c, v in cats.items() if v.get("isthing", 0) != 1 and c not in out)
    if unknown_percent is not None:
        names[UNKNOWN_CATEGORY_ID] = "unknown"
    unknown_isthing = unknown not in cats or cats[unknown].get("isthing", 0) == 1
    class_ids = tuple(int(c["id"]) for c in cat_list if int(c["id"]) != unknown)
    return PanopticDataset(tuple(images), things, stuff, unknown, names, unknown_isthing, how, class_ids, json_path)
