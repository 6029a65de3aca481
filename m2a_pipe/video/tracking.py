"""Tracking of anomaly instances across the frames of one video (the one stateful post-processor).

Per :meth:`Tracker.update` call, with the frame's detections and, optionally, its *weak*
detections (blobs the model is unsure of, see :func:`m2a_pipe.inference.instances.weak_instances`):

1. **Predict** every live track's box with a constant-velocity alpha-beta filter on the box state
   ``(cx, cy, w, h)`` (centre and size, pixels of the map the instances come from, refined boxes
   where the instances have them) and its velocity (pixels per frame-key unit):
   ``x_pred = x + v * dt`` with ``dt`` the difference of the frame keys (1 for the pipeline's
   processed-frame counter).
2. **Associate** in stages with the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) on

       cost = iou_weight * (1 - IoU(pred, det)) + distance_weight * |c_pred - c_det| / s

   where ``s`` is the mean of the two box diagonals, so a small fast object whose predicted box
   no longer overlaps its detection can still match when it is within about one box size; ``s``
   is multiplied by ``first_match_slack`` for a track seen once (velocity still unknown) and by
   ``1 + coast_slack * misses`` for a track coasting through misses. Pairs with
   ``cost > max_cost`` are never matched (gating), nor pairs whose boxes differ in width or in
   height by more than ``max_size_change`` times (:func:`size_ratio`: a wide band the model lights
   up along the road is no continuation of a small object's track, however near its centre).
   A predicted box that reaches past the frame (``frame_size``) is clipped to it first: an
   object leaving the frame shows only its part inside, and its last boxes shrink and shift
   towards the edge while its prediction runs on out of the frame.
   (a) confirmed tracks (coasting ones included) take detections first, (b) tentative tracks get
   the detections left over, so a fresh false positive cannot steal an established object's
   detection, (c) confirmed tracks still unmatched take weak detections (two-stage association
   with low-score detections): a small or faint object whose score dips under the threshold for
   a few frames keeps its track and its boxes. Weak detections are matched at the track's own
   distance scale, without the coasting slack: a faint blob keeps a track where it is predicted,
   and does not carry a coasting one's id onto another object nearby.
3. **Merge fragments**: a detection left over with at least ``merge_overlap`` of its box inside
   the box of a track matched in this frame (the union of its prediction and its detection, grown
   by a quarter of its size), where that track's detection covers less than ``merge_below_cover``
   of its predicted box (a piece of the object is missing from it), and which lies within
   ``merge_max_gap`` times the smaller one's size of that detection (two objects that touched
   drift apart; the pieces of one stay close), is a piece of the same object and is merged into
   that detection
   (:func:`~m2a_pipe.inference.instances.merged_instance`), so one object never starts a second
   track.
4. **Correct** matched tracks: ``r = z - x_pred; x = x_pred + alpha * r; v = v + beta / dt * r``
   (the second hit sets the velocity to the observed displacement, the first sets ``v = 0``).
   Unmatched tracks coast: ``x = x_pred``.
5. **Birth / death**: an unmatched detection starts a *tentative* track; it is *confirmed* when it
   is hit in each of its first ``min_hits`` update calls and dropped at its first miss before
   that. A confirmed track survives up to ``max_misses`` consecutive missed calls (coasting on
   its prediction; nothing is emitted for it then) and is then *lost*: remembered for
   ``rejoin_frames`` frame keys.
6. **Rejoin**: a track confirmed within ``rejoin_distance`` mean box diagonals of a lost or
   coasting confirmed track (the nearest), its box within ``max_size_change`` of that track's
   in width and height, is the same object found again: it takes that track's
   id (and a coasting one is ended), so a re-found object continues its track and its event.

Ids are 1, 2, 3, ... given **at confirmation** to tracks that rejoin none, in confirmation order
(ties: birth order), so they have no gaps and are never given to another object. Output comes
with a fixed lag of ``min_hits - 1`` calls: the frame given to the k-th call is final after call
``k + lag`` (by then every track holding one of its detections has been confirmed or dropped), so
even the first frames of a track carry its id. Each final frame comes as a :class:`FrameTracks`:
its key and its :class:`~m2a_pipe.video.detections.Detections` (the detections given, fragments
merged, in the order given, then the weak detections that extended a track).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from m2a_pipe.inference.instances import Instance, merged_instance
from m2a_pipe.settings import (
    DEFAULT_MAX_MISSES,
    DEFAULT_MIN_HITS,
    TRACK_MAX_SIZE_CHANGE,
    TRACK_MERGE_BELOW_COVER,
    TRACK_MERGE_MAX_GAP,
    TRACK_MERGE_OVERLAP,
    TRACK_REJOIN_DISTANCE,
    TRACK_REJOIN_FRAMES,
    check_track_lifetimes,
)
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
    ``coast_slack``: growth of the distance scale per missed call of a coasting track.
    ``merge_overlap``: fraction of a left-over detection's box inside a matched track's grown box
    that makes it a fragment of that track's object (> 1: never merge); ``merge_below_cover``: only
    a track whose detection covers less than this fraction of its predicted box takes fragments;
    ``merge_max_gap``: nor a fragment further from that detection than this many times the longer
    side of the smaller of the two (:func:`box_gap`).
    ``rejoin_frames`` / ``rejoin_distance``: how long (frame keys) a lost track is remembered and
    how near (mean box diagonals) a new track must be confirmed to take its id (0: never rejoin).
    ``max_size_change``: the largest width or height ratio (>= 1) between a track's predicted box
    and a detection it takes, and between a new track's box and the lost one it rejoins.
    """

    min_hits: int = DEFAULT_MIN_HITS
    max_misses: int = DEFAULT_MAX_MISSES
    max_cost: float = 1.5
    iou_weight: float = 1.0
    distance_weight: float = 0.5
    first_match_slack: float = 2.0
    alpha: float = 0.6
    beta: float = 0.2
    coast_slack: float = 0.5
    merge_overlap: float = TRACK_MERGE_OVERLAP
    merge_below_cover: float = TRACK_MERGE_BELOW_COVER
    rejoin_frames: int = TRACK_REJOIN_FRAMES
    rejoin_distance: float = TRACK_REJOIN_DISTANCE
    max_size_change: float = TRACK_MAX_SIZE_CHANGE
    merge_max_gap: float = TRACK_MERGE_MAX_GAP

    def __post_init__(self) -> None:
        check_track_lifetimes(self.min_hits, self.max_misses)
        if not self.max_cost > 0 or self.iou_weight < 0 or self.distance_weight < 0:
            raise ValueError("max_cost must be > 0 and the weights >= 0")
        if not self.first_match_slack >= 1:
            raise ValueError(f"first_match_slack must be >= 1, got {self.first_match_slack}")
        if not (0 < self.alpha <= 1 and 0 <= self.beta <= 1):
            raise ValueError(f"need 0 < alpha <= 1 and 0 <= beta <= 1, got {self.alpha}, {self.beta}")
        if self.coast_slack < 0 or self.merge_overlap <= 0 or self.rejoin_frames < 0 or self.rejoin_distance < 0:
            raise ValueError("coast_slack, rejoin_frames, rejoin_distance must be >= 0 and merge_overlap > 0")
        if not self.max_size_change >= 1:
            raise ValueError(f"max_size_change must be >= 1, got {self.max_size_change}")
        if not self.merge_max_gap >= 0:
            raise ValueError(f"merge_max_gap must be >= 0, got {self.merge_max_gap}")
        if not 0 < self.merge_below_cover <= 1:
            raise ValueError(f"merge_below_cover must be in (0, 1], got {self.merge_below_cover}")


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


