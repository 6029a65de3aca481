"""The Mask2Anomaly network: backbone, pixel decoder and transformer decoder wired as the
official ``MaskFormer`` meta-architecture, so that

* ``model.backbone(x)`` gives res2..res5,
* ``model.sem_seg_head.pixel_decoder.forward_features(features)`` gives
  (mask_features, transformer_encoder_features, multi_scale_features),
* ``model.sem_seg_head.predictor(multi_scale_features, mask_features)`` gives
  pred_logits, pred_masks and aux_outputs,

and ``model.state_dict()`` has exactly the official keys (plus nothing).
"""

from __future__ import annotations

import torch
from torch import nn

from m2a_pipe.config import ModelConfig
from m2a_pipe.model.backbone import ConvBN, ResNet
from m2a_pipe.model.pixel_decoder import MSDeformAttnPixelDecoder
from m2a_pipe.model.transformer_decoder import MultiScaleMaskedTransformerDecoder

NO_OBJECT_WEIGHT = 0.1


class MaskFormerHead(nn.Module):
    """``sem_seg_head``: the pixel decoder and the transformer decoder (``predictor``)."""

    def __init__(self, cfg: ModelConfig, in_channels: dict[str, int]) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(cfg.pixel_decoder, in_channels)
        self.predictor = MultiScaleMaskedTransformerDecoder(
            cfg.decoder, in_channels=cfg.pixel_decoder.conv_dim,
            mask_dim=cfg.pixel_decoder.mask_dim, num_classes=cfg.num_classes)

    def forward(self, features: dict[str, torch.Tensor], final_masks_only: bool = False) -> dict:
        mask_features, _, multi_scale = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale, mask_features, final_masks_only)


class Criterion(nn.Module):
    """Holds ``criterion.empty_weight`` ([K+1], 0.1 for no-object), a persistent buffer of
    every official checkpoint. The losses themselves live with the training code."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        weight = torch.ones(num_classes + 1)
        weight[-1] = NO_OBJECT_WEIGHT
        self.register_buffer("empty_weight", weight)


class Mask2Anomaly(nn.Module):
    """The whole network.

    ``forward`` takes the normalised, padded batch (B, 3, Hp, Wp) float32 (Hp, Wp multiples
    of 32; see :mod:`m2a_pipe.inference.preprocess`) and returns the predictor's dict:
    pred_logits (B, Q, K+1), pred_masks (B, Q, Hp/4, Wp/4), aux_outputs.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = ResNet(cfg.backbone)
        self.sem_seg_head = MaskFormerHead(cfg, self.backbone.out_channels)
        self.criterion = Criterion(cfg.num_classes)
        pre = cfg.preprocess
        self.register_buffer("pixel_mean", torch.tensor(pre.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pre.pixel_std).view(3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, final_masks_only: bool = False) -> dict:
        """``final_masks_only``: in eval mode, no earlier-layer masks (``aux_outputs`` empty),
        see :class:`~m2a_pipe.model.transformer_decoder.MultiScaleMaskedTransformerDecoder`."""
        return self.sem_seg_head(self.backbone(images), final_masks_only)

    def prepare_for_inference(self, channels_last: bool = True) -> "Mask2Anomaly":
        """Eval mode, the backbone's frozen batch norms folded into their convolutions, and
        (by default) channels-last convolutions.

        Call after loading weights and moving to the device; outputs stay equal to the
        plain model within float rounding (checked by the parity tests).
        """
        self.eval()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.backbone.channels_last = channels_last
        for module in self.backbone.modules():
            if isinstance(module, ConvBN):
                module.fold_norm()
        return self


def build_model(cfg: ModelConfig) -> Mask2Anomaly:
    """A freshly initialised Mask2Anomaly for ``cfg`` (weights as the official init draws)."""
    return Mask2Anomaly(cfg)
