"""The background queue: pending-marker entries the agent downloads itself.

Taken from each environment's marker: reason `background` (a hook in background
mode, or our own HEAD sync), `interrupted` and `failed` (retried with
exponential backoff). What to fetch is re-derived from the working manifest, so
sources are the real URLs (the marker keeps redacted ones). Downloads go
through `core.sync.fetch.sync_models` (the engine runs `cfd.jobs` at a time and
resumes `.part` files, so a restart resumes); `cfd.agent.maxRate` is handed to
the engine's own rate limiter. A marker write (from a hook, or
`cfd repair`) wakes the queue through a watch on `<git_dir>/cfd`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from cfd.core.environment import Environment
from cfd.core.store.index import ModelIndex
from cfd.core.state import MARKER, clone_state, models_state
from cfd.core.sync.marker import Marker, PendingEntry, intent_key

from .lock import is_locked
from .statusfile import StatusBoard

if TYPE_CHECKING:
    from cfd.core.sync.fetch import SyncResult

log = logging.getLogger("cfd.agent")

RETRIED = ("background", "interrupted", "failed")
HOOK_GRACE = 5.0  # an `interrupted` entry from a hook may be one it is downloading right now
BUSY_RECHECK = 30.0


def lock_path(models_dir: Path, key: str) -> Path:
    """The engine's per-download lock (held while a hook or `cfd repair` fetches it)."""
    from cfd.core.download.engine import staging_name

    return models_state(models_dir).download_lock(staging_name(key))


