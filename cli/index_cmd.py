"""`cfd index scan|list|show`: update the model index, and read it (hashes for a hand-written manifest)."""

from __future__ import annotations

import argparse
import re
import sys

from cfd.core.errors import CfdError
from cfd.core.store.index import IndexedModel, ModelIndex
from cfd.core.store.scan import scan_models
from cfd.core.download.urls import redact_url
from cfd.core.units import human_size

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
    listing = commands.add_parser(
        "list",
        help="list the indexed models in the models directory",
        description="List every model the index knows under the models directory: short hash, size, path "
        "(marked when the file is no longer there at its size).",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    add_env_argument(listing)
    listing.set_defaults(handler=run_list)
    show = commands.add_parser(
        "show",
        help="show one indexed model: digests, locations, sources",
        description="Show one model of the index by its short hash (or the first characters of it, "
        "at least 4): size, full digests if known, where it lies, where it came from.",
    )
    show.add_argument("hash", metavar="HASH", help="short hash, or a unique prefix of at least 4 hex characters")
    show.add_argument("--json", action="store_true", help="print as JSON")
    add_env_argument(show)
    show.set_defaults(handler=run_show)


def run_scan(args: argparse.Namespace) -> int:
    env = environment(args)
    verbose = is_terminal(sys.stderr) and not args.json
    with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
        result = scan_models(index, progress=(lambda path: print(f"hashing {path}", file=sys.stderr)) if verbose else None, prune=args.prune)
    if args.json:
        print_json({"files": result.files, "hashed": result.hashed, "unchanged": result.unchanged, "removed": result.removed, "errors": list(result.errors)})
    else:
        print(f"{result.files} file(s): {result.hashed} hashed, {result.unchanged} unchanged, {result.removed} removed from the index")
        for error in result.errors:
            print(f"cfd: warning: {error}", file=sys.stderr)
    return 0 if not result.errors else 1


def model_json(model: IndexedModel) -> dict[str, object]:
    return {
        "hash": model.hash,
        "size": model.size,
        "blake3": model.blake3,
        "sha256": model.sha256,
        "locations": [{"relative_path": location.relative_path, "on_disk": here} for location, here in model.placed],
        "sources": [redact_url(url) for url in model.sources],  # an index may hold a token in a URL
    }


def run_list(args: argparse.Namespace) -> int:
    env = environment(args)
    with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
        models = index.models_here()
    if args.json:
        print_json([model_json(model) for model in models])
        return 0
    for model in models:
        for location, here in model.placed:
            gone = "" if here else "  (not on disk at this size: run `cfd index scan`)"
            print(f"{model.hash}  {human_size(model.size):>10}  {location.relative_path}{gone}")
    print(f"{len(models)} model(s) indexed in {env.models_dir}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    wanted = args.hash.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4,64}", wanted):
        raise CfdError(f"{args.hash!r} is not a hash", "give a short hash as `cfd hash FILE` or `cfd index list` prints it (at least 4 hex characters)")
    env = environment(args)
    with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
        matches = index.matching_hashes(wanted)
        if len(matches) > 1 and wanted not in matches:
            raise CfdError(f"{len(matches)} models start with {wanted}: {', '.join(matches[:5])}", "give more characters")
        model = index.model(wanted if wanted in matches else matches[0]) if matches else None
    if model is None:
        raise CfdError(f"no model {wanted} in the index {env.index_path}", "`cfd index list` lists them; `cfd index scan` adds new files")
    if args.json:
        print_json(model_json(model))
        return 0
    print(f"hash:    {model.hash}")
    print(f"size:    {model.size} bytes ({human_size(model.size)})")
    print(f"blake3:  {model.blake3 or '(not computed)'}")
    print(f"sha256:  {model.sha256 or '(not computed)'}")
    for location, here in model.placed or []:
        print(f"file:    {env.models_dir / location.relative_path}" + ("" if here else "  (not on disk at this size)"))
    if not model.placed:
        print(f"file:    (none under {env.models_dir})")
    for url in model.sources:
        print(f"source:  {redact_url(url)}")
    return 0
