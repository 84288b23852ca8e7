"""`cfd demo`: watch the whole product work in a throwaway sandbox."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "demo",
        help="run the whole story (pull, hook download, status, repair) in a sandbox",
        description="Build a throwaway sandbox (upstream repo, two teammates' workspaces, a model server on "
        "127.0.0.1) and tell the story: Alice pushes a workflow needing new models, Bob pulls, his hook "
        "downloads the required one, `cfd status` and `cfd repair` do the rest. No network, nothing to configure.",
    )
    parser.add_argument("--dir", type=Path, metavar="PATH", help="build the sandbox here (an empty or new directory)")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox afterwards (to look around)")
    parser.add_argument(
        "--scale", type=float, default=1.0, metavar="X",
        help="model sizes relative to the default (a few hundred MB in all); e.g. 0.05 for a quick run",
    )
    parser.add_argument("--dialect", choices=("comfygit", "comfydock"), default="comfygit",
                        help="the environment manager's format: ComfyGit 0.7 (default) or ComfyDock 1.0")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cfd.core.dialect import DIALECTS

    from cfd.demo.story import run_demo

    if args.scale <= 0:
        print("cfd demo: --scale must be positive")
        return 2
    return run_demo(args.dir, args.keep, args.scale, dialect=DIALECTS[args.dialect])
