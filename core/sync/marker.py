"""The pending-repair marker: what this clone still has to fetch, and why.

A JSON file in the clone's git directory (never tracked). Hooks and the agent
add to it, `cfd repair` rewrites it to exactly what is still missing. Writes go
to a temp file beside it and are moved into place under a file lock, so a
reader never sees half a marker; a corrupt marker is set aside (renamed) with a
warning, never a crash. Nothing secret goes in: URLs are stored sanitised.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from ..files import remove_temps, write_atomic
from ..state import MARKER as MARKER_NAME, clone_state
from ..manifest.model import WorkflowModelRef

Warn = Callable[[str], None]  # where a reader's one-line warnings go (a corrupt marker set aside)
MARKER_VERSION = 1
BUDGET_REASON = "hook-time-budget"  # what a hook's time budget left
# Why an entry is pending, in a user's words: the one set of labels (`cfd status`, the hooks).
REASON_LABELS = {
    "deferred": "left for later (cfd.onPull=defer)",
    "filtered": "skipped by the strategy (cfd.models)",
    "no-source": "without a source",
    "failed": "failed",
    "interrupted": "interrupted; `cfd repair` resumes it",
    "background": "queued for the background agent",
    BUDGET_REASON: "left by the hook time budget (cfd.hookTimeBudget)",
    "write-back": "downloaded, not yet written into pyproject.toml",
}
REASONS = tuple(REASON_LABELS)


class _Entry(NamedTuple):
    key: str  # model hash, or "intent:<workflow>/<node>/<widget>"
    filename: str
    relative_path: str
    size: int | None
    sources: tuple[str, ...]
    criticality: str
    workflows: tuple[str, ...]
    reason: str
    error: str | None = None
    when: float = 0.0  # time.time() when it was recorded
    trigger: str = ""
    hash: str | None = None


class PendingEntry(_Entry):
    """One model or intent left to fetch; `when` defaults to now (a NamedTuple's defaults are constants)."""

    __slots__ = ()

    def __new__(cls, key: str, filename: str, relative_path: str, size: int | None, sources: tuple[str, ...],
                criticality: str, workflows: tuple[str, ...], reason: str, error: str | None = None,
                when: float | None = None, trigger: str = "", hash: str | None = None) -> PendingEntry:
        return super().__new__(cls, key, filename, relative_path, size, sources, criticality, workflows, reason,
                               error, time.time() if when is None else when, trigger, hash)

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()
        from ..download.urls import redact_url  # only when an entry has sources (a hook with none skips urllib)

        data["sources"] = [redact_url(url) for url in self.sources]
        data["workflows"] = list(self.workflows)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingEntry:
        return cls(
            key=str(data["key"]),
            filename=str(data.get("filename", "")),
            relative_path=str(data.get("relative_path", "")),
            size=data.get("size") if isinstance(data.get("size"), int) else None,
            sources=tuple(str(u) for u in data.get("sources") or ()),
            criticality=str(data.get("criticality", "flexible")),
            workflows=tuple(str(w) for w in data.get("workflows") or ()),
            reason=str(data.get("reason", "deferred")),
            error=data.get("error") if isinstance(data.get("error"), str) else None,
            when=float(data.get("when", 0) or 0),
            trigger=str(data.get("trigger", "")),
            hash=data.get("hash") if isinstance(data.get("hash"), str) else None,
        )


def reason_label(reason: str, strategy: str | None = None) -> str:
    """A stored reason code as REASON_LABELS words (`strategy`: the one that filtered, when known)."""
    if reason == "filtered" and strategy:
        return f"skipped by cfd.models={strategy}"
    return REASON_LABELS.get(reason, reason)


def reason_text(entry: PendingEntry) -> str:
    """Why this model is still pending: its label, with the last error or the strategy it implies."""
    if entry.reason == "failed":
        return f"last attempt failed: {entry.error or 'unknown error'}"
    if entry.reason == "filtered" and entry.criticality == "required":
        return "skipped (--models skip)"  # only `skip` leaves a required model out
    return reason_label(entry.reason, "required" if entry.reason == "filtered" else None)


def sources_gone(entry: PendingEntry) -> bool:
    """Its last attempt found every source gone (404/410): only a fix to pyproject.toml helps."""
    from ..download.types import SOURCE_GONE

    return entry.reason == "failed" and (entry.error or "").count(SOURCE_GONE) >= max(1, len(entry.sources))


def intent_key(ref: WorkflowModelRef) -> str:
    """`intent:<workflow>/<node>/<widget>`: an intent's marker key, stable across manifest versions."""
    if ref.node_id is None and ref.widget_idx is None:
        return f"intent:{ref.workflow}//{ref.filename}"
    node = "" if ref.node_id is None else ref.node_id
    widget = "" if ref.widget_idx is None else ref.widget_idx
    return f"intent:{ref.workflow}/{node}/{widget}"


class Marker:
    def __init__(self, git_dir: Path, warn: Warn | None = None) -> None:
        self.path = clone_state(git_dir).marker
        self._warn = warn or (lambda message: None)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """flock on `<marker>.lock`, as filelock takes it (same file, same lock), without
        importing filelock: it loads asyncio, ~20 ms of every hook that writes the marker."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the pending marker {self.path} stayed locked for 60 s") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read(self) -> list[PendingEntry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._warn(f"cannot read the pending marker {self.path}: {exc.strerror}")
            return []
        try:
            data = json.loads(raw)
            return [PendingEntry.from_json(item) for item in data["entries"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            self._set_aside()
            return []

    def _set_aside(self) -> None:
        broken = self.path.with_name(f"{MARKER_NAME}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.replace(self.path, broken)
        except OSError:
            return
        self._warn(f"the pending marker was corrupt; moved it to {broken} and started afresh (run `cfd repair`)")

    def write(self, entries: Iterable[PendingEntry]) -> None:
        with self._lock():
            self._write_unlocked(list(entries))

    def update(self, change: Callable[[list[PendingEntry]], list[PendingEntry]]) -> list[PendingEntry]:
        """Read-modify-write under the lock (hooks and agent write concurrently)."""
        with self._lock():
            entries = change(self.read())
            self._write_unlocked(entries)
            return entries

    def merge(self, new_entries: Iterable[PendingEntry], drop: Iterable[str] = ()) -> list[PendingEntry]:
        """Add or replace entries by key, and drop keys that are no longer pending."""
        incoming = {entry.key: entry for entry in new_entries}
        dropped = set(drop)
        if not incoming and not self.path.exists():
            return []  # nothing to add, nothing to drop from (a hook with every model present)

        def change(entries: list[PendingEntry]) -> list[PendingEntry]:
            kept = [e for e in entries if e.key not in incoming and e.key not in dropped]
            return kept + list(incoming.values())

        return self.update(change)

    def _write_unlocked(self, entries: list[PendingEntry]) -> None:
        self._remove_stale_temps()
        if not entries:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            return
        payload = {"version": MARKER_VERSION, "entries": [entry.to_json() for entry in entries]}
        write_atomic(self.path, json.dumps(payload, indent=2))

    def _remove_stale_temps(self) -> None:
        """Temp files of writers that were killed mid-write (we hold the lock)."""
        remove_temps(self.path)
