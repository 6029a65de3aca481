"""Tracking of anomaly instances across the frames of one video (the one stateful post-processor).

Per :meth:`Tracker.update` call:

1. **Predict** every live track's box with a constant-velocity alpha-beta filter on the box state
   ``(cx, cy, w, h)`` (centre and size, pixels of the map the instances come from) and its
   velocity (pixels per frame-key unit): ``x_pred = x + v * dt`` with ``dt`` the difference of
   the frame keys (1 for the pipeline's processed-frame counter).
2. **Associate** with the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) on

       cost = iou_weight * (1 - IoU(pred, det)) + distance_weight * |c_pred - c_det| / s

   where ``s`` is the mean of the two box diagonals, so a small fast object whose predicted box
   no longer overlaps its detection can still match when it is within about one box size. For a
   track seen once (velocity still unknown) ``s`` is multiplied by ``first_match_slack``.
   Pairs with ``cost > max_cost`` are never matched (gating). Confirmed tracks (coasting ones
   included) are matched first, tentative tracks get the detections left over, so a fresh
   false positive cannot steal an established object's detection.
3. **Correct** matched tracks: ``r = z - x_pred; x = x_pred + alpha * r; v = v + beta / dt * r``
   (the second hit sets the velocity to the observed displacement, the first sets ``v = 0``).
   Unmatched tracks coast: ``x = x_pred``.
4. **Birth / death**: an unmatched detection starts a *tentative* track; it is *confirmed* when it
   is hit in each of its first ``min_hits`` update calls and dropped at its first miss before
   that. A confirmed track survives up to ``max_misses`` consecutive missed calls (coasting on
   its prediction; nothing is emitted for it then) and is deleted at the next miss.

Ids are 1, 2, 3, ... given **at confirmation**, in confirmation order (ties: birth order), so they
have no gaps and are never reused. Output comes with a fixed lag of ``min_hits - 1`` calls: the
frame given to the k-th call is final after call ``k + lag`` (by then every track holding one of
its detections has been confirmed or dropped), so even the first frames of a track carry its id.
Each final frame comes as a :class:`FrameTracks`: its key and its
:class:`~m2a_pipe.video.detections.Detections` (the instances given, each with its id).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from m2a_pipe.inference.instances import Instance
from m2a_pipe.settings import DEFAULT_MAX_MISSES, DEFAULT_MIN_HITS, check_track_lifetimes
from m2a_pipe.video.detections import UNCONFIRMED, Detections

_UNMATCHABLE = 1e9  # cost given to gated pairs so the assignment avoids them
_MIN_SIZE_PX = 1.0  # predicted boxes never shrink below one pixel


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings (see the module docstring for the model).

    ``min_hits``: consecutive hits that confirm a track (also the output lag + 1).
    ``max_misses``: consecutive misses a confirmed track survives (0: deleted at its first miss).
    ``max_cost``: gate; with the default weights an IoU of 0 still matches up to one mean box
    diagonal of centre distance, an IoU of 0.5 up to two.
    ``iou_weight`` / ``distance_weight``: weights of ``1 - IoU`` and of the size-normalised
    centre distance in the cost.
    ``first_match_slack``: the distance scale ``s`` of a track seen only once (no velocity yet)
    is multiplied by this, so a fast object is caught on its second frame (default: up to two
    diagonals away at IoU 0).
    ``alpha`` / ``beta``: alpha-beta filter gains on the state and its velocity, in (0, 1].
    """

    min_hits: int = DEFAULT_MIN_HITS
    max_misses: int = DEFAULT_MAX_MISSES
    max_cost: float = 1.5
    iou_weight: float = 1.0
    distance_weight: float = 0.5
    first_match_slack: float = 2.0
    alpha: float = 0.6
    beta: float = 0.2

    def __post_init__(self) -> None:
        check_track_lifetimes(self.min_hits, self.max_misses)
        if not self.max_cost > 0 or self.iou_weight < 0 or self.distance_weight < 0:
            raise ValueError("max_cost must be > 0 and the weights >= 0")
        if not self.first_match_slack >= 1:
            raise ValueError(f"first_match_slack must be >= 1, got {self.first_match_slack}")
        if not (0 < self.alpha <= 1 and 0 <= self.beta <= 1):
            raise ValueError(f"need 0 < alpha <= 1 and 0 <= beta <= 1, got {self.alpha}, {self.beta}")


