"""Small helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cfd.core.environment import Environment, open_environment
from cfd.core.units import human_size


# Environments this command opened: after it ran, main() warns about bad settings it never read.
opened: list[Environment] = []


def environment(args: argparse.Namespace, **flags: Any) -> Environment:
    env = open_environment(getattr(args, "env", None), {k: v for k, v in flags.items() if v is not None})
    opened.append(env)
    return env


def warn_unread_bad_settings() -> None:
    """A bad setting stops only what reads it; for every other command it is a warning."""
    seen: set[str] = set()
    for env in opened:
        for setting in env.settings.problems():
            if setting.key not in env.settings.read and setting.key not in seen and setting.error is not None:
                seen.add(setting.key)
                warn(f"{setting.error.message} (not used by this command; {setting.error.hint})")
    opened.clear()


def is_terminal(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def print_json(data: Any) -> None:
    # Written in pieces of about a MiB: json.dump writes each token (and every write passes the
    # sanitising stream), while json.dumps first holds every token at once (~2x the memory of a
    # 100,000-model status).
    pieces: list[str] = []
    size = 0
    for piece in json.JSONEncoder(indent=2, ensure_ascii=False).iterencode(data):
        pieces.append(piece)
        size += len(piece)
        if size >= 1 << 20:
            sys.stdout.write("".join(pieces))
            pieces.clear()
            size = 0
    pieces.append("\n")
    sys.stdout.write("".join(pieces))


def agent_download_figures(item: dict[str, Any], now: float) -> str:
    """'40% at 3.6 MiB/s' (or 'retrying in 12 s') for one download in the agent's status file."""
    done = f"{item['percent']:.0f}%" if item.get("percent") is not None else human_size(item.get("downloaded") or 0)
    retry_at = item.get("retry_at")
    if isinstance(retry_at, (int, float)) and retry_at > now:
        return f"{done}, retrying in {retry_at - now:.0f} s"
    return f"{done} at {human_size(int(item.get('speed') or 0))}/s"


def warn(message: str) -> None:
    print(f"cfd: warning: {message}", file=sys.stderr)


def add_env_argument(parser: argparse.ArgumentParser) -> None:
    """`--env` accepted after the subcommand too (`cfd status --env X`)."""
    parser.add_argument("--env", metavar="PATH", default=argparse.SUPPRESS, help="environment to work on")
