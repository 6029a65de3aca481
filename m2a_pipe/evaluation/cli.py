"""``m2a-pipe evaluate``: anomaly, open-set and panoptic metrics. Parses and delegates to
:mod:`m2a_pipe.evaluation.report`; bad input ends with one line naming the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from m2a_pipe.evaluation.components import PROFILES
from m2a_pipe.evaluation.open_set import THRESHOLD_RULES
from m2a_pipe.evaluation.pixel import AP_CONVENTIONS, DEFAULT_MAX_EXACT_PIXELS
from m2a_pipe.settings import DEFAULT_PRECISION, DEFAULT_SCORE, MAP_STRIDES, PRECISIONS, SCORE_NAMES


def _emit(report: dict, json_path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
    click.echo(text)


def _model_options(f):
    f = click.option("--flip/--no-flip", default=True, show_default=True,
                     help="Horizontal-flip averaging (the official evaluation uses it).")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="Torch device for --dataset runs: auto, cpu, cuda or cuda:N.")(f)
    f = click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULT_PRECISION, show_default=True,
                     help="Network precision: auto = fp16 on CUDA, bf16 on a CPU with bf16 instructions, "
                          "else fp32 (fp32: exact official parity).")(f)
    f = click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path),
                     help="Folder for the model's outputs; files already there are reused, so a rerun needs no "
                          "model.  [default: ./m2a-eval/<dataset name>]")(f)
    f = click.option("-w", "--weights", default="demo", show_default=True, metavar="NAME|PATH",
                     help="Weights for --dataset runs (registry name or file).")(f)
    return f


def _out(out_dir: Path | None, dataset: Path, score: str = "official", flip: bool = True,
         map_stride: int = 1, precision: str = "fp32") -> Path:
    """--output, else ``m2a-eval/<dataset name>[-<score>][-noflip][-stride4][-bf16]`` (``precision``
    resolved, as :func:`m2a_pipe.evaluation.predict.resolved_precision` gives it)."""
    if out_dir is not None:
        return out_dir
    name = (Path(dataset).resolve().name + ("" if score == "official" else f"-{score}") + ("" if flip else "-noflip")
            + ("" if map_stride == 1 else f"-stride{map_stride}") + ("" if precision == "fp32" else f"-{precision}"))
    return Path("m2a-eval") / name


def _weights_notice(weights: str) -> None:
    """The weights' notice on stderr when they have one (the demo weights: a synthetic world only)."""
    from m2a_pipe.model.registry import weights_note

    if weights_note(weights):
        click.echo(f"m2a-pipe: note: {weights_note(weights)}", err=True)


def _prepare_run(out: Path, weights: str, flip: bool, score: str, missing: bool, map_stride: int = 1,
                 precision: str = "fp32") -> None:
    from m2a_pipe.evaluation import predict

    predict.claim_run_folder(out, predict.run_settings(weights, flip, score, map_stride, precision), writing=missing)


@click.group()
def evaluate() -> None:
    """Benchmark metrics (paper Sec. 7.2) from score files or a model run.

    \b
    Example:
      m2a-pipe evaluate anomaly --dataset RoadAnomaly21 --weights cityscapes-r50 --json ra21.json
      m2a-pipe evaluate anomaly --scores scores/ --labels labels/
    """


@evaluate.command("anomaly")
@click.option("--scores", type=click.Path(path_type=Path),
              help="Folder of <stem>.npy float score maps, or a pipeline scores.h5.")
@click.option("--labels", type=click.Path(path_type=Path), help="Folder of <stem>.png masks (0 / 1 / 255).")
@click.option("--dataset", type=click.Path(path_type=Path),
              help="Benchmark folder (SMIYC, Fishyscapes, Road Anomaly, Lost & Found, StreetHazards).")
@click.option("--dataset-type", type=click.Choice(["auto", "smiyc", "fishyscapes", "road-anomaly",
                                                   "lost-and-found", "streethazards"]), default="auto",
              show_default=True, help="Layout of --dataset.")
@_model_options
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="anomaly-track", show_default=True,
              help="Component size limits (Anomaly Track: 500 / 100 px, Obstacle Track: 50 / 10 px).")
@click.option("--ap", "ap_convention", type=click.Choice(AP_CONVENTIONS), default="exact", show_default=True,
              help="exact: scikit-learn on pooled pixels; smiyc: the benchmark's per-image percentile bins. "
                   "Also picks the component rule (the report's component_threshold_rule).")
@click.option("--threshold", type=float,
              help="Component threshold T. Anomalous pixels: score >= T with --ap exact, score > T with --ap smiyc "
                   "(the benchmark's).  [default: the best pixel-F1 threshold of the --ap curve]")
@click.option("--max-exact-pixels", type=int, default=DEFAULT_MAX_EXACT_PIXELS, show_default=True,
              help="Pixels kept verbatim before the exact mode switches to its fine histogram.")
