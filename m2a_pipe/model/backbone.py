"""ResNet backbone in the detectron2 layout (``build_resnet_backbone``).

Module names, and therefore state-dict keys, follow detectron2: ``stem.conv1``,
``res2.0.conv1``, ``res2.0.shortcut``..., each convolution carrying its norm as a child
(``res2.0.conv1.norm.running_mean``). Depths 18/34 use basic blocks, 50/101 bottlenecks.
Batch norm runs frozen (running statistics) whenever the module is in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2a_pipe.config import BackboneConfig


class ConvBN(nn.Conv2d):
    """A bias-free convolution followed by its batch norm (detectron2 ``Conv2d`` with
    ``norm``), optionally ReLU.

    At inference the norm is an affine map; :meth:`fold_norm` folds it into the convolution
    so that one pass over the activations is saved. Folding is undone by reloading weights.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, eps: float = 1e-5,
                 relu: bool = False) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(out_ch, eps=eps)
        self.relu = relu
        # The folded copy is a non-persistent buffer: it follows .to(device), stays out
        # of the state dict, and is dropped whenever weights are reloaded or training starts.
        self.register_buffer("folded_weight", None, persistent=False)
        self.register_buffer("folded_bias", None, persistent=False)

    @torch.no_grad()
    def fold_norm(self) -> None:
        """Precompute the convolution with the frozen norm folded in (used in eval mode)."""
        n = self.norm
        scale = n.weight * torch.rsqrt(n.running_var + n.eps)
        self.folded_weight = self.weight * scale.reshape(-1, 1, 1, 1)
        self.folded_bias = n.bias - n.running_mean * scale

    def unfold_norm(self) -> None:
        self.folded_weight = self.folded_bias = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.unfold_norm()
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> "ConvBN":
        if mode:
            self.unfold_norm()
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded_weight is not None and not self.training:
            x = F.conv2d(x, self.folded_weight, self.folded_bias, self.stride, self.padding,
                         self.dilation, self.groups)
        else:
            x = self.norm(super().forward(x))
        return F.relu_(x) if self.relu else x


class BasicStem(nn.Module):
    """7x7/2 convolution, BN, ReLU, 3x3/2 max pool: stride 4."""

    def __init__(self, out_ch: int, eps: float) -> None:
        super().__init__()
        self.conv1 = ConvBN(3, out_ch, 7, stride=2, padding=3, eps=eps, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34)."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, eps: float) -> None:
        super().__init__()
        self.shortcut = (ConvBN(in_ch, out_ch, 1, stride=stride, eps=eps)
                         if in_ch != out_ch else None)
        self.conv1 = ConvBN(in_ch, out_ch, 3, stride=stride, padding=1, eps=eps, relu=True)
        self.conv2 = ConvBN(out_ch, out_ch, 3, padding=1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (grouped, dilated), 1x1 expand, with a residual (ResNet-50/101).

    ``stride_in_1x1`` puts the stride in the first 1x1 convolution (MSRA weights) instead
    of the 3x3 one (torchvision / the official Mask2Former configs).
    """

    def __init__(self, in_ch: int, out_ch: int, *, bottleneck: int, stride: int,
                 groups: int, stride_in_1x1: bool, dilation: int, eps: float) -> None:
        super().__init__()
        self.shortcut = (ConvBN(in_ch, out_ch, 1, stride=stride, eps=eps)
                         if in_ch != out_ch else None)
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvBN(in_ch, bottleneck, 1, stride=s1, eps=eps, relu=True)
        self.conv2 = ConvBN(bottleneck, bottleneck, 3, stride=s3, padding=dilation,
                            dilation=dilation, groups=groups, eps=eps, relu=True)
        self.conv3 = ConvBN(bottleneck, out_ch, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class ResNet(nn.Module):
    """detectron2 ResNet returning ``{"res2": ..., "res5": ...}`` at strides 4, 8, 16, 32.

    Input: (B, 3, H, W) float32, normalised, H and W multiples of 32.
    Output: dict of (B, C_i, H / s_i, W / s_i) float32 with C_i from ``cfg.out_channels``.

    With ``channels_last`` set (see ``Mask2Anomaly.prepare_for_inference``) the input is
    converted to channels-last memory order, which oneDNN and cuDNN convolve faster; the
    features keep that order (same shapes and values).
    """

    channels_last: bool = False

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        eps = cfg.bn_eps
        self.stem = BasicStem(cfg.stem_out_channels, eps)
        in_ch = cfg.stem_out_channels
        out_ch = cfg.res2_out_channels
        bottleneck = cfg.num_groups * cfg.width_per_group
        self.stage_names = ("res2", "res3", "res4", "res5")
        for idx, (name, n_blocks) in enumerate(zip(self.stage_names, cfg.blocks_per_stage)):
            dilation = cfg.res5_dilation if name == "res5" else 1
            first_stride = 1 if idx == 0 or dilation == 2 else 2
            blocks = []
            for b in range(n_blocks):
                stride = first_stride if b == 0 else 1
                if cfg.depth in (18, 34):
                    blocks.append(BasicBlock(in_ch, out_ch, stride=stride, eps=eps))
                else:
                    blocks.append(BottleneckBlock(
                        in_ch, out_ch, bottleneck=bottleneck, stride=stride,
                        groups=cfg.num_groups, stride_in_1x1=cfg.stride_in_1x1,
                        dilation=dilation, eps=eps))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            out_ch *= 2
            bottleneck *= 2

    @property
    def out_channels(self) -> dict[str, int]:
        return self.cfg.out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out
