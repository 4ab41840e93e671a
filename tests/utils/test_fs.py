"""The one atomic writer and folder swap: whole outputs or none, no silent overwrite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from simsearch.utils import fs
from simsearch.utils.fs import atomic_file, atomic_folder, write_bytes_atomic, write_json_atomic


def test_write_json_atomic_is_deterministic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "sub" / "meta.json", {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(FileExistsError, match="meta.json"):
        write_json_atomic(path, {})
    write_json_atomic(path, {"c": 3}, force=True)
    assert path.read_text() == '{\n  "c": 3\n}\n'


def test_atomic_write_gives_the_file_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "a.json", {})
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        os.umask(0o077)
        path = write_json_atomic(tmp_path / "b.json", {})
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_failing_block_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = write_bytes_atomic(tmp_path / "x.bin", b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_file(path, force=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


def test_a_failed_rename_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = write_bytes_atomic(tmp_path / "x.bin", b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fs.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(path, b"new", force=True)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


def test_atomic_folder_replaces_the_old_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_folder(out) as tmp:
        assert not (out / "b.txt").exists()  # the new build is not visible before the block ends
        (tmp / "b.txt").write_text("2")
        assert (out / "a.txt").read_text() == "1"
    assert sorted(os.listdir(out)) == ["b.txt"] and os.listdir(tmp_path) == ["run"]


def test_a_failing_folder_build_leaves_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("killed")
    assert sorted(os.listdir(out)) == ["a.txt"] and os.listdir(tmp_path) == ["run"]
