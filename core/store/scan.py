"""`cfd index scan`: bring the index in line with the models directory.

Incremental: a file whose size and mtime match its indexed location is not
read again; new or changed files get their short hash; locations whose file
vanished are removed. Hidden files and folders (our `.cfd` staging area among
them), partial downloads and obvious non-model files are skipped, as ComfyDock does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..environment import require_models_dir
from ..errors import CfdError
from .index import ModelIndex
from .shorthash import short_hash_file

MIN_MODEL_SIZE = 8
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".incomplete", ".aria2", ".lock")
NOT_MODEL_SUFFIXES = frozenset(
    ".txt .md .log .html .xml .json .yaml .yml .py .js .ts .sh .bat .ps1 .jpg .jpeg .png .gif .bmp .svg "
    ".webp .mp4 .avi .mov .webm .mp3 .wav .zip .tar .gz .rar .7z .pdf .doc .docx .xls .xlsx .env".split()
)


class PruneRefused(CfdError):
    """A scan would forget most (or all) of the indexed files: more likely an unmounted
    drive or a wrong path than a user who deleted them."""


def guard_pruning(
    models_dir: Path, vanished: int, indexed: int, found: int, prune: bool, how: str = "run `cfd index scan --prune`"
) -> None:
    """Refuse to forget more than half of the indexed locations (or all of them) unless told to.

    Files moved within the models dir are not a loss: the guard holds only when fewer
    files are found on disk than vanished from the index.
    """
    if prune or not vanished or vanished * 2 <= indexed or found >= vanished:
        return
    raise PruneRefused(
        f"{vanished} of the {indexed} indexed files under {models_dir} are gone (an unmounted drive or a wrong path?); "
        "the index still lists them",
        f"check the models directory; if they really were deleted, {how} to forget them",
    )


@dataclass(frozen=True)
class ScanResult:
    files: int = 0
    hashed: int = 0
    unchanged: int = 0
    removed: int = 0
    errors: tuple[str, ...] = ()


def is_candidate(name: str) -> bool:
    lowered = name.lower()
    if name.startswith("."):
        return False
    if lowered.endswith(PARTIAL_SUFFIXES):
        return False
    return os.path.splitext(lowered)[1] not in NOT_MODEL_SUFFIXES


def walk_models(models_dir: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path with '/', stat) of each candidate model file; follows
    user-made symlinked folders, guarding against loops."""
    seen: set[tuple[int, int]] = set()
    stack = [(models_dir, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append((Path(entry.path), f"{prefix}{entry.name}/"))
                elif entry.is_file(follow_symlinks=False) and is_candidate(entry.name):
                    stat = entry.stat(follow_symlinks=False)
                    if stat.st_size >= MIN_MODEL_SIZE:
                        yield f"{prefix}{entry.name}", stat
            except OSError:
                continue


def index_file(index: ModelIndex, relative_path: str, stat: os.stat_result | None = None) -> str:
    """Hash one file and record it; returns its short hash."""
    path = index.models_dir / relative_path
    stat = stat or os.stat(path)
    model_hash = short_hash_file(path, index.short_hash)
    after = os.stat(path)
    if (after.st_size, after.st_mtime) != (stat.st_size, stat.st_mtime):
        raise OSError(f"{relative_path} changed while it was being hashed")
    index.record_file(model_hash, relative_path, size=after.st_size, mtime=after.st_mtime)
    return model_hash


def scan_models(index: ModelIndex, progress: Callable[[str], None] | None = None, prune: bool = False) -> ScanResult:
    """Raises PruneRefused (after indexing what is new) rather than forget most of the index."""
    require_models_dir(index.models_dir)  # gone since the index was opened: forget nothing
    known = index.locations()
    files = hashed = unchanged = 0
    errors: list[str] = []
    seen: set[str] = set()
    for relative_path, stat in walk_models(index.models_dir):
        files += 1
        seen.add(relative_path)
        location = known.get(relative_path)
        if location is not None and location.mtime == stat.st_mtime and location.size == stat.st_size:
            unchanged += 1
            continue
        if progress:
            progress(relative_path)
        try:
            index_file(index, relative_path, stat)
            hashed += 1
        except OSError as exc:
            errors.append(f"{relative_path}: {exc.strerror or exc}")
    # Only files that are really gone: ComfyDock may index files we skip.
    vanished = [path for path in known if path not in seen and not (index.models_dir / path).exists()]
    guard_pruning(index.models_dir, len(vanished), len(known), files, prune)
    if vanished:
        with index.transaction():
            for path in vanished:
                index.remove_location(path)
    return ScanResult(files, hashed, unchanged, len(vanished), tuple(errors))
