"""A download in progress: `<models_dir>/.cfd/staging/<key>.part` and its JSON sidecar.

The sidecar records source, validator, size and per-segment progress, so a later
run resumes where this one stopped; bytes are hashed as they land, and the file
is checked (size, short hash, full hash) and fsynced before anyone places it.
A per-key lock in `.cfd/locks` keeps two processes off the same staging file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256 as _sha256
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from .types import MIB, DiskError, DownloadJob, DownloadOptions, Failure
from ..errors import disk_message
from ..files import remove_temps, write_atomic
from .fullhash import FullHash
from ..store.shorthash import StreamingShortHasher, short_hash_file
from .tensorfile import declared_length, is_safetensors_name
from .writeback import Flusher
from ..units import human_size

_HEX16 = re.compile(r"^[0-9a-f]{16}\Z")


def staging_name(key: str) -> str:
    """A file-system-safe name for a job's key (hashes as-is, intents hashed)."""
    if _HEX16.match(key):
        return key
    return "intent-" + _sha256(key.encode("utf-8")).hexdigest()[:24]


def partial_bytes(staging_dir: Path, job: DownloadJob) -> int:
    """How much of `job` an earlier run left in staging (per its sidecar)."""
    try:
        data = json.loads((staging_dir / f"{staging_name(job.key)}.json").read_text(encoding="utf-8"))
        return sum(int(seg[2]) for seg in data.get("segments", []))
    except (OSError, ValueError, TypeError, IndexError):
        return 0


def discard_staging(staging_dir: Path, name: str) -> None:
    """Remove what a download of `name` left in staging (best effort; hold its lock)."""
    for suffix in (".part", ".json"):
        try:
            (staging_dir / f"{name}{suffix}").unlink()
        except OSError:
            pass
    remove_temps(staging_dir / f"{name}.json")


