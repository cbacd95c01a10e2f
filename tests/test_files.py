"""The one atomic write: content, durability, and nothing half-written after a failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine._files import (
    atomic_writer,
    fsync_dir,
    move_into_place,
    sha256_file,
    temp_sibling,
    write_bytes_atomic,
    write_text_atomic,
)
from engine.errors import InputError


def test_text_and_bytes_are_written_and_replaced(tmp_path: Path) -> None:
    text = tmp_path / "report.md"
    assert write_text_atomic(text, "first\n") == text
    assert write_text_atomic(text, "second: € ünïcode\n") == text
    assert text.read_text(encoding="utf-8") == "second: € ünïcode\n"
    blob = tmp_path / "model.onnx"
    write_bytes_atomic(blob, b"\x00\x01" * 1000)
    write_bytes_atomic(blob, b"\xff")
    assert blob.read_bytes() == b"\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "report.md"]


def test_streamed_writes_arrive_whole(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    with atomic_writer(target, "wb") as handle:
        for block in range(10):
            handle.write(bytes([block]) * 4096)
    assert target.stat().st_size == 40960
    assert target.read_bytes()[4096 * 9] == 9


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="checksum"):
        with atomic_writer(target) as handle:
            handle.write("new, but only half of it")
            raise RuntimeError("checksum mismatch")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failing_first_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model.int8.onnx"
    with pytest.raises(KeyboardInterrupt):
        with atomic_writer(target, "wb") as handle:
            handle.write(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_readers_see_the_old_file_until_the_new_one_is_complete(tmp_path: Path) -> None:
    target = tmp_path / "stamp.json"
    target.write_text("old", encoding="utf-8")
    reader = open(target, encoding="utf-8")
    with atomic_writer(target) as handle:
        handle.write("new")
        handle.flush()
        assert target.read_text(encoding="utf-8") == "old"  # not touched while being written
        assert temp_sibling(target).parent == tmp_path  # same folder: the rename is atomic
    assert target.read_text(encoding="utf-8") == "new"
    assert reader.read() == "old"  # a reader that opened the old file keeps reading it whole
    reader.close()


def test_the_data_and_the_folder_are_fsynced_around_the_rename(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text_atomic(tmp_path / "manifest.json", "{}")
    assert events == ["fsync file", "replace", "fsync folder"]


def test_only_write_modes_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="'w' \\(text\\) or 'wb' \\(bytes\\)"):
        with atomic_writer(tmp_path / "x", "a"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_fsync_dir_and_sha256(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    path = write_bytes_atomic(tmp_path / "abc", b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_file_written_by_a_library_is_moved_into_place_durably(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "adapter.gguf"
    target.write_bytes(b"old")
    staged = temp_sibling(target)
    staged.write_bytes(b"GGUF new")  # as a library that takes a path would write it
    synced: list[bool] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real_fsync(fd)))
    assert move_into_place(staged, target) == target
    assert target.read_bytes() == b"GGUF new"
    assert synced == [False, True]  # the data, then the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf"]
    with pytest.raises(FileNotFoundError):
        move_into_place(staged, target)  # nothing staged: the old file stays
    assert target.read_bytes() == b"GGUF new"
