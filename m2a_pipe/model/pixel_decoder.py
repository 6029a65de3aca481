"""Multi-scale deformable-attention pixel decoder (``MSDeformAttnPixelDecoder``).

res3..res5 are projected to ``conv_dim`` (1x1 conv + GroupNorm), refined jointly by a stack
of deformable-attention encoder layers, and the finest encoder level is merged top-down
with res2 (lateral 1x1 ``adapter_1`` + 3x3 ``layer_1``, FPN style) to produce the
stride-4 per-pixel embeddings from which ``mask_features`` are computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2a_pipe.config import PixelDecoderConfig
from m2a_pipe.model.ms_deform_attn import MSDeformAttn, SamplingGrid, sampling_grid
from m2a_pipe.model.position_encoding import sine_position_encoding

TRANSFORMER_FEATURES = ("res3", "res4", "res5")


class ConvGN(nn.Conv2d):
    """detectron2 ``Conv2d`` with a GroupNorm child (``norm``) and optional ReLU, no bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, groups: int, relu: bool) -> None:
        super().__init__(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.GroupNorm(groups, out_ch)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class EncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN (official key names)."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: list[tuple[int, int]], grid: SamplingGrid | None = None) -> torch.Tensor:
        """src, pos: (B, S, C); reference_points: (S, 2); grid: the forward pass's
        :func:`~m2a_pipe.model.ms_deform_attn.sampling_grid`. Returns (B, S, C)."""
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, shapes, grid))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src), inplace=True)))


class Encoder(nn.Module):
    """Stack of encoder layers (module path ``transformer.encoder.layers.{i}``)."""

    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class DeformableTransformerEncoder(nn.Module):
    """``MSDeformAttnTransformerEncoderOnly``: a level embedding and the encoder."""

    def __init__(self, cfg: PixelDecoderConfig, n_levels: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, cfg.conv_dim))
        self.encoder = Encoder([
            EncoderLayer(cfg.conv_dim, cfg.dim_feedforward, n_levels, cfg.nheads, cfg.n_points)
            for _ in range(cfg.enc_layers)
        ])
        nn.init.normal_(self.level_embed)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()
        self._sampling_cache: tuple | None = None

    def _sampling(self, shapes: list[tuple[int, int]], batch: int, device: torch.device
                  ) -> tuple[torch.Tensor, SamplingGrid | None]:
        """The reference points (S, 2), float32 in any precision, and the layers' shared
        :func:`~m2a_pipe.model.ms_deform_attn.sampling_grid`; both depend only on the shapes,
        the batch and the device, so the last ones are kept for the next frame of a video."""
        key = (tuple(shapes), batch, str(device))
        cached = self._sampling_cache  # one read: another thread may replace it meanwhile
        if cached is None or cached[0] != key:
            ref = reference_points(shapes, device, torch.float32)
            attn = self.encoder.layers[0].self_attn if self.encoder.layers else None
            grid = sampling_grid(shapes, ref, batch, attn.n_heads, attn.n_points) if attn else None
            cached = self._sampling_cache = (key, ref, grid)
        return cached[1], cached[2]

    def forward(self, srcs: list[torch.Tensor], pos: list[torch.Tensor]) -> torch.Tensor:
        """srcs, pos: per level (B, C, H_l, W_l). Returns memory (B, sum H_l*W_l, C)."""
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        lvl_pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                             for i, p in enumerate(pos)], 1)
        ref, grid = self._sampling(shapes, src.shape[0], src.device)
        for layer in self.encoder.layers:
            src = layer(src, lvl_pos, ref, shapes, grid)
        return src


