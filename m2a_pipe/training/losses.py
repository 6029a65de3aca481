"""Training losses of Mask2Anomaly.

Stage 1 (closed set), for every decoder layer (deep supervision, Sec. 3):

* Eq. 1: ``L_masks = 5.0 * L_bce + 5.0 * L_dice`` between each matched prediction and its
  target mask, on ``N_p = 12544`` importance-sampled points (oversample 3, importance 0.75),
  each summed over matched pairs and divided by the number of target masks in the batch;
* Eq. 2: ``L = L_masks + 2.0 * L_ce``, the cross-entropy over all Q queries with the
  no-object class weighted 0.1 (``criterion.empty_weight``).

Stage 2 (outlier fine-tuning) adds, on every output (official) or the last one only:

* Eq. 10-12 (:func:`~m2a_pipe.training.outlier_loss.mask_contrastive_loss`), or
* Eq. 26-27 (:func:`~m2a_pipe.training.outlier_loss.outlier_bce_loss`), the appendix variant.

:data:`LOSS_MODES` name two sets of choices: ``official`` -- the official criterion term by
term (points sampled with zero padding, score ``-g``, margin from the recipe, the padded grid
stretched onto the crop, the outlier loss on every output); ``project`` -- the choices this
project trained its demo weights with (border padding, ``1 - g``, the 1/4 grid, the last
output only). docs/TRAINING.md lists every difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from m2a_pipe.training.matcher import HungarianMatcher
from m2a_pipe.training.outlier_loss import (
    OFFICIAL_MARGIN,
    OUTLIER_RESOLUTIONS,
    OUTLIER_SCORES,
    PAPER_MARGIN,
    mask_contrastive_loss,
    outlier_bce_loss,
)
from m2a_pipe.training.points import (
    IMPORTANCE_SAMPLE_RATIO,
    NUM_POINTS,
    OVERSAMPLE_RATIO,
    PADDINGS,
    RecordedDraws,
    importance_points,
    point_sample,
)

OUTLIER_LAYERS = ("all", "last")
LOSS_MODES = {
    "official": {"point_padding": "zeros", "outlier_score": "neg_g", "outlier_resolution": "crop",
                 "outlier_layers": "all", "margin": OFFICIAL_MARGIN},
    "project": {"point_padding": "border", "outlier_score": "one_minus_g", "outlier_resolution": "mask",
                "outlier_layers": "last", "margin": PAPER_MARGIN},
}
"""Each mode's value of the loss options a recipe leaves unset (``null``)."""


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """L_bce of Eq. 1: mean over points, summed over masks, divided by ``num_masks``.
    Args: logits, targets (N, P)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """L_dice of Eq. 1 (+1 smoothing), summed over masks, divided by ``num_masks``.
    Args: logits, targets (N, P)."""
    x = logits.sigmoid()
    numerator = 2 * (x * targets).sum(-1)
    denominator = x.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


@dataclass
class LossWeights:
    ce: float = 2.0
    mask: float = 5.0
    dice: float = 5.0
    no_object: float = 0.1
    outlier: float = 1.0


class SetCriterion(torch.nn.Module):
    """Eq. 1-2 with deep supervision, plus the stage-2 outlier loss.

    Args:
        num_classes: K.
        weights: loss weights (:class:`LossWeights`, the paper's by default).
        matcher: the Hungarian matcher (its own cost weights and padding).
        num_points, oversample_ratio, importance_ratio: point sampling of the mask losses.
        deep_supervision: also supervise every ``aux_outputs`` entry.
        outlier_loss: None (stage 1), ``"contrastive"`` (Eq. 10-12) or ``"bce"`` (Eq. 26-27).
        margin: the contrastive margin m (official 1.0, paper 0.75).
        outlier_resolution: grid of the outlier loss, ``"crop"`` (official), ``"mask"`` or
            ``"input"`` (:mod:`~m2a_pipe.training.outlier_loss`).
        hard_inlier_fraction, outlier_pixel_weight: project options of the contrastive loss
            (1.0 = the paper and the official code).
        point_padding: ``"zeros"`` (official) or ``"border"`` for the loss points.
        outlier_score: ``"neg_g"`` (official, Eq. 10) or ``"one_minus_g"`` (Eq. 5).
        outlier_layers: ``"all"`` outputs (official) or the ``"last"`` only.
    """

    def __init__(self, num_classes: int, weights: LossWeights | None = None,
                 matcher: HungarianMatcher | None = None, num_points: int = NUM_POINTS,
                 oversample_ratio: float = OVERSAMPLE_RATIO,
                 importance_ratio: float = IMPORTANCE_SAMPLE_RATIO, deep_supervision: bool = True,
                 outlier_loss: str | None = None, margin: float = OFFICIAL_MARGIN,
                 outlier_resolution: str = "crop", hard_inlier_fraction: float = 1.0,
                 outlier_pixel_weight: float = 1.0, point_padding: str = "zeros",
                 outlier_score: str = "neg_g", outlier_layers: str = "all") -> None:
        super().__init__()
        if outlier_loss not in (None, "contrastive", "bce"):
            raise ValueError(f"outlier_loss must be None, 'contrastive' or 'bce', got {outlier_loss!r}")
        for name, value, allowed in (("outlier_resolution", outlier_resolution, OUTLIER_RESOLUTIONS),
                                     ("point_padding", point_padding, PADDINGS),
                                     ("outlier_score", outlier_score, OUTLIER_SCORES),
                                     ("outlier_layers", outlier_layers, OUTLIER_LAYERS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if outlier_loss == "bce" and (outlier_resolution == "crop" or outlier_score != "one_minus_g"):
            raise ValueError("the bce outlier loss takes outlier_resolution 'mask' or 'input' and score 'one_minus_g'")
        if not 0.0 < hard_inlier_fraction <= 1.0:
            raise ValueError(f"hard_inlier_fraction must be in (0, 1], got {hard_inlier_fraction}")
        if hard_inlier_fraction < 1.0 and outlier_loss != "contrastive":
            raise ValueError("hard_inlier_fraction applies to the contrastive outlier loss only")
        if not outlier_pixel_weight > 0.0:
            raise ValueError(f"outlier_pixel_weight must be > 0, got {outlier_pixel_weight}")
        if outlier_pixel_weight != 1.0 and outlier_loss != "contrastive":
            raise ValueError("outlier_pixel_weight applies to the contrastive outlier loss only")
        self.num_classes = num_classes
        self.weights = weights or LossWeights()
        self.matcher = matcher or HungarianMatcher(num_points=num_points, padding=point_padding)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_ratio = importance_ratio
        self.deep_supervision = deep_supervision
        self.outlier_loss = outlier_loss
        self.margin = margin
        self.outlier_resolution = outlier_resolution
        self.hard_inlier_fraction = hard_inlier_fraction
        self.outlier_pixel_weight = outlier_pixel_weight
        self.point_padding = point_padding
        self.outlier_score = outlier_score
        self.outlier_layers = outlier_layers
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = self.weights.no_object
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def loss_labels(self, pred_logits: torch.Tensor, targets: list[dict],
                    indices: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """L_ce of Eq. 2 over all B x Q queries (unmatched ones target no-object)."""
        b, q, _ = pred_logits.shape
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64, device=pred_logits.device)
        for i, ((src, tgt), target) in enumerate(zip(indices, targets)):
            target_classes[i, src.to(pred_logits.device)] = target["labels"][tgt].to(pred_logits.device)
        return F.cross_entropy(pred_logits.float().transpose(1, 2), target_classes,
                               self.empty_weight.to(pred_logits.device))

    def loss_masks(self, pred_masks: torch.Tensor, targets: list[dict],
                   indices: list[tuple[torch.Tensor, torch.Tensor]], num_masks: float,
                   generator: torch.Generator | RecordedDraws | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_bce, L_dice) of Eq. 1 on importance-sampled points of the matched pairs."""
        src = torch.cat([pred_masks[i, s.to(pred_masks.device)] for i, (s, _) in enumerate(indices)])
        if src.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return zero, zero
        tgt = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src.device)
        src = src.float()
        coords = importance_points(src, self.num_points, self.oversample_ratio,
                                   self.importance_ratio, generator, self.point_padding)
        with torch.no_grad():
            labels = point_sample(tgt.float(), coords, self.point_padding)
        logits = point_sample(src, coords, self.point_padding)
        return sigmoid_bce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    def loss_outlier(self, outputs: dict, ood: torch.Tensor,
                     image_sizes: torch.Tensor | None) -> torch.Tensor:
        """The unweighted outlier term of one output (Eq. 10-12 or Eq. 26-27)."""
        args = (outputs["pred_logits"], outputs["pred_masks"], ood.to(outputs["pred_masks"].device))
        if self.outlier_loss == "bce":
            return outlier_bce_loss(*args, resolution=self.outlier_resolution)
        return mask_contrastive_loss(*args, margin=self.margin, resolution=self.outlier_resolution,
                                     hard_inlier_fraction=self.hard_inlier_fraction,
                                     outlier_pixel_weight=self.outlier_pixel_weight,
                                     score=self.outlier_score, image_sizes=image_sizes)

    def per_output(self, outputs: dict, targets: list[dict], ood: torch.Tensor | None = None,
                   image_sizes: torch.Tensor | None = None,
                   generator: torch.Generator | RecordedDraws | None = None) -> list[dict]:
        """The unweighted terms of every supervised output, in the official order (the final
        output, then ``aux_outputs`` in list order; each matched, then its mask points drawn).

        Args: as :meth:`forward`.

        Returns: one dict per output: ``name`` (``final``, ``aux_0`` ...), ``indices`` (the
        matching, B pairs (pred_idx, tgt_idx)), ``ce``, ``mask``, ``dice`` and, where the
        outlier loss applies to that output, ``outlier`` (scalars).
        """
        if self.outlier_loss is not None and ood is None:
            raise ValueError("the outlier loss needs the outlier mask `ood`")
        num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        layers = [("final", outputs)]
        if self.deep_supervision:
            layers += [(f"aux_{i}", layer) for i, layer in enumerate(outputs.get("aux_outputs", []))]
        result = []
        for name, layer in layers:
            indices = self.matcher(layer, targets, generator)
            bce, dice = self.loss_masks(layer["pred_masks"], targets, indices, num_masks, generator)
            terms = {"name": name, "indices": indices,
                     "ce": self.loss_labels(layer["pred_logits"], targets, indices), "mask": bce, "dice": dice}
            if self.outlier_loss is not None and (self.outlier_layers == "all" or name == "final"):
                terms["outlier"] = self.loss_outlier(layer, ood, image_sizes)
            result.append(terms)
        return result

    def forward(self, outputs: dict, targets: list[dict], ood: torch.Tensor | None = None,
                generator: torch.Generator | RecordedDraws | None = None,
                image_sizes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All losses of a batch, weighted (Eq. 2, Eq. 12).

        Args:
            outputs: the model's dict (``pred_logits``, ``pred_masks``, ``aux_outputs``).
            targets: B dicts, ``labels`` (T_b,) int64 and ``masks`` (T_b, Hp, Wp) binary, at the
                padded input size (padding False).
            ood: (B, Hp, Wp) uint8 outlier mask, needed when ``outlier_loss`` is set.
            generator: torch generator (or :class:`RecordedDraws`) of the point draws.
            image_sizes: (B, 2) int unpadded (H, W) of each image (for the ``crop`` geometry;
                None = the padded size).

        Returns: dict of weighted scalars ``ce``, ``mask``, ``dice`` (final output), ``aux``
        (the Eq. 1-2 terms of the earlier outputs), ``outlier`` (the outlier terms of every
        output they apply to; 0 in stage 1) and the total ``loss``.
        """
        w = self.weights
        out = {k: outputs["pred_logits"].new_zeros((), dtype=torch.float32)
               for k in ("ce", "mask", "dice", "aux", "outlier")}
        for terms in self.per_output(outputs, targets, ood, image_sizes, generator):
            weighted = {"ce": w.ce * terms["ce"], "mask": w.mask * terms["mask"], "dice": w.dice * terms["dice"]}
            if terms["name"] == "final":
                out.update(weighted)
            else:
                out["aux"] = out["aux"] + sum(weighted.values())
            if "outlier" in terms:
                out["outlier"] = out["outlier"] + w.outlier * terms["outlier"]
        out["loss"] = out["ce"] + out["mask"] + out["dice"] + out["aux"] + out["outlier"]
        return out
