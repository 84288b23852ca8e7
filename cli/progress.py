"""Download progress for the CLI, in the shape of the engine's DownloadCallbacks.

On a terminal: rich bars, one per running file plus a total, with speed and
ETA. Otherwise (CI logs, pipes, `--json`): one plain line per file event. The
engine calls these from worker threads, so both renderers are thread-safe.
rich is imported here and nowhere else. Everything goes to stderr, leaving
stdout to the summary or the JSON object.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, TextIO

from .common import human_size


class LineProgress(AbstractContextManager["LineProgress"]):
    """One line per file start and end; byte progress is not printed."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._started = 0
        self._total = 0
        self._t0: dict[str, float] = {}
        self._bytes: dict[str, int] = {}

    def __exit__(self, *exc: object) -> None:
        return None

    def _line(self, text: str) -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)

    def on_batch_start(self, total: int) -> None:
        self._total = total

    def on_file_start(self, filename: str, index: int, total: int) -> None:
        with self._lock:
            self._started += 1
            number = self._started
            self._t0[filename] = time.monotonic()
        self._line(f"[{number}/{total or self._total}] downloading {filename}")

    def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
        self._bytes[filename] = downloaded

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
        if not success:
            self._line(f"failed {filename}: {error or 'unknown error'}")
            return
        elapsed = time.monotonic() - self._t0.get(filename, time.monotonic())
        size = self._bytes.get(filename)
        detail = f" ({human_size(size)} in {elapsed:.1f} s)" if size else ""
        self._line(f"done {filename}{detail}")

    def on_file_note(self, filename: str, message: str) -> None:
        self._line(f"{filename}: {message}")

    def on_batch_complete(self, succeeded: int, total: int) -> None:
        self._line(f"{succeeded}/{total} downloaded")


class RichProgress(AbstractContextManager["RichProgress"]):
    """Per-file bars and a total bar (bytes, speed, ETA) on a terminal."""

    def __init__(self, sizes: Mapping[str, int | None]) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._sizes = dict(sizes)
        known = sum(size or 0 for size in sizes.values())
        self._total = self._progress.add_task("total", total=known or None)
        self._tasks: dict[str, Any] = {}
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._escape = escape

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _short(self, filename: str) -> str:
        return filename if len(filename) <= 40 else filename[:18] + "…" + filename[-21:]

    def on_batch_start(self, total: int) -> None:
        self._progress.update(self._total, description=f"total ({total} file{'s' if total != 1 else ''})")

    def on_file_start(self, filename: str, index: int, total: int) -> None:
        with self._lock:
            self._tasks[filename] = self._progress.add_task(self._short(filename), total=self._sizes.get(filename))
            self._seen[filename] = 0

    def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
        with self._lock:
            task = self._tasks.get(filename)
            if task is None:
                return
            delta = downloaded - self._seen.get(filename, 0)
            self._seen[filename] = downloaded
            if total and not self._sizes.get(filename):  # an intent's size becomes known
                self._sizes[filename] = total
                grand = self._progress.tasks[self._total].total or 0
                self._progress.update(self._total, total=grand + total)
        self._progress.update(task, completed=downloaded, total=total or None)
        self._progress.advance(self._total, delta)

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
        with self._lock:
            task = self._tasks.pop(filename, None)
            seen = self._seen.pop(filename, 0)
        if task is not None:
            self._progress.remove_task(task)
        size = self._sizes.get(filename) or 0
        if success:
            # Already present or resumed: count the bytes the bar never saw.
            self._progress.advance(self._total, max(size - seen, 0))
            self._console.print(f"[green]✓[/green] {self._escape(filename)}", highlight=False)
        else:
            self._console.print(f"[red]✗[/red] {self._escape(filename)}: {self._escape(error or 'unknown error')}", highlight=False)

    def on_file_note(self, filename: str, message: str) -> None:
        self._console.print(f"[yellow]•[/yellow] {self._escape(filename)}: {self._escape(message)}", highlight=False)

    def on_batch_complete(self, succeeded: int, total: int) -> None:
        return None


def make_progress(fancy: bool, sizes: Mapping[str, int | None]) -> LineProgress | RichProgress:
    """Rich bars on a terminal, plain lines elsewhere."""
    return RichProgress(sizes) if fancy else LineProgress()
