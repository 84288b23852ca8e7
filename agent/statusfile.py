"""The agent's small status JSON: what it watches, counters, current downloads.

Written atomically (temp file + rename) by one flusher thread at most every
`interval` seconds, and only when something changed, so an idle agent writes
nothing. Readers (`cfd agent status`, `cfd status`) use `read_status`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from cfd.core.files import write_atomic

STATUS_VERSION = 1
MAX_ERRORS = 10


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class StatusBoard:
    def __init__(self, path: Path, initial: dict[str, Any], interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval
        self._data: dict[str, Any] = {"version": STATUS_VERSION, "stats": {}, "downloads": {}, "errors": [], **initial}
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cfd-status", daemon=True)

    def start(self) -> None:
        self.flush()
        self._thread.start()

    # -- changes (any thread) ---------------------------------------------------------

    def set(self, **fields: Any) -> None:
        with self._lock:
            self._data.update(fields)
        self._dirty.set()

    def incr(self, stat: str, by: int = 1) -> None:
        with self._lock:
            stats = self._data["stats"]
            stats[stat] = stats.get(stat, 0) + by
        self._dirty.set()

    def error(self, message: str) -> None:
        with self._lock:
            errors = self._data["errors"]
            errors.append({"when": time.time(), "message": message})
            del errors[:-MAX_ERRORS]
        self._dirty.set()

    def download(self, filename: str, info: dict[str, Any] | None) -> None:
        """Progress of one file; None removes it."""
        with self._lock:
            if info is None:
                self._data["downloads"].pop(filename, None)
            else:
                self._data["downloads"][filename] = info
        self._dirty.set()

    def get(self, key: str) -> Any:
        with self._lock:
            return json.loads(json.dumps(self._data.get(key)))

    # -- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        with self._lock:
            self._data["updated"] = time.time()
            snapshot = json.loads(json.dumps(self._data))
        snapshot["downloads"] = list(snapshot["downloads"].values())
        try:
            # Not durable: rewritten every `interval` while busy, and only ever shown.
            write_atomic(self.path, json.dumps(snapshot, indent=1), durable=False)
        except OSError:
            pass  # a full disk must not take the agent down; the next flush retries

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                break
            self._dirty.clear()
            self.flush()
            self._stop.wait(self.interval)  # coalesce bursts of progress updates

    def close(self, **final: Any) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)  # so no older snapshot lands after the final one
        self.set(**final)
        self.flush()
