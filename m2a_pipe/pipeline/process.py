"""``m2a_pipe.process``: the main job, as a Python API (the CLI calls it).

    from m2a_pipe import process
    summary = process(["drive.mp4"], "out")            # demo weights, local runner
    summary.exit_code                                   # 0 only when every input is complete
    for video in summary.videos: print(video.status, video.out_dir)
    process(["fleet.csv"], "out", ray=RayConfig(workers=4))   # the same outputs, on Ray
                                                        # (from m2a_pipe import RayConfig)

Steps: discover the inputs (files, folders, globs, manifests), load the weights once, then
for every video not already complete: open it, run it through the local runner (or the Ray
runner, :mod:`m2a_pipe.pipeline.ray_runner`), and rename its outputs into place. A bad input
is one line in the log, a failed entry in the summary and a line in ``OUT/failures.jsonl``;
the other inputs go on. Ctrl-C removes the temporary folders of the videos in progress,
keeps the finished ones, and raises KeyboardInterrupt after the summary is logged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from m2a_pipe.inference.stage import ModelStage
from m2a_pipe.io.inputs import InputError, VideoInput, discover, display_path
from m2a_pipe.io.layout import FAILURES_FILE, written_atomically
from m2a_pipe.model.registry import weights_note
from m2a_pipe.pipeline.config import ProcessConfig, ProcessError, RayConfig
from m2a_pipe.pipeline.job import ModelInfo, VideoJob, VideoResult, is_complete
from m2a_pipe.pipeline.model import load_checked_model, load_stage, prepare_runtime
from m2a_pipe.settings import default_batch_size

SKIP_REASON = "already complete; --overwrite redoes it"


@dataclass
class RunSummary:
    """Outcome of :func:`process`: one :class:`VideoResult` per input (discovery failures
    included, with an empty ``out_dir``), the output root and the wall time."""

    output: str
    videos: list[VideoResult] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 when every input is complete (or was already), 130 on Ctrl-C, else 1."""
        if self.interrupted:
            return 130
        return 0 if self.videos and all(v.ok for v in self.videos) else 1

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.videos:
            out[v.status] = out.get(v.status, 0) + 1
        return out

    def table(self) -> str:
        """A plain-text summary table: the video's output folder under OUT, frames processed,
        processing speed (frames per second of wall time, not the video's rate), events, status
        (with the reason of a skip)."""
        rows = [("output", "frames", "processed/s", "events", "status")]
        for v in self.videos:
            status = f"{v.status} ({SKIP_REASON})" if v.status == "skipped" else v.status
            rows.append((display_path(v.rel or v.source), str(v.frames) if v.frames else "-",
                         f"{v.fps:.2f}" if v.frames else "-",
                         str(v.events) if v.status in ("complete", "partial") else "-", status))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        inputs = "1 input" if len(self.videos) == 1 else f"{len(self.videos)} inputs"
        lines.append(f"{inputs}: {counts}; {self.seconds:.1f} s; outputs in {self.output}")
        return "\n".join(lines)


def _check_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".m2a-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ProcessError(f"{output}: cannot write the output folder ({err.strerror or err})") from None


def process(inputs: str | os.PathLike | Iterable[str | os.PathLike], output: str | os.PathLike,
            config: ProcessConfig | None = None, *, ray: RayConfig | None = None, quiet: bool = False,
            log: Callable[[str], None] | None = None, on_batch: Callable[[VideoInput, int], None] | None = None,
            **options: Any) -> RunSummary:
    """Process videos into ``output`` (see the module docstring).

    Args:
        inputs: a path, folder, glob or manifest, or several.
        output: OUT; each video's folder mirrors its place in the input tree.
        config: settings (default :class:`ProcessConfig`); ``options`` override its fields.
        ray: run on Ray with these settings (:mod:`m2a_pipe.pipeline.ray_runner`) instead of
            the local runner; the outputs are the same.
        quiet: no progress bars.
        log: where one-line messages go (default: tqdm.write to stderr, unless quiet).
        on_batch: called after each model batch with the video and its frames so far
            (local runner only).
    Returns: a :class:`RunSummary`. Raises :class:`ProcessError` when the run cannot start
    and KeyboardInterrupt on Ctrl-C (after cleaning up). The inputs that failed are listed
    in ``OUT/failures.jsonl``.
    """
    started = time.perf_counter()
    config = (config or ProcessConfig()).updated(**options)
    if log is None:
        log = (lambda msg: None) if quiet else (lambda msg: tqdm.write(msg, file=None))
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    output = Path(output)
    summary = RunSummary(output=str(output))
    errors: list[tuple[str, str]] = []
    if ray is None:  # a bad --device, or a precision it cannot run, is refused before OUT is created
        from m2a_pipe.inference.device import resolve_device
        from m2a_pipe.inference.forward import precision_for

        precision_for(resolve_device(config.device), config.precision)
    try:
        videos = discover(inputs, errors, exclude=[output])
    except InputError as err:
        raise ProcessError(str(err)) from None
    for arg, message in errors:
        log(f"error: {message}")
        summary.videos.append(VideoResult(source=arg, rel=arg, out_dir="", status="failed", error=message))
    _check_output(output)
    todo = []
    for video in videos:
        if not config.overwrite and is_complete(video.out_dir(output)):
            summary.videos.append(VideoResult(source=str(video.source), rel=video.rel,
                                              out_dir=str(video.out_dir(output)), status="skipped"))
        else:
            todo.append(video)
    write_failures(output, summary.videos, log)
    if todo and weights_note(config.weights):
        log(f"note: {weights_note(config.weights)}")
    overall = tqdm(total=len(todo), desc="videos", unit="video", disable=quiet or len(todo) < 2, position=1)

    def finished(result: VideoResult) -> None:
        summary.videos.append(result)
        overall.update(1)
        if result.status == "partial":
            log(f"partial: {result.error}")
        elif result.status == "failed":
            log(f"error: {result.error}")
            write_failures(output, summary.videos, log)

    try:
        if todo and ray is not None:
            _process_on_ray(todo, output, config, ray, finished, log)
        elif todo:
            _process_locally(todo, output, config, finished, quiet, on_batch)
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.seconds = time.perf_counter() - started
        log("interrupted: the videos in progress were discarded; finished videos are kept")
        raise
    finally:
        overall.close()
    summary.seconds = time.perf_counter() - started
    return summary


