"""The hashes a manifest entry needs for a file on disk (`cfd hash`).

The short hash (the dialect's: BLAKE3 or xxh3 sample) is the model's key in
`[tool.comfydock.models]` / `[tool.comfygit.models]`; `blake3` and
`sha256` are the optional full digests a model entry may carry. Reading the
whole file for them is what `--full` costs.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import CfdError
from ..download.fullhash import FullHash
from .shorthash import BLAKE3_SAMPLE, short_hash_file


@dataclass(frozen=True)
class FileHashes:
    path: Path
    size: int
    hash: str  # the short hash: the manifest's key
    blake3: str | None = None
    sha256: str | None = None


def hash_file(path: str | os.PathLike[str], full: bool = False, algorithm: str = BLAKE3_SAMPLE) -> FileHashes:
    """A regular file's size and short hash (and, with `full`, its BLAKE3 and SHA-256)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise CfdError(f"cannot hash {path}: not a regular file", "give the path of a model file")
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            digests: tuple[str | None, str | None] = (None, None)
            if full:
                whole = FullHash(want_blake3=True, want_sha256=True)
                whole.catch_up(handle.fileno(), info.st_size)
                digests = whole.digests()
    except OSError as exc:
        raise CfdError(f"cannot hash {path}: {exc.strerror or exc}", "give the path of a model file") from None
    # The short hash reads only its sampled regions (a second open is cheap).
    return FileHashes(path, info.st_size, short_hash_file(path, algorithm), *digests)
