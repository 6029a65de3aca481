"""Smoke tests of the scripts in benchmarks/: each runs as ``python benchmarks/SCRIPT.py`` (a
subprocess, as a user runs it) on tiny inputs, and the figures it prints are checked: the
expected lines or keys are there, the numbers are finite and in range, the command line that
reproduces them is printed beside them, and the tracking oracle (the ground truth as the
model's maps) tracks a synthetic clip almost perfectly.

ray_scaling.py spends most of its time waiting (Ray's start, two pool starts), so it starts in
the background when this module starts (when its test is selected) and the other tests run
meanwhile; its test, the last, reads what it printed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from m2a_pipe.io.layout import output_name

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
NUMBER = r"(nan|-?\d+(?:\.\d+)?)"

# The tracking clip: seed 15, 2 s at 10 fps, 192x96 (20 frames, two anomalies, 40 visible boxes).
CLIP_ARGS = ["--seeds", "15", "--seconds", "2", "--fps", "10", "--size", "192x96"]
CLIP_NAME = "clip15_2s_10fps_192x96.mp4"


class Script:
    """``python benchmarks/NAME ARGS`` started in the background from the repository root."""

    def __init__(self, name: str, *args: str) -> None:
        self.cmd = [sys.executable, str(BENCHMARKS / name), *args]
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def output(self, timeout: float = 120) -> str:
        """Its stdout, once it has exited (it must succeed)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        self.stderr = err  # for a failing assertion on the output to show what the script said
        assert self.proc.returncode == 0, f"{shlex.join(self.cmd)} failed ({self.proc.returncode}):\n{out}\n{err}"
        return out


def run_script(name: str, *args: str, timeout: float = 120) -> str:
    """stdout of ``python benchmarks/NAME ARGS`` run from the repository root (it must succeed)."""
    return Script(name, *args).output(timeout)


def assert_command(line: str, name: str, args: list[str]) -> None:
    """``line`` is the command that reproduces the run: python, the script, its arguments."""
    words = shlex.split(line)
    assert words[0] == "python" and Path(words[1]).name == name and words[2:] == list(args), line


def numbers(line: str, pattern: str) -> list[float]:
    """The groups of ``pattern`` in ``line`` as floats (thousands separators dropped)."""
    match = re.search(pattern, line)
    assert match, f"{pattern!r} not in {line!r}"
    return [float(g.replace(",", "")) for g in match.groups()]


RAY_TIMEOUT_S = 240


