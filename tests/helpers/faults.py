"""The demo's model server with fault switches: what real CDNs do to downloads.

Tests and benchmarks reproduce rate limits, stalls, truncated, corrupted or lying bodies,
redirects, mirrors whose ETags differ, slowloris and black holes, hold requests to prove
overlap, and serve https with a self-signed certificate (`tls=True`).

    with ModelServer() as srv:
        srv.add_file("/m.safetensors", generate_model_bytes(seed=1, size=1 << 20))
        srv.set_fault("/m.safetensors", close_after=4096, close_times=1)
        requests.get(srv.url("/m.safetensors"))
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from helpers.faulthandler import FaultHandler
from helpers.faultplan import Fault, FaultState, Plan, decide
from helpers.tls import TLSHTTPServer, test_certificate

from cfd.demo import server as demo_server
from cfd.demo.records import RequestRecord, norm_path

__all__ = ["Fault", "ModelServer", "Plan", "RequestRecord"]


class ModelServer(demo_server.ModelServer):
    """Threaded HTTP/1.1 keep-alive file server with per-path fault injection.

    `tls=True` serves https with `test_certificate()` (its file is `ca_file`)."""

    handler = FaultHandler
    http_server = TLSHTTPServer

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool = False):
        self.tls = tls
        self._faults: dict[str, FaultState] = {}
        self._open = threading.Event()  # cleared by hold(): requests wait before being served
        self._open.set()
        self._held: list[RequestRecord] = []
        self._gate = threading.Lock()  # held by each throttled write; frozen() holds it to stop them
        super().__init__(host, port)
        self.ca_file: str | None = None
        if tls:
            self.scheme = "https"
            self.ca_file, key = test_certificate()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.ca_file, key)
            self._httpd.tls_context = context

    def stop(self) -> None:
        self._open.set()  # wake held requests
        super().stop()

    # content ---------------------------------------------------------------

    def replace_file(self, path: str, data: bytes | os.PathLike | str) -> str:
        """Change the content at `path`; always yields a new ETag and a later Last-Modified."""
        return self.add_file(path, data)

    def remove_file(self, path: str) -> None:
        with self._lock:
            self._files.pop(norm_path(path), None)

    def etag(self, path: str) -> str:
        return self._files[norm_path(path)].etag

    def last_modified(self, path: str) -> str:
        return self._files[norm_path(path)].last_modified

    def reset_stats(self) -> None:
        """Forget the requests seen so far (`requests`, `bytes_sent` start again)."""
        with self._lock:
            self._records.clear()

    # faults ----------------------------------------------------------------

    def set_fault(self, path: str, **options) -> None:
        """Replace the faults of `path` (counters restart); options are Fault's fields."""
        state = FaultState(Fault(**options))
        with self._lock:
            self._faults[norm_path(path)] = state

    def clear_faults(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(norm_path(path), None)

    def _plan(self, key: str, method: str) -> Plan | None:
        with self._lock:
            state = self._faults.get(key)
            if state is None:
                return None
            return decide(state, method)

    # freezing ------------------------------------------------------------

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """While inside, throttled bodies write nothing more (they stop between two writes): a test
        reads `bytes_sent` and the connections' socket queues, and they hold still."""
        with self._gate:
            yield

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
