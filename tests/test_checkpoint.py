"""Checkpoint I/O: official key layout, strict loading, safe unpickling, safetensors."""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import golden_path

from m2a_pipe.config import ModelConfig, preset
from m2a_pipe.model.checkpoint import (
    FORMAT,
    CheckpointError,
    load_into,
    load_weights,
    read_state_dict,
    restricted_pickle_load,
    save_weights,
    sha256_file,
)
from m2a_pipe.model.loading import count_parameters, load_model
from m2a_pipe.model.mask2anomaly import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS_MANIFEST = golden_path().parent / "keys_r50_cityscapes.json"  # beside the golden folder




def _manifest() -> dict:
    if not KEYS_MANIFEST.is_file():
        pytest.skip(f"key manifest not found at {KEYS_MANIFEST}")
    return json.loads(KEYS_MANIFEST.read_text())


@pytest.fixture(scope="module")
def golden():
    """(folder, config, state dict read from checkpoint.pth)."""
    folder = golden_path()
    if not (folder / "checkpoint.pth").is_file() or not (folder / "config.json").is_file():
        pytest.skip(f"golden folder not found at {folder}")
    cfg = ModelConfig.from_reference_json(folder / "config.json")
    return folder, cfg, read_state_dict(folder / "checkpoint.pth")


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return build_model(preset("small"))