@pytest.fixture(scope="module", autouse=True)
def ray_scaling_run(request, tmp_path_factory):
    """ray_scaling.py on a fresh 8-frame clip: one local run, Ray (2 CPUs) with one worker;
    started in the background at the module's start when test_ray_scaling is selected."""
    if not any(item.name == "test_ray_scaling" for item in request.session.items):
        yield None
        return
    from m2a_pipe.synth.video import write_video

    clip = tmp_path_factory.mktemp("ray-scaling") / "clip.mp4"
    write_video(clip, seed=15, seconds=0.8, fps=10, size=(128, 64))
    args = [str(clip), "--workers", "1", "--local-threads", "1", "--cpus", "2", "--short-side", "64"]
    script = Script("ray_scaling.py", *args)
    yield args, script
    if script.proc.poll() is None:  # its test did not run to the end: let it finish (Ray shuts down)
        try:
            script.proc.communicate(timeout=RAY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            script.proc.kill()
            script.proc.communicate()


SCRIPTS = ["eval_memory.py", "fuzz_inputs.py", "gpu_check.py", "mine_scale.py", "overlay_encoding.py", "ray_scaling.py",
           "tracking_quality.py"]


def test_every_script_is_tested():
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, monkeypatch, capsys):
    """``--help`` of each script, in this process (its main, imported from its path)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name[:-3]}", BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / name), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}") and "--help" in out
    assert module.__doc__.splitlines()[0] in " ".join(out.split())


def test_eval_memory():
    args = ["--n", "8", "--size", "512x256"]
    lines = run_script("eval_memory.py", *args).splitlines()
    assert lines[0].startswith("command: ")
    assert_command(lines[0].removeprefix("command: "), "eval_memory.py", args)
    n, valid = numbers(lines[2], r"^(\d+) images 256x512, ([\d,]+) valid pixels, AP convention exact")
    assert n == 8 and 0 < valid < 8 * 256 * 512
    metrics_line = next(line for line in lines if line.startswith("AuPRC"))
    names = re.findall(r"([A-Za-z0-9]+\*?) " + NUMBER, metrics_line)
    metrics = {k: float(v) for k, v in names}
    assert list(metrics) == ["AuPRC", "FPR95", "AUROC", "sIoU", "PPV", "F1*"], metrics_line
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in metrics.values()), metrics_line
    # anomalies score near 1, normal pixels near 0: a clean separation
    assert metrics["AUROC"] > 99 and metrics["AuPRC"] > 90 and metrics["FPR95"] < 1, metrics_line
    assert metrics["sIoU"] > 0 and metrics["PPV"] > 0, metrics_line
    timing = next(line for line in lines if line.startswith("pixel pass"))
    assert all(v >= 0 for v in numbers(timing, rf"pixel pass {NUMBER} s, component pass {NUMBER} s, total {NUMBER} s"))
    peak = numbers(lines[-1], rf"^peak RSS {NUMBER} MiB$")[0]
    assert 10 < peak < 4096


def test_fuzz_inputs(weights, tmp_path):
    from m2a_pipe.synth.video import write_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, seed=4, seconds=0.5, fps=10, size=(64, 64))
    args = [str(clip), "--files", "3", "--good", "1", "--batch", "10", "--weights", weights, "--timeout", "60"]
    script = Script("fuzz_inputs.py", *args)
    lines = script.output(timeout=300).splitlines()
    assert_command(lines[0].removeprefix("command: "), "fuzz_inputs.py", args)
    assert lines[1] == "files: 1 flip, 1 good, 1 truncate, 1 zero-head"
    crashes, hangs, good, n_good, failed, listed, partial, complete, missing, n, _ = numbers(
        lines[2], r"^crashes (\d+), hangs (\d+), good clips complete (\d+)/(\d+), damaged: (\d+) failed "
                  r"\((\d+) listed in failures.jsonl\), (\d+) partial, (\d+) complete, (\d+) missing; "
                  rf"(\d+) files in {NUMBER} s$")
    assert (crashes, hangs, good, n_good, missing, n) == (0, 0, 1, 1, 0, 4), script.stderr[-4000:]
    assert failed == listed and failed + partial + complete == 3


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    """The GPU script's dry run (a few seconds, so it runs by default: the script must be
    ready the day a GPU is lent): golden parity in fp32 and bf16, R50 timings, the pipeline."""
    from conftest import golden_dir

    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--quick", "--golden", str(golden_dir()), "--json", str(out)]
    lines = run_script("gpu_check.py", *args, timeout=1200).splitlines()
    assert_command(lines[0], "gpu_check.py", args)
    assert lines[1].startswith("parity fp32: ok") and lines[2].startswith("parity bf16: ok"), lines[1:3]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["machine"]["torch"]
    assert [p["precision"] for p in report["parity"]] == ["fp32", "bf16"] and all(p["passed"] for p in report["parity"])
    fp32, bf16 = (p["errors"] for p in report["parity"])
    assert fp32["pred_logits"] < 1e-4 and fp32["pred_masks"] < bf16["pred_masks"]  # bf16 really ran
    assert [(r["height"], r["width"], r["batch"]) for r in report["model"]] == [(64, 128, 1), (64, 128, 2)]
    assert all(r["precision"] == "bf16" and r["frames_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in report["model"])
    pipe = report["pipeline"]
    assert pipe["precision"] == "bf16" and pipe["frames"] == 5 and pipe["input_size"] == [64, 128]
    assert pipe["end_to_end_fps"] > 0 and pipe["efficiency"] > 0 and pipe["batch_size"] == 2
    assert lines[-1].startswith("done in ") and lines[-1].endswith("parity ok")


def test_fuzz_inputs_refuses_weights_it_cannot_load(tmp_path):
    """A run that could not start would count as a crash of the pipeline: refused up front."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "fuzz_inputs.py"), "--weights", str(tmp_path / "no.pt")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no such weights file" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""  # nothing damaged, nothing run

