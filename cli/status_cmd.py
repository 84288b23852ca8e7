"""`cfd status`: per workflow, what is missing, pending and broken."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cfd.core.manifest.model import CRITICALITY_RANK, ENVIRONMENT
from cfd.core.sync.marker import intent_key, reason_text
from cfd.core.sync.status import StatusReport, WorkflowStatus, compute_status
from cfd.core.sync.workflowfiles import MODIFIED
from cfd.core.text import sanitize
from cfd.core.units import human_size

from .common import add_env_argument, agent_download_figures, environment, is_terminal, print_json, warn

SHOW_PER_WORKFLOW = 10  # model lines per workflow before "… and N more"
SHOW_LIST = 10


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
    now = time.time()
    for item in downloads:
        print(f"    {item.get('file')} {agent_download_figures(item, now)}")


def _note(parts: list[str]) -> str:
    return f" — {'; '.join(parts)}" if parts else ""


def _model_lines(status: StatusReport, workflow: WorkflowStatus) -> list[str]:
    """One line per model this workflow lacks, with its own criticality and why it is still missing."""
    pending = status.pending_by_key
    rows: list[tuple[int, str]] = []
    for m in workflow.missing:
        criticality = workflow.criticality.get(m.hash, m.criticality)
        notes = []
        entry = pending.get(m.hash)
        if m.hash in status.on_disk:
            notes.append("on disk, not indexed yet: run `cfd index scan`")
        elif not m.can_download:
            notes.append(f"no source (hash {m.hash})")
        elif entry is not None:
            notes.append(reason_text(entry))
        line = f"    {criticality:<9} {m.model.relative_path} ({human_size(m.model.size)}){_note(notes)}"
        rows.append((CRITICALITY_RANK.get(criticality, 0), line))
    for ref in workflow.intents:
        entry = pending.get(intent_key(ref))
        note = _note([reason_text(entry)] if entry is not None else [])
        rows.append((CRITICALITY_RANK.get(ref.criticality, 0), f"    {ref.criticality:<9} {ref.target_path} (download intent, unverified){note}"))
    for ref in workflow.not_found:
        rows.append((CRITICALITY_RANK.get(ref.criticality, 0), f"    {ref.criticality:<9} {ref.filename} — not found, no source"))
    return [line for _rank, line in sorted(rows, key=lambda row: -row[0])]


def _workflow_header(status: StatusReport, workflow: WorkflowStatus, down_mark: str, warn_mark: str) -> str:
    on_disk = sum(1 for m in workflow.missing if m.hash in status.on_disk)
    without_source = sum(1 for m in workflow.missing if not m.can_download and m.hash not in status.on_disk)
    without_source += len(workflow.not_found)
    need = workflow.missing_count - on_disk - without_source
    details = [f"{on_disk} on disk unindexed"] if on_disk else []
    details += [f"{without_source} without a source"] if without_source else []
    if need:
        if details:
            return f"{down_mark} {workflow_label(workflow)} — {need} model(s) need downloading ({workflow.missing_count} missing, {', '.join(details)})"
        return f"{down_mark} {workflow_label(workflow)} — {need} model(s) need downloading"
    return f"{warn_mark} {workflow_label(workflow)} — {workflow.missing_count} missing ({', '.join(details)})"


def workflow_label(workflow: WorkflowStatus) -> str:
    """ComfyGit's environment-level models are listed under the environment, not a workflow."""
    return workflow.name if workflow.name != ENVIRONMENT else "(environment: models it needs itself)"


def _cut(lines: list[str], show: int) -> None:
    for line in lines[:show]:
        print(line)
    if len(lines) > show:
        print(f"    … and {len(lines) - show} more (`cfd status --json` lists all)")


def print_status(status: StatusReport, fancy: bool) -> None:
    ok_mark, down_mark, warn_mark = ("✅", "⬇️ ", "⚠️ ") if fancy else ("ok", "-", "!")
    report = status.report
    dialect = status.env.dialect
    print(f"Environment: {status.env.repo} ({dialect.title})")
    print(f"Models:      {status.env.models_dir}")
    if not status.manifest.has_comfydock and not status.manifest.problems:
        print("pyproject.toml has neither a [tool.comfygit] nor a [tool.comfydock] table: not a ComfyGit or ComfyDock environment, nothing to sync.")
    elif not status.manifest.workflows and not status.manifest.models:
        print("No models or workflows in pyproject.toml.")
    shown: set[str] = set()
    for workflow in status.workflows:
        if workflow.ok:
            print(f"{ok_mark} {workflow_label(workflow)}")
            continue
        print(_workflow_header(status, workflow, down_mark, warn_mark))
        _cut(_model_lines(status, workflow), SHOW_PER_WORKFLOW)
        shown |= {m.hash for m in workflow.missing} | {intent_key(r) for r in (*workflow.intents, *workflow.not_found)}
    elsewhere = [entry for entry in status.pending if entry.key not in shown]
    if elsewhere:
        print(f"\nAlso pending: {len(elsewhere)}")
        _cut([f"    {entry.relative_path} — {reason_text(entry)}" for entry in elsewhere], SHOW_LIST)
    edited = [f.name for f in status.workflow_files if f.state == MODIFIED]
    if edited:
        print(f"\n{warn_mark} Workflow files modified locally in ComfyUI (cfd never overwrites them): {len(edited)}")
        _cut([f"    {sanitize(name)}.json" for name in edited], SHOW_LIST)
    if status.skipped is not None:
        print(f"\n{warn_mark} {status.skipped.message()}")
    if report.problems:
        print(f"\n{warn_mark} Manifest problems: {len(report.problems)}")
        _cut([f"    {problem}" for problem in report.problems], SHOW_LIST)
    print()
    if status.in_sync:
        print("In sync: every model the workflows need is present.")
        return
    print_next_steps(status)


def print_next_steps(status: StatusReport) -> None:
    """What to do, one line per kind of fix, counted so the counts add up to what is missing."""
    from cfd.core.sync.fetch import intent_groups  # the text view only: `--json` need not load the fetch logic

    report = status.report
    gone = status.sources_gone
    intents = [ref for ref in report.intents if intent_key(ref) not in gone]
    downloadable = len(status.to_download) + len(intent_groups(intents))
    if downloadable:
        print(
            f"{downloadable} model(s) to download ({human_size(status.bytes_to_download)}"
            f"{' + intents of unknown size' if intents else ''}). Run `cfd repair` to fetch them."
        )
    if status.on_disk:
        print(f"{len(status.on_disk)} model(s) already on disk but not indexed: run `cfd index scan` "
              "(`cfd repair` also checks and indexes them).")
    broken = sum(1 for m in report.downloadable if m.hash in gone and m.hash not in status.on_disk)
    broken += sum(1 for ref in report.intents if intent_key(ref) in gone)
    if broken:
        print(f"{broken} model(s) whose source answered \"not found\": fix or replace the source in pyproject.toml "
              "(running `cfd repair` again will not help).")
    without = sum(1 for m in report.unavailable if m.hash not in status.on_disk) + len(report.not_found)
    if without:
        print(f"{without} model(s) without a source: add one to pyproject.toml, or place the file by hand "
              "and run `cfd index scan`.")
