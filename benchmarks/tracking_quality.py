"""Tracking and event quality on synthetic clips with ground-truth tracks.

    python benchmarks/tracking_quality.py [--oracle | --replay DIR] [--weights demo] [--precision auto]
        [--out runs/track_eval] [--json FILE]
    python benchmarks/tracking_quality.py clips/*.mp4 --weights demo --out runs/track_eval
    python benchmarks/tracking_quality.py clips/*.mp4 --set min_hits=5 --set event_min_duration_s=0.8

With no clips it makes the default set first (under ``OUT/clips``, reused when there): four
synthetic clips, ``m2a-pipe synth video --seed 101..104 --seconds 20 --fps 10 --size 640x320``
(``--seeds``, ``--seconds``, ``--fps``, ``--size``); without ``--out`` everything goes to a
temporary folder, removed at the end.

Each clip (with its ``CLIP.tracks.json`` beside it) is processed once by ``m2a_pipe.process``
with the default settings (``--set KEY=VALUE``, repeatable: any other ``process`` setting, a
field of ``ProcessConfig``, the value as JSON or a bare string), from scratch (a rerun into the
same ``--out`` overwrites its outputs). Then, from its outputs:

* **MOTA, IDF1** (py-motmetrics, IoU >= 0.5) of ``tracks.csv`` against the ground truth, over
  every ground-truth box and over the boxes the pipeline is set to see (at least
  ``min_area_fraction`` of the frame; smaller ones are ignored, neither misses nor false
  positives).
* **False alarms per minute**, three ways of raising them from the same maps:
  ``tracked events`` (``events.jsonl``: confirmed tracks that last and score enough),
  ``frame-run events`` (runs of frames whose score passes the threshold, the same duration and
  score rules, built with the pipeline's EventBuilder from ``scores.h5``), and ``single frames``
  (every frame whose score passes the threshold is an alarm). An alarm is false when no
  ground-truth anomaly is there: :func:`m2a_pipe.evaluation.tracking.is_true_event` (a box at the
  peak that intersects a visible ground-truth box, or any ground truth in the span without a box).

* **Events** (``events``, per clip and pooled): ``gt_anomalies`` (ground-truth tracks with a
  visible box), ``found`` (those with at least one true tracked event), ``true_events``,
  ``false_events``, ``ignored_events`` (events on ground-truth boxes too small to count),
  ``false_per_minute``, as ``m2a-pipe evaluate tracks`` counts them
  (:func:`m2a_pipe.evaluation.tracks.event_figures`, visible boxes only).

* **Instances** (``instances``, per clip and pooled): ``gt_boxes`` (visible ground-truth boxes),
  ``matched`` (those an instance of their frame matches at IoU >= 0.5, whatever its track) and
  ``recall``: the most MOTA on the visible boxes any tracker could reach with these instances
  (:func:`m2a_pipe.evaluation.tracking.instance_recall`), so what the instances lose and what
  the tracker loses are told apart.

``--oracle`` replaces the model by the ground truth: the anomaly map of each frame is the
clip's ground-truth anomaly mask (``CLIP.gt.h5``) averaged down to the map resolution, so the
figures measure what comes after the model (instances at 1/4 resolution, the tracker, the
event rules) with a perfect detector. A clip whose ``CLIP.gt.h5`` is not beside it (such as
examples/drive.mp4) gets it rendered again from the seed, length, rate and size its
``CLIP.tracks.json`` records, under ``OUT/gt/``.

``--replay DIR`` replaces the model by the anomaly maps an earlier run stored
(``DIR/STEM.m2a/scores.h5``, as this script with ``--weights`` leaves them under its ``--out``),
at that run's threshold: another tracker, instance or event setting (``--set``, or the code)
is scored on the same maps in seconds. The stored maps are rounded to steps of 1/255, so a
replay's figures can differ from the run's by a borderline track.

Prints one JSON object: the command line, then the figures per clip and pooled (MOTA pooled over
all frames of all clips).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

from m2a_pipe import process
from m2a_pipe.errors import UsageError
from m2a_pipe.evaluation.tracking import false_events, instance_recall, load_gt_tracks, mot_metrics
from m2a_pipe.evaluation.tracks import event_figures
from m2a_pipe.inference.instances import Instance
from m2a_pipe.pipeline.config import ProcessConfig
from m2a_pipe.training.recipes import parse_override
from m2a_pipe.video.events import EventBuilder, EventConfig, read_events


def _frame_instances(f: h5py.File) -> dict[int, list[Instance]]:
    """/instances rows (source pixels) as Instances by source frame index."""
    by_frame: dict[int, list[Instance]] = {}
    for row in f["instances"][:]:
        x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
        box = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
        inst = Instance(bbox=box, area=int(row["area"]), peak_score=float(row["score_max"]),
                        mean_score=float(row["score_mean"]), centroid=((x0 + x1) / 2, (y0 + y1) / 2),
                        mask=np.ones((box[3] - box[1], box[2] - box[0]), bool))
        by_frame.setdefault(int(row["frame"]), []).append(inst)
    return by_frame


def frame_alarms(scores_h5: Path, config: ProcessConfig, min_duration_s: float | None) -> list[dict]:
    """Alarms raised from the frame scores alone, in source pixels.

    ``min_duration_s`` None: every frame over the threshold is its own alarm; else frame-run
    events of the pipeline's EventBuilder (``frames`` mode) with that minimum duration.
    """
    with h5py.File(scores_h5, "r") as f:
        threshold = float(f.attrs["threshold"])
        index, pts, score = f["frames/index"][:], f["frames/pts"][:], f["frames/score_p99"][:]
        instances = _frame_instances(f)
        size = (int(f.attrs["height"]), int(f.attrs["width"]))
    min_score = threshold if config.event_min_score is None else config.event_min_score
    builder = EventBuilder(EventConfig(mode="frames", min_duration_s=min_duration_s or 0.0, min_peak_score=min_score,
                                       frame_threshold=threshold, max_gap_frames=0 if min_duration_s is None else 2))
    alarms = []
    for counter, (i, t, s) in enumerate(zip(index, pts, score)):
        insts = instances.get(int(i), [])
        if min_duration_s is None:
            if s >= threshold:
                best = max(insts, key=lambda x: x.peak_score, default=None)
                alarms.append({"event_id": len(alarms) + 1, "start_frame": int(i), "end_frame": int(i),
                               "peak_frame": int(i), "bbox_at_peak": None if best is None else list(best.bbox)})
            continue
        builder.add(frame=counter, pts_s=float(t), detections=insts, frame_score=float(s), source_index=int(i),
                    image_size=size)
    if min_duration_s is not None:
        alarms = list(builder.finish()[0])
    return alarms


class OracleStage:
    """Stands in for the ModelStage, through the same ``map_batches`` interface (see
    :class:`m2a_pipe.pipeline.local.BatchMapper`): the ground-truth anomaly mask of each frame,
    looked up by the frame's source index in ``CLIP.gt.h5``, as a map of the size the model would
    give (area-averaged: the anomalous fraction of each cell)."""

    def __init__(self, gt_h5: Path, map_shape: tuple[int, int]) -> None:
        self.gt_h5, self.map_shape = Path(gt_h5), tuple(map_shape)

    def map_batches(self, batches):
        """(batch, maps) for each batch of (index, pts, image) frames, in order."""
        import cv2

        from m2a_pipe.inference.stage import FrameMaps

        with h5py.File(self.gt_h5, "r") as f:
            masks = f["anomaly_mask"]
            for batch in batches:
                maps = []
                for index, _pts, _image in batch:
                    anomaly = cv2.resize((masks[index] > 0).astype(np.float32), self.map_shape[::-1],
                                         interpolation=cv2.INTER_AREA)
                    maps.append(FrameMaps(anomaly=anomaly, semantic=np.zeros(anomaly.shape, np.uint8)))
                yield batch, maps


class ReplayStage:
    """Stands in for the ModelStage as :class:`OracleStage` does: the anomaly map a run stored for
    each frame (``/maps/anomaly`` of its ``scores.h5``, value = stored x ``scale``), looked up by
    the frame's source index."""

    def __init__(self, scores_h5: Path, map_shape: tuple[int, int]) -> None:
        self.scores_h5, self.map_shape = Path(scores_h5), tuple(map_shape)

    def map_batches(self, batches):
        """(batch, maps) for each batch of (index, pts, image) frames, in order."""
        from m2a_pipe.inference.stage import FrameMaps

        with h5py.File(self.scores_h5, "r") as f:
            stored = f["maps/anomaly"]
            scale = float(stored.attrs["scale"])
            row = {int(index): k for k, index in enumerate(f["frames/index"][:])}
            if tuple(stored.shape[1:]) != self.map_shape:
                raise SystemExit(f"{self.scores_h5}: maps of {tuple(stored.shape[1:])}, this run's are "
                                 f"{self.map_shape} (another input size or map stride)")
            for batch in batches:
                maps = []
                for index, _pts, _image in batch:
                    if index not in row:
                        raise SystemExit(f"{self.scores_h5}: no stored map of frame {index}")
                    anomaly = stored[row[index]].astype(np.float32) * scale
                    maps.append(FrameMaps(anomaly=anomaly, semantic=np.zeros(anomaly.shape, np.uint8)))
                yield batch, maps


