"""Everything after the model for one video: instances, tracking, events and the writers.

A :class:`VideoAnalysis` receives the frames of one video **in order** with their
:class:`~m2a_pipe.inference.stage.FrameMaps` and writes the video's output folder:

    per frame: frame scores -> instances (connected components of the thresholded map closed by
               a cell, boxes refined at the source's precision, plus weak blobs: under the
               threshold, or large enough only with their rim; or
               the mined unknown instances of open-set panoptic segmentation)
               -> tracker (ids come back with a lag of min_hits - 1 frames, as
                  :class:`~m2a_pipe.video.detections.Detections`)
    per final frame: scores.h5 rows (every detection), tracks.csv rows (confirmed ones),
                     event builder, overlay frame

Frames wait in a small buffer (``lag`` + 1 entries) until the tracker has decided their ids,
so every output frame carries its final track ids and nothing is rewritten later. Both
runners use this class unchanged, which is why their outputs are identical.

The analysis writes into ``workdir`` (a temporary folder); the runner renames it into place.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from m2a_pipe.inference.instances import anomaly_instances, scored_instance, weak_instances
from m2a_pipe.inference.stage import FrameMaps
from m2a_pipe.io.hdf5_writer import ScoresWriter
from m2a_pipe.io.layout import OVERLAY_FILE, SCORES_FILE, SUMMARY_FILE, TIMELINE_FILE, TRACKS_FILE
from m2a_pipe.io.video_writer import VideoWriter
from m2a_pipe.settings import EVENT_MAX_WIDTH_FRACTION, INSTANCE_GAP, INSTANCE_MAX_UPSAMPLE, TRACK_WEAK_RATIO
from m2a_pipe.video.detections import Detections
from m2a_pipe.video.events import Event, EventBuilder, EventConfig, write_events
from m2a_pipe.video.mot import TracksCsvWriter
from m2a_pipe.video.render import overlay, timecode
from m2a_pipe.video.timeline import SIGNAL_NO_EVENT, SIGNAL_P99, SIGNAL_TRACKED, draw_timeline
from m2a_pipe.video.tracking import FrameTracks, Tracker, TrackerConfig

SCORE_PERCENTILE = 99.0


@dataclass(frozen=True)
class AnalysisSettings:
    """What the analysis needs beyond the frames (resolved from the run's config and the video).

    ``input_size`` (h, w) of the frames it receives (the network input size); ``map_shape``
    (h, w) of the maps; ``source_size`` (height, width) of the decoded video; ``fps`` of the
    source; ``threshold`` for anomalous pixels; ``min_area`` of an instance in map pixels;
    ``bounded`` whether the score lies in [0, 1].
    """

    input_size: tuple[int, int]
    map_shape: tuple[int, int]
    source_size: tuple[int, int]
    fps: float
    threshold: float
    min_area: int
    bounded: bool
    map_stride: int


def track_peaks(detections: Detections) -> dict[int, float]:
    """The highest peak score of each confirmed track in a frame, by track id."""
    peaks: dict[int, float] = {}
    for inst, tid in detections.confirmed():
        peaks[tid] = max(peaks.get(tid, -math.inf), inst.peak_score)
    return peaks


def tracked_score(frames: list[dict[int, float]], track_ids: set[int], keep: bool = True) -> np.ndarray:
    """(T,) float64: per frame, the highest peak of the tracks in ``track_ids`` (``keep``) or of the
    others, NaN where there is none -- the signal ``tracks``-mode events are made from."""
    return np.array([max((v for tid, v in peaks.items() if (tid in track_ids) == keep), default=math.nan)
                     for peaks in frames], dtype=np.float64)


def frame_scores(anomaly: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(max, 99th percentile, fraction >= threshold) of an (h, w) float32 map."""
    flat = anomaly.ravel()
    k = int(round(SCORE_PERCENTILE / 100.0 * (flat.size - 1)))
    p99 = float(np.partition(flat, k)[k])  # the order statistic nearest the percentile
    return float(flat.max()), p99, float(np.count_nonzero(flat >= threshold)) / flat.size


class VideoAnalysis:
    """Stateful consumer of one video's frames (see the module docstring).

    Args:
        workdir: the (temporary) output folder, created by the caller.
        settings: :class:`AnalysisSettings`.
        config: the run's :class:`~m2a_pipe.pipeline.config.ProcessConfig`.
        attrs: root attributes of ``scores.h5`` (source, fingerprint, weights, ...).
    """

    def __init__(self, workdir: Path, settings: AnalysisSettings, config: Any, attrs: Mapping[str, Any]) -> None:
        self.workdir, self.settings, self.config = Path(workdir), settings, config
        s = settings
        self.to_source = (s.source_size[1] / s.input_size[1] * s.map_stride,
                          s.source_size[0] / s.input_size[0] * s.map_stride)
        self.to_input = (s.map_stride, s.map_stride)
        self.upsample = max(1, min(INSTANCE_MAX_UPSAMPLE, math.ceil(max(self.to_source))))
        self.to_frame = self.to_source  # map -> pixels of the frames events see (the input's without source frames)
        self.scores = ScoresWriter(
            self.workdir / SCORES_FILE, attrs,
            map_shape=s.map_shape if config.save_maps else None, bounded=s.bounded, semantic=config.save_semantic,
            map_attrs={"stride": s.map_stride, "to_source": list(self.to_source), "input_size": list(s.input_size)})
        # the part of the map the frame covers (the rest is the network input's padding)
        visible = (s.input_size[1] / s.map_stride, s.input_size[0] / s.map_stride)
        self.tracker = Tracker(TrackerConfig(min_hits=config.min_hits, max_misses=config.max_misses),
                               frame_size=visible)
        min_score = config.event_min_score if config.event_min_score is not None else s.threshold
        # the band rule is for blobs of the thresholded map; mined unknown instances are object masks
        widest = EVENT_MAX_WIDTH_FRACTION if config.instances == "components" else math.inf
        self.events = EventBuilder(EventConfig(mode=config.event_mode, min_duration_s=config.event_min_duration_s,
                                               min_peak_score=min_score, frame_threshold=s.threshold,
                                               max_width_fraction=widest))
        self.tracks_csv = TracksCsvWriter(self.workdir / TRACKS_FILE)
        h, w = s.source_size if config.overlay_size == "source" else s.input_size
        self.video = (VideoWriter(self.workdir / OVERLAY_FILE, w, h, s.fps, crf=config.overlay_crf,
                                  preset=config.overlay_preset, threads=config.overlay_threads)
                      if config.overlay else None)
        self._pending: deque[tuple] = deque()  # frames waiting for the tracker's ids
        self._counter = 0
        self._last_pts: float | None = None
        self._pts: list[float] = []
        self._frame_score: list[float] = []
        self._track_peaks: list[dict[int, float]] = []

    @property
    def frames_received(self) -> int:
        """Frames given to :meth:`add` so far (written or still waiting for their track ids)."""
        return self._counter

    # -- per frame -------------------------------------------------------------------

    def add(self, index: int, pts_s: float, image: np.ndarray, maps: FrameMaps,
            source: np.ndarray | None = None) -> None:
        """One frame in processing order: source ``index``, ``pts_s``, the (h, w, 3) uint8
        network-input image, its maps, and the (H, W, 3) uint8 decoded frame at the source size
        (thumbnails are cut from it, and a ``source``-size overlay drawn on it; None: the
        network-input image serves both)."""
        s = self.settings
        weak = []
        if maps.unknown is None:
            # a fraction of the threshold is a weaker score only for scores in [0, 1]
            low = TRACK_WEAK_RATIO * s.threshold if s.bounded else None
            found = anomaly_instances(maps.anomaly, s.threshold, s.min_area, upsample=self.upsample,
                                      gap=INSTANCE_GAP, support_threshold=low)
            # blobs large only with their softer rim may extend a track but not start one
            instances = [inst for inst in found if inst.area >= s.min_area]
            if low is not None:
                weak = [inst for inst in found if inst.area < s.min_area]
                weak += weak_instances(maps.anomaly, low, s.threshold, s.min_area)
        else:
            instances = [scored_instance(u, maps.anomaly) for u in maps.unknown]
        if source is None:
            self.to_frame = self.to_input
        self._pending.append((self._counter, index, pts_s, image, source, maps))
        for final in self.tracker.update(self._counter, instances, weak):
            self._emit(final)
        self._counter += 1

    def _emit(self, final: FrameTracks) -> None:
        counter, index, pts_s, image, source, maps = self._pending.popleft()
        if counter != final.frame:
            raise RuntimeError(f"tracker returned frame {final.frame}, expected {counter}")
        s, detections = self.settings, final.detections
        score_max, score_p99, fraction = frame_scores(maps.anomaly, s.threshold)
        self.scores.add_frame(index=index, pts=pts_s, score_max=score_max, score_p99=score_p99,
                              anomalous_fraction=fraction, n_instances=len(detections),
                              anomaly=maps.anomaly if self.config.save_maps else None,
                              semantic=maps.semantic if self.config.save_semantic else None)
        self._write_boxes(counter, index, detections)
        frame = image if source is None else source
        self.events.add(frame=counter, source_index=index, pts_s=pts_s, detections=detections,
                        frame_score=score_p99, image=frame, scale=self.to_frame)
        self._pts.append(pts_s)
        self._frame_score.append(score_p99)
        self._track_peaks.append(track_peaks(detections))
        if self.video is not None:
            base = image
            if self.config.overlay_size == "source":
                base = frame if frame.shape[:2] == tuple(s.source_size) else cv2.resize(
                    frame, s.source_size[::-1], interpolation=cv2.INTER_LINEAR)
            picture = overlay(base, maps.anomaly, detections=detections, timecode=timecode(pts_s, index),
                              threshold=s.threshold)
            out_pts = pts_s if self._last_pts is None else max(pts_s, self._last_pts + 1e-3)
            self.video.write(picture, out_pts)
            self._last_pts = out_pts

    def _write_boxes(self, counter: int, index: int, detections: Detections) -> None:
        """Every detection to ``/instances`` (id 0 included), the confirmed ones to ``tracks.csv``;
        boxes and areas in source pixels."""
        sx, sy = self.to_source
        for inst, tid in detections:
            box = self._source_box(inst.box)
            self.scores.add_instance(index, tid, box, inst.area * sx * sy, inst.mean_score, inst.peak_score)
        for inst, tid in detections.confirmed():
            self.tracks_csv.write(counter, tid, self._source_box(inst.box), inst.mean_score)

    def _source_box(self, bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A map-pixel (x0, y0, x1, y1) box in source pixels, clipped to the frame (the map's last
        cells can reach past it: the network input is padded)."""
        (sx, sy), (x0, y0, x1, y1) = self.to_source, bbox
        height, width = self.settings.source_size
        return (min(x0 * sx, width), min(y0 * sy, height), min(x1 * sx, width), min(y1 * sy, height))

    # -- end -------------------------------------------------------------------------

    def finish(self, status: str = "complete", error: str | None = None, **attrs: Any) -> dict[str, Any]:
        """Drain the tracker, close every writer, write events, the timeline and a summary.

        Returns the summary (also written as ``summary.json``).
        """
        for final in self.tracker.finish():
            self._emit(final)
        if self.video is not None:
            self.video.close()
        self.tracks_csv.close()
        events, thumbnails = self.events.finish()
        events = [self._in_source_pixels(ev) for ev in events]
        write_events(self.workdir, events, thumbnails)
        self._draw_timeline(events, str(attrs.get("source", "")))
        self.scores.close(status=status, error=error, n_events=len(events), **attrs)
        summary = {"status": status, "error": error or "", "frames": self.scores.n_frames, "events": len(events)}
        (self.workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        return summary

    def _draw_timeline(self, events: list[Event], title: str) -> None:
        """timeline.png: the signal the events were made from (``tracks`` mode: the tracked score of
        the tracks that made events; ``frames`` mode: the 99th percentile of the map) against the
        value it is held to, the others thin (:mod:`m2a_pipe.video.timeline`)."""
        pts, p99 = np.asarray(self._pts), np.asarray(self._frame_score)
        event_cfg = self.events.config
        if event_cfg.mode == "tracks":
            ids = {ev.track_id for ev in events}
            draw_timeline(self.workdir / TIMELINE_FILE, pts, tracked_score(self._track_peaks, ids), events,
                          threshold=event_cfg.min_peak_score, threshold_label="event min. peak score", title=title,
                          signal=SIGNAL_TRACKED, references=[(p99, SIGNAL_P99),
                                                             (tracked_score(self._track_peaks, ids, False),
                                                              SIGNAL_NO_EVENT)])
        else:
            draw_timeline(self.workdir / TIMELINE_FILE, pts, p99, events, threshold=event_cfg.frame_threshold,
                          title=title, signal=SIGNAL_P99)

    def _in_source_pixels(self, event: Event) -> Event:
        """The event's box and area in source pixels, as /instances and tracks.csv (the builder
        works in the pixels of the frames it was given, where the thumbnails are cut, and areas
        in map pixels)."""
        (mx, my), (ix, iy) = self.to_source, self.to_frame
        area = int(round(event.max_area_px * mx * my))
        if event.bbox_at_peak is None:
            return replace(event, max_area_px=area)
        x0, y0, x1, y1 = event.bbox_at_peak
        box = self._source_box((x0 / ix, y0 / iy, x1 / ix, y1 / iy))
        return replace(event, max_area_px=area, bbox_at_peak=[round(v, 2) for v in box])

    def abort(self) -> None:
        """Close the open files without finishing (the caller deletes the folder)."""
        for close in (lambda: self.video and self.video.close(), self.tracks_csv.close,
                      lambda: self.scores.close(status="partial", error="aborted")):
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort: the folder is removed next
                pass
