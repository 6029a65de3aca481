"""Settings of one ``m2a-pipe process`` run: every CLI option is one field here.

A JSON config file (``--config FILE``) may supply defaults for any field; options given on
the command line win. The full, resolved config is stored in each ``scores.h5`` (attribute
``config``) so every output says how it was made.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from m2a_pipe.config import ConfigError
from m2a_pipe.errors import M2AError
from m2a_pipe.settings import (
    DEFAULT_MAP_STRIDE,
    DEFAULT_MAX_MISSES,
    DEFAULT_MIN_HITS,
    DEFAULT_OVERLAY_PRESET,
    DEFAULT_PRECISION,
    DEFAULT_SCORE,
    DEVICE_HELP,
    EVENT_MODES,
    INSTANCE_MODES,
    MAP_STRIDES,
    OVERLAY_PRESETS,
    OVERLAY_SIZES,
    PRECISIONS,
    SCORE_NAMES,
    check_track_lifetimes,
)


class ProcessError(M2AError):
    """The run cannot start (weights, output folder, inputs): one line, nothing written."""


def _updated(config: Any, changes: Mapping[str, Any]) -> Any:
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


_TYPE_WORDS = {"int": "an integer", "float": "a finite number", "str": "text", "bool": "true or false"}


def check_field_types(config: Any) -> None:
    """Every field of the dataclass ``config`` holds a value of its annotated type (``int``,
    ``float``, ``str``, ``bool``, each optionally ``| None``); numbers are finite (no inf,
    no NaN) and an int field takes no bool. Raises ConfigError naming the first bad field."""
    for f in fields(config):
        value = getattr(config, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        kind = kinds[0]
        if kind == "float":
            good = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind == "int":
            good = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "str":
            good = isinstance(value, str)
        elif kind == "bool":
            good = isinstance(value, bool)
        else:
            good = True
        if not good:
            raise ConfigError(f"{f.name}: must be {_TYPE_WORDS.get(kind, kind)}, got {value!r}")


def _is_cuda_index(device: str) -> bool:
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


@dataclass(frozen=True)
class ProcessConfig:
    """One processing run.

    Model: ``weights`` (registry name or path), ``device`` (auto, cpu, cuda, cuda:i),
    ``batch_size`` (None: 1 on CPU, 8 on CUDA), ``short_side`` (None: the weights' test size),
    ``score``, ``refine`` (Eq. 13 on the official score; False turns ``official`` into ``msp``),
    ``flip`` (flip TTA), ``map_stride`` (maps at 1/4, 1/2 or full network input resolution),
    ``threads`` (torch CPU threads, None = torch default), ``precision`` (auto, fp32, bf16,
    fp16: the network's precision; auto = fp16 on CUDA, bf16 on a CPU with bf16 instructions).

    Decoding: ``sample_fps`` or ``stride``, ``max_decode_errors`` (consecutive errors after
    which a file is declared broken).

    Post-processing: ``threshold`` (anomalous pixels; None = the weights' metadata
    ``anomaly_threshold``, else :data:`m2a_pipe.settings.DEFAULT_THRESHOLD`), ``min_area_fraction`` (smallest
    instance, as a fraction of the frame), ``instances`` (``components``: connected components
    of the thresholded map; ``panoptic``: the unknown instances of open-set panoptic
    segmentation, mined from the background region, Eq. 15 and Sec. 6.3), tracker ``min_hits`` / ``max_misses``, events
    (``event_mode``, ``event_min_duration_s``, ``event_min_score``).

    Outputs: ``overlay`` (write overlay.mp4), ``overlay_size`` (``input``: the network input
    size, ``source``: the video's own size), ``overlay_crf``, ``overlay_preset`` (encoder
    preset: ``lean``, the project's, or a libx264 speed preset;
    :data:`~m2a_pipe.settings.OVERLAY_X264_PARAMS`), ``overlay_threads`` (H.264 encoder threads;
    0: one when the model runs on the CPU, so that the encoder does not compete with it for the
    cores, else FFmpeg's choice), ``save_maps`` (/maps/anomaly),
    ``save_semantic`` (/maps/semantic), ``overwrite`` (redo complete videos), ``queue_size``
    (frames held between threads, per queue).
    """

    weights: str = "demo"
    device: str = "auto"
    batch_size: int | None = None
    short_side: int | None = None
    score: str = DEFAULT_SCORE
    refine: bool = True
    flip: bool = False
    map_stride: int = DEFAULT_MAP_STRIDE
    threads: int | None = None
    precision: str = DEFAULT_PRECISION
    sample_fps: float | None = None
    stride: int = 1
    max_decode_errors: int = 25
    threshold: float | None = None
    min_area_fraction: float = 0.0005
    instances: str = "components"
    min_hits: int = DEFAULT_MIN_HITS
    max_misses: int = DEFAULT_MAX_MISSES
    event_mode: str = "tracks"
    event_min_duration_s: float = 0.5
    event_min_score: float | None = None
    overlay: bool = True
    overlay_size: str = "input"
    overlay_crf: int = 23
    overlay_preset: str = DEFAULT_OVERLAY_PRESET
    overlay_threads: int = 0
    save_maps: bool = True
    save_semantic: bool = False
    overwrite: bool = False
    queue_size: int = 8

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"{field}: {why}")

        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        check_field_types(self)
        if self.device.strip() not in ("auto", "cpu", "cuda") and not _is_cuda_index(self.device.strip()):
            raise bad("device", f"not a device {self.device!r} ({DEVICE_HELP})")
        if self.score not in SCORE_NAMES:
            raise bad("score", f"unknown score {self.score!r}; known: {', '.join(SCORE_NAMES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.short_side is not None and self.short_side < 32:
            raise bad("short_side", f"must be >= 32, got {self.short_side}")
        if self.map_stride not in MAP_STRIDES:
            raise bad("map_stride", f"must be one of {MAP_STRIDES}, got {self.map_stride}")
        if self.sample_fps is not None and not self.sample_fps > 0:
            raise bad("sample_fps", f"must be > 0, got {self.sample_fps}")
        if self.stride < 1:
            raise bad("stride", f"must be >= 1, got {self.stride}")
        if self.sample_fps is not None and self.stride != 1:
            raise bad("sample_fps", "give sample_fps or stride, not both")
        if self.max_decode_errors < 1:
            raise bad("max_decode_errors", f"must be >= 1, got {self.max_decode_errors}")
        if not 0 <= self.min_area_fraction < 1:
            raise bad("min_area_fraction", f"must be in [0, 1), got {self.min_area_fraction}")
        if self.instances not in INSTANCE_MODES:
            raise bad("instances", f"must be one of {INSTANCE_MODES}, got {self.instances!r}")
        if self.event_mode not in EVENT_MODES:
            raise bad("event_mode", f"must be one of {EVENT_MODES}, got {self.event_mode!r}")
        check_track_lifetimes(self.min_hits, self.max_misses)
        if self.queue_size < 1:
            raise bad("queue_size", f"must be >= 1, got {self.queue_size}")
        if self.overlay_size not in OVERLAY_SIZES:
            raise bad("overlay_size", f"must be one of {OVERLAY_SIZES}, got {self.overlay_size!r}")
        if self.overlay_preset not in OVERLAY_PRESETS:
            raise bad("overlay_preset", f"must be one of {OVERLAY_PRESETS}, got {self.overlay_preset!r}")
        if not 0 <= self.overlay_crf <= 51:
            raise bad("overlay_crf", f"must be in [0, 51], got {self.overlay_crf}")
        if self.overlay_threads < 0:
            raise bad("overlay_threads", f"must be >= 0, got {self.overlay_threads}")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", f"must be >= 1, got {self.threads}")
        if self.event_min_duration_s < 0:
            raise bad("event_min_duration_s", f"must be >= 0, got {self.event_min_duration_s}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def effective_score(self) -> str:
        """The score actually computed (``official`` without refinement is ``msp``)."""
        return "msp" if self.score == "official" and not self.refine else self.score

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def updated(self, **changes: Any) -> "ProcessConfig":
        """A copy with ``changes`` applied (None values are ignored, so unset options keep defaults)."""
        return _updated(self, changes)

    def for_device(self, device_type: str) -> "ProcessConfig":
        """The automatic settings resolved for a model on ``device_type`` (cpu, cuda):
        ``overlay_threads`` 0 -> 1 on the CPU, so that the encoder does not compete with the model."""
        return self.updated(overlay_threads=1) if self.overlay_threads == 0 and device_type == "cpu" else self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "config") -> "ProcessConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**dict(values))
        except TypeError as err:
            raise ConfigError(f"{where}: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "ProcessConfig":
        """Defaults from a JSON object of field names to values."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read config ({err})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config file holds one JSON object")
        return cls.from_mapping(values, where=str(path))


@dataclass(frozen=True)
class RayConfig:
    """How ``m2a-pipe process --ray`` uses a Ray cluster (the outputs do not depend on it).

    ``address``: None starts a local Ray instance (or uses ``RAY_ADDRESS``); ``auto`` or
    ``HOST:PORT`` / ``ray://HOST:PORT`` joins a running cluster.
    ``workers``: inference actors, one model replica each (None: one per GPU of the cluster
    when ``gpus_per_worker`` > 0, else one per ``cpus_per_worker`` CPUs).
    ``gpus_per_worker``: GPUs an actor reserves (None: 1 when the cluster has GPUs, else 0).
    ``cpus_per_worker``: CPUs an actor reserves; on a CPU worker also its torch threads.
    ``jobs``: videos in progress at once (None: as many as workers).
    ``in_flight``: batches a video keeps in flight on the pool (None: enough for two per
    worker across the running videos, at least 2, so one long video alone fills the pool).
    ``cpus_per_job``: CPUs a video job reserves for decoding and writing (0: none, so that
    jobs also run where the workers hold every CPU).
    ``worker_restarts``: times Ray restarts a dead actor (its in-flight batches are retried).
    ``batch_retries``: times a batch is sent again to another worker when its worker is gone
    for good.

    With Ray, ProcessConfig's ``device`` and ``threads`` do not apply: workers use a GPU when
    ``gpus_per_worker`` > 0, else the CPU with ``cpus_per_worker`` torch threads.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    jobs: int | None = None
    in_flight: int | None = None
    cpus_per_job: float = 0.0
    worker_restarts: int = 3
    batch_retries: int = 3

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"{field}: {why}")

        check_field_types(self)
        for name in ("workers", "jobs", "in_flight"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad(name, f"must be >= 1, got {value}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise bad("gpus_per_worker", f"must be >= 0, got {self.gpus_per_worker}")
        if not self.cpus_per_worker > 0:
            raise bad("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        if self.cpus_per_job < 0:
            raise bad("cpus_per_job", f"must be >= 0, got {self.cpus_per_job}")
        if self.worker_restarts < 0 or self.batch_retries < 0:
            raise bad("worker_restarts", "worker_restarts and batch_retries must be >= 0")

    def updated(self, **changes: Any) -> "RayConfig":
        """A copy with ``changes`` applied (None values are ignored)."""
        return _updated(self, changes)
