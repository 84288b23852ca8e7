"""Where cfd keeps its state: the one layout per clone and per models directory.

Per clone, in the clone's own git dir (a linked worktree has its own), never in the work tree:
    <git dir>/cfd/last-synced            pyproject.toml blob id last acted on (+ newline); the
                                         hook shim reads it too (hooks/shim.sh, tested equal)
    <git dir>/cfd/pending.json           the pending marker (+ pending.json.lock)
    <git dir>/cfd/manifest-cache.pickle  the parsed work-tree manifest (`cfd status`)
    <git dir>/cfd/skipped-manifest.json  a manifest the hooks skipped as too large
Per repository, in the common git dir (shared by its worktrees):
    <common dir>/cfd/hooks               cfd's hooks when another tool owns the hooks dir
Per models directory, beside the models (so every clone and agent using it agrees):
    <models>/.cfd/staging/               downloads in progress (<name>.part + <name>.json)
    <models>/.cfd/locks/<name>.lock      one download's lock
    <models>/.cfd/agent.lock             the life lock of the agent serving this dir
    <models>/.cfd/models.db              the index, unless cfd.index or a workspace says otherwise
"""

from __future__ import annotations

import os
from pathlib import Path

CLONE_DIR = "cfd"
LAST_SYNCED = "last-synced"
MARKER = "pending.json"
MANIFEST_CACHE = "manifest-cache.pickle"
SKIPPED_MANIFEST = "skipped-manifest.json"
MODELS_DIR_STATE = ".cfd"  # a manifest may not place a model below it (core/download/safety.py)


class CloneState:
    __slots__ = ("git_dir",)

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = git_dir

    @property
    def dir(self) -> Path:
        return self.git_dir / CLONE_DIR

    @property
    def last_synced(self) -> Path:
        return self.dir / LAST_SYNCED

    @property
    def marker(self) -> Path:
        return self.dir / MARKER

    @property
    def manifest_cache(self) -> Path:
        return self.dir / MANIFEST_CACHE

    @property
    def skipped_manifest(self) -> Path:
        return self.dir / SKIPPED_MANIFEST


class ModelsState:
    __slots__ = ("models_dir",)

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    @property
    def dir(self) -> Path:
        return self.models_dir / MODELS_DIR_STATE

    @property
    def staging(self) -> Path:
        return self.dir / "staging"

    @property
    def locks(self) -> Path:
        return self.dir / "locks"

    def download_lock(self, name: str) -> Path:
        """The lock of one download (`name`: its staging name)."""
        return self.locks / f"{name}.lock"

    @property
    def agent_lock(self) -> Path:
        return self.dir / "agent.lock"

    @property
    def default_index(self) -> Path:
        """The index of a models dir outside any workspace (ComfyDock's schema 9)."""
        return self.dir / "models.db"

    def default_index_for(self, dialect: str) -> Path:
        """One index per dialect outside a workspace: each holds its own dialect's short hashes."""
        return self.default_index if dialect == "comfydock" else self.dir / f"{dialect}-models.db"


def clone_state(git_dir: str | os.PathLike[str]) -> CloneState:
    return CloneState(Path(git_dir))


def models_state(models_dir: str | os.PathLike[str]) -> ModelsState:
    return ModelsState(Path(models_dir))


def chain_hooks_dir(common_dir: Path) -> Path:
    """Where cfd's hooks go when another tool owns the hooks dir (its hooks call ours)."""
    return common_dir / CLONE_DIR / "hooks"
