"""What a front end hears while the engine downloads (a module of its own, with no imports,
so that a hook can hold its progress display without loading the engine)."""

from __future__ import annotations


class DownloadCallbacks:
    """ComfyDock's BatchDownloadCallbacks shape; subclass and override what you need.

    Called from worker threads (several files run at once): keep them thread-safe
    and quick. `index` in on_file_start is 1-based.
    """

    def on_batch_start(self, total: int) -> None: ...

    def on_file_start(self, filename: str, index: int, total: int) -> None: ...

    def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None: ...

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None: ...

    def on_file_note(self, filename: str, message: str) -> None:
        """One line about a file worth telling (waiting for another process, fewer connections)."""

    def on_file_connections(self, filename: str, count: int) -> None:
        """A ranged download now runs on `count` connections (it grows while more pay)."""

    def on_batch_complete(self, succeeded: int, total: int) -> None: ...

    # cfd's additions (ComfyDock has none of these; they default to doing nothing):

    def on_file_resume(self, filename: str, staged: int, total: int | None) -> None:
        """A download resumes with `staged` bytes an earlier run left: done, but not transferred now."""

    def on_file_retry(self, filename: str, delay: float, reason: str) -> None:
        """The source failed (`reason`); the next attempt comes in `delay` seconds."""
