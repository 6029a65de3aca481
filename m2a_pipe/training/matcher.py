"""Hungarian matching of the Q predictions of an image to its T target masks (Sec. 3).

The cost of assigning prediction q to target t is

    C[q, t] = w_mask  * mean_p BCE(sigmoid(M_q(p)), m_t(p))
            + w_class * (-softmax(C_q)[label_t])
            + w_dice  * (1 - dice(sigmoid(M_q), m_t))

with the mask terms evaluated on the same ``num_points`` points drawn uniformly at random
for all predictions and targets of the image (Mask2Former's matcher). The assignment
minimising the total cost is found by ``scipy.optimize.linear_sum_assignment``;
predictions left unmatched are supervised as "no object".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from m2a_pipe.training.points import NUM_POINTS, RecordedDraws, point_sample, uniform_points


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args: logits (Q, P) mask logits; targets (T, P) in [0, 1].
    Returns: (Q, T) ``mean_p BCE(sigmoid(logits[q]), targets[t])``.
    """
    p = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / p


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every prediction against every target (+1 smoothing).

    Args: logits (Q, P); targets (T, P). Returns: (Q, T) ``1 - (2|x.t| + 1) / (|x| + |t| + 1)``.
    """
    x = logits.sigmoid()
    numerator = 2 * x @ targets.T
    denominator = x.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@dataclass
class HungarianMatcher:
    """Matching costs (class 2.0, mask BCE 5.0, dice 5.0) on ``num_points`` uniform points,
    sampled with ``padding`` (:func:`~m2a_pipe.training.points.point_sample`)."""

    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    num_points: int = NUM_POINTS
    padding: str = "zeros"

    def cost_matrix(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                    labels: torch.Tensor, masks: torch.Tensor,
                    generator: torch.Generator | RecordedDraws | None = None) -> torch.Tensor:
        """Matching cost of one image.

        Args:
            pred_logits: (Q, K+1) class logits; pred_masks: (Q, h, w) mask logits.
            labels: (T,) int64 target classes; masks: (T, H, W) binary target masks.
            generator: draws the shared random points.

        Returns: (Q, T) float32 cost on the CPU.
        """
        q = pred_logits.shape[0]
        if labels.numel() == 0:
            return torch.zeros(q, 0)
        prob = pred_logits.float().softmax(-1)
        cost_class = -prob[:, labels]
        coords = uniform_points(1, self.num_points, pred_masks.device, generator)
        out = point_sample(pred_masks.float().unsqueeze(0), coords, self.padding)[0]  # (Q, P)
        tgt = point_sample(masks.to(out.dtype).unsqueeze(0), coords, self.padding)[0]  # (T, P)
        cost = (self.cost_mask * pairwise_sigmoid_bce(out, tgt)
                + self.cost_class * cost_class
                + self.cost_dice * pairwise_dice(out, tgt))
        return cost.cpu()

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: list[dict],
                 generator: torch.Generator | RecordedDraws | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match a batch.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, h, w).
            targets: B dicts with ``labels`` (T_b,) int64 and ``masks`` (T_b, H, W).

        Returns: B pairs ``(pred_idx, tgt_idx)`` of int64 tensors of length min(Q, T_b):
        prediction ``pred_idx[i]`` is matched to target ``tgt_idx[i]``.
        """
        result = []
        for b, target in enumerate(targets):
            cost = self.cost_matrix(outputs["pred_logits"][b], outputs["pred_masks"][b],
                                    target["labels"], target["masks"], generator)
            rows, cols = hungarian(cost)
            result.append((rows, cols))
        return result


def hungarian(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of a (Q, T) cost matrix (rows sorted ascending)."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    c = np.nan_to_num(cost.double().numpy(), nan=1e9, posinf=1e9, neginf=-1e9)
    rows, cols = linear_sum_assignment(c)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
