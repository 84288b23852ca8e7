"""Putting one verified model file into the mirror: blob first, then its alias, never overwriting.

Shared by the engine (after a verified origin download) and `cfd mirror push`. Two
machines publishing the same file at once write the same bytes under the same keys
(content addressing), so the only race is harmless.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..download.fullhash import FullHash
from .client import MirrorClient
from .layout import Alias, alias_key, blob_key, public_sources

PRESENT, UPLOADED = "present", "uploaded"


@dataclass(frozen=True)
class Published:
    action: str  # PRESENT (the mirror had it) or UPLOADED
    uploaded: int  # blob bytes sent (0 when the blob was there and only the alias was missing)
    blake3: str


def file_blake3(path: Path) -> str:
    """The whole file's BLAKE3 (multi-threaded), for a model the index has no full hash of."""
    with open(path, "rb") as handle:
        whole = FullHash(want_blake3=True, want_sha256=False)
        whole.catch_up(handle.fileno(), os.fstat(handle.fileno()).st_size)
    digest = whole.digests()[0]
    assert digest is not None
    return digest


def publish_file(client: MirrorClient, path: Path, *, short_hash: str, size: int, blake3: str | None,
                 sha256: str | None, filenames: Iterable[str], sources: Iterable[str],
                 progress: Callable[[int], None] | None = None) -> Published:
    """Upload `path` (already verified as `short_hash`/`size`) unless the mirror has it."""
    prefix = client.config.prefix
    akey = alias_key(prefix, short_hash, size, client.config.dialect)
    digest = blake3.lower() if blake3 else None
    if client.size_of(akey) is not None and digest is not None and client.size_of(blob_key(prefix, digest)) == size:
        return Published(PRESENT, 0, digest)
    if digest is None:
        digest = file_blake3(path)
    bkey = blob_key(prefix, digest)
    sent = 0
    if client.size_of(bkey) != size:  # absent (a blob of another size under a BLAKE3 key cannot be ours)
        client.upload_file(str(path), bkey, progress)
        sent = size
    if client.size_of(akey) is None:
        alias = Alias(short_hash.lower(), size, digest, sha256, tuple(dict.fromkeys(filenames))[:20],
                      public_sources(sources), client.config.dialect)
        client.put_bytes(akey, alias.to_bytes())
    elif not sent:
        return Published(PRESENT, 0, digest)
    return Published(UPLOADED, sent, digest)
