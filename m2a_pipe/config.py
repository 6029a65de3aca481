"""Model configuration: every hyper-parameter of a Mask2Anomaly network in one place.

A :class:`ModelConfig` is plain data. It is stored beside every weight file the project
writes, so a checkpoint always carries the architecture, class names, thing/stuff split
and preprocessing it was trained with. It can be built from

* a preset (:data:`PRESETS`: the paper's Cityscapes R50 model and a small one),
* a dict (``ModelConfig.from_dict`` / ``to_dict``, the JSON stored with weights),
* the reference ``config.json`` written beside an official checkpoint export
  (``ModelConfig.from_reference_json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from m2a_pipe.errors import UsageError

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)
"""The 19 Cityscapes train ids, in order (0 = road ... 18 = bicycle)."""

CITYSCAPES_THING_IDS: tuple[int, ...] = tuple(range(11, 19))
"""Cityscapes "things" (person ... bicycle); ids 0..10 are "stuff"."""

CITYSCAPES_REFINE_IDS: tuple[int, ...] = tuple(range(2, 11))
"""Classes whose confident masks the refinement (Eq. 13) zeroes: stuff except road and
sidewalk, exactly the official rule ``labels > 1 and labels < 11``."""

PIXEL_MEAN_RGB: tuple[float, float, float] = (123.675, 116.280, 103.530)
PIXEL_STD_RGB: tuple[float, float, float] = (58.395, 57.120, 57.375)

BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}


class ConfigError(UsageError):
    """A configuration value is missing, unknown or inconsistent."""


MAX_TEST_SIZE = 4096
"""Largest network input side a stored config may ask for (``min_size_test``,
``max_size_test``): a tampered file cannot make the model allocate without bound."""

_LIMITS: dict[str, tuple[float, float]] = {
    "backbone.stem_out_channels": (1, 4096), "backbone.res2_out_channels": (1, 8192),
    "backbone.num_groups": (1, 1024), "backbone.width_per_group": (1, 4096), "backbone.freeze_at": (0, 5),
    "backbone.bn_eps": (1e-12, 1.0),
    "pixel_decoder.conv_dim": (1, 4096), "pixel_decoder.mask_dim": (1, 4096), "pixel_decoder.gn_groups": (1, 4096),
    "pixel_decoder.enc_layers": (0, 64), "pixel_decoder.nheads": (1, 256),
    "pixel_decoder.dim_feedforward": (1, 65536), "pixel_decoder.n_points": (1, 64),
    "pixel_decoder.common_stride": (1, 64),
    "decoder.hidden_dim": (1, 4096), "decoder.num_queries": (1, 10000), "decoder.nheads": (1, 256),
    "decoder.dim_feedforward": (1, 65536), "decoder.dec_layers": (1, 100),
    "preprocess.size_divisibility": (1, 1024), "preprocess.min_size_test": (32, MAX_TEST_SIZE),
    "preprocess.max_size_test": (32, MAX_TEST_SIZE), "preprocess.pixel_mean": (-1e4, 1e4),
    "preprocess.pixel_std": (1e-6, 1e4), "keep_threshold": (0.0, 1.0), "thing_ids": (0, 10000),
    "refine_ids": (0, 10000),
}
"""Closed ranges of the numeric settings (and of each item of the tuple ones)."""


def _check_value(name: str, kind: str, value: Any) -> None:
    """One value against its annotated kind (int, float, bool, str) and :data:`_LIMITS`."""
    if kind == "bool":
        good = isinstance(value, bool)
    elif kind == "str":
        good = isinstance(value, str)
    elif kind == "int":
        good = isinstance(value, int) and not isinstance(value, bool)
    else:
        good = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not good:
        words = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "text"}[kind]
        raise ConfigError(f"model config {name}: must be {words}, got {value!r}")
    if name in _LIMITS:
        lo, hi = _LIMITS[name]
        if not lo <= value <= hi:
            raise ConfigError(f"model config {name}: must be in [{lo:g}, {hi:g}], got {value!r}")


def _check_fields(config: Any, prefix: str = "") -> None:
    """Every field of ``config`` (a dataclass of this module) has its annotated type, finite
    and in range: ``int``, ``float``, ``bool``, ``str`` or a tuple of them. Raises
    ConfigError naming the field (``model config decoder.nheads: must be in [1, 256], got 0``)."""
    for f in fields(config):
        name, kind, value = prefix + f.name, str(f.type), getattr(config, f.name)
        if not kind.startswith("tuple["):
            if kind in ("int", "float", "bool", "str"):
                _check_value(name, kind, value)
            continue
        items = kind[len("tuple["):-1].split(", ")
        if not isinstance(value, tuple) or (items[-1] != "..." and len(value) != len(items)):
            count = "a list" if items[-1] == "..." else f"a list of {len(items)}"
            raise ConfigError(f"model config {name}: must be {count}, got {value!r}")
        for i, item in enumerate(value):
            _check_value(f"{name}[{i}]" if name not in _LIMITS else name, items[0], item)


@dataclass(frozen=True)
class BackboneConfig:
    """detectron2 ResNet (``build_resnet_backbone``) hyper-parameters."""

    depth: int = 50
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    num_groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = False
    res5_dilation: int = 1
    norm: str = "BN"  # "BN" or "FrozenBN"; both are frozen affine maps at inference
    freeze_at: int = 0
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_fields(self, "backbone.")
        if self.depth not in BLOCKS_PER_STAGE:
            raise ConfigError(f"backbone.depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {self.depth}")
        if self.depth in (18, 34) and self.res2_out_channels != 64:
            raise ConfigError("ResNet-18/34 (basic blocks) need res2_out_channels == 64")
        if self.res5_dilation not in (1, 2):
            raise ConfigError(f"backbone.res5_dilation must be 1 or 2, got {self.res5_dilation}")

    @property
    def blocks_per_stage(self) -> tuple[int, int, int, int]:
        return BLOCKS_PER_STAGE[self.depth]

    @property
    def out_channels(self) -> dict[str, int]:
        """Channels of res2..res5."""
        return {f"res{i + 2}": self.res2_out_channels * 2**i for i in range(4)}


@dataclass(frozen=True)
class PixelDecoderConfig:
    """``MSDeformAttnPixelDecoder``: deformable encoder on res3-res5, FPN down to res2."""

    conv_dim: int = 256
    mask_dim: int = 256
    gn_groups: int = 32
    enc_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 1024  # hard-coded in the official code
    n_points: int = 4  # hard-coded in the official code
    common_stride: int = 4

    def __post_init__(self) -> None:
        _check_fields(self, "pixel_decoder.")
        if self.conv_dim % self.nheads:
            raise ConfigError(f"pixel_decoder.conv_dim {self.conv_dim} not divisible by nheads {self.nheads}")
        if self.conv_dim % self.gn_groups:
            raise ConfigError(f"pixel_decoder.conv_dim {self.conv_dim} not divisible by gn_groups {self.gn_groups}")


@dataclass(frozen=True)
class DecoderConfig:
    """Masked-attention transformer decoder.

    ``dec_layers`` follows the official ``DEC_LAYERS``: the number of predictions, i.e.
    transformer layers + 1 (the prediction made from the learnable queries alone).
    ``attention`` selects global masked attention (Mask2Anomaly, Eq. 8-9) or plain masked
    attention (Mask2Former, Eq. 6-7).
    """

    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 10
    pre_norm: bool = False
    enforce_input_proj: bool = False
    attention: str = "global"  # "global" (GMA) or "masked"

    def __post_init__(self) -> None:
        _check_fields(self, "decoder.")
        if self.dec_layers < 1:
            raise ConfigError("decoder.dec_layers must be >= 1")
        if self.attention not in ("global", "masked"):
            raise ConfigError(f"decoder.attention must be 'global' or 'masked', got {self.attention!r}")
        if self.hidden_dim % self.nheads:
            raise ConfigError(f"decoder.hidden_dim {self.hidden_dim} not divisible by nheads {self.nheads}")

    @property
    def num_layers(self) -> int:
        """Transformer layers (``DEC_LAYERS - 1``)."""
        return self.dec_layers - 1


@dataclass(frozen=True)
class PreprocessConfig:
    """What the model expects of its input (official test-time behaviour)."""

    pixel_mean: tuple[float, float, float] = PIXEL_MEAN_RGB
    pixel_std: tuple[float, float, float] = PIXEL_STD_RGB
    size_divisibility: int = 32
    min_size_test: int = 1024
    max_size_test: int = 2048

    def __post_init__(self) -> None:
        _check_fields(self, "preprocess.")
        if self.max_size_test < self.min_size_test:
            raise ConfigError(f"model config preprocess.max_size_test {self.max_size_test} is smaller than "
                              f"min_size_test {self.min_size_test}")


@dataclass(frozen=True)
class ModelConfig:
    """A whole Mask2Anomaly network: architecture, label space and preprocessing."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    class_names: tuple[str, ...] = CITYSCAPES_CLASSES
    thing_ids: tuple[int, ...] = CITYSCAPES_THING_IDS
    refine_ids: tuple[int, ...] = CITYSCAPES_REFINE_IDS
    keep_threshold: float = 0.95  # class confidence a query needs to enter the refinement

    def __post_init__(self) -> None:
        _check_fields(self)
        for name, kind in (("backbone", BackboneConfig), ("pixel_decoder", PixelDecoderConfig),
                           ("decoder", DecoderConfig), ("preprocess", PreprocessConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"model config {name}: must be a JSON object, got {getattr(self, name)!r}")
        if not self.class_names:
            raise ConfigError("model config class_names: must list at least one class")
        k = self.num_classes
        for name in ("thing_ids", "refine_ids"):
            bad = [i for i in getattr(self, name) if not 0 <= i < k]
            if bad:
                raise ConfigError(f"{name} {bad} out of range for {k} classes")

    @property
    def num_classes(self) -> int:
        """K, the known classes (the class head has K + 1 outputs, the last = no-object)."""
        return len(self.class_names)

    @property
    def stuff_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_classes) if i not in set(self.thing_ids))

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys, wrong types and values out of range are
        an error naming the field."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config: must be a JSON object, got {type(data).__name__}")
        sub = {"backbone": BackboneConfig, "pixel_decoder": PixelDecoderConfig,
               "decoder": DecoderConfig, "preprocess": PreprocessConfig}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        for key, value in data.items():
            if key in sub:
                kwargs[key] = _build(sub[key], value, key)
            elif isinstance(value, list):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_reference_json(cls, path: str | Path) -> "ModelConfig":
        """Build from the ``config.json`` written beside an official checkpoint export
        (the golden reference layout: ``architecture.{backbone,pixel_decoder,
        transformer_decoder}``, ``num_classes`` and ``preprocessing``)."""
        ref = json.loads(Path(path).read_text())
        arch = ref["architecture"]
        bb, pd, td = arch["backbone"], arch["pixel_decoder"], arch["transformer_decoder"]
        pre = ref.get("preprocessing", {})
        pred = pre.get("predictor", {})
        k = int(arch["num_classes"])
        if k == len(CITYSCAPES_CLASSES):
            names, things, refine = CITYSCAPES_CLASSES, CITYSCAPES_THING_IDS, CITYSCAPES_REFINE_IDS
        else:
            names, things, refine = tuple(f"class_{i}" for i in range(k)), (), ()
        name = str(td.get("name", "MultiScaleMaskedTransformerDecoder_GMA"))
        return cls(
            backbone=BackboneConfig(
                depth=int(bb["depth"]),
                stem_out_channels=int(bb.get("stem_out_channels", 64)),
                res2_out_channels=int(bb.get("res2_out_channels", 256)),
                num_groups=int(bb.get("num_groups", 1)),
                width_per_group=int(bb.get("width_per_group", 64)),
                stride_in_1x1=bool(bb.get("stride_in_1x1", False)),
                res5_dilation=int(bb.get("res5_dilation", 1)),
                norm=str(bb.get("norm", "BN")),
                freeze_at=int(bb.get("freeze_at", 0)),
                bn_eps=float(bb.get("bn_eps", 1e-5)),
            ),
            pixel_decoder=PixelDecoderConfig(
                conv_dim=int(pd["conv_dim"]),
                mask_dim=int(pd["mask_dim"]),
                gn_groups=int(pd.get("gn_groups", 32)),
                enc_layers=int(pd["transformer_enc_layers"]),
                nheads=int(pd["transformer_nheads"]),
                dim_feedforward=int(pd.get("transformer_dim_feedforward", 1024)),
                n_points=int(pd.get("transformer_n_points", 4)),
                common_stride=int(pd.get("common_stride", 4)),
            ),
            decoder=DecoderConfig(
                hidden_dim=int(td["hidden_dim"]),
                num_queries=int(td["num_queries"]),
                nheads=int(td["nheads"]),
                dim_feedforward=int(td["dim_feedforward"]),
                dec_layers=int(td["dec_layers_cfg"]),
                pre_norm=bool(td.get("pre_norm", False)),
                enforce_input_proj=bool(td.get("enforce_input_proj", False)),
                attention="global" if name.endswith("_GMA") else "masked",
            ),
            preprocess=PreprocessConfig(
                pixel_mean=tuple(pre.get("pixel_mean", PIXEL_MEAN_RGB)),
                pixel_std=tuple(pre.get("pixel_std", PIXEL_STD_RGB)),
                size_divisibility=int(pre.get("size_divisibility", 32)),
                min_size_test=int(pred.get("min_size_test", 1024)),
                max_size_test=int(pred.get("max_size_test", 2048)),
            ),
            class_names=names,
            thing_ids=things,
            refine_ids=refine,
        )

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _build(kind: type, value: Mapping[str, Any], where: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    known = {f.name for f in fields(kind)}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"unknown {where} config keys: {sorted(unknown)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def cityscapes_r50() -> ModelConfig:
    """The paper's Cityscapes model (anomaly_inference.yaml): R50, 100 queries, 9 GMA layers."""
    return ModelConfig()


def small() -> ModelConfig:
    """A small network for tests, CPU training and the demo: R18, 64-dim, 3 GMA layers."""
    return ModelConfig(
        backbone=BackboneConfig(depth=18, res2_out_channels=64),
        pixel_decoder=PixelDecoderConfig(conv_dim=64, mask_dim=64, enc_layers=2, nheads=4,
                                         dim_feedforward=256),
        decoder=DecoderConfig(hidden_dim=64, num_queries=20, nheads=4, dim_feedforward=256,
                              dec_layers=4),
    )


PRESETS = {"cityscapes-r50": cityscapes_r50, "small": small}


def preset(name: str) -> ModelConfig:
    """Look up a preset by name (``cityscapes-r50``, ``small``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
