"""`cfd index scan`: update the model index from the models directory."""

from __future__ import annotations

import argparse
import sys

from cfd.core.index import ModelIndex
from cfd.core.scan import scan_models

from .common import add_env_argument, environment, is_terminal, print_json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("index", help="maintain the local model index", description="Maintain the local model index.")
    commands = parser.add_subparsers(dest="index_command", metavar="COMMAND", required=True)
    scan = commands.add_parser(
        "scan",
        help="index new and changed files in the models directory",
        description="Walk the models directory: hash new or changed files (short hash), skip unchanged ones "
        "(same size and mtime), forget files that vanished.",
    )
    scan.add_argument(
        "--prune",
        action="store_true",
        help="forget vanished files even when they are more than half of the index (refused without it: an unmounted drive looks like that)",
    )
    scan.add_argument("--json", action="store_true", help="print the counts as JSON")
    add_env_argument(scan)
    scan.set_defaults(handler=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    env = environment(args)
    verbose = is_terminal(sys.stderr) and not args.json
    with ModelIndex(env.index_path, env.models_dir) as index:
        result = scan_models(index, progress=(lambda path: print(f"hashing {path}", file=sys.stderr)) if verbose else None, prune=args.prune)
    if args.json:
        print_json({"files": result.files, "hashed": result.hashed, "unchanged": result.unchanged, "removed": result.removed, "errors": list(result.errors)})
    else:
        print(f"{result.files} file(s): {result.hashed} hashed, {result.unchanged} unchanged, {result.removed} removed from the index")
        for error in result.errors:
            print(f"cfd: warning: {error}", file=sys.stderr)
    return 0 if not result.errors else 1
