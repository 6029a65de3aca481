"""The Ray runner: a pool of inference actors shared by one job per video.

    driver (``m2a-pipe process --ray``)
      |- InferencePool: ``workers`` actors, each one ModelStage replica on one GPU (or on
      |                 ``cpus_per_worker`` CPUs with as many torch threads)
      '- one Ray task per video, at most ``jobs`` at once: the VideoJob and the loop of the
         local runner (reader thread, writer thread with the VideoAnalysis), with the model
         replaced by a :class:`PoolClient` that keeps ``in_flight`` batches on the pool and
         hands their maps back in the video's order

Many videos share the pool; one long video alone keeps every worker busy. The weights travel
once through the object store (the driver has loaded and verified them), so workers need no
access to the weights file; the videos and OUT must be on storage that every node sees.
This is the only module that imports Ray.

Fault tolerance:

* an actor that dies is restarted by Ray (up to ``worker_restarts`` times) and the batches
  it held are run again (``max_task_retries``), unseen by the jobs;
* an actor gone for good (restarts used up, or killed without restart) is dropped by the
  jobs' clients, which send its batches to the other workers (``batch_retries`` per batch);
* the maps of a batch depend only on its frames and the weights, and every batch keeps its
  place in the video's order, so the outputs equal those of an undisturbed run;
* a job whose process dies is run again by Ray from the start (its stale temporary folder is
  removed on the way); a job that fails is a failed :class:`VideoResult`, the others go on;
* Ctrl-C cancels the jobs, removes their temporary folders and keeps the finished videos.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError

from m2a_pipe.errors import M2AError, first_line
from m2a_pipe.inference.stage import FrameMaps
from m2a_pipe.io.inputs import VideoInput
from m2a_pipe.pipeline.config import ProcessConfig, RayConfig
from m2a_pipe.pipeline.job import ModelInfo, VideoResult, remove_partials
from m2a_pipe.settings import default_batch_size

AUTH_ERRORS: tuple[type[BaseException], ...] = tuple(
    e for e in (getattr(ray.exceptions, "AuthenticationError", None),) if e is not None)
"""Ray's authentication failure (Ray with token authentication); empty on an older Ray."""

WORKER_NAME = "m2a-pipe-worker"
JOB_RETRIES = 2
"""Times Ray reruns a video job whose process died (node lost, out of memory)."""
CANCEL_GRACE_S = 5.0
"""Seconds a job has to stop by itself on Ctrl-C (its workers killed) before it is cancelled by force."""
CANCEL_WAIT_S = 10.0
"""Seconds to wait for killed jobs before their temporary folders are removed anyway."""


class WorkerLost(M2AError):
    """Every inference worker is gone, or a batch ran out of retries."""


class PoolError(M2AError):
    """The pool cannot start: the cluster lacks what it asks for, or a worker cannot load
    the model (one line)."""


# -- the inference actor --------------------------------------------------------------------


class InferenceWorker:
    """One model replica (a Ray actor; see :class:`InferencePool`).

    Args:
        weights: (name, namespace) of the pool's :class:`WeightsHolder` actor, which hands out
            the object ref of (ModelConfig, state dict) as the driver loaded them (a
            restarted actor fetches them again the same way).
        config: the run's ProcessConfig (score, flip, map stride, instance mode).
        use_gpu: run on the GPU Ray assigned (``cuda``), else on the CPU.
        threads: torch CPU threads.
    """

    def __init__(self, weights: tuple[str, str], config: ProcessConfig, use_gpu: bool, threads: int) -> None:
        import torch

        from m2a_pipe.model.checkpoint import load_into
        from m2a_pipe.model.mask2anomaly import build_model
        from m2a_pipe.pipeline.model import make_stage

        torch.set_num_threads(threads)
        holder = ray.get_actor(weights[0], namespace=weights[1])
        model_config, state_dict = ray.get(ray.get(holder.ref.remote())[0])
        model = build_model(model_config)
        load_into(model, state_dict, source="weights from the driver")
        self.stage = make_stage(model.eval(), config, "cuda" if use_gpu else "cpu")
        self.batches = self.frames = 0

    def infer(self, images: Sequence[np.ndarray]) -> list[FrameMaps]:
        """Maps of B (h, w, 3) uint8 RGB frames at the network input size (ModelStage.__call__)."""
        maps = self.stage(images)
        self.batches += 1
        self.frames += len(images)
        return maps

    @ray.method(concurrency_group="control")
    def stats(self) -> dict[str, Any]:
        """Batches and frames since this process started, its pid and device (a new pid
        means Ray restarted the actor). Answers while a batch runs (its own concurrency group)."""
        return {"batches": self.batches, "frames": self.frames, "pid": os.getpid(), "device": str(self.stage.device),
                "precision": self.stage.core.precision.name}