class Progress:
    """ComfyDock's BatchDownloadCallbacks shape, rendered into the status file."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board
        self._files: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def on_batch_start(self, total: int) -> None:
        log.info("downloading %d file(s)", total)

    def on_file_start(self, filename: str, index: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._files[filename] = {"seen": 0.0, "t": now, "speed": 0.0, "shown": 0.0}
        self.board.download(filename, {"file": filename, "downloaded": 0, "total": None, "percent": None, "speed": 0})

    def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            state = self._files.setdefault(filename, {"seen": 0.0, "t": now, "speed": 0.0, "shown": 0.0})
            delta = max(0, downloaded - int(state["seen"]))
            elapsed = now - state["t"]
            if delta and elapsed > 0:
                instant = delta / elapsed
                state["speed"] = instant if not state["speed"] else 0.7 * state["speed"] + 0.3 * instant
            state["seen"], state["t"] = float(downloaded), now
            state["total"] = float(total or 0)
            show = now - state["shown"] >= 0.25
            if show:
                state["shown"] = now
            speed = state["speed"]
        if show:
            percent = round(100.0 * downloaded / total, 1) if total else None
            self.board.download(
                filename,
                {"file": filename, "downloaded": downloaded, "total": total, "percent": percent, "speed": int(speed)},
            )

    def on_file_resume(self, filename: str, staged: int, total: int | None) -> None:
        # The staged bytes were fetched by an earlier run: done, but not part of the speed.
        with self._lock:
            state = self._files.setdefault(filename, {"seen": 0.0, "t": 0.0, "speed": 0.0, "shown": 0.0})
            state["seen"], state["t"] = float(staged), time.monotonic()

    def on_file_retry(self, filename: str, delay: float, reason: str) -> None:
        with self._lock:
            state = self._files.get(filename)
            if state is not None:
                state["speed"] = 0.0
            seen, total = (int(state["seen"]), int(state.get("total", 0))) if state else (0, 0)
        log.info("%s: %s; retrying in %.0f s", filename, reason, delay)
        percent = round(100.0 * seen / total, 1) if total else None
        self.board.download(filename, {"file": filename, "downloaded": seen, "total": total or None, "percent": percent,
                                       "speed": 0, "retry_at": time.time() + delay})

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
        with self._lock:
            self._files.pop(filename, None)
        self.board.download(filename, None)
        self.board.incr("downloads_ok" if success else "downloads_failed")
        if success:
            log.info("downloaded %s", filename)
        else:
            log.warning("download failed: %s: %s", filename, error)

    def on_batch_complete(self, succeeded: int, total: int) -> None:
        log.info("downloads done: %d of %d", succeeded, total)


class _MarkerHandler(FileSystemEventHandler):
    def __init__(self, queue: BackgroundQueue) -> None:
        self.queue = queue

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and os.path.basename(os.fsdecode(path)) == MARKER:
                self.queue.poke()
                return


class BackgroundQueue:
    def __init__(
        self,
        envs: list[Environment],
        board: StatusBoard,
        cancel: threading.Event,
        *,
        max_rate: int = 0,
        retry_base: float = 60.0,
        retry_max: float = 3600.0,
        debounce: float = 0.5,
        sync: Callable[..., SyncResult] | None = None,  # tests stand in for fetch.sync_models
    ) -> None:
        self.envs = envs
        self.board = board
        self.cancel = cancel
        self.retry_base, self.retry_max, self.debounce = retry_base, retry_max, debounce
        self.max_rate = max_rate
        self.progress = Progress(board)
        self._sync = sync
        self._attempts: dict[str, int] = {}
        self._cond = threading.Condition()
        self._due: float | None = time.monotonic()  # look once at start: resume what a restart interrupted
        self._thread = threading.Thread(target=self._run, name="cfd-queue", daemon=True)

    def schedule(self, observer) -> None:  # type: ignore[no-untyped-def]
        handler = _MarkerHandler(self)
        for env in self.envs:
            state_dir = clone_state(env.git_dir).dir
            state_dir.mkdir(parents=True, exist_ok=True)
            observer.schedule(handler, os.fspath(state_dir), recursive=False)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.cancel.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def poke(self) -> None:
        with self._cond:
            self._due = time.monotonic() + self.debounce
            self._cond.notify()

    def _run(self) -> None:
        while not self.cancel.is_set():
            with self._cond:
                now = time.monotonic()
                if self._due is None or self._due > now:
                    self._cond.wait(None if self._due is None else self._due - now)
                    continue
                self._due = None
            next_look: float | None = None
            for env in self.envs:
                if self.cancel.is_set():
                    break
                try:
                    wait = self._serve(env)
                except Exception as exc:  # noqa: BLE001 - a crashed job is logged, the agent goes on
                    log.exception("background downloads for %s failed", env.repo)
                    self.board.error(f"background downloads for {env.repo}: {exc}")
                    wait = self.retry_base
                if wait is not None:
                    next_look = wait if next_look is None else min(next_look, wait)
            if next_look is not None:
                with self._cond:
                    due = time.monotonic() + next_look
                    self._due = due if self._due is None else min(self._due, due)

    def _delay(self, entry: PendingEntry, now: float) -> float:
        """Seconds until `entry` may be tried (0 = now)."""
        if entry.reason == "failed":
            attempts = self._attempts.get(entry.key, 0)
            return max(0.0, entry.when + min(self.retry_max, self.retry_base * 2**attempts) - now)
        if entry.reason == "interrupted" and entry.trigger != "agent":
            return max(0.0, entry.when + HOOK_GRACE - now)
        return 0.0

    def _serve(self, env: Environment) -> float | None:
        """Download what is due for one environment; returns seconds until something else is."""
        entries = [e for e in Marker(env.git_dir, log.warning).read() if e.reason in RETRIED]
        self.board.set(queue=len(entries))
        if not entries:
            return None
        now = time.time()
        due: dict[str, PendingEntry] = {}
        later: list[float] = []
        for entry in entries:
            delay = self._delay(entry, now)
            if delay > 0:
                later.append(delay)
            elif is_locked(lock_path(env.models_dir, entry.key)):
                later.append(BUSY_RECHECK)  # a hook or `cfd repair` is fetching it right now
                self.board.incr("left_to_others")  # counted: `cfd agent status` shows why it waits
            else:
                due[entry.key] = entry
        if due:
            self._download(env, due)
        return min(later) if later else None

    def _download(self, env: Environment, due: dict[str, PendingEntry]) -> None:
        from cfd.core.sync.missing import detect_missing_models
        from cfd.core.sync.fetch import sync_models
        from cfd.core.sync.working import load_working_manifest

        manifest = load_working_manifest(env)
        with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
            report = detect_missing_models(manifest, index)
        from cfd.core.mirror.availability import mark_mirrored  # a sourceless model the team mirror has

        report = mark_mirrored(report, env)
        models = [m for m in report.missing if m.hash in due and m.can_download]
        intents = [r for r in report.intents if intent_key(r) in due]
        wanted = {m.hash for m in models} | {intent_key(r) for r in intents}
        missing_keys = {m.hash for m in report.missing} | {intent_key(r) for r in report.intents}
        # Present by now (copied in, fetched by someone else): nothing left to do for them.
        done = [key for key in due if key not in missing_keys and key not in wanted]
        if done:
            Marker(env.git_dir, log.warning).merge((), drop=done)
            log.info("dropped %d pending entr(ies) already present", len(done))
        if not wanted:
            return
        log.info("background: %d model(s) for %s", len(wanted), env.repo)
        sync = self._sync or sync_models
        result = sync(
            env, models, intents, callbacks=self.progress, cancel=self.cancel, trigger="agent", max_rate=self.max_rate
        )
        failed = {filename for filename, _ in result.models_failed}
        for model in models:
            self._count(model.hash, model.model.filename in failed)
        for ref in intents:
            self._count(intent_key(ref), ref.filename in failed)

    def _count(self, key: str, failed: bool) -> None:
        if failed and not self.cancel.is_set():
            self._attempts[key] = self._attempts.get(key, 0) + 1
        elif not failed:
            self._attempts.pop(key, None)
