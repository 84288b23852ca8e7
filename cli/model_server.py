"""A local, fault-injecting HTTP model server (stdlib only).

Used by `cfd demo` as a stand-in for Hugging Face / Civitai, and by the tests and
benchmarks to reproduce what real CDNs do to downloads: ranges, validators, redirects,
rate limits, stalls, truncated or corrupted bodies.

    with ModelServer() as srv:
        srv.add_file("/m.safetensors", generate_model_bytes(seed=1, size=1 << 20))
        srv.set_fault("/m.safetensors", close_after=4096, close_times=1)
        requests.get(srv.url("/m.safetensors"))

Run `python -m cfd.cli.model_server DIR [--port N]` to serve a directory.
"""

from __future__ import annotations

import argparse
import atexit
import email.utils
import functools
import hashlib
import os
import random
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "Fault",
    "ModelServer",
    "RequestRecord",
    "generate_model_bytes",
    "iter_model_chunks",
    "main",
    "write_model_file",
]

CHUNK = 1 << 20  # disk reads and socket writes
THROTTLE_CHUNK = 64 << 10  # granularity of the rate cap
_JUNK = b"\xde\xad\xbe\xef" * (THROTTLE_CHUNK // 4)
_HTML_ERROR = (
    b"<!DOCTYPE html>\n<html><head><title>Error</title></head>"
    b"<body><h1>Something went wrong</h1><p>Please sign in to continue.</p></body></html>\n"
)


# --------------------------------------------------------------------------- content


@functools.lru_cache(maxsize=8)
def _base_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(CHUNK)


def _model_block(seed: int, index: int) -> bytearray:
    # Rotating the seed's block by a per-index amount (7919 is coprime with 2**20, so
    # every index below 2**20 differs) plus a stamped header keeps regions distinct
    # while costing only a memcpy per MiB.
    base = _base_block(seed)
    k = (index * 7919) % CHUNK
    block = bytearray(base[k:])
    block += base[:k]
    block[:16] = struct.pack("<QQ", seed & 0xFFFFFFFFFFFFFFFF, index)
    return block


def iter_model_chunks(seed: int, size: int):
    """Yield the content of generate_model_bytes(seed, size) in 1 MiB pieces."""
    if size < 0:
        raise ValueError("size must be >= 0")
    for index in range((size + CHUNK - 1) // CHUNK):
        block = _model_block(seed, index)
        remaining = size - index * CHUNK
        yield block if remaining >= CHUNK else block[:remaining]


def generate_model_bytes(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes; the same (seed, size) always gives the same data."""
    return b"".join(iter_model_chunks(seed, size))


def write_model_file(path: str | os.PathLike, seed: int, size: int) -> Path:
    """Write generate_model_bytes(seed, size) to `path` without holding it in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for chunk in iter_model_chunks(seed, size):
            f.write(chunk)
    return path


# --------------------------------------------------------------------------- model


@dataclass
class RequestRecord:
    """One request as the server saw it; bytes_sent grows while the body is written."""

    method: str
    path: str  # as requested, with the query string
    headers: dict[str, str]
    range: str | None
    client: tuple
    status: int | None = None
    bytes_sent: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None  # set once the handler is done with it (answered, cut or abandoned)


@dataclass(frozen=True)
class Fault:
    """Fault switches for one path; see ModelServer.set_fault."""

    fail_times: int = 0
    fail_status: int = 500
    retry_after: int | float | str | None = None
    status_always: int | None = None
    stall_after: int | None = None
    stall_times: int | None = None  # None: every request
    close_after: int | None = None
    close_times: int | None = None  # None: every request
    wrong_content_length: int | None = None
    ignore_range: bool = False
    corrupt_at: int | None = None
    extra_bytes: int = 0
    no_length: bool = False
    html_200: bool = False
    redirect_to: str | None = None
    redirect_loop: bool = False
    throttle: float | None = None  # bytes per second
    headers: dict[str, str] | None = None
    # A load-balanced mirror of N backends whose ETags differ (round robin per request);
    # each backend honours If-Range only with its own ETag.
    mirror_etags: int = 0
    drip: float | None = None  # slowloris: one body byte every `drip` seconds
    black_hole: bool = False  # accept the request, never answer (until the client hangs up)


@dataclass
class _FaultState:
    """A Fault plus its counters; counters are only touched under ModelServer._lock."""

    fault: Fault
    requests: int = 0
    stalls: int = 0
    closes: int = 0


@dataclass
class _Plan:
    """What the faults decided for one request."""

    fault: Fault
    fail_status: int | None = None
    cut_at: int | None = None  # body bytes to send before stalling / closing
    cut_mode: str | None = None  # "stall" | "close"
    backend: int = 0  # which mirror backend answers (Fault.mirror_etags)


@dataclass(frozen=True)
class _Entry:
    data: bytes | None
    file: str | None
    size: int
    etag: str
    mtime: int  # whole seconds: Last-Modified has no finer resolution

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.mtime, usegmt=True)


def _norm(path: str) -> str:
    return "/" + unquote(urlsplit(path).path).lstrip("/")


# --------------------------------------------------------------------------- server


@functools.lru_cache(maxsize=1)
def test_certificate() -> tuple[str, str]:
    """(cert, key) files of a self-signed certificate for 127.0.0.1 and localhost, made once
    per process with the openssl command (clients trust it through REQUESTS_CA_BUNDLE)."""
    folder = Path(tempfile.mkdtemp(prefix="cfd-test-tls-"))
    atexit.register(shutil.rmtree, folder, True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return str(cert), str(key)


class ModelServer:
    """Threaded HTTP/1.1 keep-alive file server with per-path fault injection.

    `tls=True` serves https with `test_certificate()` (its file is `ca_file`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool = False):
        self.host = host
        self.tls = tls
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._files: dict[str, _Entry] = {}
        self._versions: dict[str, int] = {}
        self._faults: dict[str, _FaultState] = {}
        self._records: list[RequestRecord] = []
        self._open = threading.Event()  # cleared by hold(): requests wait before being served
        self._open.set()
        self._held: list[RequestRecord] = []
        # "localhost" may resolve to ::1 first; binding IPv4 keeps clients' fallback cheap.
        bind = "127.0.0.1" if host == "localhost" else host
        self._httpd = _HTTPServer((bind, port), _Handler, self)
        self._thread: threading.Thread | None = None
        self.ca_file: str | None = None
        if tls:
            self.ca_file, key = test_certificate()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.ca_file, key)
            self._httpd.tls_context = context

    # lifecycle -------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def url(self, path: str) -> str:
        path, sep, query = path.partition("?")
        return self.base_url + quote("/" + path.lstrip("/"), safe="/") + sep + query

    def start(self) -> ModelServer:
        if self._stop.is_set():
            raise RuntimeError("a stopped ModelServer cannot be restarted")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"ModelServer:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes stalled handlers and drops open connections."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._open.set()  # wake held requests
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.drop_connections()
        self._httpd.server_close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # content ---------------------------------------------------------------

    def add_file(self, path: str, data: bytes | os.PathLike | str) -> str:
        """Serve `data` (bytes, or a file on disk given as a path) at `path`; returns its URL."""
        key = _norm(path)
        with self._lock:
            version = self._versions.get(key, 0) + 1
            self._versions[key] = version
            previous = self._files.get(key)
        entry = _make_entry(data, version, previous)
        with self._lock:
            self._files[key] = entry
        return self.url(key)

    def replace_file(self, path: str, data: bytes | os.PathLike | str) -> str:
        """Change the content at `path`; always yields a new ETag and a later Last-Modified."""
        return self.add_file(path, data)

    def remove_file(self, path: str) -> None:
        with self._lock:
            self._files.pop(_norm(path), None)

    def etag(self, path: str) -> str:
        return self._files[_norm(path)].etag

    def last_modified(self, path: str) -> str:
        return self._files[_norm(path)].last_modified

    # faults ----------------------------------------------------------------

    def set_fault(self, path: str, **options) -> None:
        """Replace the faults of `path` (counters restart); options are Fault's fields."""
        state = _FaultState(Fault(**options))
        with self._lock:
            self._faults[_norm(path)] = state

    def clear_faults(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(_norm(path), None)

    def _plan(self, key: str, method: str) -> _Plan | None:
        with self._lock:
            state = self._faults.get(key)
            if state is None:
                return None
            return _decide(state, method)

    # observation -----------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request seen since start or reset_stats()."""
        with self._lock:
            return list(self._records)

    def requests_for(self, path: str) -> list[RequestRecord]:
        key = _norm(path)
        return [r for r in self.requests if _norm(r.path) == key]

    def bytes_sent(self, path: str | None = None) -> int:
        """Body bytes written to sockets (partial writes included), for one path or all."""
        records = self.requests if path is None else self.requests_for(path)
        return sum(r.bytes_sent for r in records)

    # holding -------------------------------------------------------------

    def hold(self) -> None:
        """New requests wait, recorded but unanswered, until release(): a test sees who is
        connected at the same moment (overlap proven, not hoped for)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @property
    def held(self) -> list[RequestRecord]:
        """The requests waiting at the hold right now."""
        with self._lock:
            return list(self._held)

    def _wait_if_held(self, rec: RequestRecord) -> None:
        if self._open.is_set():
            return
        with self._lock:
            self._held.append(rec)
        try:
            self._open.wait()
        finally:
            with self._lock:
                self._held.remove(rec)

    def reset_stats(self) -> None:
        with self._lock:
            self._records.clear()

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)

    def _entry(self, key: str) -> _Entry | None:
        with self._lock:
            return self._files.get(key)


def _make_entry(data, version: int, previous: _Entry | None) -> _Entry:
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        digest = hashlib.blake2b(data, digest_size=8).hexdigest()
        entry_file, size, mtime = None, len(data), int(time.time())
        etag = f'"{digest}-{version}"'
    else:
        # Hashing multi-GB files would be slow; size + mtime identify the content.
        entry_file = os.fspath(data)
        st = os.stat(entry_file)
        size, mtime = st.st_size, int(st.st_mtime)
        etag = f'"{size:x}-{st.st_mtime_ns:x}-{version}"'
        data = None
    if previous is not None:
        # A replacement within the same second must still look newer to If-Range dates.
        mtime = max(mtime, previous.mtime + 1)
    return _Entry(data=data, file=entry_file, size=size, etag=etag, mtime=mtime)


def _decide(state: _FaultState, method: str) -> _Plan:
    """Advance a path's counters for one request (caller holds the lock)."""
    fault = state.fault
    state.requests += 1
    plan = _Plan(fault)
    if fault.mirror_etags:
        plan.backend = state.requests % fault.mirror_etags
    if fault.status_always is not None:
        plan.fail_status = fault.status_always
    elif state.requests <= fault.fail_times:
        plan.fail_status = fault.fail_status
    if plan.fail_status is not None or method != "GET":
        return plan
    # Stalls and closes only count requests that get a body.
    if fault.stall_after is not None and (
        fault.stall_times is None or state.stalls < fault.stall_times
    ):
        state.stalls += 1
        plan.cut_at, plan.cut_mode = fault.stall_after, "stall"
    elif fault.close_after is not None and (
        fault.close_times is None or state.closes < fault.close_times
    ):
        state.closes += 1
        plan.cut_at, plan.cut_mode = fault.close_after, "close"
    return plan


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address, handler, owner: ModelServer):
        self.owner = owner
        self.tls_context: ssl.SSLContext | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can hang.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port

    def get_request(self):
        request, address = super().get_request()
        if self.tls_context is not None:  # the handshake happens in the handler's thread, on first read
            request = self.tls_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        return request, address

    def process_request(self, request, client_address) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Unblock handlers waiting on idle keep-alive reads or full send buffers."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        # Clients hanging up mid-body is the normal case under test; stay quiet.
        if isinstance(sys.exc_info()[1], OSError) or self.owner._stop.is_set():
            return
        super().handle_error(request, client_address)


class _Aborted(Exception):
    """The response cannot continue (server stopping)."""


# --------------------------------------------------------------------------- handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cfd-model-server/1"
    server: _HTTPServer

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
        owner._wait_if_held(self.record)
        self.head = head
        key = _norm(self.path)
        plan = owner._plan(key, self.command)
        self.extra_headers = dict((plan.fault.headers or {}) if plan else {})
        try:
            self._respond(owner, key, plan)
        except (OSError, _Aborted):
            self.close_connection = True
        finally:
            self.record.finished = time.monotonic()

    def _respond(self, owner: ModelServer, key: str, plan: _Plan | None) -> None:
        fault = plan.fault if plan else Fault()
        if fault.black_hole:
            self.close_connection = True
            return self._stall()
        if plan and plan.fail_status is not None:
            return self._fail(plan.fail_status, fault)
        if fault.redirect_loop:
            return self._redirect(self._loop_location(key))
        if fault.redirect_to:
            return self._redirect(fault.redirect_to)
        if fault.html_200:
            return self._simple(200, _HTML_ERROR, "text/html; charset=utf-8")
        entry = owner._entry(key)
        if entry is None:
            return self._simple(404, b"not found\n")
        self._send_entry(entry, plan or _Plan(fault))

    # simple responses ------------------------------------------------------

    def _simple(self, status: int, body: bytes, ctype: str = "text/plain", headers=()) -> None:
        self.send_response(status)
        self._headers({"Content-Type": ctype, "Content-Length": str(len(body)), **dict(headers)})
        if not self.head and body:
            self._send_all(memoryview(body), None)

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
        for name, value in merged.values():
            self.send_header(name, value)  # "Connection: close" also sets close_connection
        self.end_headers()

    # file responses --------------------------------------------------------

    def _send_entry(self, entry: _Entry, plan: _Plan) -> None:
        fault = plan.fault
        etag = entry.etag if not plan.backend else f'"{entry.etag.strip(chr(34))}-b{plan.backend}"'
        selected = self._select_range(entry, fault, etag)
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
        self._length_headers(headers, length + fault.extra_bytes, fault)
        self.send_response(206 if partial else 200)
        self._headers(headers)
        if not self.head:
            self._send_body(entry, start, length, plan)

    def _length_headers(self, headers: dict, length: int, fault: Fault) -> None:
        if fault.no_length:
            headers["Connection"] = "close"  # the body ends when the connection does
        elif fault.wrong_content_length is not None:
            headers["Content-Length"] = str(fault.wrong_content_length)
            headers["Connection"] = "close"  # the stream is out of sync afterwards
        else:
            headers["Content-Length"] = str(length)

    def _select_range(self, entry: _Entry, fault: Fault, etag: str):
        """(start, length, partial) of the body to send, or None for 416."""
        spec = self.headers.get("Range")
        if not spec or fault.ignore_range or not self._if_range_holds(entry, etag):
            return 0, entry.size, False
        parsed = _parse_range(spec, entry.size)
        if parsed is None:  # malformed or multi-range: RFC 9110 lets us ignore it
            return 0, entry.size, False
        if parsed == "unsatisfiable":
            return None
        start, end = parsed
        return start, end - start + 1, True

    def _if_range_holds(self, entry: _Entry, etag: str) -> bool:
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

    def _send_body(self, entry: _Entry, start: int, length: int, plan: _Plan) -> None:
        fault = plan.fault
        byte_faults = plan.cut_at is not None or fault.corrupt_at is not None or fault.throttle or fault.drip
        if entry.file is not None and not byte_faults and hasattr(os, "sendfile"):
            self._sendfile(entry.file, start, length)
            self._pump(_junk(fault.extra_bytes), None, None)
            return
        self.throttle_start = time.monotonic()
        self.throttle_sent = 0
        if fault.drip:
            return self._drip(_body_chunks(entry, start, length, fault), fault.drip)
        chunks = _body_chunks(entry, start, length, fault)
        if self._pump(chunks, plan.cut_at, fault.throttle):
            self._cut(plan.cut_mode)

    def _drip(self, chunks, every: float) -> None:
        stop = self.server.owner._stop
        for chunk in chunks:
            for i in range(len(chunk)):
                self._send_all(memoryview(chunk)[i:i + 1], None)
                if stop.wait(every):
                    raise _Aborted()

    def _sendfile(self, file: str, start: int, length: int) -> None:
        if isinstance(self.connection, ssl.SSLSocket):  # os.sendfile would bypass TLS
            with open(file, "rb") as f:
                f.seek(start)
                self.connection.sendfile(f, start, length)
                self.record.bytes_sent += length
            return
        out_fd = self.connection.fileno()
        with open(file, "rb") as f:
            offset, end = start, start + length
            while offset < end:
                n = os.sendfile(out_fd, f.fileno(), offset, min(CHUNK, end - offset))
                if n == 0:  # the file shrank under us
                    raise _Aborted()
                self.record.bytes_sent += n
                offset += n

    def _pump(self, chunks, limit: int | None, throttle: float | None) -> bool:
        """Write chunks; True if `limit` body bytes were sent before the body ended."""
        sent = 0
        for chunk in chunks:
            view = memoryview(chunk)
            if limit is not None and sent + len(view) > limit:
                self._send_all(view[: limit - sent], throttle)
                return True
            self._send_all(view, throttle)
            sent += len(view)
        return False

    def _send_all(self, view: memoryview, throttle: float | None) -> None:
        # send() rather than sendall() so bytes_sent is exact even when the peer hangs up.
        step = THROTTLE_CHUNK if throttle else CHUNK
        while len(view):
            n = self.connection.send(view[:step])
            self.record.bytes_sent += n
            view = view[n:]
            if throttle:
                self._throttle_wait(n, throttle)

    def _throttle_wait(self, n: int, rate: float) -> None:
        self.throttle_sent += n
        due = self.throttle_start + self.throttle_sent / rate
        delay = due - time.monotonic()
        if delay > 0 and self.server.owner._stop.wait(delay):
            raise _Aborted()

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


def _parse_range(spec: str, size: int):
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


def _body_chunks(entry: _Entry, start: int, length: int, fault: Fault):
    for offset, chunk in _source_chunks(entry, start, length):
        at = fault.corrupt_at
        if at is not None and offset <= at < offset + len(chunk):
            chunk = bytearray(chunk)
            chunk[at - offset] ^= 0xFF
        yield chunk
    yield from _junk(fault.extra_bytes)


def _source_chunks(entry: _Entry, start: int, length: int):
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
                raise _Aborted()  # the file shrank under us
            yield offset, chunk
            offset += len(chunk)


def _junk(n: int):
    while n > 0:
        piece = _JUNK[: min(n, len(_JUNK))]
        yield piece
        n -= len(piece)


# --------------------------------------------------------------------------- CLI


def serve_directory(directory: str | os.PathLike, host: str = "127.0.0.1", port: int = 0):
    """A started ModelServer serving every file under `directory` at its relative path."""
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    srv = ModelServer(host=host, port=port)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        srv.add_file(file.relative_to(root).as_posix(), file)
    return srv.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cfd.cli.model_server",
        description="Serve every file under DIR over HTTP (ranges, ETags, keep-alive).",
    )
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        srv = serve_directory(args.directory, args.host, args.port)
    except (OSError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(srv.base_url, flush=True)  # first stdout line: benchmarks parse it
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
