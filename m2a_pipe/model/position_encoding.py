"""Normalised sine positional encoding (DETR), as both Mask2Former decoders use it."""

from __future__ import annotations

import math

import torch


def sine_position_encoding(batch: int, height: int, width: int, num_feats: int, *,
                           temperature: float = 10000.0, device: torch.device | None = None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sine/cosine encoding of normalised (y, x) positions, no padding mask.

    Positions run 1..H and 1..W, divided by (H + 1e-6) and (W + 1e-6) and scaled by 2 pi;
    channel pairs (2i, 2i+1) hold sin and cos at frequency temperature ** (2i / num_feats).

    Returns: (batch, 2 * num_feats, height, width); the first num_feats channels encode y,
    the last num_feats encode x. Computed in float32, then cast to ``dtype``.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_y = _interleave_sin_cos(y[:, None] / dim_t)  # (H, F)
    pos_x = _interleave_sin_cos(x[:, None] / dim_t)  # (W, F)
    pos = torch.cat((pos_y[:, None, :].expand(height, width, num_feats),
                     pos_x[None, :, :].expand(height, width, num_feats)), dim=-1)
    return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1).to(dtype)


def _interleave_sin_cos(t: torch.Tensor) -> torch.Tensor:
    """(N, F) angles -> (N, F): sin of even columns and cos of odd columns, interleaved."""
    return torch.stack((t[:, 0::2].sin(), t[:, 1::2].cos()), dim=2).flatten(1)
