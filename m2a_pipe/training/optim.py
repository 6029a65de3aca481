"""Optimiser, learning-rate schedule and gradient clipping (Mask2Former's solver).

* AdamW, base lr 1e-4 (stage 2: 1e-5), weight decay 0.05; backbone parameters at
  ``lr * 0.1``; no weight decay on normalisation parameters and on the query / level
  embeddings (detectron2 ``WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0``).
* Poly schedule ``lr_t = lr * (1 - t / T) ** 0.9`` (``WarmupPolyLR`` without warm-up).
* Gradient clipping of the full model's gradient 2-norm at 0.01: the official Mask2Former
  configs that Mask2Anomaly inherits set ``CLIP_GRADIENTS: {ENABLED: True, CLIP_TYPE:
  full_model, CLIP_VALUE: 0.01, NORM_TYPE: 2.0}``; the paper states no value, so we keep it.
"""

from __future__ import annotations

import torch
from torch import nn

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_multiplier: float = 0.1,
                 weight_decay_norm: float = 0.0, weight_decay_embed: float = 0.0) -> list[dict]:
    """AdamW parameter groups (trainable parameters only), each with its ``base_lr``."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            p_lr = lr * backbone_multiplier if module_name.startswith("backbone") else lr
            if isinstance(module, NORM_TYPES):
                wd = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                wd = weight_decay_embed
            else:
                wd = weight_decay
            groups.setdefault((p_lr, wd), []).append(param)
    return [{"params": ps, "lr": g_lr, "base_lr": g_lr, "weight_decay": wd}
            for (g_lr, wd), ps in groups.items()]


class PolySchedule:
    """``lr = base_lr * (1 - step / max_steps) ** power`` set on every group each step."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_steps: int, power: float = 0.9) -> None:
        self.optimizer = optimizer
        self.max_steps = max(1, int(max_steps))
        self.power = power
        self.step_num = 0

    def factor(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.max_steps) ** self.power

    def set_step(self, step: int) -> float:
        """Apply the rate of ``step``; returns the base group's lr multiplier."""
        self.step_num = step
        f = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * f
        return f

    def state_dict(self) -> dict:
        return {"max_steps": self.max_steps, "power": self.power, "step_num": self.step_num}

    def load_state_dict(self, state: dict) -> None:
        self.max_steps, self.power = int(state["max_steps"]), float(state["power"])
        self.set_step(int(state["step_num"]))


def clip_gradients(model: nn.Module, max_norm: float | None) -> float:
    """Clip the full model's gradient 2-norm to ``max_norm`` (None/0: no clipping).
    Returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if not max_norm:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def freeze_backbone(model: nn.Module) -> None:
    """No gradient for the backbone (Sec. 7.3: the encoder is frozen); see :func:`backbone_eval`."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)


def freeze_backbone_norms(model: nn.Module) -> None:
    """FrozenBN: the backbone's batch norms keep their statistics and affine parameters."""
    for m in model.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            for p in m.parameters():
                p.requires_grad_(False)


def backbone_eval(model: nn.Module) -> None:
    """Put the backbone's batch norms in eval mode (after ``model.train()``)."""
    for m in model.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