def ground_truth_masks(clip: Path, out: Path) -> Path:
    """``CLIP.gt.h5`` beside the clip, else rendered again (``OUT/gt/STEM.mp4`` and its ground truth)
    from the synthesis parameters its ``CLIP.tracks.json`` records."""
    from m2a_pipe.synth.video import gt_paths, write_video

    gt_h5 = clip.with_suffix(".gt.h5")
    if gt_h5.is_file():
        return gt_h5
    meta = json.loads(clip.with_suffix(".tracks.json").read_text())
    if meta.get("generator") != "m2a-pipe synth":
        raise SystemExit(f"{clip}: no {gt_h5.name} and no synthesis parameters to render it from")
    again = out / "gt" / f"{clip.stem}.mp4"
    if not gt_paths(again)[0].is_file():
        again.parent.mkdir(parents=True, exist_ok=True)
        write_video(again, int(meta["seed"]), meta["frames"] / meta["fps"], meta["fps"],
                    size=(int(meta["width"]), int(meta["height"])), anomalies=meta.get("anomalies", "eval"))
    return gt_paths(again)[0]


def run_oracle(clip: Path, out: Path, config: ProcessConfig, replay: Path | None = None) -> Path:
    """The pipeline's sink on one clip with :class:`OracleStage` maps, or with
    :class:`ReplayStage` maps from the run under ``replay``; returns the output folder."""
    from m2a_pipe.inference.stage import map_size
    from m2a_pipe.io.inputs import VideoInput
    from m2a_pipe.io.layout import output_name
    from m2a_pipe.model.checkpoint import read_metadata
    from m2a_pipe.model.registry import resolve
    from m2a_pipe.pipeline.job import ModelInfo, VideoJob
    from m2a_pipe.pipeline.local import run_job

    model_config, _ = read_metadata(resolve(config.weights))
    rel = output_name(clip.stem, video=True)
    stored = None if replay is None else Path(replay) / rel / "scores.h5"
    if stored is None:
        info = ModelInfo(weights="oracle", sha256="", config=model_config, threshold=0.5)
    elif not stored.is_file():
        raise SystemExit(f"{clip}: no {stored} to replay")
    else:
        with h5py.File(stored, "r") as f:
            info = ModelInfo(weights=f"replay of {stored}", sha256="", config=model_config,
                             threshold=float(f.attrs["threshold"]))
    job = VideoJob(VideoInput(source=clip.resolve(), rel=rel), out, config.updated(overwrite=True), info).open()
    shape = map_size(job.input_size, config.map_stride)
    stage = OracleStage(ground_truth_masks(clip, out), shape) if stored is None else ReplayStage(stored, shape)
    result = run_job(job, stage, batch_size=1, queue_size=config.queue_size)
    return Path(result.out_dir)


