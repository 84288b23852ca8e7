"""The download engine: fast, resumable, verified, atomic, and careful with secrets.

`download_models(jobs, ...)` fetches model files named by a (teammate's) manifest
into the models directory:

* one `requests.Session` for everything (connection reuse), raw 1-8 MiB reads with
  identity encoding, `os.pwrite` at absolute offsets;
* partial data lives in `<models_dir>/.cfd/staging/<key>.part` with a JSON sidecar
  (source, validator, size, per-segment progress); a later run resumes with
  `Range` + `If-Range` and accepts only a 206 that starts where we are;
* several files at once (`jobs`), and a large file split into ranges fetched on
  several connections (`connections`) when the server honours ranges; an idle
  connection takes over half of the biggest remaining range (no slow tail);
* write-back starts in the background, so the final fsync finds little left to do;
* the short hash is computed from the bytes as they arrive; a full blake3/sha256
  from the manifest is checked too; a mismatch discards the data and names the source;
* fsync, then a no-clobber move into place; the index records model, location and source;
* tokens only to their own hosts, redirects followed by hand (each hop re-checked),
  loopback/private addresses refused unless allowed.

The parts: `downloadtypes` (jobs, options, outcomes), `httpsession` (session,
redirects, retries), `staging` (the .part file and sidecar, verification),
`segments` (ranges, work stealing, the transfer loop), `placement` (the move into
the models dir, the free-space check), `writeback` (background flushing). This
module runs the batch and one job at a time, and is the public entry.

Callbacks are called from worker threads (one per file, plus one per segment for
progress); implementations must be thread-safe. Errors are one line, with
credentials removed, never a traceback.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from .types import (
    INTERRUPTED,
    MIB,
    BatchDownloadCallbacks,
    OVER_BUDGET,
    SOURCE_GONE,
    Cancelled,
    DiskError,
    DownloadCallbacks,
    DownloadJob,
    DownloadOptions,
    DownloadOutcome,
    Ending,
    Failure,
    as_callbacks,
    clean,
    failed,
    interrupted,
)
from ..errors import CfdError, UnsafeManifestValue
from .session import prepare_url, storable_url
from ..state import models_state
from ..dialect import BY_SHORT_HASH
from ..store.index import ModelIndex
from .placement import place, space_errors
from .safety import safe_relative_path, target_path
from .batch import Batch, plan_segments
from .segments import Transfer
from ..store.shorthash import short_hash_file
from .staging import discard_staging, held_lock, staging_name
from .urls import redact_url

__all__ = [
    "INTERRUPTED",
    "MIB",
    "BatchDownloadCallbacks",
    "DownloadCallbacks",
    "DownloadJob",
    "DownloadOptions",
    "DownloadOutcome",
    "download_models",
    "plan_segments",
    "prepare_url",
    "staging_name",
]


class _Engine:
    """One batch: runs each job under its lock, from its first source that works."""

    def __init__(self, models_dir: Path, index_path: Path, options: DownloadOptions,
                 callbacks: DownloadCallbacks, cancel: threading.Event) -> None:
        self.models_dir, self.index_path = models_dir, index_path
        self.options, self.callbacks, self.cancel = options, callbacks, cancel
        self.layout = models_state(models_dir)
        self.staging_dir, self.locks_dir = self.layout.staging, self.layout.locks
        self.dialect = BY_SHORT_HASH.get(options.short_hash)  # the index must be of the hash's dialect
        self.batch = Batch(options, callbacks, cancel)
        self.setup_error: str | None = None
        self.over_budget = False  # the deadline passed: what stopped is pending for `cfd repair`

    def close(self) -> None:
        self.batch.close()

    def prepare(self) -> str | None:
        """Create cfd's folders in the models dir; the one-line reason when that is impossible."""
        from ..environment import require_models_dir

        try:
            require_models_dir(self.models_dir)  # never created: an unmounted drive would fill the system disk
        except CfdError as exc:
            return str(exc)
        try:
            for folder in (self.staging_dir, self.locks_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(self.models_dir) else ""
            return (f"cannot write in the models directory {self.models_dir}: {exc.strerror or exc}{where}; "
                    "make it writable (or set cfd.modelsDir to another folder) and run `cfd repair` again")
        return None

    def run_job(self, job: DownloadJob, number: int, total: int, space_error: str | None) -> DownloadOutcome:
        self.callbacks.on_file_start(job.filename, number, total)
        if self.cancel.is_set():
            outcome = interrupted(job)
        else:
            try:
                outcome = self._job(job, space_error)
            except CfdError as exc:
                outcome = failed(job, clean(str(exc)))
            except Exception as exc:  # noqa: BLE001 - one line per file, never a traceback
                outcome = failed(job, f"unexpected error: {type(exc).__name__}: {clean(str(exc))}")
        if not outcome.success and self._out_of_time():
            # Stopped by the deadline, or failed at it (a socket timeout cut short to end by then).
            last = "" if outcome.interrupted else f" (last error: {outcome.error})"
            outcome = failed(job, f"{OVER_BUDGET} ({self.options.budget or 0:g} s, cfd.hookTimeBudget) used up; "
                                  f"what arrived is kept: run `cfd repair` to finish{last}", outcome.bytes_fetched,
                             Ending.OVER_BUDGET)
        self.callbacks.on_file_complete(job.filename, outcome.success, outcome.error)
        return outcome

    def _out_of_time(self) -> bool:
        deadline = self.options.deadline
        return self.over_budget or (deadline is not None and time.monotonic() >= deadline)

    def _job(self, job: DownloadJob, space_error: str | None) -> DownloadOutcome:
        relpath = safe_relative_path(job.relative_path, job.filename)
        target = target_path(self.models_dir, relpath)
        name = staging_name(job.key)
        if self.setup_error:  # nothing can be written: a file already there is still fine
            with ModelIndex(self.index_path, self.models_dir, self.dialect) as index:
                return self._already_there(job, relpath, target, index) or failed(job, self.setup_error)
        def waiting() -> None:
            self.batch.note(job.filename, "waiting for another cfd process that is downloading it")

        with held_lock(self.layout.download_lock(name), self.cancel, waiting) as held:
            if not held:
                return interrupted(job)
            with ModelIndex(self.index_path, self.models_dir, self.dialect) as index:
                present = self._already_there(job, relpath, target, index)
                if present is not None:
                    discard_staging(self.staging_dir, name)  # a run killed after placing it left these
                    return present
                if space_error:
                    return failed(job, space_error)
                folder_error = self._make_folder(relpath, target)
                if folder_error:
                    return failed(job, folder_error)
                return self._download(job, relpath, target, name, index)

    def _make_folder(self, relpath: str, target: Path) -> str | None:
        """Create the target's folder before fetching anything (a file in the way is said now, not after)."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            return None
        except OSError as exc:
            blocker = next((p for p in [*reversed(target.parent.parents), target.parent]
                            if self.models_dir in p.parents and os.path.lexists(p) and not p.is_dir()), None)
            if blocker is not None:
                shown = blocker.relative_to(self.models_dir).as_posix()
                return (f"cannot create the folder for {relpath}: {shown} in the models directory is a file, not a folder; "
                        "move it away and run `cfd repair` again")
            return f"cannot create the folder for {relpath}: {exc.strerror or exc}"

    def _already_there(self, job: DownloadJob, relpath: str, target: Path, index: ModelIndex) -> DownloadOutcome | None:
        if job.expected_hash:
            found = index.present([job.expected_hash]).get(job.expected_hash)
            if found:
                return DownloadOutcome(job, True, found, None, None, job.expected_hash, ending=Ending.FOUND)
        else:
            by_source = index.present_by_source([storable_url(u) for u in job.sources])
            for url in job.sources:
                found = by_source.get(storable_url(url))
                if found:
                    return DownloadOutcome(job, True, found, redact_url(url), None, short_hash_file(self.models_dir / found, index.short_hash),
                                           ending=Ending.FOUND)
        if not os.path.lexists(target):
            return None
        if job.expected_hash and target.is_file():
            stat = target.stat()
            short = short_hash_file(target, index.short_hash)
            if short == job.expected_hash.lower() and (job.size is None or stat.st_size == job.size):
                index.record_file(short, relpath, size=stat.st_size, mtime=stat.st_mtime)
                return DownloadOutcome(job, True, relpath, None, None, short, ending=Ending.FOUND)
            return failed(job, f"{relpath} already exists with different content (short hash {short}, manifest expects "
                                f"{job.expected_hash}); cfd does not overwrite it: move it away and run `cfd repair` again")
        return failed(job, f"{relpath} already exists and cannot be checked against this unresolved entry; "
                            "cfd does not overwrite it: move it away, or resolve the workflow entry")

    def _download(self, job: DownloadJob, relpath: str, target: Path, name: str, index: ModelIndex) -> DownloadOutcome:
        mirror = self.options.mirror
        hit = mirror.locate(job, self.batch.note) if mirror is not None else None
        origins = () if mirror is not None and mirror.only else job.sources
        if hit is None and not origins:
            if job.sources:
                return failed(job, "not in the team mirror, and cfd.mirror.only forbids the manifest's sources")
            return failed(job, "no download source in the manifest; add one to the model entry in pyproject.toml")
        errors: list[str] = []
        gone = 0  # sources that answered 404/410
        fetched = 0
        for source in ([hit] if hit is not None else []) + list(origins):
            checked = job
            if source is hit:  # the mirror: a presigned URL under a stable name, checked against the alias's BLAKE3 too
                source, url, checked = hit.shown, hit.url, hit.job
            else:
                try:
                    url = prepare_url(source, self.options.hf_hosts, self.options.civitai_hosts)
                except UnsafeManifestValue as exc:
                    errors.append(exc.message)
                    continue
            transfer = Transfer(self.batch, checked, source, url, self.staging_dir / name)
            try:
                result = transfer.run()
            except Failure as exc:
                fetched += transfer.fetched
                if checked is not job:  # the mirror's failure: never counted as a manifest source gone
                    message = exc.message.replace(SOURCE_GONE, "the mirror lacks it (`cfd mirror push` where it is)")
                    if origins:
                        self.batch.note(job.filename, f"mirror copy refused ({message}); trying the manifest's sources")
                        continue
                    errors.append(message)
                    continue
                errors.append(exc.message)
                gone += exc.gone
                continue
            except Cancelled:
                return interrupted(job, fetched + transfer.fetched)
            except DiskError as exc:
                return failed(job, str(exc), fetched + transfer.fetched)
            fetched += transfer.fetched
            outcome = place(job, relpath, target, transfer.file, transfer.source, result, index, fetched)
            if mirror is not None and outcome.success and checked is job:  # from an origin: share it with the team
                mirror.publish(job, target, result.blake3, result.sha256, self.batch.note, self.options.deadline)
            return outcome
        ending = Ending.SOURCE_GONE if gone == len(errors) else Ending.FAILED
        if len(errors) == 1:
            return failed(job, errors[0], fetched, ending)
        return failed(job, f"all {len(errors)} sources failed: " + "; ".join(errors), fetched, ending)


def download_models(
    jobs: Sequence[DownloadJob],
    *,
    models_dir: str | os.PathLike[str],
    index_path: str | os.PathLike[str],
    options: DownloadOptions,
    callbacks: DownloadCallbacks | BatchDownloadCallbacks | None = None,
    cancel: threading.Event | None = None,
) -> list[DownloadOutcome]:
    """Download `jobs` (in parallel), verify, place and index them; one outcome per job, in order.

    Never raises for a failed file. Setting `cancel` (or Ctrl-C while this waits)
    stops every transfer promptly; their outcomes say INTERRUPTED and the partial
    data stays for the next run to resume.
    """
    callbacks = as_callbacks(callbacks)
    cancel = cancel or threading.Event()
    stop = threading.Event()  # the caller's cancel, or the deadline: the caller's event is never set here
    if cancel.is_set():
        stop.set()
    models_path = Path(models_dir)
    engine = _Engine(models_path, Path(index_path), options, callbacks, stop)
    engine.setup_error = engine.prepare()
    total = len(jobs)
    callbacks.on_batch_start(total)
    early = space_errors(jobs, models_path, engine.staging_dir)
    outcomes: list[DownloadOutcome | None] = [None] * total
    pool = ThreadPoolExecutor(max_workers=max(1, options.jobs), thread_name_prefix="cfd-download")
    try:
        futures = {pool.submit(engine.run_job, job, i + 1, total, early.get(i)): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            try:
                _done, pending = wait(pending, timeout=0.2)
            except KeyboardInterrupt:
                cancel.set()
            if options.deadline is not None and time.monotonic() >= options.deadline and not stop.is_set():
                engine.over_budget = True
            if cancel.is_set() or engine.over_budget:
                stop.set()
                engine.batch.abort_all()
        for future, i in futures.items():
            outcomes[i] = future.result()
    except BaseException:
        stop.set()  # never wait below for transfers nobody will collect
        engine.batch.abort_all()
        raise
    finally:
        pool.shutdown(wait=True)
        engine.close()
    succeeded = sum(1 for o in outcomes if o is not None and o.success)
    callbacks.on_batch_complete(succeeded, total)
    return [o for o in outcomes if o is not None]
