"""`cfd status`: the truth about one environment, as data (the CLI prints it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..environment import Environment
from ..store.index import ModelIndex
from ..manifest.model import ENVIRONMENT, Manifest, WorkflowModelRef, strongest
from .marker import Marker, PendingEntry, Warn, intent_key, sources_gone
from .missing import MissingModelInfo, MissingReport, detect_missing_models, on_disk_unindexed
from .skipped import SkippedManifest, read_skipped
from .workflowfiles import WorkflowFile, workflow_states
from ..download.urls import redact_url
from .working import load_working_manifest


@dataclass(frozen=True)
class WorkflowStatus:
    name: str
    missing: tuple[MissingModelInfo, ...]
    intents: tuple[WorkflowModelRef, ...]
    not_found: tuple[WorkflowModelRef, ...]
    # hash -> this workflow's own criticality for it (MissingModelInfo has the strongest of all)
    criticality: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.intents or self.not_found)

    @property
    def need_download(self) -> int:
        return sum(1 for m in self.missing if m.can_download) + len(self.intents)

    @property
    def missing_count(self) -> int:
        return len(self.missing) + len(self.intents) + len(self.not_found)

    @property
    def without_source(self) -> int:
        return self.missing_count - self.need_download


@dataclass(frozen=True)
class StatusReport:
    env: Environment
    manifest: Manifest
    report: MissingReport
    pending: tuple[PendingEntry, ...]
    workflows: tuple[WorkflowStatus, ...]
    on_disk: frozenset[str] = frozenset()  # hashes of missing models already at their path, unindexed
    skipped: SkippedManifest | None = None  # a manifest the hooks did not read (too large)
    workflow_files: tuple[WorkflowFile, ...] = ()  # .cec workflows and their ComfyUI copies

    @property
    def in_sync(self) -> bool:
        return self.report.in_sync

    @property
    def pending_by_key(self) -> dict[str, PendingEntry]:
        return {entry.key: entry for entry in self.pending}

    @property
    def sources_gone(self) -> frozenset[str]:
        """Keys whose every source answered 404/410 last time: `cfd repair` alone will not help."""
        return frozenset(entry.key for entry in self.pending if sources_gone(entry))

    @property
    def to_download(self) -> tuple[MissingModelInfo, ...]:
        """What `cfd repair` would fetch and can be expected to get."""
        skip = self.on_disk | self.sources_gone
        return tuple(m for m in self.report.downloadable if m.hash not in skip)

    @property
    def bytes_to_download(self) -> int:
        return sum(m.model.size or 0 for m in self.to_download)

    def to_json(self) -> dict[str, Any]:
        return {
            "dialect": self.manifest.dialect or self.env.dialect.name,
            "in_sync": self.in_sync,
            "environment": str(self.env.repo),
            "models_dir": str(self.env.models_dir),
            "index": str(self.env.index_path),
            "missing": [missing_to_json(m) for m in self.report.missing],
            "intents": [intent_to_json(r) for r in self.report.intents],
            "not_found": [intent_to_json(r) for r in self.report.not_found],
            "problems": list(self.report.problems),
            "pending": [p.to_json() for p in self.pending],
            "on_disk_unindexed": sorted(self.on_disk),
            "sources_gone": sorted(self.sources_gone),
            "workflows": [
                {
                    "name": w.name,
                    "ok": w.ok,
                    "missing": [m.model.hash for m in w.missing],
                    "criticality": dict(w.criticality),
                    "intents": [r.filename for r in w.intents],
                    "not_found": [r.filename for r in w.not_found],
                }
                for w in self.workflows
                if w.name != ENVIRONMENT
            ],
            **self._environment_json(),
            "bytes_to_download": self.bytes_to_download,
            "workflow_files": [f.to_json() for f in self.workflow_files],
            "hook_skipped": None if self.skipped is None else {**self.skipped._asdict(), "message": self.skipped.message()},
        }

    def _environment_json(self) -> dict[str, Any]:
        """ComfyGit's environment-level models (needed with no workflow), when there are any."""
        env = next((w for w in self.workflows if w.name == ENVIRONMENT), None)
        if env is None:
            return {}
        return {"environment_models": {"ok": env.ok, "missing": [m.model.hash for m in env.missing],
                                       "criticality": dict(env.criticality)}}


def missing_to_json(info: MissingModelInfo) -> dict[str, Any]:
    model = info.model
    return {
        "hash": model.hash,
        "filename": model.filename,
        "relative_path": model.relative_path,
        "size": model.size,
        "criticality": info.criticality,
        "workflows": list(info.named_workflows),
        "can_download": info.can_download,
        "sources": [redact_url(url) for url in model.sources],
    }


def intent_to_json(ref: WorkflowModelRef) -> dict[str, Any]:
    return {
        "workflow": ref.workflow,
        "filename": ref.filename,
        "relative_path": ref.target_path,
        "category": ref.category,
        "criticality": ref.criticality,
        "node_id": ref.node_id,
        "widget_idx": ref.widget_idx,
        "sources": [redact_url(url) for url in ref.sources],
    }


def compute_status(env: Environment, warn: Warn | None = None) -> StatusReport:
    manifest = load_working_manifest(env)
    with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
        report = detect_missing_models(manifest, index)
    from ..mirror.availability import mark_mirrored  # sourceless models the team mirror has

    report = mark_mirrored(report, env)
    # The marker is a hint; the truth is manifest + index. An entry for a model that is here
    # by now (placed by a run killed before it updated the marker, copied in by hand) is stale:
    # not shown, and `cfd repair` drops it.
    needed = {info.hash for info in report.missing}
    needed |= {intent_key(ref) for ref in (*report.intents, *report.not_found)}
    pending = tuple(entry for entry in Marker(env.git_dir, warn).read() if entry.key in needed)
    missing_of: dict[str, list[MissingModelInfo]] = {}
    for info in report.missing:
        for name in info.workflow_names:
            missing_of.setdefault(name, []).append(info)
    intents_of: dict[str, list[WorkflowModelRef]] = {}
    for ref in report.intents:
        intents_of.setdefault(ref.workflow, []).append(ref)
    not_found_of: dict[str, list[WorkflowModelRef]] = {}
    for ref in report.not_found:
        not_found_of.setdefault(ref.workflow, []).append(ref)
    own: dict[str, dict[str, str]] = {}
    for ref in manifest.refs:
        if ref.hash is not None and ref.hash in needed:
            mine = own.setdefault(ref.workflow, {})
            mine[ref.hash] = strongest(mine[ref.hash], ref.criticality) if ref.hash in mine else ref.criticality
    workflows = [
        WorkflowStatus(
            name=name,
            missing=tuple(missing_of.get(name, ())),
            intents=tuple(intents_of.get(name, ())),
            not_found=tuple(not_found_of.get(name, ())),
            criticality=own.get(name, {}),
        )
        for name in ((ENVIRONMENT,) if any(r.is_environment for r in manifest.refs) else ()) + manifest.workflows
    ]
    # Only when something is missing: the path rules it needs import the URL checks (socket, ...).
    on_disk = frozenset(info.hash for info in on_disk_unindexed(env.models_dir, report.missing)) if report.missing else frozenset()
    return StatusReport(env, manifest, report, pending, tuple(workflows), on_disk, read_skipped(env.git_dir),
                        tuple(workflow_states(env)))
