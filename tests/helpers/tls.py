"""https for the tests' model server: a self-signed certificate and a TLS-wrapping server."""

from __future__ import annotations

import atexit
import functools
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

from cfd.demo.server import LoopbackHTTPServer

__all__ = ["TLSHTTPServer", "test_certificate"]


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


class TLSHTTPServer(LoopbackHTTPServer):
    """Serves https once `tls_context` is set, plain http until then."""

    def __init__(self, address, handler, owner) -> None:
        self.tls_context: ssl.SSLContext | None = None
        super().__init__(address, handler, owner)

    def get_request(self):
        request, address = super().get_request()
        if self.tls_context is not None:  # the handshake happens in the handler's thread, on first read
            request = self.tls_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        return request, address