@dataclass(frozen=True)
class FrameTracks:
    """One final frame of the tracker.

    ``frame``: the key given to :meth:`Tracker.update`; ``detections``: the instances given with
    it, in the order given, each paired with its final track id (0 for a detection not part of a
    confirmed track, see :class:`~m2a_pipe.video.detections.Detections`).
    """

    frame: int
    detections: Detections

    @property
    def track_ids(self) -> tuple[int, ...]:
        """The N track ids of :attr:`detections`."""
        return self.detections.track_ids


@dataclass
class _Track:
    """Filter state of one track: ``state`` and ``velocity`` (4,) float64 over (cx, cy, w, h)."""

    serial: int
    state: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1
    misses: int = 0
    track_id: int = 0  # public id, 0 while tentative

    @property
    def confirmed(self) -> bool:
        return self.track_id > 0


def box_state(bbox: Sequence[float]) -> np.ndarray:
    """(x0, y0, x1, y1) exclusive box -> (4,) float64 state (cx, cy, w, h)."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])


def state_boxes(states: np.ndarray) -> np.ndarray:
    """(N, 4) (cx, cy, w, h) -> (N, 4) float64 (x0, y0, x1, y1)."""
    half = np.maximum(states[:, 2:], _MIN_SIZE_PX) / 2
    return np.concatenate([states[:, :2] - half, states[:, :2] + half], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) and (M, 4) float (x0, y0, x1, y1) boxes -> (N, M) float64 (0 for empty unions)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def association_cost(pred: np.ndarray, det: np.ndarray, iou_weight: float, distance_weight: float,
                     slack: np.ndarray | float = 1.0) -> np.ndarray:
    """Cost of matching (T, 4) predicted to (N, 4) detected (x0, y0, x1, y1) boxes -> (T, N) float64.

    ``iou_weight * (1 - IoU) + distance_weight * centre distance / (slack * mean of the two
    diagonals)``; ``slack`` is a scalar or one (T,) factor per predicted box.
    """
    iou = box_iou(pred, det)
    centre_p = (pred[:, :2] + pred[:, 2:]) / 2
    centre_d = (det[:, :2] + det[:, 2:]) / 2
    dist = np.linalg.norm(centre_p[:, None] - centre_d[None], axis=2)
    diag_p = np.hypot(*(pred[:, 2:] - pred[:, :2]).T)
    diag_d = np.hypot(*(det[:, 2:] - det[:, :2]).T)
    scale = np.maximum((diag_p[:, None] + diag_d[None]) / 2, _MIN_SIZE_PX) * np.reshape(slack, (-1, 1))
    return iou_weight * (1.0 - iou) + distance_weight * dist / scale


def gated_assignment(cost: np.ndarray, max_cost: float) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one (row, col) pairs of a (T, N) cost matrix, keeping only ``cost <= max_cost``.

    Deterministic: pairs come in increasing row order.
    """
    if cost.size == 0:
        return []
    gated = np.where(cost <= max_cost, cost, _UNMATCHABLE)
    rows, cols = linear_sum_assignment(gated)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] <= max_cost]


