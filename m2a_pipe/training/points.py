"""Point sampling for the mask losses and the matching costs (Mask2Former / PointRend).

Masks are compared on a set of points instead of on the full grid: the matcher uses
points drawn uniformly at random, the loss uses *importance sampling* -- oversample
``k * N`` random points, keep the ``beta * N`` most uncertain (mask logit closest to 0)
and fill the rest uniformly at random.

Coordinates are normalised ``(x, y)`` in [0, 1] x [0, 1] over the whole mask (pixel
centres at ``(i + 0.5) / W``), so masks of different resolutions (predictions at 1/4,
targets at full resolution) are sampled at the same physical places.

Every uniform draw goes through :func:`uniform_points`, whose ``generator`` is either a
``torch.Generator`` or a :class:`RecordedDraws`: the draws of another implementation replayed
in call order, so that a loss can be compared with a reference term by term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NUM_POINTS = 12544  # 112 * 112, Mask2Former's TRAIN_NUM_POINTS
OVERSAMPLE_RATIO = 3.0
IMPORTANCE_SAMPLE_RATIO = 0.75
PADDINGS = ("zeros", "border")
"""``grid_sample`` padding of the outer half pixel: ``zeros`` (Mask2Former's ``point_sample``)
or ``border`` (the edge pixel)."""


class RecordedDraws:
    """Uniform draws recorded elsewhere, handed out in order (in place of a generator).

    Args: arrays -- float32 arrays or tensors in call order, each the (n, P, 2) result of one
    ``torch.rand`` call. Asking for another shape, or for more draws than recorded, raises
    ``ValueError``: the replay has left the recorded path.
    """

    def __init__(self, arrays) -> None:
        self.arrays = [torch.as_tensor(a, dtype=torch.float32) for a in arrays]
        self.used = 0

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.used >= len(self.arrays):
            raise ValueError(f"draw {self.used} of shape {tuple(shape)} asked, only {len(self.arrays)} recorded")
        out = self.arrays[self.used]
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"draw {self.used}: recorded shape {tuple(out.shape)}, asked {tuple(shape)}")
        self.used += 1
        return out


def point_sample(masks: torch.Tensor, coords: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Bilinear values of ``masks`` at ``coords`` (``grid_sample``, align_corners=False).

    Args:
        masks: (N, H, W) or (N, C, H, W) float.
        coords: (N, P, 2) normalised (x, y) in [0, 1].
        padding: ``"zeros"`` (Mask2Former: points in the outer half pixel blend the mask
            towards 0, so even a perfect prediction has a loss along the border and
            importance sampling favours it) or ``"border"`` (they read the edge pixel).

    Returns: (N, P) for 3-D ``masks``, (N, C, P) for 4-D ones, the dtype of ``masks``.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    squeeze = masks.dim() == 3
    if squeeze:
        masks = masks.unsqueeze(1)
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(masks.dtype)  # (N, P, 1, 2)
    out = F.grid_sample(masks, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    out = out.squeeze(3)
    return out.squeeze(1) if squeeze else out


def uniform_points(n: int, num_points: int, device: torch.device | str,
                   generator: torch.Generator | RecordedDraws | None = None) -> torch.Tensor:
    """(n, num_points, 2) float32 coordinates uniform in [0, 1)^2 (or the next recorded draw)."""
    if isinstance(generator, RecordedDraws):
        return generator.take((n, num_points, 2)).to(device)
    return torch.rand(n, num_points, 2, device=device, generator=generator)


def logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of a binary mask logit: ``-|logit|`` (highest at the decision boundary)."""
    return -logits.abs()


def importance_points(mask_logits: torch.Tensor, num_points: int = NUM_POINTS,
                      oversample_ratio: float = OVERSAMPLE_RATIO,
                      importance_ratio: float = IMPORTANCE_SAMPLE_RATIO,
                      generator: torch.Generator | RecordedDraws | None = None,
                      padding: str = "zeros") -> torch.Tensor:
    """Uncertainty-based importance sampling of point coordinates (no gradient).

    Args:
        mask_logits: (N, H, W) predicted mask logits (one per matched prediction).
        num_points: N_p points per mask.
        oversample_ratio: k >= 1; ``k * N_p`` candidates are drawn uniformly.
        importance_ratio: beta in [0, 1]; ``beta * N_p`` most uncertain candidates are kept,
            the rest are fresh uniform points.
        generator: torch generator (or :class:`RecordedDraws`) of the uniform draws: first the
            candidates, then the uniform part.
        padding: of the uncertainty's :func:`point_sample`.

    Returns: (N, num_points, 2) normalised (x, y) coordinates.
    """
    if oversample_ratio < 1 or not 0 <= importance_ratio <= 1:
        raise ValueError("oversample_ratio must be >= 1 and importance_ratio in [0, 1]")
    n = mask_logits.shape[0]
    device = mask_logits.device
    num_sampled = int(num_points * oversample_ratio)
    with torch.no_grad():
        candidates = uniform_points(n, num_sampled, device, generator)
        uncertainty = logit_uncertainty(point_sample(mask_logits.detach().float(), candidates, padding))
        num_uncertain = int(importance_ratio * num_points)
        num_random = num_points - num_uncertain
        idx = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
        chosen = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
        if num_random > 0:
            chosen = torch.cat([chosen, uniform_points(n, num_random, device, generator)], dim=1)
    return chosen
