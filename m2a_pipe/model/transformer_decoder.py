"""Masked-attention transformer decoder with global masked attention (GMA).

The decoder refines ``num_queries`` learnable queries over ``num_layers`` layers. Each layer
cross-attends to one level of the pixel decoder's multi-scale features (coarse to fine,
round-robin), then self-attends, then applies an FFN; after the learnable queries and after
every layer a prediction head gives class logits and mask logits, and the masks of one
prediction become the attention masks of the next layer.

Cross-attention is either

* ``global`` (Mask2Anomaly, Eq. 8-9): a foreground attention restricted to the pixels of
  the query's predicted mask and a background attention restricted to the pixels outside
  it, summed, plus the residual; or
* ``masked`` (Mask2Former baseline, Eq. 6-7): the foreground attention alone.

Module and parameter names follow the official code, so official checkpoints load as is
(including GMA's ``fusion_layer``, which the official forward never uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2a_pipe.config import DecoderConfig
from m2a_pipe.model.position_encoding import sine_position_encoding

NUM_FEATURE_LEVELS = 3


def attend(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
           value: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention with the weights of an ``nn.MultiheadAttention`` module.

    Args:
        query: (B, Q, C); key, value: (B, N, C).
        allowed: optional bool (B, heads, Q, N) or (B, 1, Q, N) (all heads alike), True where
            a query may attend.
    Returns:
        (B, Q, C), equal to ``mha(query, key, value, attn_mask=~allowed)`` (batch-first).
    """
    b, q_len, c = query.shape
    heads = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q).view(b, q_len, heads, -1).transpose(1, 2)
    k = _project(key, w_k, b_k, query.dtype).view(b, key.shape[1], heads, -1).transpose(1, 2)
    v = _project(value, w_v, b_v, query.dtype).view(b, value.shape[1], heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return mha.out_proj(out.transpose(1, 2).reshape(b, q_len, c))


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in ``x``'s dtype, returned in ``dtype``: pixel features
    kept in bfloat16 are projected in bfloat16 (thousands of rows, where bfloat16 pays),
    while the queries' products stay in the weights' dtype."""
    if x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias)
    return F.linear(x, weight.to(x.dtype), bias.to(x.dtype)).to(dtype)


class SelfAttentionLayer(nn.Module):
    """Query self-attention with residual and LayerNorm (post- or pre-norm)."""

    def __init__(self, d_model: int, nhead: int, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """tgt: (B, Q, C); query_pos: (B, Q, C). Returns (B, Q, C)."""
        x = self.norm(tgt) if self.pre_norm else tgt
        q = x + query_pos
        tgt = tgt + attend(self.self_attn, q, q, x)
        return tgt if self.pre_norm else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from the queries to one feature level (Eq. 6-7)."""

    def __init__(self, d_model: int, nhead: int, pre_norm: bool) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor, foreground: torch.Tensor,
                background: torch.Tensor) -> torch.Tensor:
        """Eq. 6: softmax(M^F + Q K^T) V + X_in. ``background`` is unused here.

        tgt, query_pos: (B, Q, C); memory, pos: (B, N, C); foreground: bool (B, 1, Q, N),
        True where attention is allowed (M^F = 0, Eq. 7).
        """
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + attend(self.multihead_attn, x + query_pos, memory + pos, memory, foreground)
        return tgt if self.pre_norm else self.norm(tgt)


