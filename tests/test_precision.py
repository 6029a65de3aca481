"""``--precision`` where it enters: ProcessConfig, the model stage the runners build, process,
and the evaluation's run folders (a folder of one precision is not mixed with another's)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import assert_error_line, run_cli
from video_fixtures import make_video

from m2a_pipe.config import ConfigError
from m2a_pipe.evaluation import predict
from m2a_pipe.evaluation.inputs import EvaluationInputError
from m2a_pipe.inference.forward import cpu_has_native_bf16
from m2a_pipe.model.loading import load_model
from m2a_pipe.pipeline.config import ProcessConfig
from m2a_pipe.pipeline.model import make_stage


def test_process_config_checks_and_carries_the_precision():
    assert ProcessConfig().precision == "auto"
    with pytest.raises(ConfigError, match="precision: must be one of"):
        ProcessConfig(precision="fp64")
    model = load_model("demo")
    assert make_stage(model, ProcessConfig(precision="fp32"), "cpu").core.precision.name == "fp32"
    assert make_stage(model, ProcessConfig(precision="bf16"), "cpu").core.precision.name == "bf16"
    auto = make_stage(model, ProcessConfig(), "cpu").core.precision.name
    assert auto == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_process_in_bf16_and_fp32_and_fp16_refused_on_the_cpu(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", n=4, size=(128, 64))
    maps = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = run_cli("process", str(clip), "-o", str(out), "--device", "cpu", "--short-side", "64",
                         "--precision", precision, "--no-overlay", "-q")
        assert result.exit_code == 0, result.output
        with h5py.File(out / "clip.m2a" / "scores.h5") as f:
            assert json.loads(f.attrs["config"])["precision"] == precision
            maps[precision] = f["maps/anomaly"][:].astype(np.float32)
    assert maps["fp32"].shape == maps["bf16"].shape
    difference = np.abs(maps["fp32"] - maps["bf16"]).mean()  # maps stored as 0..255 levels
    assert 0 < difference < 0.02 * 255  # the same network in reduced precision: close, not equal
    refused = run_cli("process", str(clip), "-o", str(tmp_path / "fp16"), "--device", "cpu", "--precision", "fp16")
    assert_error_line(refused, "fp16 needs a CUDA device", exit_code=2)
    assert not (tmp_path / "fp16").exists()  # refused before OUT was created


def test_evaluation_run_folder_records_the_precision(tmp_path):
    settings = predict.run_settings("demo", True, "official", 1, "bf16")
    assert settings["precision"] == "bf16"
    predict.claim_run_folder(tmp_path, settings, writing=True)
    predict.claim_run_folder(tmp_path, settings, writing=False)  # the same run: reused
    with pytest.raises(EvaluationInputError, match="precision bf16"):
        predict.claim_run_folder(tmp_path, predict.run_settings("demo", True, "official", 1, "fp32"), writing=False)
    older = tmp_path / "older"  # a run.json from before the setting existed was float32
    older.mkdir()
    (older / predict.RUN_FILE).write_text(json.dumps({k: v for k, v in settings.items() if k != "precision"}))
    predict.claim_run_folder(older, predict.run_settings("demo", True, "official", 1, "fp32"), writing=False)
    with pytest.raises(EvaluationInputError, match="precision fp32"):
        predict.claim_run_folder(older, settings, writing=False)
