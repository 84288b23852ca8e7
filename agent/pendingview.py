"""Each environment's pending marker, read once and re-read only when it changes.

The models worker asks, for every file it indexes, whether some environment was waiting
for it. Reading and parsing every marker per file cost 0.4 s a file with a 20,000-entry
marker (issue 10); the view keeps the entries, looked up by hash and by target path, and
re-reads a marker only when its file changed (every write is an atomic rename: a new
inode, so (inode, mtime, size) tells).
"""

from __future__ import annotations

import os

from cfd.core.sync.marker import Marker, PendingEntry


class PendingView:
    def __init__(self, marker: Marker) -> None:
        self.marker = marker
        self._signature: tuple[int, int, int] | None = None
        self.entries: list[PendingEntry] = []
        self._by_hash: dict[str, list[str]] = {}
        self._intents_at: dict[str, list[str]] = {}

    def _refresh(self) -> None:
        try:
            info = os.stat(self.marker.path)
            signature: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except OSError:
            signature = None
        if signature == self._signature and (signature is not None or not self.entries):
            return
        self.entries = self.marker.read() if signature is not None else []
        self._signature = signature
        self._by_hash, self._intents_at = {}, {}
        for entry in self.entries:
            for model_hash in {entry.key, entry.hash}:
                if model_hash and not model_hash.startswith("intent:"):
                    self._by_hash.setdefault(model_hash, []).append(entry.key)
            if entry.key.startswith("intent:"):
                self._intents_at.setdefault(entry.relative_path, []).append(entry.key)

    def current(self) -> list[PendingEntry]:
        self._refresh()
        return self.entries

    def waiting_for(self, model_hash: str, relative_path: str) -> tuple[list[str], list[str]]:
        """(keys of entries for this model, keys of intents landing at this path)."""
        self._refresh()
        return list(self._by_hash.get(model_hash, ())), list(self._intents_at.get(relative_path, ()))
