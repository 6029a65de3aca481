"""The Ray runner on a real local Ray cluster (``ray.init(num_cpus=2)``): two CPU inference
workers must give the local runner's outputs, also when a worker is killed mid-video."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402

from m2a_pipe.cli import cli  # noqa: E402
from m2a_pipe.inference.forward import precision_for  # noqa: E402
from m2a_pipe.pipeline.config import RayConfig  # noqa: E402
from m2a_pipe.pipeline.process import process  # noqa: E402

# One torch thread in both runners and the same batches: the maps are then bit-identical.
COMMON = dict(short_side=64, batch_size=2, threads=1, quiet=True)
TWO_WORKERS = RayConfig(workers=2, cpus_per_worker=1)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three drives of two vehicles in a CSV manifest, and the local runner's outputs of them."""
    root = tmp_path_factory.mktemp("fleet")
    vf.make_video(root / "v1" / "long.mp4", n=100, size=(96, 64), fps=10)
    vf.make_video(root / "v1" / "short.mp4", n=14, size=(96, 64), fps=10)
    vf.make_video(root / "v2" / "drive.mp4", n=24, size=(80, 48), fps=15)
    manifest = root / "fleet.csv"
    manifest.write_text("path,vehicle,drive_id\nv1/long.mp4,car-1,d1\nv1/short.mp4,car-1,d2\nv2/drive.mp4,car-2,d3\n")
    return manifest


@pytest.fixture(scope="module")
def local_out(fleet, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    summary = process(fleet, out, weights=weights, **COMMON)
    assert summary.exit_code == 0
    return out


def kill_worker_mid_video(out_dir: Path, after_batches: int, restart: bool, record: dict) -> threading.Thread:
    """A thread that kills worker 0 once it has run ``after_batches`` batches, noting
    whether ``out_dir`` (the long video's output) was still unfinished at that moment."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            names = sorted(n for n in ray.util.list_named_actors()
                           if n.startswith("m2a-pipe-worker-") and n[-1].isdigit())
            if names:
                actor = ray.get_actor(names[0])
                try:
                    stats = ray.get(actor.stats.remote(), timeout=5)
                except Exception:  # noqa: BLE001 - still loading its replica
                    stats = {"batches": 0}
                if stats["batches"] >= after_batches:
                    record["unfinished"] = not out_dir.exists()
                    ray.kill(actor, no_restart=not restart)
                    record["killed"] = names[0]
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_two_workers_give_the_local_outputs(cluster, fleet, local_out, weights, tmp_path):
    messages = []
    summary = process(fleet, tmp_path / "out", weights=weights, ray=TWO_WORKERS, log=messages.append, **COMMON)
    assert summary.exit_code == 0 and sorted(v.status for v in summary.videos) == ["complete"] * 3
    assert vf.assert_same_outputs(tmp_path / "out", local_out) == 3
    assert (tmp_path / "out" / "v1" / "long.m2a" / "overlay.mp4").stat().st_size > 0
    with h5py.File(tmp_path / "out" / "v2" / "drive.m2a" / "scores.h5", "r") as f:
        assert f.attrs["extra_vehicle"] == "car-2" and f.attrs["extra_drive_id"] == "d3"
        assert f.attrs["precision"] == precision_for("cpu", json.loads(f.attrs["config"])["precision"]).name
    line = next(m for m in messages if m.startswith("ray: 2 worker(s)"))
    assert "0 restarted, 0 lost" in line
    batches = [int(n) for n in line.rsplit(" ", 1)[1].split("/")]
    assert len(batches) == 2 and min(batches) > 0 and sum(batches) == sum(-(-n // 2) for n in (100, 14, 24))
    assert not (tmp_path / "out" / "failures.jsonl").exists()
    assert not list((tmp_path / "out").rglob(".*partial*"))


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "lost-for-good"])
def test_worker_killed_mid_video_gives_identical_outputs(cluster, fleet, local_out, weights, tmp_path, restart):
    out = tmp_path / "out"
    record: dict = {}
    # One long video alone on the pool: its batches are spread over both workers.
    watcher = kill_worker_mid_video(out / "v1" / "long.m2a", after_batches=4, restart=restart, record=record)
    messages = []
    summary = process(fleet.parent / "v1" / "long.mp4", out, weights=weights, ray=TWO_WORKERS,
                      log=messages.append, **COMMON)
    watcher.join(timeout=5)
    assert record.get("killed") and record["unfinished"], record
    assert summary.exit_code == 0, summary.table()
    ref = local_out / "v1" / "long.m2a" / "scores.h5"
    got = out / "long.m2a" / "scores.h5"
    a, b = vf.h5_datasets(got), vf.h5_datasets(ref)
    for name in b:
        assert a[name].tobytes() == b[name].tobytes(), name
    for name in ("tracks.csv", "events.jsonl"):
        assert (got.parent / name).read_bytes() == (ref.parent / name).read_bytes()
    expected = "1 restarted, 0 lost" if restart else "0 restarted, 1 lost"
    assert any(expected in m for m in messages), messages


def test_broken_video_lands_in_failures_and_the_others_go_on(cluster, fleet, weights, tmp_path):
    good = fleet.parent / "v1" / "short.mp4"
    broken = vf.make_garbage(tmp_path / "in" / "broken.mp4")
    cut = vf.make_truncated_ts(tmp_path / "in" / "cut.ts")
    runner = CliRunner()
    result = runner.invoke(cli, ["process", str(good), str(broken), str(cut), "-o", str(tmp_path / "out"),
                                 "-w", weights, "--short-side", "64", "-q", "--ray", "--workers", "2"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "broken.mp4" in result.output
    lines = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [Path(line["source"]).name for line in lines] == ["broken.mp4"]
    assert lines[0]["error"].startswith(str(broken)) and len(lines[0]["error"].splitlines()) == 1
    written = {p.parent.name: p.parent for p in (tmp_path / "out").rglob("summary.json")}
    assert sorted(written) == ["cut.m2a", "short.m2a"]
    with h5py.File(written["cut.m2a"] / "scores.h5", "r") as f:
        assert f.attrs["status"] == "partial"
    assert not list((tmp_path / "out").rglob(".*partial*"))


def test_ray_options_need_ray(tmp_path):
    result = CliRunner().invoke(cli, ["process", "x.mp4", "-o", str(tmp_path), "--workers", "2"])
    assert result.exit_code == 2 and "--workers needs --ray" in result.output


def test_a_pool_the_cluster_cannot_hold_is_one_error(cluster, fleet, weights, tmp_path):
    for extra, needle in ((["--gpus-per-worker", "1"], "GPUs; the cluster has 0"),
                          (["--workers", "3"], "3 worker(s) x 1 CPU")):
        result = CliRunner().invoke(cli, ["process", str(fleet.parent / "v1" / "short.mp4"), "-o",
                                          str(tmp_path / "out"), "-w", weights, "-q", "--ray", *extra])
        assert result.exit_code == 1 and needle in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not list((tmp_path / "out").rglob("summary.json"))


def test_killed_driver_then_rerun_skips_complete_and_redoes_the_rest(cluster, fleet, local_out, weights, tmp_path):
    """A driver process joins the cluster, is killed with SIGKILL once the short video is done
    and the long one is under way; the rerun skips the first, redoes the rest."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "m2a_pipe", "process", str(fleet), "-o", str(out), "-w", weights, "-q",
            "--short-side", "64", "--batch-size", "2", "--threads", "1",
            "--ray", "--address", cluster, "--workers", "1", "--jobs", "1"]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        first = out / "v1" / "long.m2a" / "summary.json"
        while time.monotonic() < deadline and driver.poll() is None:
            done = (out / "v1" / "short.m2a" / "summary.json").is_file() or first.is_file()
            if done and list(out.rglob(".*partial*")):
                break
            time.sleep(0.02)
        assert driver.poll() is None, driver.stdout.read().decode()
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    finished = {p.parent.relative_to(out).as_posix() for p in out.rglob("summary.json")}
    assert 1 <= len(finished) < 3
    summary = process(fleet, out, weights=weights, ray=TWO_WORKERS, **COMMON)
    status = {v.rel: v.status for v in summary.videos}
    assert {rel for rel, s in status.items() if s == "skipped"} == finished
    assert sorted(status.values()).count("complete") == 3 - len(finished) and summary.exit_code == 0
    assert vf.assert_same_outputs(out, local_out) == 3
    assert not list(out.rglob(".*partial*"))