class Tracker:
    """Tracks anomaly instances across the frames of one video (module docstring).

    Call :meth:`update` once per frame with strictly increasing frame keys, then
    :meth:`finish` once; together they return every frame exactly once, in order.
    """

    def __init__(self, config: TrackerConfig = TrackerConfig()) -> None:
        self.config = config
        self._tracks: list[_Track] = []  # live tracks, in birth order
        self._pending: deque[tuple[int, tuple[Instance, ...], list[_Track | None]]] = deque()
        self._last_frame: int | None = None
        self._next_serial = 0
        self._next_id = 1
        self._finished = False

    @property
    def lag(self) -> int:
        """Update calls between a frame going in and coming out final (``min_hits - 1``)."""
        return self.config.min_hits - 1

    @property
    def n_confirmed(self) -> int:
        """Number of ids given so far."""
        return self._next_id - 1

    def update(self, frame: int, detections: Sequence[Instance]) -> list[FrameTracks]:
        """Add one frame's detections; returns the frames that became final (0 or 1 of them).

        ``frame``: any integer key, larger than the previous one; ``detections``: the frame's N
        instances (only ``bbox`` is used for tracking; they come back in the frame's
        :class:`FrameTracks` with their ids).
        """
        if self._finished:
            raise RuntimeError("Tracker.update() after finish()")
        frame = int(frame)
        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(f"frames must increase: got {frame} after {self._last_frame}")
        dt = 1.0 if self._last_frame is None else float(frame - self._last_frame)
        self._last_frame = frame

        instances = tuple(detections)
        det_boxes = np.array([inst.bbox for inst in instances], dtype=np.float64).reshape(-1, 4)
        predicted = [t.state + t.velocity * dt for t in self._tracks]
        owners: list[_Track | None] = [None] * len(det_boxes)
        matched: set[int] = set()  # track serials hit this frame
        free = list(range(len(det_boxes)))
        for stage in (True, False):  # confirmed tracks first, then tentative ones
            rows = [i for i, t in enumerate(self._tracks) if t.confirmed == stage]
            if not rows or not free:
                continue
            pred = state_boxes(np.stack([predicted[i] for i in rows]))
            slack = np.array([self.config.first_match_slack if self._tracks[i].hits == 1 else 1.0 for i in rows])
            cost = association_cost(pred, det_boxes[free], self.config.iou_weight, self.config.distance_weight, slack)
            taken = []
            for r, c in gated_assignment(cost, self.config.max_cost):
                track, d = self._tracks[rows[r]], free[c]
                self._correct(track, predicted[rows[r]], box_state(det_boxes[d]), dt)
                owners[d] = track
                matched.add(track.serial)
                taken.append(d)
            free = [d for d in free if d not in taken]

        survivors = []
        for track, pred in zip(self._tracks, predicted):
            if track.serial not in matched:
                track.misses += 1
                track.state = pred
                if not track.confirmed or track.misses > self.config.max_misses:
                    continue  # tentative tracks die at their first miss
            survivors.append(track)
        for d in free:
            track = _Track(serial=self._next_serial, state=box_state(det_boxes[d]))
            self._next_serial += 1
            survivors.append(track)
            owners[d] = track
        self._tracks = survivors
        for track in self._tracks:  # birth order, so simultaneous confirmations get ids in that order
            if not track.confirmed and track.hits >= self.config.min_hits:
                track.track_id = self._next_id
                self._next_id += 1

        self._pending.append((frame, instances, owners))
        out = []
        while len(self._pending) > self.lag:
            out.append(self._emit())
        return out

    def finish(self) -> list[FrameTracks]:
        """The frames still waiting (tracks not yet confirmed count as 0); ends the tracker."""
        self._finished = True
        out = [self._emit() for _ in range(len(self._pending))]
        self._tracks = []
        return out

    def _correct(self, track: _Track, pred: np.ndarray, z: np.ndarray, dt: float) -> None:
        if track.hits == 1:  # second observation: the velocity is the observed displacement
            track.velocity = (z - track.state) / dt
            track.state = z
        else:
            residual = z - pred
            track.state = pred + self.config.alpha * residual
            track.velocity = track.velocity + (self.config.beta / dt) * residual
        track.hits += 1
        track.misses = 0

    def _emit(self) -> FrameTracks:
        frame, instances, owners = self._pending.popleft()
        ids = tuple(t.track_id if t is not None else UNCONFIRMED for t in owners)
        return FrameTracks(frame=frame, detections=Detections(instances, ids))
