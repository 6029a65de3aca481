"""Hostile but real inputs: link loops, FIFOs, undecodable names, unreadable folders, manifests
that loop or break, truncated containers, bad options and tampered weights. Real files and
real file-system objects throughout; each failure is one line naming the input, the rest goes on."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402
from conftest import assert_error_line, run_cli  # noqa: E402
from test_inputs import rels, touch  # noqa: E402

from m2a_pipe.io.inputs import InputError, discover  # noqa: E402
from m2a_pipe.io.video_reader import VideoReader  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# -- discovery: links, FIFOs, names, folders ---------------------------------------------------------


def test_a_symlink_loop_is_one_line_and_the_rest_goes_on(tmp_path):
    touch(tmp_path / "fleet" / "good.mp4")
    os.symlink("loop.mp4", tmp_path / "fleet" / "loop.mp4")           # a link to itself
    os.symlink(tmp_path / "fleet" / "b.mp4", tmp_path / "fleet" / "a.mp4")
    os.symlink(tmp_path / "fleet" / "a.mp4", tmp_path / "fleet" / "b.mp4")
    errors = []
    assert rels(discover([tmp_path / "fleet"], errors)) == ["good.m2a"]
    assert sorted(where for where, _ in errors) == [str(tmp_path / "fleet" / n) for n in ("a.mp4", "b.mp4", "loop.mp4")]
    assert all("symbolic link loop" in message for _, message in errors)


def test_a_fifo_named_like_a_video_is_never_opened(tmp_path):
    touch(tmp_path / "fleet" / "good.mp4")
    os.mkfifo(tmp_path / "fleet" / "pipe.mp4")
    script = ("import sys; from m2a_pipe.io.inputs import discover; errors = []; "
              "found = discover([sys.argv[1]], errors); print([v.rel for v in found], errors)")
    # a FIFO opened for reading blocks until a writer comes: a subprocess with a timeout
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "fleet")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "['good.m2a']" in done.stdout and "a FIFO (named pipe), not a video file" in done.stdout


def test_a_fifo_given_to_the_reader_fails_at_once(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    script = ("import sys\nfrom m2a_pipe.io.video_reader import VideoReader, VideoError\n"
              "try:\n    VideoReader(sys.argv[1])\nexcept VideoError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", script, str(fifo)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "not a regular file" in done.stdout, (done.stdout, done.stderr)


def test_an_undecodable_name_is_kept_byte_for_byte(tmp_path):
    raw = os.fsencode(tmp_path) + b"/in/caf\xe9-\xff.mp4"
    os.makedirs(os.path.dirname(raw))
    with open(raw, "wb") as f:
        f.write(b"x")
    (video,) = discover([os.fsdecode(os.path.dirname(raw))])
    assert os.fsencode(video.source) == raw
    assert os.fsencode(video.rel) == b"caf\xe9-\xff.m2a"


def test_a_link_keeps_its_own_name_and_a_dangling_one_moves_nothing(tmp_path):
    touch(tmp_path / "store" / "deep" / "x" / "real.mp4")
    fleet = tmp_path / "fleet"
    touch(fleet / "car1" / "a.mp4")
    os.symlink(tmp_path / "store" / "deep" / "x" / "real.mp4", fleet / "car1" / "linked.mp4")
    before = rels(discover([fleet]))
    assert before == ["car1/a.m2a", "car1/linked.m2a"]
    os.symlink(tmp_path / "elsewhere" / "gone.mp4", fleet / "dangling.mp4")
    errors = []
    assert rels(discover([fleet], errors)) == before
    ((where, message),) = errors
    assert where == str(fleet / "dangling.mp4") and message.startswith(str(fleet / "dangling.mp4"))
    assert "broken symbolic link" in message


def test_a_folder_named_like_a_video_and_a_glob_of_broken_links_are_reported(tmp_path):
    (tmp_path / "x.mp4").mkdir()
    os.symlink(tmp_path / "none1", tmp_path / "b1.mkv")
    errors = []
    assert discover([tmp_path / "x.mp4", str(tmp_path / "*.mkv")], errors) == []
    assert "a folder, not a video file" in errors[0][1]
    assert errors[1][0] == str(tmp_path / "b1.mkv") and "broken symbolic link" in errors[1][1]


def test_an_unreadable_subfolder_is_reported(tmp_path):
    # root reads every folder: list it as an unprivileged user, in a tree that user may enter
    base = Path(tempfile.mkdtemp(prefix="m2a-perm-"))
    try:
        os.chmod(base, 0o755)
        touch(base / "fleet" / "ok" / "a.mp4")
        touch(base / "fleet" / "locked" / "b.mp4")
        for p in (base / "fleet", base / "fleet" / "ok"):
            os.chmod(p, 0o755)
        os.chmod(base / "fleet" / "locked", 0o700)
        script = ("import sys, os; from m2a_pipe.io.inputs import discover; os.setgid(65534); os.setuid(65534); "
                  "errors = []; print([v.rel for v in discover([sys.argv[1]], errors)], errors)")
        done = subprocess.run([sys.executable, "-c", script, str(base / "fleet")], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        if "PermissionError" in done.stderr and "setuid" in done.stderr:
            pytest.skip("cannot switch to an unprivileged user here")
        assert done.returncode == 0, done.stderr
        assert "['ok/a.m2a']" in done.stdout
        assert f"{base / 'fleet' / 'locked'}: cannot list the folder (Permission denied" in done.stdout
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_out_inside_the_input_folder_is_never_scanned(tmp_path):
    touch(tmp_path / "fleet" / "a.mp4")
    touch(tmp_path / "fleet" / "out" / "a.m2a" / "overlay.mp4")
    assert rels(discover([tmp_path / "fleet"], exclude=[tmp_path / "fleet" / "out"])) == ["a.m2a"]


# -- output names: never nested, never colliding ---------------------------------------------------


def test_output_folders_never_nest_nor_take_out_names(tmp_path):
    paths = [touch(tmp_path / "nest" / "x" / "y.mp4"), touch(tmp_path / "nest" / "x.mp4"),
             touch(tmp_path / "nest" / "failures.jsonl.mp4"), touch(tmp_path / "nest" / "report.mp4"),
             touch(tmp_path / "nest" / "report" / "r.mp4"), touch(tmp_path / "nest" / "failures.jsonl" / "f.mp4"),
             touch(tmp_path / "nest" / "a.m2a" / "v.mp4"), touch(tmp_path / "nest" / "a.mp4"),
             touch(tmp_path / "nest" / "a.m2a_" / "w.mp4"), touch(tmp_path / "nest" / ".a.m2a.partial-1" / "z.mp4")]
    found = discover(paths)
    names = rels(found)
    assert len(set(names)) == len(paths)
    folders = [n for n in names]
    for a in folders:
        for b in folders:
            assert a == b or not b.startswith(a + "/"), (a, b)   # no output inside another
    top = {n.split("/")[0] for n in names}
    assert not top & {"failures.jsonl", "report"}
    assert all(not step.startswith(".") for n in names for step in n.split("/"))


# -- manifests ----------------------------------------------------------------------------------


def test_manifest_cycles_are_one_line_each(tmp_path):
    touch(tmp_path / "a.mp4")
    (tmp_path / "self.txt").write_text("self.txt\na.mp4\n")
    (tmp_path / "one.txt").write_text("two.txt\n")
    (tmp_path / "two.txt").write_text("one.txt\n")
    errors = []
    found = discover([tmp_path / "self.txt", tmp_path / "one.txt"], errors)
    assert rels(found) == ["a.m2a"]
    assert len(errors) == 2 and all("manifest cycle" in m for _, m in errors)


def test_manifest_rows_fail_one_by_one_with_their_line(tmp_path):
    touch(tmp_path / "a.mp4"); touch(tmp_path / "b.mp4")
    long_name = "v" * 300 + ".mp4"
    (tmp_path / "list.txt").write_text(f"# fleet\na.mp4\nmissing.mp4\n{long_name}\nb.mp4\n")
    errors = []
    assert rels(discover([tmp_path / "list.txt"], errors)) == ["a.m2a", "b.m2a"]
    messages = [m for _, m in errors]
    assert messages[0].startswith(f"{tmp_path / 'list.txt'}:3: missing.mp4: no such file")
    assert messages[1].startswith(f"{tmp_path / 'list.txt'}:4: ") and "too long" in messages[1]


def test_csv_manifest_quoted_newline_is_refused_with_its_line(tmp_path):
    touch(tmp_path / "a.mp4"); touch(tmp_path / "b.mp4")
    (tmp_path / "fleet.csv").write_text('path,car\na.mp4,1\n"b.mp4\nc.mp4",2\nb.mp4,3\n')
    errors = []
    found = discover([tmp_path / "fleet.csv"], errors)
    assert rels(found) == ["a.m2a", "b.m2a"]
    ((_, message),) = errors
    assert message.startswith(f"{tmp_path / 'fleet.csv'}:3: ") and "line break" in message


# -- truncation ---------------------------------------------------------------------------------


def test_a_matroska_cut_at_90_percent_is_partial(tmp_path):
    full = vf.make_video(tmp_path / "full.mkv", n=100, fps=10, gop=10)
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    with VideoReader(full) as reader:
        assert sum(1 for _ in reader) == 100 and reader.partial_reason is None
    with VideoReader(cut) as reader:
        n = sum(1 for _ in reader)
        assert n < 100 and "stream ends early" in reader.partial_reason


def test_a_transport_stream_cut_on_a_packet_boundary_is_partial(tmp_path):
    # frames large enough to span many 188-byte packets, cut on a packet boundary mid-frame
    import numpy as np

    rng = np.random.default_rng(0)
    frames = ((rng.integers(0, 255, (128, 192, 3), dtype=np.uint8), i) for i in range(20))
    from fractions import Fraction

    full = vf._encode(tmp_path / "full.ts", frames, 192, 128, codec="libx264", rate=Fraction(10),
                      time_base=Fraction(1, 10))
    data = full.read_bytes()
    cut = tmp_path / "cut.ts"
    boundary = (len(data) * 7 // 10) // 188 * 188
    cut.write_bytes(data[:boundary])
    with VideoReader(full) as reader:
        assert sum(1 for _ in reader) == 20 and reader.partial_reason is None
    with VideoReader(cut) as reader:
        sum(1 for _ in reader)
        assert reader.partial_reason and "truncated" in reader.partial_reason


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, needle", [
    ("--sample-fps", "inf", "sample_fps: must be a finite number"),
    ("--threshold", "inf", "threshold: must be a finite number"),
    ("--threshold", "nan", "threshold: must be a finite number"),
    ("--event-min-duration", "-1", "event_min_duration_s: must be >= 0"),
    ("--min-area-fraction", "nan", "min_area_fraction: must be a finite number"),
])
def test_non_finite_and_negative_options_are_refused(tmp_path, option, value, needle):
    result = run_cli("process", REPO / "examples" / "drive.mp4", "-o", tmp_path / "out", option, value)
    assert_error_line(result, needle, exit_code=2)
    assert not (tmp_path / "out").exists()


def test_a_config_of_the_wrong_type_names_the_field(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"short_side": "abc"}))
    result = run_cli("process", REPO / "examples" / "drive.mp4", "-o", tmp_path / "out",
                     "--config", tmp_path / "c.json")
    assert_error_line(result, "short_side: must be an integer, got 'abc'", exit_code=2)


def test_a_bad_device_is_refused_before_out_exists(tmp_path):
    result = run_cli("process", REPO / "examples" / "drive.mp4", "-o", tmp_path / "out", "--device", "tpu:7")
    assert_error_line(result, "tpu:7", exit_code=2)
    assert not (tmp_path / "out").exists()


def test_json_to_an_unwritable_place_is_refused_before_the_run(tmp_path):
    result = run_cli("process", REPO / "examples" / "drive.mp4", "-o", tmp_path / "out",
                     "--json", tmp_path / "no" / "such" / "folder" / "s.json")
    assert_error_line(result, "--json", exit_code=2)
    assert not (tmp_path / "out").exists()


# -- weights ------------------------------------------------------------------------------------


def _tampered(tmp_path, weights, change):
    """A copy of ``weights`` whose stored config (a dict) and metadata (key -> JSON text)
    ``change(config, meta)`` edited, written with the same tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from m2a_pipe.model.checkpoint import META_CONFIG_KEY, read_state_dict

    with safe_open(weights, framework="pt") as f:
        header = dict(f.metadata())
    config = json.loads(header[META_CONFIG_KEY])
    meta = {k: v for k, v in header.items() if k != META_CONFIG_KEY}
    change(config, meta)
    path = tmp_path / "tampered.safetensors"
    save_file(read_state_dict(weights), str(path), metadata={**meta, META_CONFIG_KEY: json.dumps(config)})
    return path


