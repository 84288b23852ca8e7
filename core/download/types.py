"""The download engine's value types, and the errors its parts raise to one another.

Kept apart from the engine (no requests here) so `repair` and the agent can name
jobs and outcomes without loading the HTTP stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..store.shorthash import BLAKE3_SAMPLE
from .callbacks import DownloadCallbacks  # re-exported: the engine's callers import it from here too
from .tokens import CIVITAI_HOSTS, HF_HOSTS, Tokens, hf_hosts_from_env, load_tokens
from ..text import sanitize
from .urls import redact_urls_in

if TYPE_CHECKING:
    from ..environment import Environment

MIB = 1 << 20
INTERRUPTED = "interrupted; the partial download is kept and the next run resumes it"
# Ends the error of a source that answered 404/410: retrying will not help, the manifest must change.
SOURCE_GONE = "fix or replace this source in pyproject.toml"
OVER_BUDGET = "hook time budget"  # how the error of an outcome stopped by DownloadOptions.deadline begins
GIB = 1 << 30
AUTO_CONNECTIONS = 16  # the ceiling of cfd.connections=auto (aria2c allows 16 per server)


# --------------------------------------------------------------------------- public types


class Ending(Enum):
    """How a download ended: what callers decide on (the error text is for people)."""

    DONE = "done"  # downloaded, verified, placed and indexed
    FOUND = "found"  # already here (indexed, or at its path with the right hash): nothing fetched
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # cancelled (Ctrl-C, agent stop): the partial is kept for a resume
    OVER_BUDGET = "over budget"  # a hook's time budget ran out (DownloadOptions.deadline)
    SOURCE_GONE = "source gone"  # every source answered 404/410: only a fix to pyproject.toml helps

    @property
    def success(self) -> bool:
        return self in (Ending.DONE, Ending.FOUND)


@dataclass(frozen=True)
class DownloadJob:
    key: str  # model hash, or "intent:<wf>/<node>/<widget>"
    filename: str
    relative_path: str  # below the models dir (validated by safety.safe_relative_path)
    size: int | None  # None only for intents
    sources: tuple[str, ...]
    expected_hash: str | None  # the short hash; None for intents (unverifiable)
    blake3: str | None = None
    sha256: str | None = None
    criticality: str = "flexible"
    workflows: tuple[str, ...] = ()


_EXTENSIONS = ("on_file_note", "on_file_resume", "on_file_retry", "on_file_connections")


@dataclass
class BatchDownloadCallbacks:
    """ComfyDock's own callbacks type (comfydock_core.models.workflow), field for field: optional
    callables, progress without a filename. Accepted wherever DownloadCallbacks are, as is an
    instance of ComfyDock's class itself."""

    on_batch_start: Callable[[int], None] | None = None
    on_file_start: Callable[[str, int, int], None] | None = None
    on_file_progress: Callable[[int, int | None], None] | None = None
    on_file_complete: Callable[[str, bool, str | None], None] | None = None
    on_batch_complete: Callable[[int, int], None] | None = None


_COMFYDOCK_FIELDS = {f.name for f in fields(BatchDownloadCallbacks)}