@dataclass(eq=False)  # compared by identity
class _Track:
    """Filter state of one track: ``state`` and ``velocity`` (4,) float64 over (cx, cy, w, h)."""

    serial: int
    state: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1
    misses: int = 0
    track_id: int = 0  # public id, 0 while tentative
    lost_at: int = 0  # frame key of the last miss that ended it (lost tracks only)

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


def size_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far apart in size (N, 4) and (M, 4) float (x0, y0, x1, y1) boxes are -> (N, M) float64:
    the larger of their width ratio and height ratio, each taken >= 1 (larger over smaller; sides
    under a pixel count as one pixel)."""
    sa = np.maximum(np.asarray(a, np.float64)[:, 2:] - np.asarray(a, np.float64)[:, :2], _MIN_SIZE_PX)
    sb = np.maximum(np.asarray(b, np.float64)[:, 2:] - np.asarray(b, np.float64)[:, :2], _MIN_SIZE_PX)
    ratio = sa[:, None, :] / sb[None, :, :]
    return np.maximum(ratio, 1 / ratio).max(axis=2)


def gated_assignment(cost: np.ndarray, max_cost: float) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one (row, col) pairs of a (T, N) cost matrix, keeping only ``cost <= max_cost``.

    Deterministic: pairs come in increasing row order.
    """
    if cost.size == 0:
        return []
    gated = np.where(cost <= max_cost, cost, _UNMATCHABLE)
    rows, cols = linear_sum_assignment(gated)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] <= max_cost]


