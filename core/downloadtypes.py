"""The download engine's value types, and the errors its parts raise to one another.

Kept apart from the engine (no requests here) so `repair` and the agent can name
jobs and outcomes without loading the HTTP stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .tokens import CIVITAI_HOSTS, HF_HOSTS, Tokens, hf_hosts_from_env, load_tokens
from .urls import redact_url

MIB = 1 << 20
INTERRUPTED = "interrupted; the partial download is kept and the next run resumes it"
OVER_BUDGET = "hook time budget"  # how an outcome stopped by DownloadOptions.deadline begins
GIB = 1 << 30
_URL_IN_TEXT = re.compile(r"\w+://\S+")


# --------------------------------------------------------------------------- public types


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

    def on_batch_complete(self, succeeded: int, total: int) -> None: ...


@dataclass(frozen=True)
class DownloadOutcome:
    job: DownloadJob
    success: bool
    relative_path: str | None  # where it now lies (success)
    source: str | None  # redacted URL that worked
    error: str | None  # one line, secrets removed
    short_hash: str | None  # computed (intents too)
    bytes_fetched: int = 0

    @property
    def interrupted(self) -> bool:
        return not self.success and (self.error or "").startswith("interrupted")

    @property
    def over_budget(self) -> bool:
        return not self.success and (self.error or "").startswith(OVER_BUDGET)


@dataclass(frozen=True)
class DownloadOptions:
    jobs: int = 4  # files at once
    connections: int = 4  # connections per large file (when the server honours ranges)
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

    @classmethod
    def from_settings(cls, env: Any, **overrides: Any) -> DownloadOptions:
        """Options from an Environment's resolved settings plus HF/Civitai tokens."""
        s = env.settings
        values: dict[str, Any] = {
            "jobs": s["cfd.jobs"],
            "connections": s["cfd.connections"],
            "stall_timeout": float(s["cfd.stallTimeout"]),
            "retries": s["cfd.retries"],
            "low_speed_limit": s["cfd.lowSpeedLimit"],
            "low_speed_time": float(s["cfd.lowSpeedTime"]),
            "max_unknown_size": s["cfd.maxUnknownSize"],
            "allow_private_networks": bool(s["cfd.allowPrivateNetworks"]),
            "tokens": load_tokens(workspace_civitai_token=getattr(env, "civitai_token", None)),
            "hf_hosts": hf_hosts_from_env(),
        }
        values.update(overrides)
        return cls(**values)


def failed(job: DownloadJob, error: str, fetched: int = 0) -> DownloadOutcome:
    return DownloadOutcome(job, False, None, None, error, None, fetched)


def clean(text: str) -> str:
    """One line with any URL in it redacted."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), " ".join(str(text).split()))
    return text[:300]


# --------------------------------------------------------------------------- internal errors


class Failure(Exception):
    """This source failed. `message` is one line and safe to show."""

    def __init__(self, message: str, *, retry: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.retry_after = retry_after


class DiskError(Exception):
    """Writing failed (disk full, file too large): keep the partial, stop this file."""


class Cancelled(Exception):
    pass