def test_overlay_encoding(tmp_path):
    from m2a_pipe.synth.video import write_video

    clip = tmp_path / "clip.mp4"
    write_video(clip, seed=15, seconds=0.6, fps=10, size=(128, 64))
    args = [str(clip), "--presets", "ultrafast,veryfast", "--size", "96x48", "--frames", "4", "--rounds", "2"]
    lines = run_script("overlay_encoding.py", *args).splitlines()
    assert_command(lines[0].removeprefix("command: "), "overlay_encoding.py", args)
    assert lines[1] == "4 frames 96x48 from clip.mp4, crf 23, 1 encoder thread, 2 rounds"
    assert lines[2].split() == ["preset", "CPU", "ms/frame", "(min-max)", "size", "kB", "PSNR", "dB"]
    rows = {line.split()[0]: numbers(line, rf"^\w+ +{NUMBER} \({NUMBER}-{NUMBER}\) +{NUMBER} +{NUMBER}$")
            for line in lines[3:]}
    assert sorted(rows) == ["ultrafast", "veryfast"]
    for median, low, high, size_kb, psnr_db in rows.values():
        assert 0 < low <= median <= high and size_kb > 0 and 20 < psnr_db < 99


def test_mine_scale():
    # 210 folders: one in 100 partial (42, 142), one in 200 temporary (199)
    args = ["--videos", "210", "--events", "2", "--top", "5"]
    lines = run_script("mine_scale.py", *args).splitlines()
    assert lines[0].startswith("command: ")
    assert_command(lines[0].removeprefix("command: "), "mine_scale.py", args)
    made = numbers(lines[1], r"^210 folders \((\d+) complete, (\d+) partial, (\d+) temporary; (\d+) events\), "
                             rf"generated in {NUMBER} s$")
    assert made[:4] == [207, 2, 1, 418] and made[4] >= 0
    wall, per_folder, peak, baseline, grown = numbers(
        lines[2], rf"mine: {NUMBER} s wall \({NUMBER} ms a folder\), peak RSS {NUMBER} MiB "
                  rf"\(after imports {NUMBER} MiB, \+{NUMBER} MiB mining\)")
    assert 0 < wall < 60 and per_folder == pytest.approx(1000 * wall / 210, rel=0.05, abs=0.05)
    assert 10 < baseline <= peak < 2048 and grown == pytest.approx(peak - baseline, abs=0.11)
    mined = numbers(lines[3], r"mined (\d+) videos, skipped (\d+), ranked (\d+) events, top (\d+); report files: ")
    assert mined == [207, 3, 414, 5]
    assert "events.csv" in lines[3] and "report.html" in lines[3]


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory) -> tuple[dict, Path]:
    """tracking_quality.py --oracle with no clips: it makes the synthetic clip under OUT/clips."""
    out = tmp_path_factory.mktemp("track-oracle")
    args = ["--oracle", *CLIP_ARGS, "--out", str(out), "--json", str(out / "report.json")]
    text = run_script("tracking_quality.py", *args)
    report = json.loads(text)
    assert report == json.loads((out / "report.json").read_text())
    assert_command(report["command"], "tracking_quality.py", args)
    return report, out