def test_ctrl_c_keeps_finished_videos_and_leaves_no_temporary_folder(cluster, fleet, weights, tmp_path):
    # a short drive, then a long one (jobs run in manifest order, one at a time): Ctrl-C lands
    # while the long one runs, seconds before it could finish, whatever the machine's speed
    vf.make_video(tmp_path / "drives" / "long.mp4", n=400, size=(96, 64), fps=10)
    manifest = tmp_path / "drives" / "fleet.csv"
    manifest.write_text(f"path,vehicle\n{fleet.parent / 'v1' / 'short.mp4'},car-1\nlong.mp4,car-2\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "m2a_pipe", "process", str(manifest), "-o", str(out), "-w", weights, "-q",
            "--short-side", "64", "--threads", "1", "--ray", "--address", cluster, "--workers", "1", "--jobs", "1"]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, long_running = time.monotonic() + 300, False
        while time.monotonic() < deadline and driver.poll() is None and not long_running:
            finished = [p for p in out.rglob("summary.json") if not p.parent.name.startswith(".")]
            long_running = bool(finished and list(out.rglob(".long.m2a.partial*")))
            time.sleep(0.02)
        assert long_running and driver.poll() is None, \
            f"never saw the short video finished and the long one running (driver exit {driver.poll()})"
        driver.send_signal(signal.SIGINT)
        output = driver.communicate(timeout=60)[0].decode()
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    assert list(out.rglob("summary.json")) and not list(out.rglob(".*partial*"))
    assert not list(out.rglob("long/summary.json"))  # interrupted, not finished
