"""The `cfd` command line: argument parsing, and one place for errors.

Each subcommand lives in its own module with `register(subparsers)`; its
handler returns an exit code. Any CfdError becomes one line on stderr (plus
its hint) and exit 2; Ctrl-C exits 130 quietly; nothing prints a traceback
unless CFD_DEBUG=1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from cfd.core import __version__
from cfd.core.errors import CfdError
from cfd.core.text import SanitizingStream

# Modules under cfd.cli that add subcommands, in --help order.
COMMAND_MODULES = ("status_cmd", "repair_cmd", "hooks_cmd", "agent_cmd", "index_cmd", "hash_cmd", "config_cmd", "mirror_cmd", "demo_cmd")
# Which module defines each command: a command run by name imports only its own module
# (every cfd start pays for the imports; --help and mistakes still see them all).
MODULE_OF = {
    "status": "status_cmd", "repair": "repair_cmd", "hooks": "hooks_cmd", "hook-run": "hooks_cmd",
    "agent": "agent_cmd", "index": "index_cmd", "hash": "hash_cmd", "config": "config_cmd", "mirror": "mirror_cmd", "demo": "demo_cmd",
}


class _Version(argparse.Action):
    """`cfd --version`, plus a note on stderr when the `cfd` on PATH is someone else's."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        _print_version()
        parser.exit()


def _print_version() -> None:
    from .commandname import shadow_note

    print(f"cfd {__version__}")
    note = shadow_note()
    if note:
        print(note, file=sys.stderr)


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv (skipping the global --env PATH), if any."""
    words = iter(argv)
    for word in words:
        if word == "--env":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cfd",
        description="Keep AI model files in sync with git-shared ComfyUI environments.",
        epilog="Settings: see `cfd config`. Exit codes: 0 ok/in sync, 1 models missing or failed, 2 error.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version (and whether `cfd` on PATH is another program)")
    parser.add_argument(
        "--env",
        metavar="PATH",
        help="environment to work on (a .cec repo or the folder holding .cec/); default: the current directory",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = (MODULE_OF[only],) if only in MODULE_OF else COMMAND_MODULES
    for name in modules:
        importlib.import_module(f"cfd.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Everything the CLI prints may quote a teammate's manifest: both streams pass through
    # the one sanitiser (newlines pass; escape sequences and bidi controls become \\uXXXX).
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SanitizingStream(sys.stdout), SanitizingStream(sys.stderr)  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # no command: without this, every command module is imported (for --help)
        _print_version()
        return 0
    from .common import opened, warn_unread_bad_settings

    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    opened.clear()  # environments of an earlier main() in this process (tests call it directly)
    try:
        code = int(args.handler(args) or 0)
        warn_unread_bad_settings()
        return code
    except CfdError as exc:
        print(f"cfd: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cfd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if os.environ.get("CFD_DEBUG"):
            raise
        print(f"cfd: internal error: {type(exc).__name__}: {exc} (re-run with CFD_DEBUG=1 for details)", file=sys.stderr)
        return 2


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
