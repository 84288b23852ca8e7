"""The download engine: fast, resumable, verified, atomic, and careful with secrets.

`download_models(jobs, ...)` fetches model files named by a (teammate's) manifest
into the models directory:

* one `requests.Session` for everything (connection reuse), raw 1-8 MiB reads with
  identity encoding, `os.pwrite` at absolute offsets;
* partial data lives in `<models_dir>/.cfd/staging/<key>.part` with a JSON sidecar
  (source, validator, size, per-segment progress); a later run resumes with
  `Range` + `If-Range` and accepts only a 206 that starts where we are;
* several files at once (`jobs`), and a large file split into ranges fetched on
  several connections (`connections`) when the server honours ranges; an idle
  connection takes over half of the biggest remaining range (no slow tail);
* write-back starts in the background, so the final fsync finds little left to do;
* the short hash is computed from the bytes as they arrive; a full blake3/sha256
  from the manifest is checked too; a mismatch discards the data and names the source;
* fsync, then a no-clobber move into place; the index records model, location and source;
* tokens only to their own hosts, redirects followed by hand (each hop re-checked),
  loopback/private addresses refused unless allowed.

Callbacks are called from worker threads (one per file, plus one per segment for
progress); implementations must be thread-safe. Errors are one line, with
credentials removed, never a traceback.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import random
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from hashlib import sha256 as _sha256
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

import requests
import urllib3
from blake3 import blake3
from filelock import FileLock
from filelock import Timeout as LockTimeout

from .errors import CfdError, UnsafeManifestValue
from .index import ModelIndex
from .safety import check_host, check_url, safe_relative_path, target_path
from .shorthash import StreamingShortHasher, short_hash_file
from .tokens import CIVITAI_HOSTS, HF_HOSTS, Tokens, auth_header, load_tokens, service_of, token_hint
from .urls import _SECRET_PARAMS, host_of, redact_url

MIB = 1 << 20
INTERRUPTED = "interrupted; the partial download is kept and the next run resumes it"
_REDIRECTS = (301, 302, 303, 307, 308)
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
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


@dataclass(frozen=True)
class DownloadOptions:
    jobs: int = 4  # files at once
    connections: int = 4  # connections per large file (when the server honours ranges)
    stall_timeout: float = 30.0  # seconds without a byte = failure
    connect_timeout: float = 10.0
    retries: int = 5  # attempts per source on connection errors, 5xx, 429
    allow_private_networks: bool = False
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

    @classmethod
    def from_settings(cls, env: Any, **overrides: Any) -> DownloadOptions:
        """Options from an Environment's resolved settings plus HF/Civitai tokens."""
        s = env.settings
        values: dict[str, Any] = {
            "jobs": s["cfd.jobs"],
            "connections": s["cfd.connections"],
            "stall_timeout": float(s["cfd.stallTimeout"]),
            "retries": s["cfd.retries"],
            "allow_private_networks": bool(s["cfd.allowPrivateNetworks"]),
            "tokens": load_tokens(workspace_civitai_token=getattr(env, "civitai_token", None)),
        }
        values.update(overrides)
        return cls(**values)


# --------------------------------------------------------------------------- internal errors


