"""`cfd mirror push`: upload every model of the working manifest that lies here and the mirror lacks.

One listing tells what the mirror has (skipped, never sent twice); each missing file
goes up blob first (boto3's parallel multipart upload), then its alias. A model the
index knows no full BLAKE3 of (indexed by `cfd index scan`) is hashed once, and the
digest is recorded in the index. Progress goes through the download callbacks' shape,
so `cfd repair`'s displays serve here too. One file failing does not stop the others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..download.types import DownloadCallbacks, as_callbacks
from ..environment import Environment
from ..store.index import ModelIndex
from ..sync.status import load_working_manifest
from .client import MirrorClient, MirrorError
from .config import MirrorConfig
from .inventory import read_inventory
from .layout import blob_key
from .publish import UPLOADED, publish_file


@dataclass
class PushResult:
    uploaded: list[str] = field(default_factory=list)  # relative paths
    present: list[str] = field(default_factory=list)  # the mirror had them
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relative path, one line)
    not_here: int = 0  # manifest models absent from this machine
    bytes_uploaded: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class _Candidate:
    hash: str
    relative_path: str
    filename: str
    size: int
    blake3: str | None
    sha256: str | None
    sources: tuple[str, ...]


def _candidates(env: Environment) -> tuple[list[_Candidate], int]:
    manifest = load_working_manifest(env)
    with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
        present = index.present(manifest.models)
        found = []
        for model_hash, relpath in sorted(present.items(), key=lambda item: item[1]):
            row = index.model_row(model_hash)
            if row is None:
                continue
            model = manifest.models[model_hash]
            found.append(_Candidate(model_hash, relpath, model.filename, row[0], row[1] or model.blake3,
                                    row[2] or model.sha256, tuple(model.sources)))
    return found, len(manifest.models) - len(present)


def push(env: Environment, config: MirrorConfig, callbacks: Any = None,
         cancel: threading.Event | None = None) -> PushResult:
    """Upload what the mirror lacks; raises MirrorError only when the mirror cannot be listed at all."""
    progress: DownloadCallbacks = as_callbacks(callbacks)
    cancel = cancel or threading.Event()
    candidates, not_here = _candidates(env)
    result = PushResult(not_here=not_here)
    client = MirrorClient(config)
    inventory = read_inventory(client)
    todo = []
    for item in candidates:
        blob_there = item.blake3 is not None and inventory.blobs.get(blob_key(config.prefix, item.blake3)) == item.size
        if inventory.has_alias(item.hash, item.size) and (blob_there or item.blake3 is None):
            result.present.append(item.relative_path)
        else:
            todo.append(item)
    progress.on_batch_start(len(todo))
    for number, item in enumerate(todo, 1):
        if cancel.is_set():
            break
        progress.on_file_start(item.filename, number, len(todo))
        sent = [0]

        def moved(n: int, item: _Candidate = item, sent: list[int] = sent) -> None:
            sent[0] += n
            progress.on_file_progress(item.filename, sent[0], item.size)

        try:
            done = publish_file(client, env.models_dir / item.relative_path, short_hash=item.hash, size=item.size,
                                blake3=item.blake3, sha256=item.sha256, filenames=(item.filename,), sources=item.sources,
                                progress=moved)
        except (MirrorError, OSError) as exc:
            line = exc.line() if isinstance(exc, MirrorError) else f"cannot read it: {exc.strerror or exc}"
            result.failed.append((item.relative_path, line))
            progress.on_file_complete(item.filename, False, line)
            if isinstance(exc, MirrorError) and exc.mirror_wide:
                break  # every other file would fail the same way
            continue
        if item.blake3 is None:
            with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
                index.add_model(item.hash, item.size, done.blake3)
        (result.uploaded if done.action == UPLOADED else result.present).append(item.relative_path)
        result.bytes_uploaded += done.uploaded
        progress.on_file_complete(item.filename, True, None)
    progress.on_batch_complete(len(result.uploaded), len(todo))
    return result
