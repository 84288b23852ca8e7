"""The ComfyDock-compatible SQLite model index (core/store/index.py)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from cfd.core.errors import IndexError_
from cfd.core.store.index import SCHEMA_VERSION, ModelIndex, source_type_for
from helpers.manifest import make_model

H1, H2 = "dcf5f306c2a63465", "0123456789abcdef"


@pytest.fixture
def index(tmp_path: Path, models_dir: Path):  # type: ignore[no-untyped-def]
    with ModelIndex(tmp_path / "cache" / "models.db", models_dir) as idx:
        yield idx


def put(index: ModelIndex, relpath: str, seed: int = 1, size: int = 64, **kwargs: object) -> str:
    """Write a model file and record it, as a scan or a download would."""
    model_hash, path = make_model(index.models_dir, relpath, seed, size)
    stat = path.stat()
    index.record_file(model_hash, relpath, size=stat.st_size, mtime=stat.st_mtime, **kwargs)  # type: ignore[arg-type]
    return model_hash


def test_new_index_has_the_comfydock_schema(tmp_path: Path, models_dir: Path) -> None:
    db = tmp_path / "deep" / "dir" / "models.db"
    ModelIndex(db, models_dir).close()
    conn = sqlite3.connect(db)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"models", "model_locations", "model_sources", "schema_info"} <= tables
    assert conn.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)] == [(9,)]
    columns = {row[1] for row in conn.execute("PRAGMA table_info(model_locations)")}
    assert columns == {"id", "model_hash", "base_directory", "relative_path", "filename", "mtime", "last_seen"}
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # readers never block the agent


def test_present_needs_the_file_on_disk_at_its_indexed_size(index: ModelIndex) -> None:
    model_hash = put(index, "checkpoints/a.safetensors")
    assert index.present([model_hash, H2]) == {model_hash: "checkpoints/a.safetensors"}
    path = index.models_dir / "checkpoints" / "a.safetensors"
    path.write_bytes(b"x" * 10)  # truncated / replaced by something else
    assert index.present([model_hash]) == {}
    path.unlink()
    assert index.present([model_hash]) == {}
    # ComfyDock never deletes rows from `models`: the row proves nothing.
    assert index.has_model(model_hash)


def test_a_second_location_keeps_the_model_present(index: ModelIndex) -> None:
    model_hash = put(index, "checkpoints/a.safetensors", seed=3)
    assert put(index, "backup/a.safetensors", seed=3) == model_hash
    (index.models_dir / "checkpoints" / "a.safetensors").unlink()
    assert index.present([model_hash]) == {model_hash: "backup/a.safetensors"}


def test_locations_under_another_models_dir_do_not_count(tmp_path: Path, models_dir: Path) -> None:
    db = tmp_path / "models.db"
    other = tmp_path / "other-models"
    other.mkdir()  # cfd never creates a models dir
    with ModelIndex(db, other) as elsewhere:
        model_hash = put(elsewhere, "checkpoints/a.safetensors")
    with ModelIndex(db, models_dir) as here:
        assert here.present([model_hash]) == {}
        assert here.locations() == {}
        assert here.has_model(model_hash)


def test_models_dir_is_stored_resolved_and_paths_with_forward_slashes(tmp_path: Path, models_dir: Path) -> None:
    link = tmp_path / "models-link"
    link.symlink_to(models_dir)
    with ModelIndex(tmp_path / "models.db", link) as index:
        model_hash, path = make_model(models_dir, "loras/sub/b.safetensors", 2, 32)
        index.record_file(model_hash, "loras\\sub\\b.safetensors", size=32, mtime=path.stat().st_mtime)
        assert index.present([model_hash]) == {model_hash: "loras/sub/b.safetensors"}
    row = sqlite3.connect(tmp_path / "models.db").execute(
        "SELECT base_directory, relative_path, filename FROM model_locations"
    ).fetchone()
    assert row == (str(models_dir.resolve()), "loras/sub/b.safetensors", "b.safetensors")


def test_mtime_is_stored_exactly(index: ModelIndex) -> None:
    put(index, "vae/v.safetensors")
    path = index.models_dir / "vae" / "v.safetensors"
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    stat = path.stat()
    index.record_file(index.locations()["vae/v.safetensors"].model_hash, "vae/v.safetensors", size=stat.st_size, mtime=stat.st_mtime)
    assert index.locations()["vae/v.safetensors"].mtime == stat.st_mtime


def test_sources_remember_downloads_by_url(index: ModelIndex) -> None:
    url = "https://civitai.com/api/download/models/12345"
    model_hash = put(index, "loras/l.safetensors", source_url=url)
    assert index.present_by_source([url, "https://example.com/other"]) == {url: "loras/l.safetensors"}
    assert index.sources_of(model_hash) == [url]
    put(index, "loras/l.safetensors", source_url=url)  # recording twice keeps one source row
    assert index.sources_of(model_hash) == [url]
    (index.models_dir / "loras" / "l.safetensors").unlink()
    assert index.present_by_source([url]) == {}


def test_source_types_use_comfydock_vocabulary() -> None:
    assert source_type_for("https://huggingface.co/a/b/resolve/main/x") == "huggingface"
    assert source_type_for("https://civitai.com/api/download/models/1") == "civitai"
    assert source_type_for("https://example.com/x") == "custom"


def test_full_digests_fill_in_but_never_overwrite(index: ModelIndex) -> None:
    model_hash = put(index, "a.safetensors")
    index.record_file(model_hash, "a.safetensors", size=64, mtime=1.0, blake3_hash="b3", sha256_hash="s2")
    index.record_file(model_hash, "a.safetensors", size=64, mtime=1.0, blake3_hash="other", sha256_hash="other")
    assert index.model_row(model_hash) == (64, "b3", "s2")


def test_remove_location_keeps_the_model_row(index: ModelIndex) -> None:
    model_hash = put(index, "a.safetensors")
    with index.transaction():
        index.remove_location("a.safetensors")
    assert index.locations() == {}
    assert index.has_model(model_hash)


def test_failed_transaction_rolls_back(index: ModelIndex) -> None:
    with pytest.raises(RuntimeError):
        with index.transaction():
            index.add_model(H1, 10)
            raise RuntimeError("boom")
    assert not index.has_model(H1)


def test_other_schema_version_is_refused_and_left_alone(tmp_path: Path, models_dir: Path) -> None:
    db = tmp_path / "models.db"
    ModelIndex(db, models_dir).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_info SET version = 8")
    conn.commit()
    conn.close()
    with pytest.raises(IndexError_) as caught:
        ModelIndex(db, models_dir)
    assert "schema version 8" in caught.value.message and caught.value.hint
    assert sqlite3.connect(db).execute("SELECT version FROM schema_info").fetchall() == [(8,)]


def test_not_a_database_is_a_clear_error(tmp_path: Path, models_dir: Path) -> None:
    db = tmp_path / "models.db"
    db.write_text("this is not sqlite, just a text file that is long enough to have a header" * 20)
    with pytest.raises(IndexError_) as caught:
        ModelIndex(db, models_dir)
    assert str(db) in caught.value.message
    assert "cfd.index" in (caught.value.hint or "")


def test_index_path_that_cannot_be_created_is_a_clear_error(tmp_path: Path, models_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IndexError_) as caught:
        ModelIndex(blocker / "sub" / "models.db", models_dir)
    assert "cannot create the model index" in caught.value.message


def test_reader_is_not_blocked_by_a_writer(tmp_path: Path, models_dir: Path) -> None:
    """WAL: `cfd status` reads while the agent holds a write transaction."""
    db = tmp_path / "models.db"
    with ModelIndex(db, models_dir) as writer, ModelIndex(db, models_dir) as reader:
        model_hash = put(writer, "a.safetensors")
        with writer.transaction():
            writer.remove_location("a.safetensors")
            started = time.monotonic()
            assert reader.present([model_hash]) == {model_hash: "a.safetensors"}  # last committed state
            assert time.monotonic() - started < 1.0
        assert reader.present([model_hash]) == {}


def test_second_writer_waits_instead_of_failing(tmp_path: Path, models_dir: Path) -> None:
    db = tmp_path / "models.db"
    ModelIndex(db, models_dir).close()
    holding = threading.Event()
    errors: list[BaseException] = []

    def write_slowly() -> None:  # another process, say the agent, in the middle of a write
        try:
            with ModelIndex(db, models_dir) as first, first.transaction():
                first.add_model(H1, 1)
                holding.set()
                time.sleep(0.3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            holding.set()

    thread = threading.Thread(target=write_slowly)
    thread.start()
    assert holding.wait(5)
    with ModelIndex(db, models_dir) as second:
        second.add_model(H2, 2)  # waits for the lock (busy timeout), then succeeds
        thread.join()
        assert not errors
        assert second.has_model(H1) and second.has_model(H2)
