"""The manifest's full hashes (blake3, sha256) of a download, computed as the bytes arrive."""

from __future__ import annotations

import os
import threading
from hashlib import sha256 as _sha256

from blake3 import blake3

from .types import MIB, DiskError


class FullHash:
    """blake3/sha256 of the whole file, fed in order; catches up from disk when needed."""

    def __init__(self, want_blake3: bool, want_sha256: bool) -> None:
        self.want_blake3, self.want_sha256 = want_blake3, want_sha256
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.position = 0
        self.b3 = blake3(max_threads=blake3.AUTO) if self.want_blake3 else None
        self.s256 = _sha256() if self.want_sha256 else None

    def feed(self, offset: int, data: bytes | memoryview) -> None:
        with self.lock:
            if offset != self.position:
                return  # out of order (another segment): caught up from disk later
            if self.b3 is not None:
                self.b3.update(data)
            if self.s256 is not None:
                self.s256.update(data)
            self.position += len(data)

    def catch_up(self, fd: int, upto: int) -> None:
        while self.position < upto:
            data = os.pread(fd, min(8 * MIB, upto - self.position), self.position)
            if not data:
                raise DiskError("the partial file is shorter than recorded")
            self.feed(self.position, data)

    def digests(self) -> tuple[str | None, str | None]:
        return (self.b3.hexdigest() if self.b3 else None, self.s256.hexdigest() if self.s256 else None)
