"""Catch HEAD moves that fired no hook (reset --hard, stash, libgit2 tools, GUIs).

Each environment's git dir is watched (HEAD, ORIG_HEAD, packed-refs, refs/heads).
After a quiet `debounce`, HEAD is read with `git rev-parse` (~3 ms). When it moved
and its pyproject.toml blob differs both from `<git_dir>/cfd/last-synced` (what a
hook or we last acted on) and from the blob we acted on ourselves, the same
diff-and-act logic as the hooks runs once, from the last commit we saw to HEAD.
While a rebase is under way the check waits: its hooks and final HEAD decide.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirDeletedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from cfd.core.environment import Environment
from cfd.core.git import git_value
from cfd.core.sync.pullsync import read_last_synced

from .statusfile import StatusBoard

log = logging.getLogger("cfd.agent")

REF_FILES = {"HEAD", "ORIG_HEAD", "packed-refs"}
BUSY_MARKERS = ("rebase-merge", "rebase-apply")
EVENT_TYPES = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, DirDeletedEvent]

SyncFn = Callable[[Environment, "str | None", str], None]


def head_state(repo: Path) -> tuple[str | None, str | None]:
    """(HEAD commit, its pyproject.toml blob id); None where absent."""
    head = git_value("rev-parse", "-q", "--verify", "HEAD^{commit}", cwd=repo)
    if head is None:
        return None, None
    return head, git_value("rev-parse", "-q", "--verify", f"{head}:pyproject.toml", cwd=repo)


@dataclass
class _EnvWatch:
    env: Environment
    common_dir: Path
    seen_head: str | None = None  # HEAD at our last look
    base: str | None = None  # last commit whose manifest is acted on (the diff's old side)
    acted_blob: str | None = None
    due: float | None = field(default=None)  # monotonic time of the next check


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: GitWatcher, state: _EnvWatch) -> None:
        self.watcher, self.state = watcher, state
        self.roots = {os.fspath(state.env.git_dir), os.fspath(state.common_dir)}
        self.heads = os.path.join(os.fspath(state.common_dir), "refs", "heads") + os.sep

    def relevant(self, path: str) -> bool:
        if not path or path.endswith(".lock"):
            return False
        if path.startswith(self.heads):
            return True
        parent, name = os.path.split(path)
        return parent in self.roots and (name in REF_FILES or name in BUSY_MARKERS)

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")]
        if any(self.relevant(p) for p in paths):
            self.watcher.poke(self.state)


class GitWatcher:
    def __init__(self, envs: list[Environment], board: StatusBoard, run_sync: SyncFn, *, debounce: float = 1.0) -> None:
        self.board = board
        self.run_sync = run_sync
        self.debounce = debounce
        self.states = [_EnvWatch(env, self._common_dir(env)) for env in envs]
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="cfd-git", daemon=True)

    @staticmethod
    def _common_dir(env: Environment) -> Path:
        found = git_value("rev-parse", "--git-common-dir", cwd=env.repo)
        if not found:
            return env.git_dir
        path = Path(found)
        return path if path.is_absolute() else (env.repo / path).resolve()

    def schedule(self, observer) -> None:  # type: ignore[no-untyped-def]
        for state in self.states:
            handler = _Handler(self, state)
            dirs = {state.env.git_dir.resolve(), state.common_dir.resolve()}
            for directory in dirs:
                observer.schedule(handler, os.fspath(directory), recursive=False, event_filter=EVENT_TYPES)
            heads = state.common_dir / "refs" / "heads"
            if heads.is_dir():
                observer.schedule(handler, os.fspath(heads), recursive=True, event_filter=EVENT_TYPES)
            handler.roots = {os.fspath(d) for d in dirs}
            handler.heads = os.fspath(heads.resolve()) + os.sep

    def start(self) -> None:
        for state in self.states:
            self._prime(state)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def poke(self, state: _EnvWatch) -> None:
        with self._cond:
            state.due = time.monotonic() + self.debounce  # every new event restarts the quiet period
            self._cond.notify()

    def _prime(self, state: _EnvWatch) -> None:
        head, blob = head_state(state.env.repo)
        state.seen_head = head
        synced = read_last_synced(state.env.git_dir)
        if head is None or synced is None or synced == blob:
            # Nothing acted on yet (or in step): this HEAD is the baseline.
            state.base, state.acted_blob = head, blob
            return
        # The manifest moved while nobody watched: act now, as for a move.
        state.seen_head = None
        state.due = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.monotonic()
                dues = [s.due for s in self.states if s.due is not None]
                if not dues or min(dues) > now:
                    self._cond.wait(None if not dues else min(dues) - now)
                    continue
                ready = [s for s in self.states if s.due is not None and s.due <= now]
                for state in ready:
                    state.due = None
            for state in ready:
                if self._stop.is_set():
                    return
                try:
                    self._check(state)
                except Exception as exc:  # noqa: BLE001 - one bad sync never ends the agent
                    log.exception("HEAD check failed for %s", state.env.repo)
                    self.board.error(f"sync after HEAD move in {state.env.repo}: {exc}")

    def _check(self, state: _EnvWatch) -> None:
        if any((state.env.git_dir / name).exists() for name in BUSY_MARKERS):
            self.board.incr("git_waits")  # counted, so `cfd agent status` (and a test) can see it waited
            with self._cond:
                state.due = time.monotonic() + max(self.debounce, 1.0)  # look again when it is over
            return
        self.board.incr("git_checks")  # every look at HEAD, synced or not
        head, blob = head_state(state.env.repo)
        if head is None or head == state.seen_head:
            return
        state.seen_head = head
        synced = read_last_synced(state.env.git_dir)
        if blob is None or blob == synced or blob == state.acted_blob:
            state.base = head  # manifest unchanged since it was last acted on
            return
        log.info("HEAD of %s moved to %s with a new pyproject.toml: syncing from %s", state.env.repo, head[:12], (state.base or "nothing")[:12])
        old = state.base
        state.base, state.acted_blob = head, blob  # once, even if the sync fails
        self.board.incr("git_syncs")
        self.run_sync(state.env, old, head)