@contextmanager
def held_lock(path: Path, cancel: threading.Event, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold the lock file `path`; yields False if `cancel` was set while another process held it.

    `on_wait` is called once when the lock is held by someone else (so a user knows why nothing moves)."""
    lock = FileLock(str(path))
    waiting = False
    while True:  # another process may hold it: wait, but stay cancellable
        try:
            lock.acquire(timeout=0.2)
            break
        except LockTimeout:
            if not waiting and on_wait is not None:
                on_wait()
            waiting = True
            if cancel.is_set():
                yield False
                return
    try:
        yield True
    finally:
        lock.release()


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


_BOOT_ID = _boot_id()


@dataclass
class State:
    """What the sidecar remembers; segments are [start, end, done] (end -1: size unknown)."""

    source: str
    size: int | None
    segments: list[list[int]]
    etag: str | None = None
    last_modified: str | None = None
    ranges_ok: bool = False
    synced: list[int] | None = None  # per-segment `done` at the last fsync
    boot_id: str | None = _BOOT_ID

    @property
    def done(self) -> int:
        return sum(seg[2] for seg in self.segments)

    def complete(self) -> bool:
        return self.size is not None and all(seg[0] + seg[2] >= seg[1] for seg in self.segments)

    def validator(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def load(cls, path: Path, source: str, size: int | None, part_size: int) -> State | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        if state.source != source or (size is not None and state.size != size):
            return None
        if state.boot_id != _BOOT_ID:
            # The machine restarted: only bytes flushed by fsync are known to be on disk.
            if not state.synced or len(state.synced) != len(state.segments):
                return None
            for seg, synced in zip(state.segments, state.synced):
                seg[2] = min(seg[2], synced)
            state.boot_id = _BOOT_ID
        if any(seg[0] + seg[2] > part_size for seg in state.segments):
            return None
        return state


@dataclass
class Result:
    short_hash: str
    size: int
    blake3: str | None
    sha256: str | None


class StagingFile:
    """One job's `.part` file and sidecar while one source fills it, at absolute offsets.

    `lock` guards `state`; the segment workers and the sidecar writes share it.
    """

    def __init__(self, staging: Path, job: DownloadJob, shown: str, options: DownloadOptions,
                 on_progress: Callable[[int, int | None], None]) -> None:
        self.job, self.shown, self.options, self.on_progress = job, shown, options, on_progress
        self.part = staging.with_suffix(".part")
        self.sidecar = staging.with_suffix(".json")
        self.lock = threading.Lock()
        self.fetched = 0
        self.unsaved = 0
        self.last_progress = 0.0
        self.fd = -1
        self.dropped = False  # discarded: nothing may recreate the sidecar
        self.unflushed = 0
        self.flusher: Flusher | None = None
        self.state: State
        self.hasher: StreamingShortHasher | None = None
        # The full BLAKE3 of every download goes to the index (ComfyDock's blake3_hash), hashed as the
        # bytes arrive; sha256 only when the manifest gives one to check.
        self.full = FullHash(True, bool(job.sha256))

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        if self.options.flush_bytes > 0:
            # Segments after the first arrive out of order and are hashed from the page cache at the
            # end: keep their pages. A single stream is hashed inline: drop them as they are written.
            size, connections = self.job.size or 0, self.options.connections
            segmented = connections > 1 and size >= 2 * max(self.options.segment_min, MIB)
            self.flusher = Flusher(self.fd, keep_cached=segmented)

    def close(self) -> None:
        if self.flusher is not None:
            self.flusher.close()
        os.close(self.fd)

    def resume(self) -> bool:
        """Take up the progress the sidecar records; False if there is none that fits this source."""
        loaded = State.load(self.sidecar, self.shown, self.job.size, os.fstat(self.fd).st_size)
        if loaded is None:
            return False
        self.state = loaded
        self._new_hasher(seed=True)
        return True

    def discard(self) -> None:
        self.dropped = True
        discard_staging(self.part.parent, self.part.stem)  # the part, its sidecar and the sidecar's temps

    def reset(self, segments: list[list[int]]) -> None:
        """Start over (fresh plan, empty file)."""
        size = self.job.size
        self.state = State(self.shown, size, segments)
        # The empty plan first: a kill between the two steps must not leave a progress file that
        # vouches for bytes the truncation wiped (the next run would resume over zeros).
        self.save()
        try:
            os.ftruncate(self.fd, 0)
            if size:
                os.ftruncate(self.fd, size)  # sparse; pwrite fills it
        except OSError as exc:
            raise DiskError(disk_message(exc, self.job.filename)) from None
        self._new_hasher(seed=False)
        self.full.reset()

    def _new_hasher(self, seed: bool) -> None:
        size = self.state.size
        self.hasher = StreamingShortHasher(size, self.options.short_hash) if size is not None else None
        if self.hasher is not None and seed:
            ranges = [(s, s + d) for s, _e, d in self.state.segments if d]
            self.hasher.seed_from_file(self.part, ranges)

    def learn_size(self, total: int) -> None:
        """An intent's size, learnt from the first response (checked against the free space first)."""
        need = total - self.state.done
        try:
            free = shutil.disk_usage(self.part.parent).free
        except OSError:
            free = need
        if need > free:
            self.discard()
            raise DiskError(f"not enough disk space for {self.job.filename}: the server announces {human_size(total)}, "
                            f"{human_size(free)} free; free some space and run `cfd repair` again")
        self.state.size = total
        self.state.segments = [[0, total, self.state.segments[0][2]]]
        try:
            os.ftruncate(self.fd, max(total, os.fstat(self.fd).st_size))
        except OSError as exc:
            raise DiskError(disk_message(exc, self.job.filename)) from None
        self._new_hasher(seed=self.state.done > 0)
        self.save()

    # -- progress and checkpoints -----------------------------------------

    def end_of_unknown_length(self, chunked: bool) -> None:
        """A body without Content-Length ended: take what arrived as the file only if its length is confirmed.

        A chunked body's end is explicit; a safetensors header declares its file's exact length;
        anything else may be a connection cut short and is refused (and discarded)."""
        done = self.state.done
        if is_safetensors_name(self.job.filename):
            declared = declared_length(self.fd, done)
            if declared is not None and declared != done:
                self.discard()
                raise Failure(f"{self.shown} sent {done} bytes of a safetensors file whose header says {declared} "
                              f"({'cut short' if declared > done else 'extra bytes'}); discarded")
            if declared is not None or chunked:
                self.learn_size(done)
                return
        elif chunked:
            self.learn_size(done)
            return
        self.discard()
        raise Failure(f"{self.shown} sent {done} bytes without saying how many to expect, and nothing confirms that "
                      "length (a cut connection looks the same); discarded: add the size to the model entry")

    def save(self) -> None:
        if self.dropped:
            return
        try:
            # Not durable: it is saved every checkpoint_bytes. An older sidecar after a power cut
            # claims less than was written (safe); `synced` says what an fsync of the data covered.
            write_atomic(self.sidecar, self.state.to_json(), durable=False)
        except OSError as exc:
            raise DiskError(disk_message(exc, f"the progress file of {self.job.filename}")) from None

    def checkpoint(self, sync: bool = False) -> None:
        if self.dropped:
            return
        with self.lock:
            try:
                if sync:
                    os.fsync(self.fd)
                    self.state.synced = [seg[2] for seg in self.state.segments]
                self.save()
            except (OSError, DiskError):
                pass  # best effort: the next run may re-fetch a little more

    def store(self, index: int, offset: int, data: bytes) -> None:
        """Write bytes of segment `index` at `offset`, hash them and count them."""
        self._write(offset, data)
        if self.hasher is not None:
            self.hasher.update_at(offset, data)
        self.full.feed(offset, data)
        self._advance(index, len(data))

    def _advance(self, index: int, n: int) -> None:
        with self.lock:
            segment = self.state.segments[index]
            segment[2] += n
            if segment[1] >= 0 and segment[0] + segment[2] > segment[1]:
                segment[2] = segment[1] - segment[0]  # a thief took the tail while this chunk was in flight
            self.fetched += n
            self.unsaved += n
            if self.unsaved >= self.options.checkpoint_bytes:
                self.unsaved = 0
                self.save()
            self.unflushed += n
            if self.flusher is not None and self.unflushed >= self.options.flush_bytes:
                self.unflushed = 0
                self.flusher.poke()
            done, now = self.state.done, time.monotonic()
            report = now - self.last_progress >= 0.1
            if report:
                self.last_progress = now
        if report:
            self.on_progress(done, self.state.size)

    def _write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            if self.state.size is None:  # no length to check a resumed file against: never keep it
                self.discard()
                raise DiskError(disk_message(exc, self.job.filename) + "; the partial download (size unknown) "
                                "was discarded") from None
            raise DiskError(disk_message(exc, self.job.filename) + "; the partial download is kept for the next run") from None

    # -- verification ------------------------------------------------------

    def verify(self) -> Result:
        size = self.state.size if self.state.size is not None else self.state.done
        actual = os.fstat(self.fd).st_size
        if actual != size or self.state.done != size:
            self.discard()
            raise Failure(f"{self.shown}: got {self.state.done} bytes where {size} were expected; discarded")
        if self.job.size is None and is_safetensors_name(self.job.filename):
            declared = declared_length(self.fd, size)
            if declared is not None and declared != size:
                self.discard()
                raise Failure(f"{self.shown} sent a safetensors file of {size} bytes whose header says {declared}; discarded")
        short = self.hasher.hexdigest() if self.hasher is not None else short_hash_file(self.part, self.options.short_hash)
        expected = self.job.expected_hash
        if expected and short != expected.lower():
            self.discard()
            raise Failure(
                f"{self.shown} sent data that does not match the manifest (short hash {short}, expected {expected}); discarded"
            )
        self.full.catch_up(self.fd, size)
        b3, s256 = self.full.digests()
        for name, got, want in (("blake3", b3, self.job.blake3), ("sha256", s256, self.job.sha256)):
            if want and got != want.lower():
                self.discard()
                raise Failure(f"{self.shown} sent data whose {name} does not match the manifest; discarded")
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise DiskError(disk_message(exc, self.job.filename)) from None
        return Result(short, size, b3, s256)
