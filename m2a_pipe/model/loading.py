"""Weights to a model: build a network and load a weights file into it, convert official
checkpoints, add a checkpoint to the user weights folder under a name, describe a file.

The one module that knows both the file formats (:mod:`.checkpoint`) and the names
(:mod:`.registry`); neither of those imports the other's callers, so there is no circle.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from m2a_pipe.config import ModelConfig
from m2a_pipe.model import checkpoint, registry
from m2a_pipe.model.mask2anomaly import build_model


def load_model(path_or_name: str | os.PathLike, device: str | torch.device = "cpu",
               cfg: ModelConfig | None = None) -> nn.Module:
    """Build a model and load weights into it strictly; returned in eval mode on ``device``.

    ``path_or_name`` is a registry name (see :mod:`m2a_pipe.model.registry`) or a file.
    A ``.safetensors`` file supplies its own config (a different ``cfg`` is an error); a
    ``.pth``/``.pkl`` needs ``cfg`` (or a registry entry that names a preset).
    """
    path = registry.resolve(path_or_name)
    if path.suffix.lower() in checkpoint.SAFETENSORS_SUFFIXES:
        state_dict, stored, _ = checkpoint.load_weights(path)
        if cfg is not None and cfg != stored:
            raise checkpoint.CheckpointError(f"{path}: the config given differs from the one stored in the file")
        cfg = stored
    else:
        cfg = cfg or registry.registered_config(path_or_name)
        if cfg is None:
            raise checkpoint.CheckpointError(
                f"{path}: a {path.suffix} checkpoint carries no config; add it once with its preset or "
                f"config.json: m2a-pipe weights add {path} --name NAME --config PRESET|config.json, "
                "then use --weights NAME")
        state_dict = checkpoint.read_state_dict(path)
    model = build_model(cfg)
    checkpoint.load_into(model, state_dict, source=str(path))
    return model.to(device).eval()


def convert_checkpoint(src: str | os.PathLike, cfg: ModelConfig, out: str | os.PathLike,
                       metadata: Mapping[str, Any] | None = None) -> Path:
    """Official ``.pth``/``.pkl`` -> the project's safetensors with ``cfg``.

    The state dict is loaded strictly into a freshly built model (so a wrong config fails
    here, naming every key), then the model's own state dict is written, with the source
    file name and sha256 recorded in the metadata.
    """
    src = Path(src)
    state_dict = checkpoint.read_state_dict(src)
    model = build_model(cfg)
    report = checkpoint.load_into(model, state_dict, source=str(src))
    meta = {"source_file": src.name, "source_sha256": checkpoint.sha256_file(src)}
    if report.filled:
        meta["filled_keys"] = list(report.filled)
    meta.update(metadata or {})
    return checkpoint.save_weights(model, cfg, out, meta)


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters (``nn.Parameter`` elements, buffers excluded) of the model ``cfg`` builds,
    counted on the meta device (nothing allocated)."""
    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except (NotImplementedError, RuntimeError):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def describe(name_or_path: str | os.PathLike, cfg: ModelConfig | None = None) -> dict[str, Any]:
    """Facts about a weights file, for ``m2a-pipe weights info``.

    Keys: path, name (registered name or None), format, size_bytes, sha256,
    registered_sha256, num_tensors, num_elements, config (stored in the file, else
    ``cfg``, else the entry's preset, else None), num_parameters (None without a config),
    metadata (stored in the file, else the entry's).
    """
    text = os.fspath(name_or_path)
    entry = registry.lookup(text)
    path = registry.resolve(text)
    suffix = path.suffix.lower()
    metadata: dict[str, Any] = dict(entry.metadata) if entry else {}
    if suffix in checkpoint.SAFETENSORS_SUFFIXES:
        stored, stored_meta = checkpoint.read_metadata(path)
        cfg, metadata = stored, {**metadata, **stored_meta}
        shapes = checkpoint.read_shapes(path)
        fmt = f"safetensors ({checkpoint.FORMAT})"
    else:
        shapes = {k: tuple(v.shape) for k, v in checkpoint.read_state_dict(path).items()}
        fmt = "detectron2 pickle (.pkl)" if suffix in checkpoint.PICKLE_SUFFIXES else "torch checkpoint (.pth)"
        cfg = cfg or registry.registered_config(text)
    num_elements = 0
    for shape in shapes.values():
        n = 1
        for dim in shape:
            n *= dim
        num_elements += n
    return {
        "path": path,
        "name": entry.name if entry else None,
        "format": fmt,
        "size_bytes": path.stat().st_size,
        "sha256": checkpoint.sha256_file(path),
        "registered_sha256": entry.sha256 if entry else None,
        "num_tensors": len(shapes),
        "num_elements": num_elements,
        "config": cfg,
        "num_parameters": count_parameters(cfg) if cfg is not None else None,
        "metadata": metadata,
    }


def add_weights(src: str | os.PathLike, name: str, config: str | os.PathLike | ModelConfig | None = None, *,
                source: str | None = None, source_file: str | None = None,
                overwrite: bool = False) -> registry.WeightsEntry:
    """Register the checkpoint ``src`` as ``name`` in the user weights folder
    (:func:`m2a_pipe.model.registry.user_weights_dir`).

    A ``.pth``/``.pkl`` is converted with ``config`` (a preset, a config.json or a
    ModelConfig; default: the preset of an official entry of that name), a ``.safetensors``
    of this project is copied (it carries its config). Either way the result is loaded
    strictly into a freshly built model before it is registered, and it is written under a
    temporary name and renamed, so a failed add leaves no file and no entry. ``source`` (a
    URL or path) and ``source_file`` (its file name, default ``src``'s) are recorded.
    Raises WeightsError / CheckpointError / ConfigError.
    """
    src = Path(src)
    source_file = source_file or src.name
    package = registry.REGISTRY.get(registry.check_name(name))
    if package is not None and package.built:
        raise registry.WeightsError(f"{name}: the name of the package's own weights; choose another --name")
    if not overwrite and name in registry.user_entries():
        raise registry.WeightsError(f"{name}: already added ({registry.lookup(name).path}); "
                                    "pass --overwrite to replace it")
    if config is None and package is not None and package.config:
        config = package.config
    folder = registry.user_weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.safetensors"
    tmp = folder / f".{name}.partial-{os.getpid()}.safetensors"
    try:
        if src.suffix.lower() in checkpoint.SAFETENSORS_SUFFIXES:
            stored, _ = checkpoint.read_metadata(src)
            if config is not None and registry.resolve_config(config) != stored:
                raise checkpoint.CheckpointError(f"{src}: the config given differs from the one stored in the file")
            shutil.copyfile(src, tmp)
            load_model(tmp)  # strict: every tensor matches the stored config
        else:
            if config is None:
                raise checkpoint.CheckpointError(
                    f"{src}: a {src.suffix} checkpoint carries no config; give --config PRESET|config.json")
            convert_checkpoint(src, registry.resolve_config(config), tmp,
                               metadata={"source_file": source_file, **({"source": source} if source else {})})
        digest = checkpoint.sha256_file(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    description = package.description if package is not None else f"added from {source or src.name}"
    return registry.add_user_entry(registry.WeightsEntry(
        name=name, file=str(target), sha256=digest, description=description,
        metadata={"source_sha256": checkpoint.sha256_file(src)}, source=source or str(src.resolve()),
        source_file=source_file))