@pytest.mark.parametrize("change, needle", [
    (lambda c, m: c["decoder"].update(nheads=0), "decoder.nheads: must be in [1, 256], got 0"),
    (lambda c, m: c["pixel_decoder"].update(nheads=0), "pixel_decoder.nheads: must be in [1, 256], got 0"),
    (lambda c, m: c["preprocess"].update(min_size_test=0), "preprocess.min_size_test: must be in [32, 4096]"),
    (lambda c, m: c["preprocess"].update(min_size_test=100000), "preprocess.min_size_test: must be in [32, 4096]"),
    (lambda c, m: c.update(keep_threshold="abc"), "keep_threshold: must be a finite number"),
    (lambda c, m: m.update(anomaly_threshold='"abc"'), "anomaly_threshold must be a finite number"),
    (lambda c, m: m.update(anomaly_threshold="NaN"), "anomaly_threshold must be a finite number"),
])
def test_tampered_weights_configs_name_the_field(weights, tmp_path, change, needle):
    path = _tampered(tmp_path, weights, change)
    result = run_cli("process", REPO / "examples" / "drive.mp4", "-o", tmp_path / "out", "--weights", path,
                     "--device", "cpu", "--short-side", "64", "-q")
    assert_error_line(result, needle, exit_code=result.exit_code)
    assert result.exit_code in (1, 2)


