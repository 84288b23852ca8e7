"""Keep the index in step with the models directory, from watchdog events.

The observer thread only translates events into small ops on an inbox
(modelevents.py); one worker thread owns the SQLite connection and does everything else:
- new or rewritten files wait in `pending` until their writes are over: size and
  mtime unchanged for `settle` seconds and, where the platform reports it
  (inotify), the writer has closed the file (`open_timeout` covers a close event
  we never saw). Bursts collapse into one pass; hashing is paced by a byte budget;
- a moved file whose size and mtime match its indexed location keeps its hash:
  only the location row changes (no re-read);
- a deleted file (or a folder deleted or moved out) loses its location.
"""

from __future__ import annotations

import logging
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cfd.core.store.index import Location, ModelIndex
from cfd.core.store.scan import MIN_MODEL_SIZE, PruneRefused, guard_pruning, index_file, walk_models

from .modelevents import EVENT_TYPES, ModelEventHandler, Op, visible
from .statusfile import StatusBoard

log = logging.getLogger("cfd.agent")

SAMPLED_BYTES = 15 * 1024 * 1024  # the most a short hash reads from one file


@dataclass
class _Pending:
    signature: tuple[int, int] | None  # (size, mtime_ns) when last looked at
    changed: float  # monotonic time of the last sign of writing
    closed: bool  # no write seen since the last close (or it was moved in whole)


