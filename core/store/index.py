"""The local model index: ComfyDock's SQLite database (schema version 9), or ComfyGit's (10).

cfd reads and writes the same tables ComfyDock does, so either tool sees what
the other indexed. Rules kept from ComfyDock: `base_directory` is the resolved
models dir, `relative_path` uses forward slashes, `mtime` is the exact st_mtime.
We never change `schema_info` (ComfyDock rebuilds a database whose version it
does not expect) and never delete rows from `models` (ComfyDock does not
either): a model is present only through a location that exists on disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from . import index_v10
from ..dialect import BY_SCHEMA, COMFYDOCK, COMFYGIT, Dialect
from ..errors import IndexError_

SCHEMA_VERSION = 9
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    hash TEXT PRIMARY KEY,
    file_size INTEGER NOT NULL,
    blake3_hash TEXT,
    sha256_hash TEXT,
    first_seen INTEGER NOT NULL,
    metadata TEXT DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS model_locations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_hash TEXT NOT NULL,
    base_directory TEXT NOT NULL,
    relative_path TEXT NOT NULL,
    filename TEXT NOT NULL,
    mtime REAL NOT NULL,
    last_seen INTEGER NOT NULL,
    FOREIGN KEY (model_hash) REFERENCES models(hash) ON DELETE CASCADE,
    UNIQUE(base_directory, relative_path)
);
CREATE TABLE IF NOT EXISTS model_sources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_hash TEXT NOT NULL,
    source_type TEXT NOT NULL,
    source_url TEXT NOT NULL,
    metadata TEXT DEFAULT '{}',
    added_time INTEGER NOT NULL,
    FOREIGN KEY (model_hash) REFERENCES models(hash) ON DELETE CASCADE,
    UNIQUE(model_hash, source_url)
);
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER PRIMARY KEY); -- v9 only
CREATE INDEX IF NOT EXISTS idx_locations_hash ON model_locations(model_hash);
CREATE INDEX IF NOT EXISTS idx_locations_path ON model_locations(relative_path);
CREATE INDEX IF NOT EXISTS idx_locations_filename ON model_locations(filename);
CREATE INDEX IF NOT EXISTS idx_sources_hash ON model_sources(model_hash);
CREATE INDEX IF NOT EXISTS idx_sources_type ON model_sources(source_type);
CREATE INDEX IF NOT EXISTS idx_models_blake3 ON models(blake3_hash);
CREATE INDEX IF NOT EXISTS idx_models_sha256 ON models(sha256_hash);
"""


class Location(NamedTuple):
    model_hash: str
    relative_path: str
    mtime: float
    size: int


class IndexedModel(NamedTuple):
    hash: str
    size: int
    blake3: str | None
    sha256: str | None
    placed: list[tuple[Location, bool]]  # locations under this models dir, and whether the file is there at its size
    sources: list[str]

    @property
    def locations(self) -> list[Location]:
        return [location for location, _ in self.placed]


def source_type_for(url: str) -> str:
    """ComfyDock's source_type vocabulary."""
    host = url.split("://", 1)[-1].split("/", 1)[0].lower()
    if host.endswith("huggingface.co") or host.endswith("hf.co"):
        return "huggingface"
    if host.endswith("civitai.com"):
        return "civitai"
    return "custom"


