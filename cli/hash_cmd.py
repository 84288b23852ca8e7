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
        description="Print each file's ComfyDock short hash (the key in [tool.comfydock.models]) and size in bytes; "
        "--full also reads the whole file for its BLAKE3 and SHA-256 (the optional blake3 / sha256 keys). "
        "Exit 0 when every file was hashed, 2 when one could not be read.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="model file(s) to hash")
    parser.add_argument("--full", action="store_true", help="also compute the full BLAKE3 and SHA-256 (reads every byte)")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    results, failed = [], False
    for name in args.files:
        try:
            results.append(hash_file(name, full=args.full))
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