class WeightsHolder:
    """Keeps the object ref of the weights for the pool's workers (a named Ray actor without
    restarts). Workers look it up by name instead of taking the ref (or any handle) as a
    constructor argument, which Ray would have to keep for their restarts."""

    def __init__(self, weights: list[Any]) -> None:
        self.weights = weights

    def ref(self) -> list[Any]:
        """The one-item list holding the ref (a list, so that Ray hands back the ref itself)."""
        return self.weights


def _remote_worker() -> Any:
    # stats() runs in its own group, beside infer(): health checks never wait behind a batch,
    # and batches still run one at a time.
    return ray.remote(concurrency_groups={"control": 1})(InferenceWorker)


# -- the job side: batches to the pool, maps back in order ----------------------------------


@dataclass
class _Pending:
    batch: list
    ref: Any
    worker: int
    attempts: int = 0


class PoolClient:
    """The pool as one video's loop sees it (a :class:`~m2a_pipe.pipeline.local.BatchMapper`).

    Batches go to the live worker with the fewest of this client's batches in flight; at most
    ``in_flight`` are outstanding; maps come back in the order the batches were sent.
    """

    def __init__(self, workers: Sequence[Any], in_flight: int, retries: int) -> None:
        self.workers = list(workers)
        self.alive = [True] * len(self.workers)
        self.load = [0] * len(self.workers)
        self.in_flight, self.retries = max(1, in_flight), retries
        self._turn = 0

    def map_batches(self, batches: Iterable[list]) -> Iterator[tuple[list, list[FrameMaps]]]:
        """(batch, maps) for each batch of (index, pts, image) frames, in order."""
        source = iter(batches)
        pending: deque[_Pending] = deque()
        more = True
        while True:
            while more and len(pending) < self.in_flight:
                batch = next(source, None)
                if batch is None:
                    more = False
                else:
                    pending.append(self._send(batch))
            if not pending:
                return
            maps = self._receive(pending)
            yield pending.popleft().batch, maps

    def _send(self, batch: list, attempts: int = 0) -> _Pending:
        live = [i for i, ok in enumerate(self.alive) if ok]
        if not live:
            raise WorkerLost("every inference worker is gone")
        self._turn += 1
        worker = min(live, key=lambda i: (self.load[i], (i - self._turn) % len(self.workers)))
        self.load[worker] += 1
        ref = self.workers[worker].infer.remote([frame[-1] for frame in batch])
        return _Pending(batch, ref, worker, attempts)

    def _receive(self, pending: deque[_Pending]) -> list[FrameMaps]:
        head = pending[0]
        while True:
            try:
                maps = ray.get(head.ref)
            except RayActorError as err:
                lost = head.worker
                if isinstance(err, ActorDiedError):
                    self.alive[lost] = False
                for i in range(len(pending)):
                    entry = pending[i]
                    if entry.worker == lost:
                        self.load[lost] -= 1
                        if entry.attempts >= self.retries:
                            raise WorkerLost(f"a batch failed {entry.attempts + 1} times: {first_line(err)}") from None
                        pending[i] = self._send(entry.batch, entry.attempts + 1)
                head = pending[0]
                continue
            self.load[head.worker] -= 1
            return maps


def _video_task(video: VideoInput, output: str, config: ProcessConfig, model: ModelInfo, workers: list[Any],
                batch_size: int, in_flight: int, retries: int) -> VideoResult:
    """One video in a Ray worker process: the shared loop with the pool as its model. The
    job's own work (decoding, the overlay's drawing) runs on one thread of torch and of
    OpenCV, so that it stays on the CPU the job reserved and off the model workers' cores."""
    import cv2
    import torch

    from m2a_pipe.pipeline.local import run_video

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    return run_video(video, output, config, model, PoolClient(workers, in_flight, retries), batch_size)


