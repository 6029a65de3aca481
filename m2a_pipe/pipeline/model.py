"""The model side of a run: the device, the verified weights and the model stage.

Both runners start here: the local runner builds one :class:`ModelStage` in this process,
the Ray runner loads the weights once here and each inference actor builds its stage from
them with :func:`make_stage`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import cv2
import torch

from m2a_pipe.config import ConfigError
from m2a_pipe.errors import first_line
from m2a_pipe.inference.device import resolve_device
from m2a_pipe.inference.stage import ModelStage
from m2a_pipe.pipeline.config import ProcessConfig, ProcessError
from m2a_pipe.pipeline.job import ModelInfo
from m2a_pipe.settings import DEFAULT_THRESHOLD


def prepare_runtime(config: ProcessConfig) -> tuple[ProcessConfig, torch.device]:
    """Resolve the device, set torch's CPU threads, and resolve the automatic settings that
    depend on the device (``overlay_threads`` 0 -> 1 when the model runs on the CPU).

    With the model on the CPU, OpenCV (the overlay's drawing) is set to one thread for the
    process: its parallel loops would take the model's cores in the middle of torch's
    parallel regions (on 2 cores the overlay cost 6.2 ms of CPU a frame on 2 threads against
    4.6 on one, and the pipeline's efficiency fell by more than that)."""
    device = resolve_device(config.device)
    if device.type == "cpu":
        cv2.setNumThreads(1)
    if config.threads is not None and device.type == "cpu":
        torch.set_num_threads(config.threads)
    config = config.for_device(device.type)
    return config, device


def load_checked_model(config: ProcessConfig) -> tuple[Any, ModelInfo]:
    """Load and verify the weights of ``config``: (model on the CPU, :class:`ModelInfo`).

    The file's sha256 must match the registry's when the weights are registered; the
    threshold comes from the option, else the file's ``anomaly_threshold`` metadata.
    Raises ProcessError (one line naming the weights).
    """
    from m2a_pipe.model.checkpoint import CheckpointError, read_metadata, sha256_file
    from m2a_pipe.model.loading import load_model
    from m2a_pipe.model.registry import WeightsError, expected_sha256, resolve, weights_note

    try:
        path = resolve(config.weights)
        sha = sha256_file(path)
        expected = expected_sha256(config.weights)
        if expected and expected != sha:
            raise ProcessError(f"weights {config.weights} ({path}): sha256 {sha[:12]}... differs from the "
                               f"registered {expected[:12]}...; the file is damaged or replaced")
        meta: dict[str, Any] = {}
        if path.suffix.lower() == ".safetensors":
            _, meta = read_metadata(path)
        model = load_model(path if expected is None else config.weights)
    except (WeightsError, CheckpointError, ConfigError, OSError) as err:
        message = first_line(err)  # most name the weights already
        failed = ProcessError(message if message.startswith(str(config.weights)) else
                              f"weights {config.weights}: {message}")
        failed.exit_code = getattr(err, "exit_code", failed.exit_code)  # a bad --weights is a usage error
        raise failed from None
    threshold = config.threshold
    if threshold is None:
        stored = meta.get("anomaly_threshold", DEFAULT_THRESHOLD)
        try:
            threshold = float(stored)
        except (TypeError, ValueError):
            threshold = math.nan
        if not math.isfinite(threshold):
            raise ProcessError(f"weights {config.weights}: metadata anomaly_threshold must be a finite number, "
                               f"got {stored!r} (give --threshold)")
    return model, ModelInfo(weights=str(config.weights), sha256=sha, config=model.config, threshold=threshold,
                            note=weights_note(config.weights))


def make_stage(model: Any, config: ProcessConfig, device: torch.device | str) -> ModelStage:
    """The :class:`ModelStage` of ``config`` (score, flip, map stride, precision, instance mode) around ``model``."""
    return ModelStage(model, device, score=config.effective_score, flip=config.flip, map_stride=config.map_stride,
                      precision=config.precision,
                      mine_unknown=config.instances == "panoptic", min_area_fraction=config.min_area_fraction)


def load_stage(config: ProcessConfig, device: torch.device) -> tuple[ModelStage, ModelInfo]:
    """Load and verify the weights, build the model stage; the :class:`ModelInfo` carries the
    precision the stage runs at. Raises ProcessError (one line)."""
    model, info = load_checked_model(config)
    stage = make_stage(model, config, device)
    return stage, replace(info, precision=stage.core.precision.name)
