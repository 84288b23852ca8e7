"""`cfd hash FILE…`: the short hash and size a hand-written manifest entry needs."""

from __future__ import annotations

import argparse
import sys

from cfd.core.errors import CfdError
from cfd.core.store.filehash import hash_file

from .common import print_json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "hash",
        help="print a file's short hash and size (the keys of a manifest entry)",
        description="Print each file's short hash (the key in [tool.comfygit.models] or [tool.comfydock.models]: "
        "xxh3 for ComfyGit, BLAKE3 for ComfyDock; inside an environment, its dialect) and size in bytes; "
        "--full also reads the whole file for its BLAKE3 and SHA-256 (the optional blake3 / sha256 keys). "
        "Exit 0 when every file was hashed, 2 when one could not be read.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="model file(s) to hash")
    parser.add_argument("--full", action="store_true", help="also compute the full BLAKE3 and SHA-256 (reads every byte)")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--dialect", choices=("comfygit", "comfydock"),
                        help="whose short hash (default: the environment's around the current folder, else ComfyDock's)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    results, failed = [], False
    algorithm = _dialect(args.dialect).short_hash
    for name in args.files:
        try:
            results.append(hash_file(name, full=args.full, algorithm=algorithm))
        except CfdError as exc:
            print(f"cfd: error: {exc.message}", file=sys.stderr)
            failed = True
    if args.json:
        keys = ("hash", "size", "blake3", "sha256") if args.full else ("hash", "size")
        print_json([{"path": str(r.path), **{key: getattr(r, key) for key in keys}} for r in results])
    else:
        width = max((len(str(r.size)) for r in results), default=0)
        for r in results:
            print(f"{r.hash}  {r.size:>{width}}  {r.path}")
            if args.full:
                print(f"  blake3 = {r.blake3}\n  sha256 = {r.sha256}")
    return 2 if failed else 0


def _dialect(name: str | None):  # -> Dialect
    from pathlib import Path

    from cfd.core.dialect import COMFYDOCK, DIALECTS
    from cfd.core.environment import dialect_of, find_repo

    if name:
        return DIALECTS[name]
    try:
        return dialect_of(find_repo(Path.cwd()))
    except CfdError:
        return COMFYDOCK  # outside an environment (or an unreadable one): ComfyDock's, as before