# -- the driver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolPlan:
    """Resolved pool settings: ``workers`` actors with ``gpus``/``cpus`` each, ``jobs`` videos
    at once, ``in_flight`` batches per video, ``batch_size`` frames per batch."""

    workers: int
    gpus: float
    cpus: float
    jobs: int
    in_flight: int
    batch_size: int


def plan_pool(ray_config: RayConfig, config: ProcessConfig, resources: dict[str, float], n_videos: int) -> PoolPlan:
    """Fill in the automatic settings of ``ray_config`` from the cluster's ``resources``."""
    gpus = ray_config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    cpus = ray_config.cpus_per_worker
    workers = ray_config.workers
    if workers is None:
        workers = int(resources.get("GPU", 0) // gpus) if gpus > 0 else int(resources.get("CPU", 1) // cpus)
        workers = max(1, workers)
    for name, each, have in (("GPU", gpus, resources.get("GPU", 0.0)), ("CPU", cpus, resources.get("CPU", 0.0))):
        if workers * each > have + 1e-9:
            raise PoolError(f"{workers} worker(s) x {each:g} {name} each need {workers * each:g} {name}s; "
                            f"the cluster has {have:g} (set --workers, --gpus-per-worker or --cpus-per-worker)")
    jobs = ray_config.jobs or workers
    running = max(1, min(jobs, n_videos))
    in_flight = ray_config.in_flight or max(2, math.ceil(2 * workers / running))
    batch = config.batch_size or default_batch_size("cuda" if gpus > 0 else "cpu")
    return PoolPlan(workers=workers, gpus=gpus, cpus=cpus, jobs=jobs, in_flight=in_flight, batch_size=batch)


class InferencePool:
    """``plan.workers`` inference actors holding one replica of ``weights`` each, named
    ``m2a-pipe-worker-<run id>-<i>`` (in the driver's namespace; dashboards show them)."""

    def __init__(self, weights: tuple[Any, dict], config: ProcessConfig, plan: PoolPlan, restarts: int) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self._weights = ray.put(weights)
        holder = (f"{WORKER_NAME}-{self.run_id}-weights", ray.get_runtime_context().namespace)
        self._holder = ray.remote(WeightsHolder).options(num_cpus=0, name=holder[0]).remote([self._weights])
        threads = max(1, int(plan.cpus))
        cls = _remote_worker()
        self.actors = []
        for i in range(plan.workers):
            options = dict(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=restarts, max_task_retries=restarts,
                           name=f"{WORKER_NAME}-{self.run_id}-{i}")
            self.actors.append(cls.options(**options).remote(holder, config, plan.gpus > 0, threads))
        self.pids: list[int] = []
        self.precisions: list[str] = []
        self.closed = False

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until every actor has loaded its replica; PoolError when one cannot."""
        try:
            stats = ray.get([a.stats.remote() for a in self.actors], timeout=timeout_s)
        except RayError as err:
            cause = getattr(err, "cause", None) or err
            raise PoolError(f"an inference worker could not start: {first_line(cause)}") from None
        self.pids = [s["pid"] for s in stats]
        self.precisions = sorted({s["precision"] for s in stats})  # several on a mixed cluster

    def stats(self, timeout_s: float = 10.0) -> list[dict[str, Any] | None]:
        """Each actor's :meth:`InferenceWorker.stats`, None for one that is gone."""
        out: list[dict[str, Any] | None] = []
        for actor in self.actors:
            try:
                out.append(ray.get(actor.stats.remote(), timeout=timeout_s))
            except (RayError, GetTimeoutError):
                out.append(None)
        return out

    def close(self) -> None:
        """Kill the actors and the weights holder (once; later calls do nothing)."""
        if self.closed:
            return
        self.closed = True
        for actor in [*self.actors, self._holder]:
            ray.kill(actor, no_restart=True)


def connect(address: str | None) -> bool:
    """Start or join Ray unless this process already has; True when this call did.

    No address: the cluster ``RAY_ADDRESS`` names (set inside ``ray job submit`` jobs), else a
    new local instance without a dashboard. A failure is one :class:`PoolError` line that says
    what went wrong: nothing answers at a HOST:PORT address (checked first, in seconds, where
    Ray would retry for minutes), the cluster asks for token authentication
    (``RAY_AUTH_MODE=token`` and the cluster's token, see :func:`_auth_hint`), or Ray's reason.
    """
    if ray.is_initialized():
        return False
    where = address or os.environ.get("RAY_ADDRESS") or None
    if where:
        _check_reachable(where)
    try:
        ray.init(address=address, logging_level=logging.WARNING,
                 **({"include_dashboard": False} if where is None else {}))
    except (*AUTH_ERRORS, ConnectionError, RuntimeError, ValueError) as err:
        where = where or "a local instance"
        if _is_auth_failure(err):
            raise PoolError(f"Ray ({where}): {_auth_hint()}") from None
        reason = first_line(err)
        if reason.startswith("Failed to connect to Ray cluster"):
            reason += f" (no Ray head answered there: {HEAD_ADDRESS_HINT})"
        raise PoolError(f"Ray ({where}): {reason}") from None
    return True


AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
HEAD_ADDRESS_HINT = "is the head running, and is this its GCS address (`ray start --head --port`, 6379 by default)?"
REACH_TIMEOUT_S = 5.0
"""Seconds to wait for a TCP connection to a HOST:PORT address before saying nothing answers."""


def _check_reachable(address: str) -> None:
    """PoolError unless something accepts TCP connections at a ``HOST:PORT`` address (other
    forms, ``auto``, ``local``, ``ray://...``, are left to Ray). A dashboard URL is named as such."""
    if address.startswith(("http://", "https://")):
        raise PoolError(f"Ray ({address}): that is a dashboard (Jobs API) address, for `ray job submit "
                        "--address`; --address takes the head's GCS address HOST:PORT (port 6379 unless "
                        "`ray start --head --port` set another) or auto")
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err) or type(err).__name__)
        raise PoolError(f"Ray ({address}): nothing answers there ({reason}): {HEAD_ADDRESS_HINT}") from None


