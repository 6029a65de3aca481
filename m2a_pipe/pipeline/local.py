"""One video through a reader thread, the model, a writer thread: the loop both runners use.

    reader thread:  decode (PyAV, frame-threaded) + resize to the network input
        -> bounded queue ->
    calling thread: batches of ``batch_size`` frames through the model, in order
        -> bounded queue ->
    writer thread:  VideoAnalysis (instances, tracker, events, HDF5, overlay encoding)

The model is anything with ``map_batches``: the local runner's
:class:`~m2a_pipe.inference.stage.ModelStage` (one batch at a time, in this process) or
the Ray runner's pool client (several batches in flight on remote replicas, results in order).

The queues hold at most ``queue_size`` items each, so memory is flat however long the video,
and decoding and writing overlap the model. The model runs in the calling thread so Ctrl-C
(KeyboardInterrupt) reaches it: the threads are told to stop, joined, and the video's
temporary folder is removed before the interrupt propagates.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from m2a_pipe.errors import first_line
from m2a_pipe.inference.stage import FrameMaps
from m2a_pipe.io.inputs import VideoInput, display_path
from m2a_pipe.io.video_reader import VideoError
from m2a_pipe.pipeline.job import ModelInfo, VideoJob, VideoResult

Frame = tuple[int, float, np.ndarray]
"""(source index, pts in seconds, (h, w, 3) uint8 network-input image)."""


class BatchMapper(Protocol):
    """The model as the loop sees it: batches of frames in, their maps out, in order."""

    def map_batches(self, batches: Iterable[list[Frame]]) -> Iterator[tuple[list[Frame], list[FrameMaps]]]: ...

_DONE = object()
POLL_S = 0.1


class _Worker(threading.Thread):
    """A daemon thread that records the exception that ended it."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            self.error = err


def _put(q: queue.Queue, item: object, stop: threading.Event, consumer: threading.Thread | None = None) -> bool:
    """Put unless ``stop`` is set (or the ``consumer`` died) first; True when the item went in."""
    while not stop.is_set() and (consumer is None or consumer.is_alive()):
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event, worker: _Worker) -> object:
    """Next item; _DONE when ``stop`` is set or the producing worker died without sending it."""
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if stop.is_set() or (not worker.is_alive() and q.empty()):
                return _DONE


def run_job(job: VideoJob, stage: BatchMapper, *, batch_size: int = 1, queue_size: int = 8,
            on_batch: Callable[[int], None] | None = None) -> VideoResult:
    """Process one opened :class:`VideoJob` through ``stage`` and commit its outputs.

    ``on_batch(n_frames_so_far)`` is called in the calling thread after each model batch
    (progress bars; tests raise KeyboardInterrupt from it to simulate Ctrl-C).
    Errors of the reader or writer thread are re-raised here; the caller discards the job.
    """
    stop = threading.Event()
    frames_q: queue.Queue = queue.Queue(maxsize=queue_size)
    maps_q: queue.Queue = queue.Queue(maxsize=queue_size)

    def read() -> None:
        for item in job.frames():
            if not _put(frames_q, item, stop):
                return
        _put(frames_q, _DONE, stop)

    def write() -> None:
        while True:
            item = _get(maps_q, stop, runner)
            if item is _DONE:
                return
            for (index, pts, image), maps in item:
                job.add(index, pts, image, maps)

    reader = _Worker(read, "m2a-reader")
    writer = _Worker(write, "m2a-writer")
    runner = threading.current_thread()
    reader.start()
    writer.start()
    done = 0

    def batches() -> Iterator[list[Frame]]:
        while True:
            batch = []
            while len(batch) < batch_size:
                item = _get(frames_q, stop, reader)
                if item is _DONE:
                    break
                batch.append(item)
            if batch:
                yield batch
            if len(batch) < batch_size or writer.error is not None:
                return

    try:
        for batch, maps in stage.map_batches(batches()):
            if not _put(maps_q, list(zip(batch, maps)), stop, writer):
                break
            done += len(batch)
            if on_batch is not None:
                on_batch(done)
        if reader.error is not None:
            raise reader.error
        _put(maps_q, _DONE, stop, writer)
        writer.join()
        if writer.error is not None:
            raise writer.error
    except BaseException:
        stop.set()
        reader.join(timeout=10)
        writer.join(timeout=10)
        raise
    if reader.error is not None:
        raise reader.error
    return job.commit()


def run_video(video: VideoInput, output: Any, config: Any, model: ModelInfo, stage: BatchMapper, batch_size: int,
              *, on_open: Callable[[VideoJob], None] | None = None,
              on_batch: Callable[[int], None] | None = None) -> VideoResult:
    """One video from its source to its committed output folder, errors included.

    A video that cannot be decoded or written gives a ``failed`` :class:`VideoResult` with a
    one-line error naming it (its temporary folder removed); any other exception, and
    KeyboardInterrupt, removes the temporary folder and propagates. ``on_open(job)`` is called
    once the video is open (progress bars read ``job.reader.info``).
    """
    job = VideoJob(video, output, config, model)
    opened = False
    try:
        job.open()
        opened = True
        if on_open is not None:
            on_open(job)
        return run_job(job, stage, batch_size=batch_size, queue_size=config.queue_size, on_batch=on_batch)
    except VideoError as err:
        job.discard()
        return job.failed(first_line(err))
    except OSError as err:
        job.discard()
        if not opened:
            return job.failed(f"{job.name}: cannot write {display_path(job.out_dir)} ({err.strerror or err})")
        return job.failed(f"{job.name}: {err.strerror or err} "
                          f"({display_path(getattr(err, 'filename', '') or job.out_dir)})")
    except BaseException:
        job.discard()
        raise
