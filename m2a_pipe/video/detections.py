"""The detections of one frame: its anomaly instances together with their track ids.

A :class:`Detections` is what the tracker hands on for a final frame and what the writers,
the event builder and the overlay consume, so instances and ids never travel as two parallel
sequences that could fall out of step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from m2a_pipe.inference.instances import Instance

UNCONFIRMED = 0
"""The track id of a detection that is not (yet) part of a confirmed track."""


@dataclass(frozen=True)
class Detections:
    """The instances of one frame (map pixels) and their track ids, in the same order.

    ``instances``: N :class:`~m2a_pipe.inference.instances.Instance` (box, bool mask in the box,
    peak and mean score, in map pixels). ``track_ids``: N ints. An id >= 1 is a confirmed track.
    ``0`` (:data:`UNCONFIRMED`) means *detected but not (yet) part of a confirmed track*: its
    tentative track was dropped before ``min_hits`` hits (a one-frame false positive, say), the
    video ended first, or the instances were never tracked. Such a detection is still written to
    ``/instances`` of ``scores.h5`` (with ``track_id`` 0) and drawn as a grey contour, but never
    reaches ``tracks.csv`` nor a ``tracks``-mode event.

    Out of the tracker, the instances are the frame's detections (fragments of one object merged
    into one) followed by the weak detections that extended a confirmed track.

    The two lengths must match (ValueError); both are stored as tuples. Instances without ids
    (not tracked) are :meth:`untracked`.
    """

    instances: tuple[Instance, ...] = ()
    track_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        instances, ids = tuple(self.instances), tuple(int(t) for t in self.track_ids)
        if len(ids) != len(instances):
            raise ValueError(f"{len(ids)} track ids for {len(instances)} instances")
        if any(t < 0 for t in ids):
            raise ValueError(f"track ids must be >= 0, got {ids}")
        object.__setattr__(self, "instances", instances)
        object.__setattr__(self, "track_ids", ids)

    @classmethod
    def untracked(cls, instances: Sequence[Instance]) -> "Detections":
        """``instances`` with every id :data:`UNCONFIRMED`."""
        return cls(tuple(instances), (UNCONFIRMED,) * len(instances))

    def __len__(self) -> int:
        return len(self.instances)

    def __iter__(self) -> Iterator[tuple[Instance, int]]:
        """``(instance, track_id)`` pairs, in order."""
        return iter(zip(self.instances, self.track_ids))

    def confirmed(self) -> "Detections":
        """Only the detections of confirmed tracks (id >= 1), in order: the rows of ``tracks.csv``."""
        pairs = [(inst, tid) for inst, tid in self if tid != UNCONFIRMED]
        return Detections(tuple(inst for inst, _ in pairs), tuple(tid for _, tid in pairs))


def as_detections(value: Detections | Sequence[Instance]) -> Detections:
    """``value`` itself if it is a :class:`Detections`, else its instances, all unconfirmed."""
    return value if isinstance(value, Detections) else Detections.untracked(value)