def _is_auth_failure(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps, even as text: Ray folds the last connection error into
    a RuntimeError's message) is Ray's authentication failure."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, AUTH_ERRORS) or any(
                mark in str(err) for mark in ("AuthenticationError", "InvalidAuthToken", "Unauthenticated")):
            return True
        err = err.__cause__ or err.__context__
    return False


def _auth_hint() -> str:
    """One line for an authentication failure: what to set, and where the token comes from."""
    give = (f"give the cluster's token in ${AUTH_TOKEN_ENV}, in a file named by ${AUTH_TOKEN_PATH_ENV}, or in "
            f"{DEFAULT_TOKEN_FILE} (`ray get-auth-token` on the head prints it)")
    if os.environ.get(AUTH_MODE_ENV, "").lower() != "token":
        return f"the cluster requires token authentication: set {AUTH_MODE_ENV}=token and {give}"
    if _token_missing():
        return f"{AUTH_MODE_ENV}=token but no token was found: {give}"
    if os.environ.get(AUTH_TOKEN_ENV, "").strip():
        source = f"${AUTH_TOKEN_ENV}"
    else:
        source = os.environ.get(AUTH_TOKEN_PATH_ENV) or DEFAULT_TOKEN_FILE
    return f"the cluster refused the authentication token from {source}: {give}"


def _token_missing() -> bool:
    """No token where Ray looks for one ($RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH names,
    else ~/.ray/auth_token)."""
    if os.environ.get(AUTH_TOKEN_ENV, "").strip():
        return False
    path = Path(os.environ.get(AUTH_TOKEN_PATH_ENV) or DEFAULT_TOKEN_FILE).expanduser()
    try:
        return not path.read_text().strip()
    except OSError:
        return True


