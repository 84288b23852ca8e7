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
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TextIO

from cfd.core.text import sanitize, unsanitized
from cfd.core.units import human_size


class LineProgress(AbstractContextManager["LineProgress"]):
    """One line per file start and end; byte progress is not printed."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._started = 0
        self._total = 0
        self._t0: dict[str, float] = {}
        self._bytes: dict[str, int] = {}
        self._resumed: dict[str, int] = {}
        self._connections: dict[str, int] = {}

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

    def on_file_resume(self, filename: str, staged: int, total: int | None) -> None:
        self._resumed[filename] = staged

    def on_file_retry(self, filename: str, delay: float, reason: str) -> None:
        self._line(f"retrying {filename} in {delay:.0f} s: {reason}")

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
        if not success:
            self._line(f"failed {filename}: {error or 'unknown error'}")
            return
        elapsed = time.monotonic() - self._t0.get(filename, time.monotonic())
        size = self._bytes.get(filename)
        resumed = self._resumed.get(filename, 0)
        here = f", {human_size(resumed)} were already here" if resumed else ""
        most = self._connections.get(filename, 0)
        over = f" on up to {most} connections" if most > 1 else ""
        detail = f" ({human_size(size - resumed)} in {elapsed:.1f} s{over}{here})" if size else ""
        self._line(f"done {filename}{detail}")

    def on_file_note(self, filename: str, message: str) -> None:
        self._line(f"{filename}: {message}")

    def on_file_connections(self, filename: str, count: int) -> None:
        self._connections[filename] = max(count, self._connections.get(filename, 0))

    def on_batch_complete(self, succeeded: int, total: int) -> None:
        self._line(f"{succeeded}/{total} downloaded")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.999)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class RateTracker:
    """The figures a progress display shows, kept honest.

    Only bytes transferred by this run count toward a rate (a resumed file's staged bytes are
    done, not fast); the total ETA is never shorter than the slowest file's; a file waiting to
    retry says so instead of showing its last rate. Sizes and rates are both binary (MiB, MiB/s).
    Thread-safe; `clock` is for tests.
    """

    WINDOW = 5.0  # seconds of transfer a rate is measured over

    def __init__(self, sizes: Mapping[str, int | None], clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.sizes = dict(sizes)
        self.done: dict[str, int] = {}
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._since: dict[str, float] = {}  # when each running file's measuring began
        self._retry_until: dict[str, float] = {}
        self._finished: set[str] = set()

    def start(self, filename: str) -> None:
        with self._lock:
            self.done[filename] = 0
            self._samples[filename] = deque()
            self._since[filename] = self._clock()

    def resume(self, filename: str, staged: int, total: int | None) -> None:
        with self._lock:
            self.done[filename] = staged
            if total:
                self.sizes[filename] = total
            self._since[filename] = self._clock()

    def progress(self, filename: str, done: int, total: int | None) -> int:
        """Record that `filename` is at `done` bytes; returns the bytes newly counted as done."""
        with self._lock:
            now = self._clock()
            before = self.done.get(filename, 0)
            self.done[filename] = done
            if total:
                self.sizes[filename] = total
            self._retry_until.pop(filename, None)
            delta = done - before
            if delta > 0:
                self._samples.setdefault(filename, deque()).append((now, delta))
            return delta

    def retry(self, filename: str, delay: float) -> None:
        with self._lock:
            self._retry_until[filename] = self._clock() + delay

    def finish(self, filename: str) -> None:
        with self._lock:
            self._finished.add(filename)
            self._retry_until.pop(filename, None)
            self._samples.pop(filename, None)

    def _rate(self, filename: str, now: float) -> float:
        samples = self._samples.get(filename) or deque()
        while samples and samples[0][0] < now - self.WINDOW:
            samples.popleft()
        span = min(self.WINDOW, now - self._since.get(filename, now))
        return sum(n for _t, n in samples) / span if span > 0 else 0.0

    def _remaining(self, filename: str) -> int | None:
        size = self.sizes.get(filename)
        return None if size is None else max(size - self.done.get(filename, 0), 0)

    def file_rate(self, filename: str) -> str:
        with self._lock:
            now = self._clock()
            until = self._retry_until.get(filename)
            if until is not None and until > now:
                return f"retrying in {until - now:.0f} s"
            return f"{human_size(int(self._rate(filename, now)))}/s"

    def file_eta(self, filename: str) -> str:
        with self._lock:
            eta = self._eta(filename, self._clock())
        return "-:--:--" if eta is None else _duration(eta)

    def _eta(self, filename: str, now: float) -> float | None:
        remaining = self._remaining(filename)
        if remaining == 0:
            return 0.0
        until = self._retry_until.get(filename)
        rate = self._rate(filename, now)
        if remaining is None or rate <= 0:
            return None
        return remaining / rate + (max(until - now, 0) if until else 0)

    def _running(self) -> list[str]:
        return [name for name in self._since if name not in self._finished]

    def total_rate(self) -> str:
        with self._lock:
            now = self._clock()
            running = self._running()
            if running and all(self._retry_until.get(n, 0) > now for n in running):
                return f"retrying in {min(self._retry_until[n] for n in running) - now:.0f} s"
            return f"{human_size(int(sum(self._rate(n, now) for n in running)))}/s"

    def total_eta(self) -> str:
        """Remaining bytes over the summed rate, but never shorter than the slowest file's ETA."""
        with self._lock:
            now = self._clock()
            running = self._running()
            rate = sum(self._rate(n, now) for n in running)
            remaining = [self._remaining(n) for n in self.sizes if n not in self._finished]
            if rate <= 0 or any(r is None for r in remaining):
                return "-:--:--"
            etas = [self._eta(n, now) for n in running]
            if any(e is None for e in etas if e != 0.0):
                return "-:--:--"
            total = sum(r or 0 for r in remaining) / rate
            return _duration(max([total, *(e or 0.0 for e in etas)]))


