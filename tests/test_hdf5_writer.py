"""scores.h5: the contract's datasets, map encoding, block appends and status."""

import json

import h5py
import numpy as np

from m2a_pipe.io.hdf5_writer import BLOCK_ROWS, FORMAT_VERSION, ScoresWriter, read_status


def write(path, n, *, bounded=True, maps=True, status="complete"):
    rng = np.random.default_rng(0)
    attrs = {"source": "drive.mp4", "fps": 10.0, "config": {"a": 1}, "weights": None}
    w = ScoresWriter(path, attrs, map_shape=(6, 8) if maps else None, bounded=bounded, semantic=maps)
    written = []
    for i in range(n):
        m = rng.random((6, 8), dtype=np.float32) * (1 if bounded else 7)
        written.append(m)
        w.add_frame(index=2 * i, pts=0.2 * i, score_max=float(m.max()), score_p99=0.5, anomalous_fraction=0.25,
                    n_instances=i % 3, anomaly=m if maps else None,
                    semantic=np.full((6, 8), i % 19, np.uint8) if maps else None)
        if i % 3:
            w.add_instance(2 * i, i % 2, (1.0, 2.0, 5.0, 6.0), 16.0, 0.7, 0.9)
    w.close(status=status, error="cut" if status == "partial" else None)
    return written


def test_frames_instances_and_attributes(tmp_path):
    path = tmp_path / "scores.h5"
    n = BLOCK_ROWS + 37  # crosses a block boundary
    written = write(path, n)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION and f.attrs["n_frames"] == n
        assert f.attrs["status"] == "complete" and f.attrs["error"] == ""
        assert json.loads(f.attrs["config"]) == {"a": 1} and f.attrs["weights"] == ""
        assert f["frames/index"].dtype == np.int64 and f["frames/pts"].dtype == np.float64
        assert f["frames/score_max"].dtype == np.float32 and f["frames/n_instances"].dtype == np.int32
        np.testing.assert_array_equal(f["frames/index"][:], 2 * np.arange(n))
        np.testing.assert_allclose(f["frames/pts"][:], 0.2 * np.arange(n))
        np.testing.assert_array_equal(f["frames/n_instances"][:], np.arange(n) % 3)
        inst = f["instances"][:]
        assert len(inst) == sum(1 for i in range(n) if i % 3)
        assert set(inst.dtype.names) >= {"frame", "track_id", "x0", "y0", "x1", "y1", "area", "score_mean",
                                         "score_max"}
        maps = f["maps/anomaly"]
        assert maps.shape == (n, 6, 8) and maps.dtype == np.uint8 and maps.chunks == (1, 6, 8)
        assert maps.compression == "gzip"
        decoded = maps[5] * maps.attrs["scale"]
        np.testing.assert_allclose(decoded, written[5], atol=0.5 / 255 + 1e-6)
        assert f["maps/semantic"][7].max() == 7


def test_unbounded_scores_are_float16(tmp_path):
    path = tmp_path / "scores.h5"
    written = write(path, 4, bounded=False)
    with h5py.File(path, "r") as f:
        assert f["maps/anomaly"].dtype == np.float16 and f["maps/anomaly"].attrs["scale"] == 1.0
        np.testing.assert_allclose(f["maps/anomaly"][2], written[2], rtol=1e-3)


def test_status_partial_and_no_maps(tmp_path):
    path = tmp_path / "scores.h5"
    write(path, 3, maps=False, status="partial")
    assert read_status(path) == ("partial", "cut")
    with h5py.File(path, "r") as f:
        assert "maps" not in f


def test_read_status_of_a_missing_file(tmp_path):
    assert read_status(tmp_path / "nope.h5")[0] == "missing"
