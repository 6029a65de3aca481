"""Video decoding and encoding edges on real encoded files (PyAV fixtures from video_fixtures.py)."""

import os
import sys
from pathlib import Path

import av
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import video_fixtures as vf  # noqa: E402

from m2a_pipe.io.video_reader import Frame, VideoError, VideoInfo, VideoReader, probe  # noqa: E402
from m2a_pipe.io.video_writer import VideoWriter  # noqa: E402

VFR_PTS_S = [0.0, 0.05, 0.2, 0.25, 0.5, 0.9, 1.0]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Files shared by several tests (read-only)."""
    root = tmp_path_factory.mktemp("clips")
    return {
        "mp4": vf.make_video(root / "a.mp4", n=20),
        "vfr": vf.make_vfr_video(root / "vfr.mkv", VFR_PTS_S),
        "cfr30": vf.make_video(root / "cfr30.mp4", n=30, fps=30),
        "corrupt_ts": vf.make_corrupt_middle(root / "corrupt.ts"),
        "corrupt_mp4": vf.make_corrupt_middle(root / "corrupt.mp4"),
    }


def read_all(path, **kw):
    """(reader after iteration, list of frames)."""
    with VideoReader(path, **kw) as reader:
        frames = list(reader)
    return reader, frames


def indices_shown(frames):
    return [vf.pattern_index(f.image) for f in frames]


def assert_one_line_error(err: VideoError, path, *fragments):
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    assert text.startswith(f"{path}: ") and err.path == str(path)
    assert text == f"{err.path}: {err.reason}"
    for fragment in fragments:
        assert fragment in err.reason.lower(), f"{fragment!r} not in {err.reason!r}"


# -- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, container", [(".mp4", "mov,mp4,m4a,3gp,3g2,mj2"), (".mov", "mov,mp4,m4a,3gp,3g2,mj2"),
                                               (".mkv", "matroska,webm"), (".ts", "mpegts")])
def test_decodes_every_frame_in_order_with_pts(tmp_path, suffix, container):
    path = vf.make_video(tmp_path / f"clip{suffix}", n=20, size=(96, 64), fps=10)
    reader, frames = read_all(path)
    info = reader.info
    assert (info.width, info.height, info.rotation, info.codec, info.container) == (96, 64, 0, "h264", container)
    assert info.fps == pytest.approx(10.0) and info.n_frames == 20 and info.duration_s == pytest.approx(2.0, abs=0.15)
    assert [f.index for f in frames] == list(range(20))
    assert indices_shown(frames) == list(range(20))
    np.testing.assert_allclose(np.diff([f.pts_s for f in frames]), 0.1, atol=1e-6)
    assert reader.n_decoded == 20 and reader.partial_reason is None and reader.errors == []
    image = frames[5].image
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    np.testing.assert_allclose(image[40, 60], vf.pattern_image(5, 96, 64)[40, 60], atol=6)
    assert vf.marker_corner(image) == "tl"


def test_hevc_decodes(tmp_path):
    try:
        av.codec.Codec("libx265", "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip("no libx265 in this PyAV")
    reader, frames = read_all(vf.make_video(tmp_path / "h.mkv", n=8, codec="libx265"))
    assert reader.info.codec == "hevc" and indices_shown(frames) == list(range(8))


def test_probe_matches_reader_info(clips):
    info = probe(clips["mp4"])
    with VideoReader(clips["mp4"]) as reader:
        assert isinstance(info, VideoInfo) and info == reader.info
    assert info.path == str(clips["mp4"])


def test_stride_keeps_every_nth_decoded_frame(clips):
    reader, frames = read_all(clips["mp4"], stride=3)
    assert [f.index for f in frames] == [0, 3, 6, 9, 12, 15, 18]
    assert indices_shown(frames) == [0, 3, 6, 9, 12, 15, 18]
    assert reader.n_decoded == 20 and reader.partial_reason is None


def test_sample_fps_on_constant_rate_input(clips):
    _, frames = read_all(clips["cfr30"], sample_fps=10)
    assert [f.index for f in frames] == list(range(0, 30, 3))
    np.testing.assert_allclose([f.pts_s for f in frames], np.arange(10) * 0.1, atol=1e-6)


def test_sample_fps_on_variable_rate_input_gives_one_frame_per_slot(clips):
    reader, frames = read_all(clips["vfr"])
    np.testing.assert_allclose([f.pts_s for f in frames], VFR_PTS_S, atol=1e-6)
    _, sampled = read_all(clips["vfr"], sample_fps=4)     # slots of 0.25 s from the first frame
    assert [f.index for f in sampled] == [0, 3, 4, 5, 6]
    slots = [int(f.pts_s / 0.25 + 1e-6) for f in sampled]
    assert slots == sorted(set(slots)) == [0, 1, 2, 3, 4]
    assert indices_shown(sampled) == [0, 3, 4, 5, 6]


@pytest.mark.parametrize("kw", [dict(stride=2, sample_fps=5.0), dict(stride=0), dict(stride=1.5),
                                dict(sample_fps=0.0), dict(sample_fps=-1.0), dict(max_consecutive_errors=0)])
def test_invalid_sampling_arguments(clips, kw):
    with pytest.raises(ValueError):
        VideoReader(clips["mp4"], **kw)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    path = vf.make_rotated_video(tmp_path / f"rot{rotation}.mp4", rotation=rotation, n=6, size=(96, 64))
    with av.open(str(path)) as container:           # what is stored: turned sideways / upside down
        stored = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert stored.shape == ((96, 64, 3) if rotation % 180 else (64, 96, 3))
    assert vf.marker_corner(stored) != "tl"
    reader, frames = read_all(path)
    assert reader.info.rotation == rotation and (reader.info.width, reader.info.height) == (96, 64)
    assert all(f.image.shape == (64, 96, 3) and f.image.flags.c_contiguous for f in frames)
    assert [vf.marker_corner(f.image) for f in frames] == ["tl"] * 6
    assert indices_shown(frames) == list(range(6))


@pytest.mark.parametrize("name, size", [("odd.mp4", (333, 197)), ("odd.mov", (97, 51))])
def test_odd_sizes(tmp_path, name, size):
    reader, frames = read_all(vf.make_video(tmp_path / name, n=5, size=size))
    assert (reader.info.width, reader.info.height) == size
    assert frames[0].image.shape == (size[1], size[0], 3)
    assert indices_shown(frames) == list(range(5)) and vf.marker_corner(frames[0].image) == "tl"


def test_iteration_is_lazy_and_single_use(clips):
    with VideoReader(clips["mp4"]) as reader:
        it = iter(reader)
        first = next(it)
        assert isinstance(first, Frame) and first.index == 0
        assert reader.n_decoded <= 2
        with pytest.raises(RuntimeError):
            iter(reader)
    reader.close()  # twice is fine


# -- seeking ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gops(tmp_path_factory):
    """60 frames at 10 fps with a key frame every 8 frames (0.8 s), in three containers."""
    root = tmp_path_factory.mktemp("gops")
    return {suffix: vf.make_video(root / f"gop{suffix}", n=60, fps=10, gop=8) for suffix in (".mp4", ".mkv", ".ts")}


class NoSeekContainer:
    """An opened container whose ``seek`` fails, as with a stream that cannot seek."""

    def __init__(self, container):
        self._container = container

    def seek(self, *args, **kwargs):
        raise av.error.FFmpegError(38, "Function not implemented")

    def __getattr__(self, name):
        return getattr(self._container, name)


def expected_after(full, t_s):
    return [f for f in full if f.pts_s >= t_s - 1e-6]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_seek_to_the_middle_starts_at_the_first_frame_at_or_after_t(gops, suffix):
    _, full = read_all(gops[suffix])
    t_first = full[0].pts_s                              # MPEG-TS starts at an offset
    for t_s in (t_first + 3.25, t_first + 3.3, t_first + 3.35):  # between frames, on frame 33
        with VideoReader(gops[suffix]) as reader:
            frames = list(reader.seek(t_s))
            n_decoded = reader.n_decoded
        expected = expected_after(full, t_s)
        assert len(frames) == len(expected) == 60 - round((t_s - t_first) * 10 + 0.49)
        assert frames[0].pts_s >= t_s - 1e-6 and full[59 - len(frames)].pts_s < t_s
        np.testing.assert_allclose([f.pts_s for f in frames], [f.pts_s for f in expected], atol=1e-6)
        assert indices_shown(frames) == indices_shown(expected)
        assert all(f.index == -1 and f.image.shape == (64, 96, 3) and f.image.dtype == np.uint8 for f in frames)
        assert n_decoded < 60 - 8, f"{suffix}: the seek decoded the file from its start ({n_decoded} frames)"
        assert reader.errors == [] and reader.partial_reason is None


def test_seek_stops_early_and_past_the_end_yields_nothing(gops):
    _, full = read_all(gops[".mp4"])
    last = full[-1].pts_s
    for t_s, n in ((last, 1), (last + 0.05, 0), (last + 100.0, 0)):
        with VideoReader(gops[".mp4"]) as reader:
            assert [f.pts_s for f in reader.seek(t_s)] == [f.pts_s for f in full[len(full) - n:]]
    with VideoReader(gops[".mp4"]) as reader:
        it = reader.seek(1.0)
        assert next(it).pts_s == pytest.approx(1.0)
        assert reader.n_decoded < 20                     # lazy: the rest is not decoded yet


def test_seek_before_the_first_frame_gives_every_frame(gops):
    _, full = read_all(gops[".ts"])
    for t_s in (-5.0, 0.0, full[0].pts_s):
        with VideoReader(gops[".ts"]) as reader:
            frames = list(reader.seek(t_s))
        assert [f.pts_s for f in frames] == [f.pts_s for f in full]
        assert indices_shown(frames) == indices_shown(full)


@pytest.mark.parametrize("rotation", [90, 270])
def test_seek_keeps_the_rotation(tmp_path, rotation):
    path = vf.make_rotated_video(tmp_path / f"rot{rotation}.mp4", rotation=rotation, n=20, size=(96, 64))
    with VideoReader(path) as reader:
        frames = list(reader.seek(1.2))
    assert reader.info.rotation == rotation
    assert [f.image.shape for f in frames] == [(64, 96, 3)] * 8
    assert all(f.image.flags.c_contiguous for f in frames)
    assert [vf.marker_corner(f.image) for f in frames] == ["tl"] * 8
    assert indices_shown(frames) == list(range(12, 20))


def test_a_file_that_cannot_seek_is_decoded_from_its_start(gops):
    _, full = read_all(gops[".mp4"])
    with VideoReader(gops[".mp4"]) as reader:
        reader._container = NoSeekContainer(reader._container)
        frames = list(reader.seek(3.25))
        assert not isinstance(reader._container, NoSeekContainer)   # reopened
    assert [f.pts_s for f in frames] == [f.pts_s for f in expected_after(full, 3.25)]
    assert indices_shown(frames) == indices_shown(expected_after(full, 3.25))


def test_seek_again_ends_the_previous_iterator_and_excludes_iteration(gops):
    with VideoReader(gops[".mkv"]) as reader:
        first = reader.seek(4.0)
        assert vf.pattern_index(next(first).image) == 40 % vf.LEVEL_PERIOD
        second = reader.seek(1.0)
        assert list(first) == []
        assert indices_shown(second) == list(range(10, 40)) + list(range(0, 20))
        assert indices_shown(reader.seek(0.0))[:3] == [0, 1, 2]
        with pytest.raises(RuntimeError):
            iter(reader)
    with VideoReader(gops[".mkv"]) as reader:
        iter(reader)
        with pytest.raises(RuntimeError):
            reader.seek(1.0)
    with pytest.raises(RuntimeError):
        reader.seek(1.0)                                 # closed
    with VideoReader(gops[".mkv"]) as reader:
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError):
                reader.seek(bad)


# -- damaged files ----------------------------------------------------------------------------


def test_truncated_ts_keeps_decodable_frames(tmp_path):
    path = vf.make_truncated_ts(tmp_path / "cut.ts", n=30)
    assert os.path.getsize(path) % 188 != 0
    reader, frames = read_all(path)
    assert 0 < len(frames) < 30
    assert indices_shown(frames)[:10] == list(range(10))
    assert reader.partial_reason and "truncated" in reader.partial_reason and "\n" not in reader.partial_reason


def test_truncated_mp4_with_index_reports_the_missing_frames(tmp_path):
    reader, frames = read_all(vf.make_truncated_mp4(tmp_path / "cut.mp4", n=30))
    assert 0 < len(frames) < 30 and indices_shown(frames)[:5] == list(range(5))
    assert reader.info.n_frames == 30
    assert reader.partial_reason.startswith(f"truncated: index lists 30 frames, decoded {len(frames)}")


@pytest.mark.parametrize("key", ["corrupt_ts", "corrupt_mp4"])
def test_corrupt_middle_keeps_frames_before_and_after(clips, key):
    reader, frames = read_all(clips[key])
    shown = indices_shown(frames)
    assert shown[:10] == list(range(10))                  # GOPs before the damaged one (frames 10-19)
    assert shown[-10:] == list(range(20, 30))              # from the next key frame on
    assert len(frames) < 30 and reader.n_decoded == len(frames)
    assert reader.errors and reader.partial_reason and "\n" not in reader.partial_reason


def test_corrupt_mp4_reports_frames_missing_from_index(clips):
    reader, frames = read_all(clips["corrupt_mp4"])
    assert f"index lists 30 frames, decoded {len(frames)}" in reader.partial_reason


def test_consecutive_error_limit_stops_decoding(clips):
    reader, frames = read_all(clips["corrupt_mp4"], max_consecutive_errors=1)
    assert "stopped after 1 consecutive decode errors" in reader.partial_reason
    assert 0 < len(frames) <= 17 and indices_shown(frames)[:10] == list(range(10))


def test_corrupt_mkv_that_ends_early_is_flagged(tmp_path):
    reader, frames = read_all(vf.make_corrupt_middle(tmp_path / "c.mkv"))
    assert 0 < len(frames) < 30
    assert "ends early" in reader.partial_reason


def test_mp4_without_index_explains_the_missing_moov_atom(tmp_path):
    path = vf.make_mp4_without_index(tmp_path / "noindex.mp4")
    with pytest.raises(VideoError) as exc:
        VideoReader(path)
    assert_one_line_error(exc.value, path, "moov", "index", "cut off", "cannot be decoded")


@pytest.mark.parametrize("make, name, fragment", [
    (vf.make_garbage, "garbage.mp4", "not a video"),
    (vf.make_text_file, "notes.mkv", "not a video"),
    (vf.make_zero_frame_video, "zero.mkv", "no decodable video frame"),
    (vf.make_zero_frame_video, "zero.mp4", "no decodable video frame"),
    (vf.make_audio_only, "tone.m4a", "no video stream"),
    (vf.make_audio_only, "tone.mka", "no video stream"),
])
def test_unreadable_files_fail_with_one_line(tmp_path, make, name, fragment):
    path = make(tmp_path / name)
    with pytest.raises(VideoError) as exc:
        VideoReader(path)
    assert_one_line_error(exc.value, path, fragment)
    with pytest.raises(VideoError):
        probe(path)


def test_missing_empty_and_directory_paths(tmp_path):
    cases = {tmp_path / "missing.mp4": "not found", tmp_path: "directory"}
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases[tmp_path / "empty.mp4"] = "empty"
    for path, fragment in cases.items():
        with pytest.raises(VideoError) as exc:
            VideoReader(path)
        assert_one_line_error(exc.value, path, fragment)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permission(clips, tmp_path):
    path = tmp_path / "locked.mp4"
    path.write_bytes(Path(clips["mp4"]).read_bytes())
    path.chmod(0)
    with pytest.raises(VideoError) as exc:
        VideoReader(path)
    assert_one_line_error(exc.value, path, "permission")


# -- encoding ---------------------------------------------------------------------------------


def test_writer_round_trip_keeps_frames_and_vfr_timestamps(tmp_path):
    pts_s = [1.4, 1.433, 1.45, 1.6, 1.6333, 1.9, 2.3, 2.301, 2.4, 3.1]
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 96, 64, fps=10) as writer:
        for i, t in enumerate(pts_s):
            writer.write(vf.pattern_image(i, 96, 64), t)
        assert writer.frames_written == len(pts_s)
    writer.close()  # twice is fine
    reader, frames = read_all(path)
    assert len(frames) == len(pts_s) and reader.partial_reason is None
    np.testing.assert_allclose([f.pts_s for f in frames], pts_s, atol=1e-3)
    assert indices_shown(frames) == list(range(len(pts_s)))
    assert (reader.info.codec, reader.info.width, reader.info.height) == ("h264", 96, 64)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")   # faststart: index first


def test_writer_pads_odd_sizes_by_repeating_the_edge(tmp_path):
    ramp = 30 + 2 * np.arange(97)[None, :] + np.arange(51)[:, None] // 2      # grey, brightest at the right edge
    image = np.repeat(ramp[:, :, None], 3, axis=2).astype(np.uint8)
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, 97, 51, fps=5, crf=0) as writer:
        writer.write(image, 0.0)
        writer.write(image, 0.2)
        assert (writer.coded_width, writer.coded_height) == (98, 52)
    reader, frames = read_all(path)
    assert len(frames) == 2 and frames[0].image.shape == (52, 98, 3)
    got = frames[0].image.astype(int)
    assert np.abs(got[:51, :97] - image).max() <= 3             # content unchanged (lossless up to YUV rounding)
    assert np.abs(got[:51, 97] - image[:, 96]).max() <= 3       # right column repeats the edge (not black)
    assert np.abs(got[51, :97] - image[50]).max() <= 3          # bottom row repeats the edge


def test_writer_rejects_non_increasing_timestamps_and_bad_frames(tmp_path):
    with VideoWriter(tmp_path / "x.mp4", 32, 32, fps=10) as writer:
        frame = np.zeros((32, 32, 3), np.uint8)
        writer.write(frame, 0.5)
        for bad_pts in (0.5, 0.4, 0.5 + 1e-7):                   # equal, earlier, equal after rounding
            with pytest.raises(ValueError, match="increase"):
                writer.write(frame, bad_pts)
        with pytest.raises(ValueError):
            writer.write(np.zeros((32, 31, 3), np.uint8), 1.0)
        with pytest.raises(ValueError):
            writer.write(frame.astype(np.float32), 1.0)
        writer.write(frame, 0.6)
        assert writer.frames_written == 2
    with pytest.raises(RuntimeError):
        writer.write(frame, 0.7)
    _, frames = read_all(tmp_path / "x.mp4")
    np.testing.assert_allclose([f.pts_s for f in frames], [0.5, 0.6], atol=1e-3)


@pytest.mark.parametrize("preset", ["lean", "ultrafast", "superfast", "veryfast"])
def test_writer_on_a_full_disk_fails_with_oserror_and_closes_without_crashing(small_disk, preset):
    """On a real tmpfs with no space left, a write raises OSError and close() returns: no
    encoder flush into the failed output (FFmpeg ends the process with a segmentation fault
    there, which the fast presets reach because they emit packets from the first frames).
    Run in a child process, so that a crash shows as its exit status."""
    import subprocess

    from conftest import fill_disk

    fill_disk(small_disk)
    script = f"""
import numpy as np
from m2a_pipe.io.video_writer import VideoWriter
writer = VideoWriter({str(small_disk / "x.mp4")!r}, 96, 64, 10.0, preset={preset!r}, threads=1)
image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
try:
    for i in range(12):
        writer.write(image, i / 10)
    print("written")
except OSError as err:
    print("write failed:", err.errno)
writer.close()
print("closed")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.split("\n")
    assert lines[-2] == "closed" and lines[0] in ("write failed: 28", "written"), done.stdout
