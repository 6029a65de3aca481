"""One labelled still image, fully determined by ``(seed, index, size, anomalies)``.

Random streams (numpy ``default_rng`` with a seed sequence): the scene is drawn from
``[seed, index, 0]``, the anomalies from ``[seed, index, 1, family code, attempt]`` and the
material noise placement from ``[seed, index, 2]``. So the same seed and index give the same street
with any anomaly family (or none), and samples can be made in any order, in parallel.

Label conventions (the SMIYC-layout writer in dataset.py stores exactly these arrays):

* ``semantic``: Cityscapes train ids (objects.USED_TRAIN_IDS), 255 on void *and* anomaly pixels;
* ``anomaly_mask``: 1 on anomaly pixels, else 0;
* ``labels_mask`` (SMIYC): 1 anomaly, 255 void (semantic 255 and not anomaly: the ego bonnet),
  else 0;
* ``instances``: > 0 on every thing (train ids 11..18) and anomaly pixel, unique per object and
  class; 0 elsewhere;
* ``panoptic``: COCO ids; stuff segment id = train id + 1, thing / anomaly segment id =
  category * 1000 + instance number; 0 void. Anomalies are category 19.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from m2a_pipe.errors import UsageError
from m2a_pipe.synth.anomalies import FAMILY_CODES
from m2a_pipe.synth.geometry import ANOMALY, VOID
from m2a_pipe.synth.objects import THING_IDS
from m2a_pipe.synth.render import render
from m2a_pipe.synth.scene import add_anomalies, sample_world, still_pose

ANOMALY_CATEGORY = ANOMALY
ANOMALY_OPTIONS = ("none", "train", "eval", "hard")
MIN_ANOMALY_AREA_FRAC = {"train": 0.0005, "eval": 0.0005, "hard": 0.00015}
"""A still is re-drawn (new anomaly placement, same street) until one anomaly covers this
fraction of the image (65 px, or 20 px for ``hard``, at 512x256), at most ``MAX_ATTEMPTS``
times (then the attempt with the largest anomaly is kept)."""
MAX_ATTEMPTS = 10


def _largest_anomaly(frame) -> int:
    ids = frame.instances[frame.label == ANOMALY]
    return int(np.bincount(ids).max()) if ids.size else 0


@dataclass
class Sample:
    """A rendered, labelled still. Arrays are (H, W); ``image`` (H, W, 3) uint8 RGB."""

    image: np.ndarray
    semantic: np.ndarray  # uint8 train ids, 255 void / anomaly
    instances: np.ndarray  # int32, 0 = none
    anomaly_mask: np.ndarray  # uint8 0 / 1
    label: np.ndarray  # uint8 train ids with 19 = anomaly and 255 = void
    segments: list[dict] = field(default_factory=list)  # one per visible instance (see segment_info)
    seed: int = 0
    index: int = 0
    anomalies: str = "none"

    @property
    def labels_mask(self) -> np.ndarray:
        """SMIYC ``labels_masks`` values: 0 normal, 1 anomaly, 255 void."""
        out = np.where(self.semantic == VOID, np.uint8(VOID), np.uint8(0))
        out[self.anomaly_mask == 1] = 1
        return out

    def panoptic(self) -> tuple[np.ndarray, list[dict]]:
        """(H, W) int64 COCO panoptic ids and the matching ``segments_info`` list (sorted by id)."""
        lab = self.label.astype(np.int64)
        ids = np.where(self.instances > 0, lab * 1000 + self.instances, lab + 1)
        ids[lab > ANOMALY] = 0
        uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        boxes = ndimage.find_objects(inverse.reshape(ids.shape) + 1)
        infos = []
        for k, (sid, area) in enumerate(zip(uniq.tolist(), counts.tolist())):
            if sid == 0:
                continue
            ys, xs = boxes[k]
            cat = sid - 1 if sid < 1000 else sid // 1000
            infos.append({"id": sid, "category_id": cat, "iscrowd": 0, "area": area,
                          "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start]})
        return ids, infos


def parse_size(size) -> tuple[int, int]:
    """``"512x256"`` or ``(512, 256)`` -> (width, height); both even and >= 64."""
    if isinstance(size, str):
        try:
            w, h = (int(p) for p in size.lower().split("x"))
        except ValueError:
            raise UsageError(f"size must look like 512x256, got {size!r}") from None
    else:
        w, h = (int(p) for p in size)
    if w < 64 or h < 64 or w % 2 or h % 2 or w > 8192 or h > 8192:
        raise UsageError(f"size {w}x{h}: width and height must be even, between 64 and 8192")
    return w, h


def render_sample(seed: int, index: int, size=(512, 256), anomalies: str = "eval") -> Sample:
    """Render still ``index`` of dataset ``seed`` with anomalies of a family (or ``"none"``)."""
    if anomalies not in ANOMALY_OPTIONS:
        raise UsageError(f"anomalies must be one of {ANOMALY_OPTIONS}, got {anomalies!r}")
    width, height = parse_size(size)
    scene_rng = np.random.default_rng([seed, index, 0])
    world = sample_world(scene_rng, None, "none")
    pose = still_pose(scene_rng, world)
    min_area = MIN_ANOMALY_AREA_FRAC.get(anomalies, 0.0) * width * height
    best = None
    for attempt in range(MAX_ATTEMPTS if anomalies != "none" else 1):
        if anomalies != "none":
            add_anomalies(world, np.random.default_rng([seed, index, 1, FAMILY_CODES[anomalies], attempt]), anomalies)
        frame = render(world, pose, width, height, tex_rng=np.random.default_rng([seed, index, 2]))
        area = _largest_anomaly(frame)
        if best is None or area > best[0]:
            best = (area, frame)
        if anomalies == "none" or area >= min_area:
            break
    frame = best[1]
    label, inst = frame.label, frame.instances
    anomaly = (label == ANOMALY).astype(np.uint8)
    semantic = np.where(label >= ANOMALY, np.uint8(VOID), label).astype(np.uint8)
    if frame.segments and len(frame.segments) >= 1000:
        raise RuntimeError("more than 999 instances in one image: panoptic ids would collide")
    present = set(np.unique(inst[inst > 0]).tolist())
    segments = [s for s in frame.segments if s["id"] in present]
    for s in segments:
        assert s["label"] in THING_IDS or s["label"] == ANOMALY
    return Sample(frame.image, semantic, inst, anomaly, label, segments, int(seed), int(index), anomalies)
