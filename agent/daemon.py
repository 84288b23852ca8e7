"""The agent process: one lock, one observer, three workers, a status file, a log.

`Agent.run()` blocks until SIGTERM/SIGINT/SIGHUP. Shutdown cancels downloads
first (the engine leaves resumable `.part` files and sync_models marks them
`interrupted`), then stops the watchers; every index write is one SQLite
transaction and every marker write an atomic rename, so whatever moment the
signal lands, both are consistent.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfd.core.environment import Environment
from cfd.core.store.index import ModelIndex
from cfd.core.sync.marker import Marker
from cfd.core.text import sanitize, sanitize_block

from .lock import AgentLock
from .paths import AgentPaths, agent_paths, models_dir_lock
from .pendingview import PendingView
from .statusfile import StatusBoard

log = logging.getLogger("cfd.agent")

ALREADY_RUNNING = 3  # exit code of `run` when another agent holds the lock
LOG_BYTES, LOG_BACKUPS = 1024 * 1024, 3


@dataclass(frozen=True)
class AgentConfig:
    envs: tuple[Environment, ...]
    models_dir: Path
    index_path: Path
    settle: float = 1.0  # seconds a new file's size and mtime must hold still
    open_timeout: float = 30.0  # ... or this long when no close event was seen
    hash_rate: float = 256 * 1024 * 1024  # bytes/s read for hashing
    git_debounce: float = 1.0
    retry_base: float = 60.0
    max_rate: int = 0  # cfd.agent.maxRate
    console: bool = False  # also log to stderr (foreground `run`)
    paths: AgentPaths | None = field(default=None)

    def state_paths(self) -> AgentPaths:
        return self.paths or agent_paths(self.models_dir)


class _SanitizingFormatter(logging.Formatter):
    """Log lines quote file names and errors from manifests: one line each, no escape sequences."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return sanitize(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 - a traceback keeps its lines
        return sanitize_block(super().formatException(ei))