class _Pacer:
    """Token bucket over bytes read for hashing, so a burst cannot hog the disk."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.rate, self.stop = rate, stop
        self.tokens, self.last = rate, time.monotonic()

    def take(self, amount: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < amount:
            self.stop.wait((amount - self.tokens) / self.rate)
            self.tokens, self.last = 0.0, time.monotonic()
        else:
            self.tokens -= amount


class ModelsWatcher:
    def __init__(
        self,
        models_dir: Path,
        open_index: Callable[[], ModelIndex],
        board: StatusBoard,
        *,
        settle: float = 1.0,
        open_timeout: float = 30.0,
        hash_rate: float = 256 * 1024 * 1024,
        on_indexed: Callable[[ModelIndex, str, str], None] | None = None,
        on_scan_done: Callable[[ModelIndex], None] | None = None,
        on_root_gone: Callable[[], None] | None = None,
        on_batch_done: Callable[[ModelIndex], None] | None = None,
    ) -> None:
        self.models_dir = models_dir
        self._open_index = open_index
        self.board = board
        self.settle = settle
        self.open_timeout = max(open_timeout, settle)
        self.tick = max(0.05, min(0.25, settle / 4))
        self.on_indexed = on_indexed or (lambda index, model_hash, relative_path: None)
        self.on_scan_done = on_scan_done or (lambda index: None)
        self.on_root_gone = on_root_gone or (lambda: None)
        self.on_batch_done = on_batch_done or (lambda index: None)  # after each pass: act on what on_indexed saw, at once
        self._stop = threading.Event()
        self._pacer = _Pacer(hash_rate, self._stop)
        self._cond = threading.Condition()
        self._inbox: list[Op] = []
        self._pending: dict[str, _Pending] = {}
        self._index: ModelIndex | None = None
        self._signatures: dict[int, dict[tuple[int, float], list[Location]]] = {}
        self._shown_pending = -1
        self._thread = threading.Thread(target=self._run, name="cfd-models", daemon=True)

    # -- wiring -------------------------------------------------------------------------

    def schedule(self, observer) -> None:  # type: ignore[no-untyped-def]
        observer.schedule(ModelEventHandler(self), os.fspath(self.models_dir), recursive=True, event_filter=EVENT_TYPES)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def post(self, op: Op) -> None:
        with self._cond:
            self._inbox.append(op)
            self._cond.notify()

    # -- the worker ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._index = self._open_index()
            self.board.set(scan="running")
            try:
                self._initial_scan()
            finally:
                self.on_batch_done(self._index)
            self.board.set(scan="done")
            self.on_scan_done(self._index)
        except Exception as exc:  # noqa: BLE001 - the agent lives on; the error is shown
            log.exception("initial scan failed")
            self.board.error(f"initial scan failed: {exc}")
        while not self._stop.is_set():
            with self._cond:
                if not self._inbox:
                    self._cond.wait(self.tick if self._pending else None)
                batch, self._inbox = self._inbox, []
            if self._stop.is_set() or self._index is None:
                break
            try:
                self._apply(batch)
                self._settle()
                if len(self._pending) != self._shown_pending:
                    self._shown_pending = len(self._pending)
                    self.board.set(pending=self._shown_pending)  # files waiting for their writes to end
            except Exception as exc:  # noqa: BLE001
                log.exception("models watcher error")
                self.board.error(f"models watcher: {exc}")
            try:
                self.on_batch_done(self._index)
            except Exception as exc:  # noqa: BLE001
                log.exception("pending-list upkeep failed")
                self.board.error(f"pending-list upkeep: {exc}")
        if self._index is not None:
            self._index.close()

    def _initial_scan(self) -> None:
        """Catch up with what changed while no agent watched (stat-only for known files)."""
        assert self._index is not None
        known = self._index.locations()
        self._signatures = {}
        seen: set[str] = set()
        now_wall, now = time.time(), time.monotonic()
        for relative_path, info in walk_models(self.models_dir):
            if self._stop.is_set():
                return
            seen.add(relative_path)
            location = known.get(relative_path)
            if location and location.mtime == info.st_mtime and location.size == info.st_size:
                continue
            if now_wall - info.st_mtime > self.settle:
                self._hash(relative_path, info, known)
            else:
                self._mark(relative_path, now, closed=None)  # may still be written to
        gone = [path for path in known if path not in seen and visible(path) and not (self.models_dir / path).exists()]
        try:
            guard_pruning(self.models_dir, len(gone), len(known), len(seen), False, "run `cfd index scan --prune`, then restart the agent")
        except PruneRefused as exc:
            log.warning("initial scan: %s", exc)
            self.board.error(f"initial scan kept the index as it was: {exc}")
            return
        if gone:
            with self._index.transaction():
                for path in gone:
                    self._index.remove_location(path)
            self.board.incr("removed", len(gone))
            log.info("initial scan: %d indexed file(s) no longer exist", len(gone))

    def _mark(self, relative_path: str, now: float, closed: bool | None) -> None:
        entry = self._pending.get(relative_path)
        if entry is None:
            entry = self._pending[relative_path] = _Pending(None, now, True)
        entry.changed = now
        if closed is not None:
            entry.closed = closed

    def _apply(self, batch: list[Op]) -> None:
        now = time.monotonic()
        index_ops: list[Op] = []
        for kind, path, dest in batch:
            if kind in ("touch", "write", "close"):
                self._mark(path, now, {"touch": None, "write": False, "close": True}[kind])
            elif kind == "move":
                carried = self._pending.pop(path, None)
                self._pending.pop(dest, None)  # a folder walk may have seen it already under its new name
                if carried is not None:
                    self._pending[dest] = carried  # not indexed yet: it just has a new name
                index_ops.append((kind, path, dest))
            elif kind == "delete":
                self._pending.pop(path, None)
                index_ops.append((kind, path, dest))
            elif kind == "dir_delete":
                for pending_path in [p for p in self._pending if p.startswith(path + "/")]:
                    del self._pending[pending_path]
                index_ops.append((kind, path, dest))
            elif kind == "dir_new":
                # Files that landed before watchdog's watch on the new folder existed.
                for relative_path, _ in walk_models(self.models_dir / path):
                    self._mark(f"{path}/{relative_path}", now, closed=None)
        if index_ops:
            self._apply_index(index_ops, now)

    def _apply_index(self, ops: list[Op], now: float) -> None:
        assert self._index is not None
        index = self._index
        known = index.locations()
        moved: list[tuple[str, str]] = []
        removed = 0
        with index.transaction():
            for kind, path, dest in ops:
                if kind == "move":
                    location = known.pop(path, None)
                    if location is not None and dest not in self._pending and self._same_file(dest, location):
                        index.remove_location(path)
                        index.add_location(location.model_hash, dest, location.mtime)
                        known[dest] = Location(location.model_hash, dest, location.mtime, location.size)
                        moved.append((location.model_hash, dest))
                        log.info("moved %s -> %s (hash %s kept)", path, dest, location.model_hash)
                        continue
                    if location is not None and not (self.models_dir / path).exists():
                        index.remove_location(path)
                        removed += 1
                    self._mark(dest, now, closed=None)  # unknown or changed: hash it at its new place
                else:
                    prefix = path + "/"
                    doomed = [path] if kind == "delete" else [p for p in known if p.startswith(prefix)]
                    for gone in doomed:
                        if gone in known and not (self.models_dir / gone).exists():
                            index.remove_location(gone)
                            known.pop(gone)
                            removed += 1
                            log.info("removed %s from the index (file gone)", gone)
        if moved:
            self.board.incr("moved", len(moved))
        if removed:
            self.board.incr("removed", removed)
        for model_hash, dest in moved:
            self.on_indexed(index, model_hash, dest)

    def _same_file(self, relative_path: str, location: Location) -> bool:
        try:
            info = os.stat(self.models_dir / relative_path)
        except OSError:
            return False
        return info.st_size == location.size and info.st_mtime == location.mtime

    def _settle(self) -> None:
        now = time.monotonic()
        ready: list[tuple[str, os.stat_result]] = []
        for relative_path, entry in list(self._pending.items()):
            try:
                info = os.stat(self.models_dir / relative_path)
            except OSError:
                del self._pending[relative_path]  # gone again (its delete event follows)
                continue
            if not stat_mod.S_ISREG(info.st_mode):
                del self._pending[relative_path]
                continue
            signature = (info.st_size, info.st_mtime_ns)
            if signature != entry.signature:
                entry.signature, entry.changed = signature, now
                continue
            quiet = now - entry.changed
            if quiet >= self.settle and (entry.closed or quiet >= self.open_timeout):
                ready.append((relative_path, info))
        if not ready:
            return
        assert self._index is not None
        known = self._index.locations()
        self._signatures = {}
        for relative_path, info in ready:
            if self._stop.is_set():
                return
            del self._pending[relative_path]
            if info.st_size < MIN_MODEL_SIZE:
                continue
            location = known.get(relative_path)
            if location and location.size == info.st_size and location.mtime == info.st_mtime:
                self.on_indexed(self._index, location.model_hash, relative_path)  # indexed by someone else (the engine)
                continue
            try:
                self._hash(relative_path, info, known)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stall the rest of the batch
                log.exception("cannot index %s", relative_path)
                self.board.error(f"cannot index {relative_path}: {exc}")

    def _adopt(self, relative_path: str, info: os.stat_result, known: dict[str, Location]) -> bool:
        """A file whose size and exact mtime match an indexed location whose file is gone
        is that file, moved (rename keeps mtime): take over its hash without reading it.
        Covers moves whose event came late, moves across folders made after the event,
        and moves made while no agent ran."""
        assert self._index is not None
        by_signature = self._signatures.get(id(known))
        if by_signature is None:
            by_signature = {}
            for indexed in known.values():
                by_signature.setdefault((indexed.size, indexed.mtime), []).append(indexed)
            self._signatures = {id(known): by_signature}  # one table per batch of locations
        candidates: list[Location] = by_signature.get((info.st_size, info.st_mtime)) or []
        for moved_from in candidates:
            still_indexed = id(known.get(moved_from.relative_path)) == id(moved_from)
            if moved_from.relative_path == relative_path or not still_indexed:
                continue
            if (self.models_dir / moved_from.relative_path).exists():
                continue
            with self._index.transaction():
                self._index.remove_location(moved_from.relative_path)
                self._index.add_location(moved_from.model_hash, relative_path, info.st_mtime)
            known.pop(moved_from.relative_path, None)
            known[relative_path] = Location(moved_from.model_hash, relative_path, info.st_mtime, info.st_size)
            self.board.incr("moved")
            log.info("moved %s -> %s (hash %s kept)", moved_from.relative_path, relative_path, moved_from.model_hash)
            self.on_indexed(self._index, moved_from.model_hash, relative_path)
            return True
        return False

    def _hash(self, relative_path: str, info: os.stat_result, known: dict[str, Location] | None = None) -> None:
        assert self._index is not None
        if known is not None and self._adopt(relative_path, info, known):
            return
        self._pacer.take(min(info.st_size, SAMPLED_BYTES))
        try:
            model_hash = index_file(self._index, relative_path, info)
        except OSError as exc:
            if (self.models_dir / relative_path).exists():
                self._mark(relative_path, time.monotonic(), closed=None)  # changed under us: try again later
            log.info("not indexed yet: %s (%s)", relative_path, exc.strerror or exc)
            return
        self.board.incr("hashed")
        log.info("indexed %s (%s)", relative_path, model_hash)
        self.on_indexed(self._index, model_hash, relative_path)