def box_gap(a: np.ndarray, b: np.ndarray) -> float:
    """The gap between two (4,) (x0, y0, x1, y1) boxes: the largest of the horizontal and the
    vertical distance between them (0 for boxes that touch or overlap)."""
    return float(max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3], 0.0))


def longer_side(box: np.ndarray) -> float:
    """The longer of a (4,) (x0, y0, x1, y1) box's width and height."""
    return float(max(box[2] - box[0], box[3] - box[1]))


def grown_box(box: np.ndarray, fraction: float) -> np.ndarray:
    """(4,) (x0, y0, x1, y1) grown by ``fraction`` of its width / height on every side."""
    pad = (box[2:] - box[:2]) * fraction
    return np.concatenate([box[:2] - pad, box[2:] + pad])


def inside_fraction(inner: np.ndarray, outer: np.ndarray) -> float:
    """Fraction of the (4,) box ``inner``'s area inside the (4,) box ``outer`` (0 for an empty ``inner``)."""
    lo, hi = np.maximum(inner[:2], outer[:2]), np.minimum(inner[2:], outer[2:])
    area = float(np.prod(np.clip(inner[2:] - inner[:2], 0, None)))
    return float(np.prod(np.clip(hi - lo, 0, None))) / area if area > 0 else 0.0


