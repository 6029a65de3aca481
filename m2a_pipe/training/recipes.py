"""Training recipes: one JSON file = one run (``train/*.json``).

A recipe names the model (a preset plus changes, or the config stored with initial
weights), the data, the augmentation, the losses, the solver and the bookkeeping::

    {
      "name": "demo_stage1", "stage": 1, "seed": 0,
      "model": {"preset": "small", "changes": {"preprocess": {"min_size_test": 512}}},
      "init_weights": null,
      "data": {"type": "synth", "root": "data/synth/train"},
      "outliers": null,
      "val": {"root": "data/synth/val", "every": 500, "max_images": 40},
      "augment": {"crop": [256, 512], "min_scale": 0.1, "max_scale": 2.0},
      "anomaly_mix": {"probability": 0.2},
      "loss": {"outlier": null, "margin": 0.75, "num_points": 12544},
      "solver": {"batch_size": 4, "max_steps": 3000, "lr": 1e-4, ...},
      "checkpoint_every": 250, "export": {"dtype": "float16"}
    }

Relative paths are resolved against the current directory (the CLI's ``--data`` replaces
``data.root`` and, for stage 2, the default outlier folder ``<data>/outliers``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from m2a_pipe.config import ConfigError, ModelConfig, preset
from m2a_pipe.training.anomaly_mix import AnomalyMixConfig
from m2a_pipe.training.augment import AugmentConfig
from m2a_pipe.training.losses import OUTLIER_RESOLUTIONS


@dataclass
class LossConfig:
    ce: float = 2.0
    mask: float = 5.0
    dice: float = 5.0
    no_object: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    deep_supervision: bool = True
    outlier: str | None = None  # None, "contrastive" (Eq. 10-12) or "bce" (Eq. 26-27)
    outlier_weight: float = 1.0
    margin: float = 0.75
    outlier_resolution: str = "mask"  # grid of the outlier loss: "mask" (1/4) or "input"
    hard_inlier_fraction: float = 1.0  # contrastive loss: mean over this share of the hardest known pixels
    outlier_pixel_weight: float = 1.0  # contrastive loss: weight of its outlier-pixel term


@dataclass
class SolverConfig:
    batch_size: int = 16
    max_steps: int = 90000
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_multiplier: float = 0.1
    poly_power: float = 0.9
    clip_norm: float | None = 0.01
    freeze_backbone: bool = False
    amp: bool = True  # CUDA only
    amp_dtype: str = "bfloat16"  # or "float16" (with a gradient scaler)


@dataclass
class Recipe:
    name: str
    stage: int = 1
    seed: int = 0
    model: dict = field(default_factory=lambda: {"preset": "cityscapes-r50"})
    init_weights: str | None = None
    data: dict = field(default_factory=dict)
    outliers: dict | None = None
    val: dict | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    anomaly_mix: AnomalyMixConfig = field(default_factory=AnomalyMixConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    num_workers: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 1
    export: dict = field(default_factory=lambda: {"dtype": "float32", "name": "final.safetensors"})
    notes: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown recipe keys: {sorted(unknown)}")
        d = dict(d)
        try:
            if "augment" in d:
                d["augment"] = AugmentConfig.from_dict(d["augment"])
            if "anomaly_mix" in d:
                d["anomaly_mix"] = AnomalyMixConfig.from_dict(d["anomaly_mix"])
            if "loss" in d:
                d["loss"] = LossConfig(**d["loss"])
            if "solver" in d:
                d["solver"] = SolverConfig(**d["solver"])
            recipe = cls(**d)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"bad recipe: {err}") from None
        if recipe.stage not in (1, 2):
            raise ConfigError("recipe stage must be 1 or 2")
        if recipe.stage == 2 and recipe.loss.outlier is None:
            recipe.loss.outlier = "contrastive"
        if recipe.loss.outlier_resolution not in OUTLIER_RESOLUTIONS:
            raise ConfigError(f"recipe loss.outlier_resolution must be one of {OUTLIER_RESOLUTIONS}, "
                              f"got {recipe.loss.outlier_resolution!r}")
        f = recipe.loss.hard_inlier_fraction
        if not 0.0 < f <= 1.0:
            raise ConfigError(f"recipe loss.hard_inlier_fraction must be in (0, 1], got {f}")
        if f < 1.0 and (recipe.stage != 2 or recipe.loss.outlier != "contrastive"):
            raise ConfigError("recipe loss.hard_inlier_fraction needs stage 2 with the contrastive outlier loss")
        w = recipe.loss.outlier_pixel_weight
        if not w > 0.0:
            raise ConfigError(f"recipe loss.outlier_pixel_weight must be > 0, got {w}")
        if w != 1.0 and (recipe.stage != 2 or recipe.loss.outlier != "contrastive"):
            raise ConfigError("recipe loss.outlier_pixel_weight needs stage 2 with the contrastive outlier loss")
        return recipe

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read recipe ({err})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def model_config(spec: dict) -> ModelConfig:
    """``{"preset": name, "changes": {...}}`` or a full ``ModelConfig.to_dict()``."""
    if "preset" in spec:
        base = preset(spec["preset"]).to_dict()
        return ModelConfig.from_dict(_merge(base, spec.get("changes", {})))
    return ModelConfig.from_dict(spec)