class RichProgress(AbstractContextManager["RichProgress"]):
    """Per-file bars and a total bar (bytes, speed, ETA) on a terminal."""

    def __init__(self, sizes: Mapping[str, int | None], console: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, TextColumn
        from rich.text import Text

        tracker = RateTracker(sizes, clock)

        class Figure(ProgressColumn):
            """Our rate or ETA for a row (the total row reads the totals)."""

            def __init__(self, of_file: Callable[[str], str], of_total: Callable[[], str]) -> None:
                super().__init__()
                self.of_file, self.of_total = of_file, of_total

            def render(self, task: Any) -> Any:
                name = task.fields.get("filename")
                return Text(self.of_total() if name is None else self.of_file(name))

        # rich writes its own escape codes below the CLI's sanitising stream; what it shows
        # from a manifest is sanitised here.
        self._console = console or Console(file=unsanitized(sys.stderr))  # type: ignore[arg-type]
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            Figure(tracker.file_rate, tracker.total_rate),
            Figure(tracker.file_eta, tracker.total_eta),
            console=self._console,
        )
        self.tracker = tracker
        self._sizes = dict(sizes)
        known = sum(size or 0 for size in sizes.values())
        self._total = self._progress.add_task("total", total=known or None)
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._escape = lambda text: escape(sanitize(text))

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _short(self, filename: str) -> str:
        filename = sanitize(filename)
        return filename if len(filename) <= 40 else filename[:18] + "…" + filename[-21:]

    def on_batch_start(self, total: int) -> None:
        self._progress.update(self._total, description=f"total ({total} file{'s' if total != 1 else ''})")

    def on_file_start(self, filename: str, index: int, total: int) -> None:
        with self._lock:
            self.tracker.start(filename)
            self._tasks[filename] = self._progress.add_task(
                self._short(filename), total=self._sizes.get(filename), filename=filename)

    def _learn_size(self, filename: str, total: int | None) -> None:
        if total and not self._sizes.get(filename):  # an intent's size becomes known
            self._sizes[filename] = total
            grand = self._progress.tasks[self._total].total or 0
            self._progress.update(self._total, total=grand + total)

    def on_file_resume(self, filename: str, staged: int, total: int | None) -> None:
        with self._lock:
            task = self._tasks.get(filename)
            self.tracker.resume(filename, staged, total)
            self._learn_size(filename, total)
        if task is not None:
            self._progress.update(task, completed=staged, total=total or None)
            self._progress.advance(self._total, staged)

    def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
        with self._lock:
            task = self._tasks.get(filename)
            if task is None:
                return
            delta = self.tracker.progress(filename, downloaded, total)
            self._learn_size(filename, total)
        self._progress.update(task, completed=downloaded, total=total or None)
        self._progress.advance(self._total, delta)

    def on_file_retry(self, filename: str, delay: float, reason: str) -> None:
        self.tracker.retry(filename, delay)

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
        with self._lock:
            task = self._tasks.pop(filename, None)
            seen = self.tracker.done.get(filename, 0)
            self.tracker.finish(filename)
        if task is not None:
            self._progress.remove_task(task)
        size = self._sizes.get(filename) or 0
        if success:
            # Already present: count the bytes the bar never saw (as done, not as transferred).
            self._progress.advance(self._total, max(size - seen, 0))
            self._console.print(f"[green]✓[/green] {self._escape(filename)}", highlight=False)
        else:
            self._console.print(f"[red]✗[/red] {self._escape(filename)}: {self._escape(error or 'unknown error')}", highlight=False)

    def on_file_connections(self, filename: str, count: int) -> None:
        task = self._tasks.get(filename)
        if task is not None:
            self._progress.update(task, description=f"{self._short(filename)} ×{count}")

    def on_file_note(self, filename: str, message: str) -> None:
        self._console.print(f"[yellow]•[/yellow] {self._escape(filename)}: {self._escape(message)}", highlight=False)

    def on_batch_complete(self, succeeded: int, total: int) -> None:
        return None


def make_progress(fancy: bool, sizes: Mapping[str, int | None]) -> LineProgress | RichProgress:
    """Rich bars on a terminal, plain lines elsewhere."""
    return RichProgress(sizes) if fancy else LineProgress()