@click.option("--score", "score_name", type=click.Choice(SCORE_NAMES), default=DEFAULT_SCORE, show_default=True,
              help="Anomaly score of --dataset runs: official = Eq. 5 refined by Eq. 13; msp = Eq. 5 alone.")
@click.option("--map-stride", type=click.Choice([str(s) for s in MAP_STRIDES]), default="1", show_default=True,
              help="Resolution of the score of --dataset runs: 1 = mask logits upsampled first (official); "
                   "2 or 4 = the score on the 1/2 or 1/4 grid, then upsampled (what `process` computes).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report here.")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path), help="Write pr.png and roc.png here.")
def anomaly(scores, labels, dataset, dataset_type, weights, out_dir, device, precision, flip, profile, ap_convention,
            threshold, max_exact_pixels, score_name, map_stride, json_path, plots_dir) -> None:
    """Pixel AuPRC / FPR95 / AUROC and component sIoU / PPV / F1*.

    \b
    Example:
      m2a-pipe evaluate anomaly --dataset RoadAnomaly21 --weights cityscapes-r50 --json ra21.json
      m2a-pipe evaluate anomaly --scores scores/ --labels labels/ --ap smiyc --plots plots/
    """
    from m2a_pipe.evaluation import datasets as ds
    from m2a_pipe.evaluation import inputs, predict, report

    if dataset is not None:
        data = ds.detect_dataset(dataset) if dataset_type == "auto" else ds.READERS[dataset_type](dataset)
        if not data.samples:
            raise ds.DatasetError(f"{dataset}: no images found")
        stride = int(map_stride)
        precision = predict.resolved_precision(device, precision)
        scores_dir = scores or _out(out_dir, dataset, score_name, flip, stride, precision) / "scores"
        missing = [s for s in data.samples if not (scores_dir / f"{predict.file_stem(s.stem)}.npy").is_file()]
        _prepare_run(scores_dir.parent, weights, flip, score_name, bool(missing), stride, precision)
        if missing:
            predictor = predict.load_predictor(weights, device, flip, score_name, stride, precision)
            _weights_notice(weights)
            scores_dir = predict.write_anomaly_scores(predictor, data, scores_dir.parent, progress=_bar)
        pairs = [_npy_pair(inputs, s, scores_dir / f"{predict.file_stem(s.stem)}.npy") for s in data.samples]
    elif scores is not None and labels is not None:
        pairs = inputs.score_pairs(scores, labels)
    else:
        raise click.UsageError("give --scores and --labels, or --dataset")
    result = report.evaluate_anomaly(pairs, profile=profile, ap_convention=ap_convention, threshold=threshold,
                                     max_exact_pixels=max_exact_pixels, plots_dir=plots_dir)
    _emit(result, json_path)


def _npy_pair(inputs, sample, path: Path):
    """A dataset sample paired with its score file (label mapping of the dataset)."""
    return inputs.ScorePair(sample.stem, lambda: inputs.load_npy_scores(path), sample.label, sample.mapping,
                            sample.subset, source=str(path))


def _bar(items):
    items = list(items)
    with click.progressbar(items, label="running the model", file=sys.stderr) as bar:
        yield from bar


def _open_items(scores_dir: Path, semantic_dir: Path, labels_dir: Path, lut) -> list:
    from m2a_pipe.evaluation.inputs import EvaluationInputError
    from m2a_pipe.evaluation.report import OpenSetItem

    items = []
    for folder in (scores_dir, semantic_dir, labels_dir):
        if not Path(folder).is_dir():
            raise EvaluationInputError(f"{folder}: not a folder")
    for label in sorted(Path(labels_dir).glob("*.png")):
        score = Path(scores_dir) / f"{label.stem}.npy"
        sem = next((p for p in (Path(semantic_dir) / f"{label.stem}.npy", Path(semantic_dir) / f"{label.stem}.png")
                    if p.is_file()), None)
        if not score.is_file():
            raise EvaluationInputError(f"{label}: no scores {score.name} in {scores_dir}")
        if sem is None:
            raise EvaluationInputError(f"{label}: no semantic prediction {label.stem}.npy/.png in {semantic_dir}")
        items.append(OpenSetItem(label.stem, score, sem, label, lut))
    if not items:
        raise EvaluationInputError(f"{labels_dir}: no .png labels")
    return items


@evaluate.command("open-set", short_help="Open-IoU per known class, its mean, closed-set mIoU.")
@click.option("--scores", type=click.Path(path_type=Path), help="Folder of <stem>.npy anomaly maps.")
@click.option("--semantic", type=click.Path(path_type=Path), help="Folder of <stem>.npy/.png known-class labels.")
@click.option("--labels", type=click.Path(path_type=Path),
              help="Folder of <stem>.png ground truth: 0..K-1 known, --anomaly-id unknown, 255 void.")
