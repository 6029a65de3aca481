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
    res = _run(["anomaly", "--dataset", root, "--weights", tmp_path / "nope.safetensors", "--out", out])
    assert res.exit_code == 0, res.output
    (out / "scores" / "img0.npy").unlink()
    res = _run(["anomaly", "--dataset", root, "--weights", tmp_path / "nope.safetensors", "--out", out])
    assert res.exit_code == 1 and "nope.safetensors" in res.output and "Traceback" not in res.output


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
    first = _run(["anomaly", "--dataset", root, "--weights", weights, "--out", out, "--no-flip",
                  "--json", tmp_path / "first.json"])
    assert first.exit_code == 0, first.output
    run = json.loads((out / "run.json").read_text())
    assert run == {"weights": weights, "weights_sha256": sha256_file(weights), "score": "official", "flip": False,
                   "map_stride": 1}
    again = _run(["anomaly", "--dataset", root, "--weights", weights, "--out", out, "--no-flip",
                  "--json", tmp_path / "again.json"])
    assert again.exit_code == 0 and "running the model" not in again.output
    assert (tmp_path / "again.json").read_text() == (tmp_path / "first.json").read_text()
    torch.manual_seed(1)
    other = build_model(preset("small"))
    save_weights(other, other.config, tmp_path / "other.safetensors")
    for args, needle in (([tmp_path / "other.safetensors", "--no-flip"], "weights"), ([weights, "--flip"], "flip"),
                         ([weights, "--no-flip", "--score", "msp"], "score"),
                         ([weights, "--no-flip", "--map-stride", "4"], "map_stride")):
        res = _run(["anomaly", "--dataset", root, "--out", out, "--weights", *args])
        assert res.exit_code == 1 and str(out) in res.output and needle in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    # without --out every score and flip setting has its own folder
    monkeypatch.chdir(tmp_path)
    msp = _run(["anomaly", "--dataset", root, "--weights", weights, "--no-flip", "--score", "msp"])
    assert msp.exit_code == 0, msp.output
    assert json.loads((tmp_path / "m2a-eval" / "smiyc-msp-noflip" / "run.json").read_text())["score"] == "msp"
    assert len(list((tmp_path / "m2a-eval" / "smiyc-msp-noflip" / "scores").glob("*.npy"))) == 2
    coarse = _run(["anomaly", "--dataset", root, "--weights", weights, "--no-flip", "--map-stride", "4"])
    assert coarse.exit_code == 0, coarse.output
    assert json.loads((tmp_path / "m2a-eval" / "smiyc-noflip-stride4" / "run.json").read_text())["map_stride"] == 4
    # a run.json written before map_stride existed holds stride 1
    legacy = {k: v for k, v in run.items() if k != "map_stride"}
    (out / "run.json").write_text(json.dumps(legacy))
    assert _run(["anomaly", "--dataset", root, "--out", out, "--weights", weights, "--no-flip"]).exit_code == 0


def test_open_set_cli(tmp_path):
    for d in ("s", "m", "l"):
        (tmp_path / d).mkdir()
    np.save(tmp_path / "s" / "a.npy", np.array([[0, 0, 0, 0.9, 0.9, 0.1]], np.float32))
    np.save(tmp_path / "m" / "a.npy", np.array([[0, 1, 1, 1, 0, 1]]))
    Image.fromarray(np.array([[0, 0, 1, 1, 2, 2]], np.uint8)).save(tmp_path / "l" / "a.png")
    res = _run(["open-set", "--scores", tmp_path / "s", "--semantic", tmp_path / "m", "--labels", tmp_path / "l",
                "--num-known", 2, "--threshold", 0.5])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["open_miou"] == pytest.approx(37.5) and report["threshold"] == 0.5
    assert report["open_iou_by_class"] == {"0": 50.0, "1": 25.0}
    res = _run(["open-set", "--scores", tmp_path / "s", "--semantic", tmp_path / "m", "--labels", tmp_path / "l",
                "--num-known", 2, "--calib-scores", tmp_path / "s", "--calib-semantic", tmp_path / "m",
                "--calib-labels", tmp_path / "l"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["threshold"] == pytest.approx(0.1)  # both anomalous pixels kept


def test_panoptic_cli(tmp_path):
    from tests.test_eval_panoptic import _case

    gt, gt_segs, pred, pred_segs = _case()
    cats = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0},
            {"id": 3, "name": "car", "isthing": 1}]
    for name, ids, segs in (("gt", gt, gt_segs), ("pred", pred, pred_segs)):
        (tmp_path / name).mkdir()
        write_panoptic_png(tmp_path / name / "x.png", ids)
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"categories": cats, "annotations": [{"file_name": "x.png", "image_id": 1, "segments_info": segs}]}))
    # the 5 % split lacks cow / pizza / toilet here: a clear error
    res = _run(["panoptic", "--pred-json", tmp_path / "pred.json", "--pred-dir", tmp_path / "pred",
                "--gt-json", tmp_path / "gt.json", "--gt-dir", tmp_path / "gt", "--unknown-split", "5"])
    assert res.exit_code == 1 and "gt.json" in res.output
    res = _run(["panoptic", "--pred-json", tmp_path / "pred.json", "--pred-dir", tmp_path / "pred",
                "--gt-json", tmp_path / "gt.json", "--gt-dir", tmp_path / "gt"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["things"]["pq"] == pytest.approx(40.0)  # person 0.8, car 0 (a FP)
    assert report["stuff"]["pq"] == pytest.approx(90.0)
    assert report["pq"] == pytest.approx(100 * 1.7 / 3)
