"""What the mirror holds, read with two listings (aliases, blobs) instead of a request per model."""

from __future__ import annotations

from dataclasses import dataclass

from .client import MirrorClient
from .layout import parse_alias_key

MAX_KEYS = 1_000_000  # a bucket listing is bounded like everything else


@dataclass(frozen=True)
class Inventory:
    aliases: frozenset[tuple[str, int]]  # (short hash, size)
    blobs: dict[str, int]  # blob key -> size

    def has_alias(self, short_hash: str, size: int) -> bool:
        return (short_hash.lower(), size) in self.aliases


def read_inventory(client: MirrorClient) -> Inventory:
    prefix = client.config.prefix
    aliases = set()
    for key, _size in client.keys(f"{prefix}aliases/", MAX_KEYS):
        parsed = parse_alias_key(prefix, key, client.config.dialect)
        if parsed is not None:
            aliases.add(parsed)
    blobs = dict(client.keys(f"{prefix}blobs/", MAX_KEYS))
    return Inventory(frozenset(aliases), blobs)