@click.option("--num-known", type=int, help="K, the number of known classes (with --labels).")
@click.option("--anomaly-id", type=int, help="Ground-truth value of the unknown class.  [default: K]")
@click.option("--threshold", type=float,
              help="Anomaly threshold; a pixel is unknown when its score is > it (--threshold-rule reference) "
                   "or >= it (kth-score).  [default: 95% TPR on the calibration split]")
@click.option("--threshold-rule", type=click.Choice(THRESHOLD_RULES), default=THRESHOLD_RULES[0], show_default=True,
              help="reference: DenseHybrid's evaluate_osr.py: the first scikit-learn roc_curve threshold with "
                   "TPR > 95% over the known and anomalous calibration pixels, unknown when score > threshold; "
                   "kth-score: the ceil(0.95 n)-th largest of the n anomalous calibration scores, unknown when "
                   "score >= threshold.")
@click.option("--calib-scores", type=click.Path(path_type=Path), help="Calibration split: anomaly maps.")
@click.option("--calib-semantic", type=click.Path(path_type=Path), help="Calibration split: known-class labels.")
@click.option("--calib-labels", type=click.Path(path_type=Path), help="Calibration split: ground truth.")
@click.option("--dataset", type=click.Path(path_type=Path),
              help="StreetHazards folder (t5 / t6 cross-calibration of Sec. 7.4).")
@_model_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report here.")
def open_set(scores, semantic, labels, num_known, anomaly_id, threshold, threshold_rule, calib_scores,
             calib_semantic, calib_labels, dataset, weights, out_dir, device, precision, flip, json_path) -> None:
    """Open-IoU per known class and its mean (Eq. 23-24), and closed-set mIoU.

    \b
    Example:
      m2a-pipe evaluate open-set --dataset StreetHazards/test --weights streethazards
    """
    from m2a_pipe.evaluation import datasets as ds
    from m2a_pipe.evaluation import predict, report

    calibration = None
    if dataset is not None:
        data = ds.read_streethazards(dataset)
        if not data.samples:
            raise ds.DatasetError(f"{dataset}: no images found")
        precision = predict.resolved_precision(device, precision)
        out = _out(out_dir, dataset, flip=flip, precision=precision)
        names = [predict.file_stem(s.stem) for s in data.samples]
        missing = not all((out / "scores" / f"{n}.npy").is_file() and (out / "semantic" / f"{n}.npy").is_file()
                          for n in names)
        _prepare_run(out, weights, flip, "official", missing, precision=precision)
        if missing:
            predictor = predict.load_predictor(weights, device, flip, precision=precision)
            _weights_notice(weights)
            predict.write_anomaly_scores(predictor, data, out, semantic=True, progress=_bar)
        k = ds.STREETHAZARDS_NUM_KNOWN
        items = [report.OpenSetItem(n, out / "scores" / f"{n}.npy", out / "semantic" / f"{n}.npy", s.label,
                                    ds.STREETHAZARDS_SEMANTIC, s.subset) for n, s in zip(names, data.samples)]
    elif scores is not None and semantic is not None and labels is not None and num_known:
        k = num_known
        lut = report.open_set_lut(k, k if anomaly_id is None else anomaly_id)
        items = _open_items(scores, semantic, labels, lut)
        if calib_scores or calib_semantic or calib_labels:
            if not (calib_scores and calib_semantic and calib_labels):
                raise click.UsageError("give all of --calib-scores, --calib-semantic and --calib-labels")
            calibration = _open_items(calib_scores, calib_semantic, calib_labels, lut)
    else:
        raise click.UsageError("give --scores, --semantic, --labels and --num-known, or --dataset")
    result = report.evaluate_open_set(items, k, threshold=threshold, calibration=calibration,
                                      rule=threshold_rule)
    _emit(result, json_path)


def _unknown_id(value: str) -> int | str | None:
    """--unknown-id: an integer category id, ``auto`` or ``none`` (None)."""
    text = str(value).strip().lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a category id, auto or none", param_hint="--unknown-id") from None


def _panoptic_layout(root: Path) -> tuple[Path, Path, Path]:
    """(gt json, gt png folder, image folder) of a ``--dataset`` folder: ``panoptic.json`` +
    ``panoptic/`` + ``images/`` (``m2a-pipe synth images``), else COCO's
    ``annotations/panoptic_val2017.json`` + ``annotations/panoptic_val2017/`` + ``val2017/``."""
    if (root / "panoptic.json").is_file() and (root / "panoptic").is_dir():
        return root / "panoptic.json", root / "panoptic", root / "images"
    return (root / "annotations" / "panoptic_val2017.json", root / "annotations" / "panoptic_val2017",
            root / "val2017")


