"""The weights registry: entries as data, resolution, sha256 verification, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import golden_dir

from m2a_pipe.config import ConfigError, ModelConfig, preset
from m2a_pipe.model import registry
from m2a_pipe.model.checkpoint import save_weights, sha256_file
from m2a_pipe.model.loading import load_model
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.model.registry import (
    REGISTRY,
    WeightsEntry,
    WeightsError,
    check_sha256,
    list_entries,
    register,
    resolve,
    resolve_config,
    verify,
    weights_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_registry():
    """Restore the registry after a test that registers entries."""
    saved = dict(REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.fixture
def small_weights(tmp_path):
    """A small model saved as m2a safetensors in a temporary weights folder."""
    torch.manual_seed(0)
    model = build_model(preset("small"))
    path = save_weights(model, model.config, tmp_path / "tiny.safetensors", {"purpose": "test"})
    return model, path


def test_demo_is_built_verified_and_carries_its_config_and_threshold():
    from m2a_pipe.model.checkpoint import read_metadata

    entry = REGISTRY["demo"]
    assert entry.built and entry.present and entry.file == "demo.safetensors" and entry.config == "small"
    assert sha256_file(resolve("demo")) == entry.sha256
    cfg, meta = read_metadata(resolve("demo"))
    assert 0 < meta["anomaly_threshold"] < 1
    model = load_model("demo")
    # the stored config (test size 384x768), not the preset's
    assert model.config == cfg and (cfg.preprocess.min_size_test, cfg.preprocess.max_size_test) == (384, 768)
    assert preset("small").preprocess.min_size_test != 384


def test_reserved_entries_are_not_built(clean_registry):
    registry.register(registry.WeightsEntry(name="future", file="future.safetensors", sha256=None,
                                            description="not trained yet", config="small"))
    with pytest.raises(WeightsError, match="future weights are not built yet"):
        resolve("future")
    with pytest.raises(WeightsError, match="not built yet"):
        load_model("future")


def test_weights_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.WEIGHTS_DIR_ENV, raising=False)
    assert weights_dir() == REPO_ROOT / "weights"
    assert REGISTRY["demo"].path == REPO_ROOT / "weights" / "demo.safetensors"
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(tmp_path))
    assert weights_dir() == tmp_path
    assert REGISTRY["demo"].path == tmp_path / "demo.safetensors"


def test_register_resolve_verify(clean_registry, small_weights, monkeypatch):
    model, path = small_weights
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(path.parent))
    digest = sha256_file(path)
    entry = register(WeightsEntry("tiny", "tiny.safetensors", digest.upper(), "a tiny model",
                                  config="small", metadata={"epochs": 0}))
    assert entry.sha256 == digest  # normalised to lower case
    assert resolve("tiny") == path
    assert verify("tiny") is True
    assert check_sha256("tiny").actual == digest
    assert [e.name for e in list_entries()] == sorted(REGISTRY)
    assert "tiny" in [e.name for e in list_entries()]

    loaded = load_model("tiny")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    with pytest.raises(WeightsError, match="already registered"):
        register(WeightsEntry("tiny", "other.safetensors", digest, "dup"))

    with open(path, "r+b") as f:  # flip one byte of tensor data at the end of the file
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    assert verify("tiny") is False


def test_verify_path_needs_a_sha256(small_weights):
    _, path = small_weights
    with pytest.raises(WeightsError, match="no sha256"):
        verify(path)
    assert verify(path, sha256_file(path)) is True
    assert verify(path, "0" * 64) is False


def test_resolve_errors(clean_registry, tmp_path):
    with pytest.raises(WeightsError, match=r"nosuch: unknown weights name; .*weights add FILE --name nosuch"):
        resolve("nosuch")
    with pytest.raises(WeightsError, match="not a file"):
        resolve(tmp_path)
    register(WeightsEntry("gone", str(tmp_path / "gone.safetensors"), "a" * 64, "absent file"))
    with pytest.raises(WeightsError, match="is missing"):
        resolve("gone")
    existing = tmp_path / "x.pth"
    existing.write_bytes(b"")
    assert resolve(existing) == existing and resolve(str(existing)) == existing


def test_entry_validation():
    with pytest.raises(WeightsError, match="64 hex digits"):
        WeightsEntry("bad", "bad.safetensors", "abc", "bad hash")
    with pytest.raises(WeightsError, match="unknown config preset"):
        WeightsEntry("bad", "bad.safetensors", None, "bad preset", config="r200")


def test_resolve_config_sources(tmp_path):
    assert resolve_config("small") == preset("small")
    cfg = preset("small").replace(thing_ids=(11, 12))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert resolve_config(path) == cfg
    names = tuple(f"k{i}" for i in range(19))
    assert resolve_config("small", class_names=names).class_names == names
    with pytest.raises(ConfigError, match="2 class names given, the config has 19"):
        resolve_config("small", class_names=("a", "b"))
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_config("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"backbone": {"depth": 50}, "colour": "red"}))
    with pytest.raises(ConfigError, match="colour"):
        resolve_config(bad)


def test_resolve_config_reference_json():
    ref = golden_dir() / "config.json"
    assert resolve_config(ref) == ModelConfig.from_reference_json(ref)
    stated = json.loads(ref.read_text())["architecture"]["transformer_decoder"]["num_queries"]
    assert resolve_config(ref).decoder.num_queries == stated


def _add_many(cache: str, prefix: str, count: int) -> None:
    """Run in a child process: register ``count`` user entries named ``prefix-i``."""
    import os

    from m2a_pipe.model.registry import WeightsEntry, add_user_entry, user_weights_dir

    os.environ["M2A_CACHE"] = cache
    user_weights_dir().mkdir(parents=True, exist_ok=True)
    for i in range(count):
        add_user_entry(WeightsEntry(name=f"{prefix}-{i}", file=f"{prefix}-{i}.safetensors", sha256="0" * 64,
                                   description="a test entry"))


def test_concurrent_adds_into_one_cache_lose_no_entry(tmp_path, monkeypatch):
    """Two processes adding weights into one shared cache at once (cluster jobs running
    `weights fetch`): every entry of both ends up in the index."""
    import multiprocessing

    from m2a_pipe.model.registry import user_entries

    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_add_many, args=(str(tmp_path), prefix, 40)) for prefix in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    monkeypatch.setenv("M2A_CACHE", str(tmp_path))
    assert set(user_entries()) == {f"{p}-{i}" for p in ("a", "b") for i in range(40)}
