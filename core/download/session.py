"""The download engine's HTTP side: one session, redirects walked by hand, retries.

Every hop of a redirect chain is re-checked (scheme, an authority urllib3 reads
as urls.target_of does, and the address it resolves to unless private networks
are allowed); a token is sent only over https to its own service's host and
port, and only while the chain stays on the first hop's scheme, host and port. Failures come back as one-line `Failure`s
that say whether a retry may help (and how long the server asked us to wait).
"""

from __future__ import annotations

import http.client
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

import requests
import urllib3

from .types import MIB, SOURCE_GONE, Cancelled, DownloadOptions, Failure, clean
from ..errors import UnsafeManifestValue
from .safety import check_host, check_url
from .tokens import CIVITAI_HOSTS, HF_HOSTS, auth_header, service_of, token_hint, token_service
from .urls import Target, has_credentials, host_of, redact_url, target_of

_REDIRECTS = (301, 302, 303, 307, 308)


class _RedactQueries(logging.Filter):
    """urllib3 logs each request line at DEBUG, query string included: a signed URL's
    `token=` / `sig=` must not reach a log an application turned up to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RedactQueries())


# --------------------------------------------------------------------------- source URLs


def prepare_url(url: str, hf_hosts: tuple[str, ...] = HF_HOSTS, civitai_hosts: tuple[str, ...] = CIVITAI_HOSTS) -> str:
    """Check a source URL and turn known page links into download links.

    Hugging Face `/blob/` (the web page) becomes `/resolve/` (the file); a Civitai
    model page with `modelVersionId` becomes the API download URL.
    """
    check_url(url)
    parts = urlsplit(url)
    service = service_of(target_of(url).host, hf_hosts, civitai_hosts)
    if service == "huggingface" and "/blob/" in parts.path:
        return urlunsplit(parts._replace(path=parts.path.replace("/blob/", "/resolve/", 1)))
    if service == "civitai" and re.match(r"^/models/\d+", parts.path):
        version = parse_qs(parts.query).get("modelVersionId", [""])[0]
        if version.isdigit():
            return urlunsplit((parts.scheme, parts.netloc, f"/api/download/models/{version}", "", ""))
    return url


def storable_url(url: str) -> str:
    """The URL as the index stores it: unchanged unless it carries credentials."""
    return redact_url(url) if has_credentials(url) else url


def connect_target(url: str) -> Target:
    """The scheme, host and port requests will connect to for `url`, once check_url passed:
    urllib3's own reading must be the one every check used, or the URL is refused."""
    target = target_of(url)
    try:
        parsed = urllib3.util.parse_url(url)
        host = (parsed.host or "").lower().strip("[]")
        agrees = host == target.host and (parsed.port or target.port) == target.port
    except urllib3.exceptions.LocationParseError:
        agrees = False
    if not agrees:
        raise UnsafeManifestValue(f"refusing source {redact_url(url)}: HTTP clients disagree on its host",
                                  "fix the source in pyproject.toml (ask who committed it)")
    return target


# --------------------------------------------------------------------------- errors and retries


def network_reason(exc: BaseException) -> str:
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
    return clean(type(exc).__name__)


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff(options: DownloadOptions, attempt: int, retry_after: float | None) -> float:
    delay = min(options.backoff_cap, options.backoff_base * 2 ** (attempt - 1))
    delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: clients that failed together retry apart
    if retry_after is not None:
        delay = max(delay, min(retry_after, options.retry_after_cap))
    return delay


def with_retries(unit: Callable[[], None], options: DownloadOptions, cancel: threading.Event,
                 halt: Callable[[], None], fetched: Callable[[], int],
                 waiting: Callable[[float, str], None] | None = None) -> None:
    """Run `unit`, again after a backoff while it fails with a retryable `Failure`.

    `halt` raises when the work should stop; `fetched` counts bytes so far; `waiting(seconds,
    why)` is told before each backoff (a display says "retrying in N s" rather than freeze).
    """
    attempts = 0
    while True:
        halt()
        before = fetched()
        try:
            return unit()
        except Failure as exc:
            if not exc.retry:
                raise
            if exc.retry_after is not None and exc.retry_after > options.retry_after_cap:
                # "Come back tomorrow": waiting (even capped) would only hold a hook or
                # `cfd repair` hostage; the file stays pending for a later run.
                raise Failure(f"{exc.message} and asks to wait {_duration(exc.retry_after)}; "
                              "not waiting that long: run `cfd repair` later") from None
            if fetched() - before >= MIB:
                attempts = 0  # it made progress: a flaky link, not a dead source
            attempts += 1
            if attempts >= options.retries:
                raise Failure(f"{exc.message} (gave up after {attempts} attempts)") from None
            delay = backoff(options, attempts, exc.retry_after)
            if waiting is not None:
                waiting(delay, exc.message)
            if cancel.wait(delay):
                raise Cancelled() from None
            halt()


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


