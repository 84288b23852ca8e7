"""Where things lie in the mirror bucket: content-addressed, immutable, readable by any S3 tool.

    <prefix>blobs/blake3/<64 hex>                      the model file, named by its full BLAKE3
    <prefix>aliases/<dialect>/<short hash>-<size>.json  which blob a manifest's key means

A manifest names a model by a sampled short hash whose recipe depends on the tool
(ComfyDock: BLAKE3 of samples, "comfydock"; ComfyGit: xxh3 of the same samples,
"comfygit"), so the same file gets one blob and one small alias per dialect. An alias
holds the blob's full hashes, size, the filenames and (credential-free) sources it
was published under. Blob first, then alias; neither is ever overwritten. Nothing
read from the bucket is trusted: an alias must parse, be small, and name the blob
its own hash gives; a blob is placed only after the download engine verified it
against the manifest's short hash and size (and the alias's BLAKE3).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..download.urls import has_credentials, redact_url

DIALECT = "comfydock"  # aliases of a mirror configured without an environment (MirrorConfig.dialect)
ALIAS_FORMAT = "cfd-mirror-alias/1"
MAX_ALIAS_BYTES = 64 * 1024  # an alias is a few hundred bytes; a bigger object is not one
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_HEX16 = re.compile(r"^[0-9a-f]{16}\Z")


def blob_key(prefix: str, blake3: str) -> str:
    return f"{prefix}blobs/blake3/{blake3.lower()}"


def alias_key(prefix: str, short_hash: str, size: int, dialect: str = DIALECT) -> str:
    return f"{prefix}aliases/{dialect}/{short_hash.lower()}-{int(size)}.json"


def parse_alias_key(prefix: str, key: str, dialect: str = DIALECT) -> tuple[str, int] | None:
    """(short hash, size) of an alias key, or None for anything else."""
    head = f"{prefix}aliases/{dialect}/"
    if not key.startswith(head) or not key.endswith(".json"):
        return None
    short, _, size = key[len(head):-5].partition("-")
    return (short, int(size)) if _HEX16.match(short) and size.isdigit() else None


@dataclass(frozen=True)
class Alias:
    short_hash: str
    size: int
    blake3: str
    sha256: str | None
    filenames: tuple[str, ...]
    sources: tuple[str, ...]
    dialect: str = DIALECT  # whose short hash `short_hash` is

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": ALIAS_FORMAT,
            "dialect": self.dialect,
            "short_hash": self.short_hash,
            "size": self.size,
            "blake3": self.blake3,
            "sha256": self.sha256,
            "blob": f"blobs/blake3/{self.blake3}",
            "filenames": list(self.filenames),
            "sources": list(self.sources),
        }, indent=1).encode("utf-8")


def public_sources(urls: Iterable[str]) -> tuple[str, ...]:
    """Sources fit for a shared bucket: a URL that carries a credential is left out."""
    return tuple(dict.fromkeys(url for url in urls if not has_credentials(url) and redact_url(url) == url))[:20]


def parse_alias(data: bytes, short_hash: str, size: int, dialect: str = DIALECT) -> Alias | None:
    """The alias object's content, or None if it is not a well-formed alias for (short_hash, size)
    in `dialect` (the two dialects' short hashes of one file differ)."""
    if len(data) > MAX_ALIAS_BYTES:
        return None
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != ALIAS_FORMAT or raw.get("dialect") != dialect:
        return None
    blake3, sha256 = raw.get("blake3"), raw.get("sha256")
    if not (isinstance(blake3, str) and _HEX64.match(blake3)):
        return None
    if sha256 is not None and not (isinstance(sha256, str) and _HEX64.match(sha256)):
        return None
    if raw.get("short_hash") != short_hash.lower() or raw.get("size") != size or isinstance(raw.get("size"), bool):
        return None

    def strings(name: str) -> tuple[str, ...]:
        value = raw.get(name)
        return tuple(str(v)[:500] for v in value[:20] if isinstance(v, str)) if isinstance(value, list) else ()

    return Alias(short_hash.lower(), size, blake3, sha256, strings("filenames"), strings("sources"), dialect)
