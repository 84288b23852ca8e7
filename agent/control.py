"""Library side of `cfd agent start|stop|status`: no watchdog import here.

`start` spawns `cfd agent run` in a new session (no terminal, stdio to a file)
and returns once the child reports ready or exits; `stop` sends SIGTERM and
waits for the life lock to be released.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfd.core.environment import Environment, open_environment
from cfd.core.errors import CfdError, ConfigError, EnvironmentNotFound
from cfd.core.git import no_git_env

if TYPE_CHECKING:  # the daemon (logging.handlers, the index, the marker) loads only to start it: `cfd status` asks here too
    from .daemon import AgentConfig
from .lock import is_locked
from .paths import AgentPaths, agent_paths
from .statusfile import read_status


class AgentError(CfdError):
    """The agent could not be started or stopped."""


def resolve_environments(current: str | None, extra: Sequence[str]) -> list[Environment]:
    """`--env` paths plus the current environment (skipped when there is none and --env names some)."""
    envs: list[Environment] = []
    try:
        envs.append(open_environment(current))
    except EnvironmentNotFound:
        if not extra:
            raise
    for path in extra:
        env = open_environment(path)
        if all(env.repo != known.repo for known in envs):
            envs.append(env)
    return envs


def make_config(envs: Sequence[Environment], **options: Any) -> AgentConfig:
    models_dir = envs[0].models_dir
    if not models_dir.is_dir():
        raise ConfigError(f"the models directory {models_dir} does not exist", "create it, or fix cfd.modelsDir / CFD_MODELS_DIR")
    for env in envs[1:]:
        if env.models_dir.resolve() != models_dir.resolve():
            raise ConfigError(
                f"{env.repo} uses the models directory {env.models_dir}, not {models_dir}",
                "one agent serves one models directory: start another agent for that environment",
            )
        if env.index_path.resolve() != envs[0].index_path.resolve():
            raise ConfigError(
                f"{env.repo} uses the index {env.index_path}, not {envs[0].index_path}",
                "environments sharing a models directory must share its index (cfd.index / CFD_INDEX)",
            )
    from .daemon import AgentConfig

    return AgentConfig(
        envs=tuple(envs),
        models_dir=models_dir,
        index_path=envs[0].index_path,
        max_rate=int(envs[0].settings["cfd.agent.maxRate"] or 0),
        **{k: v for k, v in options.items() if v is not None},
    )


@dataclass(frozen=True)
class AgentInfo:
    paths: AgentPaths
    running: bool
    status: dict[str, Any] | None

    @property
    def pid(self) -> int | None:
        pid = (self.status or {}).get("pid")
        if isinstance(pid, int):
            return pid
        try:
            return int(self.paths.pid.read_text().strip())
        except (OSError, ValueError):
            return None


def agent_info(paths: AgentPaths) -> AgentInfo:
    return AgentInfo(paths, is_locked(paths.lock), read_status(paths.status))


def run_command(config: AgentConfig, detached: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """argv of `cfd agent run` for this configuration (absolute env paths)."""
    argv = [sys.executable, "-m", "cfd.cli.main", "agent", "run"]
    for env in config.envs:
        argv += ["--env", str(env.repo)]
    argv += ["--settle", repr(config.settle), "--open-timeout", repr(config.open_timeout)]
    argv += ["--git-debounce", repr(config.git_debounce), "--retry-base", repr(config.retry_base)]
    if detached:
        argv.append("--detached")
    return argv + list(extra)


@dataclass(frozen=True)
class StartResult:
    started: bool  # False: one was already running
    info: AgentInfo


def start_agent(config: AgentConfig, timeout: float = 30.0, wait: bool = True) -> StartResult:
    """Spawn `cfd agent run` detached; with `wait`, return once it reports ready (AgentError if
    it does not), else at once (a hook must not wait: the agent's own lock settles races)."""
    from .daemon import ALREADY_RUNNING  # the daemon module (and watchdog) only when starting one

    paths = config.state_paths()
    if is_locked(paths.lock):
        return StartResult(False, agent_info(paths))
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.output, "ab") as out:
        child = subprocess.Popen(
            run_command(config),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd="/",  # do not keep the caller's directory busy
            env=no_git_env(),
            start_new_session=True,  # no terminal: Ctrl-C in the caller's shell does not reach it
            close_fds=True,
        )
    if not wait:
        return StartResult(True, agent_info(paths))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = child.poll()
        if code == ALREADY_RUNNING:
            return StartResult(False, agent_info(paths))  # lost a race with another start
        if code is not None:
            raise AgentError(f"the agent exited during start-up (exit {code})", f"see {paths.log} and {paths.output}")
        status = read_status(paths.status)
        if status and status.get("pid") == child.pid and status.get("state") == "ready":
            return StartResult(True, agent_info(paths))
        time.sleep(0.05)
    raise AgentError(f"the agent did not report ready within {timeout:.0f} s (pid {child.pid})", f"see {paths.log}")


def start_in_background(env: Environment) -> bool:
    """How a hook starts the agent for `env` (pullsync's `start_agent` callback): without
    waiting for it; False when it cannot start (no models directory, cannot spawn)."""
    try:
        start_agent(make_config([env]), wait=False)
    except (CfdError, OSError):
        return False
    return True


def stop_agent(paths: AgentPaths, timeout: float = 20.0) -> bool:
    """SIGTERM the agent and wait until it has let go of its lock; False if none ran."""
    info = agent_info(paths)
    if not info.running:
        return False
    pid = info.pid
    if pid is None:
        raise AgentError("an agent holds the lock but its pid is unknown", f"look for it with `ps`; state in {paths.root}")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_locked(paths.lock):
            return True
        time.sleep(0.05)
    raise AgentError(f"the agent (pid {pid}) did not stop within {timeout:.0f} s", f"kill it with `kill -9 {pid}`")


def paths_for(envs: Sequence[Environment]) -> AgentPaths:
    return agent_paths(envs[0].models_dir)


def agent_status_for(models_dir: Path) -> dict[str, Any] | None:
    """For `cfd status`: the agent serving `models_dir` (its status file plus
    `running`), or None if none ever ran. Cheap: a file read and a lock probe."""
    info = agent_info(agent_paths(models_dir))
    if info.status is None and not info.running:
        return None
    return {**(info.status or {}), "running": info.running, "log": str(info.paths.log)}
