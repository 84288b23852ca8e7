"""Where one agent keeps its state: a per-user dir keyed by the models directory.

One agent serves one models directory (two watchers on the same tree would hash
every file twice and race on the index), so the key is a digest of the resolved
models dir. No heavy imports here: `cfd status` and `cfd agent status` use it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cfd.core.state import models_state


def state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cfd"


def agent_key(models_dir: str | os.PathLike[str]) -> str:
    resolved = str(Path(models_dir).expanduser().resolve())
    return hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:12]


@dataclass(frozen=True)
class AgentPaths:
    root: Path  # the agent's own state dir

    @property
    def lock(self) -> Path:
        return self.root / "agent.lock"

    @property
    def pid(self) -> Path:
        return self.root / "agent.pid"

    @property
    def status(self) -> Path:
        return self.root / "agent-status.json"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def output(self) -> Path:
        """stdout/stderr of a detached agent: only interpreter-level crashes land here."""
        return self.root / "agent.out"

    @property
    def key(self) -> str:
        return self.root.name.removeprefix("agent-")


def models_dir_lock(models_dir: str | os.PathLike[str]) -> Path:
    """The life lock that lives with the models dir: two agents whose state dirs differ
    (another XDG_STATE_HOME, another user) still cannot serve one models dir."""
    return models_state(models_dir).agent_lock


def agent_paths(models_dir: str | os.PathLike[str]) -> AgentPaths:
    return AgentPaths(state_root() / f"agent-{agent_key(models_dir)}")


def all_agent_paths() -> list[AgentPaths]:
    """Every agent state dir of this user (for `cfd agent status` outside an environment)."""
    root = state_root()
    try:
        return [AgentPaths(p) for p in sorted(root.glob("agent-*")) if p.is_dir()]
    except OSError:
        return []