def test_a_config_that_is_a_json_list_is_refused(weights, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from m2a_pipe.model.checkpoint import read_state_dict

    with safe_open(weights, framework="pt") as f:
        header = dict(f.metadata())
    from m2a_pipe.model.checkpoint import META_CONFIG_KEY

    header[META_CONFIG_KEY] = "[1, 2]"
    path = tmp_path / "list.safetensors"
    save_file(read_state_dict(weights), str(path), metadata=header)
    result = run_cli("process", REPO / "examples" / "drive.mp4", "-o", tmp_path / "out", "--weights", path,
                     "--short-side", "64", "-q")
    assert_error_line(result, "model config: must be a JSON object, got list", exit_code=result.exit_code)


def test_a_malicious_pickle_runs_nothing_and_names_the_global(tmp_path):
    marker = tmp_path / "PWNED"
    payload = tmp_path / "evil.pth"
    script = ("import os, sys, torch\n"
              "class Evil:\n"
              "    def __reduce__(self):\n"
              "        return (os.system, ('touch ' + sys.argv[2],))\n"
              "torch.save({'model': {'w': torch.zeros(2)}, 'x': Evil()}, sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", script, str(payload), str(marker)], check=True, timeout=120)
    assert not marker.exists()
    from m2a_pipe.model.checkpoint import CheckpointError, read_state_dict

    with pytest.raises(CheckpointError) as caught:
        read_state_dict(payload)
    assert not marker.exists()
    message = str(caught.value)
    assert "posix.system" in message and "m2a-pipe weights convert" in message and "weights_only=False" not in message
    assert "\n" not in message


