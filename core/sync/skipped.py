"""A manifest the hooks left alone because it was larger than cfd.maxManifestSize.

Reading a manifest costs memory in proportion to its size; a pulled pyproject.toml of
hundreds of MiB would hold every teammate's `git pull` for a minute and take gigabytes.
Above the ceiling the hook only records which version it skipped (here, in the clone's
git dir) and says so in one line; `cfd status` shows the record and `cfd repair`, run
when the user chooses, does the work and clears it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

from ..files import write_atomic
from ..state import clone_state
from ..units import human_size


class SkippedManifest(NamedTuple):
    blob: str
    size: int
    limit: int
    trigger: str
    when: float

    def message(self) -> str:
        return (
            f"pyproject.toml is {human_size(self.size)}, over cfd.maxManifestSize ({human_size(self.limit)}): "
            f"the {self.trigger or 'hook'} did not read it; run `cfd repair` to sync models"
        )


def _path(git_dir: Path) -> Path:
    return clone_state(git_dir).skipped_manifest


def record_skipped(git_dir: Path, blob: str, size: int, limit: int, trigger: str) -> SkippedManifest:
    skipped = SkippedManifest(blob, size, limit, trigger, time.time())
    path = _path(git_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(skipped._asdict()))
    return skipped


def read_skipped(git_dir: Path) -> SkippedManifest | None:
    try:
        data = json.loads(_path(git_dir).read_text(encoding="utf-8"))
        return SkippedManifest(str(data["blob"]), int(data["size"]), int(data["limit"]), str(data["trigger"]), float(data["when"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_skipped(git_dir: Path) -> None:
    try:
        _path(git_dir).unlink()
    except FileNotFoundError:
        pass
