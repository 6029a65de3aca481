"""The names of output and temporary folders (m2a_pipe.io.layout), and their use by the pipeline
and the output walker."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2a_pipe.io.layout import (
    OLD_MARK,
    PARTIAL_MARK,
    is_temporary,
    old_dir,
    partial_dir,
    temporary_dirs,
    temporary_file,
    written_atomically,
)


def test_partial_and_old_dirs_are_hidden_siblings(tmp_path):
    out_dir = tmp_path / "car1" / "front"
    assert partial_dir(out_dir, 4242) == tmp_path / "car1" / ".front.partial-4242"
    assert old_dir(str(out_dir), 7) == tmp_path / "car1" / ".front.old-7"
    assert partial_dir("front", 1) == Path(".front.partial-1")
    assert partial_dir(out_dir, os.getpid()).name == f".front{PARTIAL_MARK}{os.getpid()}"
    assert old_dir(tmp_path / "a.b", 3).name == f".a.b{OLD_MARK}3"


@pytest.mark.parametrize("pid", [-1, 1.5, "12"])
def test_bad_pids_are_refused(tmp_path, pid):
    with pytest.raises(ValueError):
        partial_dir(tmp_path / "x", pid)


def test_a_folder_without_a_name_is_refused():
    with pytest.raises(ValueError):
        old_dir(Path("/"), 1)


@pytest.mark.parametrize("name, temporary", [
    (".front.partial-4242", True), (".front.old-7", True), (".a.b.partial-1", True),
    (".x.old-3.partial-5", True), (".front.partial-", False), (".front.partial-12a", False),
    ("front.partial-1", False), (".partial-1", False), (".git", False), (".front", False),
    (".front.tmp-12", False), ("front", False), (".notes.partial-draft", False),
])
def test_is_temporary(name, temporary):
    assert is_temporary(name) is temporary


def test_names_built_are_recognised(tmp_path):
    for name in ("front", "a.b", "x.partial-3", "with space"):
        assert is_temporary(partial_dir(tmp_path / name, 99).name)
        assert is_temporary(old_dir(tmp_path / name, 99).name)
        assert not is_temporary(name)


def test_temporary_dirs_of_one_output_only(tmp_path):
    out_dir = tmp_path / "drive"
    mine = [partial_dir(out_dir, 1), partial_dir(out_dir, 20), old_dir(out_dir, 3)]
    others = [partial_dir(tmp_path / "drive2", 1), partial_dir(tmp_path / "driv", 1), tmp_path / ".drive.tmp-5",
              out_dir]
    for folder in mine + others:
        folder.mkdir()
    (tmp_path / ".drive.partial-9").write_text("a file, not a folder")
    assert temporary_dirs(out_dir) == sorted(mine)
    assert temporary_dirs(tmp_path / "none") == []
    assert temporary_dirs(tmp_path / "missing" / "drive") == []


def test_job_uses_the_layout_names(tmp_path):
    from m2a_pipe.pipeline.job import remove_partials

    out_dir = tmp_path / "drive"
    stale = [partial_dir(out_dir, 5), old_dir(out_dir, 6)]
    keep = [out_dir, partial_dir(tmp_path / "other", 5)]
    for folder in stale + keep:
        (folder / "thumbs").mkdir(parents=True)
    remove_partials(out_dir)
    assert [p.exists() for p in stale + keep] == [False, False, True, True]


def test_the_walker_skips_temporary_folders_it_recognises(tmp_path):
    from m2a_pipe.mining.outputs import Skipped, walk_outputs

    partial_dir(tmp_path / "car" / "front", 12).mkdir(parents=True)
    old_dir(tmp_path / "car" / "rear", 13).mkdir()
    (tmp_path / "car" / ".cache").mkdir()
    found = list(walk_outputs(tmp_path))
    assert all(isinstance(item, Skipped) and item.kind == "temporary" for item in found)
    assert sorted(item.rel for item in found) == ["car/.front.partial-12", "car/.rear.old-13"]


def test_layout_imports_nothing_heavy():
    code = ("import sys, m2a_pipe.io.layout; "
            "print(','.join(m for m in ('torch', 'av', 'h5py', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_written_atomically_renames_when_whole_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "failures.jsonl"
    target.write_text("old\n")
    with written_atomically(target) as tmp:
        assert tmp == temporary_file(target) and tmp.parent == tmp_path and tmp.name.startswith(".failures.jsonl")
        tmp.write_text("new\n")
        assert target.read_text() == "old\n"  # nothing replaced before the block ends
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["failures.jsonl"]
    with pytest.raises(OSError, match="disk full"):
        with written_atomically(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "disk full")
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["failures.jsonl"]
