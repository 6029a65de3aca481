"""The model stage: resized RGB frames in, small per-frame maps out.

This is the only stage that runs on the accelerator, and the unit both runners replicate:
the local runner holds one :class:`ModelStage`, each Ray inference actor holds another.
Its output is deliberately small (maps at 1/``map_stride`` of the network input, a few
hundred kB a frame) so it crosses threads and processes cheaply.

Maps are computed at the resolution of the mask logits (1/4 of the padded input) by default,
as the design brief asks ("everything after the model works on 1/4-resolution maps"):

* ``score="official"``: Eq. 5 refined by Eq. 13 with the official rule (the refinement
  applies when at least two confident queries of the refinement classes exist), evaluated at
  the map resolution by :func:`m2a_pipe.inference.scoring.refinement_mask`;
* ``score="msp"``: Eq. 5 alone; ``rba``, ``max_logit``, ``energy``, ``entropy``: the
  follow-up scores of :data:`m2a_pipe.inference.scoring.SCORES`.

``map_stride=1`` upsamples the mask logits to the full network input first (the official
evaluation's resolution, 16x the work of the post-processing).

The forward pass, its precision and the flip averaging are the
:class:`~m2a_pipe.inference.forward.ForwardCore` that the Predictor runs too, and the maps
are :func:`~m2a_pipe.inference.forward.grid_maps`: ``Predictor(map_stride=4)`` (or 2)
reports exactly these maps, upsampled to the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from m2a_pipe.inference.forward import ForwardCore, UsesForwardCore, check_map_stride, grid_maps, map_masks, map_size
from m2a_pipe.inference.panoptic import UnknownInstance, background_region, mine_unknown_instances
from m2a_pipe.inference.preprocess import resize_uint8, shortest_edge_size
from m2a_pipe.model.mask2anomaly import Mask2Anomaly
from m2a_pipe.settings import DEFAULT_PRECISION, MASK_STRIDE, SCORE_NAMES

__all__ = ["FrameMaps", "ModelStage", "map_size", "network_input_size", "prepare_frame"]


@dataclass(frozen=True)
class FrameMaps:
    """Model-stage output for one frame.

    anomaly: (h, w) float32, higher = more anomalous, at 1/``map_stride`` of the input size.
    semantic: (h, w) uint8, argmax of Eq. 3 over the K known classes.
    unknown: the unknown instances mined from the background region (Eq. 15, Sec. 6.3) at
        the map resolution, when the stage runs with ``mine_unknown=True``; else None.
    """

    anomaly: np.ndarray
    semantic: np.ndarray
    unknown: list[UnknownInstance] | None = None


def network_input_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """(h, w) the network sees for a (height, width) frame: the short side resized to
    ``short_side`` (long side at most ``max_size``), as the official test-time resize."""
    return shortest_edge_size(height, width, short_side, max_size)


def prepare_frame(image: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame -> (h, w, 3) uint8 at the network input size (Pillow bilinear,
    bit-exact with the official resize). Host-side; runs in the reader thread."""
    return np.ascontiguousarray(resize_uint8(image, input_size))



class ModelStage(UsesForwardCore):
    """A network replica with the scoring that turns its outputs into maps.

    The network runs in a :class:`~m2a_pipe.inference.forward.ForwardCore` (the Predictor's
    too), the maps are :func:`~m2a_pipe.inference.forward.grid_maps`.

    Args:
        model: the network; moved to ``device`` and prepared for inference.
        device: torch device.
        score: one of :data:`SCORE_NAMES`.
        flip: average the maps of the image and its mirror image (official evaluation TTA).
        map_stride: 4 (mask resolution, default), 2 or 1 (full input resolution).
        precision: ``auto`` (:func:`~m2a_pipe.inference.forward.precision_for`: float16
            autocast on CUDA, bfloat16 on a CPU with bfloat16 matrix instructions, float32
            elsewhere), ``fp32``, ``bf16`` or ``fp16``.
        mine_unknown: also mine unknown instances (open-set panoptic, Sec. 6.3) with at
            least ``min_area_fraction`` of the map's pixels.
    """

    def __init__(self, model: Mask2Anomaly, device: str | torch.device = "cpu", *, score: str = "official",
                 flip: bool = False, map_stride: int = MASK_STRIDE,
                 precision: str = DEFAULT_PRECISION,
                 mine_unknown: bool = False, min_area_fraction: float = 0.0) -> None:
        if score not in SCORE_NAMES:
            raise ValueError(f"unknown score {score!r}; known: {', '.join(SCORE_NAMES)}")
        self.map_stride = check_map_stride(map_stride)
        self.core = ForwardCore(model, device, precision=precision)
        self.score, self.flip = score, flip
        self.mine_unknown, self.min_area_fraction = mine_unknown, min_area_fraction

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> list[FrameMaps]:
        """Maps of a batch of frames already at the network input size.

        Args:
            images: B arrays (h, w, 3) uint8 RGB of one size (see :func:`prepare_frame`).
        Returns: B :class:`FrameMaps`, each (ceil(h / map_stride), ceil(w / map_stride)):
            anomaly float32, semantic uint8.
        """
        if not images:
            return []
        size = images[0].shape[:2]
        if any(im.shape[:2] != size for im in images):
            raise ValueError("a batch must hold frames of one size")
        x = self.core.batch(images)
        logits, masks = self.core(x)
        anomaly, semantic = self._maps(logits, masks, size)
        if self.flip:
            anomaly = self.core.average_with_mirror(
                anomaly, x.flip(-1), lambda lo, ma: self._maps(lo, ma, size, semantic=False)[0])
        unknown = self._unknown(logits, masks, size) if self.mine_unknown else [None] * len(images)
        anomaly = anomaly.float().cpu().numpy()
        semantic = semantic.to(torch.uint8).cpu().numpy()
        return [FrameMaps(anomaly=anomaly[i], semantic=semantic[i], unknown=unknown[i]) for i in range(len(images))]

    def map_batches(self, batches: Iterable[list[tuple]]) -> Iterator[tuple[list[tuple], list[FrameMaps]]]:
        """(batch, maps) for each batch of (index, pts, image) frames, one at a time in this
        process (the local runner's model; see :func:`m2a_pipe.pipeline.local.run_job`);
        images (h, w, 3) uint8, maps as :meth:`__call__`."""
        for batch in batches:
            yield batch, self([frame[-1] for frame in batch])

    def _maps(self, logits: torch.Tensor, masks: torch.Tensor, size: tuple[int, int],
              semantic: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Anomaly (B, h', w') and semantic labels (B, h', w') at the map resolution."""
        cfg = self.config
        return grid_maps(self.score, logits, masks, size, self.map_stride, cfg.refine_ids,
                         cfg.keep_threshold, semantic=semantic)

    def _unknown(self, logits: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> list[list[UnknownInstance]]:
        """Unknown instances of each image (Eq. 15 background, Sec. 6.3 mining) at the map resolution."""
        masks = map_masks(masks, size, self.map_stride).cpu()
        logits = logits.cpu()
        h, w = masks.shape[-2:]
        min_area = max(1, int(round(self.min_area_fraction * h * w)))
        return [mine_unknown_instances(background_region(logits[i], masks[i]), logits[i], masks[i],
                                       self.config.thing_ids, min_area=min_area) for i in range(len(logits))]
