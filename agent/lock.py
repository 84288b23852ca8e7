"""The agent's life lock: an flock held for as long as the process lives.

Unlike a pidfile it cannot go stale: the kernel drops it when the process dies,
however it dies. flock (not fcntl/POSIX locks) also conflicts between two opens
in one process, which keeps in-process tests honest.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AgentLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another agent holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def record_owner(self, text: str) -> None:
        """Say who holds the lock (read by a refused second agent); the flock is what counts."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode("utf-8", "surrogateescape"), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def is_locked(path: Path) -> bool:
    """Whether some live process holds the lock (probe: take it and give it back)."""
    if not path.exists():
        return False
    probe = AgentLock(path)
    if probe.acquire():
        probe.release()
        return False
    return True


def lock_owner(path: Path) -> str | None:
    """What the holder of a lock recorded about itself, if anything."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None
