"""Shared fixtures: the golden reference folder and a model loaded from it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


ERROR_PREFIX = "m2a-pipe: error: "


@pytest.fixture(autouse=True)
def _user_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user cache ($M2A_CACHE): weights a test adds or fetches
    never reach the user's ~/.cache, and no test sees another's."""
    monkeypatch.setenv("M2A_CACHE", str(tmp_path_factory.mktemp("m2a-cache")))


def run_cli(*args, **kwargs):
    """``m2a-pipe ARGS`` through the real entry point (the root group, with its error handling),
    in-process; stdout and stderr together in ``result.output``."""
    from click.testing import CliRunner

    from m2a_pipe.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def assert_error_line(result, needle: str, exit_code: int = 1) -> str:
    """The command failed with ``exit_code`` and one ``m2a-pipe: error: ...`` line holding
    ``needle`` (a usage line before it is allowed for usage errors), no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(ERROR_PREFIX) and needle in lines[0], result.output
    return lines[0]


def golden_path() -> Path:
    """``$M2A_GOLDEN_DIR``, else ``../shared/golden/golden_a`` next to the repository."""
    env = os.environ.get("M2A_GOLDEN_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "golden" / "golden_a"
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def golden_dir() -> Path:
    """:func:`golden_path`, skipping the calling test when the folder is absent."""
    path = golden_path()
    if not (path / "outputs.npz").is_file():
        pytest.skip(f"golden folder not found at {path} (set M2A_GOLDEN_DIR)")
    return path


class Golden:
    """One golden folder: its outputs, config and (lazily) models built from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outputs = dict(np.load(path / "outputs.npz"))
        self.config_json = json.loads((path / "config.json").read_text())
        self._models: dict[str, torch.nn.Module] = {}

    @property
    def config(self):
        from m2a_pipe.config import ModelConfig

        return ModelConfig.from_reference_json(self.path / "config.json")

    def has(self, key: str) -> bool:
        return key in self.outputs

    def variants(self) -> list[str]:
        """Class-embed override variants present (``biased``, ``biased1``, ...)."""
        return sorted(p.name[: -len("_class_embed_override.pth")]
                      for p in self.path.glob("*_class_embed_override.pth"))

    def state_dict(self, variant: str | None = None) -> dict[str, torch.Tensor]:
        from m2a_pipe.model.checkpoint import read_state_dict

        sd = read_state_dict(self.path / "checkpoint.pth")
        if variant:
            override = torch.load(self.path / f"{variant}_class_embed_override.pth",
                                  map_location="cpu", weights_only=True)
            for key, value in override.items():
                assert key in sd, f"override key {key} does not name a checkpoint tensor"
                sd[key] = value
        return sd

    def model(self, variant: str | None = None):
        """The golden network (eval mode, unfolded batch norm), cached per variant, loaded
        by the project's strict loader (which also accepts FrozenBN checkpoints)."""
        key = variant or ""
        if key not in self._models:
            from m2a_pipe.model.checkpoint import load_into
            from m2a_pipe.model.mask2anomaly import build_model

            model = build_model(self.config)
            load_into(model, self.state_dict(variant), source=str(self.path / "checkpoint.pth"))
            self._models[key] = model.eval()
        return self._models[key]


@pytest.fixture(scope="session")
def golden() -> Golden:
    return Golden(golden_dir())


def assert_close(name: str, got, ref, *, abs_tol: float = 0.0, rel_scale: float = 0.0,
                 rel: float = 0.0, allowed_frac: float = 0.0, allowed_where=None) -> None:
    """``|got - ref| <= abs + rel_scale * max|ref| + rel * |ref|`` elementwise (the golden
    README's rule). Up to ``allowed_frac`` of the elements may fail; if ``allowed_where``
    (bool, same shape) is given, every failing element must also lie inside it."""
    got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
    tol = abs_tol + rel_scale * np.abs(ref).max() + rel * np.abs(ref)
    bad = np.abs(got - ref) > tol
    n_bad = int(bad.sum())
    worst = float(np.abs(got - ref).max()) if ref.size else 0.0
    assert n_bad <= allowed_frac * ref.size, (
        f"{name}: {n_bad} of {ref.size} elements out of tolerance (max |diff| {worst:.3g})")
    if n_bad and allowed_where is not None:
        outside = bad & ~np.asarray(allowed_where, dtype=bool)
        assert not outside.any(), f"{name}: {int(outside.sum())} differing pixels outside the allowed region"


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> str:
    """Random `small`-preset weights (seed 0) with ``anomaly_threshold`` 0.6 in their metadata:
    the right layout for the pipeline's tests, no training needed."""
    from m2a_pipe.config import preset
    from m2a_pipe.model.checkpoint import save_weights
    from m2a_pipe.model.mask2anomaly import build_model

    torch.manual_seed(0)
    model = build_model(preset("small"))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(model, model.config, path, metadata={"anomaly_threshold": 0.6})
    return str(path)


@pytest.fixture
def small_disk(tmp_path):
    """A real 160 KiB tmpfs (room for one or two small outputs, not four), unmounted
    afterwards (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(folder: Path) -> Path:
    """Fill the file system of ``folder`` to its last block with one file; returns it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler
