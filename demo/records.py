"""What the model server holds and sees: served files (with their validators) and requests."""

from __future__ import annotations

import email.utils
import hashlib
import os
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["Entry", "RequestRecord", "make_entry", "norm_path"]


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
class Entry:
    """One served file: in memory (`data`) or on disk (`file`)."""

    data: bytes | None
    file: str | None
    size: int
    etag: str
    mtime: int  # whole seconds: Last-Modified has no finer resolution

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.mtime, usegmt=True)


def norm_path(path: str) -> str:
    """The key a request path or an added path is served under (no query, decoded)."""
    return "/" + unquote(urlsplit(path).path).lstrip("/")


def make_entry(data, version: int, previous: Entry | None) -> Entry:
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
    return Entry(data=data, file=entry_file, size=size, etag=etag, mtime=mtime)
