"""Weights by name on real footage's path: `weights add`, `weights fetch` from a real local
HTTP server (http.server in a thread), `--weights NAME` in `process`, and the demo weights'
notice wherever they run."""

from __future__ import annotations

import hashlib
import http.server
import json
import sys
import threading
from functools import partial
from pathlib import Path

import h5py
import pytest
import torch
from conftest import assert_error_line, run_cli

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402

from m2a_pipe.config import preset  # noqa: E402
from m2a_pipe.model import registry  # noqa: E402
from m2a_pipe.model.checkpoint import load_weights  # noqa: E402
from m2a_pipe.model.mask2anomaly import build_model  # noqa: E402

DEMO_NOTE = registry.REGISTRY["demo"].note


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1 by http.server in a thread: (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fleet_pth(served):
    """An official-style checkpoint ({"model": state_dict}, preset small) on the server."""
    folder, url = served
    torch.manual_seed(3)
    path = folder / "fleet_v3.pth"
    torch.save({"model": build_model(preset("small")).state_dict(), "iteration": 7}, path)
    return path, f"{url}/fleet_v3.pth", hashlib.sha256(path.read_bytes()).hexdigest()


def cache_files() -> list[str]:
    root = registry.cache_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_fetch_with_the_right_checksum_registers_weights_that_process_uses(fleet_pth, tmp_path):
    path, url, digest = fleet_pth
    result = run_cli("weights", "fetch", url, "--sha256", digest, "--config", "small", "--name", "fleet-v3")
    assert result.exit_code == 0, result.output
    assert "added fleet-v3" in result.output and "verified" in result.output
    assert cache_files() == ["weights/fleet-v3.safetensors", "weights/registry.json"]
    entry = registry.lookup("fleet-v3")
    assert entry.present and entry.source == url and entry.metadata["source_sha256"] == digest
    assert json.loads((registry.user_weights_dir() / "registry.json").read_text())["fleet-v3"]["sha256"] == entry.sha256

    listing = run_cli("weights", "list")
    row = next(line for line in listing.output.splitlines() if line.startswith("fleet-v3 "))
    assert row.split()[1:3] == ["yes", entry.sha256[:12]]

    clip = vf.make_video(tmp_path / "drive.mp4", n=6, size=(96, 64), fps=10)
    run = run_cli("process", clip, "-o", tmp_path / "out", "--weights", "fleet-v3", "--short-side", "64", "-q")
    assert run.exit_code == 0, run.output
    assert "synthetic world" not in run.output  # the notice belongs to the demo weights only
    with h5py.File(tmp_path / "out" / "drive.m2a" / "scores.h5", "r") as f:
        assert f.attrs["weights"] == "fleet-v3" and f.attrs["weights_sha256"] == entry.sha256
        assert f.attrs["weights_note"] == ""

    path.unlink()  # a repeated fetch (every node of a cluster job) needs no download
    again = run_cli("weights", "fetch", url, "--sha256", digest, "--config", "small", "--name", "fleet-v3")
    assert again.exit_code == 0 and "already added from a file of this sha256" in again.output, again.output
    other = run_cli("weights", "fetch", url, "--sha256", "ab" * 32, "--config", "small", "--name", "fleet-v3")
    assert_error_line(other, "fleet-v3: already added from another file")
    assert registry.lookup("fleet-v3").sha256 == entry.sha256


def test_fetch_with_a_wrong_checksum_fails_in_one_line_and_leaves_nothing(fleet_pth, tmp_path):
    _, url, digest = fleet_pth
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    result = run_cli("weights", "fetch", url, "--sha256", wrong, "--config", "small", "--name", "fleet-v3")
    line = assert_error_line(result, f"{url}: sha256 mismatch: expected {wrong}, got {digest}")
    assert "nothing was registered" in line
    assert cache_files() == []
    assert registry.lookup("fleet-v3") is None
    clip = vf.make_video(tmp_path / "drive.mp4", n=2)
    assert_error_line(run_cli("process", clip, "-o", tmp_path / "out", "--weights", "fleet-v3"),
                      "fleet-v3: unknown weights name", exit_code=2)


def test_fetch_errors_are_one_line(fleet_pth, tmp_path):
    path, url, digest = fleet_pth
    missing = run_cli("weights", "fetch", url.replace("fleet_v3", "nope"), "--sha256", digest, "--name", "x",
                      "--config", "small")
    assert_error_line(missing, "the server answered HTTP 404")
    with socket_closed() as port:  # a port nobody listens on
        down = run_cli("weights", "fetch", f"http://127.0.0.1:{port}/fleet_v3.pth", "--sha256", digest,
                       "--name", "x", "--config", "small")
    assert_error_line(down, f"http://127.0.0.1:{port}/fleet_v3.pth: unreachable (")
    assert_error_line(run_cli("weights", "fetch", "ftp://host/x.pth", "--sha256", digest, "--name", "x"),
                      "unsupported URL scheme 'ftp'")
    assert_error_line(run_cli("weights", "fetch", url, "--sha256", "abc", "--name", "x"),
                      "--sha256 'abc': not a sha256")
    assert_error_line(run_cli("weights", "fetch", url, "--sha256", digest, "--name", "../x", "--config", "small"),
                      "--name '../x': use letters, digits", exit_code=2)
    assert cache_files() == []


def socket_closed():
    """A context giving a local TCP port that was just free (bound, then closed)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            number = s.getsockname()[1]
        yield number

    return port()


def test_fetch_a_file_url_and_add_a_local_file(fleet_pth, tmp_path):
    path, _, digest = fleet_pth
    result = run_cli("weights", "fetch", path.as_uri(), "--sha256", digest, "--config", "small", "--name", "local",
                     "-q")
    assert result.exit_code == 0, result.output
    added = run_cli("weights", "add", path, "--name", "copy", "--config", "small")
    assert added.exit_code == 0, added.output
    local, copy = registry.lookup("local"), registry.lookup("copy")
    assert local.source_file == copy.source_file == "fleet_v3.pth" and local.source == path.as_uri()
    tensors = [load_weights(entry.path)[0] for entry in (local, copy)]
    assert tensors[0].keys() == tensors[1].keys() and all(torch.equal(tensors[0][k], tensors[1][k])
                                                          for k in tensors[0])
    assert_error_line(run_cli("weights", "add", path, "--name", "bare"), "carries no config; give --config")
    assert_error_line(run_cli("weights", "add", path, "--name", "demo", "--config", "small"),
                      "demo: the name of the package's own weights")
    assert not (registry.user_weights_dir() / "bare.safetensors").exists()


def test_pth_without_config_says_how_to_add_it(fleet_pth, tmp_path):
    path, _, _ = fleet_pth
    result = run_cli("process", vf.make_video(tmp_path / "d.mp4", n=2), "-o", tmp_path / "out", "--weights", path)
    line = assert_error_line(result, f"m2a-pipe weights add {path} --name NAME --config PRESET|config.json")
    assert "cfg=" not in line


def test_process_with_the_demo_weights_prints_their_notice(tmp_path):
    clip = vf.make_video(tmp_path / "drive.mp4", n=4, size=(96, 64), fps=10)
    result = run_cli("process", clip, "-o", tmp_path / "out", "--short-side", "64", "-q")
    assert result.exit_code == 0, result.output
    notices = [line for line in result.output.splitlines() if "synthetic world only" in line]
    assert notices == [f"m2a-pipe: note: {DEMO_NOTE}"]
    assert "weights list" in DEMO_NOTE and "--weights NAME" in DEMO_NOTE
    with h5py.File(tmp_path / "out" / "drive.m2a" / "scores.h5", "r") as f:
        assert f.attrs["weights"] == "demo" and f.attrs["weights_note"] == DEMO_NOTE
    mined = run_cli("mine", tmp_path / "out", "-q")
    assert mined.exit_code == 0, mined.output
    assert "1 video mined" in mined.output
    page = (tmp_path / "out" / "report" / "report.html").read_text()
    assert "weights demo" in page and "<h2>Weights</h2>" in page and "synthetic world only" in page
    rerun = run_cli("process", clip, "-o", tmp_path / "out", "--short-side", "64", "-q")
    assert rerun.exit_code == 0 and "synthetic world" not in rerun.output  # nothing ran
    assert "skipped (already complete; --overwrite redoes it)" in rerun.output