def evaluate_clip(clip: Path, out: Path, config: ProcessConfig, oracle: bool = False,
                  replay: Path | None = None) -> dict:
    gt_json = clip.with_suffix(".tracks.json")
    if oracle or replay is not None:
        folder = run_oracle(clip, out, config, replay)
    else:
        video = process(clip, out, config.updated(overwrite=True), quiet=True).videos[0]
        if video.status != "complete":
            raise SystemExit(f"{clip}: {video.status} ({video.error})")
        folder = Path(video.out_dir)
    with h5py.File(folder / "scores.h5", "r") as f:
        fps, n_frames = float(f.attrs["fps"]), int(f.attrs["n_frames"])
        width, height = int(f.attrs["width"]), int(f.attrs["height"])
    min_gt_area = int(round(config.min_area_fraction * width * height))
    result = {"clip": str(clip), "frames": n_frames, "minutes": n_frames / fps / 60,
              "gt_tracks": len(json.loads(gt_json.read_text())["tracks"]), "min_gt_area_px": min_gt_area,
              "mot_all": mot_metrics(folder / "tracks.csv", gt_json),
              "mot_visible": mot_metrics(folder / "tracks.csv", gt_json, min_gt_area=min_gt_area)}
    ways = {"tracked_events": read_events(folder),
            "frame_run_events": frame_alarms(folder / "scores.h5", config, config.event_min_duration_s),
            "single_frames": frame_alarms(folder / "scores.h5", config, None)}
    result["alarms"] = {name: {"total": len(alarms), "false": len(false_events(alarms, gt_json))}
                        for name, alarms in ways.items()}
    gt, _ = load_gt_tracks(gt_json)
    figures = event_figures(ways["tracked_events"], gt, result["minutes"], min_gt_area)
    result["events"] = {k: figures[k] for k in EVENT_KEYS}
    result["instances"] = frame_instance_recall(folder / "scores.h5", gt, min_gt_area)
    return result


def frame_instance_recall(scores_h5: Path, gt, min_gt_area: int) -> dict:
    """:func:`m2a_pipe.evaluation.tracking.instance_recall` of the run's ``/instances`` (every
    detection, source pixels, by source frame index) over the frames it processed."""
    with h5py.File(scores_h5, "r") as f:
        rows, frames = f["instances"][:], [int(i) for i in f["frames/index"][:]]
    boxes: dict[int, list] = {}
    for row in rows:
        boxes.setdefault(int(row["frame"]), []).append([row["x0"], row["y0"], row["x1"], row["y1"]])
    figures = instance_recall({k: np.array(v) for k, v in boxes.items()}, gt, frames, min_gt_area=min_gt_area)
    return {"gt_boxes": figures["gt_boxes"], "matched": figures["matched"], "recall": round(figures["recall"], 4)}


EVENT_KEYS = ("gt_anomalies", "found", "true_events", "false_events", "ignored_events", "false_per_minute")


def pooled(results: list[dict]) -> dict:
    minutes = sum(r["minutes"] for r in results)
    out = {"clips": len(results), "minutes": round(minutes, 3)}
    for key in ("mot_all", "mot_visible"):
        n = {k: sum(r[key][k] for r in results) for k in ("num_objects", "num_misses", "num_false_positives",
                                                          "num_switches")}
        mota = 1 - (n["num_misses"] + n["num_false_positives"] + n["num_switches"]) / max(n["num_objects"], 1)
        idf1 = sum(r[key]["idf1"] * r[key]["num_objects"] for r in results) / max(n["num_objects"], 1)
        out[key] = {"mota": round(mota, 4), "idf1_weighted": round(idf1, 4), **n}
    for name in results[0]["alarms"]:
        total = sum(r["alarms"][name]["total"] for r in results)
        false = sum(r["alarms"][name]["false"] for r in results)
        out[name] = {"alarms": total, "false": false, "false_per_minute": round(false / minutes, 2)}
    events = {k: sum(r["events"][k] for r in results) for k in EVENT_KEYS[:-1]}
    out["events"] = {**events, "false_per_minute": round(events["false_events"] / minutes, 3)}
    boxes, matched = (sum(r["instances"][k] for r in results) for k in ("gt_boxes", "matched"))
    out["instances"] = {"gt_boxes": boxes, "matched": matched, "recall": round(matched / max(boxes, 1), 4)}
    return out