class ModelIndex:
    """One models directory's view of a (possibly shared) index database."""

    def __init__(
        self, db_path: str | os.PathLike[str], models_dir: str | os.PathLike[str], dialect: Dialect | None = None
    ) -> None:
        """`dialect` is the environment's: an index of the other one is refused (its hashes
        would never match, and the other tool would drop its tables). None: the file's own."""
        self.db_path = Path(db_path)
        self.dialect = dialect or COMFYDOCK
        from ..environment import require_models_dir

        self.models_dir = require_models_dir(models_dir)  # else the mkdir below would create it
        self.base_directory = str(self.models_dir.resolve())
        self._root = str(self.models_dir)
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._ensure_schema(dialect)
        except sqlite3.DatabaseError as exc:
            raise IndexError_(
                f"cannot open the model index {self.db_path}: {exc}",
                "check the path (cfd.index / CFD_INDEX) and that the file is a SQLite database",
            ) from None
        except OSError as exc:
            raise IndexError_(f"cannot create the model index {self.db_path}: {exc.strerror}", "check cfd.index") from None

    def _ensure_schema(self, wanted: Dialect | None) -> None:
        conn = self._conn
        existing = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_info" in existing:
            row = conn.execute("SELECT version FROM schema_info LIMIT 1").fetchone()
            if row is not None:
                found = BY_SCHEMA.get(row[0]) if isinstance(row[0], int) else None
                if found is None:
                    raise IndexError_(
                        f"the model index {self.db_path} has schema version {row[0]!r}; cfd understands 9 (ComfyDock) and 10 (ComfyGit)",
                        "let its tool upgrade it, or point cfd.index at another file",
                    )
                if wanted is not None and found is not wanted:
                    raise IndexError_(
                        f"the model index {self.db_path} is a {found.title} index (schema {found.index_schema}) "
                        f"but this environment is {wanted.title} (schema {wanted.index_schema}): its hashes never match",
                        f"use the {wanted.title} workspace's index, or point cfd.index at another file",
                    )
                self.dialect = found
        tables = {"models", "model_locations", "model_sources"} | ({"schema_info"} if self.dialect is COMFYDOCK else set())
        if tables <= existing:
            self._wal()
            return
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip() and (self.dialect is COMFYDOCK or "schema_info" not in statement):
                    conn.execute(statement)
            fresh = "models" not in existing  # a version row goes only into an index cfd creates
            if fresh and self.dialect is COMFYDOCK and conn.execute("SELECT COUNT(*) FROM schema_info").fetchone()[0] == 0:
                conn.execute("INSERT INTO schema_info (version) VALUES (?)", (SCHEMA_VERSION,))
        self._wal()

    @property
    def short_hash(self) -> str:
        """The algorithm of this index's `models.hash` keys."""
        return self.dialect.short_hash

    def _wal(self) -> None:
        # WAL lets the agent write while `cfd status` and ComfyDock read.
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            pass  # busy right now, or a filesystem without shared memory: rollback journal still works

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ModelIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------

    def locations(self) -> dict[str, Location]:
        """Every indexed location under this models dir, by relative path."""
        rows = self._conn.execute(
            "SELECT l.model_hash, l.relative_path, l.mtime, m.file_size FROM model_locations l "
            "JOIN models m ON m.hash = l.model_hash WHERE l.base_directory = ?",
            (self.base_directory,),
        )
        return {row[1]: Location(row[0], row[1], row[2], row[3]) for row in rows}

    def locations_of(self, hashes: Iterable[str]) -> dict[str, list[Location]]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, list[Location]] = {}
        query = (
            "SELECT l.model_hash, l.relative_path, l.mtime, m.file_size FROM model_locations l "
            "JOIN models m ON m.hash = l.model_hash WHERE +l.base_directory = ? AND l.model_hash IN ({})"
        )  # unary +: look rows up by hash, not by scanning every location of the directory per batch
        if len(wanted) > 2000:
            # Most of the directory anyway (`cfd status`): one pass over it is cheaper.
            wanted_set = set(wanted)
            rows = self._conn.execute(
                "SELECT l.model_hash, l.relative_path, l.mtime, m.file_size FROM model_locations l "
                "JOIN models m ON m.hash = l.model_hash WHERE l.base_directory = ?",
                (self.base_directory,),
            )
            for row in rows:
                if row[0] in wanted_set:
                    found.setdefault(row[0], []).append(Location(*row))
            return found
        for start in range(0, len(wanted), 500):
            batch = wanted[start : start + 500]
            rows = self._conn.execute(query.format(",".join("?" * len(batch))), (self.base_directory, *batch))
            for row in rows:
                found.setdefault(row[0], []).append(Location(*row))
        return found

    def present(self, hashes: Iterable[str]) -> dict[str, str]:
        """hash -> relative path, for hashes with an indexed file that still exists at its size."""
        result: dict[str, str] = {}
        for model_hash, locations in self.locations_of(hashes).items():
            for location in locations:
                if self._exists(location):
                    result[model_hash] = location.relative_path
                    break
        return result

    def _exists(self, location: Location) -> bool:
        try:
            return os.stat(os.path.join(self._root, location.relative_path)).st_size == location.size
        except OSError:
            return False

    def present_by_source(self, urls: Iterable[str]) -> dict[str, str]:
        """source url -> relative path, for downloads remembered by their URL (intents).

        model_sources has no index on source_url: a query per URL scans the table each time
        (quadratic with 20,000 intents), so URLs are looked up in batches, and a long list
        in one pass over the sources of this directory.
        """
        wanted = list(dict.fromkeys(urls))
        result: dict[str, str] = {}
        if not wanted:
            return result
        select = (
            "SELECT s.source_url, l.model_hash, l.relative_path, l.mtime, m.file_size FROM model_sources s "
            "JOIN models m ON m.hash = s.model_hash JOIN model_locations l ON l.model_hash = s.model_hash "
            "WHERE l.base_directory = ?"
        )
        if len(wanted) > 2000:
            wanted_set = set(wanted)
            batches = [(select, (self.base_directory,))]
        else:
            wanted_set = None
            batches = [
                (f"{select} AND s.source_url IN ({','.join('?' * len(batch))})", (self.base_directory, *batch))
                for batch in (wanted[start : start + 500] for start in range(0, len(wanted), 500))
            ]
        for query, parameters in batches:
            for url, *location in self._conn.execute(query, parameters):
                if url in result or (wanted_set is not None and url not in wanted_set):
                    continue
                if self._exists(Location(*location)):
                    result[url] = location[1]
        return result

    def models_here(self) -> list[IndexedModel]:
        """Every model with a location under this models dir (`cfd index list`), by path."""
        rows = self._conn.execute(
            "SELECT DISTINCT l.model_hash FROM model_locations l WHERE l.base_directory = ?", (self.base_directory,)
        )
        found = [self.model(row[0]) for row in rows]
        return sorted((m for m in found if m is not None), key=lambda m: (m.locations[0].relative_path if m.locations else "", m.hash))

    def matching_hashes(self, prefix: str) -> list[str]:
        """Hashes in the index that start with `prefix` (a user may type only the first few characters)."""
        escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._conn.execute("SELECT hash FROM models WHERE hash LIKE ? ESCAPE '\\' ORDER BY hash LIMIT 50", (escaped + "%",))
        return [row[0] for row in rows]

    def model(self, model_hash: str) -> IndexedModel | None:
        """One model: its digests, where it lies under this models dir (and whether it is there), its sources."""
        row = self.model_row(model_hash)
        if row is None:
            return None
        locations = sorted(self.locations_of([model_hash]).get(model_hash, []), key=lambda location: location.relative_path)
        return IndexedModel(
            model_hash,
            row[0],
            row[1],
            row[2],
            [(location, self._exists(location)) for location in locations],
            self.sources_of(model_hash),
        )

    def has_model(self, model_hash: str) -> bool:
        """ComfyDock's meaning: a row exists (proves nothing about the disk)."""
        return self._conn.execute("SELECT 1 FROM models WHERE hash = ?", (model_hash,)).fetchone() is not None

    def model_row(self, model_hash: str) -> tuple[int, str | None, str | None] | None:
        row = self._conn.execute(
            "SELECT file_size, blake3_hash, sha256_hash FROM models WHERE hash = ?", (model_hash,)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def sources_of(self, model_hash: str) -> list[str]:
        rows = self._conn.execute("SELECT source_url FROM model_sources WHERE model_hash = ? ORDER BY id", (model_hash,))
        return [row[0] for row in rows]

    # -- writing -----------------------------------------------------------

    def add_model(
        self, model_hash: str, size: int, blake3_hash: str | None = None, sha256_hash: str | None = None
    ) -> None:
        conn = self._conn
        conn.execute(
            "INSERT OR IGNORE INTO models (hash, file_size, blake3_hash, sha256_hash, first_seen, metadata) "
            "VALUES (?, ?, ?, ?, ?, '{}')",
            (model_hash, size, blake3_hash, sha256_hash, int(time.time())),
        )
        if blake3_hash:
            conn.execute("UPDATE models SET blake3_hash = ? WHERE hash = ? AND blake3_hash IS NULL", (blake3_hash, model_hash))
        if sha256_hash:
            conn.execute("UPDATE models SET sha256_hash = ? WHERE hash = ? AND sha256_hash IS NULL", (sha256_hash, model_hash))

    def add_location(self, model_hash: str, relative_path: str, mtime: float) -> None:
        relative_path = relative_path.replace("\\", "/")
        self._conn.execute(
            "INSERT OR REPLACE INTO model_locations "
            "(model_hash, base_directory, relative_path, filename, mtime, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
            (model_hash, self.base_directory, relative_path, relative_path.rsplit("/", 1)[-1], mtime, int(time.time())),
        )

    def remove_location(self, relative_path: str) -> None:
        self._conn.execute(
            "DELETE FROM model_locations WHERE base_directory = ? AND relative_path = ?",
            (self.base_directory, relative_path.replace("\\", "/")),
        )

    def add_source(self, model_hash: str, url: str, metadata: dict[str, object] | None = None) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO model_sources (model_hash, source_type, source_url, metadata, added_time) "
            "VALUES (?, ?, ?, ?, ?)",
            (model_hash, self._source_type(url), url, json.dumps(metadata or {}), int(time.time())),
        )

    def _source_type(self, url: str) -> str:
        return index_v10.source_type(url) if self.dialect is COMFYGIT else source_type_for(url)

    def record_file(
        self,
        model_hash: str,
        relative_path: str,
        *,
        size: int,
        mtime: float,
        source_url: str | None = None,
        blake3_hash: str | None = None,
        sha256_hash: str | None = None,
    ) -> None:
        """One atomic write: the model, where it lies, and where it came from."""
        with self.transaction():
            self.add_model(model_hash, size, blake3_hash, sha256_hash)
            self.add_location(model_hash, relative_path, mtime)
            if source_url:
                self.add_source(model_hash, source_url)
