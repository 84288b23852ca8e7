"""What the progress display shows: rates that count only bytes transferred now, an ETA that
waits for the slowest file, "retrying in N s" while a server is down, binary units throughout.
The engine's side (resume and retry events) runs against the real server."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

from helpers.faults import ModelServer
from cfd.demo.content import generate_model_bytes
from cfd.cli.progress import LineProgress, RateTracker, RichProgress
from cfd.core.download.engine import DownloadCallbacks, DownloadJob, DownloadOptions, download_models
from cfd.core.store.shorthash import short_hash_bytes

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_resumed_file_rate_counts_only_bytes_transferred_now() -> None:
    clock = Clock()
    tracker = RateTracker({"a.safetensors": 100 * MIB}, clock)
    tracker.start("a.safetensors")
    tracker.resume("a.safetensors", 80 * MIB, 100 * MIB)
    clock.now += 1
    tracker.progress("a.safetensors", 80 * MIB + int(3.6 * MIB), 100 * MIB)
    assert tracker.file_rate("a.safetensors") == "3.6 MiB/s"
    assert tracker.total_rate() == "3.6 MiB/s"  # not 83.6: the 80 MiB were already here
    assert tracker.total_eta() == "0:00:05"  # 16.4 MiB left at 3.6 MiB/s


def test_the_total_eta_is_never_shorter_than_the_slowest_files() -> None:
    clock = Clock()
    tracker = RateTracker({"fast": 100 * MIB, "slow": 100 * MIB}, clock)
    tracker.start("fast")
    tracker.start("slow")
    clock.now += 1
    tracker.progress("fast", 10 * MIB, 100 * MIB)
    tracker.progress("slow", 1 * MIB, 100 * MIB)
    assert tracker.total_rate() == "11.0 MiB/s"
    assert tracker.file_eta("fast") == "0:00:09"
    assert tracker.file_eta("slow") == "0:01:39"
    assert tracker.total_eta() == "0:01:39"  # 189 MiB at 11 MiB/s would say 0:00:18


def test_a_server_that_is_down_shows_retrying_not_the_last_rate() -> None:
    clock = Clock()
    tracker = RateTracker({"a": 10 * MIB}, clock)
    tracker.start("a")
    clock.now += 1
    tracker.progress("a", 2 * MIB, 10 * MIB)
    assert tracker.file_rate("a") == "2.0 MiB/s"
    tracker.retry("a", 12)
    assert tracker.file_rate("a") == "retrying in 12 s"
    clock.now += 5
    assert tracker.file_rate("a") == "retrying in 7 s"
    assert tracker.total_rate() == "retrying in 7 s"
    clock.now += 8
    tracker.progress("a", 3 * MIB, 10 * MIB)
    assert not tracker.file_rate("a").startswith("retrying")


def test_the_terminal_display_uses_these_figures_in_one_unit_family() -> None:
    from rich.console import Console

    clock = Clock()
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False, color_system=None)
    display = RichProgress({"a.safetensors": 100 * MIB}, console=console, clock=clock)
    display.on_batch_start(1)
    display.on_file_start("a.safetensors", 1, 1)
    display.on_file_resume("a.safetensors", 80 * MIB, 100 * MIB)
    clock.now += 1
    display.on_file_progress("a.safetensors", 80 * MIB + int(3.6 * MIB), 100 * MIB)
    console.print(display._progress.get_renderable())
    rows = [line.split() for line in out.getvalue().splitlines() if line.strip()]
    assert rows[0][:3] == ["total", "(1", "file)"] and rows[0][-4:] == ["MiB", "3.6", "MiB/s", "0:00:05"]
    assert rows[1][0] == "a.safetensors" and rows[1][-4:] == ["MiB", "3.6", "MiB/s", "0:00:05"]
    assert "83.6/100.0" in " ".join(rows[1])
    display.on_file_retry("a.safetensors", 30, "127.0.0.1 answered 503")
    out.truncate(0)
    console.print(display._progress.get_renderable())
    assert out.getvalue().count("retrying in 30 s") == 2  # the file and the total
    assert "MB/s" not in out.getvalue() and "kB" not in out.getvalue()


# -- the engine's side ------------------------------------------------------------------


class Recorder(DownloadCallbacks):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def on_file_resume(self, filename: str, staged: int, total: int | None) -> None:
        with self.lock:
            self.events.append(("resume", staged, total))

    def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
        with self.lock:
            self.events.append(("progress", downloaded, total))

    def on_file_retry(self, filename: str, delay: float, reason: str) -> None:
        with self.lock:
            self.events.append(("retry", delay, reason))


def _fetch(job: DownloadJob, models_dir: Path, callbacks: Any, **options: Any) -> Any:
    opts = DownloadOptions(allow_private_networks=True, backoff_base=0.01, backoff_cap=0.05, stall_timeout=5.0,
                           segment_min=4 * MIB, checkpoint_bytes=MIB, connections=1, **options)
    return download_models([job], models_dir=models_dir, index_path=models_dir.parent / "models.db",
                           options=opts, callbacks=callbacks)[0]


def test_the_engine_reports_staged_bytes_on_resume_and_waits_before_retries(models_dir: Path) -> None:
    data = generate_model_bytes(7, 3 * MIB)
    with ModelServer() as server:
        url = server.add_file("/m", data)
        digest = short_hash_bytes(data)
        job = DownloadJob(digest, "m.safetensors", "checkpoints/m.safetensors", len(data), (url,), digest)
        server.set_fault("/m", close_after=MIB)
        first = _fetch(job, models_dir, Recorder(), retries=1)
        assert not first.success
        server.set_fault("/m", fail_times=1, fail_status=503)
        recorder = Recorder()
        second = _fetch(job, models_dir, recorder)
    assert second.success, second.error
    resume = recorder.events[0]
    assert resume[0] == "resume" and MIB <= resume[1] < len(data) and resume[2] == len(data)
    retry = next(e for e in recorder.events if e[0] == "retry")
    assert retry[1] > 0 and "503" in retry[2]
    assert [e for e in recorder.events if e[0] == "progress"][-1] == ("progress", len(data), len(data))


def test_plain_lines_say_when_a_file_is_retried() -> None:
    out = io.StringIO()
    lines = LineProgress(out)
    lines.on_file_retry("m.safetensors", 4.2, "127.0.0.1 answered 503")
    assert out.getvalue() == "retrying m.safetensors in 4 s: 127.0.0.1 answered 503\n"


def test_plain_lines_do_not_count_resumed_bytes_as_fetched() -> None:
    out = io.StringIO()
    lines = LineProgress(out)
    lines.on_file_start("m.safetensors", 1, 1)
    lines.on_file_resume("m.safetensors", 2 * MIB, 3 * MIB)
    lines.on_file_progress("m.safetensors", 3 * MIB, 3 * MIB)
    lines.on_file_complete("m.safetensors", True, None)
    assert out.getvalue().splitlines()[-1].startswith("done m.safetensors (1.0 MiB in ")
    assert out.getvalue().splitlines()[-1].endswith(" s, 2.0 MiB were already here)")


def test_a_hook_says_when_it_retries() -> None:
    from cfd.hooks.progress import HookProgress

    out = io.StringIO()
    HookProgress(out).on_file_retry("m.safetensors", 2.4, "127.0.0.1 answered 503")
    assert out.getvalue() == "cfd: m.safetensors: 127.0.0.1 answered 503; retrying in 2 s\n"


def test_the_agents_speed_ignores_staged_bytes_and_says_when_it_retries(tmp_path: Path) -> None:
    import time

    from cfd.agent.bgqueue import Progress
    from cfd.agent.statusfile import StatusBoard
    from cfd.cli.common import agent_download_figures

    board = StatusBoard(tmp_path / "status.json", {})
    progress = Progress(board)
    progress.on_file_start("m.safetensors", 1, 1)
    progress.on_file_resume("m.safetensors", 80 * MIB, 100 * MIB)
    time.sleep(0.3)  # a floor under the measured interval (and past the 0.25 s display throttle)
    progress.on_file_progress("m.safetensors", 81 * MIB, 100 * MIB)
    (item,) = board.get("downloads").values()
    assert 0 < item["speed"] <= MIB / 0.3  # 1 MiB moved; the 80 staged would make it >= 80 MiB over the same time
    assert agent_download_figures(item, time.time()).startswith("81% at ")
    progress.on_file_retry("m.safetensors", 20, "127.0.0.1 answered 503")
    (item,) = board.get("downloads").values()
    assert agent_download_figures(item, item["retry_at"] - 20) == "81%, retrying in 20 s"