class GlobalCrossAttentionLayer(nn.Module):
    """Global masked attention (Eq. 8-9): foreground plus background attention."""

    def __init__(self, d_model: int, nhead: int, pre_norm: bool) -> None:
        super().__init__()
        self.multihead_attn_foreground = nn.MultiheadAttention(d_model, nhead)
        self.multihead_attn_background = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        # Present in every official checkpoint with this hard-coded shape; never used.
        self.fusion_layer = nn.Conv2d(200, 100, kernel_size=1)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor, foreground: torch.Tensor,
                background: torch.Tensor) -> torch.Tensor:
        """Eq. 8: X_out = softmax(M^F + QK^T) V + softmax(M^B + QK^T) V + X_in, then LayerNorm.

        tgt, query_pos: (B, Q, C); memory, pos: (B, N, C); foreground / background: bool
        (B, 1, Q, N), True where attention is allowed (M^F = 0 of Eq. 7, M^B = 0 of Eq. 9).
        """
        x = self.norm(tgt) if self.pre_norm else tgt
        q, k = x + query_pos, memory + pos
        fg = attend(self.multihead_attn_foreground, q, k, memory, foreground)
        bg = attend(self.multihead_attn_background, q, k, memory, background)
        tgt = tgt + (bg + fg)
        return tgt if self.pre_norm else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer ReLU MLP with residual and LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int, pre_norm: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.linear2(F.relu(self.linear1(x)))
        return tgt if self.pre_norm else self.norm(tgt)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``mask_embed.layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """The predictor (``sem_seg_head.predictor``).

    ``in_channels`` is the pixel decoder's ``conv_dim``; a 1x1 ``input_proj`` per level exists
    only when it differs from ``hidden_dim`` (or ``enforce_input_proj``).

    ``final_masks_only`` (a forward argument, False): in eval mode, skip the earlier layers'
    full-resolution masks, which inference never reads. Each attention mask is then computed
    from the mask features downsampled to its size (bilinear interpolation is linear per
    channel, so ``interpolate(einsum(e, F)) == einsum(e, interpolate(F))`` up to rounding),
    a few thousand pixels instead of H/4 x W/4; ``aux_outputs`` is then empty.

    A decoder kept in float32 runs behind a bfloat16 pixel decoder (outside autocast): the
    pixel features stay bfloat16 for the keys' and values' projections (thousands of rows,
    where bfloat16 is faster), which are returned in float32; the products over the 100
    queries, the attention itself and the mask features stay float32 (small products are
    faster in float32 on a CPU, and the mask logits of Eq. 3 / 5 / 13 stay float32).
    """

    def __init__(self, cfg: DecoderConfig, in_channels: int, mask_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_heads = cfg.nheads
        self.num_layers = cfg.num_layers
        cross = GlobalCrossAttentionLayer if cfg.attention == "global" else CrossAttentionLayer
        d = cfg.hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d, cfg.nheads, cfg.pre_norm) for _ in range(self.num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            cross(d, cfg.nheads, cfg.pre_norm) for _ in range(self.num_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d, cfg.dim_feedforward, cfg.pre_norm) for _ in range(self.num_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.query_feat = nn.Embedding(cfg.num_queries, d)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.level_embed = nn.Embedding(NUM_FEATURE_LEVELS, d)
        self.input_proj = nn.ModuleList()
        for _ in range(NUM_FEATURE_LEVELS):
            if in_channels != d or cfg.enforce_input_proj:
                conv = nn.Conv2d(in_channels, d, kernel_size=1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.constant_(conv.bias, 0)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(d, num_classes + 1)
        self.mask_embed = MLP(d, d, mask_dim, 3)

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor, final_masks_only: bool = False) -> dict:
        """Run the decoder.

        Args:
            x: multi-scale features at strides 32, 16, 8, each (B, in_channels, h_l, w_l).
            mask_features: (B, mask_dim, H/4, W/4).
        Returns:
            ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, H/4, W/4) of the last
            layer, and ``aux_outputs``: the ``num_layers`` earlier predictions (index 0 from
            the learnable queries alone), each a dict with the same two keys (empty with
            ``final_masks_only`` in eval mode).
        """
        dtype = self.query_feat.weight.dtype
        if mask_features.dtype != dtype and not torch.is_autocast_enabled(mask_features.device.type):
            mask_features = mask_features.to(dtype)  # the mask logits (Eq. 3 / 5 / 13) in float32
        if final_masks_only and not self.training and self.num_layers > 0:
            return self._forward_final_masks_only(x, mask_features)
        srcs, poss, sizes = self._inputs(x)
        b = srcs[0].shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)

        logits, masks = [], []
        cls, mask, fg, bg = self.forward_prediction_heads(output, mask_features, sizes[0])
        logits.append(cls)
        masks.append(mask)
        for i in range(self.num_layers):
            lvl = i % NUM_FEATURE_LEVELS
            output = self.transformer_cross_attention_layers[i](
                output, srcs[lvl], poss[lvl], query_pos, fg, bg)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            cls, mask, fg, bg = self.forward_prediction_heads(
                output, mask_features, sizes[(i + 1) % NUM_FEATURE_LEVELS])
            logits.append(cls)
            masks.append(mask)
        return {
            "pred_logits": logits[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m}
                            for c, m in zip(logits[:-1], masks[:-1])],
        }

    def _inputs(self, x: list[torch.Tensor]):
        """Per level: (B, h*w, C) projected features with the level embedding, (B, h*w, C)
        positional encodings, and (h, w)."""
        srcs, poss, sizes = [], [], []
        for i in range(NUM_FEATURE_LEVELS):
            b, _, h, w = x[i].shape
            sizes.append((h, w))
            proj = self.input_proj[i]
            feat = proj(x[i].to(proj.weight.dtype)) if isinstance(proj, nn.Conv2d) else x[i]
            pos = sine_position_encoding(b, h, w, self.cfg.hidden_dim // 2,
                                         device=feat.device, dtype=feat.dtype)
            poss.append(pos.flatten(2).transpose(1, 2))
            src = feat.flatten(2) + self.level_embed.weight[i].to(feat.dtype)[None, :, None]
            srcs.append(src.transpose(1, 2))
        return srcs, poss, sizes

    def _forward_final_masks_only(self, x: list[torch.Tensor], mask_features: torch.Tensor) -> dict:
        """:meth:`forward` for inference: the same layers and attention masks, full-resolution
        masks for the last prediction only (see the class docstring)."""
        srcs, poss, sizes = self._inputs(x)
        b = srcs[0].shape[0]
        small = {size: F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
                 for size in set(sizes)}  # mask features at each attention-mask size
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
        for i in range(self.num_layers):
            features = small[sizes[i % NUM_FEATURE_LEVELS]]
            prob = torch.einsum("bqc,bchw->bqhw", self.mask_embed(self.decoder_norm(output)), features)
            fg, bg = self._attention_masks(prob.sigmoid().flatten(2))
            output = self.transformer_cross_attention_layers[i](
                output, srcs[i % NUM_FEATURE_LEVELS], poss[i % NUM_FEATURE_LEVELS], query_pos, fg, bg)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
        decoder_output = self.decoder_norm(output)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoder_output), mask_features)
        return {"pred_logits": self.class_embed(decoder_output), "pred_masks": masks, "aux_outputs": []}

    def _attention_masks(self, prob: torch.Tensor):
        """Foreground / background "allowed" masks, bool (B, 1, Q, N) (one for all heads), of
        the mask probabilities ``prob`` (B, Q, N): foreground where prob >= 0.5 (Eq. 7),
        background where prob <= 0.5 (Eq. 9; both at exactly 0.5, as the official comparisons
        do); a query with no allowed pixel in a mask may attend everywhere in it. The heads
        share the mask by broadcasting: the attention converts it to additive form once per
        image instead of once per head (the official code repeats it per head; same result)."""
        fg = _allow_all_if_empty(prob >= 0.5)
        bg = _allow_all_if_empty(prob <= 0.5) if self.cfg.attention == "global" else None
        return fg.unsqueeze(1), (bg.unsqueeze(1) if bg is not None else None)

    def forward_prediction_heads(self, output: torch.Tensor, mask_features: torch.Tensor,
                                 target_size: tuple[int, int]):
        """Class and mask logits from the queries, and the next layer's attention masks.

        Returns class logits (B, Q, K+1), mask logits (B, Q, H/4, W/4) and the foreground /
        background "allowed" masks, bool (B, 1, Q, h*w) at ``target_size``: foreground
        where sigmoid(mask) >= 0.5 (Eq. 7), background where sigmoid(mask) <= 0.5 (Eq. 9;
        both at exactly 0.5, as the official comparisons do); a query with no allowed pixel
        in a mask may attend everywhere in it. Only the masks the decoder needs are built.
        """
        decoder_output = self.decoder_norm(output)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        if self.num_layers == 0:
            return outputs_class, outputs_mask, None, None
        prob = F.interpolate(outputs_mask, size=target_size, mode="bilinear",
                             align_corners=False).sigmoid().flatten(2).detach()
        fg, bg = self._attention_masks(prob)
        return outputs_class, outputs_mask, fg, bg


def _allow_all_if_empty(allowed: torch.Tensor) -> torch.Tensor:
    """Rows (queries) with no allowed position attend everywhere. allowed: bool (B, Q, N)."""
    return allowed | ~allowed.any(-1, keepdim=True)


def _xavier(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def plain_state_dict_from_gma(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a GMA checkpoint onto the plain masked-attention decoder (the Mask2Former
    baseline): ``multihead_attn_foreground`` becomes ``multihead_attn``; the background
    attention and the unused ``fusion_layer`` are dropped."""
    out = {}
    for key, value in state_dict.items():
        if ".multihead_attn_background." in key or ".fusion_layer." in key:
            continue
        out[key.replace(".multihead_attn_foreground.", ".multihead_attn.")] = value
    return out
