"""Input discovery: files, folders, globs, manifests, and collision-free output folders."""

from pathlib import Path

import pytest

from m2a_pipe.io.inputs import InputError, discover


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def rels(videos):
    return sorted(v.rel for v in videos)


def test_single_file_goes_to_its_stem_and_the_video_suffix(tmp_path):
    video = touch(tmp_path / "drive.mp4")
    (out,) = discover([video])
    assert out.rel == "drive.m2a" and out.source == video.resolve()
    assert out.out_dir(tmp_path / "OUT") == tmp_path / "OUT" / "drive.m2a"


def test_same_name_in_two_folders_never_collides(tmp_path):
    a, b = touch(tmp_path / "a" / "drive.mp4"), touch(tmp_path / "b" / "drive.mp4")
    assert rels(discover([a, b])) == ["a/drive.m2a", "b/drive.m2a"]


def test_directory_is_scanned_recursively_and_mirrored(tmp_path):
    touch(tmp_path / "fleet" / "car1" / "d1.MP4")
    touch(tmp_path / "fleet" / "car2" / "2026" / "d1.ts")
    touch(tmp_path / "fleet" / "car2" / "notes.txt")
    touch(tmp_path / "fleet" / ".hidden" / "x.mp4")
    assert rels(discover([tmp_path / "fleet"])) == ["car1/d1.m2a", "car2/2026/d1.m2a"]


def test_same_stem_in_one_folder_keeps_the_suffix(tmp_path):
    touch(tmp_path / "a.mp4"); touch(tmp_path / "a.mov"); touch(tmp_path / "b.mkv")
    assert rels(discover([tmp_path])) == ["a.mov.m2a", "a.mp4.m2a", "b.m2a"]


def test_glob_and_duplicates(tmp_path):
    touch(tmp_path / "x" / "one.mp4"); touch(tmp_path / "x" / "two.mp4"); touch(tmp_path / "x" / "three.avi")
    found = discover([str(tmp_path / "x" / "*.mp4"), tmp_path / "x" / "one.mp4"])
    assert rels(found) == ["one.m2a", "two.m2a"]
    assert rels(discover([str(tmp_path / "**" / "*.avi")])) == ["three.m2a"]


def test_text_manifest_relative_to_its_folder(tmp_path):
    touch(tmp_path / "videos" / "a.mp4"); touch(tmp_path / "videos" / "sub" / "b.mp4")
    manifest = tmp_path / "videos" / "list.txt"
    manifest.write_text("# drives\na.mp4\n\nsub/b.mp4\n")
    assert rels(discover([manifest])) == ["a.m2a", "sub/b.m2a"]


def test_csv_manifest_carries_columns(tmp_path):
    touch(tmp_path / "a.mp4")
    manifest = tmp_path / "fleet.csv"
    manifest.write_text("vehicle,path,drive_id\nVAN-7,a.mp4,d-001\n")
    (video,) = discover([manifest])
    assert dict(video.extra) == {"vehicle": "VAN-7", "drive_id": "d-001"}


def test_csv_manifest_without_path_column_is_an_error(tmp_path):
    manifest = tmp_path / "fleet.csv"
    manifest.write_text("file\na.mp4\n")
    with pytest.raises(InputError, match="'path' column"):
        discover([manifest])


def test_missing_inputs_are_reported_one_by_one(tmp_path):
    good = touch(tmp_path / "good.mp4")
    errors = []
    found = discover([tmp_path / "nope.mp4", good, str(tmp_path / "*.mkv")], errors)
    assert rels(found) == ["good.m2a"]
    assert [e[0] for e in errors] == [str(tmp_path / "nope.mp4"), str(tmp_path / "*.mkv")]
    assert "no such file" in errors[0][1] and "matches nothing" in errors[1][1]
    with pytest.raises(InputError, match="no such file"):
        discover([tmp_path / "nope.mp4"])


def test_names_never_step_outside_out(tmp_path):
    touch(tmp_path / "...mp4")
    (video,) = discover([tmp_path / "...mp4"])
    out = (tmp_path / "OUT").resolve()
    assert out in video.out_dir(out).resolve().parents


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video found"):
        discover([tmp_path / "empty"])
