"""Training recipes: one JSON file = one run (``train/*.json``, ``train/demo/*.json``).

A recipe names the model (a preset plus changes, or the config stored with initial
weights), the data, the augmentation, the losses, the solver and the bookkeeping::

    {
      "name": "demo_stage1", "stage": 1, "seed": 0,
      "model": {"preset": "small", "changes": {"preprocess": {"min_size_test": 512}}},
      "init_weights": null,
      "data": {"type": "synth", "root": "data/synth/train"},
      "outliers": null,
      "val": {"root": "data/synth/val", "every": 500, "max_images": 40},
      "augment": {"crop": [256, 512], "resize": "shortest_edge", "short_edges": [256, 512]},
      "anomaly_mix": {"placement": "image", "probability": 0.2},
      "loss": {"mode": "official", "outlier": null, "num_points": 12544},
      "solver": {"batch_size": 4, "max_steps": 3000, "lr": 1e-4, ...},
      "checkpoint_every": 250, "export": {"dtype": "float16"}
    }

Composition (:meth:`Recipe.load`):

* ``"extends": "PARENT.json"`` (a path relative to the recipe file) starts from the parent
  recipe (itself resolved the same way): the child's keys replace the parent's, tables
  (JSON objects) are merged key by key, anything else (lists, ``null``) is replaced whole.
  ``name`` and ``notes`` describe one file and are not inherited;
* overrides (``m2a-pipe train run RECIPE --set solver.max_steps=1000``) are applied to the
  resolved recipe, then the result is validated like any recipe.

``init_from`` documents where ``init_weights`` comes from when that file is not shipped: the
recipe whose run writes it (the trainer names it when the file is missing).

Every other path (data roots, ``init_weights``, ``init_from``) is relative to the current
directory, the repository root for the shipped recipes (the CLI's ``--data`` replaces
``data.root`` and, for stage 2, the default outlier folder ``<data>/outliers``).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from m2a_pipe.config import ConfigError, ModelConfig, preset
from m2a_pipe.training.anomaly_mix import AnomalyMixConfig
from m2a_pipe.training.augment import AugmentConfig
from m2a_pipe.training.losses import LOSS_MODES, OUTLIER_LAYERS
from m2a_pipe.training.outlier_loss import OUTLIER_RESOLUTIONS, OUTLIER_SCORES
from m2a_pipe.training.points import PADDINGS


@dataclass
class LossConfig:
    """Loss weights and options. ``mode`` (``official`` or ``project``, :data:`LOSS_MODES`)
    gives the value of every option left ``null``: point_padding, outlier_score,
    outlier_resolution, outlier_layers and margin (docs/TRAINING.md)."""

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
    mode: str = "official"
    margin: float | None = None  # official 1.0, paper (and project mode) 0.75
    outlier_resolution: str | None = None  # grid of the outlier loss: "crop", "mask" (1/4) or "input"
    point_padding: str | None = None  # "zeros" or "border"
    outlier_score: str | None = None  # "neg_g" (-g) or "one_minus_g" (1 - g)
    outlier_layers: str | None = None  # "all" outputs or the "last" only
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
    amp: bool = True  # CUDA only (a CPU run is float32)
    amp_dtype: str = "float16"  # with a gradient scaler (the official trainer), or "bfloat16"


@dataclass
class Recipe:
    name: str
    stage: int = 1
    seed: int = 0
    model: dict = field(default_factory=lambda: {"preset": "cityscapes-r50"})
    init_weights: str | None = None
    init_from: str | None = None  # the recipe whose run writes init_weights (documentation)
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

    source: ClassVar[str | None] = None
    """The file :meth:`load` read (set on the instance; not a recipe key)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        """Validate a recipe given as a dict (no ``extends``: see :meth:`load`)."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        for key, section in SECTIONS.items():
            if key not in d:
                continue
            if not isinstance(d[key], dict):
                raise ConfigError(f"recipe {key} must be a table (a JSON object), got {d[key]!r}")
            unknown |= {f"{key}.{k}" for k in set(d[key]) - set(section.__dataclass_fields__)}
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
        for key in ("init_weights", "init_from"):
            value = getattr(recipe, key)
            if value is not None and not (isinstance(value, str) and value):
                raise ConfigError(f"recipe {key} must be a path or null, got {value!r}")
        if recipe.stage not in (1, 2):
            raise ConfigError("recipe stage must be 1 or 2")
        if recipe.stage == 2 and recipe.loss.outlier is None:
            recipe.loss.outlier = "contrastive"
        resolve_loss_mode(recipe.loss)
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
    def load(cls, path: str | Path,
             overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> "Recipe":
        """The recipe in ``path``: its ``extends`` chain resolved (:func:`resolve_extends`),
        then ``overrides`` applied (dotted key -> value, :func:`apply_overrides`), then
        validated. Every error is a one-line :class:`ConfigError` that names the file."""
        path = Path(path)
        spec = resolve_extends(path)
        pairs = list(overrides.items() if isinstance(overrides, Mapping) else overrides)
        try:
            spec = apply_overrides(spec, pairs)
            if "name" not in spec:
                raise ConfigError("a recipe needs its own name (name is not inherited through extends)")
            recipe = cls.from_dict(spec)
        except ConfigError as err:
            where = f"{path} with --set {', '.join(k for k, _ in pairs)}" if pairs else str(path)
            raise ConfigError(f"{where}: {err}") from None
        recipe.source = str(path)
        return recipe

    def check_init_weights(self) -> None:
        """Raise a :class:`ConfigError` naming this recipe and the recipe that writes
        ``init_weights`` (``init_from``) when ``init_weights`` is set but is not a file."""
        if not self.init_weights or Path(self.init_weights).is_file():
            return
        where = self.source or f"recipe {self.name!r}"
        if self.init_from:
            how = f"it is written by a run of {self.init_from}: run that first"
        else:
            how = "the recipe names no init_from (the recipe that writes it)"
        raise ConfigError(f"{where}: init_weights {self.init_weights} not found; {how}, or pass --init FILE")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def resolve_loss_mode(loss: LossConfig) -> None:
    """Fill the options ``loss`` leaves ``None`` from its mode; check every option's value."""
    if loss.mode not in LOSS_MODES:
        raise ConfigError(f"recipe loss.mode must be one of {sorted(LOSS_MODES)}, got {loss.mode!r}")
    for key, value in LOSS_MODES[loss.mode].items():
        if getattr(loss, key) is None:
            setattr(loss, key, value)
    for key, allowed in (("outlier_resolution", OUTLIER_RESOLUTIONS), ("point_padding", PADDINGS),
                         ("outlier_score", OUTLIER_SCORES), ("outlier_layers", OUTLIER_LAYERS)):
        if getattr(loss, key) not in allowed:
            raise ConfigError(f"recipe loss.{key} must be one of {allowed}, got {getattr(loss, key)!r}")
    if loss.outlier == "bce" and (loss.outlier_resolution == "crop" or loss.outlier_score != "one_minus_g"):
        raise ConfigError("recipe loss.outlier bce needs loss.outlier_resolution mask or input "
                          "and loss.outlier_score one_minus_g")


