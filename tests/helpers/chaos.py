"""Shared pieces of the chaos suites: seeds, figures, served models, and the invariants.

The invariants are what a user would check after anything went wrong:

* no partial file lies at a model path (a model file is either absent or exactly right);
* nothing else appeared among the models (no temp files, no copies);
* the index opens, and every location it lists exists on disk with its size;
* every pending marker parses, and none had to be set aside as corrupt.

Figures (faults injected, runs survived, bytes re-fetched) are printed as one line per
test (visible with `pytest -s`) and, when CFD_CHAOS_FIGURES names a file, appended to it
as JSON lines: docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.manifest import ManifestBuilder, short_hash_for

MIB = 1 << 20
CFD = [sys.executable, "-m", "cfd.cli.main"]


# --------------------------------------------------------------------------- seeds and figures


def chaos_seeds(default: int = 3) -> list[int]:
    """CFD_CHAOS_SEEDS runs (default small, for CI), from CFD_CHAOS_SEED_BASE (default 1)."""
    count = int(os.environ.get("CFD_CHAOS_SEEDS", str(default)))
    base = int(os.environ.get("CFD_CHAOS_SEED_BASE", "1"))
    return list(range(base, base + max(1, count)))


# Read at import: the tests' isolation removes every CFD_* variable before a test runs.
FIGURES_FILE = os.environ.get("CFD_CHAOS_FIGURES")


def report(name: str, **figures: Any) -> None:
    """One line of figures on stdout (pytest -s) and, if asked, a JSON line in a file."""
    print(f"\n[chaos] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    target = FIGURES_FILE
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"test": name, **figures}) + "\n")


# --------------------------------------------------------------------------- models on a server


@dataclass
class Served:
    """A model file the server serves, and what the manifest says about it."""

    name: str
    seed: int
    size: int
    data: bytes
    hash: str
    url: str
    category: str = "checkpoints"
    criticality: str = "required"

    @property
    def relpath(self) -> str:
        return f"{self.category}/{self.name}"

    @property
    def path(self) -> str:  # on the server
        return f"/{self.category}/{self.name}"


def serve(server: Any, name: str, seed: int, size: int, category: str = "checkpoints", criticality: str = "required") -> Served:
    from cfd.demo.content import generate_model_bytes

    data = generate_model_bytes(seed, size)
    url = server.add_file(f"/{category}/{name}", data)
    return Served(name, seed, size, data, short_hash_for(data), url, category, criticality)


def manifest(models: Iterable[Served], workflow: str = "wf1", builder: ManifestBuilder | None = None) -> ManifestBuilder:
    builder = builder or ManifestBuilder()
    for number, m in enumerate(models):
        builder.model(m.hash, m.name, m.size, m.relpath, m.category, [m.url])
        builder.ref(workflow, m.name, m.category, hash=m.hash, criticality=m.criticality, status="resolved",
                    node_id=f"{m.seed}{number}")
    return builder


# --------------------------------------------------------------------------- processes


def run_cfd(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([*CFD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def spawn_cfd(*args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[str]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*CFD, *args], cwd=cwd, env=env, text=True, **kwargs)


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def wait_until(check: Callable[[], Any], timeout: float, what: str, poll: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


class Lines:
    """Collects a pipe's lines as they arrive (a thread), so a test can wait for one."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def has(self, fragment: str) -> bool:
        return any(fragment in line for line in list(self.lines))

    def text(self, timeout: float = 30) -> str:
        """Everything, once the pipe has closed."""
        self._thread.join(timeout)
        return "".join(self.lines)


@dataclass(frozen=True)
class Kill:
    """Where a kill was aimed, whether it hit a live process (one that had exited is no fault), and,
    when the server was watched, what was on its way to the victim at that moment."""

    point: str
    landed: bool
    connections: int = 0  # open TCP connections to the server
    queued: int = 0  # body bytes in their socket queues (written by the server, not yet read by the client)
    after: int = 0  # body bytes the server wrote after the kill, before it noticed the connections were dead

    def __str__(self) -> str:
        return self.point if self.landed else f"{self.point} (already exited)"


def is_running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has exited: a SIGKILL to it changes nothing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def socket_queues(port: int) -> tuple[int, int]:
    """(connections, bytes) of the established TCP connections to `port` on this machine: the bytes
    are the server's unacknowledged send queues plus the clients' unread receive queues (a byte
    on the wire may be in both: never less than what is really queued). From /proc/net/tcp."""
    connections = queued = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), fields[3]
            if state != "01":  # ESTABLISHED
                continue
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            if local == port:
                queued += tx
            elif remote == port:
                connections += 1
                queued += rx
    return connections, queued


def kill_at_random_point(rng: random.Random, proc: subprocess.Popen[Any], progress: Callable[[], int], total: int,
                         victim: Callable[[], int | None] | None = None, max_seconds: float = 3.0,
                         server: Any = None) -> Kill:
    """SIGKILL `proc` (or the pid `victim()` names) at a point drawn from `rng`.

    Half the time the point is a byte count (somewhere in the transfer), half the time
    a delay from now (start-up, planning, downloading, placing, writing the marker).
    Says where, and whether the signal reached a process that was still running.

    With `server` (a helpers.faults.ModelServer whose bodies are throttled), the server is frozen
    around the kill: the socket queues are read while nothing more is written, and the victim is
    dead before anything is written again, so the bytes the kill can waste are all accounted.
    """
    if rng.random() < 0.5:
        at = int(total * rng.uniform(0.02, 0.98))
        what = f"bytes>={at}"
        deadline = time.monotonic() + 30
        while progress() < at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    else:
        delay = rng.uniform(0.0, max_seconds)
        what = f"after {delay:.2f}s"
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
    with server.frozen() if server is not None else contextlib.nullcontext():
        connections, queued = socket_queues(server.port) if server is not None else (0, 0)
        sent = server.bytes_sent() if server is not None else 0
        pid = victim() if victim else proc.pid
        landed = False
        if pid is not None and is_running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                landed = True
            except ProcessLookupError:
                pass
            wait_until(lambda: not is_running(pid), 30, "the killed process to end", poll=0.002)
    after = 0
    if server is not None:  # a write can still succeed on a dead peer's connection (its reset comes back after)
        wait_until(lambda: all(r.finished for r in server.requests), 30, "the server to finish the killed requests")
        after = server.bytes_sent() - sent
    return Kill(what, landed, connections, queued, after)


