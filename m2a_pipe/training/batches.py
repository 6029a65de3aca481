"""The training stream as a function of the step number.

Batch ``n`` is fully determined by (seed, n): sample positions ``n*B .. n*B+B-1`` of an
endless sequence of epochs, each epoch a permutation of the dataset drawn from
(seed, epoch); each sample augmented with a generator drawn from (seed, epoch, index);
the AnomalyMix decision and objects from (seed, n) -- or, with the official per-image
placement, from (seed, epoch, index) before the augmentation. So resuming at step n needs no saved
loader state, and worker processes may build batches in any order.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from m2a_pipe.training.anomaly_mix import AnomalyMixConfig, is_outlier_batch, paste_native, paste_outlier
from m2a_pipe.training.augment import PAD_RGB, AugmentConfig, augment, pad_to, rng_for

IGNORE = 255
_ORDER, _SAMPLE, _MIX = 1, 2, 3  # generator streams


def semantic_targets(semantic: np.ndarray, num_classes: int) -> dict[str, torch.Tensor]:
    """One binary mask per class present (255 and ids >= K are void) with its label.
    Returns ``labels`` (T,) int64 and ``masks`` (T, H, W) bool."""
    classes = [int(c) for c in np.unique(semantic) if c < num_classes]
    masks = np.stack([semantic == c for c in classes]) if classes else np.zeros((0,) + semantic.shape, bool)
    return {"labels": torch.tensor(classes, dtype=torch.int64), "masks": torch.from_numpy(masks)}


def segment_targets(segments: np.ndarray, classes: dict[int, int]) -> dict[str, torch.Tensor]:
    """One mask per labelled segment still visible after cropping (panoptic training)."""
    present = set(np.unique(segments).tolist())
    ids = [s for s in sorted(classes) if s in present]
    masks = np.stack([segments == s for s in ids]) if ids else np.zeros((0,) + segments.shape, bool)
    return {"labels": torch.tensor([classes[s] for s in ids], dtype=torch.int64),
            "masks": torch.from_numpy(masks)}


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``n`` is the whole batch of step ``n``.

    Args:
        dataset: a training dataset (:mod:`m2a_pipe.training.data`).
        num_classes: K of the model.
        batch_size, seed: the stream.
        augment_cfg: :class:`AugmentConfig`.
        size_divisibility: batches are padded to their largest image, rounded up to a multiple
            of it (mean colour / void).
        outliers: an outlier source for AnomalyMix (stage 2), or None.
        mix_cfg: :class:`AnomalyMixConfig`.
        num_steps: length of the stream.

    Item: dict with ``images`` (B, 3, H, W) uint8, ``targets`` (B dicts: ``labels``,
    ``masks`` (T, H, W) bool), ``ood`` (B, H, W) uint8 0/1/255 (255 on the padding),
    ``image_sizes`` (B, 2) int64 (h, w) of each image before padding, ``outlier_batch`` bool
    (some image received an outlier), ``step`` int.
    """

    def __init__(self, dataset, num_classes: int, batch_size: int, seed: int,
                 augment_cfg: AugmentConfig, size_divisibility: int = 32, outliers=None,
                 mix_cfg: AnomalyMixConfig | None = None, num_steps: int = 1 << 40) -> None:
        if len(dataset) == 0:
            raise ValueError("empty training dataset")
        self.dataset = dataset
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.seed = seed
        self.augment_cfg = augment_cfg
        self.size_divisibility = size_divisibility
        self.outliers = outliers
        self.mix_cfg = mix_cfg or AnomalyMixConfig()
        self.num_steps = num_steps

    def __len__(self) -> int:
        return self.num_steps

    @lru_cache(maxsize=4)
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of dataset indices of ``epoch``."""
        return rng_for(self.seed, _ORDER, epoch).permutation(len(self.dataset))

    def positions(self, step: int) -> list[tuple[int, int]]:
        """(epoch, dataset index) of each sample of batch ``step``."""
        n = len(self.dataset)
        out = []
        for p in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch = p // n
            out.append((epoch, int(self.epoch_order(epoch)[p % n])))
        return out

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, int], bool]:
        """Augmented sample: image, label maps (``semantic`` or ``segments``, ``ood``), classes,
        and whether an outlier was pasted into it (per-image placement)."""
        s = self.dataset.load(index)
        labels: dict[str, np.ndarray] = {}
        if s.semantic is not None:
            labels["semantic"] = s.semantic
        else:
            labels["segments"] = s.segments
        labels["ood"] = s.ood if s.ood is not None else np.zeros(s.image.shape[:2], np.uint8)
        image, mixed = s.image, False
        if self.outliers is not None and len(self.outliers) and self.mix_cfg.placement == "image":
            rng = rng_for(self.seed, _MIX, epoch, index)
            if rng.random() < self.mix_cfg.probability:
                image = image.copy()
                labels = {k: v.copy() for k, v in labels.items()}
                rgb, mask = self.outliers.cutout(int(rng.integers(len(self.outliers))))
                paste_native(image, {k: v for k, v in labels.items() if k != "ood"}, labels["ood"],
                             rgb, mask, rng, label_void={"segments": 0})
                mixed = True
        image, labels = augment(image, labels, rng_for(self.seed, _SAMPLE, epoch, index),
                                self.augment_cfg, label_pad={"segments": 0})
        return image, labels, s.segment_classes, mixed

    def __getitem__(self, step: int) -> dict:
        step = int(step)
        samples = [self.sample(e, i) for e, i in self.positions(step)]
        outlier_batch = any(mixed for *_, mixed in samples)
        if self.outliers is not None and len(self.outliers) and self.mix_cfg.placement == "batch":
            rng = rng_for(self.seed, _MIX, step)
            outlier_batch = is_outlier_batch(rng, self.mix_cfg)
            if outlier_batch:
                for image, labels, _, _ in samples:
                    for _ in range(self.mix_cfg.objects_per_image):
                        rgb, mask = self.outliers.cutout(int(rng.integers(len(self.outliers))))
                        label_maps = {k: v for k, v in labels.items() if k != "ood"}
                        paste_outlier(image, label_maps, labels["ood"], rgb, mask, rng, self.mix_cfg,
                                      label_void={"segments": 0})
        d = self.size_divisibility
        sizes = [image.shape[:2] for image, *_ in samples]
        h, w = max(hw[0] for hw in sizes), max(hw[1] for hw in sizes)
        size = (-(-h // d) * d, -(-w // d) * d) if d > 1 else (h, w)
        images, targets, oods = [], [], []
        for image, labels, classes, _ in samples:
            images.append(pad_to(image, size, PAD_RGB))
            oods.append(pad_to(labels["ood"], size, IGNORE))
            if "semantic" in labels:
                targets.append(semantic_targets(pad_to(labels["semantic"], size, IGNORE), self.num_classes))
            else:
                targets.append(segment_targets(pad_to(labels["segments"], size, 0), classes))
        return {"images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                "targets": targets, "ood": torch.from_numpy(np.stack(oods)),
                "image_sizes": torch.tensor(sizes, dtype=torch.int64),
                "outlier_batch": outlier_batch, "step": step}
