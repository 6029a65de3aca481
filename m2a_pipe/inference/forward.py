"""The one forward core of :class:`~m2a_pipe.inference.predictor.Predictor` and
:class:`~m2a_pipe.inference.stage.ModelStage`.

Both users run the network through :class:`ForwardCore` and nothing else:

1. uint8 (B, 3, h, w) RGB -> normalise and zero-pad to /32
   (:func:`m2a_pipe.inference.preprocess.normalize_and_pad`) -> channels-last;
2. the network under the one precision rule, :func:`precision_for` (``auto``: float16
   autocast on CUDA, bfloat16 on a CPU with bfloat16 matrix instructions, float32
   elsewhere; or one forced with ``precision``), outputs cast back to float32:
   ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, Hp/4, Wp/4);
3. horizontal-flip test-time augmentation (:meth:`ForwardCore.average_with_mirror`): the
   mirrored batch's forward, its map, flipped back and averaged with
   :func:`m2a_pipe.inference.scoring.flip_average`.

The maps at 1/``map_stride`` of the network input live here too, so that the stage's maps
and the Predictor's ``map_stride`` 2 / 4 maps are one computation: :func:`grid_maps` (the
score on the mask grid, or on the mask logits upsampled to stride 2 or 1 first) and
:func:`upsample_map` (a grid map back to the image, as the Predictor reports it).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from m2a_pipe.config import ModelConfig
from m2a_pipe.errors import UsageError
from m2a_pipe.inference.preprocess import normalize_and_pad
from m2a_pipe.inference.scoring import crop_and_resize, flip_average, grid_anomaly, semantic_probs
from m2a_pipe.model.mask2anomaly import Mask2Anomaly
from m2a_pipe.settings import BOUNDED_SCORES, DEFAULT_PRECISION, MAP_STRIDES, MASK_STRIDE, PRECISIONS

# --------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has bfloat16 matrix instructions (the ``amx_bf16`` or
    ``avx512_bf16`` flag of ``/proc/cpuinfo``). Where the file cannot be read (not Linux)
    the answer is False: bfloat16 is then emulated and slower than float32."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False


@dataclass(frozen=True)
class Precision:
    """How the network runs on one device type.

    device_type: ``"cuda"``, ``"cpu"``, ...
    name: ``fp32``, ``bf16`` or ``fp16`` (resolved; never ``auto``).
    On CUDA a reduced precision is autocast (float32 weights, matrix products in the reduced
    type); on the CPU ``bf16`` converts the backbone's and pixel decoder's weights (and so
    their activations) to bfloat16 once (:meth:`prepare`), which avoids autocast's per-call
    weight casts. Either way the parts that need float32 stay float32 (see :meth:`prepare`)
    and the outputs are cast back to float32.
    """

    device_type: str
    name: str = "fp32"

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the network's matrix products."""
        return _DTYPES[self.name]

    @property
    def autocast(self) -> bool:
        """True when the network runs under autocast (a reduced precision on CUDA)."""
        return self.name != "fp32" and self.device_type == "cuda"

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype of the weights and the network input: bfloat16 for ``bf16`` on the CPU,
        else float32."""
        return self.dtype if self.name != "fp32" and not self.autocast else torch.float32

    def prepare(self, model: Mask2Anomaly) -> Mask2Anomaly:
        """``model`` (already prepared for inference) itself for float32 weights, else a copy
        (the caller's model is left as it is) with the backbone and the pixel decoder in
        :attr:`weights_dtype`; the transformer decoder stays float32 (on a CPU its small
        products over 100 queries are slower in bfloat16, measured 2x, and its outputs, the
        class and mask logits of Eq. 3 / 5 / 13, stay float32). Float32 islands inside the
        pixel decoder do not depend on this: the deformable sampling locations, the attention
        weights' softmax and the bilinear sampling with its weighted sum (ms_deform_attn),
        and the reference points."""
        if self.weights_dtype == torch.float32:
            return model
        model = copy.deepcopy(model)
        model.backbone.to(self.weights_dtype)
        model.sem_seg_head.pixel_decoder.to(self.weights_dtype)
        return model

    def context(self) -> ContextManager:
        """The context the network's forward runs in (a no-op unless autocast)."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def precision_for(device: str | torch.device, precision: str = DEFAULT_PRECISION) -> Precision:
    """The precision rule of every forward pass.

    ``auto``: float16 autocast on CUDA; bfloat16 on a CPU with native bfloat16 matrix
    instructions (:func:`cpu_has_native_bf16`); float32 elsewhere. ``fp32`` (exact parity
    with the official code), ``bf16`` and ``fp16`` force one; ``fp16`` needs CUDA.
    Raises UsageError (one line) for anything else.

    :class:`ForwardCore` asks this function, and both the Predictor and the model stage hold
    a ForwardCore.
    """
    device_type = torch.device(device).type
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device_type == "cuda":
            precision = "fp16"
        elif device_type == "cpu" and cpu_has_native_bf16():
            precision = "bf16"
        else:
            precision = "fp32"
    if precision == "fp16" and device_type != "cuda":
        raise UsageError(f"--precision fp16 needs a CUDA device (the model runs on {device_type}); "
                         "use bf16 or fp32")
    return Precision(device_type, precision)


# --------------------------------------------------------------------------------------
# The forward core
# --------------------------------------------------------------------------------------


class NetworkOutput(NamedTuple):
    """Decoder outputs of a batch, float32: ``pred_logits`` (B, Q, K+1) class logits (last
    column = no object) and ``pred_masks`` (B, Q, Hp/4, Wp/4) mask logits."""

    pred_logits: torch.Tensor
    pred_masks: torch.Tensor


class ForwardCore:
    """A network prepared for inference on one device, with its precision rule.

    Args:
        model: the network; moved to ``device``, put in eval mode, batch norm folded,
            channels-last (``Mask2Anomaly.prepare_for_inference``, in place); for ``bf16`` on
            the CPU, a copy with the backbone and pixel decoder in bfloat16 is run
            (:meth:`Precision.prepare`). The forward makes the last layer's masks only
            (``final_masks_only``).
        device: torch device of the forward pass.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``, resolved by :func:`precision_for`.
    """

    def __init__(self, model: Mask2Anomaly, device: str | torch.device = "cpu", *,
                 precision: str = DEFAULT_PRECISION) -> None:
        self.device = torch.device(device)
        self.precision = precision_for(self.device, precision)
        model = model.to(self.device).prepare_for_inference(channels_last=True)
        self.model = self.precision.prepare(model)
        self.config: ModelConfig = model.config

    def batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """B (h, w, 3) uint8 RGB arrays of one size -> (B, 3, h, w) uint8 tensor on the
        device (a permuted view of the stacked host array's copy)."""
        return torch.from_numpy(np.stack(images)).to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> NetworkOutput:
        """Run the network.

        Args:
            images: (B, 3, h, w) uint8 RGB (values 0..255) on the device.
        Returns:
            :class:`NetworkOutput`: (B, Q, K+1) and (B, Q, Hp/4, Wp/4) float32, with
            (Hp, Wp) = (h, w) padded to the configured size divisibility.
        """
        pre = self.config.preprocess
        x = normalize_and_pad(images, pre.pixel_mean, pre.pixel_std, pre.size_divisibility)
        x = x.to(self.precision.weights_dtype).contiguous(memory_format=torch.channels_last)
        with self.precision.context():
            out = self.model(x, final_masks_only=True)
        return NetworkOutput(out["pred_logits"].float(), out["pred_masks"].float())

    def average_with_mirror(self, anomaly: torch.Tensor, mirrored: torch.Tensor,
                            mirror_map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Horizontal-flip test-time augmentation (the official evaluation's).

        Args:
            anomaly: (B, H', W') float32 map of the images.
            mirrored: (B, 3, h, w) uint8, the mirrored images as the network sees them
                (``images.flip(-1)``, or the mirrored originals resized).
            mirror_map: (pred_logits (B, Q, K+1), pred_masks (B, Q, Hp/4, Wp/4)) -> the
                (B, H', W') map of the mirrored images, computed exactly as ``anomaly`` was.
        Returns:
            (B, H', W') ``flip_average(anomaly, mirror_map(*self(mirrored)))``: the mirrored
            map flipped back and averaged with ``anomaly``.
        """
        return flip_average(anomaly, mirror_map(*self(mirrored)))


class UsesForwardCore:
    """What the users of a :class:`ForwardCore` (``self.core``) expose of it: ``device``,
    ``model`` (prepared for inference) and ``config`` (preprocessing, classes, refinement
    rule; settable, e.g. to try another test size)."""

    core: ForwardCore

    @property
    def device(self) -> torch.device:
        return self.core.device

    @property
    def model(self) -> Mask2Anomaly:
        return self.core.model

    @property
    def config(self) -> ModelConfig:
        return self.core.config

    @config.setter
    def config(self, config: ModelConfig) -> None:
        self.core.config = config


# --------------------------------------------------------------------------------------
# Maps at 1 / map_stride of the network input
# --------------------------------------------------------------------------------------


def map_size(input_size: tuple[int, int], map_stride: int) -> tuple[int, int]:
    """(h, w) of the maps for an unpadded network input of ``input_size`` = (h_in, w_in):
    ``ceil(h_in / map_stride), ceil(w_in / map_stride)``."""
    return -(-input_size[0] // map_stride), -(-input_size[1] // map_stride)


def check_map_stride(map_stride: int) -> int:
    """``map_stride`` itself when it is one of :data:`m2a_pipe.settings.MAP_STRIDES`, else a
    ``ValueError`` naming them."""
    if map_stride not in MAP_STRIDES:
        raise ValueError(f"map_stride must be one of {MAP_STRIDES}, got {map_stride!r}")
    return map_stride


def map_masks(pred_masks: torch.Tensor, input_size: tuple[int, int], map_stride: int) -> torch.Tensor:
    """Mask logits at the map resolution, padding cropped.

    Args:
        pred_masks: (B, Q, Hp/4, Wp/4) mask logits.
        input_size: (h, w) of the unpadded network input.
        map_stride: 4 (the masks' own grid), 2 or 1 (bilinear upsampling by 2 or 4 first,
            align_corners=False).
    Returns:
        (B, Q, h', w') with (h', w') = :func:`map_size` ``(input_size, map_stride)``.
    """
    up = MASK_STRIDE // check_map_stride(map_stride)
    if up > 1:
        pred_masks = F.interpolate(pred_masks, scale_factor=up, mode="bilinear", align_corners=False)
    h, w = map_size(input_size, map_stride)
    return pred_masks[..., :h, :w]


def grid_maps(score: str, pred_logits: torch.Tensor, pred_masks: torch.Tensor, input_size: tuple[int, int],
              map_stride: int, refine_ids: Sequence[int], keep_threshold: float, *,
              semantic: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Anomaly map and semantic labels at 1/``map_stride`` of the network input.

    The score is evaluated on the mask logits at the map resolution (:func:`map_masks`):
    ``"official"`` = Eq. 5 refined by Eq. 13, ``"msp"`` = Eq. 5, else a follow-up score of
    :data:`m2a_pipe.inference.scoring.SCORES` (:func:`~m2a_pipe.inference.scoring.grid_anomaly`).

    Args:
        score: a name of :data:`m2a_pipe.settings.SCORE_NAMES`.
        pred_logits: (B, Q, K+1) float32; pred_masks: (B, Q, Hp/4, Wp/4) float32.
        input_size: (h, w) of the unpadded network input.
        map_stride: one of :data:`m2a_pipe.settings.MAP_STRIDES`.
        refine_ids, keep_threshold: the Eq. 13 refinement rule of the weights' config.
        semantic: also return the labels.
    Returns:
        anomaly (B, h', w') float32, higher = more anomalous, and labels (B, h', w') int64,
        the argmax of Eq. 3 over the K known classes (None unless ``semantic``).
    """
    masks = map_masks(pred_masks, input_size, map_stride)
    sem = semantic_probs(pred_logits, masks) if (semantic or score in BOUNDED_SCORES) else None
    anomaly = grid_anomaly(score, pred_logits, masks, refine_ids, keep_threshold, sem)
    labels = sem.argmax(dim=-3) if semantic else None
    return anomaly, labels


def upsample_map(grid_map: torch.Tensor, input_size: tuple[int, int], map_stride: int,
                 output_size: tuple[int, int]) -> torch.Tensor:
    """A :func:`grid_maps` map at the image size.

    Args:
        grid_map: (B, h', w') float32 map at 1/``map_stride`` of the network input.
        input_size: (h, w) of the unpadded network input.
        map_stride: the map's stride (1 returns the crop/resize only).
        output_size: (H, W) of the image.
    Returns:
        (B, H, W): bilinear upsampling by ``map_stride`` (align_corners=False) to
        (map_stride * h', map_stride * w'), crop to ``input_size``, bilinear resize to
        ``output_size`` (skipped when equal).
    """
    h, w = grid_map.shape[-2:]
    up = grid_map
    if map_stride > 1:
        up = F.interpolate(grid_map[:, None], size=(h * map_stride, w * map_stride), mode="bilinear",
                           align_corners=False)[:, 0]
    return crop_and_resize(up, input_size, output_size)
