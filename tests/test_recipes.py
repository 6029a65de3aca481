"""Recipe files: every shipped recipe loads; ``extends``, ``--set`` overrides and ``init_from``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from m2a_pipe.config import ConfigError
from m2a_pipe.training.recipes import Recipe, apply_overrides, parse_override, resolve_extends

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train"
RECIPES = sorted(TRAIN.rglob("*.json"))
LINEAGE = sorted((TRAIN / "demo").glob("*.json"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def write(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path


BASE = {"name": "base", "stage": 2, "seed": 1, "notes": "the parent",
        "model": {"preset": "small", "changes": {"preprocess": {"min_size_test": 256, "max_size_test": 512}}},
        "data": {"type": "synth", "root": "d"}, "outliers": {"type": "folder"},
        "anomaly_mix": {"probability": 0.5, "height_range": [0.1, 0.3]},
        "loss": {"margin": 0.5, "num_points": 100}, "solver": {"batch_size": 2, "max_steps": 20}}


def test_the_shipped_recipes_are_found():
    names = {_rel(p) for p in RECIPES}
    assert {"train/cityscapes_r50_stage1.json", "train/cityscapes_r50_stage2.json",
            "train/streethazards_stage1.json", "train/streethazards_stage2.json"} <= names
    assert len(LINEAGE) == 9 and all(p.parent.name == "demo" for p in LINEAGE)


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_every_shipped_recipe_loads_and_validates(path):
    recipe = Recipe.load(path)
    spec = recipe.to_dict()
    assert "extends" not in spec and recipe.name
    assert Recipe.from_dict(spec).to_dict() == spec  # the resolved form is a recipe itself


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_every_shipped_recipe_starts_from_a_shipped_file_or_names_its_maker(path):
    recipe = Recipe.load(path)
    if recipe.init_weights is None or (ROOT / recipe.init_weights).is_file():
        return
    assert recipe.init_from, f"{_rel(path)}: init_weights {recipe.init_weights} is not shipped and no init_from"
    maker_path = ROOT / recipe.init_from
    assert maker_path.is_file() and maker_path.resolve() != path.resolve()
    maker = Recipe.load(maker_path)
    assert recipe.init_weights.startswith(f"runs/{maker.name}/"), (recipe.init_weights, maker.name)


def test_the_demo_lineage_is_one_chain_in_file_order_ending_in_demo_v5():
    recipes = [Recipe.load(p) for p in LINEAGE]
    assert recipes[0].init_weights is None and recipes[0].stage == 1
    for before, (path, recipe) in zip(LINEAGE, zip(LINEAGE[1:], recipes[1:])):
        assert recipe.init_from == _rel(before), path.name
        parent = json.loads(path.read_text())["extends"]
        assert (path.parent / parent).resolve() in {p.resolve() for p in LINEAGE[:LINEAGE.index(path)]}
    assert [p.name[:3] for p in LINEAGE] == [f"{i:02d}_" for i in range(1, 10)]
    last = recipes[-1]
    assert last.name == "demo_stage2_v6g" and last.loss.outlier_pixel_weight == 128.0
    assert last.seed == 10 and last.solver.max_steps == 1000 and last.solver.lr == 5e-5


def test_extends_merges_tables_key_by_key_and_keeps_name_and_notes_per_file(tmp_path):
    write(tmp_path / "base.json", BASE)
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.json", {
        "extends": "../base.json", "name": "child", "seed": 7,
        "model": {"changes": {"preprocess": {"min_size_test": 384}}},
        "anomaly_mix": {"height_range": [0.2, 0.4]},
        "loss": {"margin": 0.9}, "solver": {"lr": 5e-5}})
    r = Recipe.load(child)
    assert (r.name, r.seed, r.notes) == ("child", 7, "")
    assert r.model["changes"]["preprocess"] == {"min_size_test": 384, "max_size_test": 512}
    assert r.anomaly_mix.height_range == (0.2, 0.4) and r.anomaly_mix.probability == 0.5
    assert (r.loss.margin, r.loss.num_points) == (0.9, 100)
    assert (r.solver.lr, r.solver.batch_size, r.solver.max_steps) == (5e-5, 2, 20)
    assert r.outliers == {"type": "folder"} and r.stage == 2
    assert r.source == str(child)
    grandchild = write(tmp_path / "sub" / "grand.json", {"extends": "child.json", "name": "g", "outliers": None,
                                                         "stage": 1})
    spec = resolve_extends(grandchild)
    assert spec["outliers"] is None and spec["loss"]["margin"] == 0.9 and spec["seed"] == 7
    unnamed = write(tmp_path / "unnamed.json", {"extends": "base.json", "seed": 3})
    with pytest.raises(ConfigError, match="unnamed.json: .*own name"):
        Recipe.load(unnamed)


def test_extends_cycle_and_missing_parent_name_the_files(tmp_path):
    a = write(tmp_path / "a.json", {**BASE, "name": "a", "extends": "b.json"})
    write(tmp_path / "b.json", {"name": "b", "extends": "a.json"})
    with pytest.raises(ConfigError, match="cycle") as err:
        Recipe.load(a)
    message = str(err.value)
    assert "a.json" in message and "b.json" in message and "\n" not in message
    itself = write(tmp_path / "self.json", {**BASE, "extends": "self.json"})
    with pytest.raises(ConfigError, match="self.json: extends makes a cycle"):
        Recipe.load(itself)
    orphan = write(tmp_path / "orphan.json", {"name": "o", "extends": "gone/parent.json"})
    with pytest.raises(ConfigError, match=r"orphan.json: extends 'gone/parent.json'.*parent.json"):
        Recipe.load(orphan)
    (tmp_path / "bad.json").write_text("{")
    broken = write(tmp_path / "c.json", {**BASE, "extends": "bad.json"})
    with pytest.raises(ConfigError, match="bad.json: not a JSON recipe"):
        Recipe.load(broken)


def test_parse_override_reads_json_else_a_string():
    assert parse_override("solver.max_steps=1000") == ("solver.max_steps", 1000)
    assert parse_override("loss.outlier_pixel_weight=128") == ("loss.outlier_pixel_weight", 128)
    assert parse_override("augment.crop=[256, 512]") == ("augment.crop", [256, 512])
    assert parse_override("name=v6f") == ("name", "v6f")
    assert parse_override("val=null") == ("val", None)
    assert parse_override("notes=a=b") == ("notes", "a=b")
    for bad in ("solver.max_steps", "=3", "loss..margin=1", ".x=1"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_override(bad)


def test_set_changes_a_nested_value_and_refuses_unknown_keys(tmp_path):
    path = write(tmp_path / "r.json", BASE)
    r = Recipe.load(path, [parse_override("loss.outlier_pixel_weight=64"), parse_override("solver.max_steps=5"),
                           parse_override("model.changes.preprocess.min_size_test=128")])
    assert r.loss.outlier_pixel_weight == 64 and r.loss.margin == 0.5
    assert r.solver.max_steps == 5 and r.solver.batch_size == 2
    assert r.model["changes"]["preprocess"] == {"min_size_test": 128, "max_size_test": 512}
    assert Recipe.load(path, {"val.every": 3, "val.root": "v"}).val == {"every": 3, "root": "v"}
    assert Recipe.load(path, {"export.dtype": "float16"}).export == {"dtype": "float16", "name": "final.safetensors"}
    for key, match in (("loss.outlier_weigth", r"unknown recipe keys: \['loss.outlier_weigth'\]"),
                       ("solvers.lr", r"unknown recipe keys: \['solvers'\]"),
                       ("name.x", "name is 'base', not a table")):
        with pytest.raises(ConfigError, match=match) as err:
            Recipe.load(path, [(key, 2)])
        assert str(err.value).startswith(f"{path} with --set {key}: ") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="loss must be a table"):
        Recipe.load(path, {"loss": 3})
    with pytest.raises(ConfigError, match="outlier_pixel_weight must be > 0"):
        Recipe.load(path, {"loss.outlier_pixel_weight": -1})


def test_overrides_apply_in_order_and_setting_init_weights_drops_init_from():
    spec = {"name": "x", "init_weights": "runs/a/final.safetensors", "init_from": "train/a.json", "loss": {"ce": 1}}
    out = apply_overrides(spec, [("loss", {"mask": 2}), ("loss.dice", 3), ("init_weights", "w.safetensors")])
    assert out["loss"] == {"mask": 2, "dice": 3} and out["init_from"] is None
    assert spec["loss"] == {"ce": 1}  # a copy
    kept = apply_overrides(spec, [("init_weights", "w.pt"), ("init_from", "train/b.json")])
    assert kept["init_from"] == "train/b.json"


def test_missing_init_weights_names_the_recipe_and_its_maker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    recipe = Recipe.load(LINEAGE[-1])
    with pytest.raises(ConfigError) as err:
        recipe.check_init_weights()
    message = str(err.value)
    assert message.startswith(f"{LINEAGE[-1]}: init_weights runs/demo_stage2_v5b/final.safetensors not found")
    assert "train/demo/08_stage2_v5b.json" in message and "--init" in message
    Recipe.load(LINEAGE[0]).check_init_weights()  # nothing to find
    orphan = Recipe.from_dict({"name": "o", "init_weights": "nowhere.pt"})
    with pytest.raises(ConfigError, match="recipe 'o': init_weights nowhere.pt not found; .* no init_from"):
        orphan.check_init_weights()


def _documented_runs():
    """Every ``m2a-pipe train run train/...`` line in the code blocks of train/README.md and
    weights/README.md."""
    found = []
    for doc in (TRAIN / "README.md", ROOT / "weights" / "README.md"):
        in_code = False
        for line in doc.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
            at = line.find("m2a-pipe train run train/")
            if in_code and at >= 0:
                found.append((doc.parent.name, shlex.split(line[at:].split("#")[0])))
    return found


DOCUMENTED = _documented_runs()


def test_the_docs_name_each_lineage_recipe_and_the_sweeps():
    recipes = {argv[3] for _, argv in DOCUMENTED}
    assert {_rel(p) for p in LINEAGE} <= recipes
    sets = [argv[i + 1] for _, argv in DOCUMENTED for i, a in enumerate(argv) if a == "--set"]
    assert "loss.outlier_pixel_weight=2" in sets and "name=v4b" in sets


@pytest.mark.parametrize("argv", [argv for _, argv in DOCUMENTED], ids=lambda a: " ".join(a[3:6]))
def test_every_documented_train_command_loads(argv):
    recipe_path = ROOT / argv[3]
    sets = [parse_override(argv[i + 1]) for i, a in enumerate(argv) if a == "--set"]
    recipe = Recipe.load(recipe_path, sets)
    if "--init" in argv:
        assert argv[argv.index("--init") + 1].startswith("runs/")
    if any(k == "name" for k, _ in sets):
        assert recipe.name not in {Recipe.load(p).name for p in LINEAGE}  # its own run folder
