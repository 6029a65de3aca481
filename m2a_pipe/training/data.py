"""Training datasets and outlier sources, read lazily from disk.

Datasets (each: ``len``, ``load(i) -> TrainSample``, ``class_names``):

* :class:`SemanticFolder` -- the synthetic world / SMIYC-style layout
  ``images/<stem>.png``, ``semantic/<stem>.png`` (train ids, 255 void) and optionally
  ``labels_masks/<stem>.png`` (0/1/255: its anomalies become outlier pixels in stage 2);
* :class:`CityscapesSemantic` -- ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``;
* :class:`StreetHazardsSemantic` -- ``[train/]images/training/**.png`` with
  ``annotations/training/**.png`` (raw ids mapped by the evaluation's table; 12 known classes);
* :class:`CocoPanoptic` -- COCO panoptic JSON + PNGs; with ``unknown_percent`` (5/10/20) the
  paper's unknown classes (Sec. 7.1) are removed: their segments become void.

Outlier sources (each: ``len``, ``cutout(i) -> (rgb (h, w, 3) uint8, mask (h, w) bool)``):

* :class:`OutlierFolder` -- ``outliers/<k>.png`` RGBA cut-outs (alpha = object mask);
* :class:`CocoInstanceOutliers` -- COCO instance annotations (polygons / RLE), a fixed random
  subset of ``count`` objects (300 in the paper).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from m2a_pipe.config import CITYSCAPES_CLASSES
from m2a_pipe.evaluation.datasets import (
    COCO_UNKNOWN_SPLITS,
    STREETHAZARDS_NUM_KNOWN,
    STREETHAZARDS_SEMANTIC,
    DatasetError,
    read_image,
    read_panoptic_png,
)

IGNORE = 255
STREETHAZARDS_CLASSES = ("building", "fence", "other", "pedestrian", "pole", "road line", "road",
                         "sidewalk", "vegetation", "car", "wall", "traffic sign")
COCO_DRIVING_CLASSES = ("person", "bicycle", "car", "motorcycle", "bus", "train", "truck",
                        "traffic light", "stop sign")
"""COCO categories that are known classes on the road; never used as outliers."""


@dataclass
class TrainSample:
    """One training image: ``image`` (H, W, 3) uint8 RGB and either ``semantic`` (H, W) uint8
    class ids (255 void) or ``segments`` (H, W) int32 segment ids with ``segment_classes``
    {segment id: class}; ``ood`` (H, W) uint8 0/1/255 when the image has labelled outliers."""

    image: np.ndarray
    semantic: np.ndarray | None = None
    segments: np.ndarray | None = None
    segment_classes: dict[int, int] = field(default_factory=dict)
    ood: np.ndarray | None = None


def read_gray(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read label ({err})") from None


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


class SemanticFolder:
    """``images/`` + ``semantic/`` (+ optional ``labels_masks/``) with matching stems."""

    def __init__(self, root: str | Path, class_names: tuple[str, ...] = CITYSCAPES_CLASSES) -> None:
        self.root = Path(root)
        self.class_names = tuple(class_names)
        self.images = _pngs(self.root / "images")
        if not self.images:
            raise DatasetError(f"{self.root}: no images under images/")
        for image in self.images:
            if not self._semantic(image).is_file():
                raise DatasetError(f"{image}: no semantic label at {self._semantic(image)}")

    def _rel(self, image: Path) -> Path:
        return image.relative_to(self.root / "images").with_suffix(".png")

    def _semantic(self, image: Path) -> Path:
        return self.root / "semantic" / self._rel(image)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> TrainSample:
        image = self.images[i]
        semantic = read_gray(self._semantic(image)).astype(np.uint8)
        ood_path = self.root / "labels_masks" / self._rel(image)
        ood = read_gray(ood_path).astype(np.uint8) if ood_path.is_file() else None
        return TrainSample(read_image(image), semantic=semantic, ood=ood)


class CityscapesSemantic:
    """Cityscapes fine annotations in train ids (``createTrainIdLabelImgs`` output)."""

    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = Path(root)
        self.pairs = []
        for image in _pngs(self.root / "leftImg8bit" / split):
            rel = image.relative_to(self.root / "leftImg8bit" / split)
            label = (self.root / "gtFine" / split / rel.parent
                     / image.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png"))
            if not label.is_file():
                raise DatasetError(f"{image}: no train-id label at {label}")
            self.pairs.append((image, label))
        if not self.pairs:
            raise DatasetError(f"{self.root}: no images under leftImg8bit/{split}")

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> TrainSample:
        image, label = self.pairs[i]
        return TrainSample(read_image(image), semantic=read_gray(label).astype(np.uint8))


class StreetHazardsSemantic:
    """StreetHazards training split; raw labels mapped to 12 known classes (rest void)."""

    class_names = STREETHAZARDS_CLASSES

    def __init__(self, root: str | Path, split: str = "training") -> None:
        root = Path(root)
        self.base = root / "train" if (root / "train" / "images").is_dir() else root
        self.pairs = []
        for image in _pngs(self.base / "images" / split):
            label = self.base / "annotations" / image.relative_to(self.base / "images")
            if not label.is_file():
                raise DatasetError(f"{image}: no label at {label}")
            self.pairs.append((image, label))
        if not self.pairs:
            raise DatasetError(f"{root}: no images under images/{split}")
        self.lut = STREETHAZARDS_SEMANTIC.copy()
        self.lut[self.lut >= STREETHAZARDS_NUM_KNOWN] = IGNORE  # the anomaly class never trains

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> TrainSample:
        image, label = self.pairs[i]
        raw = read_gray(label)
        sem = self.lut[raw]
        if (sem < 0).any():
            raise DatasetError(f"{label}: values {np.unique(raw[sem < 0])[:8].tolist()} not in the StreetHazards map")
        return TrainSample(read_image(image), semantic=sem.astype(np.uint8))


class CocoPanoptic:
    """COCO panoptic training set: one target mask per segment (instances of things, one
    region per stuff class). Known categories get contiguous ids in category-id order;
    with ``unknown_percent`` the split's categories (Sec. 7.1) are dropped and their
    segments become void."""

    def __init__(self, json_path: str | Path, png_dir: str | Path, image_dir: str | Path,
                 unknown_percent: int | None = None) -> None:
        json_path = Path(json_path)
        try:
            data = json.loads(json_path.read_text())
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        except (OSError, ValueError, KeyError) as err:
            raise DatasetError(f"{json_path}: not a COCO panoptic JSON ({err})") from None
        removed: set[str] = set()
        if unknown_percent is not None:
            if unknown_percent not in COCO_UNKNOWN_SPLITS:
                raise DatasetError(f"unknown split must be one of {sorted(COCO_UNKNOWN_SPLITS)}")
            removed = set(COCO_UNKNOWN_SPLITS[unknown_percent])
        known = [c for c in cats if c["name"] not in removed]
        self.class_names = tuple(str(c["name"]) for c in known)
        self.thing_ids = tuple(i for i, c in enumerate(known) if c.get("isthing", 0) == 1)
        self.contiguous = {int(c["id"]): i for i, c in enumerate(known)}
        files = {int(im["id"]): im["file_name"] for im in data.get("images", [])}
        self.items = []
        for ann in data["annotations"]:
            name = files.get(int(ann.get("image_id", -1))) or Path(ann["file_name"]).with_suffix(".jpg").name
            self.items.append((Path(image_dir) / name, Path(png_dir) / ann["file_name"], ann["segments_info"]))

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> TrainSample:
        image, png, segments = self.items[i]
        ids = read_panoptic_png(png).astype(np.int32)
        classes = {int(s["id"]): self.contiguous[int(s["category_id"])] for s in segments
                   if int(s["category_id"]) in self.contiguous and not s.get("iscrowd", 0)}
        return TrainSample(read_image(image), segments=ids, segment_classes=classes)


# --------------------------------------------------------------------------------------
# Outlier sources
# --------------------------------------------------------------------------------------


def crop_to_mask(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop an RGB image and its object mask to the mask's bounding box."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise DatasetError("outlier cut-out has an empty mask")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return np.ascontiguousarray(rgb[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1])


class OutlierFolder:
    """RGBA PNG cut-outs; the object is where alpha >= 128."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.paths = sorted(p for p in self.folder.glob("*.png"))
        if not self.paths:
            raise DatasetError(f"{self.folder}: no outlier PNGs")

    def __len__(self) -> int:
        return len(self.paths)

    def cutout(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.paths[i]
        with Image.open(path) as im:
            rgba = np.array(im.convert("RGBA"))
        return crop_to_mask(rgba[..., :3], rgba[..., 3] >= 128)


def rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed RLE string (6-bit chunks, delta-coded) into run lengths."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_segmentation(segm, h: int, w: int) -> np.ndarray:
    """COCO instance segmentation (polygons, RLE with list or string counts) -> (h, w) bool."""
    if isinstance(segm, list):
        im = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(im)
        for poly in segm:
            if len(poly) >= 6:
                draw.polygon([float(v) for v in poly], fill=1)
        return np.asarray(im, dtype=bool)
    counts = segm["counts"]
    if isinstance(counts, str):
        counts = rle_counts_from_string(counts)
    h, w = segm.get("size", (h, w))
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in counts:
        flat[pos:pos + run] = value
        pos += run
        value = not value
    return flat.reshape(w, h).T  # column-major


class CocoInstanceOutliers:
    """Outlier objects cut from COCO instance annotations (``instances_*.json``).

    A fixed subset of ``count`` annotations (area >= ``min_area``, not crowd, not a
    driving class) is drawn with ``seed``; :meth:`cutout` decodes one on demand."""

    def __init__(self, json_path: str | Path, image_dir: str | Path, count: int = 300, seed: int = 0,
                 min_area: float = 1000.0, exclude: tuple[str, ...] = COCO_DRIVING_CLASSES) -> None:
        json_path = Path(json_path)
        try:
            data = json.loads(json_path.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"{json_path}: not a COCO instances JSON ({err})") from None
        excluded = {int(c["id"]) for c in data.get("categories", []) if c.get("name") in set(exclude)}
        images = {int(im["id"]): im for im in data["images"]}
        pool = [a for a in data["annotations"] if not a.get("iscrowd", 0)
                and float(a.get("area", 0)) >= min_area and int(a["category_id"]) not in excluded]
        if not pool:
            raise DatasetError(f"{json_path}: no usable instance annotations")
        order = np.random.default_rng(seed).permutation(len(pool))[:count]
        self.items = [(Path(image_dir) / images[int(pool[j]["image_id"])]["file_name"],
                       images[int(pool[j]["image_id"])], pool[j]) for j in sorted(order)]

    def __len__(self) -> int:
        return len(self.items)

    def cutout(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path, info, ann = self.items[i]
        rgb = read_image(path)
        mask = decode_segmentation(ann["segmentation"], int(info["height"]), int(info["width"]))
        return crop_to_mask(rgb, mask)


# --------------------------------------------------------------------------------------
# Factories used by recipes
# --------------------------------------------------------------------------------------


def build_dataset(spec: dict, root: str | Path | None = None):
    """A dataset from a recipe entry ``{"type": ..., "root": ..., ...}``; ``root`` overrides."""
    kind = spec.get("type", "folder")
    base = Path(root or spec.get("root", "."))
    if kind in ("folder", "synth"):
        return SemanticFolder(base)
    if kind == "cityscapes":
        return CityscapesSemantic(base, spec.get("split", "train"))
    if kind == "streethazards":
        return StreetHazardsSemantic(base, spec.get("split", "training"))
    if kind == "coco_panoptic":
        return CocoPanoptic(base / spec.get("json", "annotations/panoptic_train2017.json"),
                            base / spec.get("png_dir", "annotations/panoptic_train2017"),
                            base / spec.get("image_dir", "train2017"), spec.get("unknown_percent"))
    raise DatasetError(f"unknown dataset type {kind!r} (folder, synth, cityscapes, streethazards, coco_panoptic)")


def build_outliers(spec: dict | None, data_root: str | Path | None = None):
    """An outlier source from a recipe entry (``folder``: default ``<data>/outliers``;
    ``coco``: ``json`` + ``image_dir``), or None."""
    if not spec:
        return None
    kind = spec.get("type", "folder")
    if kind == "folder":
        folder = spec.get("root") or (Path(data_root) / "outliers" if data_root else None)
        if folder is None:
            raise DatasetError("outlier folder not given")
        return OutlierFolder(folder)
    if kind == "coco":
        return CocoInstanceOutliers(spec["json"], spec["image_dir"], spec.get("count", 300),
                                    spec.get("seed", 0), spec.get("min_area", 1000.0))
    raise DatasetError(f"unknown outlier source type {kind!r} (folder, coco)")
