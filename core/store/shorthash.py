"""The model identity: a sampled digest ("short hash"), BLAKE3 (ComfyDock) or xxh3_128 (ComfyGit).

The hash is fed the decimal size as ASCII, then the first 5 MiB; files larger
than 30 MiB also contribute 5 MiB from the middle and the last 5 MiB. The key
is the first 16 hex characters. `StreamingShortHasher` computes the same value
from bytes arriving in order (a download), so no second pass over the file is
needed: the sampled regions are known from the size alone. Each function takes the
dialect's algorithm name (`Dialect.short_hash`); the default is ComfyDock's.
"""

from __future__ import annotations

import os

from typing import Any

from blake3 import blake3

BLAKE3_SAMPLE = "blake3_sample"
XXH3_SAMPLE = "xxh3_128_sample_v1"
ALGORITHMS = (BLAKE3_SAMPLE, XXH3_SAMPLE)
CHUNK = 5 * 1024 * 1024
LARGE = 30 * 1024 * 1024
SHORT_HASH_LEN = 16


def sample_regions(size: int) -> list[tuple[int, int]]:
    """(start, end) byte ranges that feed the hash, in feeding order."""
    regions = [(0, min(CHUNK, size))]
    if size > LARGE:
        middle = size // 2 - CHUNK // 2
        regions.append((middle, middle + CHUNK))
        regions.append((size - CHUNK, size))
    return regions


def new_hasher(algorithm: str = BLAKE3_SAMPLE) -> Any:
    """An empty hasher of the algorithm (update/hexdigest)."""
    if algorithm == XXH3_SAMPLE:
        import xxhash  # only ComfyGit environments pay for it

        return xxhash.xxh3_128()
    if algorithm != BLAKE3_SAMPLE:
        raise ValueError(f"unknown short-hash algorithm {algorithm!r}")
    return blake3()


def short_hash_file(path: str | os.PathLike[str], algorithm: str = BLAKE3_SAMPLE) -> str:
    """Short hash of a file on disk, reading only the sampled regions."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        hasher = new_hasher(algorithm)
        hasher.update(str(size).encode("ascii"))
        for start, end in sample_regions(size):
            handle.seek(start)
            hasher.update(handle.read(end - start))
    return hasher.hexdigest()[:SHORT_HASH_LEN]


def short_hash_bytes(data: bytes, algorithm: str = BLAKE3_SAMPLE) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(str(len(data)).encode("ascii"))
    for start, end in sample_regions(len(data)):
        hasher.update(data[start:end])
    return hasher.hexdigest()[:SHORT_HASH_LEN]


class StreamingShortHasher:
    """Short hash of a file of known size whose bytes arrive as they stream.

    Bytes may arrive in order (`update`) or at any offset (`update_at`, for
    ranges fetched on several connections). Each sampled region has its own
    preallocated buffer (at most 15 MiB in all), since regions may overlap.
    """

    def __init__(self, size: int, algorithm: str = BLAKE3_SAMPLE) -> None:
        new_hasher(algorithm)  # an unknown name fails now, not after the download
        self.algorithm = algorithm
        self.size = size
        self.position = 0
        self._regions = sample_regions(size)
        self._buffers = [bytearray(end - start) for start, end in self._regions]

    def update(self, chunk: bytes | memoryview) -> None:
        self.update_at(self.position, chunk)
        self.position += len(chunk)

    def update_at(self, offset: int, chunk: bytes | memoryview) -> None:
        end = offset + len(chunk)
        for (r_start, r_end), buffer in zip(self._regions, self._buffers):
            lo, hi = max(offset, r_start), min(end, r_end)
            if lo < hi:
                buffer[lo - r_start : hi - r_start] = chunk[lo - offset : hi - offset]

    def seed_from_file(self, path: str | os.PathLike[str], ranges: list[tuple[int, int]]) -> None:
        """Feed sampled bytes already on disk (a partial file being resumed)."""
        with open(path, "rb") as handle:
            for start, end in ranges:
                for r_start, r_end in self._regions:
                    lo, hi = max(start, r_start), min(end, r_end)
                    if lo < hi:
                        handle.seek(lo)
                        self.update_at(lo, handle.read(hi - lo))

    def hexdigest(self) -> str:
        hasher = new_hasher(self.algorithm)
        hasher.update(str(self.size).encode("ascii"))
        for buffer in self._buffers:
            hasher.update(buffer)
        return hasher.hexdigest()[:SHORT_HASH_LEN]