def _clone_sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def _frozen_bn_absent(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Keys of ``model`` the checkpoint lacks; only a FrozenBN export may lack any, and only
    its ``num_batches_tracked`` entries."""
    absent = tuple(k for k in model.state_dict() if k not in sd)
    assert all(k.startswith("backbone.") and k.endswith(".num_batches_tracked") for k in absent)
    return absent


def _restrict(a: dict[str, torch.Tensor], keys) -> dict[str, torch.Tensor]:
    return {k: a[k] for k in keys}


# -- the official layout ------------------------------------------------------------

def test_r50_preset_matches_official_manifest():
    manifest = _manifest()
    model = build_model(preset("cityscapes-r50"))
    sd = model.state_dict()
    expected = {(e["key"], tuple(e["shape"]), e["dtype"]) for e in manifest["state_dict"]}
    got = {(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}
    assert got - expected == set(), sorted(got - expected)[:10]
    assert expected - got == set(), sorted(expected - got)[:10]
    assert len(sd) == manifest["num_state_dict_entries"] == 665

    # The manifest's num_parameters counts nn.Parameter elements (entries of kind
    # "parameter"; BN running stats, num_batches_tracked and criterion.empty_weight are
    # buffers). num_elements_by_prefix counts every state-dict element, buffers included.
    params = {name for name, _ in model.named_parameters()}
    assert params == {e["key"] for e in manifest["state_dict"] if e["kind"] == "parameter"}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"] == 46_557_112
    for prefix, count in manifest["num_elements_by_prefix"].items():
        assert sum(v.numel() for k, v in sd.items() if k.startswith(prefix + ".")) == count, prefix


def test_count_parameters_matches_manifest():
    assert count_parameters(preset("cityscapes-r50")) == _manifest()["num_parameters"]


# -- strict loading -----------------------------------------------------------------

def test_missing_key_is_named(small_model):
    sd = _clone_sd(small_model)
    del sd["sem_seg_head.predictor.class_embed.weight"]
    with pytest.raises(CheckpointError, match=r"missing: sem_seg_head\.predictor\.class_embed\.weight") as info:
        load_into(small_model, sd, source="bad.pth")
    assert "bad.pth" in str(info.value)
    assert info.value.missing == ["sem_seg_head.predictor.class_embed.weight"]


def test_renamed_key_is_missing_and_unexpected(small_model):
    sd = _clone_sd(small_model)
    sd["backbone.stem.conv1.norm.weight_renamed"] = sd.pop("backbone.stem.conv1.norm.weight")
    with pytest.raises(CheckpointError) as info:
        load_into(small_model, sd, source="renamed.pkl")
    msg = str(info.value)
    assert "missing: backbone.stem.conv1.norm.weight\n" in msg + "\n"
    assert "unexpected: backbone.stem.conv1.norm.weight_renamed" in msg
    assert "renamed.pkl" in msg


def test_misshaped_key_is_named_with_both_shapes(small_model):
    sd = _clone_sd(small_model)
    key = "sem_seg_head.predictor.query_feat.weight"
    expected = list(sd[key].shape)
    sd[key] = torch.zeros(expected[0] + 1, expected[1])
    with pytest.raises(CheckpointError) as info:
        load_into(small_model, sd, source="shape.pth")
    assert f"mis-shaped: {key} expected {expected} got {[expected[0] + 1, expected[1]]}" in str(info.value)


def test_all_three_problems_are_listed_together(small_model):
    sd = _clone_sd(small_model)
    del sd["criterion.empty_weight"]
    sd["extra.key"] = torch.zeros(1)
    sd["sem_seg_head.predictor.decoder_norm.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        load_into(small_model, sd)
    msg = str(info.value)
    for needle in ("missing: criterion.empty_weight", "unexpected: extra.key",
                   "mis-shaped: sem_seg_head.predictor.decoder_norm.weight"):
        assert needle in msg
    assert "1 missing, 1 unexpected, 1 mis-shaped" in msg


def test_frozen_bn_without_num_batches_tracked_loads(small_model):
    source = build_model(preset("small"))
    sd = _clone_sd(source)
    dropped = [k for k in sd if k.startswith("backbone.") and k.endswith("norm.num_batches_tracked")]
    assert len(dropped) > 10
    for key in dropped:
        del sd[key]
    report = load_into(small_model, sd, source="frozen_bn.pkl")
    assert sorted(report.filled) == sorted(dropped)
    loaded = small_model.state_dict()
    for key, value in sd.items():
        assert torch.equal(loaded[key], value), key
    assert loaded[dropped[0]].dtype == torch.int64 and loaded[dropped[0]].shape == ()


def test_only_backbone_num_batches_tracked_is_optional():
    model = torch.nn.Module()
    model.head = torch.nn.Module()
    model.head.norm = torch.nn.BatchNorm2d(4)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    with pytest.raises(CheckpointError, match="missing: head.norm.num_batches_tracked"):
        load_into(model, sd)


def test_dtypes_are_cast_to_the_models(small_model):
    sd = {k: (v.double() if v.is_floating_point() else v.int()) for k, v in _clone_sd(small_model).items()}
    report = load_into(small_model, sd)
    assert report.cast
    for key, value in small_model.state_dict().items():
        assert value.dtype in (torch.float32, torch.int64), key


# -- reading files ------------------------------------------------------------------

def test_pth_wrapper_extras_are_ignored(tmp_path, small_model):
    sd = _clone_sd(small_model)
    path = tmp_path / "train.pth"
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"last_epoch": 3}, "iteration": 90000}, path)
    _assert_same_tensors(read_state_dict(path), sd)
    bare = tmp_path / "bare.pt"
    torch.save(sd, bare)
    _assert_same_tensors(read_state_dict(bare), sd)


def test_pth_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": Payload()}}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_state_dict(path)
    assert not marker.exists()


class _SystemPayload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pkl_with_code_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    payload = {"model": {"w": np.zeros(3, np.float32), "x": _SystemPayload(f"touch {marker}")},
               "__author__": "x"}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert "os.system" in msg or "posix.system" in msg
    assert "evil.pkl" in msg
    assert not marker.exists()


def test_the_payload_is_real(tmp_path):
    """Control: the same bytes through plain pickle do run the command."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps({"x": _SystemPayload(f"touch {marker}")}))
    assert marker.exists()


def test_pkl_refuses_other_globals():
    with pytest.raises(CheckpointError, match=r"builtins\.eval"):
        restricted_pickle_load(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(CheckpointError, match=r"torch\._utils\._rebuild_tensor_v2"):
        restricted_pickle_load(pickle.dumps({"t": torch.zeros(2)}, protocol=2))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pkl_numpy_state_dict_round_trips(tmp_path, small_model, protocol):
    sd = _clone_sd(small_model)
    arrays = collections.OrderedDict((k, v.numpy()) for k, v in sd.items())
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "x", "matching_heuristics": True},
                                  protocol=protocol))
    got = read_state_dict(path)
    _assert_same_tensors(got, sd)
    assert got["backbone.stem.conv1.norm.num_batches_tracked"].dtype == torch.int64
    assert load_into(small_model, got).filled == ()


def test_unknown_suffix_and_missing_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"unknown weights format '\.bin'"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "absent.pth")


def test_sha256_file_streams(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"m2a" * 700_000)  # > 1 chunk
    import hashlib
    assert sha256_file(path) == hashlib.sha256(b"m2a" * 700_000).hexdigest()


# -- the project's safetensors --------------------------------------------------------

