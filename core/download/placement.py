"""Putting a verified download into the models directory, and checking it fits first.

The move is a hard link (or, without links, a checked rename; across disks, a copy
beside the target) so an existing file is never replaced; then the directory is
fsynced and the index records model, location and source.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .types import DownloadJob, DownloadOutcome, clean, failed
from ..errors import UnsafeManifestValue
from ..files import fsync_dir, move_no_clobber
from .session import storable_url
from ..store.index import ModelIndex
from .safety import target_path
from ..store.shorthash import short_hash_file
from .staging import Result, StagingFile, partial_bytes
from ..units import human_size
from .urls import redact_url


def place(job: DownloadJob, relpath: str, target: Path, staged: StagingFile, source: str, result: Result,
          index: ModelIndex, fetched: int) -> DownloadOutcome:
    """Move the verified `staged` file to `target` (never over another file) and record it in the index."""
    shown = redact_url(source)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the folder was there when the download started
        return failed(job, f"cannot place {relpath}: cannot create its folder ({exc.strerror or exc}); the verified "
                           f"download is kept in {staged.part} and the next run places it", fetched)
    try:
        move_no_clobber(staged.part, target)
    except FileExistsError:
        staged.discard()
        if target.is_file() and short_hash_file(target, index.short_hash) == result.short_hash:
            pass  # someone else put the same file there meanwhile
        else:
            return failed(job, f"{relpath} appeared while downloading, with other content; cfd does not overwrite it", fetched)
    except OSError as exc:
        return failed(job, f"cannot place {relpath}: {exc.strerror or exc}; the verified download is kept in "
                           f"{staged.part}", fetched)
    staged.discard()
    fsync_dir(target.parent)
    stat = target.stat()
    try:
        index.record_file(result.short_hash, relpath, size=stat.st_size, mtime=stat.st_mtime,
                          source_url=storable_url(source), blake3_hash=result.blake3, sha256_hash=result.sha256)
    except Exception as exc:  # noqa: BLE001
        return DownloadOutcome(job, False, relpath, shown, f"downloaded {relpath} but could not record it in the index "
                               f"({clean(str(exc))}); run `cfd index scan`", result.short_hash, fetched)
    return DownloadOutcome(job, True, relpath, shown, None, result.short_hash, fetched)


def space_errors(jobs: Sequence[DownloadJob], models_dir: Path, staging_dir: Path) -> dict[int, str]:
    """Jobs that do not fit in the free space, in order, with a plain message."""
    try:
        free = shutil.disk_usage(models_dir).free
    except OSError:
        return {}
    errors: dict[int, str] = {}
    for i, job in enumerate(jobs):
        if job.size is None:
            continue
        try:
            if os.path.lexists(target_path(models_dir, job.relative_path)):
                continue
        except UnsafeManifestValue:
            continue  # reported by the job itself
        need = max(0, job.size - partial_bytes(staging_dir, job))
        if need > free:
            errors[i] = (f"not enough disk space for {job.filename}: it needs {human_size(need)} more, "
                         f"{human_size(free)} free in {models_dir}; free some space and run `cfd repair` again")
        else:
            free -= need
    return errors
