"""Shared pieces of the agent tests: a real agent process and polling helpers.

(A module of helpers, named test_agent_* so that it stays with the agent's files; it
holds no tests itself.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cfd.agent.paths import AgentPaths, agent_paths
from cfd.agent.statusfile import read_status
from cfd.core.store.index import ModelIndex
from helpers import ManifestBuilder, Scenario
from helpers.chaos import wait_until

T = TypeVar("T")
SETTLE = "0.3"


def wait_for(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    return wait_until(check, timeout, what, poll=0.05)


def cfd(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfd.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


class AgentProcess:
    """`cfd agent run` as a real foreground process (what systemd would run)."""

    def __init__(self, repo: Path, models_dir: Path, log: Path, *extra: str) -> None:
        self.repo, self.models_dir, self.log = repo, models_dir, log
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.paths: AgentPaths = agent_paths(models_dir)

    def start(self, wait_scan: bool = True) -> AgentProcess:
        argv = [sys.executable, "-m", "cfd.cli.main", "agent", "run", "--env", str(self.repo)]
        argv += ["--settle", SETTLE, "--git-debounce", "0.3", *self.extra]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.repo)
        pid = self.proc.pid
        wait_for(lambda: (self.status().get("pid") == pid and self.status().get("state") == "ready") or self.proc.poll() is not None, what="agent ready")
        assert self.proc.poll() is None, self.log.read_text()
        if wait_scan:
            wait_for(lambda: self.status().get("scan") == "done", what="initial scan")
        return self

    def status(self) -> dict[str, Any]:
        return read_status(self.paths.status) or {}

    def stats(self) -> dict[str, int]:
        return self.status().get("stats") or {}

    def stop(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = self.proc.wait(timeout)
        self.stop_seconds = time.monotonic() - started
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def agent_env(monkeypatch: pytest.MonkeyPatch, cfd_env: dict[str, str]) -> dict[str, str]:
    """The cfd settings of `cfd_env` in this process too (in-process reads see what the agent sees)."""
    for key in ("CFD_MODELS_DIR", "CFD_INDEX", "CFD_ALLOW_PRIVATE_NETWORKS"):
        monkeypatch.setenv(key, cfd_env[key])
    return dict(os.environ)


def make_env_repo(scenario: Scenario, manifest: str | None = None, name: str = "alice") -> Path:
    clone = scenario.clone(name)
    clone.commit("manifest", {"pyproject.toml": manifest or ManifestBuilder().render()})
    return clone.path


def index_of(models_dir: Path) -> ModelIndex:
    from cfd.core.dialect import DIALECTS
    from helpers.manifest import current_dialect  # the dialect the test's manifests are written in

    return ModelIndex(os.environ["CFD_INDEX"], models_dir, DIALECTS[current_dialect()])


def locations(models_dir: Path) -> dict[str, str]:
    with index_of(models_dir) as index:
        return {path: loc.model_hash for path, loc in index.locations().items()}


@pytest.fixture
def agents(tmp_path: Path) -> Any:
    """Starts agents and always stops them, even when the test fails."""
    started: list[AgentProcess] = []

    def make(repo: Path, models_dir: Path, *extra: str, wait_scan: bool = True) -> AgentProcess:
        agent = AgentProcess(repo, models_dir, tmp_path / f"agent-{len(started)}.out", *extra)
        started.append(agent)
        return agent.start(wait_scan)

    yield make
    for agent in started:
        try:
            agent.stop(10)
        except subprocess.TimeoutExpired:
            agent.kill()