def synth_clips(folder: Path, seeds: list[int], seconds: float, fps: float, size: str) -> list[Path]:
    """The default clip set: ``m2a-pipe synth video --seed S --seconds --fps --size`` for each
    seed, written under ``folder`` (kept: a clip already there with its ground truth is reused)."""
    from m2a_pipe.synth.video import gt_paths, write_video

    clips = []
    for seed in seeds:
        clip = folder / f"clip{seed}_{seconds:g}s_{fps:g}fps_{size}.mp4"
        if not (clip.is_file() and all(p.is_file() for p in gt_paths(clip))):
            write_video(clip, seed, seconds, fps, size=size)
        clips.append(clip)
    return clips


def main() -> None:
    import shlex
    import sys
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path,
                        help="clips with CLIP.tracks.json beside them (and CLIP.gt.h5 for --oracle) "
                             "[none: synthetic clips of --seeds, made under OUT/clips]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103, 104],
                        help="seeds of the synthetic clips when no clips are given [101 102 103 104]")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each synthetic clip [20]")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the synthetic clips [10]")
    parser.add_argument("--size", default="640x320", help="WIDTHxHEIGHT of the synthetic clips [640x320]")
    parser.add_argument("--weights", default="demo",
                        help="weights name or file [demo]; with --oracle only their test input size counts")
    parser.add_argument("--out", type=Path, help="output folder [a temporary folder, removed at the end]")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:I [auto]")
    parser.add_argument("--short-side", type=int, help="network input short side [the weights' test size]")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="the network's precision, as process --precision [auto]")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--oracle", action="store_true", help="ground-truth masks instead of the model")
    source.add_argument("--replay", type=Path, metavar="DIR",
                        help="the maps an earlier run stored under DIR (its --out) instead of the model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="another process setting (a ProcessConfig field), e.g. min_hits=5; repeatable")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    try:
        config = ProcessConfig.from_mapping(
            {"weights": args.weights, "device": args.device, "short_side": args.short_side,
             "precision": args.precision, **dict(parse_override(text) for text in args.overrides)}, "--set")
    except UsageError as err:  # a ConfigError, or a value a setting's own check refuses
        parser.error(str(err))
    if args.replay is not None and args.out is not None and args.replay.resolve() == args.out.resolve():
        parser.error(f"--replay {args.replay}: the same folder as --out would be overwritten while read")
    with tempfile.TemporaryDirectory(prefix="m2a-track-eval-") as tmp:
        out = args.out or Path(tmp)
        clips = args.clips or synth_clips(out / "clips", args.seeds, args.seconds, args.fps, args.size)
        results = [evaluate_clip(clip, out, config, args.oracle, args.replay) for clip in clips]
    report = {"command": shlex.join(["python", *sys.argv]), "pooled": pooled(results), "clips": results}
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