@evaluate.command("panoptic", short_help="PQ / SQ / RQ per class, and all / things / stuff / unknown.")
@click.option("--pred-json", type=click.Path(path_type=Path), help="COCO-format panoptic predictions JSON.")
@click.option("--pred-dir", type=click.Path(path_type=Path), help="Folder of the predicted panoptic PNGs.")
@click.option("--gt-json", type=click.Path(path_type=Path), help="COCO panoptic ground-truth JSON.")
@click.option("--gt-dir", type=click.Path(path_type=Path), help="Folder of the ground-truth panoptic PNGs.")
@click.option("--unknown-id", default="auto", show_default=True, metavar="ID|auto|none",
              help="Ground-truth category that is the unknown one; auto: the category named or "
                   "supercategory 'unknown' or 'anomaly' (synthetic labels: 19), if any; none: closed set. "
                   "Predicted unknown segments must carry the same id (--dataset runs write the model's "
                   "class K so).")
@click.option("--unknown-split", type=click.Choice(["5", "10", "20"]),
              help="Percent of unknown classes (Sec. 7.1); their ground truth becomes 'unknown' (id 1000).")
@click.option("--dataset", type=click.Path(path_type=Path),
              help="Folder with panoptic.json, panoptic/ and images/ (m2a-pipe synth images), or a COCO root: "
                   "annotations/panoptic_val2017.json, annotations/panoptic_val2017/, val2017/.")
@_model_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report here.")
def panoptic(pred_json, pred_dir, gt_json, gt_dir, unknown_id, unknown_split, dataset, weights, out_dir, device,
             precision, flip, json_path) -> None:
    """PQ / SQ / RQ (Eq. 25) per category, and for the groups of two conventions:
    panopticapi's (all / things / stuff, the unknown category among the things when its
    isthing is 1) and the paper's (Table IV: known all / things / stuff, and unknown).

    \b
    Example:
      m2a-pipe evaluate panoptic --dataset data/synth-val --weights demo --json pq.json
    """
    from m2a_pipe.evaluation import datasets as ds
    from m2a_pipe.evaluation import predict, report

    split = int(unknown_split) if unknown_split else None
    unknown = _unknown_id(unknown_id)
    if split is not None and unknown not in ("auto", None):
        raise click.UsageError("--unknown-split and --unknown-id exclude each other")
    if dataset is not None:
        root = Path(dataset)
        layout_json, layout_dir, image_dir = _panoptic_layout(root)
        gt_json, gt_dir = gt_json or layout_json, gt_dir or layout_dir
        gt = ds.read_coco_panoptic(gt_json, gt_dir, image_dir, split, unknown)
        precision = predict.resolved_precision(device, precision)
        out = _out(out_dir, dataset, "panoptic", precision=precision)
        pred_json, pred_dir = out / "panoptic.json", out / "panoptic"
        done = set(report.read_prediction_json(pred_json)) if pred_json.is_file() else set()
        if pred_json.is_file():
            predict.check_panoptic_ids(pred_json, gt)
        missing = any(im.stem not in done for im in gt.images)
        _prepare_run(out, weights, False, "panoptic", missing, precision=precision)
        if missing:
            predictor = predict.load_predictor(weights, device, flip=False, precision=precision)
            _weights_notice(weights)
            pred_json, pred_dir = predict.write_panoptic(predictor, gt, out, progress=_bar)
    elif pred_json and pred_dir and gt_json and gt_dir:
        gt = ds.read_coco_panoptic(gt_json, gt_dir, None, split, unknown)
    else:
        raise click.UsageError("give --pred-json, --pred-dir, --gt-json and --gt-dir, or --dataset")
    result = report.evaluate_panoptic(gt, pred_json, pred_dir)
    _emit(result, json_path)


@evaluate.command("tracks")
@click.argument("video_out", type=click.Path(path_type=Path))
@click.option("--gt", "gt_path", type=click.Path(path_type=Path), required=True,
              help="Ground truth: CLIP.tracks.json (m2a-pipe synth video) or a MOTChallenge gt.txt.")
@click.option("--min-area-fraction", type=float,
              help="Visible-box rule: ground-truth boxes smaller than this fraction of the frame are ignored.  "
                   "[default: the run's own min_area_fraction]")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report here.")
def tracks(video_out, gt_path, min_area_fraction, json_path) -> None:
    """MOTA, IDF1, ID switches, fragmentations and event recall of one video's output folder.

    \b
    Example:
      m2a-pipe process examples/drive.mp4 -o out
      m2a-pipe evaluate tracks out/drive.m2a --gt examples/drive.tracks.json --json tracks.json
    """
    from m2a_pipe.evaluation.tracks import evaluate_tracks

    _emit(evaluate_tracks(video_out, gt_path, min_area_fraction=min_area_fraction), json_path)
