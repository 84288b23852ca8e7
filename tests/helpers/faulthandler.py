"""The demo server's handler with the tests' faults applied (see helpers.faults).

Each request gets a Plan from the server's fault switches in `prepare`; the base handler's
steps (cfd.demo.handler) are overridden where a fault changes what goes on the wire.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from urllib.parse import parse_qs, quote, urlsplit

from helpers.faultplan import Fault, Plan

from cfd.demo.content import CHUNK
from cfd.demo.handler import Aborted, Handler, source_chunks
from cfd.demo.records import Entry

__all__ = ["FaultHandler"]

THROTTLE_CHUNK = 64 << 10  # granularity of the rate cap
# The kernel's send buffer under a throttled body (it doubles this): what the server counts as
# sent is then close to what the client could read, not MiB parked in the kernel (autotuned: 4 MiB).
THROTTLE_SNDBUF = 128 << 10
_JUNK = b"\xde\xad\xbe\xef" * (THROTTLE_CHUNK // 4)
_HTML_ERROR = (
    b"<!DOCTYPE html>\n<html><head><title>Error</title></head>"
    b"<body><h1>Something went wrong</h1><p>Please sign in to continue.</p></body></html>\n"
)


class FaultHandler(Handler):
    plan: Plan
    rate: float | None = None  # the rate cap while the body is written (Fault.throttle)

    def prepare(self, key: str) -> None:
        owner = self.server.owner
        owner._wait_if_held(self.record)
        plan = owner._plan(key, self.command)
        self.extra_headers = dict((plan.fault.headers or {}) if plan else {})
        self.plan = plan or Plan(Fault())
        self.rate = None

    def respond(self, owner, key: str) -> None:
        plan = self.plan
        fault = plan.fault
        if fault.black_hole:
            self.close_connection = True
            return self._stall()
        if plan.fail_status is not None:
            return self._fail(plan.fail_status, fault)
        if fault.redirect_loop:
            return self._redirect(self._loop_location(key))
        if fault.redirect_to:
            return self._redirect(fault.redirect_to)
        if fault.html_200:
            return self._simple(200, _HTML_ERROR, "text/html; charset=utf-8")
        super().respond(owner, key)

    # simple responses ------------------------------------------------------

    def _fail(self, status: int, fault: Fault) -> None:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        self._simple(status, f"error {status}\n".encode(), headers=headers)

    def _redirect(self, location: str) -> None:
        self._simple(302, b"", headers={"Location": location})

    def _loop_location(self, key: str) -> str:
        # Absolute, on whatever host name the client used, so it is truly "the same URL".
        query = parse_qs(urlsplit(self.path).query)
        n = int(query.get("loop", ["0"])[0]) + 1
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_port}"
        return f"http://{host}{quote(key, safe='/')}?loop={n}"

    def _headers(self, headers: dict[str, str]) -> None:
        """Send headers, letting the fault's extra headers override ours."""
        merged = {k.lower(): (k, v) for k, v in headers.items()}
        merged.update({k.lower(): (k, str(v)) for k, v in self.extra_headers.items()})
        super()._headers(dict(merged.values()))

    # file responses --------------------------------------------------------

    def etag_for(self, entry: Entry) -> str:
        backend = self.plan.backend
        return entry.etag if not backend else f'"{entry.etag.strip(chr(34))}-b{backend}"'

    def _select_range(self, entry: Entry, etag: str):
        if self.plan.fault.ignore_range:
            return 0, entry.size, False
        return super()._select_range(entry, etag)

    def _length_headers(self, headers: dict, length: int) -> None:
        fault = self.plan.fault
        if fault.no_length:
            headers["Connection"] = "close"  # the body ends when the connection does
        elif fault.wrong_content_length is not None:
            headers["Content-Length"] = str(fault.wrong_content_length)
            headers["Connection"] = "close"  # the stream is out of sync afterwards
        else:
            super()._length_headers(headers, length + fault.extra_bytes)

    # body writing ----------------------------------------------------------

    def _send_body(self, entry: Entry, start: int, length: int) -> None:
        plan = self.plan
        fault = plan.fault
        byte_faults = plan.cut_at is not None or fault.corrupt_at is not None or fault.throttle or fault.drip
        if not byte_faults:
            super()._send_body(entry, start, length)
            self._pump(_junk(fault.extra_bytes))
            return
        self.throttle_start = time.monotonic()
        self.throttle_sent = 0
        chunks = _body_chunks(entry, start, length, fault)
        if fault.drip:
            return self._drip(chunks, fault.drip)
        self.rate = fault.throttle
        if not isinstance(self.connection, ssl.SSLSocket):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, THROTTLE_SNDBUF)
        if self._pump_until(chunks, plan.cut_at):
            self._cut(plan.cut_mode)

    def _drip(self, chunks, every: float) -> None:
        stop = self.server.owner._stop
        for chunk in chunks:
            for i in range(len(chunk)):
                self._send_all(memoryview(chunk)[i:i + 1])
                if stop.wait(every):
                    raise Aborted()

    def _sendfile(self, file: str, start: int, length: int) -> None:
        if not isinstance(self.connection, ssl.SSLSocket):
            return super()._sendfile(file, start, length)
        with open(file, "rb") as f:  # os.sendfile would bypass TLS
            f.seek(start)
            self.connection.sendfile(f, start, length)
            self.record.bytes_sent += length

    def _pump_until(self, chunks, limit: int | None) -> bool:
        """Write chunks; True if `limit` body bytes were sent before the body ended."""
        sent = 0
        for chunk in chunks:
            view = memoryview(chunk)
            if limit is not None and sent + len(view) > limit:
                self._send_all(view[: limit - sent])
                return True
            self._send_all(view)
            sent += len(view)
        return False

    def _send_all(self, view: memoryview, step: int = CHUNK) -> None:
        if not self.rate or isinstance(self.connection, ssl.SSLSocket):
            return super()._send_all(view, THROTTLE_CHUNK if self.rate else step)
        # Throttled: non-blocking writes under the server's gate, so ModelServer.frozen() stops
        # every body between two writes at once (bytes_sent and the socket queues hold still).
        owner, sock = self.server.owner, self.connection
        while len(view):
            if owner._stop.is_set():
                raise Aborted()
            select.select([], [sock], [], 0.05)
            with owner._gate:
                try:
                    n = sock.send(view[:THROTTLE_CHUNK], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                self.record.bytes_sent += n
            view = view[n:]
            self._sent(n)

    def _sent(self, n: int) -> None:
        if self.rate:
            self._throttle_wait(n, self.rate)

    def _throttle_wait(self, n: int, rate: float) -> None:
        self.throttle_sent += n
        now = time.monotonic()
        due = self.throttle_start + self.throttle_sent / rate
        if due < now - THROTTLE_CHUNK / rate:
            # Behind (the client stopped reading, or this thread was not scheduled): carry on at
            # the rate from now rather than burst to catch up and refill the socket buffers.
            self.throttle_start, self.throttle_sent = now, 0
            return
        delay = due - now
        if delay > 0 and self.server.owner._stop.wait(delay):
            raise Aborted()

    def _cut(self, mode: str | None) -> None:
        self.close_connection = True
        if mode == "stall":
            self._stall()
        try:
            # FIN, not RST: the client must receive every byte counted as sent.
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _stall(self) -> None:
        """Hang until stop() or until the client hangs up; never sleep unboundedly."""
        stop = self.server.owner._stop
        sock = self.connection
        while not stop.is_set():
            readable, _, _ = select.select([sock], [], [], 0.05)
            if not readable:
                continue
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return  # orderly hang-up
            except OSError:
                return
            stop.wait(0.05)  # pipelined data: keep stalling without spinning


def _body_chunks(entry: Entry, start: int, length: int, fault: Fault):
    for offset, chunk in source_chunks(entry, start, length):
        at = fault.corrupt_at
        if at is not None and offset <= at < offset + len(chunk):
            chunk = bytearray(chunk)
            chunk[at - offset] ^= 0xFF
        yield chunk
    yield from _junk(fault.extra_bytes)


def _junk(n: int):
    while n > 0:
        piece = _JUNK[: min(n, len(_JUNK))]
        yield piece
        n -= len(piece)