@dataclass
class RayRunStats:
    """What the pool did: ``workers`` actors, ``restarted`` of them restarted by Ray,
    ``lost`` gone for good, ``batches`` and ``frames`` per actor (current process)."""

    workers: int
    restarted: int
    lost: int
    batches: list[int]
    plan: PoolPlan

    def line(self) -> str:
        return (f"ray: {self.workers} worker(s) ({self.plan.gpus:g} GPU, {self.plan.cpus:g} CPU each), "
                f"{self.plan.jobs} job(s) at once, {self.plan.in_flight} batch(es) of {self.plan.batch_size} "
                f"in flight per video; {self.restarted} restarted, {self.lost} lost; "
                f"batches per worker {'/'.join(map(str, self.batches))}")


def run_on_ray(videos: Sequence[VideoInput], output: Path, config: ProcessConfig, weights: tuple[Any, dict],
               model: ModelInfo, ray_config: RayConfig, *, on_result: Callable[[VideoResult], None]) -> RayRunStats:
    """Process ``videos`` on Ray; ``on_result`` gets each video's result as it finishes.

    Returns the pool's statistics. KeyboardInterrupt cancels the running jobs, removes their
    temporary folders and propagates; finished videos stay.
    """
    started_here = connect(ray_config.address)
    pool = None
    running: dict[Any, VideoInput] = {}
    try:
        plan = plan_pool(ray_config, config, ray.cluster_resources(), len(videos))
        config = config.for_device("cuda" if plan.gpus > 0 else "cpu")
        pool = InferencePool(weights, config, plan, ray_config.worker_restarts)
        pool.wait_ready()
        model = replace(model, precision=",".join(pool.precisions))
        task = ray.remote(_video_task).options(num_cpus=ray_config.cpus_per_job, max_retries=JOB_RETRIES,
                                               scheduling_strategy="SPREAD")
        queue = deque(videos)
        while queue or running:
            while queue and len(running) < plan.jobs:
                video = queue.popleft()
                ref = task.remote(video, str(output), config, model, pool.actors, plan.batch_size, plan.in_flight,
                                  ray_config.batch_retries)
                running[ref] = video
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                video = running.pop(ref)
                on_result(_result_of(ref, video, output))
        stats = pool.stats()
        return RayRunStats(workers=plan.workers,
                           restarted=sum(1 for s, pid in zip(stats, pool.pids) if s and s["pid"] != pid),
                           lost=sum(1 for s in stats if s is None), batches=[s["batches"] if s else 0 for s in stats],
                           plan=plan)
    except KeyboardInterrupt:
        _cancel(running, output, pool)
        raise
    finally:
        if pool is not None:
            pool.close()
        if started_here:
            ray.shutdown()


def _result_of(ref: Any, video: VideoInput, output: Path) -> VideoResult:
    """The job's VideoResult; a job that raised is a failed result naming the video."""
    try:
        return ray.get(ref)
    except RayError as err:
        cause = getattr(err, "cause", None) or err
        remove_partials(video.out_dir(output))
        return VideoResult(source=str(video.source), rel=video.rel, out_dir=str(video.out_dir(output)),
                           status="failed", error=f"{video.source}: {first_line(cause)}", extra=video.extra)


def _cancel(running: dict[Any, VideoInput], output: Path, pool: "InferencePool | None") -> None:
    """Stop the running jobs and remove their temporary folders.

    The pool's workers are killed first: each job's next batch fails, and the job stops and
    removes its own temporary folder as for any error. A job still running after
    :data:`CANCEL_GRACE_S` (one not waiting on the pool) is cancelled by force. The jobs are
    not cancelled first because a reply already on its way for a cancelled task can abort the
    driver inside Ray's task manager ("Tried to complete task that was not pending", seen
    with Ray 2.60).
    """
    pending = list(running)
    if pool is not None:
        pool.close()
    pending = _wait_all(pending, CANCEL_GRACE_S)
    for ref in pending:
        ray.cancel(ref, force=True)
    _wait_all(pending, CANCEL_WAIT_S)
    for video in running.values():
        remove_partials(video.out_dir(output))


def _wait_all(refs: list[Any], seconds: float) -> list[Any]:
    """Wait up to ``seconds`` for ``refs`` to finish; returns those still pending."""
    deadline = time.monotonic() + seconds
    while refs and time.monotonic() < deadline:
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=0.5)
    return refs
