"""A local HTTP model server (stdlib only): `cfd demo`'s stand-in for Hugging Face / Civitai.

Ranges, ETag / Last-Modified validators with If-Range, keep-alive, and a record of every
request (how many body bytes went out). The tests' fault switches (stalls, cuts, lies,
throttling, TLS) live in tests/helpers/faults.py, a subclass of this server.

    with ModelServer() as srv:
        srv.add_file("/m.safetensors", generate_model_bytes(seed=1, size=1 << 20))
        requests.get(srv.url("/m.safetensors"))

Run `python -m cfd.demo.server DIR [--port N]` to serve a directory.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from urllib.parse import quote

from .handler import Handler
from .records import Entry, RequestRecord, make_entry, norm_path

__all__ = ["ModelServer", "RequestRecord", "main", "serve_directory"]


class LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address, handler, owner: ModelServer):
        self.owner = owner
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can hang.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port

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


class ModelServer:
    """Threaded HTTP/1.1 keep-alive file server on the loopback interface."""

    scheme = "http"
    handler: type[Handler] = Handler
    http_server: type[LoopbackHTTPServer] = LoopbackHTTPServer

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._files: dict[str, Entry] = {}
        self._versions: dict[str, int] = {}
        self._records: list[RequestRecord] = []
        # "localhost" may resolve to ::1 first; binding IPv4 keeps clients' fallback cheap.
        bind = "127.0.0.1" if host == "localhost" else host
        self._httpd = self.http_server((bind, port), self.handler, self)
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

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
        """Serve `data` (bytes, or a file on disk given as a path) at `path`; returns its URL.
        Adding again at the same path always yields a new ETag and a later Last-Modified."""
        key = norm_path(path)
        with self._lock:
            version = self._versions.get(key, 0) + 1
            self._versions[key] = version
            previous = self._files.get(key)
        entry = make_entry(data, version, previous)
        with self._lock:
            self._files[key] = entry
        return self.url(key)

    def _entry(self, key: str) -> Entry | None:
        with self._lock:
            return self._files.get(key)

    # observation -----------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request seen so far."""
        with self._lock:
            return list(self._records)

    def requests_for(self, path: str) -> list[RequestRecord]:
        key = norm_path(path)
        return [r for r in self.requests if norm_path(r.path) == key]

    def bytes_sent(self, path: str | None = None) -> int:
        """Body bytes written to sockets (partial writes included), for one path or all."""
        records = self.requests if path is None else self.requests_for(path)
        return sum(r.bytes_sent for r in records)

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)


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
        prog="python -m cfd.demo.server",
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
