"""`cfd index scan`: incremental indexing of the models directory (core/store/scan.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cfd.core.errors import ConfigError
from cfd.core.store.index import ModelIndex
from cfd.core.store.scan import index_file, is_candidate, scan_models
from helpers.manifest import make_model, short_hash_for


@pytest.fixture
def index(tmp_path: Path, models_dir: Path):  # type: ignore[no-untyped-def]
    with ModelIndex(tmp_path / "models.db", models_dir) as idx:
        yield idx


def test_first_scan_hashes_every_model(index: ModelIndex, models_dir: Path) -> None:
    a, _ = make_model(models_dir, "checkpoints/a.safetensors", 1, 4096)
    b, _ = make_model(models_dir, "loras/deep/b.safetensors", 2, 100)
    result = scan_models(index)
    assert (result.files, result.hashed, result.unchanged, result.removed, result.errors) == (2, 2, 0, 0, ())
    assert index.present([a, b]) == {a: "checkpoints/a.safetensors", b: "loras/deep/b.safetensors"}


def test_unchanged_files_are_not_read_again(index: ModelIndex, models_dir: Path) -> None:
    a, path = make_model(models_dir, "checkpoints/a.safetensors", 1, 4096)
    scan_models(index)
    before = path.stat()
    # Same size and mtime, different bytes: a scan that re-read the file would notice.
    path.write_bytes(os.urandom(4096))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = scan_models(index)
    assert (result.hashed, result.unchanged) == (0, 1)
    assert index.locations()["checkpoints/a.safetensors"].model_hash == a


def test_changed_file_gets_its_new_hash(index: ModelIndex, models_dir: Path) -> None:
    old, path = make_model(models_dir, "checkpoints/a.safetensors", 1, 4096)
    scan_models(index)
    new, _ = make_model(models_dir, "checkpoints/a.safetensors", 2, 5000)
    result = scan_models(index)
    assert result.hashed == 1
    assert index.present([old, new]) == {new: "checkpoints/a.safetensors"}


def test_vanished_files_lose_their_locations(index: ModelIndex, models_dir: Path) -> None:
    a, path = make_model(models_dir, "checkpoints/a.safetensors", 1, 64)
    b, _ = make_model(models_dir, "vae/b.safetensors", 2, 64)
    scan_models(index)
    path.unlink()
    result = scan_models(index)
    assert result.removed == 1
    assert set(index.locations()) == {"vae/b.safetensors"}
    assert index.has_model(a)  # the models row stays, as ComfyDock keeps it


def test_renamed_file_is_the_same_model_at_a_new_place(index: ModelIndex, models_dir: Path) -> None:
    a, path = make_model(models_dir, "checkpoints/a.safetensors", 1, 64)
    scan_models(index)
    path.rename(models_dir / "checkpoints" / "renamed.safetensors")
    result = scan_models(index)
    assert (result.hashed, result.removed) == (1, 1)
    assert index.present([a]) == {a: "checkpoints/renamed.safetensors"}


@pytest.mark.parametrize(
    "relpath",
    [
        ".cfd/staging/abc.part",  # cfd's own staging area
        ".hidden/model.safetensors",
        "checkpoints/.model.safetensors",
        "checkpoints/model.safetensors.part",
        "checkpoints/model.safetensors.crdownload",
        "checkpoints/model.safetensors.aria2",
        "checkpoints/README.md",
        "checkpoints/preview.png",
        "checkpoints/model.json",
        "checkpoints/tiny.safetensors",  # below 8 bytes
    ],
)
def test_not_models_are_skipped(index: ModelIndex, models_dir: Path, relpath: str) -> None:
    path = models_dir / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"1234" if "tiny" in relpath else os.urandom(64))
    assert scan_models(index).files == 0
    assert index.locations() == {}


def test_candidate_names() -> None:
    assert is_candidate("model.safetensors") and is_candidate("model.ckpt") and is_candidate("pytorch_model.bin")
    assert is_candidate("model.GGUF") and is_candidate("no_extension")
    assert not is_candidate("MODEL.SAFETENSORS.PART") and not is_candidate(".DS_Store")


def test_symlinked_folders_are_followed_without_looping(index: ModelIndex, models_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "big-disk"
    a, _ = make_model(shared, "a.safetensors", 1, 64)
    (models_dir / "checkpoints").symlink_to(shared, target_is_directory=True)
    (shared / "loop").symlink_to(models_dir, target_is_directory=True)  # a cycle
    result = scan_models(index)
    assert result.files == 1
    assert index.present([a]) == {a: "checkpoints/a.safetensors"}


def test_file_that_cannot_be_read_is_reported_and_the_rest_indexed(index: ModelIndex, models_dir: Path) -> None:
    """A file that vanishes between the walk and its hashing (root reads any mode, so
    this is how a read failure is made on every machine) is one error, not a crash."""
    a, _ = make_model(models_dir, "a.safetensors", 1, 64)
    _, doomed = make_model(models_dir, "b.safetensors", 2, 64)

    def vanish(relative_path: str) -> None:
        if relative_path == "b.safetensors":
            doomed.unlink()

    result = scan_models(index, progress=vanish)
    assert index.present([a]) == {a: "a.safetensors"}
    assert len(result.errors) == 1 and result.errors[0].startswith("b.safetensors")


def test_file_still_being_written_is_not_indexed(index: ModelIndex, models_dir: Path) -> None:
    """A file that changes while it is hashed must not be recorded with a stale hash."""
    _, path = make_model(models_dir, "a.safetensors", 1, 64)
    stale = path.stat()
    path.write_bytes(os.urandom(128))  # grew after the walk saw it
    with pytest.raises(OSError):
        index_file(index, "a.safetensors", stale)
    assert index.locations() == {}


def test_index_file_matches_comfydock_hash(index: ModelIndex, models_dir: Path) -> None:
    data = b"abcdefghij"
    (models_dir / "t.safetensors").write_bytes(data)
    assert index_file(index, "t.safetensors") == short_hash_for(data) == "7bc234d9c29950da"


def test_missing_models_dir_is_an_error_and_the_index_is_kept(index: ModelIndex, models_dir: Path, tmp_path: Path) -> None:
    """An unmounted drive must not look like a folder whose models were all deleted."""
    a, _ = make_model(models_dir, "checkpoints/a.safetensors", 1, 64)
    scan_models(index)
    models_dir.rename(tmp_path / "unmounted")
    with pytest.raises(ConfigError) as caught:
        scan_models(index)
    assert str(models_dir) in caught.value.message
    assert set(index.locations()) == {"checkpoints/a.safetensors"}
    (tmp_path / "unmounted").rename(models_dir)
    assert index.present([a]) == {a: "checkpoints/a.safetensors"}