def test_a_malicious_pkl_runs_nothing(tmp_path):
    import pickle

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    from m2a_pipe.model.checkpoint import CheckpointError, read_state_dict

    with pytest.raises(CheckpointError, match="refused to unpickle the global posix.system"):
        read_state_dict(path)
    assert not marker.exists()


def test_discover_without_an_error_list_raises_the_first(tmp_path):
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    with pytest.raises(InputError, match="symbolic link loop"):
        discover([tmp_path / "loop.mp4"])


def test_a_codec_ffmpeg_cannot_name_is_one_line(tmp_path):
    """An MP4 whose sample entry names no codec FFmpeg knows (the 'avc1' fourcc overwritten):
    PyAV opens the stream without a codec context; one error line, no traceback. (A damaged
    file of the fuzz benchmark reached this once, as an AttributeError.)"""
    clip = vf.make_video(tmp_path / "ok.mp4", n=4, size=(64, 48), fps=10)
    data = clip.read_bytes()
    entry = data.index(b"avc1", data.index(b"stsd"))
    bad = tmp_path / "fourcc.mp4"
    bad.write_bytes(data[:entry] + b"zzzz" + data[entry + 4:])
    result = run_cli("process", bad, "-o", tmp_path / "out", "--short-side", "64", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("m2a-pipe: error:")]
    assert errors == [f"m2a-pipe: error: {bad}: unknown or unsupported video codec (no decoder in this FFmpeg build)"]
    assert not list((tmp_path / "out").glob("*.m2a"))  # nothing committed for it
