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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from m2a_pipe.config import ModelConfig
from m2a_pipe.inference.panoptic import UnknownInstance, background_region, mine_unknown_instances
from m2a_pipe.inference.preprocess import normalize_and_pad, resize_uint8, shortest_edge_size
from m2a_pipe.inference.scoring import grid_anomaly, semantic_probs
from m2a_pipe.model.mask2anomaly import Mask2Anomaly
from m2a_pipe.settings import BOUNDED_SCORES, MAP_STRIDES, MASK_STRIDE, SCORE_NAMES


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


def map_size(input_size: tuple[int, int], map_stride: int) -> tuple[int, int]:
    """(h, w) of the maps for an unpadded network input of ``input_size``."""
    return -(-input_size[0] // map_stride), -(-input_size[1] // map_stride)


def prepare_frame(image: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame -> (h, w, 3) uint8 at the network input size (Pillow bilinear,
    bit-exact with the official resize). Host-side; runs in the reader thread."""
    return np.ascontiguousarray(resize_uint8(image, input_size))


class ModelStage:
    """A network replica with the scoring that turns its outputs into maps.

    Args:
        model: the network; moved to ``device`` and prepared for inference.
        device: torch device.
        score: one of :data:`SCORE_NAMES`.
        flip: average the maps of the image and its mirror image (official evaluation TTA).
        map_stride: 4 (mask resolution, default), 2 or 1 (full input resolution).
        autocast: run the network under float16 autocast on CUDA (ignored on CPU).
        mine_unknown: also mine unknown instances (open-set panoptic, Sec. 6.3) with at
            least ``min_area_fraction`` of the map's pixels.
    """

    def __init__(self, model: Mask2Anomaly, device: str | torch.device = "cpu", *, score: str = "official",
                 flip: bool = False, map_stride: int = MASK_STRIDE, autocast: bool = True,
                 mine_unknown: bool = False, min_area_fraction: float = 0.0) -> None:
        if score not in SCORE_NAMES:
            raise ValueError(f"unknown score {score!r}; known: {', '.join(SCORE_NAMES)}")
        if map_stride not in MAP_STRIDES:
            raise ValueError(f"map_stride must be one of {MAP_STRIDES}, got {map_stride}")
        self.device = torch.device(device)
        self.model = model.to(self.device).prepare_for_inference(channels_last=True)
        self.config: ModelConfig = model.config
        self.score, self.flip, self.map_stride = score, flip, map_stride
        self.autocast = autocast and self.device.type == "cuda"
        self.mine_unknown, self.min_area_fraction = mine_unknown, min_area_fraction

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> list[FrameMaps]:
        """Maps of a batch of frames already at the network input size.

        Args:
            images: B arrays (h, w, 3) uint8 RGB of one size (see :func:`prepare_frame`).
        Returns: B :class:`FrameMaps`, each (ceil(h / map_stride), ceil(w / map_stride)).
        """
        if not images:
            return []
        size = images[0].shape[:2]
        if any(im.shape[:2] != size for im in images):
            raise ValueError("a batch must hold frames of one size")
        x = torch.from_numpy(np.stack(images)).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        logits, masks = self._forward(x)
        anomaly, semantic = self._maps(logits, masks, size)
        if self.flip:
            logits_lr, masks_lr = self._forward(x.flip(-1))
            anomaly_lr, _ = self._maps(logits_lr, masks_lr, size, semantic=False)
            anomaly = (anomaly + anomaly_lr.flip(-1)) / 2
        unknown = self._unknown(logits, masks, size) if self.mine_unknown else [None] * len(images)
        anomaly = anomaly.float().cpu().numpy()
        semantic = semantic.to(torch.uint8).cpu().numpy()
        return [FrameMaps(anomaly=anomaly[i], semantic=semantic[i], unknown=unknown[i]) for i in range(len(images))]

    def map_batches(self, batches: Iterable[list[tuple]]) -> Iterator[tuple[list[tuple], list[FrameMaps]]]:
        """(batch, maps) for each batch of (index, pts, image) frames, one at a time in this
        process (the local runner's model; see :func:`m2a_pipe.pipeline.local.run_job`)."""
        for batch in batches:
            yield batch, self([frame[-1] for frame in batch])

    def _unknown(self, logits: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> list[list[UnknownInstance]]:
        """Unknown instances of each image (Eq. 15 background, Sec. 6.3 mining) at the map resolution."""
        up = MASK_STRIDE // self.map_stride
        if up > 1:
            masks = F.interpolate(masks, scale_factor=up, mode="bilinear", align_corners=False)
        h, w = map_size(size, self.map_stride)
        masks = masks[..., :h, :w].cpu()
        logits = logits.cpu()
        min_area = max(1, int(round(self.min_area_fraction * h * w)))
        return [mine_unknown_instances(background_region(logits[i], masks[i]), logits[i], masks[i],
                                       self.config.thing_ids, min_area=min_area) for i in range(len(logits))]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, h, w) uint8 -> class logits (B, Q, K+1) and mask logits (B, Q, Hp/4, Wp/4), float32."""
        pre = self.config.preprocess
        x = normalize_and_pad(x, pre.pixel_mean, pre.pixel_std, pre.size_divisibility)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
            out = self.model(x)
        return out["pred_logits"].float(), out["pred_masks"].float()

    def _maps(self, logits: torch.Tensor, masks: torch.Tensor, size: tuple[int, int],
              semantic: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Anomaly (B, h', w') and semantic labels (B, h', w') at the map resolution, padding cropped."""
        up = MASK_STRIDE // self.map_stride
        if up > 1:
            masks = F.interpolate(masks, scale_factor=up, mode="bilinear", align_corners=False)
        h, w = map_size(size, self.map_stride)
        masks = masks[..., :h, :w]
        sem = semantic_probs(logits, masks) if (semantic or self.score in BOUNDED_SCORES) else None
        anomaly = grid_anomaly(self.score, logits, masks, self.config.refine_ids, self.config.keep_threshold, sem)
        labels = sem.argmax(dim=-3) if semantic else None
        return anomaly, labels