def reference_points(shapes: list[tuple[int, int]], device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    """Pixel centres of every level, normalised to [0, 1]: (sum H*W, 2) as (x, y)."""
    points = []
    for h, w in shapes:
        ys = torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device) / h
        xs = torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    return torch.cat(points, 0).to(dtype)


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder. ``forward_features`` mirrors the official call.

    Input channels come from the backbone (``in_channels``: res2..res5 -> channels).
    """

    def __init__(self, cfg: PixelDecoderConfig, in_channels: dict[str, int]) -> None:
        super().__init__()
        self.cfg = cfg
        n_levels = len(TRANSFORMER_FEATURES)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[name], cfg.conv_dim, 1),
                          nn.GroupNorm(cfg.gn_groups, cfg.conv_dim))
            for name in reversed(TRANSFORMER_FEATURES)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = DeformableTransformerEncoder(cfg, n_levels)
        self.mask_features = nn.Conv2d(cfg.conv_dim, cfg.mask_dim, 1)
        _c2_xavier_fill(self.mask_features)
        # One FPN level (stride 8 -> 4): res2, as the official common_stride 4 gives.
        self.adapter_1 = ConvGN(in_channels["res2"], cfg.conv_dim, 1, cfg.gn_groups, relu=False)
        self.layer_1 = ConvGN(cfg.conv_dim, cfg.conv_dim, 3, cfg.gn_groups, relu=True)
        for conv in (self.adapter_1, self.layer_1):
            _c2_xavier_fill(conv)

    def forward_features(self, features: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Backbone features -> (mask_features, transformer_encoder_features, multi_scale_features).

        Args:
            features: res2..res5, (B, C_i, H/s_i, W/s_i).
        Returns:
            mask_features: (B, mask_dim, H/4, W/4);
            transformer_encoder_features: (B, conv_dim, H/32, W/32), the coarsest encoder
                level (== multi_scale_features[0]);
            multi_scale_features: encoder outputs at strides 32, 16, 8, each (B, conv_dim, h, w).
        """
        srcs, pos = [], []
        for proj, name in zip(self.input_proj, reversed(TRANSFORMER_FEATURES)):
            x = features[name]
            srcs.append(proj(x))
            b, _, h, w = x.shape
            pos.append(sine_position_encoding(b, h, w, self.cfg.conv_dim // 2,
                                              device=x.device, dtype=srcs[-1].dtype))
        memory = self.transformer(srcs, pos)
        multi_scale, start = [], 0
        for s in srcs:
            b, c, h, w = s.shape
            multi_scale.append(memory[:, start:start + h * w].transpose(1, 2).reshape(b, c, h, w))
            start += h * w
        lateral = self.adapter_1(features["res2"])
        top_down = upsample_bilinear(multi_scale[-1], lateral.shape[-2:])
        finest = self.layer_1(lateral + top_down)
        return self.mask_features(finest), multi_scale[0], multi_scale

    def forward(self, features: dict[str, torch.Tensor]):
        return self.forward_features(features)


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` of (B, C, h, w) to
    (B, C, H, W), the same up to rounding.

    The FPN's exact 2x case on a CPU without autograd runs channels-last: an encoder level is a
    channels-last view, on which torch's CPU kernel is slow and returns a channels-first
    result (measured 159 ms against 27 ms at 1/4 of 512x1024 in float32, 49 against 3 in
    bfloat16, the sum with the lateral included). With align_corners=False each output row
    2i is 0.75 x[i] + 0.25 x[i-1] and 2i+1 is 0.75 x[i] + 0.25 x[i+1] (edges clamped), and
    likewise along columns; the result is channels-last.
    """
    b, c, h, w = x.shape
    if (tuple(size) != (2 * h, 2 * w) or h < 2 or w < 2 or torch.is_grad_enabled()
            or x.device.type != "cpu"):
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    src = x.permute(0, 2, 3, 1)  # (B, h, w, C); contiguous when x is channels-last
    rows = torch.empty(b, h, 2, w, c, dtype=x.dtype, device=x.device)
    rows[:, 0, 0] = src[:, 0]
    torch.lerp(src[:, 1:], src[:, :-1], 0.25, out=rows[:, 1:, 0])
    torch.lerp(src[:, :-1], src[:, 1:], 0.25, out=rows[:, :-1, 1])
    rows[:, -1, 1] = src[:, -1]
    rows = rows.view(b, 2 * h, w, c)
    out = torch.empty(b, 2 * h, w, 2, c, dtype=x.dtype, device=x.device)
    out[:, :, 0, 0] = rows[:, :, 0]
    torch.lerp(rows[:, :, 1:], rows[:, :, :-1], 0.25, out=out[:, :, 1:, 0])
    torch.lerp(rows[:, :, :-1], rows[:, :, 1:], 0.25, out=out[:, :, :-1, 1])
    out[:, :, -1, 1] = rows[:, :, -1]
    return out.view(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2 XavierFill: kaiming-uniform with a=1, zero bias (fvcore ``c2_xavier_fill``)."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
