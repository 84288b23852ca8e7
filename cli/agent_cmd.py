"""`cfd agent run|start|stop|status|install-service|uninstall-service`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cfd.agent.control import (
    AgentInfo,
    agent_info,
    make_config,
    paths_for,
    resolve_environments,
    start_agent,
    stop_agent,
)
from cfd.agent.daemon import ALREADY_RUNNING
from cfd.agent.lock import lock_owner
from cfd.agent.paths import all_agent_paths, models_dir_lock
from cfd.core.errors import EnvironmentNotFound

from .common import agent_download_figures, print_json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "agent",
        help="background watcher: keeps the index current, syncs after HEAD moves, downloads in the background",
        description="The agent watches the models directory (index kept current), the environments' git "
        "directories (HEAD moves no hook saw) and the pending list (background downloads, "
        "rate-limited by cfd.agent.maxRate / CFD_AGENT_MAX_RATE). One agent per models directory.",
    )
    actions = parser.add_subparsers(dest="agent_action", metavar="ACTION")

    def action(name: str, help: str, handler: Any, serves: bool = True) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help, description=help)
        sub.add_argument(
            "--env",
            dest="agent_envs",
            metavar="PATH",
            action="append",
            default=[],
            help="an environment to serve (repeatable); the current one is always included"
            if serves
            else "act on the agent of this environment's models directory (default: the current environment's)",
        )
        sub.set_defaults(handler=handler)
        return sub

    for name, help, handler in (
        ("run", "run the agent in the foreground (for systemd, launchd or a terminal)", run),
        ("start", "start the agent in the background and return once it is ready", start),
    ):
        sub = action(name, help, handler)
        sub.add_argument("--settle", type=float, metavar="S", help="seconds a new file must stay unchanged before it is hashed (default 1)")
        sub.add_argument("--open-timeout", type=float, metavar="S", help="hash a file still open for writing after S seconds without change (default 30)")
        sub.add_argument("--git-debounce", type=float, metavar="S", help="quiet time after a HEAD move before syncing (default 1)")
        sub.add_argument("--retry-base", type=float, metavar="S", help="first retry delay of a failed background download (default 60, doubling)")
        if name == "run":
            sub.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    stop_parser = action("stop", "stop the agent (SIGTERM; partial downloads stay resumable)", stop, serves=False)
    stop_parser.add_argument("--timeout", type=float, default=20.0, metavar="S", help="seconds to wait for it to end (default 20)")
    status_parser = action("status", "show whether the agent runs, what it watches and downloads", status, serves=False)
    status_parser.add_argument("--json", action="store_true", help="print JSON")
    for name, help, handler, serves in (
        ("install-service", "write a systemd user unit (Linux) or launchd agent (macOS) running `cfd agent run`", install, True),
        ("uninstall-service", "remove the service file written by install-service", uninstall, False),
    ):
        sub = action(name, help, handler, serves)
        sub.add_argument("--kind", choices=("systemd", "launchd"), help="service manager (default: this platform's)")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _envs(args: argparse.Namespace) -> list[Any]:
    return resolve_environments(getattr(args, "env", None), args.agent_envs)


def _config(args: argparse.Namespace) -> Any:
    return make_config(
        _envs(args),
        settle=args.settle,
        open_timeout=args.open_timeout,
        git_debounce=args.git_debounce,
        retry_base=args.retry_base,
        console=not getattr(args, "detached", False),
    )


def run(args: argparse.Namespace) -> int:
    from cfd.agent.daemon import Agent

    config = _config(args)
    code = Agent(config).run()
    if code == ALREADY_RUNNING:
        info = agent_info(config.state_paths())
        if info.running:
            print(f"cfd agent: already running (pid {info.pid}) for {config.models_dir}")
        else:
            _say_other_agent(config.models_dir)
    return code


def _say_other_agent(models_dir: Any) -> None:
    """An agent with another state dir (another XDG_STATE_HOME or user) holds the models dir's lock."""
    owner = lock_owner(models_dir_lock(models_dir)) or "another process"
    print(f"cfd agent: another agent ({owner}) already serves {models_dir}; stop it first", file=sys.stderr)


def start(args: argparse.Namespace) -> int:
    config = _config(args)
    result = start_agent(config)
    info = result.info
    status = info.status or {}
    if result.started:
        print(f"cfd agent started (pid {info.pid}), watching {status.get('models_dir')}")
    elif not info.running:
        _say_other_agent(config.models_dir)
        return ALREADY_RUNNING
    else:
        print(f"cfd agent: already running (pid {info.pid}) for {status.get('models_dir')}")
        wanted = {str(env.repo) for env in _envs(args)}
        missing = sorted(wanted - set(status.get("envs") or []))
        if missing:
            print(f"  it does not serve {', '.join(missing)}: `cfd agent stop`, then start it with every --env")
    print(f"  log: {info.paths.log}")
    return 0


def stop(args: argparse.Namespace) -> int:
    paths = paths_for(_envs(args))
    if stop_agent(paths, timeout=args.timeout):
        print("cfd agent stopped")
    else:
        print("cfd agent: not running")
    return 0


def status(args: argparse.Namespace) -> int:
    try:
        infos = [agent_info(paths_for(_envs(args)))]
    except EnvironmentNotFound:
        infos = [agent_info(paths) for paths in all_agent_paths()]  # outside an environment: every agent
    if args.json:
        print_json([{"running": i.running, "state_dir": str(i.paths.root), **(i.status or {})} for i in infos])
    elif not infos:
        print("cfd agent: none has run yet (start one with `cfd agent start`)")
    for info in infos if not args.json else ():
        print_info(info)
    return 0 if any(i.running for i in infos) else 1


def _ago(when: float | None) -> str:
    if not when:
        return "?"
    seconds = int(time.time() - when)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(when))


def print_info(info: AgentInfo) -> None:
    status = info.status or {}
    if info.running:
        print(f"cfd agent: running (pid {info.pid}) since {_ago(status.get('started'))}")
    else:
        print(f"cfd agent: not running{' (last stopped ' + _ago(status.get('stopped')) + ')' if status.get('stopped') else ''}")
    if status.get("models_dir"):
        print(f"  models:    {status['models_dir']}  (initial scan: {status.get('scan', '?')})")
    for repo in status.get("envs") or []:
        print(f"  env:       {repo}")
    stats = status.get("stats") or {}
    if stats:
        print("  counts:    " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    if info.running:
        for item in status.get("downloads") or []:
            print(f"  ⬇ {item['file']}  {agent_download_figures(item, time.time())}")
        if status.get("queue"):
            print(f"  queued:    {status['queue']} pending entr(ies)")
    for error in (status.get("errors") or [])[-3:]:
        print(f"  error ({_ago(error.get('when'))}): {error.get('message')}")
    print(f"  log:       {info.paths.log}")


def install(args: argparse.Namespace) -> int:
    from cfd.agent.service import install_service

    envs = _envs(args)
    paths = paths_for(envs)
    service = install_service(paths, envs[0].models_dir, [env.repo for env in envs], kind=args.kind)
    print(f"Wrote {service.path}")
    print(f"Enable and start it with:\n  {service.enable_hint}")
    return 0


def uninstall(args: argparse.Namespace) -> int:
    from cfd.agent.service import service_for, uninstall_service

    paths = paths_for(_envs(args))
    service = uninstall_service(paths, kind=args.kind)
    if service is None:
        print(f"No service file at {service_for(paths, args.kind).path}")
        return 0
    print(f"Removed {service.path}")
    print(f"If it was enabled, also run:\n  {service.disable_hint}")
    return 0
