"""One video from its source file to its output folder, minus the model: shared by both runners.

A :class:`VideoJob` opens the video (PyAV), yields its frames resized to the network input,
feeds the model's maps to a :class:`~m2a_pipe.pipeline.analysis.VideoAnalysis`, and makes
the outputs appear atomically:

* everything is written to ``OUT/<rel parent>/.<name>.partial-<pid>`` and renamed to
  ``OUT/<rel>`` when the analysis has closed every file, so a folder that exists is whole;
* a video whose decoding lost frames (truncated, corrupt) is still renamed into place, with
  ``status = partial`` and the reason in ``scores.h5`` and ``summary.json``;
* an existing ``OUT/<rel>`` is replaced only when it is a video output folder the pipeline
  wrote (:func:`~m2a_pipe.io.layout.is_video_output`); anything else there is left alone and
  the video fails with one line;
* :meth:`VideoJob.discard` removes the temporary folder (failure, Ctrl-C);
* :func:`is_complete` is what a rerun checks to skip a video.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from m2a_pipe._version import __version__
from m2a_pipe.config import ModelConfig
from m2a_pipe.inference.stage import FrameMaps, map_size, network_input_size, prepare_frame
from m2a_pipe.io.hdf5_writer import read_status
from m2a_pipe.io.inputs import VideoInput, display_path
from m2a_pipe.io.layout import SCORES_FILE, SUMMARY_FILE, is_video_output, old_dir, partial_dir, temporary_dirs
from m2a_pipe.io.video_reader import VideoReader
from m2a_pipe.pipeline.analysis import AnalysisSettings, VideoAnalysis
from m2a_pipe.settings import BOUNDED_SCORES

FINGERPRINT_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    """What the outputs need to know about the weights (no tensors: cheap to send to workers)."""

    weights: str
    sha256: str
    config: ModelConfig
    threshold: float
    note: str = ""
    """The weights' notice (the demo weights: trained on a synthetic world only), stored with the outputs."""
    precision: str = ""
    """The network's precision as the model stage runs it (``fp32``, ``bf16``, ``fp16``; ``auto``
    resolved), stored with the outputs; empty while not known (the option's value is stored then)."""


@dataclass
class VideoResult:
    """Outcome of one video: ``status`` is complete, partial, failed, skipped or interrupted."""

    source: str
    rel: str
    out_dir: str
    status: str
    frames: int = 0
    seconds: float = 0.0
    events: int = 0
    error: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("complete", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rel": self.rel, "out_dir": self.out_dir, "status": self.status,
                "frames": self.frames, "seconds": round(self.seconds, 3), "fps": round(self.fps, 3),
                "events": self.events, "error": self.error, **({"extra": dict(self.extra)} if self.extra else {})}


def source_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the file size and its first and last MiB: cheap for hour-long files,
    and it changes when a file is replaced or grows (``"size:<n>:sha256:<hex>"``)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_CHUNK_BYTES))
        if size > FINGERPRINT_CHUNK_BYTES:
            f.seek(max(FINGERPRINT_CHUNK_BYTES, size - FINGERPRINT_CHUNK_BYTES))
            digest.update(f.read(FINGERPRINT_CHUNK_BYTES))
    return f"size:{size}:sha256:{digest.hexdigest()}"


