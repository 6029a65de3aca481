"""Precomputed score maps paired with label masks, validated one image at a time.

Score sources:

* a folder of ``<stem>.npy`` files, each an (H, W) float map (higher = more anomalous);
* an HDF5 file written by the pipeline (``scores.h5``, contract of the ``process`` issue):
  ``/maps/anomaly`` (N, h, w) and ``/frames/index`` (N,) frame numbers. Stored values are
  multiplied by the dataset's ``scale`` attribute when present (the quantisation step of an
  integer map: score = stored x scale). A map stored at a reduced resolution is resized
  bilinearly to its label's size when the two have the same aspect ratio (to a pixel).
  Labels are ``<frame index>.png`` (any zero padding); frames without a label are not
  evaluated.

Every problem raises :class:`EvaluationInputError` whose message starts with the file and
says what is wrong: a stem without its pair, a size mismatch, label values outside
0 / 1 / 255 (or the dataset's map), non-finite (NaN) scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m2a_pipe.errors import M2AError
from m2a_pipe.evaluation.datasets import DatasetError, read_label


class EvaluationInputError(M2AError):
    """Bad evaluation input; the message names the file and the reason."""


@dataclass(frozen=True)
class ScorePair:
    """One evaluation item: ``stem``, a loader of the (H, W) float32 scores, the label path,
    the label mapping name and its ``subset`` (e.g. t5 / t6)."""

    stem: str
    load_scores: Callable[[], np.ndarray]
    label: Path
    mapping: str = "binary"
    subset: str = ""
    source: str = ""

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Validated (scores (H, W) float32, labels (H, W) uint8 in {0, 1, 255})."""
        try:
            labels = read_label(self.label, self.mapping)
        except DatasetError as err:
            raise EvaluationInputError(str(err)) from None
        scores = self.load_scores()
        if scores.shape != labels.shape:
            raise EvaluationInputError(f"{self.source}: scores {scores.shape[0]}x{scores.shape[1]} do not "
                                       f"match label {self.label.name} {labels.shape[0]}x{labels.shape[1]}")
        if not np.isfinite(scores[labels != 255]).all():
            raise EvaluationInputError(f"{self.source}: scores contain NaN or infinite values")
        return scores, labels


def load_npy_scores(path: Path) -> np.ndarray:
    """(H, W) float32 from ``path``; errors name the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise EvaluationInputError(f"{path}: cannot read scores ({err})") from None
    if arr.ndim == 3 and arr.shape[0] == 1:  # (1, H, W) as some writers save it
        arr = arr[0]
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise EvaluationInputError(f"{path}: scores must be an (H, W) numeric array, got {arr.shape} {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _stems(folder: Path, suffix: str) -> dict[str, Path]:
    return {p.name[: -len(suffix)]: p for p in sorted(folder.glob(f"*{suffix}")) if p.is_file()}


def pair_npy_folder(scores_dir: Path, labels_dir: Path, mapping: str = "binary") -> list[ScorePair]:
    """Pair ``scores_dir/<stem>.npy`` with ``labels_dir/<stem>.png``; a stem on one side only
    is an error naming it."""
    scores_dir, labels_dir = Path(scores_dir), Path(labels_dir)
    for folder in (scores_dir, labels_dir):
        if not folder.is_dir():
            raise EvaluationInputError(f"{folder}: not a folder")
    scores, labels = _stems(scores_dir, ".npy"), _stems(labels_dir, ".png")
    if not scores:
        raise EvaluationInputError(f"{scores_dir}: no .npy score maps")
    for stem, path in scores.items():
        if stem not in labels:
            raise EvaluationInputError(f"{path}: no label {stem}.png in {labels_dir}")
    for stem, path in labels.items():
        if stem not in scores:
            raise EvaluationInputError(f"{path}: no scores {stem}.npy in {scores_dir}")
    return [ScorePair(stem, (lambda p=scores[stem]: load_npy_scores(p)), labels[stem], mapping,
                      source=str(scores[stem])) for stem in sorted(scores)]


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


class H5Scores:
    """Read anomaly maps from a pipeline ``scores.h5`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            self._maps = self._file["maps/anomaly"]
            index = np.asarray(self._file["frames/index"][()]).astype(np.int64).ravel()
        except (OSError, KeyError) as err:
            raise EvaluationInputError(f"{self.path}: not a pipeline scores file with /maps/anomaly "
                                       f"and /frames/index ({err})") from None
        if self._maps.ndim != 3 or len(index) != self._maps.shape[0]:
            raise EvaluationInputError(f"{self.path}: /maps/anomaly {self._maps.shape} does not match "
                                       f"/frames/index ({len(index)} frames)")
        scale = self._maps.attrs.get("scale")
        self.scale = None if scale is None else np.float32(scale)
        self.row_of_frame = {int(f): i for i, f in enumerate(index)}

    def load(self, frame: int, label_size: tuple[int, int]) -> np.ndarray:
        """(H, W) float32 map of ``frame``, de-quantised, resized to ``label_size`` when it is
        a reduced-resolution map of the same aspect ratio (otherwise left for the size check)."""
        arr = np.asarray(self._maps[self.row_of_frame[frame]]).astype(np.float32)
        if self.scale is not None:
            arr *= self.scale
        (h, w), (lh, lw) = arr.shape, label_size
        if (h, w) != (lh, lw) and abs(h * lw - w * lh) <= max(lw, lh):
            arr = _resize(arr, label_size)
        return arr


def pair_h5(h5_path: Path, labels_dir: Path, mapping: str = "binary") -> list[ScorePair]:
    """Pair the frames of a pipeline ``scores.h5`` with ``labels_dir/<frame>.png``; a label
    whose frame is not in the file is an error naming it."""
    from PIL import Image

    source = H5Scores(h5_path)
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise EvaluationInputError(f"{labels_dir}: not a folder")
    pairs = []
    for stem, path in _stems(labels_dir, ".png").items():
        try:
            frame = int(stem)
        except ValueError:
            raise EvaluationInputError(f"{path}: label names must be frame numbers to pair with "
                                       f"{source.path}") from None
        if frame not in source.row_of_frame:
            raise EvaluationInputError(f"{path}: frame {frame} is not in {source.path}")

        def load(frame=frame, path=path):
            with Image.open(path) as im:
                size = (im.height, im.width)
            return source.load(frame, size)

        pairs.append(ScorePair(stem, load, path, mapping, source=f"{source.path}[frame {frame}]"))
    if not pairs:
        raise EvaluationInputError(f"{labels_dir}: no .png labels")
    return pairs


def score_pairs(scores: Path, labels: Path, mapping: str = "binary") -> list[ScorePair]:
    """Pairs from a ``.npy`` folder or a pipeline ``.h5`` file."""
    scores = Path(scores)
    if scores.is_file() and scores.suffix.lower() in (".h5", ".hdf5"):
        return pair_h5(scores, labels, mapping)
    if not scores.exists():
        raise EvaluationInputError(f"{scores}: does not exist")
    return pair_npy_folder(scores, labels, mapping)


def iterate(pairs: list[ScorePair]) -> Iterator[tuple[ScorePair, np.ndarray, np.ndarray]]:
    """Yield (pair, scores, labels), loading one image at a time."""
    for pair in pairs:
        scores, labels = pair.load()
        yield pair, scores, labels
