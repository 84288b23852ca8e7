"""core/files.py: the one atomic write and the one no-clobber move."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cfd.core.files import move_no_clobber, remove_temps, temp_beside, write_atomic


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_atomic_replaces_the_file_and_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "pyproject.toml"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    write_atomic(target, "new\r\nline\n")
    assert target.read_bytes() == b"new\r\nline\n"  # newlines written as given, on every system
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    write_atomic(target, b"bytes", durable=False, mode=0o755)
    assert target.read_bytes() == b"bytes" and stat.S_IMODE(target.stat().st_mode) == 0o755
    assert _leftovers(tmp_path) == []


def test_a_failed_check_leaves_the_file_untouched_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "pending.json"
    target.write_text("kept")

    def edited_meanwhile() -> None:
        raise RuntimeError("changed while we worked")

    with pytest.raises(RuntimeError):
        write_atomic(target, "lost", check=edited_meanwhile)
    assert target.read_text() == "kept"
    assert _leftovers(tmp_path) == []


def test_a_write_into_a_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no-such-dir" / "last-synced", "abc\n")
    assert list(tmp_path.iterdir()) == []


def test_temps_of_killed_writers_are_removed_and_only_theirs(tmp_path: Path) -> None:
    target = tmp_path / "pending.json"
    stale = temp_beside(target)
    stale.write_text('{"version": 1, "entr')
    other = temp_beside(tmp_path / "last-synced")
    other.write_text("x")
    remove_temps(target)
    assert not stale.exists() and other.exists()


def test_move_no_clobber_moves_and_never_replaces(tmp_path: Path) -> None:
    source, target = tmp_path / "a.part", tmp_path / "model.safetensors"
    source.write_bytes(b"new")
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        move_no_clobber(source, target)
    assert target.read_bytes() == b"precious" and source.read_bytes() == b"new"
    target.unlink()
    move_no_clobber(source, target)
    assert target.read_bytes() == b"new" and not source.exists()


def test_move_no_clobber_moves_a_symlink_as_itself(tmp_path: Path) -> None:
    hook, legacy = tmp_path / "post-merge", tmp_path / "post-merge.legacy"
    hook.symlink_to("../scripts/missing-hook")  # relative and dangling: must stay exactly that
    move_no_clobber(hook, legacy)
    assert os.readlink(legacy) == "../scripts/missing-hook" and not os.path.lexists(hook)
    hook.write_text("#!/bin/sh\n")
    with pytest.raises(FileExistsError):
        move_no_clobber(legacy, hook)
    assert os.readlink(legacy) == "../scripts/missing-hook"


def test_move_no_clobber_across_file_systems(tmp_path: Path) -> None:
    other_fs = Path("/dev/shm")
    if not other_fs.is_dir() or other_fs.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the temp dir")
    source = other_fs / f"cfd-test-{os.getpid()}.part"
    source.write_bytes(b"weights")
    try:
        target = tmp_path / "model.safetensors"
        move_no_clobber(source, target)
        assert target.read_bytes() == b"weights" and not source.exists()
        assert _leftovers(tmp_path) == []
    finally:
        source.unlink(missing_ok=True)
