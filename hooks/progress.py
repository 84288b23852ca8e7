"""Download progress for hooks: plain lines on stderr (git shows hook output there).

No rich: a hook must stay light. On a terminal one line is rewritten in place,
at most a few times a second; elsewhere only start and end lines are printed.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from cfd.core.download.callbacks import DownloadCallbacks
from cfd.core.text import sanitize, unsanitized
from cfd.core.units import human_size

_INTERVAL = 0.25


class HookProgress(DownloadCallbacks):
    """ComfyDock's BatchDownloadCallbacks shape, rendered for a hook."""

    def __init__(self, stream: TextIO | None = None) -> None:
        # Below the CLI's sanitising stream (`cfd hook-run`): this writes its own \r and
        # erase-line codes, and sanitises the text it shows in _write.
        self.stream = unsanitized(stream or sys.stderr)
        try:
            self.live = self.stream.isatty()
        except (AttributeError, ValueError):
            self.live = False
        self._last = 0.0
        self._partial = False
        self._connections: dict[str, int] = {}

    def _write(self, text: str, end: str = "\n") -> None:
        text = sanitize(text)  # file names and errors come from a teammate's manifest
        if self._partial:
            text = "\r\033[K" + text
        self.stream.write(text + end)
        self.stream.flush()
        self._partial = end != "\n"

    def on_batch_start(self, total: int) -> None:
        self._write(f"cfd: downloading {total} model(s) (Ctrl-C stops; `cfd repair` resumes)")

    def on_file_start(self, filename: str, index: int, total: int) -> None:
        self._write(f"cfd: [{index}/{total}] {filename}", end="" if self.live else "\n")

    def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.live or now - self._last < _INTERVAL:
            return
        self._last = now
        share = f" {100 * downloaded // total}%" if total else ""
        count = self._connections.get(filename, 0)
        over = f" ×{count}" if count > 1 else ""
        self._write(f"cfd: {filename} {human_size(downloaded)}{share}{over}", end="")

    def on_file_retry(self, filename: str, delay: float, reason: str) -> None:
        self._write(f"cfd: {filename}: {reason}; retrying in {delay:.0f} s")

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
        self._write(f"cfd: {filename}: " + ("ok" if success else f"failed: {error}"))

    def on_file_connections(self, filename: str, count: int) -> None:
        self._connections[filename] = count  # shown on the live line

    def on_file_note(self, filename: str, message: str) -> None:
        self._write(f"cfd: {filename}: {message}")

    def on_batch_complete(self, succeeded: int, total: int) -> None:
        if self._partial:
            self._write("")
