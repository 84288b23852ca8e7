"""Fetching one file from one source: ranges on several connections, or one stream.

The connections of a file grow while they add speed (growth.py decides, batch-wide).

A large file on a server that honours ranges is split into MiB-aligned segments,
each fetched on its own connection; an idle connection takes over half of the
biggest remaining range (no slow tail). A resume sends `Range` + `If-Range` and
accepts only a 206 that starts where we are; a server that ignores ranges gets
one stream from the start.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import urllib3

from .batch import Batch, LowSpeed, plan_segments
from .segmented import Restart, Retire, Segmented, Stopped
from .types import Cancelled, DiskError, DownloadJob, Failure
from .session import (
    abort_response,
    content_length,
    network_reason,
    parse_content_range,
    with_retries,
)
from .staging import Result, StagingFile, State
from ..units import human_size
from .urls import host_of, redact_url



class Transfer(Segmented):
    """Fetch one job from one source into its staging file; verify; leave it ready to place."""

    def __init__(self, batch: Batch, job: DownloadJob, source: str, url: str, staging: Path) -> None:
        self.batch, self.job, self.source, self.url = batch, job, source, url
        self.options = batch.options
        self.shown = redact_url(source)
        self.file = StagingFile(staging, job, self.shown, self.options,
                                lambda done, size: batch.callbacks.on_file_progress(job.filename, done, size))
        self.lock = self.file.lock  # one lock for the state, the work queue and the open responses
        self.stop = threading.Event()
        self.responses: set[requests.Response] = set()
        self.single = False  # one connection only: the server's copies disagreed between connections
        self.chunked = False  # the body without Content-Length was chunked (its end is explicit)
        self.connections = 0  # ranged connections running (or granted) for this file
        self.retire = 0  # of those, asked to end at their next read
        self.told = 0  # the count the display last heard

    @property
    def fetched(self) -> int:
        return self.file.fetched

    @property
    def state(self) -> State:
        return self.file.state

    def run(self) -> Result:
        self.file.open()
        self.batch.register(self)
        try:
            if not self.file.resume():
                self._reset()
            elif self.state.done:
                # Bytes an earlier run left: a display counts them as done, not as transferred now.
                self.batch.callbacks.on_file_resume(self.job.filename, self.state.done, self.state.size)
            try:
                self._fetch()
            except DiskError:
                if self.state.size is None:  # the sidecar's write failed first: still nothing to check it by
                    self.file.discard()
                self.file.checkpoint(sync=True)
                raise
            except (Cancelled, Failure):
                self.file.checkpoint(sync=True)
                raise
            self.batch.callbacks.on_file_progress(self.job.filename, self.state.done, self.state.size)
            return self.file.verify()
        finally:
            self.batch.unregister(self)
            self.file.close()

    def _reset(self) -> None:
        """Start this source over (fresh plan, empty file)."""
        connections = 1 if self.single else self.batch.growth.start
        self.stop.clear()  # a failed sibling segment stopped the others; the new plan starts fresh
        self.file.reset(plan_segments(self.job.size, connections, self.options.segment_min))

    def _halt(self) -> None:
        if self.batch.cancel.is_set():
            raise Cancelled()
        if self.stop.is_set():
            raise Stopped()

    def _with_retries(self, unit: Callable[[], None]) -> None:
        with_retries(unit, self.options, self.batch.cancel, self._halt, lambda: self.file.fetched,
                     lambda delay, why: self.batch.callbacks.on_file_retry(self.job.filename, delay, why))

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
            abort_response(resp)

    # -- fetching ----------------------------------------------------------

    def _fetch(self) -> None:
        restarts = conflicts = 0
        while not self.state.complete():
            segmented = len(self.state.segments) > 1
            try:
                if segmented:
                    self._fetch_segments()
                else:
                    self._with_retries(lambda: self._stream_single(None))
                    if self.state.size is None:
                        self.file.end_of_unknown_length(self.chunked)
            except Restart as exc:
                restarts += 1
                conflicts += segmented
                if conflicts >= 2 and not self.single:
                    # A load-balanced mirror whose backends disagree (ETags, ranges): ranges on
                    # several connections mix backends, one stream reads one copy start to end.
                    self.single, restarts = True, 0
                    self.batch.note(self.job.filename, f"{host_of(self.url) or 'the server'} answers differently on "
                                    f"different connections ({exc}); using one connection")
                elif restarts > self.options.retries:
                    raise Failure(f"{self.shown}: {exc}; gave up after {restarts} restarts") from None
                self._reset()

    def _request(self, start: int, end: int | None) -> requests.Response:
        headers = {}
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
            validator = self.state.validator()
            if validator:
                headers["If-Range"] = validator
        return self.batch.client.open(self.url, headers, self.shown)

    def _check_validator(self, resp: requests.Response) -> None:
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        state = self.state
        if state.etag is None and state.last_modified is None:
            state.etag, state.last_modified = etag, modified
        elif (state.etag and etag and etag != state.etag) or (not state.etag and state.last_modified and modified != state.last_modified):
            raise Restart("the file changed on the server")

    def _check_body(self, resp: requests.Response, length: int | None, expected: int | None) -> None:
        if resp.headers.get("Content-Type", "").lower().startswith("text/html"):
            raise Failure(
                f"{self.shown} returned a web page instead of the model file (a login page, or a link to a page rather than the file?)"
            )
        if expected is not None and length is not None and length != expected:
            raise Failure(
                f"{self.shown} announces {length} bytes where the manifest says {expected}; refused (wrong file, or a lying server)"
            )

    def _stream_single(self, resp: requests.Response | None) -> None:
        offset = self.state.segments[0][2]
        if resp is None and self.file.full.position != offset:
            # Hash what an earlier run left before asking for the rest: a partial of many GB takes
            # seconds, during which the server's bytes would wait in the sockets (or time out).
            self.file.full.catch_up(self.file.fd, offset)
        resp = resp if resp is not None else self._request(offset, None)
        with self._tracked(resp):
            code, size = resp.status_code, self.state.size
            length = content_length(resp)
            if code == 416:
                raise Restart("the server refused to resume (416)")
            if code == 200:
                if offset:  # the server ignored Range (or the file changed): start over on this response
                    self.state.segments[0][2] = offset = 0
                    self.state.etag = self.state.last_modified = None
                    self.file.full.reset()
                total = length
            else:
                parsed = parse_content_range(resp.headers.get("Content-Range"))
                if parsed is None or parsed[0] != offset:
                    raise Restart("the server resumed at another offset")
                self._check_range_length(length, parsed)
                total = parsed[2]
            self._check_validator(resp)
            self._check_body(resp, total, size)
            if size is None and total is not None and total > self.options.max_unknown_size:
                raise self._too_big(f"announces {human_size(total)}")
            self.chunked = "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
            if size is None and total is not None:
                self.file.learn_size(total)
                size = total
            if self.file.full.position != offset:
                self.file.full.catch_up(self.file.fd, offset)
            self._pump(resp, 0, offset, size, check_extra=length is None)

    def _retire_one(self) -> None:
        with self.lock:
            if self.retire <= 0:
                return
            self.retire -= 1
        raise Retire()

    def _too_big(self, what: str) -> Failure:
        self.file.discard()
        return Failure(f"{self.shown} {what}, more than cfd.maxUnknownSize ({human_size(self.options.max_unknown_size)}) "
                       "allows for a model whose size the manifest does not give; refused (raise the setting if it is right)")

    def _check_range_length(self, length: int | None, parsed: tuple[int, int, int | None]) -> None:
        if length is not None and length != parsed[1] - parsed[0] + 1:
            raise Failure(f"{self.shown} sends {length} bytes for a range of {parsed[1] - parsed[0] + 1}; refused (a lying server)")

    def _pump(self, resp: requests.Response, index: int, offset: int, end: int | None, *,
              check_extra: bool, shrinks: bool = False) -> None:
        """Copy the body to the file at `offset` until `end` (None: until EOF; `shrinks`: a thief may lower it)."""
        segment = self.state.segments[index]
        # read1: whatever one recv brings (up to chunk_size), so bytes reach the file
        # (and a checkpoint) promptly on slow links and in big pieces on fast ones.
        read = resp.raw.read1
        chunk = self.options.chunk_size
        limiter, cancel, growth = self.batch.limiter, self.batch.cancel, self.batch.growth
        host = host_of(resp.url) or "the server"
        ceiling = self.options.max_unknown_size if end is None else None
        slow = LowSpeed(self.options.low_speed_limit, self.options.low_speed_time)
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
                stalled = network_reason(exc) == "timed out"
                reason = f"sent nothing for {self.options.stall_timeout:g} s (stalled)" if stalled else network_reason(exc)
                raise Failure(f"{host}: {reason} at byte {offset} of {end or '?'}", retry=True) from None
            if not data:
                break
            if ceiling is not None and offset + len(data) > ceiling:
                raise self._too_big("sent more")
            self.file.store(index, offset, data)
            offset += len(data)
            growth.counted(len(data))
            if shrinks and self.retire:
                self._retire_one()
            if slow.too_slow(len(data)):
                raise Failure(f"{host}: slower than {human_size(slow.limit)}/s for {slow.window:g} s "
                              f"at byte {offset} of {end or '?'} (cfd.lowSpeedLimit)", retry=True)
            if limiter is not None:
                waited = time.monotonic()
                limiter.consume(len(data), cancel)
                slow.start += time.monotonic() - waited  # our own rate cap is not the server's slowness
        if end is not None and offset < end:
            raise Failure(f"{host} closed the connection at byte {offset} of {end}", retry=True)
        if check_extra and end is not None:
            try:
                extra = read(1, decode_content=False)
            except Exception:  # noqa: BLE001 - a broken tail after a complete body is harmless
                extra = b""
            if extra:
                raise Failure(f"{self.shown} sent more bytes than the manifest's size ({end}); cut off and refused")