class _Failure(Exception):
    """This source failed. `message` is one line and safe to show."""

    def __init__(self, message: str, *, retry: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.retry_after = retry_after


class _Restart(Exception):
    """The server's copy changed or it answered a resume oddly: start this source over."""


class _NoRanges(Exception):
    """The server ignored our Range request; carries its 200 response to stream instead."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__("no ranges")
        self.response = response


class _DiskError(Exception):
    """Writing failed (disk full, file too large): keep the partial, stop this file."""


class _Cancelled(Exception):
    pass


class _Stopped(Exception):
    """A sibling segment failed; this one stops quietly."""


def _clean(text: str) -> str:
    """One line with any URL in it redacted."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), " ".join(str(text).split()))
    return text[:300]


def _network_reason(exc: BaseException) -> str:
    """A short human reason for a requests/urllib3/socket error, without URLs."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (socket.timeout, TimeoutError, urllib3.exceptions.ReadTimeoutError)):
            return "timed out"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, (ConnectionResetError, BrokenPipeError)):
            return "connection reset"
        if isinstance(current, (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)):
            return "connection closed early"
        if isinstance(current, socket.gaierror):
            return "host name not found"
        nxt = current.__cause__ or current.__context__
        if nxt is None and current.args and isinstance(current.args[-1], BaseException):
            nxt = current.args[-1]
        current = nxt
    return _clean(type(exc).__name__)


def _storable_url(url: str) -> str:
    """The URL as the index stores it: unchanged unless it carries credentials."""
    parts = urlsplit(url)
    has_secret = "@" in parts.netloc or any(_SECRET_PARAMS.match(k) for k in parse_qs(parts.query, keep_blank_values=True))
    return redact_url(url) if has_secret else url


def prepare_url(url: str, hf_hosts: tuple[str, ...] = HF_HOSTS, civitai_hosts: tuple[str, ...] = CIVITAI_HOSTS) -> str:
    """Check a source URL and turn known page links into download links.

    Hugging Face `/blob/` (the web page) becomes `/resolve/` (the file); a Civitai
    model page with `modelVersionId` becomes the API download URL.
    """
    check_url(url)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    service = service_of(host, hf_hosts, civitai_hosts)
    if service == "huggingface" and "/blob/" in parts.path:
        return urlunsplit(parts._replace(path=parts.path.replace("/blob/", "/resolve/", 1)))
    if service == "civitai" and re.match(r"^/models/\d+", parts.path):
        version = parse_qs(parts.query).get("modelVersionId", [""])[0]
        if version.isdigit():
            return urlunsplit((parts.scheme, parts.netloc, f"/api/download/models/{version}", "", ""))
    return url


# --------------------------------------------------------------------------- staging state


def staging_name(key: str) -> str:
    """A file-system-safe name for a job's key (hashes as-is, intents hashed)."""
    if _HEX16.match(key):
        return key
    return "intent-" + _sha256(key.encode("utf-8")).hexdigest()[:24]


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


_BOOT_ID = _boot_id()


@dataclass
class _State:
    """What the sidecar remembers; segments are [start, end, done] (end -1: size unknown)."""

    source: str
    size: int | None
    segments: list[list[int]]
    etag: str | None = None
    last_modified: str | None = None
    ranges_ok: bool = False
    synced: list[int] | None = None  # per-segment `done` at the last fsync
    boot_id: str | None = _BOOT_ID

    @property
    def done(self) -> int:
        return sum(seg[2] for seg in self.segments)

    def complete(self) -> bool:
        return self.size is not None and all(seg[0] + seg[2] >= seg[1] for seg in self.segments)

    def validator(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def load(cls, path: Path, source: str, size: int | None, part_size: int) -> _State | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        if state.source != source or (size is not None and state.size != size):
            return None
        if state.boot_id != _BOOT_ID:
            # The machine restarted: only bytes flushed by fsync are known to be on disk.
            if not state.synced or len(state.synced) != len(state.segments):
                return None
            for seg, synced in zip(state.segments, state.synced):
                seg[2] = min(seg[2], synced)
            state.boot_id = _BOOT_ID
        if any(seg[0] + seg[2] > part_size for seg in state.segments):
            return None
        return state


def plan_segments(size: int | None, connections: int, segment_min: int) -> list[list[int]]:
    if size is None:
        return [[0, -1, 0]]
    count = max(1, min(connections, size // max(segment_min, MIB)))
    step = -(-size // count // MIB) * MIB  # MiB-aligned
    bounds = [min(i * step, size) for i in range(count)] + [size]
    return [[bounds[i], bounds[i + 1], 0] for i in range(count) if bounds[i] < bounds[i + 1]]


# --------------------------------------------------------------------------- helpers


class _RateLimiter:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next = time.monotonic()

    def consume(self, n: int, cancel: threading.Event) -> None:
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now) + n / self.rate
            delay = self.next - now
        if delay > 0.005:
            cancel.wait(delay)


class _FullHash:
    """blake3/sha256 of the whole file, fed in order; catches up from disk when needed."""

    def __init__(self, want_blake3: bool, want_sha256: bool) -> None:
        self.want_blake3, self.want_sha256 = want_blake3, want_sha256
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.position = 0
        self.b3 = blake3(max_threads=blake3.AUTO) if self.want_blake3 else None
        self.s256 = _sha256() if self.want_sha256 else None

    def feed(self, offset: int, data: bytes | memoryview) -> None:
        with self.lock:
            if offset != self.position:
                return  # out of order (another segment): caught up from disk later
            if self.b3 is not None:
                self.b3.update(data)
            if self.s256 is not None:
                self.s256.update(data)
            self.position += len(data)

    def catch_up(self, fd: int, upto: int) -> None:
        while self.position < upto:
            data = os.pread(fd, min(8 * MIB, upto - self.position), self.position)
            if not data:
                raise _DiskError("the partial file is shorter than recorded")
            self.feed(self.position, data)

    def digests(self) -> tuple[str | None, str | None]:
        return (self.b3.hexdigest() if self.b3 else None, self.s256.hexdigest() if self.s256 else None)


class _Flusher:
    """Writes a file's dirty pages back while the download goes on.

    Without it a multi-GB file sits in the page cache (the kernel waits for 10 % of
    RAM to be dirty) and the final fsync writes all of it, after the network is done.
    On Linux POSIX_FADV_DONTNEED starts write-back without forcing a journal commit
    (measured ~1.5x faster than periodic fdatasync here) and drops pages already
    written, so a 6 GB download does not evict everything else from the cache. When
    the file will be read back (a full-hash pass) the pages are kept: fdatasync.
    """

    def __init__(self, fd: int, keep_cached: bool) -> None:
        self.fd = fd
        self.drop = not keep_cached and hasattr(os, "posix_fadvise")
        self.wanted = threading.Event()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="cfd-flush", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        self.wanted.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)
        while True:
            self.wanted.wait()
            self.wanted.clear()
            if self.closing:
                return
            try:
                if self.drop:
                    os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
                else:
                    sync(self.fd)
            except OSError:
                return  # the final fsync reports real trouble

    def close(self) -> None:
        self.closing = True
        self.wanted.set()
        self.thread.join()


def _parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    match = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def _abort_response(resp: requests.Response) -> None:
    """Unblock a thread reading this response (cancel, or a sibling segment failed)."""
    raw = resp.raw
    for conn in (getattr(raw, "_connection", None), getattr(raw, "connection", None)):
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_message(exc: OSError, what: str) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {what}"
    if exc.errno == errno.EFBIG:
        return f"file too large for the file system while writing {what}"
    return f"cannot write {what}: {exc.strerror or exc}"


# --------------------------------------------------------------------------- one source of one file


@dataclass
class _Result:
    short_hash: str
    size: int
    blake3: str | None
    sha256: str | None


class _Transfer:
    """Fetch one job from one source into its staging file; verify; leave it ready to place."""

    def __init__(self, engine: _Engine, job: DownloadJob, source: str, url: str, staging: Path) -> None:
        self.engine, self.job, self.source, self.url = engine, job, source, url
        self.options = engine.options
        self.part = staging.with_suffix(".part")
        self.sidecar = staging.with_suffix(".json")
        self.shown = redact_url(source)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.responses: set[requests.Response] = set()
        self.fetched = 0
        self.unsaved = 0
        self.last_progress = 0.0
        self.fd = -1
        self.unflushed = 0
        self.flusher: _Flusher | None = None
        self.state: _State
        self.hasher: StreamingShortHasher | None = None
        self.full: _FullHash | None = None
        if job.blake3 or job.sha256:
            self.full = _FullHash(bool(job.blake3), bool(job.sha256))

    # -- lifecycle ---------------------------------------------------------

    def run(self) -> _Result:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        self.engine.register(self)
        if self.options.flush_bytes > 0:
            self.flusher = _Flusher(self.fd, keep_cached=self.full is not None)
        try:
            loaded = _State.load(self.sidecar, self.shown, self.job.size, os.fstat(self.fd).st_size)
            if loaded is None:
                self._reset()
            else:
                self.state = loaded
                self._new_hasher(seed=True)
            try:
                self._fetch()
            except (_Cancelled, _DiskError, _Failure):
                self._checkpoint(sync=True)
                raise
            self.engine.callbacks.on_file_progress(self.job.filename, self.state.done, self.state.size)
            return self._verify()
        finally:
            self.engine.unregister(self)
            if self.flusher is not None:
                self.flusher.close()
            os.close(self.fd)

    def discard(self) -> None:
        for path in (self.part, self.sidecar):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def _reset(self) -> None:
        """Start this source over (fresh plan, empty file)."""
        size = self.job.size
        self.state = _State(self.shown, size, plan_segments(size, self.options.connections, self.options.segment_min))
        try:
            os.ftruncate(self.fd, 0)
            if size:
                os.ftruncate(self.fd, size)  # sparse; pwrite fills it
        except OSError as exc:
            raise _DiskError(_disk_message(exc, self.job.filename)) from None
        self._new_hasher(seed=False)
        if self.full:
            self.full.reset()
        self._save()

    def _new_hasher(self, seed: bool) -> None:
        size = self.state.size
        self.hasher = StreamingShortHasher(size) if size is not None else None
        if self.hasher is not None and seed:
            ranges = [(s, s + d) for s, _e, d in self.state.segments if d]
            self.hasher.seed_from_file(self.part, ranges)

    def _learn_size(self, total: int) -> None:
        """An intent's size, learnt from the first response."""
        self.state.size = total
        self.state.segments = [[0, total, self.state.segments[0][2]]]
        try:
            os.ftruncate(self.fd, max(total, os.fstat(self.fd).st_size))
        except OSError as exc:
            raise _DiskError(_disk_message(exc, self.job.filename)) from None
        self._new_hasher(seed=self.state.done > 0)
        self._save()

    # -- progress and checkpoints -----------------------------------------

    def _save(self) -> None:
        tmp = self.sidecar.with_suffix(".json.tmp")
        try:
            tmp.write_text(self.state.to_json(), encoding="utf-8")
            os.replace(tmp, self.sidecar)
        except OSError as exc:
            raise _DiskError(_disk_message(exc, f"the progress file of {self.job.filename}")) from None

    def _checkpoint(self, sync: bool = False) -> None:
        with self.lock:
            try:
                if sync:
                    os.fsync(self.fd)
                    self.state.synced = [seg[2] for seg in self.state.segments]
                self._save()
            except (OSError, _DiskError):
                pass  # best effort: the next run may re-fetch a little more

    def _advance(self, index: int, n: int) -> None:
        with self.lock:
            segment = self.state.segments[index]
            segment[2] += n
            if segment[1] >= 0 and segment[0] + segment[2] > segment[1]:
                segment[2] = segment[1] - segment[0]  # a thief took the tail while this chunk was in flight
            self.fetched += n
            self.unsaved += n
            if self.unsaved >= self.options.checkpoint_bytes:
                self.unsaved = 0
                self._save()
            self.unflushed += n
            if self.flusher is not None and self.unflushed >= self.options.flush_bytes:
                self.unflushed = 0
                self.flusher.poke()
            done, now = self.state.done, time.monotonic()
            report = now - self.last_progress >= 0.1
            if report:
                self.last_progress = now
        if report:
            self.engine.callbacks.on_file_progress(self.job.filename, done, self.state.size)

    def _halt(self) -> None:
        if self.engine.cancel.is_set():
            raise _Cancelled()
        if self.stop.is_set():
            raise _Stopped()

    @contextmanager
    def _tracked(self, resp: requests.Response) -> Iterator[requests.Response]:
        with self.lock:
            self.responses.add(resp)
        try:
            yield resp
        finally:
            with self.lock:
                self.responses.discard(resp)
            resp.close()

    def abort(self) -> None:
        with self.lock:
            responses = list(self.responses)
        for resp in responses:
            _abort_response(resp)

    # -- fetching ----------------------------------------------------------

    def _fetch(self) -> None:
        restarts = 0
        while not self.state.complete():
            try:
                if len(self.state.segments) > 1:
                    self._fetch_segments()
                else:
                    self._with_retries(lambda: self._stream_single(None))
                    if self.state.size is None:
                        self._learn_size(self.state.segments[0][2])  # no length given: what arrived is the file
            except _Restart as exc:
                restarts += 1
                if restarts > self.options.retries:
                    raise _Failure(f"{self.shown}: {exc}; gave up after {restarts} restarts") from None
                self._reset()

    def _with_retries(self, unit: Callable[[], None]) -> None:
        attempts = 0
        while True:
            self._halt()
            before = self.fetched
            try:
                return unit()
            except _Failure as exc:
                if not exc.retry:
                    raise
                if self.fetched - before >= MIB:
                    attempts = 0  # it made progress: a flaky link, not a dead source
                attempts += 1
                if attempts >= self.options.retries:
                    raise _Failure(f"{exc.message} (gave up after {attempts} attempts)") from None
                if self.engine.cancel.wait(self._backoff(attempts, exc.retry_after)):
                    raise _Cancelled() from None
                self._halt()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        opts = self.options
        delay = min(opts.backoff_cap, opts.backoff_base * 2 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: clients that failed together retry apart
        if retry_after is not None:
            delay = max(delay, min(retry_after, opts.retry_after_cap))
        return delay

    def _request(self, start: int, end: int | None) -> requests.Response:
        headers = {}
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
            validator = self.state.validator()
            if validator:
                headers["If-Range"] = validator
        return self.engine.open(self.url, headers, self.shown)

    def _check_validator(self, resp: requests.Response) -> None:
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        state = self.state
        if state.etag is None and state.last_modified is None:
            state.etag, state.last_modified = etag, modified
        elif (state.etag and etag and etag != state.etag) or (not state.etag and state.last_modified and modified != state.last_modified):
            raise _Restart("the file changed on the server")

    def _check_body(self, resp: requests.Response, length: int | None, expected: int | None) -> None:
        if resp.headers.get("Content-Type", "").lower().startswith("text/html"):
            raise _Failure(
                f"{self.shown} returned a web page instead of the model file (a login page, or a link to a page rather than the file?)"
            )
        if expected is not None and length is not None and length != expected:
            raise _Failure(
                f"{self.shown} announces {length} bytes where the manifest says {expected}; refused (wrong file, or a lying server)"
            )

    def _stream_single(self, resp: requests.Response | None) -> None:
        offset = self.state.segments[0][2]
        resp = resp if resp is not None else self._request(offset, None)
        with self._tracked(resp):
            code, size = resp.status_code, self.state.size
            length = _content_length(resp)
            if code == 416:
                raise _Restart("the server refused to resume (416)")
            if code == 200:
                if offset:  # the server ignored Range (or the file changed): start over on this response
                    self.state.segments[0][2] = offset = 0
                    self.state.etag = self.state.last_modified = None
                    if self.full:
                        self.full.reset()
                total = length
            else:
                parsed = _parse_content_range(resp.headers.get("Content-Range"))
                if parsed is None or parsed[0] != offset:
                    raise _Restart("the server resumed at another offset")
                self._check_range_length(length, parsed)
                total = parsed[2]
            self._check_validator(resp)
            self._check_body(resp, total, size)
            if size is None and total is not None:
                self._learn_size(total)
                size = total
            if self.full and self.full.position != offset:
                self.full.catch_up(self.fd, offset)
            self._pump(resp, 0, offset, size, check_extra=length is None)

    def _check_range_length(self, length: int | None, parsed: tuple[int, int, int | None]) -> None:
        if length is not None and length != parsed[1] - parsed[0] + 1:
            raise _Failure(f"{self.shown} sends {length} bytes for a range of {parsed[1] - parsed[0] + 1}; refused (a lying server)")

    def _fetch_segments(self) -> None:
        self.stop.clear()
        pending = [i for i, (s, e, d) in enumerate(self.state.segments) if s + d < e]
        first: list[requests.Response] = []
        if not self.state.ranges_ok:
            try:
                self._with_retries(lambda: first.append(self._open_segment(pending[0], probe=True)))
            except _NoRanges as exc:
                # The server ignores ranges: one stream from the start, on the response we have.
                self.state.segments = [[0, self.state.size or -1, 0]]
                self._save()
                box = [exc.response]
                self._with_retries(lambda: self._stream_single(box.pop() if box else None))
                return
            self.state.ranges_ok = True
        queue = list(pending)
        workers = min(self.options.connections, len(pending))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cfd-segment") as pool:
            futures = [pool.submit(self._worker, queue, pending[0], first) for _ in range(workers)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() for f in done):
                self.stop.set()
                self.abort()
        errors = [e for e in (f.exception() for f in futures) if e is not None and not isinstance(e, _Stopped)]
        if errors:
            # The most telling first: a cancel, a disk error, a lying server, then a restart.
            order = (_Cancelled, _DiskError, _Failure, _Restart)
            raise min(errors, key=lambda e: next((i for i, k in enumerate(order) if isinstance(e, k)), len(order)))

    def _worker(self, queue: list[int], first_index: int, first: list[requests.Response]) -> None:
        """One connection: take the next pending segment; when none is left, split the biggest rest."""
        while True:
            with self.lock:
                index = queue.pop(0) if queue else None
            if index is None:
                index = self._steal()
                if index is None:
                    return
            # Only the first pending segment may use the probe's response.
            box = first if index == first_index else []
            self._with_retries(lambda: self._segment(index, box))

    def _steal(self) -> int | None:
        """Split the segment with the most bytes left (its owner stops at the new end); aria2c does the same,
        so one slow connection does not leave a long tail."""
        floor = max(4 * MIB, self.options.segment_min // 2)  # a steal wastes what is in flight to the owner
        with self.lock:
            segments = self.state.segments
            best = max(range(len(segments)), key=lambda i: segments[i][1] - segments[i][0] - segments[i][2])
            start, end, done = segments[best]
            if end - start - done < 2 * floor:
                return None
            middle = (start + done + (end - start - done) // 2) // MIB * MIB
            segments[best][1] = middle
            segments.append([middle, end, 0])
            if self.state.synced is not None:
                self.state.synced.append(0)
            self._save()
            return len(segments) - 1

    def _open_segment(self, index: int, probe: bool = False) -> requests.Response:
        start, end, done = self.state.segments[index]
        resp = self._request(start + done, end)
        if resp.status_code not in (200, 206) or (resp.status_code == 200 and not probe):
            resp.close()
            raise _Restart(f"the server stopped honouring ranges ({resp.status_code})")
        if resp.status_code == 200:
            total = _content_length(resp)
        else:
            parsed = _parse_content_range(resp.headers.get("Content-Range"))
            total = parsed[2] if parsed else None
        try:
            self._check_body(resp, total, self.state.size)  # before other connections start
        except _Failure:
            resp.close()
            raise
        if resp.status_code == 200:
            raise _NoRanges(resp)
        return resp

    def _segment(self, index: int, first: list[requests.Response]) -> None:
        while True:
            start, end, done = self.state.segments[index]
            if start + done >= end:
                return
            self._halt()
            resp = first.pop() if first else self._open_segment(index)
            with self._tracked(resp):
                parsed = _parse_content_range(resp.headers.get("Content-Range"))
                if parsed is not None and parsed[2] is not None:
                    self._check_body(resp, parsed[2], self.state.size)
                if parsed is None or parsed[0] != start + done or parsed[1] < parsed[0] or parsed[2] != self.state.size:
                    raise _Restart("the server answered a range request with another range")
                self._check_range_length(_content_length(resp), parsed)
                self._check_validator(resp)
                self._pump(resp, index, start + done, min(parsed[1] + 1, end), check_extra=False, shrinks=True)

    def _pump(self, resp: requests.Response, index: int, offset: int, end: int | None, *,
              check_extra: bool, shrinks: bool = False) -> None:
        """Copy the body to the file at `offset` until `end` (None: until EOF; `shrinks`: a thief may lower it)."""
        segment = self.state.segments[index]
        # read1: whatever one recv brings (up to chunk_size), so bytes reach the file
        # (and a checkpoint) promptly on slow links and in big pieces on fast ones.
        read = resp.raw.read1
        chunk = self.options.chunk_size
        limiter, cancel = self.engine.limiter, self.engine.cancel
        host = host_of(resp.url) or "the server"
        while True:
            if shrinks and segment[1] < end:  # type: ignore[operator]
                end = segment[1]
            if end is not None and offset >= end:
                break
            self._halt()
            want = chunk if end is None else min(chunk, end - offset)
            try:
                data = read(want, decode_content=False)
            except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                self._halt()
                stalled = _network_reason(exc) == "timed out"
                reason = f"sent nothing for {self.options.stall_timeout:g} s (stalled)" if stalled else _network_reason(exc)
                raise _Failure(f"{host}: {reason} at byte {offset} of {end or '?'}", retry=True) from None
            if not data:
                break
            self._write(offset, data)
            if self.hasher is not None:
                self.hasher.update_at(offset, data)
            if self.full is not None:
                self.full.feed(offset, data)
            offset += len(data)
            self._advance(index, len(data))
            if limiter is not None:
                limiter.consume(len(data), cancel)
        if end is not None and offset < end:
            raise _Failure(f"{host} closed the connection at byte {offset} of {end}", retry=True)
        if check_extra and end is not None:
            try:
                extra = read(1, decode_content=False)
            except Exception:  # noqa: BLE001 - a broken tail after a complete body is harmless
                extra = b""
            if extra:
                raise _Failure(f"{self.shown} sent more bytes than the manifest's size ({end}); cut off and refused")

    def _write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise _DiskError(_disk_message(exc, self.job.filename) + "; the partial download is kept for the next run") from None

    # -- verification ------------------------------------------------------

    def _verify(self) -> _Result:
        size = self.state.size if self.state.size is not None else self.state.done
        actual = os.fstat(self.fd).st_size
        if actual != size or self.state.done != size:
            self.discard()
            raise _Failure(f"{self.shown}: got {self.state.done} bytes where {size} were expected; discarded")
        short = self.hasher.hexdigest() if self.hasher is not None else short_hash_file(self.part)
        expected = self.job.expected_hash
        if expected and short != expected.lower():
            self.discard()
            raise _Failure(
                f"{self.shown} sent data that does not match the manifest (short hash {short}, expected {expected}); discarded"
            )
        b3 = s256 = None
        if self.full is not None:
            self.full.catch_up(self.fd, size)
            b3, s256 = self.full.digests()
            for name, got, want in (("blake3", b3, self.job.blake3), ("sha256", s256, self.job.sha256)):
                if want and got != want.lower():
                    self.discard()
                    raise _Failure(f"{self.shown} sent data whose {name} does not match the manifest; discarded")
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise _DiskError(_disk_message(exc, self.job.filename)) from None
        return _Result(short, size, b3, s256)


# --------------------------------------------------------------------------- the engine


class _Engine:
    def __init__(self, models_dir: Path, index_path: Path, options: DownloadOptions,
                 callbacks: DownloadCallbacks, cancel: threading.Event) -> None:
        self.models_dir, self.index_path = models_dir, index_path
        self.options, self.callbacks, self.cancel = options, callbacks, cancel
        self.staging_dir = models_dir / ".cfd" / "staging"
        self.locks_dir = models_dir / ".cfd" / "locks"
        self.limiter = _RateLimiter(options.max_rate) if options.max_rate > 0 else None
        self.session = self._session()
        self._checked_hosts: set[tuple[str, int]] = set()
        self._transfers: set[_Transfer] = set()
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = requests.Session()
        size = self.options.jobs * self.options.connections + 4
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": self.options.user_agent, "Accept-Encoding": "identity", "Accept": "*/*"})
        return session

    def close(self) -> None:
        self.session.close()

    # -- cancellation -------------------------------------------------------

    def register(self, transfer: _Transfer) -> None:
        with self._lock:
            self._transfers.add(transfer)

    def unregister(self, transfer: _Transfer) -> None:
        with self._lock:
            self._transfers.discard(transfer)

    def abort_all(self) -> None:
        with self._lock:
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.abort()

    # -- HTTP ----------------------------------------------------------------

    def _check_address(self, url: str) -> None:
        parts = urlsplit(url)
        key = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        if self.options.allow_private_networks or key in self._checked_hosts:
            return
        try:
            check_host(key[0], key[1], allow_private=False)
        except ConnectionError as exc:
            raise _Failure(str(exc), retry=True) from None
        except UnsafeManifestValue as exc:
            raise _Failure(str(exc)) from None
        self._checked_hosts.add(key)

    def open(self, url: str, headers: dict[str, str], shown: str) -> requests.Response:
        """GET `url`, following redirects by hand: each hop re-checked, tokens kept on their own host."""
        opts = self.options
        first = urlsplit(url)
        token_allowed = True
        for _hop in range(opts.max_redirects + 1):
            try:
                check_url(url)
            except UnsafeManifestValue as exc:
                raise _Failure(f"{shown} redirected to a refused URL: {exc.message}") from None
            self._check_address(url)
            parts = urlsplit(url)
            # Once the chain leaves the first host (or drops to plain http), no token follows.
            if parts.hostname != first.hostname or (first.scheme == "https" and parts.scheme != "https"):
                token_allowed = False
            service = service_of(parts.hostname or "", opts.hf_hosts, opts.civitai_hosts)
            sent = dict(headers)
            if token_allowed:
                sent.update(auth_header(opts.tokens, service))
            try:
                resp = self.session.get(url, headers=sent, stream=True, allow_redirects=False,
                                        timeout=(opts.connect_timeout, opts.stall_timeout))
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise _Failure(f"{parts.hostname}: {_network_reason(exc)}", retry=True) from None
            except requests.RequestException as exc:
                raise _Failure(f"{shown}: {_network_reason(exc)}") from None
            if resp.status_code in _REDIRECTS and resp.headers.get("Location"):
                url = urljoin(url, resp.headers["Location"])
                resp.close()
                continue
            self._check_status(resp, shown, service if token_allowed else None)
            return resp
        raise _Failure(f"{shown}: more than {opts.max_redirects} redirects")

    def _check_status(self, resp: requests.Response, shown: str, service: str | None) -> None:
        code = resp.status_code
        if code in (200, 206, 416):
            return
        resp.close()
        host = host_of(resp.url) or "the server"
        if code == 429 or code == 408 or code >= 500:
            raise _Failure(f"{host} answered {code}", retry=True, retry_after=_retry_after(resp.headers.get("Retry-After")))
        if code in (401, 403):
            raise _Failure(f"{host} refused access to {shown} ({code}); {token_hint(self.options.tokens, service, code)}")
        if code in (404, 410):
            raise _Failure(f"{shown} was not found ({code}); fix or replace this source in pyproject.toml")
        raise _Failure(f"{host} answered {code} for {shown}")

    # -- one job -------------------------------------------------------------

    def run_job(self, job: DownloadJob, number: int, total: int, space_error: str | None) -> DownloadOutcome:
        self.callbacks.on_file_start(job.filename, number, total)
        if self.cancel.is_set():
            outcome = _failed(job, INTERRUPTED)
        else:
            try:
                outcome = self._job(job, space_error)
            except CfdError as exc:
                outcome = _failed(job, _clean(str(exc)))
            except Exception as exc:  # noqa: BLE001 - one line per file, never a traceback
                outcome = _failed(job, f"unexpected error: {type(exc).__name__}: {_clean(str(exc))}")
        self.callbacks.on_file_complete(job.filename, outcome.success, outcome.error)
        return outcome

    def _job(self, job: DownloadJob, space_error: str | None) -> DownloadOutcome:
        relpath = safe_relative_path(job.relative_path, job.filename)
        target = target_path(self.models_dir, relpath)
        name = staging_name(job.key)
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.locks_dir / f"{name}.lock"))
        while True:  # another process may hold it: wait, but stay cancellable
            try:
                lock.acquire(timeout=0.2)
                break
            except LockTimeout:
                if self.cancel.is_set():
                    return _failed(job, INTERRUPTED)
        try:
            with ModelIndex(self.index_path, self.models_dir) as index:
                present = self._already_there(job, relpath, target, index)
                if present is not None:
                    return present
                if space_error:
                    return _failed(job, space_error)
                return self._download(job, relpath, target, name, index)
        finally:
            lock.release()

    def _already_there(self, job: DownloadJob, relpath: str, target: Path, index: ModelIndex) -> DownloadOutcome | None:
        if job.expected_hash:
            found = index.present([job.expected_hash]).get(job.expected_hash)
            if found:
                return DownloadOutcome(job, True, found, None, None, job.expected_hash)
        else:
            by_source = index.present_by_source([_storable_url(u) for u in job.sources])
            for url in job.sources:
                found = by_source.get(_storable_url(url))
                if found:
                    return DownloadOutcome(job, True, found, redact_url(url), None, short_hash_file(self.models_dir / found))
        if not os.path.lexists(target):
            return None
        if job.expected_hash and target.is_file():
            stat = target.stat()
            short = short_hash_file(target)
            if short == job.expected_hash.lower() and (job.size is None or stat.st_size == job.size):
                index.record_file(short, relpath, size=stat.st_size, mtime=stat.st_mtime)
                return DownloadOutcome(job, True, relpath, None, None, short)
            return _failed(job, f"{relpath} already exists with different content (short hash {short}, manifest expects "
                                f"{job.expected_hash}); cfd does not overwrite it: move it away and run `cfd repair` again")
        return _failed(job, f"{relpath} already exists and cannot be checked against this unresolved entry; "
                            "cfd does not overwrite it: move it away, or resolve the workflow entry")

    def _download(self, job: DownloadJob, relpath: str, target: Path, name: str, index: ModelIndex) -> DownloadOutcome:
        if not job.sources:
            return _failed(job, "no download source in the manifest; add one to the model entry in pyproject.toml")
        errors: list[str] = []
        fetched = 0
        for source in job.sources:
            try:
                url = prepare_url(source, self.options.hf_hosts, self.options.civitai_hosts)
            except UnsafeManifestValue as exc:
                errors.append(exc.message)
                continue
            transfer = _Transfer(self, job, source, url, self.staging_dir / name)
            try:
                result = transfer.run()
            except _Failure as exc:
                fetched += transfer.fetched
                errors.append(exc.message)
                continue
            except _Cancelled:
                return _failed(job, INTERRUPTED, fetched + transfer.fetched)
            except _DiskError as exc:
                return _failed(job, str(exc), fetched + transfer.fetched)
            fetched += transfer.fetched
            return self._place(job, relpath, target, transfer, result, index, fetched)
        if len(errors) == 1:
            return _failed(job, errors[0], fetched)
        return _failed(job, f"all {len(errors)} sources failed: " + "; ".join(errors), fetched)

    def _place(self, job: DownloadJob, relpath: str, target: Path, transfer: _Transfer, result: _Result,
               index: ModelIndex, fetched: int) -> DownloadOutcome:
        shown = redact_url(transfer.source)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _move_no_clobber(transfer.part, target)
        except FileExistsError:
            transfer.discard()
            if target.is_file() and short_hash_file(target) == result.short_hash:
                pass  # someone else put the same file there meanwhile
            else:
                return _failed(job, f"{relpath} appeared while downloading, with other content; cfd does not overwrite it", fetched)
        except OSError as exc:
            return _failed(job, f"cannot place {relpath}: {exc.strerror or exc}; the verified download is kept in "
                                f"{transfer.part}", fetched)
        transfer.discard()
        _fsync_dir(target.parent)
        stat = target.stat()
        try:
            index.record_file(result.short_hash, relpath, size=stat.st_size, mtime=stat.st_mtime,
                              source_url=_storable_url(transfer.source), blake3_hash=result.blake3, sha256_hash=result.sha256)
        except Exception as exc:  # noqa: BLE001
            return DownloadOutcome(job, False, relpath, shown, f"downloaded {relpath} but could not record it in the index "
                                   f"({_clean(str(exc))}); run `cfd index scan`", result.short_hash, fetched)
        return DownloadOutcome(job, True, relpath, shown, None, result.short_hash, fetched)


def _move_no_clobber(source: Path, target: Path) -> None:
    """Move a verified file into place without ever replacing an existing file."""
    try:
        os.link(source, target)  # fails with FileExistsError instead of overwriting
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            # No hard links here (FAT, some shares): check, then rename.
            if os.path.lexists(target):
                raise FileExistsError(str(target)) from None
            os.replace(source, target)
            return
    # A category folder symlinked to another disk: copy beside the target first.
    tmp = target.with_name(f".{target.name}.cfd-{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _move_no_clobber(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _failed(job: DownloadJob, error: str, fetched: int = 0) -> DownloadOutcome:
    return DownloadOutcome(job, False, None, None, error, None, fetched)


# --------------------------------------------------------------------------- batch


def _partial_bytes(staging_dir: Path, job: DownloadJob) -> int:
    try:
        data = json.loads((staging_dir / f"{staging_name(job.key)}.json").read_text(encoding="utf-8"))
        return sum(int(seg[2]) for seg in data.get("segments", []))
    except (OSError, ValueError, TypeError, IndexError):
        return 0


def _space_errors(jobs: Sequence[DownloadJob], models_dir: Path, staging_dir: Path) -> dict[int, str]:
    """Jobs that do not fit in the free space, in order, with a plain message."""
    try:
        free = shutil.disk_usage(models_dir).free
    except OSError:
        return {}
    errors: dict[int, str] = {}
    for i, job in enumerate(jobs):
        if job.size is None:
            continue
        try:
            if os.path.lexists(target_path(models_dir, job.relative_path)):
                continue
        except UnsafeManifestValue:
            continue  # reported by the job itself
        need = max(0, job.size - _partial_bytes(staging_dir, job))
        if need > free:
            errors[i] = (f"not enough disk space for {job.filename}: it needs {_gib(need)} more, "
                         f"{_gib(free)} free in {models_dir}; free some space and run `cfd repair` again")
        else:
            free -= need
    return errors


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / MIB:.1f} MiB"


def download_models(
    jobs: Sequence[DownloadJob],
    *,
    models_dir: str | os.PathLike[str],
    index_path: str | os.PathLike[str],
    options: DownloadOptions,
    callbacks: DownloadCallbacks | None = None,
    cancel: threading.Event | None = None,
) -> list[DownloadOutcome]:
    """Download `jobs` (in parallel), verify, place and index them; one outcome per job, in order.

    Never raises for a failed file. Setting `cancel` (or Ctrl-C while this waits)
    stops every transfer promptly; their outcomes say INTERRUPTED and the partial
    data stays for the next run to resume.
    """
    callbacks = callbacks or DownloadCallbacks()
    cancel = cancel or threading.Event()
    models_path = Path(models_dir)
    models_path.mkdir(parents=True, exist_ok=True)
    engine = _Engine(models_path, Path(index_path), options, callbacks, cancel)
    total = len(jobs)
    callbacks.on_batch_start(total)
    early = _space_errors(jobs, models_path, engine.staging_dir)
    outcomes: list[DownloadOutcome | None] = [None] * total
    pool = ThreadPoolExecutor(max_workers=max(1, options.jobs), thread_name_prefix="cfd-download")
    try:
        futures = {pool.submit(engine.run_job, job, i + 1, total, early.get(i)): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            try:
                _done, pending = wait(pending, timeout=0.2)
            except KeyboardInterrupt:
                cancel.set()
            if cancel.is_set():
                engine.abort_all()
        for future, i in futures.items():
            outcomes[i] = future.result()
    except BaseException:
        cancel.set()  # never wait below for transfers nobody will collect
        engine.abort_all()
        raise
    finally:
        pool.shutdown(wait=True)
        engine.close()
    succeeded = sum(1 for o in outcomes if o is not None and o.success)
    callbacks.on_batch_complete(succeeded, total)
    return [o for o in outcomes if o is not None]
