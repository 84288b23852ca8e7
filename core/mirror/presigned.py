"""The mirror's read path without boto3: alias GET, blob HEAD and the blob's URL, all presigned.

A pull from the mirror makes three S3 calls before the engine takes over. Through boto3
they cost ~0.6 s of imports and client setup on a loaded 2-core machine (measured by
bench/bench_mirror.py's engine line), a sixth of a 1 GiB loopback pull. Here they are
SigV4-presigned with the standard library (sigv4.py) and sent on one keep-alive requests
session. Used only where cfd can know what boto3 would sign with, without reading any
file: a configured endpoint (path-style; AWS itself keeps boto3's endpoint rules), and
credentials from the environment with no profile chosen (the SDKs' first link in the
chain). Anything else (profiles, SSO, instance roles, ~/.aws/config) goes through
boto3's client as before. Errors read as MirrorClient's, one line, no secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .client import CREDENTIAL_CODES, PRESIGN_SECONDS, MirrorError, no_bucket, refused, unreachable
from .config import MirrorConfig
from .sigv4 import Credentials, presign

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*\Z")  # what layout.py builds; never '..' (see _check)
_CONNECT, _READ = 5, 30  # MirrorClient's bounds
_ERROR_BODY = 4096


def environment_signing(environ: Mapping[str, str]) -> tuple[Credentials, str] | None:
    """(credentials, region) boto3 would sign with from `environ` alone, or None when it would look further."""
    access, secret = environ.get("AWS_ACCESS_KEY_ID", ""), environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not access or not secret or environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE"):
        return None
    if environ.get("AWS_CREDENTIAL_EXPIRATION"):
        return None  # refreshable credentials: boto3's business
    region = environ.get("AWS_DEFAULT_REGION")  # boto3 reads this one, not AWS_REGION
    if not region:
        config = environ.get("AWS_CONFIG_FILE") or str(Path.home() / ".aws" / "config")
        if os.path.exists(os.path.expanduser(config)):
            return None  # its [default] may name a region
        region = "us-east-1"  # what MirrorClient uses when boto3 finds none
    token = next((environ[name] for name in ("AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN") if environ.get(name)), None)
    return Credentials(access, secret, token), region


def presigned_reader(config: MirrorConfig, environ: Mapping[str, str] | None = None) -> PresignedReader | None:
    if config.endpoint is None:
        return None
    environ = os.environ if environ is None else environ
    signing = environment_signing(environ)
    # boto3 verifies an https endpoint against AWS_CA_BUNDLE when set (a studio's private CA): so does this.
    return PresignedReader(config, *signing, environ.get("AWS_CA_BUNDLE")) if signing is not None else None


class PresignedReader:
    """MirrorClient's read calls (size_of, get_small, presign_get) over presigned URLs."""

    def __init__(self, config: MirrorConfig, credentials: Credentials, region: str, ca_bundle: str | None = None) -> None:
        import requests

        assert config.endpoint is not None
        self.config, self.endpoint = config, config.endpoint
        self._credentials, self._region = credentials, region
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": "cfd-mirror", "Accept-Encoding": "identity"})
        if ca_bundle:
            self.session.verify = ca_bundle

    def _url(self, method: str, key: str, expires: int) -> str:
        if not _SAFE_KEY.match(key) or ".." in key.split("/"):
            raise MirrorError(f"refused to ask the mirror for {key[:80]!r}: not a key cfd writes")
        return presign(method, self.endpoint, self.config.bucket, key, self._credentials, self._region, expires)

    def presign_get(self, key: str) -> str:
        return self._url("GET", key, PRESIGN_SECONDS)

    def _send(self, method: str, key: str, headers: dict[str, str]) -> Any:
        import requests

        url = self._url(method, key, 300)
        for attempt in range(2):  # boto3's max_attempts=2: one retry of a dropped connection or a 5xx
            try:
                resp = self.session.request(method, url, headers=headers, stream=True, allow_redirects=False,
                                            timeout=(_CONNECT, _READ))
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt:
                    raise unreachable(self.endpoint, type(exc).__name__) from None
                continue
            except requests.RequestException as exc:
                raise MirrorError(f"the mirror failed at {method} {key}: {type(exc).__name__}") from None
            if resp.status_code >= 500 and not attempt:
                resp.close()
                continue
            return resp
        raise AssertionError("unreachable")

    def _failure(self, resp: Any, what: str) -> MirrorError | None:
        """The error an answer means (None: the object does not exist)."""
        status = resp.status_code
        try:  # S3's XML error names the cause; a HEAD has no body
            body = resp.raw.read(_ERROR_BODY, decode_content=False) if resp.request.method != "HEAD" else b""
        except Exception:  # noqa: BLE001 - the status alone then
            body = b""
        finally:
            resp.close()
        found = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", body)
        code = found.group(1).decode() if found else ""
        if status == 403 or code in CREDENTIAL_CODES:
            return refused(self.config.url, code or status)
        if code == "NoSuchBucket":
            return no_bucket(self.config.bucket, self.endpoint)
        if status == 404:
            return None
        return MirrorError(f"the mirror answered {code or status} to {what}")

    def size_of(self, key: str) -> int | None:
        resp = self._send("HEAD", key, {})
        if resp.status_code != 200:
            error = self._failure(resp, f"HEAD {key}")
            if error is None:
                return None
            raise error
        resp.close()
        length = resp.headers.get("Content-Length", "")
        if not length.isdigit():
            raise MirrorError(f"the mirror answered HEAD {key} without a size")
        return int(length)

    def get_small(self, key: str, limit: int) -> bytes | None:
        resp = self._send("GET", key, {"Range": f"bytes=0-{limit}"})
        if resp.status_code not in (200, 206):
            error = self._failure(resp, f"GET {key}")
            if error is None:
                return None
            raise error
        try:
            return bytes(resp.raw.read(limit + 1, decode_content=False))
        except Exception as exc:  # noqa: BLE001 - a body cut short: one line, never a traceback
            raise MirrorError(f"the mirror failed at GET {key}: {type(exc).__name__}") from None
        finally:
            resp.close()