def check_tracking_report(report: dict) -> None:
    """Keys, finite numbers and ranges of a tracking_quality.py report on the one test clip."""
    pooled, (clip,) = report["pooled"], report["clips"]
    assert Path(clip["clip"]).name == CLIP_NAME
    assert clip["frames"] == 20 and clip["minutes"] == pytest.approx(2 / 60) and clip["gt_tracks"] == 2
    assert pooled["clips"] == 1 and pooled["minutes"] == pytest.approx(2 / 60, abs=1e-3)
    for key in ("mot_all", "mot_visible"):
        mot = pooled[key]
        assert set(mot) == {"mota", "idf1_weighted", "num_objects", "num_misses", "num_false_positives",
                            "num_switches"}
        assert all(math.isfinite(v) for v in mot.values()), mot
        assert mot["mota"] <= 1 and 0 <= mot["idf1_weighted"] <= 1
        assert 0 <= mot["num_misses"] <= mot["num_objects"] and mot["num_false_positives"] >= 0
        assert mot["mota"] == pytest.approx(1 - (mot["num_misses"] + mot["num_false_positives"]
                                                 + mot["num_switches"]) / mot["num_objects"], abs=1e-4)
        assert set(clip[key]) >= {"mota", "idf1", "num_objects", "num_misses", "num_false_positives"}
    assert 0 < pooled["mot_visible"]["num_objects"] <= pooled["mot_all"]["num_objects"] == 40
    for name in ("tracked_events", "frame_run_events", "single_frames"):
        alarms = pooled[name]
        assert 0 <= alarms["false"] <= alarms["alarms"], alarms
        assert alarms["false_per_minute"] == pytest.approx(alarms["false"] / clip["minutes"], abs=0.01)
        assert clip["alarms"][name] == {"total": alarms["alarms"], "false": alarms["false"]}
    events = pooled["events"]
    assert set(events) == set(clip["events"]) == {"gt_anomalies", "found", "true_events", "false_events",
                                                  "ignored_events", "false_per_minute"}
    assert 0 <= events["found"] <= events["gt_anomalies"] <= clip["gt_tracks"]
    assert events["true_events"] + events["false_events"] + events["ignored_events"] \
        == pooled["tracked_events"]["alarms"]
    assert events["false_per_minute"] == pytest.approx(events["false_events"] / clip["minutes"], abs=0.01)
    instances = pooled["instances"]
    assert instances == clip["instances"] and set(instances) == {"gt_boxes", "matched", "recall"}
    assert instances["gt_boxes"] == pooled["mot_visible"]["num_objects"]  # the same visible boxes
    assert 0 <= instances["matched"] <= instances["gt_boxes"]
    assert instances["recall"] == pytest.approx(instances["matched"] / instances["gt_boxes"], abs=1e-4)
    # the tracks' boxes are instances' boxes: no tracker beats what its instances allow
    assert pooled["mot_visible"]["mota"] <= instances["recall"] + 1e-4


def test_tracking_quality_oracle(oracle_run):
    report, out = oracle_run
    check_tracking_report(report)
    assert (out / "clips" / CLIP_NAME).is_file()
    assert (out / output_name(Path(CLIP_NAME).stem, video=True) / "tracks.csv").is_file()
    pooled = report["pooled"]
    visible = pooled["mot_visible"]
    # a perfect detector: every visible box found, with one identity per anomaly
    assert visible["num_objects"] >= 30
    assert visible["mota"] >= 0.9 and visible["idf1_weighted"] >= 0.9, visible
    assert visible["num_switches"] == 0
    # each anomaly raises an event, and none is false
    assert pooled["tracked_events"]["alarms"] >= 1 and pooled["tracked_events"]["false"] == 0
    assert pooled["events"]["found"] == pooled["events"]["gt_anomalies"] >= 1


