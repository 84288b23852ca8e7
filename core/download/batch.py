"""What the transfers of one download batch share, and how a file is cut into ranges."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .growth import Growth
from .session import HttpClient, RateLimiter
from .types import MIB, DownloadCallbacks, DownloadOptions

if TYPE_CHECKING:
    from .segments import Transfer


class LowSpeed:
    """curl's --speed-limit/--speed-time for one connection: fewer than `limit` bytes/s over `window` s."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.restart()

    def restart(self) -> None:
        self.start, self.bytes = time.monotonic(), 0

    def too_slow(self, n: int) -> bool:
        if self.limit <= 0:
            return False
        self.bytes += n
        elapsed = time.monotonic() - self.start
        if elapsed < self.window:
            return False
        slow = self.bytes < self.limit * elapsed
        self.restart()
        return slow


def plan_segments(size: int | None, connections: int, segment_min: int) -> list[list[int]]:
    if size is None:
        return [[0, -1, 0]]
    count = max(1, min(connections, size // max(segment_min, MIB)))
    step = -(-size // count // MIB) * MIB  # MiB-aligned
    bounds = [min(i * step, size) for i in range(count)] + [size]
    return [[bounds[i], bounds[i + 1], 0] for i in range(count) if bounds[i] < bounds[i + 1]]


class Batch:
    """What the transfers of one `download_models` call share, and which of them are running."""

    def __init__(self, options: DownloadOptions, callbacks: DownloadCallbacks, cancel: threading.Event) -> None:
        self.options, self.callbacks, self.cancel = options, callbacks, cancel
        self.limiter = RateLimiter(options.max_rate) if options.max_rate > 0 else None
        self.client = HttpClient(options)
        self.growth = Growth(options.connections, 2 * options.connections)
        self._transfers: set[Transfer] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def register(self, transfer: Transfer) -> None:
        with self._lock:
            self._transfers.add(transfer)
        self.growth.changed()

    def unregister(self, transfer: Transfer) -> None:
        with self._lock:
            self._transfers.discard(transfer)
        self.growth.changed()

    def note(self, filename: str, message: str) -> None:
        """A one-line note for the user (callbacks written for ComfyDock's shape may not take it)."""
        hook = getattr(self.callbacks, "on_file_note", None)
        if hook is not None:
            hook(filename, message)

    def abort_all(self) -> None:
        with self._lock:
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.abort()
