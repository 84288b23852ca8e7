"""`cfd repair`: preview, confirm, download what is missing, summarise.

The work is core.repair's (plan_repair / run_repair); this module parses
arguments, asks, renders progress and prints. Ctrl-C (or SIGTERM) sets the
cancel event so the engine stops cleanly and leaves resumable partials; a
second Ctrl-C forces the interruption.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cfd.core.sync.fetch import intent_groups
from cfd.core.sync.marker import PendingEntry, intent_key
from cfd.core.sync.repair import RepairPlan, RepairResult, plan_repair, run_repair
from cfd.core.sync.strategy import STRATEGIES
from cfd.core.download.urls import host_of, redact_url
from cfd.core.units import human_size

from .common import add_env_argument, environment, is_terminal, print_json, warn
from .progress import make_progress

SHOW = 5  # entries listed per section before "... and N more" (as ComfyDock's repair does; --json has all)


def _jobs(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError("expected a whole number of at least 1")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "repair",
        help="download the models this machine is missing (preview, confirm, verify)",
        description="Compare pyproject.toml with the model index, preview what is missing, and download it "
        "(resumable, verified by hash). Downloaded intents are written into pyproject.toml for you to commit. "
        "Exit 0 when every requested model is present, 1 when some are still missing, 2 on errors, 130 when interrupted.",
    )
    parser.add_argument(
        "--models",
        choices=STRATEGIES,
        default="all",
        help="which missing models to download: all (default) | required (criticality required) | skip (record only)",
    )
    parser.add_argument("--dry-run", action="store_true", help="show what would be downloaded; change nothing")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask before downloading")
    parser.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    parser.add_argument("--jobs", type=_jobs, metavar="N", help="files downloaded at once (cfd.jobs / CFD_JOBS, default 4)")
    add_env_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    env = environment(args, **{"cfd.jobs": args.jobs})
    plan = plan_repair(env, args.models, warn)
    if not args.json:
        print_preview(plan, env.repo, env.models_dir)
    if args.dry_run:
        if args.json:
            print_json(plan_json(plan))
        else:
            print("\nDry run: nothing was downloaded or changed.")
        return 0 if plan.complete else 1
    if plan.download_count and not args.yes:
        if not (is_terminal(sys.stdin) and is_terminal(sys.stderr)):
            print(
                f"cfd: not asking without a terminal; to download {plan.download_count} model(s) run: "
                f"{_command(args, '--yes')}   (or preview with: {_command(args, '--dry-run')})",
                file=sys.stderr,
            )
            return 2
        if not _confirm(f"Download {plan.download_count} model(s)? [Y/n] "):
            print("Nothing downloaded.", file=sys.stderr)
            return 1
    cancel = threading.Event()
    sizes = {info.model.filename: info.model.size for info in plan.models}
    sizes.update({group[0].filename: None for group in intent_groups(plan.intents).values()})
    with _cancel_on_signals(cancel), make_progress(is_terminal(sys.stderr), sizes) as progress:
        result = run_repair(env, plan, callbacks=progress, cancel=cancel, warn=warn)
    from cfd.core.sync.workflowfiles import summary_line, sync_workflow_files

    workflow_files = sync_workflow_files(env)
    if args.json:
        print_json({**result_json(result, env.repo), "workflow_files": [f.to_json() for f in workflow_files]})
    else:
        print_summary(result, env.repo)
        line = summary_line(workflow_files)
        if line:
            print(line)
    if result.interrupted or cancel.is_set():
        return 130
    return 0 if result.complete else 1


def _command(args: argparse.Namespace, extra: str) -> str:
    words = ["cfd", "repair"]
    if getattr(args, "env", None):
        words += ["--env", args.env]
    if args.models != "all":
        words += ["--models", args.models]
    if args.jobs:
        words += ["--jobs", str(args.jobs)]
    if args.json:
        words.append("--json")
    return shlex.join(words) + " " + extra


def _confirm(prompt: str) -> bool:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:  # EOF: no one to ask
        return False
    return answer.strip().lower() in ("", "y", "yes")


@contextmanager
def _cancel_on_signals(cancel: threading.Event) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: ask the engine to stop cleanly. Second Ctrl-C: stop now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if cancel.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        cancel.set()
        print("\ncfd: interrupting; partial downloads are kept for `cfd repair` to resume", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- preview ---------------------------------------------------------------------


def _listing(lines: list[str]) -> None:
    for line in lines[:SHOW]:
        print(line)
    if len(lines) > SHOW:
        print(f"    ... and {len(lines) - SHOW} more")


def print_preview(plan: RepairPlan, repo: Any, models_dir: Any) -> None:
    print(f"Environment: {repo}")
    print(f"Models:      {models_dir}")
    if plan.report.in_sync and not plan.stale:
        print("\nIn sync: every model the workflows need is present.")
    if plan.models or plan.intents:
        sizes = []
        if plan.models:
            here = f", {human_size(plan.staged_bytes)} already here" if plan.staged_bytes else ""
            sizes.append(f"{human_size(plan.download_bytes - plan.staged_bytes)}{here}")
        if plan.unknown_sizes:
            sizes.append(f"{plan.unknown_sizes} of unknown size")
        print(f"\nTo download: {plan.download_count} model(s), {' + '.join(sizes)}")
        lines = []
        for info in plan.models:
            hint = plan.previous.get(info.hash)
            last = f" — last attempt: {hint.error}" if hint and hint.error else ""
            staged = plan.staged.get(info.hash)
            size = human_size(info.model.size) + (f", {human_size(staged)} already here" if staged else "")
            lines.append(
                f"    {info.criticality:<9} {info.model.relative_path} ({size}) "
                f"for {info.needed_by}{last}"
            )
        _listing(lines)
    if plan.intents:
        print("\nDownload intents (no hash yet; written into pyproject.toml once downloaded):")
        _listing(
            [
                f"    {group[0].criticality:<9} {target} from {host_of(group[0].sources[0]) or '?'} "
                f"for {', '.join(dict.fromkeys(r.workflow for r in group))}"
                for target, group in intent_groups(plan.intents).items()
            ]
        )
    earlier = plan.report.satisfied_intents
    if earlier:
        files = len({ref.filename for ref in earlier})
        print(f"\nDownloaded earlier, not yet in pyproject.toml: {files} download intent(s) (`cfd repair` writes them in)")
        _listing([f"    {ref.target_path} for {ref.workflow}" for ref in earlier])
    skipped = len(plan.filtered_models) + len(intent_groups(plan.filtered_intents))
    if skipped:
        print(f"\nSkipped by --models {plan.strategy}: {skipped} model(s) (left pending)")
        lines = [f"    {i.criticality:<9} {i.model.relative_path} ({human_size(i.model.size)})" for i in plan.filtered_models]
        lines += [f"    {g[0].criticality:<9} {t} (download intent)" for t, g in intent_groups(plan.filtered_intents).items()]
        _listing(lines)
    if plan.on_disk:
        print(f"\nAlready on disk, not indexed: {len(plan.on_disk)} model(s) (checked by hash and indexed, not downloaded)")
        _listing([f"    {i.criticality:<9} {i.model.relative_path} ({human_size(i.model.size)})" for i in plan.on_disk])
    on_disk = {info.hash for info in plan.on_disk}
    unavailable = [info for info in plan.unavailable if info.hash not in on_disk]
    if unavailable or plan.not_found:
        print(f"\nUnavailable (no source in pyproject.toml): {len(unavailable) + len(plan.not_found)}")
        lines = [f"    {i.model.relative_path} [{i.hash}] for {i.needed_by}" for i in unavailable]
        lines += [f"    {r.filename} (not found, no hash) for {r.workflow}" for r in plan.not_found]
        _listing(lines)
    if plan.stale:
        print(f"\nDropping {len(plan.stale)} pending entr{'y' if len(plan.stale) == 1 else 'ies'} no longer needed.")
    if plan.report.problems:
        print(f"\nManifest problems: {len(plan.report.problems)}")
        _listing([f"    {p}" for p in plan.report.problems])


# -- summary ---------------------------------------------------------------------


def print_summary(result: RepairResult, repo: Any) -> None:
    print()
    if result.downloaded:
        print(f"Downloaded {len(result.downloaded)} model(s).")
    if result.adopted:
        print(f"Found on disk, indexed: {len(result.adopted)} model(s) (nothing downloaded for them)")
        _listing([f"    {o.relative_path or o.job.relative_path}" for o in result.adopted])
    if result.failed:
        print(f"Failed: {len(result.failed)}")
        _listing([f"    {f.filename}: {f.error}" for f in result.failed])
    if result.interrupted:
        print(f"Interrupted: {len(result.interrupted)} model(s); partial downloads are kept, run `cfd repair` to resume.")
    unavailable = [e for e in result.pending if e.reason == "no-source"]
    if unavailable:
        print(f"Still unavailable (no source): {len(unavailable)}")
        _listing([f"    {e.relative_path}" for e in unavailable])
    skipped = [e for e in result.pending if e.reason == "filtered"]
    if skipped:
        print(f"Skipped by --models {result.plan.strategy}: {len(skipped)} (run `cfd repair --models all` for them)")
    if result.resolved:
        files = len(set(result.resolved))  # one download can resolve the entries of several workflows
        entries = f" ({len(result.resolved)} workflow entries)" if len(result.resolved) != files else ""
        print(f"\npyproject.toml updated: {files} download intent(s) resolved{entries}. Commit it:")
        print(f"    {_commit_command(repo)}")
    if result.resolve_error:
        print(f"\ncfd: warning: pyproject.toml not updated: {result.resolve_error}", file=sys.stderr)
    if result.plan.strategy == "skip":
        left = f"; {len(result.pending)} model(s) recorded as pending (`cfd repair` downloads them)" if result.pending else ""
        print(f"Nothing requested (--models skip): nothing downloaded{left}.")
    elif result.complete:
        print("All requested models are present.")
    elif not result.interrupted:
        print(f"{len(result.pending)} model(s) still missing; see `cfd status`.")


def _commit_command(repo: Any) -> str:
    return shlex.join(["git", "-C", str(repo), "commit", "-m", "Resolve downloaded models", "pyproject.toml"])


# -- JSON ------------------------------------------------------------------------


def _entry_json(entry: PendingEntry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "hash": entry.hash,
        "filename": entry.filename,
        "relative_path": entry.relative_path,
        "criticality": entry.criticality,
        "workflows": list(entry.workflows),
        "reason": entry.reason,
        "error": entry.error,
    }


def _to_download(plan: RepairPlan) -> list[dict[str, Any]]:
    items = [
        {"key": i.hash, "hash": i.hash, "filename": i.model.filename, "relative_path": i.model.relative_path,
         "size": i.model.size, "criticality": i.criticality, "workflows": list(i.named_workflows), "intent": False}
        for i in plan.models
    ]
    items += [
        {"key": intent_key(g[0]), "hash": None, "filename": g[0].filename, "relative_path": target, "size": None,
         "criticality": g[0].criticality, "workflows": list(dict.fromkeys(r.workflow for r in g)), "intent": True}
        for target, g in intent_groups(plan.intents).items()
    ]
    return items


def _on_disk_json(info: Any) -> dict[str, Any]:
    return {"key": info.hash, "hash": info.hash, "filename": info.model.filename, "relative_path": info.model.relative_path,
            "size": info.model.size, "criticality": info.criticality, "workflows": list(info.named_workflows)}


def plan_json(plan: RepairPlan) -> dict[str, Any]:
    unavailable = [
        {"key": i.hash, "hash": i.hash, "filename": i.model.filename, "relative_path": i.model.relative_path,
         "criticality": i.criticality, "workflows": list(i.named_workflows), "reason": "no-source", "error": None}
        for i in plan.unavailable
    ]
    unavailable += [
        {"key": intent_key(r), "hash": None, "filename": r.filename, "relative_path": r.target_path,
         "criticality": r.criticality, "workflows": [r.workflow], "reason": "no-source", "error": None}
        for r in plan.not_found
    ]
    skipped = [
        {"key": i.hash, "hash": i.hash, "filename": i.model.filename, "relative_path": i.model.relative_path,
         "criticality": i.criticality, "workflows": list(i.named_workflows), "reason": "filtered", "error": None}
        for i in plan.filtered_models
    ]
    skipped += [
        {"key": intent_key(g[0]), "hash": None, "filename": g[0].filename, "relative_path": target,
         "criticality": g[0].criticality, "workflows": list(dict.fromkeys(r.workflow for r in g)),
         "reason": "filtered", "error": None}
        for target, g in intent_groups(plan.filtered_intents).items()
    ]
    return {
        "dry_run": True,
        "strategy": plan.strategy,
        "to_download": _to_download(plan),
        "bytes_to_download": plan.download_bytes,
        "bytes_already_staged": plan.staged_bytes,
        "on_disk_unindexed": [_on_disk_json(i) for i in plan.on_disk],
        "downloaded": [],
        "failed": [],
        "interrupted": [],
        "unavailable": unavailable,
        "skipped": skipped,
        "stale_pending": list(plan.stale),
        "problems": list(plan.report.problems),
        "complete": plan.complete,
    }


def result_json(result: RepairResult, repo: Any) -> dict[str, Any]:
    return {
        "dry_run": False,
        "strategy": result.plan.strategy,
        "to_download": _to_download(result.plan),
        "on_disk_unindexed": [_on_disk_json(i) for i in result.plan.on_disk],
        "downloaded": [
            {"key": o.job.key, "hash": o.short_hash or o.job.expected_hash, "filename": o.job.filename,
             "relative_path": o.relative_path or o.job.relative_path,
             "source": redact_url(o.source) if o.source else None, "bytes_fetched": o.bytes_fetched}
            for o in result.downloaded
        ],
        "adopted": [
            {"key": o.job.key, "hash": o.short_hash or o.job.expected_hash, "filename": o.job.filename,
             "relative_path": o.relative_path or o.job.relative_path}
            for o in result.adopted
        ],
        "failed": [{"key": f.key, "hash": f.hash, "filename": f.filename, "error": f.error} for f in result.failed],
        "interrupted": [{"key": f.key, "hash": f.hash, "filename": f.filename, "error": f.error} for f in result.interrupted],
        "unavailable": [_entry_json(e) for e in result.pending if e.reason == "no-source"],
        "skipped": [_entry_json(e) for e in result.pending if e.reason == "filtered"],
        "pending": [_entry_json(e) for e in result.pending],
        "resolved_intents": list(result.resolved),
        "pyproject_updated": bool(result.resolved),
        "commit_command": _commit_command(repo) if result.resolved else None,
        "resolve_error": result.resolve_error,
        "problems": list(result.after.problems),
        "complete": result.complete,
    }