def write_failures(output: Path, results: Iterable[VideoResult], log: Callable[[str], None] | None = None) -> bool:
    """``OUT/failures.jsonl``: one JSON line (source, rel, error) per failed input of this run,
    written atomically; removed when nothing failed. A source that is not UTF-8 keeps its
    bytes as surrogate escapes (``"\\udcff"``: :func:`os.fsencode` of the loaded string gives
    them back). When the file cannot be written (a full disk) the previous one is kept, one
    line goes to ``log`` and False is returned: the run goes on."""
    path = output / FAILURES_FILE
    failed = [v for v in results if v.status == "failed"]
    try:
        if not failed:
            if path.is_file() and not path.is_symlink():
                path.unlink()
            return True
        with written_atomically(path) as tmp, open(tmp, "w", encoding="ascii") as f:
            for v in failed:
                f.write(json.dumps({"source": v.source, "rel": v.rel, "error": v.error,
                                    **({"extra": dict(v.extra)} if v.extra else {})}) + "\n")
    except OSError as err:
        if log is not None:
            log(f"error: {path}: cannot write the list of failed inputs ({err.strerror or err})")
        return False
    return True


def _process_locally(todo: list[VideoInput], output: Path, config: ProcessConfig,
                     finished: Callable[[VideoResult], None], quiet: bool,
                     on_batch: Callable[[VideoInput, int], None] | None) -> None:
    config, device = prepare_runtime(config)
    stage, model_info = load_stage(config, device)
    batch = config.batch_size or default_batch_size(device.type)
    for video in todo:
        finished(_run_one(video, output, config, stage, model_info, batch, quiet, on_batch))


def _process_on_ray(todo: list[VideoInput], output: Path, config: ProcessConfig, ray_config: RayConfig,
                    finished: Callable[[VideoResult], None], log: Callable[[str], None]) -> None:
    try:
        from m2a_pipe.pipeline.ray_runner import PoolError, run_on_ray
    except ImportError as err:
        raise ProcessError(f"--ray: cannot import Ray ({err}); pip install 'ray>=2.9'") from None
    model, model_info = load_checked_model(config)
    weights = (model.config, model.state_dict())
    del model
    try:
        stats = run_on_ray(todo, output, config, weights, model_info, ray_config, on_result=finished)
    except PoolError as err:
        raise ProcessError(f"--ray: {err}") from None
    log(stats.line())


def _run_one(video: VideoInput, output: Path, config: ProcessConfig, stage: ModelStage, model_info: ModelInfo,
             batch: int, quiet: bool, on_batch: Callable[[VideoInput, int], None] | None) -> VideoResult:
    from m2a_pipe.pipeline.local import run_video

    bar = tqdm(total=0, desc=video.rel, unit="frame", disable=quiet, leave=False, position=0)

    def opened(job: VideoJob) -> None:
        total = job.reader.info.n_frames
        if total and config.stride > 1:
            total = -(-total // config.stride)
        elif total and config.sample_fps and job.reader.info.fps:
            total = int(total * min(1.0, config.sample_fps / job.reader.info.fps)) + 1
        bar.reset(total=total or None)

    def progress(done: int) -> None:
        bar.update(done - bar.n)
        if on_batch is not None:
            on_batch(video, done)

    try:
        return run_video(video, output, config, model_info, stage, batch, on_open=opened, on_batch=progress)
    finally:
        bar.close()
