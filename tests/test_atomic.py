"""Atomic writes: all or nothing, usual permissions, nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from unisrec.atomic import atomic_directory, atomic_write_text


def test_atomic_write_replaces_and_has_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def explode(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    from unisrec.atomic import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_directory_swaps_whole_folders(tmp_path: Path) -> None:
    target = tmp_path / "d"
    with atomic_directory(target, replace=False) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), atomic_directory(target, replace=True) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask


def test_a_folder_is_on_disk_before_it_replaces_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of the new folder, and the folders themselves, are flushed (fsync) before the rename that makes
    them the real ones and the deletion of the old ones: a power loss left empty files (a checkpoint's state.json,
    a prepared dataset's parquet files) with the previous version already gone."""
    from unisrec import atomic

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), tmp_path))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    target = tmp_path / "d"
    target.mkdir()
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with atomic.atomic_directory(target, replace=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "state.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"weights")
    first_replace = next(i for i, e in enumerate(events) if e.startswith("replace"))
    flushed = {e.split("/", 1)[1] for e in events[:first_replace] if e.startswith("fsync ") and "/" in e}
    assert flushed >= {"sub/state.json", "model.safetensors", "sub"}, events
    assert (target / "sub" / "state.json").read_text() == "{}"


def test_failed_final_rename_restores_the_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from unisrec import atomic

    target = tmp_path / "d"
    target.mkdir()
    (target / "a").write_text("old")
    real = os.replace
    calls = []

    def flaky(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the new folder's rename into place
            raise OSError(28, "No space left on device")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError, match="No space"), atomic.atomic_directory(target, replace=True) as tmp:
        (tmp / "b").write_text("new")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and (target / "a").read_text() == "old"


def test_clean_stale_removes_leftovers_and_restores_a_swapped_out_folder(tmp_path: Path) -> None:
    from unisrec.atomic import clean_stale

    target = tmp_path / "out"
    (tmp_path / ".out.abc.tmp").mkdir()
    (tmp_path / ".out.abc.tmp" / "half").write_text("x")
    (tmp_path / ".out.def.tmp").write_text("partial file")
    old = tmp_path / ".out.ghi.old"  # killed between the two renames: the previous version waits here
    old.mkdir()
    (old / "a").write_text("previous")
    (tmp_path / ".other.jkl.tmp").write_text("not ours")
    (tmp_path / ".out.v2.mno12345.tmp").mkdir()  # a live write of "out.v2", a dataset named with a dot: not ours
    (tmp_path / ".out.v2.pqr67890.old").mkdir()
    removed = clean_stale(target)
    assert len(removed) == 2 and (target / "a").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.jkl.tmp", ".out.v2.mno12345.tmp",
                                                          ".out.v2.pqr67890.old", "out"]
