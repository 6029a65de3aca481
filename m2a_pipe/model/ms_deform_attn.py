"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query looks at ``n_points`` learned sampling locations around its reference point on
each of ``n_levels`` feature maps, per head, and takes a softmax-weighted sum of the
bilinearly sampled values. The core has two implementations with the same result:

* :func:`ms_deform_attn_reference`: the straightforward formulation (sample every level,
  stack, weight, sum), kept as the executable specification for tests;
* :func:`ms_deform_attn`: the one the model runs. It reads each level's values in place
  (no per-level transpose copy), samples one level at a time and accumulates the weighted
  sum in place, so the (B*heads, C/heads, queries, levels*points) tensor is never built.

Precision: whatever the dtype of the values (bfloat16 or float16 in reduced precision), the
sampling locations, the attention weights' softmax, the bilinear sampling and the weighted
sum run in float32 (a bfloat16 location in [0, 1] is off by up to a quarter of a pixel on
the finest level); the result is cast back to the values' dtype for the output projection.

Which core a layer runs is a per-layer flag, ``MSDeformAttn.use_reference_core`` (False by
default); :func:`use_reference_core` sets it on every layer of one model, leaving any other
model in the process as it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_reference(value: torch.Tensor, shapes: list[tuple[int, int]],
                             locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Deformable attention core, straightforward form.

    Args:
        value: (B, S, M, D) values of all levels, flattened level after level (S = sum H*W).
        shapes: [(H_l, W_l)] per level.
        locations: (B, Q, M, L, P, 2) sampling locations (x, y) in [0, 1].
        weights: (B, Q, M, L, P) attention weights (softmax over L*P).
    Returns:
        (B, Q, M*D) float tensor.
    """
    b, _, m, d = value.shape
    _, q, _, n_lvl, p, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    attn = weights.transpose(1, 2).reshape(b * m, 1, q, n_lvl * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * attn).sum(-1).view(b, m * d, q)
    return out.transpose(1, 2).contiguous()


def ms_deform_attn(value_t: torch.Tensor, shapes: list[tuple[int, int]],
                   grids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Deformable attention core, lean form (same result as the reference).

    Args:
        value_t: (B, M, D, S) values, channels first, levels flattened along S, any float dtype.
        shapes: [(H_l, W_l)] per level.
        grids: (B, M, L, P, Q, 2) float32 sampling locations in grid_sample coordinates [-1, 1].
        weights: (B, M, L, P, Q) float32 attention weights (softmax over L*P).
    Returns:
        (B, M*D, Q) float32: the attended values, channels first (each level's values are
        sampled in float32).

    Sampling with the points as rows and the queries as columns gives (B*M, D, P, Q), so
    the weighted sum over points is P fused multiply-adds over contiguous (B*M, D, Q) slices.
    """
    b, m, d, _ = value_t.shape
    _, _, _, p, q, _ = grids.shape
    out = torch.zeros(b * m, d, q, dtype=torch.float32, device=value_t.device)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v = value_t[..., start:start + h * w].reshape(b * m, d, h, w).float()
        start += h * w
        s = F.grid_sample(v, grids[:, :, lvl].reshape(b * m, p, q, 2), mode="bilinear",
                          padding_mode="zeros", align_corners=False)
        wl = weights[:, :, lvl].reshape(b * m, 1, p, q)
        for i in range(p):
            out.addcmul_(s[:, :, i], wl[:, :, i])
    return out.reshape(b, m * d, q)


class MSDeformAttn(nn.Module):
    """Deformable attention layer (keys ``sampling_offsets``, ``attention_weights``,
    ``value_proj``, ``output_proj`` as in the official module).

    The instance attribute ``use_reference_core`` (False) switches this layer to the
    straightforward core (for comparisons); see :func:`use_reference_core`.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8,
                 n_points: int = 4) -> None:
        super().__init__()
        self.use_reference_core = False
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR initialisation: offsets start on a ring of directions per head."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.constant_(lin.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor,
                value_in: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Attend from each query to its sampling points on every level.

        Args:
            query: (B, Q, C) queries (features + positional encoding).
            reference_points: (Q, 2) normalised (x, y) reference point of each query,
                shared by all levels (no padding, so valid ratios are 1).
            value_in: (B, S, C) flattened multi-level features.
            shapes: [(H_l, W_l)] per level, sum of H_l * W_l == S.
        Returns:
            (B, Q, C).
        """
        b, q, _ = query.shape
        m, n_lvl, p = self.n_heads, self.n_levels, self.n_points
        d = self.d_model // m
        offsets = self.sampling_offsets(query).float().view(b, q, m, n_lvl, p, 2)
        weights = self.attention_weights(query).float().view(b, q, m, n_lvl * p).softmax(-1)
        weights = weights.view(b, q, m, n_lvl, p)
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32,
                                  device=query.device)  # (L, 2) as (x, y)
        locations = reference_points.float()[None, :, None, None, None, :] + \
            offsets / normaliser[None, None, None, :, None, :]  # (B, Q, M, L, P, 2) in [0, 1]
        if self.use_reference_core:
            value = self.value_proj(value_in).view(b, -1, m, d)
            out = ms_deform_attn_reference(value.float(), shapes, locations, weights)
            return self.output_proj(out.to(value.dtype))
        # Values channels-first (B, M, D, S) straight out of the projection (no copy later).
        value_t = torch.matmul(self.value_proj.weight, value_in.transpose(1, 2))
        value_t = (value_t + self.value_proj.bias[:, None]).view(b, m, d, -1)
        grids = (2 * locations - 1).permute(0, 2, 3, 4, 1, 5)  # (B, M, L, P, Q, 2)
        out = ms_deform_attn(value_t, shapes, grids, weights.permute(0, 2, 3, 4, 1))  # (B, C, Q)
        return self.output_proj(out.transpose(1, 2).to(value_t.dtype))


def use_reference_core(model: nn.Module, on: bool = True) -> int:
    """Switch every :class:`MSDeformAttn` of ``model`` (``model`` itself included) to the
    straightforward core (``on=True``) or back to the lean one; other models are untouched.

    Returns the number of layers set (0: the model has no deformable attention).
    """
    layers = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    for layer in layers:
        layer.use_reference_core = bool(on)
    return len(layers)
