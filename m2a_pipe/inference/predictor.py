"""High-level inference: images in, anomaly / semantic / open-set maps out.

:class:`Predictor` wraps a loaded :class:`~m2a_pipe.model.mask2anomaly.Mask2Anomaly` and runs
the official test-time path of Mask2Anomaly:

1. optional resize of the short side to 1024 with Pillow's uint8 bilinear (``resize=True``,
   what the official ``DefaultPredictor`` does), normalise, pad to /32;
2. forward pass (batched when the images share a size) in the
   :class:`~m2a_pipe.inference.forward.ForwardCore` the video pipeline's model stage runs too:
   by default float16 autocast on CUDA, bfloat16 on a CPU with bfloat16 matrix instructions,
   float32 elsewhere (:func:`~m2a_pipe.inference.forward.precision_for`);
3. mask logits upsampled to the padded size, official semantic inference (Eq. 3 plus one
   channel per confident stuff query), crop the padding, resize to the image size;
4. anomaly map: Eq. 5 refined by Eq. 13 (official rule) or another score of
   :data:`m2a_pipe.inference.scoring.SCORES`; optional horizontal-flip averaging (the
   mirrored originals resized and run, their map flipped back and averaged at the image
   size). With ``map_stride`` 4 or 2 the anomaly map is instead exactly the video pipeline's
   map (:func:`~m2a_pipe.inference.forward.grid_maps`, what
   :class:`~m2a_pipe.inference.stage.ModelStage` outputs) upsampled to the image
   (:func:`~m2a_pipe.inference.forward.upsample_map`), here for image benchmarks;
5. semantic labels (argmax of Eq. 3) and, given a threshold, open-set labels (Eq. 14).

Step 3 is evaluated in bands of rows so the (Q, Hp, Wp) upsampled masks never exist at
once: each band upsamples only the mask rows it needs (the same interpolation weights as
the full upsampling; values agree to float rounding) and memory stays bounded at full HD.

Example::

    from m2a_pipe.inference import Predictor
    predictor = Predictor.from_weights("weights/demo.safetensors", device="cpu")
    result = predictor(frame_rgb_uint8)          # (H, W, 3) -> Result
    result.anomaly                               # (H, W) float32, higher = more anomalous
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from m2a_pipe.config import ModelConfig
from m2a_pipe.inference.forward import ForwardCore, UsesForwardCore, check_map_stride, grid_maps, upsample_map
from m2a_pipe.inference.panoptic import background_region, mine_unknown_instances, open_set_panoptic
from m2a_pipe.inference.preprocess import padded_size, resize_uint8, shortest_edge_size
from m2a_pipe.inference.scoring import (
    SCORES,
    crop_and_resize,
    official_anomaly_map,
    official_semantic_inference,
    open_set_semantic,
)
from m2a_pipe.model.mask2anomaly import Mask2Anomaly
from m2a_pipe.settings import DEFAULT_PRECISION, SCORE_NAMES

BAND_BYTES = 16 * 2**20
"""Size of one band of upsampled masks (Q x rows x Wp float32): about 16 MB keeps a band in
the last-level cache (measured: 0.09 s at 512x1024 with 100 queries, against 0.17 s for
the full upsampling and 0.19 s for 50 MB bands)."""


@dataclass
class Result:
    """Maps of one image, at its original size (H, W).

    anomaly: (H, W) float32, higher = more anomalous (flip-averaged when ``flip``).
    semantic: (H, W) int64 known-class labels, argmax of Eq. 3.
    open_set: (H, W) int64 labels with K = unknown (Eq. 14), when a threshold is set.
    sem_seg: (K + n_kept, H, W) float32 official semantic output (un-flipped pass).
    pred_logits: (Q, K+1) and pred_masks: (Q, Hp/4, Wp/4), float32 decoder outputs (un-flipped).
    input_size: (h, w) of the network input before padding (after the optional resize).
    """

    anomaly: np.ndarray
    semantic: np.ndarray
    open_set: np.ndarray | None
    sem_seg: torch.Tensor
    pred_logits: torch.Tensor
    pred_masks: torch.Tensor
    input_size: tuple[int, int]


def upsample_rows(masks: torch.Tensor, rows: tuple[int, int], scale: int) -> torch.Tensor:
    """Rows ``[r0, r1)`` of ``F.interpolate(masks, scale_factor=scale, bilinear,
    align_corners=False)``, computed from the few input rows they need (the same source
    rows and weights; values agree to one float32 ulp).

    Args:
        masks: (Q, h, w) mask logits.
        rows: output row range, with ``r0`` a multiple of ``scale``.
        scale: integer upsampling factor (the padded size is ``scale`` x the mask size).
    Returns:
        (Q, r1 - r0, w * scale).
    """
    r0, r1 = rows
    h = masks.shape[-2]
    first = max(r0 // scale - 1, 0)  # one row of context each side keeps the weights equal
    last = min(-(-r1 // scale) + 1, h)
    band = masks[None, :, first:last]
    up = F.interpolate(band, size=((last - first) * scale, masks.shape[-1] * scale),
                       mode="bilinear", align_corners=False)[0]
    offset = r0 - first * scale
    return up[:, offset:offset + (r1 - r0)]


def full_resolution_semantic(pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                             refine_ids: Sequence[int], keep_threshold: float,
                             band_rows: int | None = None) -> torch.Tensor:
    """Official semantic inference at the padded input size, band by band.

    Args:
        pred_logits: (Q, K+1) class logits.
        pred_masks: (Q, h, w) mask logits at 1/4 of the padded size.
    Returns:
        (K + n_kept, 4h, 4w) float32: Eq. 3 per class, then ``score * sigmoid(mask)`` of each
        confident refinement-class query (see ``official_semantic_inference``).
    ``band_rows`` defaults to what fits :data:`BAND_BYTES`.
    """
    scale = 4
    q, h, w = pred_masks.shape
    hp = h * scale
    if band_rows is None:
        band_rows = BAND_BYTES // (q * w * scale * pred_masks.element_size())
    band_rows = max(scale, band_rows - band_rows % scale)
    bands = []
    for r in range(0, hp, band_rows):
        masks = upsample_rows(pred_masks, (r, min(r + band_rows, hp)), scale)
        bands.append(official_semantic_inference(pred_logits, masks, refine_ids, keep_threshold))
    return torch.cat(bands, dim=1)


class Predictor(UsesForwardCore):
    """Run a Mask2Anomaly network on RGB uint8 images.

    Args:
        model: the network (moved to ``device``, put in inference mode, batch norm folded).
        device: torch device for the forward pass and the post-processing.
        resize: resize the short side to ``preprocess.min_size_test`` first (the official
            test-time behaviour); False runs the network at the image's own size.
        flip: average with the horizontally flipped image's map (official evaluation).
        score: ``"official"`` (Eq. 5 with the Eq. 13 refinement, exactly as the official
            evaluation) or a name of :data:`m2a_pipe.inference.scoring.SCORES` (no refinement).
        open_set_threshold: anomaly threshold for Eq. 14 open-set labels: unknown where
            ``anomaly > threshold``, as the reference open-set evaluation labels (None: skip).
        map_stride: one of :data:`m2a_pipe.settings.MAP_STRIDES`. 1: the official path (mask
            logits upsampled to the input, then scored). 4 or 2: the model stage's map at
            1/``map_stride`` of the input (:func:`~m2a_pipe.inference.forward.grid_maps`),
            upsampled to the image; with ``flip`` the two upsampled maps are averaged at the
            image size. Semantic outputs are the official ones at every stride.
        precision: ``auto`` (:func:`~m2a_pipe.inference.forward.precision_for`: float16
            autocast on CUDA, bfloat16 on a CPU with bfloat16 matrix instructions, float32
            elsewhere), ``fp32`` (exact official parity), ``bf16`` or ``fp16``.
    """

    def __init__(self, model: Mask2Anomaly, device: str | torch.device = "cpu", *,
                 resize: bool = True, flip: bool = False, score: str = "official",
                 open_set_threshold: float | None = None, map_stride: int = 1,
                 precision: str = DEFAULT_PRECISION) -> None:
        if score not in SCORE_NAMES:
            raise ValueError(f"unknown score {score!r}; known: official, {', '.join(SCORES)}")
        self.map_stride = check_map_stride(map_stride)
        self.core = ForwardCore(model, device, precision=precision)
        self.resize, self.flip, self.score = resize, flip, score
        self.open_set_threshold = open_set_threshold

    @classmethod
    def from_weights(cls, weights: str | Path = "demo", device: str | torch.device = "cpu",
                     config: ModelConfig | None = None, **kwargs) -> "Predictor":
        """Load weights by registry name or path (``.safetensors`` carry their config;
        official ``.pth`` / ``.pkl`` need ``config``)."""
        from m2a_pipe.model.loading import load_model

        return cls(load_model(weights, cfg=config), device, **kwargs)

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> Result | list[Result]:
        """One (H, W, 3) RGB uint8 image -> Result; a batch (B, H, W, 3) or a list -> list."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        for i, image in enumerate(batch):
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
                    and image.ndim == 3 and image.shape[2] == 3):
                raise ValueError(f"image {i}: expected an (H, W, 3) uint8 RGB array, got "
                                 f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image))}")
        results = self.predict(batch)
        return results[0] if single else results

    def _network_input(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
        """B (H, W, 3) uint8 images of one size -> ((B, 3, h, w) uint8 on the device, (h, w)),
        resized with Pillow when ``resize`` (the official test-time resize)."""
        pre = self.config.preprocess
        h, w = images[0].shape[:2]
        size = shortest_edge_size(h, w, pre.min_size_test, pre.max_size_test) if self.resize else (h, w)
        return self.core.batch([resize_uint8(im, size) for im in images]), size

    @torch.inference_mode()
    def forward(self, images: Sequence[np.ndarray]) -> dict:
        """Preprocess and run the network on (H, W, 3) uint8 images of one size.

        Returns a dict with ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, Hp/4, Wp/4),
        float32, and ``input_size`` (h, w), the network input size before padding.
        """
        x, size = self._network_input(images)
        out = self.core(x)
        return {"pred_logits": out.pred_logits, "pred_masks": out.pred_masks, "input_size": size}

    @torch.inference_mode()
    def sem_seg(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
        """Official semantic output of one image from its (Q, K+1) logits and (Q, Hp/4, Wp/4)
        mask logits: (K + n_kept, H, W) float32 at ``output_size`` (Eq. 3 plus the Eq. 13
        channels, see :func:`full_resolution_semantic`)."""
        cfg = self.config
        sem = full_resolution_semantic(pred_logits, pred_masks, cfg.refine_ids, cfg.keep_threshold)
        return crop_and_resize(sem, input_size, output_size)

    @torch.inference_mode()
    def anomaly_map(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                    input_size: tuple[int, int], output_size: tuple[int, int],
                    sem: torch.Tensor | None = None) -> torch.Tensor:
        """(H, W) float32 anomaly map of one image from its (Q, K+1) logits and (Q, Hp/4, Wp/4)
        mask logits (score per ``self.score``, resolution per ``self.map_stride``); ``sem`` is
        its :meth:`sem_seg` when the caller has it (official score at stride 1)."""
        if self.map_stride > 1:
            return self._grid_anomaly(pred_logits[None], pred_masks[None], input_size, output_size)[0]
        if self.score == "official":
            if sem is None:
                sem = self.sem_seg(pred_logits, pred_masks, input_size, output_size)
            return official_anomaly_map(sem, self.config.num_classes)  # Eq. 5 refined by Eq. 13
        hp, wp = padded_size(*input_size, self.config.preprocess.size_divisibility)
        masks = F.interpolate(pred_masks[None], size=(hp, wp), mode="bilinear", align_corners=False)
        score = SCORES[self.score](pred_logits[None], masks)
        return crop_and_resize(score, input_size, output_size)[0]

    def _grid_anomaly(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                      input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
        """(B, Q, K+1), (B, Q, Hp/4, Wp/4) -> (B, H, W): the model stage's map at
        1/``map_stride`` (:func:`grid_maps`) upsampled to the image (:func:`upsample_map`)."""
        cfg = self.config
        grid, _ = grid_maps(self.score, pred_logits, pred_masks, input_size, self.map_stride,
                            cfg.refine_ids, cfg.keep_threshold, semantic=False)
        return upsample_map(grid, input_size, self.map_stride, output_size)

    def _anomalies(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, input_size: tuple[int, int],
                   output_size: tuple[int, int], sems: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, Q, K+1), (B, Q, Hp/4, Wp/4) -> (B, H, W) anomaly maps (``sems``: their
        :meth:`sem_seg`, reused by the official score at stride 1)."""
        if self.map_stride > 1:
            return self._grid_anomaly(pred_logits, pred_masks, input_size, output_size)
        return torch.stack([self.anomaly_map(pred_logits[j], pred_masks[j], input_size, output_size,
                                             None if sems is None else sems[j]) for j in range(len(pred_logits))])

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[Result]:
        """Results for a list of (H, W, 3) uint8 images; images of equal size share one
        forward pass (and one mirrored pass with ``flip``)."""
        results: list[Result | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape[:2], []).append(i)
        for size, idx in groups.items():
            group = [images[i] for i in idx]
            x, input_size = self._network_input(group)
            logits, masks = self.core(x)
            sems = [self.sem_seg(logits[j], masks[j], input_size, size) for j in range(len(idx))]
            anomaly = self._anomalies(logits, masks, input_size, size, sems)
            if self.flip:  # the official TTA mirrors the original image, then resizes it
                mirrored, _ = self._network_input([np.ascontiguousarray(im[:, ::-1]) for im in group])
                anomaly = self.core.average_with_mirror(
                    anomaly, mirrored, lambda lo, ma: self._anomalies(lo, ma, input_size, size))
            for j, i in enumerate(idx):
                results[i] = self._result(logits[j], masks[j], sems[j], anomaly[j], input_size)
        return results  # type: ignore[return-value]

    def _result(self, logits: torch.Tensor, masks: torch.Tensor, sem: torch.Tensor, anomaly: torch.Tensor,
                input_size: tuple[int, int]) -> Result:
        """The :class:`Result` of one image from its outputs, sem_seg and (H, W) anomaly map."""
        known = sem[: self.config.num_classes]
        open_set = None
        if self.open_set_threshold is not None:
            open_set = open_set_semantic(known, anomaly, self.open_set_threshold).cpu().numpy()  # Eq. 14
        return Result(anomaly=anomaly.float().cpu().numpy(), semantic=known.argmax(0).cpu().numpy(),
                      open_set=open_set, sem_seg=sem.cpu(), pred_logits=logits.cpu(),
                      pred_masks=masks.cpu(), input_size=input_size)

    @torch.inference_mode()
    def panoptic(self, result: Result, *, bg_threshold: float = 0.5, iou_threshold: float = 0.5,
                 min_area: int = 1) -> tuple[np.ndarray, list[dict]]:
        """Open-set panoptic segmentation of one result at its image size: known segments
        (Mask2Former panoptic inference) plus unknown instances mined from the background
        region (Eq. 15, Sec. 6.3), with the thing/stuff split of the weights' config.

        Returns (panoptic (H, W) int32 ids, segments_info); category K = unknown.
        """
        size = result.anomaly.shape
        hp, wp = padded_size(*result.input_size, self.config.preprocess.size_divisibility)
        masks = F.interpolate(result.pred_masks[None], size=(hp, wp), mode="bilinear",
                              align_corners=False)
        masks = crop_and_resize(masks, result.input_size, size)[0]
        background = background_region(result.pred_logits, masks)
        unknown = mine_unknown_instances(background, result.pred_logits, masks, self.config.thing_ids,
                                         bg_threshold=bg_threshold, iou_threshold=iou_threshold,
                                         min_area=min_area)
        return open_set_panoptic(result.pred_logits, masks, self.config.thing_ids, unknown)