def _merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` on top: tables merged key by key, other values replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


OWN_KEYS = ("name", "notes")
"""Keys that describe one recipe file and are not inherited through ``extends``."""

SECTIONS = {"augment": AugmentConfig, "anomaly_mix": AnomalyMixConfig, "loss": LossConfig,
            "solver": SolverConfig}
"""The recipe tables with a fixed set of keys (their dataclass)."""


def read_recipe_file(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, as written (no ``extends`` resolved)."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read recipe ({err.strerror or err})") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not a JSON recipe ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a JSON object, not {type(data).__name__}")
    return data


def extends_chain(path: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``[(path, its JSON), (its parent, ...), ...]`` following ``extends`` (relative to the
    file that names it). A missing parent or a cycle is a :class:`ConfigError` naming the files."""
    chain = [(Path(path), read_recipe_file(Path(path)))]
    while chain[-1][1].get("extends") is not None:
        child, ref = chain[-1][0], chain[-1][1]["extends"]
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{child}: extends must name a recipe file (relative to this one), got {ref!r}")
        parent = Path(os.path.normpath(child.parent / ref))
        if any(parent.resolve() == seen.resolve() for seen, _ in chain):
            loop = " -> ".join(str(p) for p in [*(seen for seen, _ in chain), parent])
            raise ConfigError(f"{child}: extends makes a cycle: {loop}")
        if not parent.is_file():
            raise ConfigError(f"{child}: extends {ref!r}, but there is no recipe file {parent}")
        chain.append((parent, read_recipe_file(parent)))
    return chain


def resolve_extends(path: str | Path) -> dict[str, Any]:
    """The recipe in ``path`` with its ``extends`` chain merged, farthest parent first: a
    child's keys replace its parent's, tables merged key by key; the parents' ``name`` and
    ``notes`` are dropped (:data:`OWN_KEYS`), and so is ``extends``."""
    chain = extends_chain(path)
    spec: dict[str, Any] = {}
    for i, (_, layer) in enumerate(reversed(chain)):
        own = i == len(chain) - 1
        spec = _merge(spec, {k: v for k, v in layer.items() if own or k not in OWN_KEYS})
    spec.pop("extends", None)
    return copy.deepcopy(spec)


def parse_override(text: str) -> tuple[str, Any]:
    """``"solver.max_steps=1000"`` -> ``("solver.max_steps", 1000)``: the value as JSON, else
    the bare string (``name=v6f``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. solver.max_steps=1000 or loss.outlier=bce")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def apply_overrides(spec: dict[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``spec`` with each dotted key set in turn (``loss.outlier_pixel_weight``).
    A missing table on the way is created (from the recipe's default for a top-level key),
    a value that is not a table is an error; unknown keys are left to the validation.
    Setting ``init_weights`` without ``init_from`` clears ``init_from`` (it named the old file's maker)."""
    out = copy.deepcopy(spec)
    keys = []
    for key, value in overrides:
        keys.append(key)
        *path, last = key.split(".")
        node = out
        for depth, part in enumerate(path):
            child = node.get(part)
            if child is None:
                child = node[part] = _default_table(part) if depth == 0 else {}
            elif not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"{where} is {child!r}, not a table for {key}")
            node = child
        node[last] = copy.deepcopy(value)
    if "init_weights" in keys and "init_from" not in keys:
        out["init_from"] = None
    return out


def _default_table(key: str) -> dict[str, Any]:
    """The default of a top-level recipe key that is a table (``model``, ``export``), else {}."""
    f = Recipe.__dataclass_fields__.get(key)
    default = f.default_factory() if f is not None and f.default_factory is not MISSING else None
    return dict(default) if isinstance(default, dict) else {}


def model_config(spec: dict) -> ModelConfig:
    """``{"preset": name, "changes": {...}}`` or a full ``ModelConfig.to_dict()``."""
    if "preset" in spec:
        base = preset(spec["preset"]).to_dict()
        return ModelConfig.from_dict(_merge(base, spec.get("changes", {})))
    return ModelConfig.from_dict(spec)