def test_tracking_quality_model(oracle_run, tmp_path):
    """The real model path (demo weights, a 64-pixel input to keep it quick) on the oracle's clip,
    with two other process settings given by --set (they reach the run's recorded config); a
    setting that is not one is refused."""
    _, oracle_out = oracle_run
    clip = oracle_out / "clips" / CLIP_NAME
    args = [str(clip), "--weights", "demo", "--device", "cpu", "--short-side", "64", "--out", str(tmp_path),
            "--set", "min_hits=4", "--set", "event_min_duration_s=0.8"]
    report = json.loads(run_script("tracking_quality.py", *args))
    assert_command(report["command"], "tracking_quality.py", args)
    check_tracking_report(report)
    folder = tmp_path / output_name(clip.stem, video=True)
    with h5py.File(folder / "scores.h5", "r") as f:
        run = json.loads(f.attrs["config"])
    assert (run["min_hits"], run["event_min_duration_s"], run["short_side"]) == (4, 0.8, 64)
    with open(folder / "summary.json") as f:
        assert json.load(f)["status"] == "complete"
    # --replay: the maps this run stored, through the stage after the model again (min_hits as given)
    replayed = tmp_path / "replayed"
    args = [str(clip), "--weights", "demo", "--short-side", "64", "--replay", str(tmp_path), "--out", str(replayed),
            "--set", "min_hits=4", "--set", "event_min_duration_s=0.8"]
    again = json.loads(run_script("tracking_quality.py", *args))
    check_tracking_report(again)
    with h5py.File(replayed / output_name(clip.stem, video=True) / "scores.h5", "r") as f, \
            h5py.File(folder / "scores.h5", "r") as g:
        assert f.attrs["weights"].startswith("replay of ") and f.attrs["threshold"] == g.attrs["threshold"]
        np.testing.assert_allclose(f["maps/anomaly"][:], g["maps/anomaly"][:])  # the same maps, stored again
    assert again["pooled"]["mot_all"]["num_objects"] == report["pooled"]["mot_all"]["num_objects"]
    for bad, why in ((["--replay", str(tmp_path / "nothing")], "no " + str(tmp_path / "nothing")),
                     (["--replay", str(tmp_path), "--oracle"], "not allowed with argument")):
        done = subprocess.run([sys.executable, str(BENCHMARKS / "tracking_quality.py"), str(clip), "--short-side", "64",
                               "--out", str(tmp_path / "x"), *bad], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode != 0 and why in done.stderr and "Traceback" not in done.stderr, done.stderr
    for bad, why in (("min_hitz=4", "unknown setting(s) min_hitz"), ("min_hits=0", "min_hits: must be >= 1")):
        done = subprocess.run([sys.executable, str(BENCHMARKS / "tracking_quality.py"), str(clip), "--set", bad],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and why in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_ray_scaling(ray_scaling_run):
    args, script = ray_scaling_run
    lines = script.output(timeout=RAY_TIMEOUT_S).splitlines()
    assert lines[0].startswith("command: ")
    assert_command(lines[0].removeprefix("command: "), "ray_scaling.py", args)
    rows = {}
    for line in lines:
        match = re.match(rf"^(local \d+|ray \d+)\s+(\d+) frames\s+{NUMBER} s\s+{NUMBER} fps", line)
        if match:
            rows[match.group(1)] = [float(v) for v in match.groups()[1:]]
    assert set(rows) == {"local 1", "ray 1"}, lines
    for frames, wall, fps in rows.values():
        assert frames == 8 and 0 < wall < 120 and fps == pytest.approx(frames / wall, rel=0.02, abs=0.01)
    start = numbers(next(line for line in lines if line.startswith("pool start")),
                    rf"pool start and one frame, 1 worker\(s\): {NUMBER} s")[0]
    assert 0 < start < 120
    assert numbers(next(line for line in lines if line.startswith("ray 1: speed-up")), rf"= {NUMBER}$") == [1.0]
    overhead = next(line for line in lines if line.startswith("overhead of the Ray runner"))
    assert all(math.isfinite(v) for v in numbers(overhead, r"thread: ([-+]\d+\.\d) % \(([-+]\d+\.\d) % without"))