def test_safetensors_round_trip_small(tmp_path, small_model):
    cfg = preset("small").replace(class_names=tuple(f"c{i}" for i in range(19)))
    path = save_weights(small_model, cfg, tmp_path / "sub" / "w.safetensors",
                        {"note": {"epochs": 3}, "trained_on": "synthetic"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]  # no temp left
    sd, got_cfg, meta = load_weights(path)
    _assert_same_tensors(sd, small_model.state_dict())
    assert got_cfg == cfg
    assert meta == {"note": {"epochs": 3}, "trained_on": "synthetic"}

    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["m2a_format"] == FORMAT == "m2a-pipe/1"
    assert json.loads(header["m2a_config"]) == cfg.to_dict()

    model = load_model(path)
    assert model.config == cfg and not model.training
    _assert_same_tensors(model.state_dict(), small_model.state_dict())
    with pytest.raises(CheckpointError, match="differs"):
        load_model(path, cfg=preset("small"))


def test_save_weights_is_atomic(tmp_path, small_model, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_weights(small_model, small_model.config, path)
    before = sha256_file(path)

    import safetensors.torch

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_weights(small_model, small_model.config, path)
    assert sha256_file(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_save_weights_rejects_reserved_metadata(tmp_path, small_model):
    with pytest.raises(CheckpointError, match="reserved"):
        save_weights(small_model, None, tmp_path / "w.safetensors", {"m2a_config": "x"})
    assert not (tmp_path / "w.safetensors").exists()


def test_foreign_safetensors_is_not_m2a_weights(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "foreign.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    assert set(read_state_dict(path)) == {"a"}
    with pytest.raises(CheckpointError, match="not an m2a-pipe weights file"):
        load_weights(path)


def test_load_model_of_pth_needs_config(tmp_path, small_model):
    path = tmp_path / "m.pth"
    torch.save({"model": small_model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="carries no config.*m2a-pipe weights add .* --name NAME --config PRESET"):
        load_model(path)
    model = load_model(path, cfg=preset("small"))
    _assert_same_tensors(model.state_dict(), small_model.state_dict())


# -- the golden official checkpoint -----------------------------------------------------

def test_golden_sha256_matches_config(golden):
    folder, _, _ = golden
    recorded = json.loads((folder / "config.json").read_text())["checkpoint"]["sha256"]
    assert sha256_file(folder / "checkpoint.pth") == recorded


def test_golden_checkpoint_loads_strictly(golden):
    folder, cfg, sd = golden
    model = build_model(cfg)
    absent = _frozen_bn_absent(model, sd)
    report = load_into(model, sd, source=str(folder / "checkpoint.pth"))
    assert report.filled == absent and report.cast == ()
    _assert_same_tensors(_restrict(model.state_dict(), sd), sd)


def test_golden_as_detectron2_pkl(golden, tmp_path):
    _, cfg, sd = golden
    path = tmp_path / "golden.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "x",
                     "matching_heuristics": True}, f)
    got = read_state_dict(path)
    model = build_model(cfg)
    absent = _frozen_bn_absent(model, sd)
    report = load_into(model, got, source=str(path))  # raises on any missing/unexpected key
    assert report.filled == absent
    _assert_same_tensors(got, sd)
    _assert_same_tensors(_restrict(model.state_dict(), sd), sd)


def test_golden_safetensors_round_trip(golden, tmp_path):
    folder, cfg, sd = golden
    model = build_model(cfg)
    load_into(model, sd)
    path = save_weights(model, cfg, tmp_path / "golden.safetensors",
                        {"source_sha256": sha256_file(folder / "checkpoint.pth")})
    got_sd, got_cfg, meta = load_weights(path)
    _assert_same_tensors(_restrict(got_sd, sd), sd)
    assert got_cfg == cfg
    assert meta["source_sha256"] == json.loads((folder / "config.json").read_text())["checkpoint"]["sha256"]
    assert math.prod(got_sd["criterion.empty_weight"].shape) == cfg.num_classes + 1


def test_float16_storage_halves_the_file_and_loads_back(small_model, tmp_path):
    full = save_weights(small_model, None, tmp_path / "full.safetensors")
    half = save_weights(small_model, None, tmp_path / "half.safetensors", float_dtype=torch.float16)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    sd, cfg, _ = load_weights(half)
    assert sd["backbone.stem.conv1.weight"].dtype == torch.float16
    assert sd["backbone.stem.conv1.norm.num_batches_tracked"].dtype == torch.int64
    model = load_model(half)
    for key, value in small_model.state_dict().items():
        got = model.state_dict()[key]
        assert got.dtype == value.dtype, key
        if value.is_floating_point():
            torch.testing.assert_close(got, value, atol=2e-3, rtol=1e-3)