class _FromComfyDock(DownloadCallbacks):
    """ComfyDock-shaped callbacks driven by cfd's parallel engine.

    ComfyDock downloads one file at a time and its progress carries no filename, so its
    renderers show one file: start, progress, complete, then the next. That is what they get:
    calls are serialised, one file is in focus (the earliest started still unreported), and the
    others' events wait their turn (their latest progress and their completion are kept)."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._queue: list[str] = []  # started, not yet reported complete; [0] is in focus
        self._started: set[str] = set()  # start already reported
        self._progress: dict[str, tuple[int, int | None]] = {}
        self._done: dict[str, tuple[bool, str | None]] = {}
        self._shown = 0
        self._total = 0

    def _call(self, name: str, *args: Any) -> None:
        function = getattr(self._target, name, None)
        if function is not None:
            function(*args)

    def _advance(self) -> None:
        """Report the focus file's start; while it is finished, report its end and move on."""
        while self._queue:
            focus = self._queue[0]
            if focus not in self._started:
                self._started.add(focus)
                self._shown += 1
                self._call("on_file_start", focus, self._shown, self._total)
                if focus in self._progress:
                    self._call("on_file_progress", *self._progress[focus])
            if focus not in self._done:
                return
            self._queue.pop(0)
            self._call("on_file_complete", focus, *self._done.pop(focus))
            self._started.discard(focus)
            self._progress.pop(focus, None)

    def on_batch_start(self, total: int) -> None:
        with self._lock:
            self._total = total
            self._call("on_batch_start", total)

    def on_file_start(self, filename: str, index: int, total: int) -> None:
        with self._lock:
            self._queue.append(filename)
            self._advance()

    def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
        with self._lock:
            self._progress[filename] = (downloaded, total)
            if self._queue and self._queue[0] == filename:
                self._call("on_file_progress", downloaded, total)

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
        with self._lock:
            self._done[filename] = (success, error)
            self._advance()

    def on_batch_complete(self, succeeded: int, total: int) -> None:
        with self._lock:
            self._call("on_batch_complete", succeeded, total)


class _Partial(DownloadCallbacks):
    """An object with only some of the methods: the rest are no-ops."""

    def __init__(self, target: Any) -> None:
        for name in (*_COMFYDOCK_FIELDS, *_EXTENSIONS):
            method = getattr(target, name, None)
            if callable(method):
                setattr(self, name, method)


def as_callbacks(callbacks: Any) -> DownloadCallbacks:
    """Whatever a caller passed as callbacks, as DownloadCallbacks: cfd's own, any object with
    (some of) its methods, or ComfyDock's BatchDownloadCallbacks (or this module's copy of it)."""
    if callbacks is None:
        return DownloadCallbacks()
    if isinstance(callbacks, DownloadCallbacks):
        return callbacks
    if is_dataclass(callbacks) and _COMFYDOCK_FIELDS <= {f.name for f in fields(callbacks)}:
        return _FromComfyDock(callbacks)
    return _Partial(callbacks)


@dataclass(frozen=True)
class DownloadOutcome:
    job: DownloadJob
    success: bool
    relative_path: str | None  # where it now lies (success)
    source: str | None  # redacted URL that worked
    error: str | None  # one line, secrets removed
    short_hash: str | None  # computed (intents too)
    bytes_fetched: int = 0
    ending: Ending | None = None  # None: DONE or FAILED, from `success`

    def __post_init__(self) -> None:
        if self.ending is None:
            object.__setattr__(self, "ending", Ending.DONE if self.success else Ending.FAILED)

    @property
    def interrupted(self) -> bool:
        return self.ending is Ending.INTERRUPTED

    @property
    def over_budget(self) -> bool:
        return self.ending is Ending.OVER_BUDGET