def setup_logging(paths: AgentPaths, console: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    formatter = _SanitizingFormatter("%(asctime)s %(levelname)s %(threadName)s %(message)s")
    handler = logging.handlers.RotatingFileHandler(paths.log, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(formatter)
    root.addHandler(handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)

    def excepthook(args: threading.ExceptHookArgs) -> None:
        log.error("thread %s died", args.thread.name if args.thread else "?", exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]

    threading.excepthook = excepthook


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.paths = config.state_paths()
        self._signal: int | None = None
        self._stop_reason: str | None = None
        self._views: dict[Path, PendingView] = {}  # per environment's git dir
        self._arrivals: dict[Path, tuple[list[tuple[str, str]], dict[str, None]]] = {}  # noted by _on_indexed

    # -- marker upkeep (called from the models worker) ------------------------------------

    def _view(self, env: Environment) -> PendingView:
        view = self._views.get(env.git_dir)
        if view is None:
            view = self._views[env.git_dir] = PendingView(Marker(env.git_dir, log.warning))
        return view

    def _on_indexed(self, index: ModelIndex, model_hash: str, relative_path: str) -> None:
        """Note what this file settles; `_flush` (after the worker's pass) writes it, once per
        environment however many files arrived (one merge of a 20,000-entry marker is ~0.8 s)."""
        for env in self.config.envs:
            hits, intents = self._view(env).waiting_for(model_hash, relative_path)
            if hits or intents:
                arrived, drop = self._arrivals.setdefault(env.git_dir, ([], {}))
                if intents:
                    arrived.append((model_hash, relative_path))
                drop.update(dict.fromkeys(hits + intents))

    def _flush(self, index: ModelIndex) -> None:
        arrivals, self._arrivals = self._arrivals, {}
        for env in self.config.envs:
            if env.git_dir in arrivals:
                arrived, drop = arrivals[env.git_dir]
                self._drop(env, index, arrived, list(drop))

    def _drop(self, env: Environment, index: ModelIndex, arrived_intents: list[tuple[str, str]], drop: list[str]) -> None:
        if arrived_intents:
            self._remember_intent_sources(env, index, arrived_intents)
        if drop:
            self._view(env).marker.merge((), drop=drop)
            log.info("%d pending model(s) are here now: dropped from the pending list of %s", len(set(drop)), env.repo)

    @staticmethod
    def _remember_intent_sources(env: Environment, index: ModelIndex, arrived: list[tuple[str, str]]) -> None:
        """Intents' files that appeared by hand: the index remembers them by the intents' URLs,
        the way a download would, so `cfd status` no longer counts them missing."""
        from cfd.core.sync.working import load_working_manifest

        try:
            intents = load_working_manifest(env).intents  # once for the whole batch
        except Exception:  # noqa: BLE001 - an unreadable manifest only costs the source links
            return
        urls_at: dict[str, set[str]] = {}
        for ref in intents:
            urls_at.setdefault(ref.target_path, set()).update(ref.sources)
        links = sorted({(model_hash, url) for model_hash, path in arrived for url in urls_at.get(path, ())})
        if links:
            with index.transaction():
                for model_hash, url in links:
                    index.add_source(model_hash, url)

    def _on_scan_done(self, index: ModelIndex) -> None:
        """Drop pending entries whose model arrived while no agent watched: one marker read
        and one write per environment, whatever the number of entries."""
        locations = index.locations()
        for env in self.config.envs:
            entries = self._view(env).current()
            present = index.present({h for e in entries for h in (e.key, e.hash) if h and not h.startswith("intent:")})
            drop: list[str] = []
            arrived: list[tuple[str, str]] = []
            for entry in entries:
                model_hash = next((h for h in (entry.key, entry.hash) if h in present), None)
                if model_hash is not None:
                    drop.append(entry.key)
                elif entry.key.startswith("intent:") and entry.relative_path in locations:
                    drop.append(entry.key)
                    arrived.append((locations[entry.relative_path].model_hash, entry.relative_path))
            self._drop(env, index, arrived, drop)

    # -- the git side -----------------------------------------------------------------------

    def _sync(self, env: Environment, old: str | None, new: str) -> None:
        from cfd.core.sync.pullsync import sync_between

        # The agent is the background: downloads go through its queue (cancellable,
        # rate-limited, cfd.jobs at a time); `defer` stays defer.
        mode = "defer" if env.settings["cfd.onPull"] == "defer" else "background"
        outcome = sync_between(env, old, new, trigger="agent", mode=mode, cancel=self._cancel)
        log.info("sync %s..%s in %s: %s", (old or "-")[:10], new[:10], env.repo, outcome.action)
        for warning in outcome.warnings:
            log.warning("%s", warning)

    # -- lifecycle ----------------------------------------------------------------------------

    def status_fields(self) -> dict[str, Any]:
        c = self.config
        return {
            "pid": os.getpid(),
            "state": "starting",
            "started": time.time(),
            "models_dir": str(c.models_dir),
            "index": str(c.index_path),
            "envs": [str(env.repo) for env in c.envs],
            "log": str(self.paths.log),
            "settle": c.settle,
            "max_rate": c.max_rate,
        }

    def _handle_signal(self, signum: int, frame: object) -> None:
        self._signal = signum  # only a plain assignment: safe at any point of the main thread

    def run(self) -> int:
        from watchdog.observers import Observer

        from .bgqueue import BackgroundQueue
        from .gitwatch import GitWatcher
        from .modelwatch import ModelsWatcher

        lock = AgentLock(self.paths.lock)
        if not lock.acquire():
            return ALREADY_RUNNING
        shared = AgentLock(models_dir_lock(self.config.models_dir))
        try:
            taken = shared.acquire()
        except OSError:
            taken = False  # a read-only models dir: the per-user lock still holds
            shared = None
        if shared is not None and not taken:
            lock.release()
            return ALREADY_RUNNING
        if shared is not None:
            shared.record_owner(f"pid {os.getpid()}, state in {self.paths.root}\n")
        try:
            setup_logging(self.paths, self.config.console)
            self.paths.pid.write_text(f"{os.getpid()}\n", encoding="ascii")
            board = StatusBoard(self.paths.status, self.status_fields())
            board.start()
            self._cancel = threading.Event()
            c = self.config
            inotify = sys.platform.startswith("linux")  # close-after-write events exist only there
            models = ModelsWatcher(
                c.models_dir,
                lambda: ModelIndex(c.index_path, c.models_dir, c.envs[0].dialect if c.envs else None),
                board,
                settle=c.settle,
                open_timeout=c.open_timeout if inotify else c.settle,
                hash_rate=c.hash_rate,
                on_indexed=self._on_indexed,
                on_scan_done=self._on_scan_done,
                on_batch_done=self._flush,
                on_root_gone=lambda: setattr(self, "_stop_reason", f"the models directory {c.models_dir} is gone"),
            )
            git = GitWatcher(list(c.envs), board, self._sync, debounce=c.git_debounce)
            queue = BackgroundQueue(list(c.envs), board, self._cancel, max_rate=c.max_rate, retry_base=c.retry_base)
            observer = Observer()
            models.schedule(observer)
            git.schedule(observer)
            queue.schedule(observer)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._handle_signal)
            observer.start()  # before the initial scan, so nothing between the two is missed
            models.start()
            git.start()
            queue.start()
            board.set(state="ready")
            log.info("agent ready (pid %d): watching %s for %s", os.getpid(), c.models_dir, ", ".join(str(e.repo) for e in c.envs))
            while self._signal is None and self._stop_reason is None:
                time.sleep(0.5)
                if not c.models_dir.is_dir():  # inotify stays silent when a file inside is held open (our lock)
                    self._stop_reason = f"the models directory {c.models_dir} is gone"
            log.info("stopping (%s)", self._stop_reason or f"signal {self._signal}")
            board.set(state="stopping")
            self._cancel.set()
            observer.stop()
            queue.stop(timeout=10)
            git.stop()
            models.stop()
            observer.join(timeout=5)
            board.close(state="stopped", downloads={}, stopped=time.time())
            log.info("agent stopped")
            return 0
        finally:
            if shared is not None:
                shared.release()
            lock.release()