def is_complete(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds a finished, complete video output."""
    out_dir = Path(out_dir)
    return (out_dir / SUMMARY_FILE).is_file() and read_status(out_dir / SCORES_FILE)[0] == "complete"


def remove_partials(out_dir: str | os.PathLike) -> None:
    """Remove the temporary folders of ``out_dir`` that killed or cancelled runs left."""
    for stale in temporary_dirs(out_dir):
        shutil.rmtree(stale, ignore_errors=True)


class VideoJob:
    """The decoding and output side of one video (see the module docstring).

    Args:
        video: the input and its output folder name.
        out_root: OUT.
        config: the run's :class:`~m2a_pipe.pipeline.config.ProcessConfig`.
        model: :class:`ModelInfo` of the weights.
    """

    def __init__(self, video: VideoInput, out_root: str | os.PathLike, config: Any, model: ModelInfo) -> None:
        self.video, self.config, self.model = video, config, model
        self.out_dir = video.out_dir(out_root)
        self.workdir = partial_dir(self.out_dir, os.getpid())
        self.reader: VideoReader | None = None
        self.analysis: VideoAnalysis | None = None
        self.started = time.perf_counter()
        self._source_frames: dict[int, np.ndarray] = {}  # decoded frames on their way to add(), by index

    def open(self) -> "VideoJob":
        """Open the video and the output files. Raises VideoError / OSError (one-line messages)."""
        cfg, model = self.config, self.model
        if (self.out_dir.exists() or self.out_dir.is_symlink()) and not is_video_output(self.out_dir):
            raise FileExistsError(errno.EEXIST, "it exists and is not a video output folder; it is left as it is",
                                  str(self.out_dir))
        self.reader = VideoReader(self.video.source, sample_fps=cfg.sample_fps, stride=cfg.stride,
                                  max_consecutive_errors=cfg.max_decode_errors)
        info = self.reader.info
        pre = model.config.preprocess
        input_size = network_input_size(info.height, info.width, cfg.short_side or pre.min_size_test,
                                        pre.max_size_test)
        shape = map_size(input_size, cfg.map_stride)
        settings = AnalysisSettings(input_size=input_size, map_shape=shape, source_size=(info.height, info.width),
                                    fps=info.fps if cfg.sample_fps is None else cfg.sample_fps,
                                    threshold=model.threshold,
                                    min_area=max(1, int(round(cfg.min_area_fraction * shape[0] * shape[1]))),
                                    bounded=cfg.effective_score in BOUNDED_SCORES, map_stride=cfg.map_stride)
        self.input_size = input_size
        remove_partials(self.out_dir)
        self.workdir.mkdir(parents=True)
        raw_name = os.fsencode(self.video.source)
        attrs = {"source": display_path(self.video.source),
                 **({} if raw_name.decode("utf-8", "replace").encode() == raw_name else
                    {"source_bytes": np.void(raw_name)}),
                 "source_fingerprint": source_fingerprint(self.video.source),
                 "fps": info.fps, "width": info.width, "height": info.height, "rotation": info.rotation,
                 "codec": info.codec, "weights": model.weights, "weights_sha256": model.sha256,
                 "weights_note": model.note,
                 "config": cfg.to_json(), "model_config": model.config.to_json(), "m2a_pipe_version": __version__,
                 "score": cfg.effective_score, "precision": model.precision or cfg.precision,
                 "threshold": model.threshold, "input_height": input_size[0],
                 "input_width": input_size[1], "extra": json.dumps(dict(self.video.extra), sort_keys=True),
                 **{f"extra_{k}": v for k, v in self.video.extra.items()}}
        self.analysis = VideoAnalysis(self.workdir, settings, cfg, attrs)
        return self

    def frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """(source index, pts in s, (h, w, 3) uint8 network-input image) in decoding order.

        The decoded frame itself waits in the job (not in the model's batches) until
        :meth:`add` hands it to the analysis, for thumbnails and a source-size overlay."""
        for frame in self.reader:
            self._source_frames[frame.index] = frame.image
            yield frame.index, frame.pts_s, prepare_frame(frame.image, self.input_size)

    def add(self, index: int, pts_s: float, image: np.ndarray, maps: FrameMaps) -> None:
        self.analysis.add(index, pts_s, image, maps, source=self._source_frames.pop(index, None))

    def commit(self) -> VideoResult:
        """Finish the outputs and rename them into place; partial when decoding lost frames."""
        reader, analysis = self.reader, self.analysis
        reader.close()
        n = analysis.frames_received
        if n == 0:
            raise_error = reader.partial_reason or "no decodable video frame"
            self.discard()
            return self.failed(f"{self.name}: {raise_error}")
        status = "partial" if reader.partial_reason else "complete"
        if self.out_dir.exists() or self.out_dir.is_symlink():
            if not is_video_output(self.out_dir):
                self.discard()
                return self.failed(f"{self.name}: {display_path(self.out_dir)} exists and is not a video output "
                                   "folder; it is left as it is (move it away to process this video)")
        summary = analysis.finish(status=status, error=reader.partial_reason, decoded_frames=reader.n_decoded)
        self.analysis = None
        if self.out_dir.exists():
            old = old_dir(self.out_dir, os.getpid())
            self.out_dir.rename(old)
            self.workdir.rename(self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.workdir.rename(self.out_dir)
        return VideoResult(source=str(self.video.source), rel=self.video.rel, out_dir=str(self.out_dir),
                           status=status, frames=summary["frames"], seconds=time.perf_counter() - self.started,
                           events=summary["events"],
                           error=f"{self.name}: {reader.partial_reason}" if reader.partial_reason else "",
                           extra=self.video.extra)

    @property
    def name(self) -> str:
        """The source path as printable text (:func:`~m2a_pipe.io.inputs.display_path`)."""
        return display_path(self.video.source)

    def failed(self, error: str, status: str = "failed") -> VideoResult:
        return VideoResult(source=str(self.video.source), rel=self.video.rel, out_dir=str(self.out_dir),
                           status=status, seconds=time.perf_counter() - self.started, error=error,
                           extra=self.video.extra)

    def discard(self) -> None:
        """Close whatever is open and remove the temporary folder."""
        if self.analysis is not None:
            self.analysis.abort()
            self.analysis = None
        if self.reader is not None:
            self.reader.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
