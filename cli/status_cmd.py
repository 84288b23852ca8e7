"""`cfd status`: per workflow, what is missing, pending and broken."""

from __future__ import annotations

import argparse
from typing import Any

from cfd.core.status import StatusReport, compute_status

from .common import add_env_argument, environment, human_size, is_terminal, print_json, warn

SHOW_PER_WORKFLOW = 5


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "status",
        help="show which models the environment needs and this machine lacks",
        description="Show, per workflow, which models are missing, what is pending and what cannot be downloaded. "
        "Exit 0 when in sync, 1 when something is missing, 2 on errors.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    add_env_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = compute_status(environment(args), warn)
    agent = agent_status(report)
    if args.json:
        print_json({**report.to_json(), "agent": agent})
    else:
        print_status(report, fancy=is_terminal())
        print_agent(agent)
    return 0 if report.in_sync else 1


def agent_status(report: StatusReport) -> dict[str, Any] | None:
    """What the background agent for this models dir is doing (None: never ran)."""
    from cfd.agent.control import agent_status_for

    try:
        return agent_status_for(report.env.models_dir)
    except (OSError, ValueError):
        return None


def print_agent(agent: dict[str, Any] | None) -> None:
    if not agent or not agent.get("running"):
        return
    downloads = agent.get("downloads") or []
    if not downloads:
        print(f"Agent: running (pid {agent.get('pid', '?')}), idle.")
        return
    print(f"Agent: running (pid {agent.get('pid', '?')}), downloading:")
    for item in downloads:
        percent = item.get("percent")
        speed = item.get("speed") or 0
        print(f"    {item.get('file')} {'' if percent is None else f'{percent:.0f}% '}at {human_size(int(speed))}/s")


def print_status(status: StatusReport, fancy: bool) -> None:
    ok_mark, down_mark, warn_mark = ("✅", "⬇️ ", "⚠️ ") if fancy else ("ok", "-", "!")
    report = status.report
    print(f"Environment: {status.env.repo}")
    print(f"Models:      {status.env.models_dir}")
    if not status.manifest.has_comfydock and not status.manifest.problems:
        print("pyproject.toml has no [tool.comfydock] table: not a ComfyDock environment, nothing to sync.")
    elif not status.manifest.workflows and not status.manifest.models:
        print("No models or workflows in pyproject.toml.")
    for workflow in status.workflows:
        if workflow.ok:
            print(f"{ok_mark} {workflow.name}")
            continue
        count = workflow.need_download
        if count:
            print(f"{down_mark} {workflow.name} — {count} model(s) need downloading")
        else:
            print(f"{warn_mark} {workflow.name} — models missing that cannot be downloaded")
        lines = [
            f"    {m.criticality:<9} {m.model.relative_path} ({human_size(m.model.size)})"
            + ("" if m.can_download else " — no source")
            for m in workflow.missing
        ]
        lines += [f"    {r.criticality:<9} {r.target_path} (download intent, unverified)" for r in workflow.intents]
        lines += [f"    {r.criticality:<9} {r.filename} — not found, no source" for r in workflow.not_found]
        for line in lines[:SHOW_PER_WORKFLOW]:
            print(line)
        if len(lines) > SHOW_PER_WORKFLOW:
            print(f"    … and {len(lines) - SHOW_PER_WORKFLOW} more")
    if report.unavailable:
        print(f"\nUnavailable (no source in pyproject.toml): {len(report.unavailable)}")
        for model in report.unavailable[:10]:
            print(f"    {model.model.relative_path} [{model.model.hash}] needed by {', '.join(model.workflow_names)}")
    if report.intents:
        print(f"\nDownload intents (unresolved, with sources): {len(report.intents)}")
    if status.skipped is not None:
        print(f"\n{warn_mark} {status.skipped.message()}")
    if status.pending:
        print(f"\nPending from earlier pulls: {len(status.pending)}")
        for entry in status.pending[:5]:
            detail = f": {entry.error}" if entry.error else ""
            print(f"    {entry.relative_path} ({entry.reason}{detail})")
    if report.problems:
        print(f"\n{warn_mark} Manifest problems: {len(report.problems)}")
        for problem in report.problems[:10]:
            print(f"    {problem}")
        if len(report.problems) > 10:
            print(f"    … and {len(report.problems) - 10} more")
    print()
    if status.in_sync:
        print("In sync: every model the workflows need is present.")
        return
    downloadable = len(report.downloadable) + len(report.intents)
    if downloadable:
        print(
            f"{downloadable} model(s) to download ({human_size(status.bytes_to_download)}"
            f"{' + intents of unknown size' if report.intents else ''}). Run `cfd repair` to fetch them."
        )
    else:
        print("Nothing can be downloaded: add sources to pyproject.toml or place the files by hand, then `cfd index scan`.")
