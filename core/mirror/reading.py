"""The mirror as the download engine's first source, and its publisher after an origin download.

`EngineMirror` is what DownloadOptions.mirror holds. For a job with a short hash and a
size it reads the alias, and hands the engine a presigned SigV4 GET URL of the blob
(without boto3 where presigned.py can sign, else through boto3's client):
the engine then fetches it like any source (ranged parallel GETs, `.part` resume under
the stable name `s3://bucket/blobs/...`, inline verification against the manifest's
short hash and size plus the alias's BLAKE3, atomic placement). A blob that fails
verification is discarded by the engine, which goes on to the manifest's sources.

A failure of the whole mirror (refused credentials, unreachable endpoint) is said once
per batch, in one line, and the mirror is not asked again until the next run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .client import MirrorClient, MirrorError
from .config import MirrorConfig
from .layout import MAX_ALIAS_BYTES, alias_key, blob_key, parse_alias
from .presigned import PresignedReader, presigned_reader

if TYPE_CHECKING:
    from ..download.types import DownloadJob

Note = Callable[[str, str], None]  # (filename, one line)


@dataclass(frozen=True)
class MirrorHit:
    shown: str  # s3://bucket/key: the source's name in messages and in the staging sidecar
    url: str  # presigned GET
    job: DownloadJob  # the job with the alias's BLAKE3 to verify as well


class EngineMirror:
    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self._client: MirrorClient | None = None  # boto3: publishing, and reading where presigned.py cannot sign
        self._reader: MirrorClient | PresignedReader | None = None
        self._lock = threading.Lock()
        self._down: str | None = None  # why the whole mirror is out for this batch
        self._issued: set[str] = set()

    @property
    def only(self) -> bool:
        return self.config.only

    def client(self) -> MirrorClient:
        with self._lock:
            if self._client is None:
                self._client = MirrorClient(self.config)
            return self._client

    def reader(self) -> MirrorClient | PresignedReader:
        """What reads aliases and presigns blobs: boto3 only when cfd cannot sign as it would."""
        with self._lock:
            if self._reader is None:
                self._reader = presigned_reader(self.config)
                if self._reader is None:
                    self._client = self._client or MirrorClient(self.config)
                    self._reader = self._client
            return self._reader

    def trusts(self, url: str) -> bool:
        """A URL this mirror presigned: its (configured, maybe private) address is reachable."""
        with self._lock:
            return url in self._issued

    def _out(self, error: MirrorError, filename: str, note: Note) -> None:
        with self._lock:
            first = self._down is None
            if first:
                self._down = error.line()
        if first:
            note(filename, f"mirror not used: {error.line()}; downloading from the origins, publishing nothing this run")

    def locate(self, job: DownloadJob, note: Note) -> MirrorHit | None:
        """The mirror's copy of `job`, ready for the engine, or None (not there, or the mirror is out)."""
        if self._down is not None or not job.expected_hash or job.size is None:
            return None
        key = alias_key(self.config.prefix, job.expected_hash, job.size, self.config.dialect)
        try:
            client = self.reader()
            data = client.get_small(key, MAX_ALIAS_BYTES)
            if data is None:
                return None
            alias = parse_alias(data, job.expected_hash, job.size, self.config.dialect)
            if alias is None or (job.blake3 and job.blake3.lower() != alias.blake3):
                note(job.filename, f"mirror object {self.config.shown(key)} is not a valid alias for this model; ignored")
                return None
            blob = blob_key(self.config.prefix, alias.blake3)
            if client.size_of(blob) != job.size:  # pruned by hand, or half a publish: some stores answer 500, not 404
                note(job.filename, f"the mirror's alias names a blob it does not hold ({self.config.shown(blob)}); ignored")
                return None
            url = client.presign_get(blob)
        except MirrorError as exc:
            if exc.mirror_wide:
                self._out(exc, job.filename, note)
            else:
                note(job.filename, f"mirror not used for this file: {exc.line()}")
            return None
        with self._lock:
            self._issued.add(url)
        return MirrorHit(self.config.shown(blob), url, replace(job, blake3=alias.blake3))

    def has(self, short_hash: str, size: int) -> bool:
        """The mirror holds an alias for this model (status, repair: a model without sources is still downloadable)."""
        if self._down is not None:
            return False
        try:
            return self.reader().size_of(alias_key(self.config.prefix, short_hash, size, self.config.dialect)) is not None
        except MirrorError as exc:
            if exc.mirror_wide:
                with self._lock:
                    self._down = self._down or exc.line()
            return False

    def publish(self, job: DownloadJob, path: Path, blake3: str | None, sha256: str | None, note: Note,
                deadline: float | None) -> None:
        """Upload a model just downloaded from an origin and verified; never raises, a failure is one note."""
        if not self.config.publish or not job.expected_hash or job.size is None:
            return
        if self._down is not None:
            return  # said once already, when the mirror went out; `cfd mirror push` uploads it later
        if deadline is not None and time.monotonic() >= deadline:
            note(job.filename, "not published to the mirror (hook time budget used up); `cfd mirror push` uploads it")
            return
        from .publish import publish_file

        try:
            publish_file(self.client(), path, short_hash=job.expected_hash, size=job.size, blake3=blake3, sha256=sha256,
                         filenames=(job.filename,), sources=job.sources)
        except MirrorError as exc:
            if exc.mirror_wide:
                with self._lock:
                    self._down = self._down or exc.line()
            note(job.filename, f"not published to the mirror: {exc.line()}; `cfd mirror push` retries")
        except OSError as exc:
            note(job.filename, f"not published to the mirror: {exc.strerror or exc}; `cfd mirror push` retries")


def engine_mirror(env: object) -> EngineMirror | None:
    """The mirror for a batch of downloads, or None when none is configured (boto3 not imported)."""
    from .config import mirror_config

    config = mirror_config(env)
    return EngineMirror(config) if config is not None else None