@dataclass(frozen=True)
class DownloadOptions:
    jobs: int = 4  # files at once
    # Most connections per large file (when the server honours ranges): a transfer starts with
    # a few and the batch adds more while the aggregate rate grows with them (growth.py).
    connections: int = AUTO_CONNECTIONS
    stall_timeout: float = 30.0  # seconds without a byte = failure
    connect_timeout: float = 10.0
    retries: int = 5  # attempts per source on connection errors, 5xx, 429
    allow_private_networks: bool = False
    # "host" or "host:port" reachable although private (API only: a mirror one trusts, or a
    # test's first hop); every other hop of a redirect chain is still checked.
    private_hosts: tuple[str, ...] = ()
    tokens: Tokens = field(default_factory=Tokens)
    hf_hosts: tuple[str, ...] = HF_HOSTS
    civitai_hosts: tuple[str, ...] = CIVITAI_HOSTS
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    retry_after_cap: float = 60.0
    segment_min: int = 32 * MIB  # a file is split only into segments at least this big
    chunk_size: int = MIB  # most bytes per read; 4 MiB reads cost glibc heap growth (RSS) and no speed
    checkpoint_bytes: int = 4 * MIB  # sidecar saved after this much progress: a kill loses at most this
    flush_bytes: int = 64 * MIB  # write back to disk in the background every so often (0: only at the end)
    max_redirects: int = 10
    max_rate: int = 0  # bytes/s over all downloads; 0 = unlimited
    user_agent: str = "cfd/0.1"
    # Like curl's --speed-limit/--speed-time: a connection slower than `low_speed_limit`
    # bytes/s over `low_speed_time` seconds fails (a byte every 29 s must not hold forever).
    low_speed_limit: int = 1024
    low_speed_time: float = 30.0
    # The most a download whose size the manifest does not give (an intent) may be.
    max_unknown_size: int = 64 * GIB
    # time.monotonic() after which the batch stops (a hook's time budget); None: no budget.
    deadline: float | None = None
    budget: float | None = None  # the budget's length in seconds, for the message
    short_hash: str = BLAKE3_SAMPLE  # the dialect's sampled hash: verifies downloads, keys the index
    # The team mirror (core.mirror.reading.EngineMirror): tried before the manifest's sources,
    # and fed every verified origin download. None: no mirror (boto3 never imported).
    mirror: Any = None

    @classmethod
    def from_settings(cls, env: Environment, **overrides: Any) -> DownloadOptions:
        """Options from an Environment's resolved settings plus HF/Civitai tokens."""
        s = env.settings
        values: dict[str, Any] = {
            "jobs": s["cfd.jobs"],
            "connections": AUTO_CONNECTIONS if s["cfd.connections"] == "auto" else s["cfd.connections"],
            "stall_timeout": float(s["cfd.stallTimeout"]),
            "retries": s["cfd.retries"],
            "low_speed_limit": s["cfd.lowSpeedLimit"],
            "low_speed_time": float(s["cfd.lowSpeedTime"]),
            "max_unknown_size": s["cfd.maxUnknownSize"],
            "allow_private_networks": bool(s["cfd.allowPrivateNetworks"]),
            "tokens": load_tokens(
                workspace_civitai_token=getattr(env, "civitai_token", None),
                workspace_hf_token=getattr(env, "hf_token", None),
                workspace_name=getattr(getattr(env, "dialect", None), "title", "ComfyDock"),
            ),
            "short_hash": getattr(getattr(env, "dialect", None), "short_hash", BLAKE3_SAMPLE),
            "hf_hosts": hf_hosts_from_env(),
        }
        if s["cfd.mirror"]:
            from ..mirror.reading import engine_mirror

            values["mirror"] = engine_mirror(env)
        values.update(overrides)
        return cls(**values)


def failed(job: DownloadJob, error: str, fetched: int = 0, ending: Ending = Ending.FAILED) -> DownloadOutcome:
    return DownloadOutcome(job, False, None, None, error, None, fetched, ending)


def interrupted(job: DownloadJob, fetched: int = 0) -> DownloadOutcome:
    return failed(job, INTERRUPTED, fetched, Ending.INTERRUPTED)


def clean(text: str) -> str:
    """One line, safe to show, with any URL in it redacted."""
    return sanitize(redact_urls_in(" ".join(str(text).split())))[:300]


# --------------------------------------------------------------------------- internal errors


class Failure(Exception):
    """This source failed. `message` is one line and safe to show."""

    def __init__(self, message: str, *, retry: bool = False, retry_after: float | None = None, gone: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.retry_after = retry_after
        self.gone = gone  # the source answered 404/410


class DiskError(Exception):
    """Writing failed (disk full, file too large): keep the partial, stop this file."""


class Cancelled(Exception):
    pass
