"""``m2a-pipe bench pipeline``: how close the whole pipeline gets to the model's own speed.

On one video, with one loaded model (warmed up by one batch first):

1. ``end_to_end_fps``: the local runner exactly as ``m2a-pipe process`` runs it (decode thread,
   model, writer thread with tracking, HDF5, overlay encoding), frames / wall time from opening
   the video to the outputs renamed into place; ``peak_rss_mb`` is the process' peak resident
   memory right after it (measured first, so the later steps cannot raise it);
2. ``decode_fps``: PyAV decoding of the same frames alone;
3. ``model_fps``: the model stage alone on the same frames and batches (decoding and resizing
   are done but not timed): network forward plus the maps, which is the ceiling of (1);

``efficiency = end_to_end_fps / model_fps``. ``precision`` is the network's precision as it
ran (``auto`` resolved, see :func:`m2a_pipe.inference.forward.precision_for`). Run each video
in a fresh process to compare peak memory between videos.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from m2a_pipe.bench.memory import peak_rss_mb
from m2a_pipe.inference.stage import network_input_size, prepare_frame
from m2a_pipe.io.inputs import VideoInput
from m2a_pipe.io.video_reader import VideoReader
from m2a_pipe.pipeline.config import ProcessConfig
from m2a_pipe.settings import default_batch_size

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "examples" / "drive.mp4"


@dataclass
class PipelineBench:
    video: str
    frames: int
    width: int
    height: int
    input_size: list[int]
    device: str
    precision: str
    threads: int
    batch_size: int
    decode_fps: float
    model_fps: float
    end_to_end_fps: float
    efficiency: float
    peak_rss_mb: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def bench_pipeline(video: str | Path, config: ProcessConfig | None = None) -> PipelineBench:
    """Measure one video (see the module docstring)."""
    from m2a_pipe.pipeline.job import VideoJob
    from m2a_pipe.pipeline.local import run_job
    from m2a_pipe.pipeline.model import load_stage, prepare_runtime

    config = (config or ProcessConfig()).updated(overwrite=True)
    video = Path(video).resolve()
    config, device = prepare_runtime(config)
    stage, info = load_stage(config, device)
    batch = config.batch_size or default_batch_size(device.type)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with VideoReader(video, sample_fps=config.sample_fps, stride=config.stride) as reader:
        vinfo = reader.info
        pre = info.config.preprocess
        size = network_input_size(vinfo.height, vinfo.width, config.short_side or pre.min_size_test,
                                  pre.max_size_test)
        first = next(iter(reader))
    stage([prepare_frame(first.image, size)] * batch)  # warm-up (allocator, kernels)

    with tempfile.TemporaryDirectory(prefix="m2a-bench-") as tmp:
        job = VideoJob(VideoInput(source=video, rel=video.stem), tmp, config, info).open()
        t0 = time.perf_counter()
        result = run_job(job, stage, batch_size=batch, queue_size=config.queue_size)
        sync()
        e2e_s = time.perf_counter() - t0
    frames = result.frames
    peak = peak_rss_mb()

    t0 = time.perf_counter()
    with VideoReader(video, sample_fps=config.sample_fps, stride=config.stride) as reader:
        decoded = sum(1 for _ in reader)
    decode_s = time.perf_counter() - t0

    model_s = 0.0
    pending: list = []
    with VideoReader(video, sample_fps=config.sample_fps, stride=config.stride) as reader:
        for frame in reader:
            pending.append(prepare_frame(frame.image, size))
            if len(pending) == batch:
                t0 = time.perf_counter()
                stage(pending)
                sync()
                model_s += time.perf_counter() - t0
                pending = []
        if pending:
            t0 = time.perf_counter()
            stage(pending)
            sync()
            model_s += time.perf_counter() - t0
    e2e_fps = frames / e2e_s
    model_fps = frames / model_s
    return PipelineBench(video=str(video), frames=frames, width=vinfo.width, height=vinfo.height,
                         input_size=list(size), device=str(device), precision=stage.core.precision.name,
                         threads=torch.get_num_threads(),
                         batch_size=batch, decode_fps=round(decoded / decode_s, 2), model_fps=round(model_fps, 3),
                         end_to_end_fps=round(e2e_fps, 3), efficiency=round(e2e_fps / model_fps, 3),
                         peak_rss_mb=round(peak, 1))


def summarise(runs: list[list[PipelineBench]]) -> dict[str, Any]:
    """Rounds of measurements (each a list with one :class:`PipelineBench` per precision, in
    the same order) -> ``results`` (per precision: the median of each figure over the rounds,
    and every round's ``end_to_end_fps``, ``model_fps`` and ``efficiency``) and ``speed_ratios``
    (``"bf16/fp32"``: median over the rounds of the end-to-end fps ratio of each precision to the first one)."""
    results = []
    for i, first in enumerate(runs[0]):
        mine = [r[i] for r in runs]
        entry = first.to_dict()
        for key in ("decode_fps", "model_fps", "end_to_end_fps", "efficiency", "peak_rss_mb"):
            entry[key] = round(statistics.median(getattr(m, key) for m in mine), 3)
        entry["rounds_end_to_end_fps"] = [m.end_to_end_fps for m in mine]
        entry["rounds_model_fps"] = [m.model_fps for m in mine]
        entry["rounds_efficiency"] = [m.efficiency for m in mine]
        results.append(entry)
    ratios = {f"{runs[0][i].precision}/{runs[0][0].precision}":
              round(statistics.median(r[i].end_to_end_fps / r[0].end_to_end_fps for r in runs), 3)
              for i in range(1, len(runs[0]))}
    return {"results": results, "speed_ratios": ratios}
