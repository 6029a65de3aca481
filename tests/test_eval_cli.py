"""``evaluate`` command group through click's CliRunner on tiny fake inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_error_line, run_cli
from PIL import Image

from m2a_pipe.evaluation.datasets import write_panoptic_png


def _fake(tmp_path, n=3):
    rng = np.random.default_rng(0)
    (tmp_path / "scores").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(n):
        lab = np.zeros((40, 60), np.uint8)
        if i:
            lab[10:25, 10 + 10 * i:30 + 10 * i] = 1
        lab[:2] = 255
        sc = (rng.random(lab.shape) * 0.5 + 0.5 * (lab == 1)).astype(np.float32)
        np.save(tmp_path / "scores" / f"img{i}.npy", sc)
        Image.fromarray(lab).save(tmp_path / "labels" / f"img{i}.png")
    return tmp_path / "scores", tmp_path / "labels"


def _run(args):
    return run_cli("evaluate", *args)


def test_anomaly_json_and_plots(tmp_path):
    scores, labels = _fake(tmp_path)
    res = _run(["anomaly", "--scores", scores, "--labels", labels, "--profile", "obstacle-track",
                "--json", tmp_path / "r.json", "--plots", tmp_path / "plots"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    for key in ("auprc", "fpr95", "auroc", "siou", "ppv", "f1_star", "f1_by_tau", "n_images", "n_valid_pixels"):
        assert key in report
    assert report["n_images"] == 3 and report["ap_convention"] == "exact"
    assert report["n_valid_pixels"] == 3 * 38 * 60
    assert 90 < report["auprc"] <= 100 and len(report["f1_by_tau"]) == 11
    assert (tmp_path / "plots" / "pr.png").is_file() and (tmp_path / "plots" / "roc.png").is_file()
    res = _run(["anomaly", "--scores", scores, "--labels", labels, "--ap", "smiyc"])
    assert res.exit_code == 0 and json.loads(res.output)["ap_convention"] == "smiyc"


def test_anomaly_component_rule_in_the_report(tmp_path):
    scores, labels = _fake(tmp_path)
    # uint8 levels, as a pipeline scores.h5 stores them: ties at every threshold
    for f in scores.glob("*.npy"):
        np.save(f, (np.round(np.load(f) * 255) / 255).astype(np.float32))
    rules = {}
    for ap in ("exact", "smiyc"):
        res = _run(["anomaly", "--scores", scores, "--labels", labels, "--profile", "obstacle-track", "--ap", ap])
        assert res.exit_code == 0, res.output
        report = json.loads(res.output)
        rules[ap] = report["component_threshold_rule"]
        # the reported threshold given back reproduces the run (same comparison)
        again = _run(["anomaly", "--scores", scores, "--labels", labels, "--profile", "obstacle-track",
                      "--ap", ap, "--threshold", repr(report["component_threshold"])])
        assert again.exit_code == 0, again.output
        given = json.loads(again.output)
        assert given["component_threshold_source"] == "given"
        assert {k: given[k] for k in ("siou", "ppv", "f1_star")} == {k: report[k] for k in ("siou", "ppv", "f1_star")}
    assert rules["exact"].startswith("score >= t") and rules["smiyc"].startswith("score > t")


@pytest.mark.parametrize("breakage,needle", [
    ("missing", "img2.npy"), ("size", "img1.npy"), ("values", "img0.png"), ("nan", "img0.npy")])
def test_bad_input_one_line_naming_the_file(tmp_path, breakage, needle):
    scores, labels = _fake(tmp_path)
    if breakage == "missing":
        (labels / "img2.png").unlink()
    elif breakage == "size":
        np.save(scores / "img1.npy", np.zeros((10, 10), np.float32))
    elif breakage == "values":
        Image.fromarray(np.full((40, 60), 3, np.uint8)).save(labels / "img0.png")
    else:
        arr = np.load(scores / "img0.npy"); arr[5, 5] = np.nan
        np.save(scores / "img0.npy", arr)
    res = _run(["anomaly", "--scores", scores, "--labels", labels])
    assert_error_line(res, needle)


def test_dataset_run_reuses_written_scores(tmp_path):
    scores, labels = _fake(tmp_path)
    root = tmp_path / "smiyc"
    for i in range(3):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "images" / f"img{i}.jpg")
    (root / "labels_masks").mkdir()
    for p in labels.iterdir():
        (root / "labels_masks" / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    for p in scores.iterdir():
        (out / "scores" / p.name).write_bytes(p.read_bytes())
    # all scores present: no model is needed, whatever --weights says
    res = _run(["anomaly", "--dataset", root, "--weights", tmp_path / "nope.safetensors", "--output", out])
    assert res.exit_code == 0, res.output
    (out / "scores" / "img0.npy").unlink()
    res = _run(["anomaly", "--dataset", root, "--weights", tmp_path / "nope.safetensors", "--output", out])
    assert res.exit_code == 2 and "nope.safetensors" in res.output and "Traceback" not in res.output


def _smiyc(tmp_path, n=2):
    scores, labels = _fake(tmp_path, n)
    root = tmp_path / "smiyc"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(n):
        Image.fromarray(np.full((40, 60, 3), 60 * i, np.uint8)).save(root / "images" / f"img{i}.jpg")
        (root / "labels_masks" / f"img{i}.png").write_bytes((labels / f"img{i}.png").read_bytes())
    return root


def test_dataset_run_refuses_outputs_of_other_settings(tmp_path, weights, monkeypatch):
    import torch

    from m2a_pipe.config import preset
    from m2a_pipe.model.checkpoint import save_weights, sha256_file
    from m2a_pipe.model.mask2anomaly import build_model

    root, out = _smiyc(tmp_path), tmp_path / "out"
    first = _run(["anomaly", "--dataset", root, "--weights", weights, "--output", out, "--no-flip",
                   "--precision", "fp32",
                  "--json", tmp_path / "first.json"])
    assert first.exit_code == 0, first.output
    run = json.loads((out / "run.json").read_text())
    assert run == {"weights": weights, "weights_sha256": sha256_file(weights), "score": "official", "flip": False,
                   "map_stride": 1, "precision": "fp32"}
    again = _run(["anomaly", "--dataset", root, "--weights", weights, "--output", out, "--no-flip",
                   "--precision", "fp32",
                  "--json", tmp_path / "again.json"])
    assert again.exit_code == 0 and "running the model" not in again.output
    assert (tmp_path / "again.json").read_text() == (tmp_path / "first.json").read_text()
    torch.manual_seed(1)
    other = build_model(preset("small"))
    save_weights(other, other.config, tmp_path / "other.safetensors")
    for args, needle in (([tmp_path / "other.safetensors", "--no-flip"], "weights"), ([weights, "--flip"], "flip"),
                         ([weights, "--no-flip", "--score", "msp"], "score"),
                         ([weights, "--no-flip", "--map-stride", "4"], "map_stride"),
                         ([weights, "--no-flip", "--precision", "bf16"], "precision fp32")):
        res = _run(["anomaly", "--dataset", root, "--output", out, "--precision", "fp32", "--weights", *args])
        assert res.exit_code == 1 and str(out) in res.output and needle in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    # without --output every score and flip setting has its own folder
    monkeypatch.chdir(tmp_path)
    msp = _run(["anomaly", "--dataset", root, "--weights", weights, "--no-flip", "--score", "msp",
                "--precision", "fp32"])
    assert msp.exit_code == 0, msp.output
    assert json.loads((tmp_path / "m2a-eval" / "smiyc-msp-noflip" / "run.json").read_text())["score"] == "msp"
    assert len(list((tmp_path / "m2a-eval" / "smiyc-msp-noflip" / "scores").glob("*.npy"))) == 2
    coarse = _run(["anomaly", "--dataset", root, "--weights", weights, "--no-flip", "--map-stride", "4",
                   "--precision", "bf16"])
    assert coarse.exit_code == 0, coarse.output
    assert json.loads((tmp_path / "m2a-eval" / "smiyc-noflip-stride4-bf16" / "run.json").read_text())["map_stride"] == 4
    # a run.json written before map_stride and precision existed holds stride 1, float32
    legacy = {k: v for k, v in run.items() if k not in ("map_stride", "precision")}
    (out / "run.json").write_text(json.dumps(legacy))
    assert _run(["anomaly", "--dataset", root, "--output", out, "--weights", weights, "--no-flip",
                 "--precision", "fp32"]).exit_code == 0


def _open_split(folder, name, scores, semantic, labels):
    for d in ("s", "m", "l"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    np.save(folder / "s" / f"{name}.npy", np.array(scores, np.float32))
    np.save(folder / "m" / f"{name}.npy", np.array(semantic))
    Image.fromarray(np.array(labels, np.uint8)).save(folder / "l" / f"{name}.png")
    return ["--scores", folder / "s", "--semantic", folder / "m", "--labels", folder / "l"]


def test_open_set_cli(tmp_path):
    split = _open_split(tmp_path, "a", [[0, 0, 0, 0.9, 0.9, 0.1]], [[0, 1, 1, 1, 0, 1]], [[0, 0, 1, 1, 2, 2]])
    res = _run(["open-set", *split, "--num-known", 2, "--threshold", 0.5])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["open_miou"] == pytest.approx(37.5) and report["threshold"] == 0.5
    assert report["open_iou_by_class"] == {"0": 50.0, "1": 25.0}
    assert report["threshold_rule"] == "reference" and report["unknown_if"] == "score > threshold"
    assert report["threshold_source"] == "given" and report["calibration_tpr"] is None
    # a given threshold on a tie (the two 0.9 pixels): reference > 0.9 leaves them known:
    # [0, 1, 1, 1, 0, 1]: class 0 1/3, class 1 2/4; kth-score >= 0.9 makes them unknown: 37.5
    ref = json.loads(_run(["open-set", *split, "--num-known", 2, "--threshold", 0.9]).output)
    assert ref["open_iou_by_class"] == pytest.approx({"0": 100 / 3, "1": 50.0}, abs=1e-3)
    kth = json.loads(_run(["open-set", *split, "--num-known", 2, "--threshold", 0.9,
                           "--threshold-rule", "kth-score"]).output)
    assert kth["open_miou"] == pytest.approx(37.5) and kth["unknown_if"] == "score >= threshold"
    # calibrated on itself: anomalous 0.9 and 0.1, known 0, 0, 0, 0.9. Reference by hand:
    # TPR(0.9) = 1/2, TPR(0.1) = 2/2 > 0.95, and 0.1 is followed by a known-only score: t = 0.1;
    # unknown is > 0.1, so the anomalous pixel at 0.1 stays class 1 (calibration TPR 50 %):
    # open prediction [0, 1, 1, 2, 2, 1] -> 37.5. kth-score: t = 0.1 too (2nd largest of 2),
    # but >= 0.1 makes that pixel unknown: class 1 1/3 -> (1/2 + 1/3) / 2.
    calib = ["--calib-scores", tmp_path / "s", "--calib-semantic", tmp_path / "m", "--calib-labels", tmp_path / "l"]
    res = _run(["open-set", *split, "--num-known", 2, *calib])
    assert res.exit_code == 0, res.output
    ref = json.loads(res.output)
    assert ref["threshold"] == pytest.approx(0.1) and ref["calibration_tpr"] == 50.0
    assert ref["open_miou"] == pytest.approx(37.5) and ref["threshold_source"] == "95% TPR on the calibration split"
    kth = json.loads(_run(["open-set", *split, "--num-known", 2, *calib, "--threshold-rule", "kth-score"]).output)
    assert kth["threshold"] == pytest.approx(0.1) and kth["calibration_tpr"] == 100.0
    assert kth["open_miou"] == pytest.approx(100 * (1 / 2 + 1 / 3) / 2, abs=1e-3)


def test_open_set_cli_thresholds_differ_by_rule(tmp_path):
    # calibration: 40 anomalous pixels at 1/64 .. 40/64, one known at 0 (K = 1, anomaly id 1).
    # Reference by hand: TPR > 0.95 needs 39 of 40 -> 2/64; the counts at 2/64 and 1/64 are both
    # (0 known, 1 anomalous), so roc_curve drops 2/64; 1/64 is followed by the known-only 0: kept,
    # t = 1/64 (39 of 40 anomalous > t: 97.5 %). kth-score: the 38th largest, 3/64 (95 %).
    calib = _open_split(tmp_path / "cal", "c", [[i / 64 for i in range(1, 41)] + [0.0]], [[0] * 41],
                        [[1] * 40 + [0]])
    calib = [c.replace("--", "--calib-") if isinstance(c, str) else c for c in calib]
    # evaluated: known pixels at 2/64 and 0, an anomalous one at 2/64
    split = _open_split(tmp_path / "ev", "e", [[2 / 64, 0.0, 2 / 64]], [[0, 0, 0]], [[0, 0, 1]])
    ref = json.loads(_run(["open-set", *split, "--num-known", 1, *calib]).output)
    assert ref["threshold"] == 1 / 64 and ref["calibration_tpr"] == 97.5
    # > 1/64: [K, 0, K]: class 0 TP 1, FN 1 -> 50
    assert ref["open_miou"] == pytest.approx(50.0)
    kth = json.loads(_run(["open-set", *split, "--num-known", 1, *calib, "--threshold-rule", "kth-score"]).output)
    assert kth["threshold"] == 3 / 64 and kth["calibration_tpr"] == 95.0
    # >= 3/64: nothing unknown, [0, 0, 0]: class 0 TP 2, FP 1 -> 2/3
    assert kth["open_miou"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    res = _run(["open-set", *split, "--num-known", 1, "--threshold", 0.5, "--threshold-rule", "median"])
    assert res.exit_code == 2 and "median" in res.output


def _panoptic_files(tmp_path, cats, relabel=None):
    from tests.test_eval_panoptic import _case

    gt, gt_segs, pred, pred_segs = _case()
    pred_segs = [dict(s, category_id=(relabel or {}).get(s["id"], s["category_id"])) for s in pred_segs]
    for name, ids, segs in (("gt", gt, gt_segs), ("pred", pred, pred_segs)):
        (tmp_path / name).mkdir()
        write_panoptic_png(tmp_path / name / "x.png", ids)
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"categories": cats, "annotations": [{"file_name": "x.png", "image_id": 1, "segments_info": segs}]}))
    return ["panoptic", "--pred-json", tmp_path / "pred.json", "--pred-dir", tmp_path / "pred",
            "--gt-json", tmp_path / "gt.json", "--gt-dir", tmp_path / "gt"]


CATS = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "road", "isthing": 0},
        {"id": 19, "name": "anomaly", "isthing": 1, "supercategory": "anomaly"}]


def test_panoptic_cli_both_conventions_and_per_class(tmp_path):
    # the values of tests/test_eval_panoptic.py's hand-worked case, in percent
    args = _panoptic_files(tmp_path, CATS)
    # the 5 % split lacks car / cow / pizza / toilet here: a clear error
    assert_error_line(_run([*args, "--unknown-split", "5"]), "gt.json")
    res = _run([*args, "--json", tmp_path / "r.json"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["unknown_category"]["id"] == 19 and report["unknown_category"]["isthing"] is True
    assert report["paper"]["unknown"] == {"pq": 40.0, "sq": 80.0, "rq": 50.0, "n_categories": 1}
    assert report["paper"]["things"]["pq"] == pytest.approx(80.0)
    assert report["paper"]["all"]["pq"] == pytest.approx(100 * (0.8 + 4 / 7) / 2, abs=1e-4)
    assert report["panopticapi"]["things"]["pq"] == pytest.approx(60.0)  # the unknown thing counted
    assert report["panopticapi"]["all"]["pq"] == pytest.approx(100 * (0.8 + 4 / 7 + 0.4) / 3, abs=1e-4)
    assert "unknown" not in report["panopticapi"]
    assert report["per_category"]["19"] == {"name": "anomaly", "group": "unknown", "pq": 40.0, "sq": 80.0,
                                            "rq": 50.0, "tp": 1, "fp": 1, "fn": 1}
    assert report["per_category"]["2"]["fp"] == 1 and report["per_category"]["2"]["group"] == "stuff"
    # --unknown-id none: a closed set, the anomaly a known thing; both conventions agree
    closed = json.loads(_run([*args, "--unknown-id", "none"]).output)
    assert closed["unknown_category"] is None and "unknown" not in closed["paper"]
    assert closed["paper"]["all"] == closed["panopticapi"]["all"]
    assert closed["paper"]["things"]["pq"] == pytest.approx(60.0)
    assert_error_line(_run([*args, "--unknown-id", "42"]), "gt.json: --unknown-id 42")
    assert_error_line(_run([*args, "--unknown-id", "abc"]), "--unknown-id", exit_code=2)
    assert_error_line(_run([*args, "--unknown-id", "19", "--unknown-split", "5"]), "exclude", exit_code=2)


def test_panoptic_cli_closed_set_leaves_out_unknown_predictions(tmp_path):
    cats = [dict(c, name="crate", supercategory="things") if c["id"] == 19 else c for c in CATS]
    args = _panoptic_files(tmp_path, cats, relabel={15: 1000})  # f: the model's unknown, id 1000
    report = json.loads(_run(args).output)
    assert report["unknown_category"] is None and report["n_unknown_segments_left_out"] == 1
    # crate: u matches U (TP, IoU 0.8), V unmatched (FN), f gone: PQ = 0.8 / 1.5
    assert report["per_category"]["19"]["pq"] == pytest.approx(100 * 0.8 / 1.5, abs=1e-4)


def test_panoptic_dataset_run_lines_up_the_unknown_id(tmp_path, weights):
    from m2a_pipe.synth import write_image_dataset

    root, out = tmp_path / "synth", tmp_path / "out"
    write_image_dataset(root, seed=3, count=1, anomalies="eval", size=(160, 96))
    res = _run(["panoptic", "--dataset", root, "--weights", weights, "--output", out, "--json", tmp_path / "r.json"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["unknown_category"]["id"] == 19 and report["per_category"]["19"]["fn"] >= 1
    written = json.loads((out / "panoptic.json").read_text())
    assert written["unknown_category_id"] == 19 and written["class_category_ids"] == list(range(19))
    assert {s["category_id"] for a in written["annotations"] for s in a["segments_info"]} <= set(range(20))
    again = _run(["panoptic", "--dataset", root, "--weights", weights, "--output", out])
    assert again.exit_code == 0 and "running the model" not in again.output
    assert_error_line(_run(["panoptic", "--dataset", root, "--weights", weights, "--output", out,
                            "--unknown-id", "none"]), "panoptic.json: written with")
