"""Deterministic model bytes: the same (seed, size) always gives the same content.

The demo's models, the tests' and the benchmarks' are all made here, in 1 MiB pieces, so
multi-GB files never have to sit in memory.
"""

from __future__ import annotations

import functools
import os
import random
import struct
from pathlib import Path

__all__ = ["CHUNK", "generate_model_bytes", "iter_model_chunks", "write_model_file"]

CHUNK = 1 << 20  # generated blocks, disk reads and socket writes


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
