"""`cfd mirror push` and `cfd mirror status`: the team mirror (an S3 bucket), from this machine."""

from __future__ import annotations

import argparse
import sys
import threading

from cfd.core.errors import ConfigError

from .common import add_env_argument, environment, human_size, is_terminal, print_json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "mirror",
        help="the team mirror (S3): push models to it, see what it holds",
        description="The team mirror is an S3 bucket (cfd.mirror) that every machine reads before the origins "
        "and feeds after an origin download. Credentials come the standard AWS way (AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws).",
    )
    actions = parser.add_subparsers(dest="mirror_action", metavar="ACTION")
    push = actions.add_parser("push", help="upload every model of the manifest that is here and the mirror lacks")
    push.add_argument("--json", action="store_true", help="print the result as JSON")
    add_env_argument(push)
    push.set_defaults(handler=run_push)
    status = actions.add_parser("status", help="which of the manifest's models the mirror has")
    status.add_argument("--json", action="store_true", help="print as JSON")
    add_env_argument(status)
    status.set_defaults(handler=run_status)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cfd.core.mirror.config import mirror_config

    env = environment(args)
    config = mirror_config(env)
    if config is None:
        raise ConfigError("no team mirror configured",
                          "set one with `git config cfd.mirror s3://bucket/prefix` (and cfd.mirror.endpoint for a store that is not AWS)")
    return env, config


class UploadLines:
    """Push progress on stderr: a line per file, and on a terminal a live percentage."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.shown = -1

    def on_file_start(self, filename: str, index: int, total: int) -> None:
        self.shown = -1
        print(f"[{index}/{total}] uploading {filename}", file=sys.stderr, flush=True)

    def on_file_progress(self, filename: str, done: int, total: int | None) -> None:
        percent = int(done * 100 / total) if total else 0
        if self.live and percent != self.shown:
            self.shown = percent
            print(f"\r  {filename}: {percent}% of {human_size(total)}", end="", file=sys.stderr, flush=True)

    def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
        end = "\n" if self.live and self.shown >= 0 else ""
        print(f"{end}{'uploaded' if success else 'failed'} {filename}{'' if success else ': ' + str(error)}",
              file=sys.stderr, flush=True)


def run_push(args: argparse.Namespace) -> int:
    from cfd.core.mirror.push import push

    env, config = _config(args)
    result = push(env, config, callbacks=UploadLines(is_terminal(sys.stderr)), cancel=threading.Event())
    if args.json:
        print_json({"mirror": config.url, "uploaded": result.uploaded, "present": result.present,
                    "failed": [{"relative_path": p, "error": e} for p, e in result.failed],
                    "not_here": result.not_here, "bytes_uploaded": result.bytes_uploaded})
    else:
        print(f"{config.url}: uploaded {len(result.uploaded)} model(s) ({human_size(result.bytes_uploaded)}), "
              f"{len(result.present)} already there, {len(result.failed)} failed"
              + (f"; {result.not_here} model(s) of the manifest are not on this machine" if result.not_here else ""))
        for path, error in result.failed:
            print(f"  failed: {path}: {error}")
    return 0 if result.ok else 1


def run_status(args: argparse.Namespace) -> int:
    from cfd.core.mirror.status import mirror_status

    env, config = _config(args)
    status = mirror_status(env, config)
    if args.json:
        print_json(status.to_json())
        return 0
    present = status.present
    print(f"{status.mirror}: {len(present)} of {len(status.models)} model(s) of the manifest "
          f"({human_size(sum(m.size or 0 for m in present))})")
    for model in status.models:
        mark = "+" if model.in_mirror else "-"
        note = "  (only the mirror serves it: origins gone)" if model.only_in_mirror else ""
        if model.problem:
            note = f"  ({model.problem})"
        print(f"  {mark} {model.relative_path}  {human_size(model.size)}{note}")
    missing = len(status.models) - len(present)
    if missing:
        print(f"{missing} model(s) not in the mirror: `cfd mirror push` on a machine that has them uploads them")
    return 0
