"""A few training steps reduce the loss; resuming gives the same next step; CLI (extends, --set,
recorded recipe, errors) and export."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from m2a_pipe.cli import cli
from m2a_pipe.config import ConfigError
from m2a_pipe.model.loading import load_model
from m2a_pipe.training.cli import train
from m2a_pipe.training.recipes import Recipe
from m2a_pipe.training.trainer import Trainer
from tests.test_train_data import make_synth

TINY_MODEL = {"preset": "small", "changes": {
    "pixel_decoder": {"conv_dim": 32, "mask_dim": 32, "enc_layers": 1, "gn_groups": 8, "dim_feedforward": 64},
    "decoder": {"hidden_dim": 32, "num_queries": 6, "dim_feedforward": 64, "dec_layers": 2},
    "preprocess": {"min_size_test": 48}}}


def tiny_recipe(root, stage=1, **solver) -> Recipe:
    return Recipe.from_dict({
        "name": f"tiny{stage}", "stage": stage, "seed": 3, "model": TINY_MODEL,
        "data": {"type": "synth", "root": str(root)},
        "outliers": {"type": "folder"} if stage == 2 else None,
        "anomaly_mix": {"probability": 0.5},
        "augment": {"crop": [48, 96], "min_scale": 0.5, "max_scale": 1.5},
        "loss": {"num_points": 256},
        "solver": {"batch_size": 2, "max_steps": 20, "lr": 1e-3, **solver},
        "checkpoint_every": 1000, "log_every": 1})


def test_few_steps_reduce_the_loss(tmp_path):
    root = make_synth(tmp_path / "d")
    t = Trainer(tiny_recipe(root, clip_norm=None), tmp_path / "o", device="cpu", progress=False)
    batch = t.stream[0]
    first = t.train_step(batch)["loss"]
    for _ in range(7):
        last = t.train_step(batch)["loss"]
    assert last < 0.8 * first


def test_outlier_loss_on_the_input_grid(tmp_path):
    root = make_synth(tmp_path / "d")
    spec = tiny_recipe(root, stage=2).to_dict()
    spec["loss"]["outlier_resolution"] = "input"
    t = Trainer(Recipe.from_dict(spec), tmp_path / "o", device="cpu", progress=False)
    assert t.criterion.outlier_resolution == "input"
    out = t.train_step(t.stream[0])
    assert 0 < out["outlier"] < 1 and torch.isfinite(torch.tensor(out["loss"]))
    spec["loss"]["outlier_resolution"] = "full"
    with pytest.raises(ConfigError, match="outlier_resolution"):
        Recipe.from_dict(spec)


@pytest.mark.parametrize("key, good, bad, stage1_value", [
    ("hard_inlier_fraction", 0.1, (0.0, 2.0), 0.5),
    ("outlier_pixel_weight", 3.0, (0.0, -1.0), 2.0),
])
def test_contrastive_options_in_recipes(tmp_path, key, good, bad, stage1_value):
    root = make_synth(tmp_path / "d")
    spec = tiny_recipe(root, stage=2).to_dict()
    spec["loss"][key] = good
    t = Trainer(Recipe.from_dict(spec), tmp_path / "o", device="cpu", progress=False)
    assert getattr(t.criterion, key) == good
    for value in bad:
        spec["loss"][key] = value
        with pytest.raises(ConfigError, match=key):
            Recipe.from_dict(spec)
    stage1 = tiny_recipe(root, stage=1).to_dict()
    stage1["loss"][key] = stage1_value
    with pytest.raises(ConfigError, match="stage 2"):
        Recipe.from_dict(stage1)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_gives_the_same_next_step(tmp_path):
    root = make_synth(tmp_path / "d")
    recipe = tiny_recipe(root, stage=2)
    full = Trainer(recipe, tmp_path / "full", device="cpu", max_steps=4, progress=False)
    full.run()
    ref = _params(full.model)

    part = Trainer(recipe, tmp_path / "part", device="cpu", max_steps=3, progress=False)
    part.run()
    resumed = Trainer(recipe, tmp_path / "part", device="cpu", resume=True, max_steps=4, progress=False)
    assert resumed.step == 3
    resumed.run()
    got = _params(resumed.model)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-6, rtol=0), k
    logs = [(tmp_path / d / "log.csv").read_text().splitlines() for d in ("full", "part")]
    assert logs[0][-1].split(",")[:8] == logs[1][-1].split(",")[:8]


def test_cli_run_with_extends_and_set_exports_and_records_the_recipe(tmp_path):
    root = make_synth(tmp_path / "d")
    base = tiny_recipe(root).to_dict()  # solver.max_steps 20
    (tmp_path / "base.json").write_text(json.dumps(base))
    child = {"extends": "base.json", "name": "child",
             "val": {"root": str(root), "every": 1, "max_images": 2},
             "export": {"dtype": "float16", "name": "w.safetensors"}}
    path = tmp_path / "child.json"
    path.write_text(json.dumps(child))
    res = CliRunner().invoke(train, ["run", str(path), "--output", str(tmp_path / "o"), "--device", "cpu", "--quiet",
                                     "--set", "solver.max_steps=2", "--set", "loss.num_points=128"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["step"] == 2 and 0 <= summary["val"]["auprc"] <= 1  # --set reached the trainer
    model = load_model(tmp_path / "o" / "w.safetensors")
    assert model.config.decoder.num_queries == 6
    assert (tmp_path / "o" / "val.csv").read_text().count("\n") == 3  # header, step 1, final
    recorded = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert "extends" not in recorded and recorded["name"] == "child"
    assert recorded["solver"]["max_steps"] == 2 and recorded["loss"]["num_points"] == 128
    assert recorded["solver"]["lr"] == base["solver"]["lr"] and recorded["val"]["every"] == 1
    assert Recipe.load(tmp_path / "o" / "recipe.json").to_dict() == recorded
    ckpt = torch.load(next((tmp_path / "o" / "checkpoints").glob("step_*.pt")), weights_only=True)
    assert json.loads(ckpt["recipe"]) == recorded


def _main(args):
    """The console script as a user runs it (its error lines and exit codes)."""
    return CliRunner().invoke(cli, args)


def test_cli_reports_bad_data_in_one_line(tmp_path):
    recipe = tiny_recipe(tmp_path).to_dict()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe))
    res = _main(["train", "run", str(path), "--data", str(tmp_path / "none"), "--device", "cpu"])
    assert res.exit_code != 0 and "m2a-pipe: error:" in res.output and "Traceback" not in res.output


def test_cli_missing_init_weights_names_the_recipe_that_makes_it(tmp_path):
    recipe = tiny_recipe(tmp_path).to_dict()
    recipe.update(init_weights=str(tmp_path / "runs" / "up" / "final.safetensors"), init_from="train/demo/up.json")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe))
    res = _main(["train", "run", str(path), "--output", str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("m2a-pipe: error:"))
    assert str(path) in line and "final.safetensors not found" in line and "train/demo/up.json" in line
    assert not (tmp_path / "o").exists()


def test_cli_set_with_an_unknown_key_is_refused_in_one_line(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(tiny_recipe(tmp_path).to_dict()))
    res = _main(["train", "run", str(path), "--set", "solver.max_step=2", "--device", "cpu"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"m2a-pipe: error: {path} with --set solver.max_step: unknown recipe keys: ['solver.max_step']" in res.output
    res = _main(["train", "run", str(path), "--set", "solver.max_steps"])
    assert res.exit_code == 2 and "m2a-pipe: error: --set 'solver.max_steps': expected KEY=VALUE" in res.output