class RateLimiter:
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


# --------------------------------------------------------------------------- responses


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    match = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def abort_response(resp: requests.Response) -> None:
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


# --------------------------------------------------------------------------- the client


class HttpClient:
    """One `requests.Session` for a whole batch (connection reuse), opened through `open`."""

    def __init__(self, options: DownloadOptions) -> None:
        self.options = options
        self.session = requests.Session()
        size = options.jobs * options.connections + 4
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": options.user_agent, "Accept-Encoding": "identity", "Accept": "*/*"})
        self._checked_hosts: set[tuple[str, int]] = set()

    def close(self) -> None:
        self.session.close()

    def _check_address(self, target: Target) -> None:
        key = (target.host, target.port)
        if self.options.allow_private_networks or key in self._checked_hosts:
            return
        if key[0] in self.options.private_hosts or f"{key[0]}:{key[1]}" in self.options.private_hosts:
            return
        try:
            check_host(key[0], key[1], allow_private=False)
        except ConnectionError as exc:
            raise Failure(str(exc), retry=True) from None
        except UnsafeManifestValue as exc:
            raise Failure(str(exc)) from None
        self._checked_hosts.add(key)

    def _timeouts(self) -> tuple[float, float]:
        """(connect, read) timeouts; never past the deadline (a black-hole server answers nothing at all)."""
        opts = self.options
        if opts.deadline is None:
            return opts.connect_timeout, opts.stall_timeout
        left = max(0.1, opts.deadline - time.monotonic())
        return min(opts.connect_timeout, left), min(opts.stall_timeout, left)

    def open(self, url: str, headers: dict[str, str], shown: str) -> requests.Response:
        """GET `url`, following redirects by hand: each hop re-checked, tokens kept on their own host."""
        opts = self.options
        first: Target | None = None
        for hop in range(opts.max_redirects + 1):
            try:
                check_url(url)
                target = connect_target(url)
            except UnsafeManifestValue as exc:
                raise Failure(exc.message if hop == 0 else f"{shown} redirected to a refused URL: {exc.message}") from None
            mirror = hop == 0 and opts.mirror is not None and opts.mirror.trusts(url)
            if not mirror:
                self._check_address(target)  # the configured mirror may be private; its redirects may not
            first = first or target
            # A token goes over https to its own service's host and port, and only while the
            # chain stays on the first hop's origin (requests' should_strip_auth, stricter).
            service = token_service(target, opts.hf_hosts, opts.civitai_hosts) if target.origin == first.origin else None
            sent = dict(headers)
            sent.update(auth_header(opts.tokens, service))
            try:
                resp = self.session.get(url, headers=sent, stream=True, allow_redirects=False, timeout=self._timeouts())
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise Failure(f"{target.netloc}: {network_reason(exc)}", retry=True) from None
            except requests.RequestException as exc:
                raise Failure(f"{shown}: {network_reason(exc)}") from None
            if resp.status_code in _REDIRECTS and resp.headers.get("Location"):
                url = urljoin(url, resp.headers["Location"])
                resp.close()
                continue
            self._check_status(resp, shown, service or service_of(target.host, opts.hf_hosts, opts.civitai_hosts),
                               token_sent=service is not None)
            if mirror and resp.status_code == 200 and "Range" in headers and resp.headers.get("Content-Range"):
                resp.status_code = 206  # rclone serve s3 (1.75) answers a range 200 + Content-Range; S3 says 206
            return resp
        raise Failure(f"{shown}: more than {opts.max_redirects} redirects")

    def _check_status(self, resp: requests.Response, shown: str, service: str | None, token_sent: bool) -> None:
        code = resp.status_code
        if code in (200, 206, 416):
            return
        resp.close()
        host = host_of(resp.url) or "the server"
        if code == 429 or code == 408 or code >= 500:
            raise Failure(f"{host} answered {code}", retry=True, retry_after=retry_after(resp.headers.get("Retry-After")))
        if code in (401, 403):
            hint = token_hint(self.options.tokens, service, code, sent=token_sent)
            raise Failure(f"{host} refused access to {shown} ({code}); {hint}")
        if code in (404, 410):
            raise Failure(f"{shown} was not found ({code}); {SOURCE_GONE}", gone=True)
        raise Failure(f"{host} answered {code} for {shown}")