# --------------------------------------------------------------------------- invariants


def model_files(models_dir: Path) -> dict[str, Path]:
    """Every file under the models dir except cfd's own .cfd folder, by relative path."""
    found = {}
    for root, dirs, files in os.walk(models_dir):
        if Path(root) == models_dir and ".cfd" in dirs:
            dirs.remove(".cfd")
        for name in files:
            path = Path(root) / name
            found[path.relative_to(models_dir).as_posix()] = path
    return found


def check_invariants(models_dir: Path, index_path: Path, git_dirs: Sequence[Path], models: Sequence[Served],
                     *, complete: bool = False, extra_ok: Iterable[str] = ()) -> dict[str, Any]:
    """Assert the promises that must hold at any moment (see the module docstring).

    With `complete`, every model must be in place, indexed once, with no staging left.
    Returns a few facts (placed, partials) for the figures.
    """
    from cfd.core.store.index import ModelIndex
    from cfd.core.sync.marker import MARKER_NAME

    expected = {m.relpath: m for m in models}
    on_disk = model_files(models_dir)
    strays = sorted(set(on_disk) - set(expected) - set(extra_ok))
    assert not strays, f"unexpected files among the models: {strays}"
    placed = []
    for relpath, m in expected.items():
        path = on_disk.get(relpath)
        if path is None:
            assert not complete, f"{relpath} is missing after a complete run"
            continue
        stat = path.stat()
        assert stat.st_size == m.size, f"partial file at a model path: {relpath} has {stat.st_size} of {m.size} bytes"
        assert path.read_bytes() == m.data, f"wrong content at a model path: {relpath}"
        placed.append(relpath)

    with ModelIndex(index_path, models_dir) as index:
        locations = index.locations()
        rows = index._conn.execute("SELECT model_hash, COUNT(*) FROM model_locations GROUP BY model_hash").fetchall()
    for relpath, location in locations.items():
        path = models_dir / relpath
        assert path.is_file(), f"the index lists {relpath}, which is not on disk"
        assert path.stat().st_size == location.size, f"the index says {relpath} has {location.size} bytes"
        if relpath in expected:
            assert location.model_hash == expected[relpath].hash, f"the index has another hash for {relpath}"
    if complete:
        counts = dict(rows)
        for m in models:
            assert counts.get(m.hash) == 1, f"{m.name} is indexed {counts.get(m.hash, 0)} times, not once"
            assert (models_dir / m.relpath).stat().st_nlink == 1, f"{m.name} has another hard link (a staging leftover)"
        staging = models_dir / ".cfd" / "staging"
        left = sorted(os.listdir(staging)) if staging.exists() else []
        assert left == [], f"staging files left after a complete run: {left}"

    for git_dir in git_dirs:
        state = git_dir / "cfd"
        marker = state / MARKER_NAME
        if marker.exists():
            data = json.loads(marker.read_bytes())  # a reader never sees half a marker
            assert isinstance(data.get("entries"), list)
        corrupt = sorted(p.name for p in state.glob(f"{MARKER_NAME}.corrupt-*")) if state.exists() else []
        assert corrupt == [], f"a marker was found corrupt and set aside: {corrupt}"
    staging = models_dir / ".cfd" / "staging"
    partials = sorted(p.name for p in staging.glob("*.part")) if staging.exists() else []
    return {"placed": placed, "partials": partials}


def agent_pid(models_dir: Path) -> int | None:
    """The pid of the agent serving `models_dir`, once it says it is ready."""
    from cfd.agent.paths import agent_paths
    from cfd.agent.statusfile import read_status

    status = read_status(agent_paths(models_dir).status) or {}
    return status.get("pid") if status.get("state") == "ready" else None


def pending_keys(git_dir: Path) -> dict[str, str]:
    from cfd.core.sync.marker import Marker

    return {e.key: e.reason for e in Marker(git_dir).read()}


def fetched_unplaced(requests: Sequence[Any], models: Sequence[Served], placed: Iterable[str]) -> int:
    """How many of `models` these server requests fetched that are not in place: the files a kill
    interrupted (their progress since the last checkpoint may be lost)."""
    from urllib.parse import urlsplit

    fetched = {urlsplit(r.path).path for r in requests if r.method == "GET"}
    done = set(placed)
    return sum(1 for m in models if m.path in fetched and m.relpath not in done)


def kill_budget(kill: Kill, interrupted: int) -> int:
    """The most a kill may make the next run fetch again, by what the engine promises: each interrupted
    file loses at most its progress since the last checkpoint (saved every checkpoint_bytes), each
    open connection at most the one read not yet written (chunk_size), plus what sat in the socket
    queues (sent by the server, never read by the killed process) and what the server wrote to the
    dead connections before it noticed."""
    from cfd.core.download.types import DownloadOptions

    options = DownloadOptions()
    return interrupted * options.checkpoint_bytes + kill.connections * options.chunk_size + kill.queued + kill.after
