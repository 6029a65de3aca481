"""``m2a-pipe weights``: list, info, convert, verify — exit codes and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_error_line, golden_path, run_cli

from m2a_pipe.config import preset
from m2a_pipe.model.checkpoint import load_weights, read_state_dict, sha256_file
from m2a_pipe.model.mask2anomaly import build_model
from m2a_pipe.model.registry import REGISTRY, WeightsEntry, register


def run(*args: str):
    return run_cli("weights", *args)


def assert_one_line_error(result, needle: str, exit_code: int = 1) -> str:
    return assert_error_line(result, needle, exit_code)


@pytest.fixture
def small_pth(tmp_path):
    torch.manual_seed(0)
    model = build_model(preset("small"))
    path = tmp_path / "small_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 10}, path)
    return model, path


@pytest.fixture(scope="module")
def golden_converted(tmp_path_factory):
    folder = golden_path()
    if not (folder / "checkpoint.pth").is_file():
        pytest.skip(f"golden folder not found at {folder}")
    out = tmp_path_factory.mktemp("conv") / "golden.safetensors"
    result = run("convert", folder / "checkpoint.pth", "--config", folder / "config.json", "-o", out)
    return folder, out, result


def test_list_shows_demo_and_verify_checks_it():
    result = run("list")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.strip().splitlines()
    assert header.split() == ["NAME", "PRESENT", "SHA256", "DESCRIPTION"]
    demo = next(row for row in rows if row.startswith("demo "))
    assert demo.split()[1] == "yes" and REGISTRY["demo"].sha256[:12] in demo
    assert any(row.startswith("demo: ") and row.endswith("demo.safetensors") for row in rows)
    verify = run("verify", "demo")
    assert verify.exit_code == 0 and "ok" in verify.output.lower(), verify.output


def test_unknown_name_is_a_clear_error():
    assert_one_line_error(run("info", "no-such-weights"), "no-such-weights: unknown weights name; add a checkpoint",
                          exit_code=2)
    assert_one_line_error(run("verify", "no-such-weights", "--sha256", "0" * 64), "no-such-weights", exit_code=2)


def test_convert_small_pth_info_and_verify(small_pth, tmp_path):
    model, src = small_pth
    out = tmp_path / "out" / "small.safetensors"
    result = run("convert", src, "--config", "small", "-o", out,
                 "--class-names", ",".join(f"k{i}" for i in range(19)))
    assert result.exit_code == 0, result.output
    digest = sha256_file(out)
    assert f"sha256 {digest}" in result.output
    sd, cfg, meta = load_weights(out)
    assert cfg == preset("small").replace(class_names=tuple(f"k{i}" for i in range(19)))
    assert meta["source_file"] == "small_final.pth" and meta["source_sha256"] == sha256_file(src)
    for key, value in model.state_dict().items():
        assert torch.equal(sd[key], value), key

    info = run("info", out)
    assert info.exit_code == 0, info.output
    params = sum(p.numel() for p in model.parameters())
    assert f"parameters  {params:,}" in info.output
    assert "ResNet-18" in info.output and "20 queries" in info.output and "3 layers" in info.output
    assert "19: k0, k1" in info.output and "thing ids   [11, 12" in info.output
    assert digest in info.output and 'meta.source_file  "small_final.pth"' in info.output

    ok = run("verify", out, "--sha256", digest)
    assert ok.exit_code == 0 and ok.output.startswith("OK ")
    bad = run("verify", out, "--sha256", "f" * 64)
    assert bad.exit_code == 1
    assert_one_line_error(bad, "sha256 mismatch")


def test_verify_registered_name(small_pth, tmp_path):
    _, src = small_pth
    saved = dict(REGISTRY)
    try:
        register(WeightsEntry("small-test", str(src), sha256_file(src), "test entry", config="small"))
        assert run("verify", "small-test").exit_code == 0
        register(WeightsEntry("small-test", str(src), "0" * 64, "wrong hash", config="small"),
                 overwrite=True)
        assert_one_line_error(run("verify", "small-test"), "sha256 mismatch")
        info = run("info", "small-test")  # a .pth entry takes its preset config
        assert info.exit_code == 0 and "ResNet-18" in info.output, info.output
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)


def test_convert_with_wrong_config_names_keys_without_traceback(small_pth, tmp_path):
    _, src = small_pth
    out = tmp_path / "x.safetensors"
    cfg = preset("small").replace(decoder=preset("small").decoder.__class__(
        hidden_dim=64, num_queries=21, nheads=4, dim_feedforward=256, dec_layers=4))
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    result = run("convert", src, "--config", cfg_path, "-o", out)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.startswith("m2a-pipe: error: ") and result.exit_code == 1
    assert "mis-shaped: sem_seg_head.predictor.query_feat.weight expected [21, 64] got [20, 64]" in result.output
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (("--config", "nope"), "neither a preset"),
    (("--config", "small", "--class-names", "a,b"), "2 class names given"),
])
def test_convert_bad_options(small_pth, tmp_path, args, needle):
    _, src = small_pth
    # a bad --config or --class-names is a usage error: exit code 2
    assert_one_line_error(run("convert", src, *args, "-o", tmp_path / "x.safetensors"), needle, exit_code=2)


def test_convert_bad_source(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert_one_line_error(run("convert", junk, "--config", "small", "-o", tmp_path / "o.safetensors"),
                          "junk.pth")
    assert_one_line_error(run("convert", tmp_path / "absent.pkl", "--config", "small",
                              "-o", tmp_path / "o.safetensors"), "no such file")


def test_convert_golden(golden_converted):
    folder, out, result = golden_converted
    assert result.exit_code == 0, result.output
    assert f"sha256 {sha256_file(out)}" in result.output
    sd, cfg, meta = load_weights(out)
    ref = read_state_dict(folder / "checkpoint.pth")
    missing_in_file = set(sd) - set(ref)  # only a FrozenBN export's num_batches_tracked
    assert set(sd) >= set(ref) and all(k.endswith("num_batches_tracked") for k in missing_in_file)
    for key, value in ref.items():
        assert torch.equal(sd[key], value), key
    recorded = json.loads((folder / "config.json").read_text())["checkpoint"]["sha256"]
    assert meta["source_sha256"] == recorded


def test_info_and_verify_golden(golden_converted):
    folder, out, _ = golden_converted
    info = run("info", out)
    assert info.exit_code == 0, info.output
    cfg = load_weights(out)[1]
    params = sum(p.numel() for p in build_model(cfg).parameters())
    assert f"parameters  {params:,}" in info.output
    assert f"ResNet-{cfg.backbone.depth} " in info.output
    assert f"{cfg.decoder.num_queries} queries" in info.output

    recorded = json.loads((folder / "config.json").read_text())["checkpoint"]["sha256"]
    ok = run("verify", folder / "checkpoint.pth", "--sha256", recorded)
    assert ok.exit_code == 0, ok.output
    assert_one_line_error(run("verify", out, "--sha256", recorded), "sha256 mismatch")


def test_set_changes_test_size_and_metadata_not_tensors(small_pth, tmp_path):
    _, pth = small_pth
    src = tmp_path / "w.safetensors"
    assert run("convert", pth, "--config", "small", "-o", src).exit_code == 0
    out = tmp_path / "w2.safetensors"
    res = run("set", src, "-o", out, "--test-size", "256,512", "--threshold", "0.8",
              "--meta", 'eval={"auprc": 1.5}', "--meta", "status=v9")
    assert res.exit_code == 0, res.output
    sd0, _, _ = load_weights(src)
    sd1, cfg, meta = load_weights(out)
    assert (cfg.preprocess.min_size_test, cfg.preprocess.max_size_test) == (256, 512)
    assert meta["anomaly_threshold"] == 0.8 and meta["eval"] == {"auprc": 1.5} and meta["status"] == "v9"
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert res.output.split()[-1] == sha256_file(out)
    # in place, dropping an entry; the other entries stay
    assert run("set", out, "-o", out, "--drop-meta", "status").exit_code == 0
    _, _, meta = load_weights(out)
    assert "status" not in meta and meta["anomaly_threshold"] == 0.8


@pytest.mark.parametrize("args, needle", [
    (["--test-size", "512,256"], "SHORT <= LONG"),
    (["--drop-meta", "absent"], "no metadata entry 'absent'"),
    (["--meta", "novalue"], "KEY=VALUE"),
])
def test_set_bad_options(small_pth, tmp_path, args, needle):
    _, pth = small_pth
    src = tmp_path / "w.safetensors"
    assert run("convert", pth, "--config", "small", "-o", src).exit_code == 0
    res = run("set", src, "-o", tmp_path / "o.safetensors", *args)
    assert res.exit_code != 0 and needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.safetensors").exists()


def test_list_on_a_fresh_cache_names_the_official_checkpoints_and_how_to_add_them():
    """A fresh clone with an empty user cache: the official checkpoints are listed as not
    present, each with where to download it and the exact command that adds it; --weights
    with such a name says the same in one line."""
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, config in (("cityscapes-r50", "--config cityscapes-r50"), ("streethazards", "--config config.json")):
        row = next(line for line in lines if line.startswith(f"{name} "))
        assert row.split()[1:3] == ["no", "-"], row
        how = next(line for line in lines if line.startswith(f"{name}: "))
        assert "not present" in how and "github.com/shyam671/Mask2Anomaly" in how, how
        assert how.endswith(f"m2a-pipe weights add model_final.pth --name {name} {config}"), how
    line = assert_one_line_error(run("info", "cityscapes-r50"), "cityscapes-r50: these weights are not on this "
                                 "machine yet: download model_final.pth from https://github.com/", exit_code=2)
    assert line.endswith("then run: m2a-pipe weights add model_final.pth --name cityscapes-r50 --config cityscapes-r50")