class Tracker:
    """Tracks anomaly instances across the frames of one video (module docstring).

    Call :meth:`update` once per frame with strictly increasing frame keys, then
    :meth:`finish` once; together they return every frame exactly once, in order.
    """

    def __init__(self, config: TrackerConfig = TrackerConfig(), frame_size: tuple[float, float] | None = None) -> None:
        """``frame_size``: (width, height) of the frame in the instances' pixels; predicted boxes are
        clipped to ``[0, width] x [0, height]`` before association (None: never clipped)."""
        if frame_size is not None and not min(frame_size) > 0:
            raise ValueError(f"frame_size must be positive, got {frame_size}")
        self.config = config
        self.frame_size = frame_size
        self._tracks: list[_Track] = []  # live tracks, in birth order
        self._lost: list[_Track] = []  # confirmed tracks ended by misses, still rejoinable
        self._pending: deque[tuple[int, list[Instance], list[_Track | None]]] = deque()
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

    def update(self, frame: int, detections: Sequence[Instance], weak: Sequence[Instance] = ()) -> list[FrameTracks]:
        """Add one frame's detections; returns the frames that became final (0 or 1 of them).

        ``frame``: any integer key, larger than the previous one; ``detections``: the frame's N
        instances; ``weak``: its weak instances, used only to extend confirmed tracks (only the
        boxes, :attr:`~m2a_pipe.inference.instances.Instance.box`, are used for tracking; the
        instances come back in the frame's :class:`FrameTracks` with their ids).
        """
        if self._finished:
            raise RuntimeError("Tracker.update() after finish()")
        frame = int(frame)
        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(f"frames must increase: got {frame} after {self._last_frame}")
        dt = 1.0 if self._last_frame is None else float(frame - self._last_frame)
        self._last_frame = frame

        instances = list(detections)
        predicted = {t.serial: t.state + t.velocity * dt for t in self._tracks}
        owners: list[_Track | None] = [None] * len(instances)
        confirmed = [t for t in self._tracks if t.confirmed]
        free = self._associate(confirmed, instances, list(range(len(instances))), predicted, owners)
        free = self._associate([t for t in self._tracks if not t.confirmed], instances, free, predicted, owners)
        weak = list(weak)
        weak_owners: list[_Track | None] = [None] * len(weak)
        self._associate([t for t in confirmed if t not in owners], weak, list(range(len(weak))), predicted,
                        weak_owners, slack=False)
        free = self._merge_fragments(instances, free, owners, predicted)
        for track, inst in [(t, instances[d]) for d, t in enumerate(owners) if t is not None] + \
                [(t, weak[d]) for d, t in enumerate(weak_owners) if t is not None]:
            self._correct(track, predicted[track.serial], box_state(inst.box), dt)

        matched = {t.serial for t in owners + weak_owners if t is not None}
        survivors = []
        for track in self._tracks:
            if track.serial not in matched:
                track.misses += 1
                track.state = predicted[track.serial]
                if track.confirmed and track.misses > self.config.max_misses:
                    track.lost_at = frame
                    self._lost.append(track)
                if not track.confirmed or track.misses > self.config.max_misses:
                    continue  # tentative tracks die at their first miss
            survivors.append(track)
        self._lost = [t for t in self._lost if frame - t.lost_at <= self.config.rejoin_frames]
        for d in sorted(free):
            if owners[d] is None:
                track = _Track(serial=self._next_serial, state=box_state(instances[d].box))
                self._next_serial += 1
                survivors.append(track)
                owners[d] = track
        self._tracks = survivors
        for track in list(self._tracks):  # birth order, so simultaneous confirmations get ids in that order
            if not track.confirmed and track.hits >= self.config.min_hits:
                self._confirm(track)

        kept = [d for d, inst in enumerate(instances) if inst is not None]
        extended = [d for d, t in enumerate(weak_owners) if t is not None]
        self._pending.append((frame, [instances[d] for d in kept] + [weak[d] for d in extended],
                              [owners[d] for d in kept] + [weak_owners[d] for d in extended]))
        out = []
        while len(self._pending) > self.lag:
            out.append(self._emit())
        return out

    def finish(self) -> list[FrameTracks]:
        """The frames still waiting (tracks not yet confirmed count as 0); ends the tracker."""
        self._finished = True
        out = [self._emit() for _ in range(len(self._pending))]
        self._tracks, self._lost = [], []
        return out

    # -- internals ---------------------------------------------------------------------

    def _associate(self, tracks: list[_Track], instances: list[Instance | None], free: list[int],
                   predicted: dict[int, np.ndarray], owners: list[_Track | None], slack: bool = True) -> list[int]:
        """Match ``tracks`` to the ``free`` instances (gated Hungarian); sets ``owners``, returns the
        instances still free. ``slack``: widen the distance scale of tracks seen once or coasting."""
        if not tracks or not free:
            return free
        cfg = self.config
        pred = self._visible(state_boxes(np.stack([predicted[t.serial] for t in tracks])))
        det = np.array([instances[d].box for d in free], dtype=np.float64).reshape(-1, 4)
        scale = np.array([cfg.first_match_slack if t.hits == 1 else 1.0 + cfg.coast_slack * t.misses
                          for t in tracks]) if slack else 1.0
        cost = association_cost(pred, det, cfg.iou_weight, cfg.distance_weight, scale)
        cost[size_ratio(pred, det) > cfg.max_size_change] = np.inf  # gated: another size
        taken = set()
        for r, c in gated_assignment(cost, cfg.max_cost):
            owners[free[c]] = tracks[r]
            taken.add(free[c])
        return [d for d in free if d not in taken]

    def _merge_fragments(self, instances: list[Instance | None], free: list[int], owners: list[_Track | None],
                         predicted: dict[int, np.ndarray]) -> list[int]:
        """Merge each free instance lying mostly inside a matched track's box into that track's
        instance (the merged one takes the matched one's place; the fragment's becomes None), when
        that track's own detection covers less than ``merge_below_cover`` of its predicted box:
        a piece of the object is missing from it. A detection that covers its prediction is the
        whole object, and what lies beside it another one (two objects that touched and parted);
        nor when the instance lies further from that detection than ``merge_max_gap`` times the
        longer side of the smaller of the two: two objects drifting apart."""
        matched = {}  # instance index -> (track's predicted box, its detection's box as associated)
        for m, track in enumerate(owners):
            if track is not None and instances[m] is not None:
                pred = self._visible(state_boxes(predicted[track.serial][None]))[0]
                det = np.array(instances[m].box, dtype=np.float64)
                if inside_fraction(pred, det) < self.config.merge_below_cover:
                    matched[m] = (pred, det)
        still_free = []
        for d in free:
            box = np.array(instances[d].box, dtype=np.float64)
            best, best_share = None, self.config.merge_overlap
            for m, (pred, det) in matched.items():
                region = grown_box(np.concatenate([np.minimum(pred[:2], det[:2]), np.maximum(pred[2:], det[2:])]),
                                   0.25)
                share = inside_fraction(box, region)
                if share >= best_share and box_gap(box, det) <= self.config.merge_max_gap * min(
                        longer_side(box), longer_side(det)):
                    best, best_share = m, share
            if best is None:
                still_free.append(d)
                continue
            instances[best] = merged_instance([instances[best], instances[d]])
            instances[d] = None
        return still_free

    def _confirm(self, track: _Track) -> None:
        """Give ``track`` an id: a lost or coasting track's it rejoins (the nearest within
        ``rejoin_distance`` diagonals), else the next new one."""
        cfg = self.config
        box = state_boxes(track.state[None])[0]
        candidates = [t for t in self._lost] + [t for t in self._tracks if t.confirmed and t.misses > 0]
        best, best_d = None, cfg.rejoin_distance
        for old in candidates:
            old_box = state_boxes(old.state[None])[0]
            diag = (np.hypot(*(box[2:] - box[:2])) + np.hypot(*(old_box[2:] - old_box[:2]))) / 2
            d = float(np.hypot(*(track.state[:2] - old.state[:2]))) / max(diag, _MIN_SIZE_PX)
            if d <= best_d and size_ratio(box[None], old_box[None])[0, 0] <= cfg.max_size_change:
                best, best_d = old, d
        if best is None:
            track.track_id = self._next_id
            self._next_id += 1
            return
        track.track_id = best.track_id
        if best in self._lost:
            self._lost.remove(best)
        else:
            self._tracks.remove(best)

    def _visible(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) (x0, y0, x1, y1) boxes clipped to the frame (unchanged without ``frame_size``)."""
        if self.frame_size is None:
            return boxes
        width, height = self.frame_size
        return np.clip(boxes, 0.0, [width, height, width, height])

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
        return FrameTracks(frame=frame, detections=Detections(tuple(instances), ids))
