"""The model server's request handler: GET/HEAD with ranges, If-Range and keep-alive.

Each step is a method so that the tests' fault-injecting handler (tests/helpers/faults.py)
can change one of them: `prepare` runs before answering, then `respond`, `_select_range`,
`_length_headers`, `_headers`, `_send_body`, `_sendfile` and `_send_all`/`_sent`.
"""

from __future__ import annotations

import email.utils
import os
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from .content import CHUNK
from .records import Entry, RequestRecord, norm_path

if TYPE_CHECKING:
    from .server import LoopbackHTTPServer, ModelServer

__all__ = ["Aborted", "Handler", "parse_range", "source_chunks"]


class Aborted(Exception):
    """The response cannot continue (server stopping, file shrank)."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cfd-model-server/1"
    server: LoopbackHTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; Nagle would delay the second.
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def send_response(self, code, message=None) -> None:
        record = getattr(self, "record", None)  # absent for stdlib errors (400, 501)
        if record is not None:
            record.status = code
        super().send_response(code, message)

    # dispatch --------------------------------------------------------------

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        self.record = RequestRecord(
            method=self.command,
            path=self.path,
            headers=dict(self.headers.items()),
            range=self.headers.get("Range"),
            client=self.client_address,
        )
        owner._record(self.record)
        self.head = head
        key = norm_path(self.path)
        self.prepare(key)
        try:
            self.respond(owner, key)
        except (OSError, Aborted):
            self.close_connection = True
        finally:
            self.record.finished = time.monotonic()

    def prepare(self, key: str) -> None:
        """Decide anything per request before answering (nothing here)."""

    def respond(self, owner: ModelServer, key: str) -> None:
        entry = owner._entry(key)
        if entry is None:
            return self._simple(404, b"not found\n")
        self._send_entry(entry)

    # simple responses ------------------------------------------------------

    def _simple(self, status: int, body: bytes, ctype: str = "text/plain", headers=()) -> None:
        self.send_response(status)
        self._headers({"Content-Type": ctype, "Content-Length": str(len(body)), **dict(headers)})
        if not self.head and body:
            self._send_all(memoryview(body))

    def _headers(self, headers: dict[str, str]) -> None:
        for name, value in headers.items():
            self.send_header(name, value)  # "Connection: close" also sets close_connection
        self.end_headers()

    # file responses --------------------------------------------------------

    def etag_for(self, entry: Entry) -> str:
        return entry.etag

    def _send_entry(self, entry: Entry) -> None:
        etag = self.etag_for(entry)
        selected = self._select_range(entry, etag)
        if selected is None:
            return self._simple(416, b"", headers={"Content-Range": f"bytes */{entry.size}"})
        start, length, partial = selected
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": entry.last_modified,
        }
        if partial:
            headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{entry.size}"
        self._length_headers(headers, length)
        self.send_response(206 if partial else 200)
        self._headers(headers)
        if not self.head:
            self._send_body(entry, start, length)

    def _length_headers(self, headers: dict, length: int) -> None:
        headers["Content-Length"] = str(length)

    def _select_range(self, entry: Entry, etag: str):
        """(start, length, partial) of the body to send, or None for 416."""
        spec = self.headers.get("Range")
        if not spec or not self._if_range_holds(entry, etag):
            return 0, entry.size, False
        parsed = parse_range(spec, entry.size)
        if parsed is None:  # malformed or multi-range: RFC 9110 lets us ignore it
            return 0, entry.size, False
        if parsed == "unsatisfiable":
            return None
        start, end = parsed
        return start, end - start + 1, True

    def _if_range_holds(self, entry: Entry, etag: str) -> bool:
        value = self.headers.get("If-Range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith(('"', "W/")):
            return value == etag  # strong comparison; weak tags never match
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return False
        return int(when.timestamp()) == entry.mtime

    # body writing ----------------------------------------------------------

    def _send_body(self, entry: Entry, start: int, length: int) -> None:
        if entry.file is not None and hasattr(os, "sendfile"):
            self._sendfile(entry.file, start, length)
        else:
            self._pump(chunk for _, chunk in source_chunks(entry, start, length))

    def _sendfile(self, file: str, start: int, length: int) -> None:
        out_fd = self.connection.fileno()
        with open(file, "rb") as f:
            offset, end = start, start + length
            while offset < end:
                n = os.sendfile(out_fd, f.fileno(), offset, min(CHUNK, end - offset))
                if n == 0:  # the file shrank under us
                    raise Aborted()
                self.record.bytes_sent += n
                offset += n

    def _pump(self, chunks) -> None:
        for chunk in chunks:
            self._send_all(memoryview(chunk))

    def _send_all(self, view: memoryview, step: int = CHUNK) -> None:
        # send() rather than sendall() so bytes_sent is exact even when the peer hangs up.
        while len(view):
            n = self.connection.send(view[:step])
            self.record.bytes_sent += n
            view = view[n:]
            self._sent(n)

    def _sent(self, n: int) -> None:
        """Called after each write of `n` body bytes (nothing here)."""


def parse_range(spec: str, size: int):
    """(start, end) inclusive, "unsatisfiable", or None to ignore the header."""
    unit, _, ranges = spec.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in ranges:
        return None
    first, dash, last = ranges.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    try:
        if not first:  # suffix: the last n bytes
            n = int(last)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else None
    except ValueError:
        return None
    if start < 0 or (end is not None and end < start):
        return None
    if start >= size:
        return "unsatisfiable"
    return start, size - 1 if end is None else min(end, size - 1)


def source_chunks(entry: Entry, start: int, length: int):
    """(file offset, bytes) pieces of at most CHUNK bytes."""
    end = start + length
    if entry.data is not None:
        view = memoryview(entry.data)
        for offset in range(start, end, CHUNK):
            yield offset, view[offset : min(offset + CHUNK, end)]
        return
    with open(entry.file, "rb") as f:
        f.seek(start)
        offset = start
        while offset < end:
            chunk = f.read(min(CHUNK, end - offset))
            if not chunk:
                raise Aborted()  # the file shrank under us
            yield offset, chunk
            offset += len(chunk)
