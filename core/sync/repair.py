"""`cfd repair`: plan from the truth, run, and rewrite the marker to what is still missing.

`plan_repair` recomputes the truth from the working manifest and the index (the
marker is only a hint); `run_repair` indexes what is already on disk, downloads
the rest through fetch.py, writes downloaded intents into pyproject.toml, and
rewrites the marker to exactly what is still missing afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..environment import Environment
from ..errors import CfdError, disk_message
from ..state import models_state
from ..store.index import ModelIndex
from ..manifest.model import WorkflowModelRef
from .fetch import intent_groups, jobs_from, pending_entries, run_batch
from .marker import Marker, PendingEntry, Warn, intent_key
from .missing import MissingModelInfo, MissingReport, detect_missing_models, on_disk_unindexed
from .skipped import clear_skipped
from .strategy import STRATEGIES, in_scope, missing_in_scope, select_for_download
from .working import load_working_manifest

if TYPE_CHECKING:
    from ..download.engine import DownloadCallbacks, DownloadOutcome


@dataclass(frozen=True)
class RepairPlan:
    strategy: str
    report: MissingReport
    models: tuple[MissingModelInfo, ...]  # to download
    intents: tuple[WorkflowModelRef, ...]  # to download
    filtered_models: tuple[MissingModelInfo, ...]  # downloadable, left out by the strategy
    filtered_intents: tuple[WorkflowModelRef, ...]
    previous: Mapping[str, PendingEntry] = field(default_factory=dict)  # marker hints still relevant
    stale: tuple[str, ...] = ()  # marker keys no longer needed (dropped by the run)
    # In scope, already at their path but not indexed: checked (short hash) and indexed, not downloaded.
    on_disk: tuple[MissingModelInfo, ...] = ()
    staged: Mapping[str, int] = field(default_factory=dict)  # model hash -> bytes an earlier run left in staging

    @property
    def unavailable(self) -> tuple[MissingModelInfo, ...]:
        return self.report.unavailable

    @property
    def not_found(self) -> tuple[WorkflowModelRef, ...]:
        return self.report.not_found

    @property
    def download_count(self) -> int:
        return len(self.models) + len(intent_groups(self.intents))

    @property
    def download_bytes(self) -> int:
        """Known bytes of the files to fetch (intents and size-less entries add an unknown amount)."""
        return sum(info.model.size or 0 for info in self.models)

    @property
    def staged_bytes(self) -> int:
        """Of those, already here in staging from an earlier run (resumed, not fetched again)."""
        return sum(self.staged.values())

    @property
    def unknown_sizes(self) -> int:
        return sum(1 for info in self.models if info.model.size is None) + len(intent_groups(self.intents))

    @property
    def complete(self) -> bool:
        """Nothing the strategy asks for is missing (so there is nothing to do)."""
        return not missing_in_scope(self.report, self.strategy)


def _detect(env: Environment) -> MissingReport:
    manifest = load_working_manifest(env)
    with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
        report = detect_missing_models(manifest, index)
    from ..mirror.availability import mark_mirrored  # no mirror configured: returns at once

    return mark_mirrored(report, env)


def _keys(report: MissingReport) -> set[str]:
    keys = {info.hash for info in report.missing}
    keys |= {intent_key(ref) for ref in (*report.intents, *report.not_found)}
    return keys


def plan_repair(env: Environment, strategy: str = "all", warn: Warn | None = None) -> RepairPlan:
    """What `cfd repair` would do, from the truth (manifest vs index); read-only."""
    if strategy not in STRATEGIES:
        raise CfdError(f"unknown strategy {strategy!r}", f"use one of {', '.join(STRATEGIES)}")
    report = _detect(env)
    selection = select_for_download(report, strategy)
    needed = _keys(report)
    previous = {entry.key: entry for entry in Marker(env.git_dir, warn).read()}
    in_scope_unavailable = [info for info in report.unavailable if in_scope(info.criticality, strategy)]
    on_disk = on_disk_unindexed(env.models_dir, [*selection.models, *in_scope_unavailable])
    here = {info.hash for info in on_disk}
    models = [info for info in selection.models if info.hash not in here]
    return RepairPlan(
        strategy=strategy,
        report=report,
        models=tuple(models),
        intents=selection.intents,
        on_disk=on_disk,
        staged=_staged(env, models),
        filtered_models=selection.filtered_models,
        filtered_intents=selection.filtered_intents,
        previous={key: entry for key, entry in previous.items() if key in needed},
        stale=tuple(key for key in previous if key not in needed),
    )


def _staged(env: Environment, models: Sequence[MissingModelInfo]) -> dict[str, int]:
    """Bytes of each model (of known size) an earlier run left in staging, for the preview."""
    from ..download.staging import partial_bytes

    staging_dir = models_state(env.models_dir).staging
    if not staging_dir.is_dir():
        return {}
    found = {job.key: min(partial_bytes(staging_dir, job), job.size or 0) for job in jobs_from(models, ())}
    return {key: done for key, done in found.items() if done > 0}


@dataclass(frozen=True)
class FailedModel:
    key: str
    hash: str | None
    filename: str
    error: str


@dataclass(frozen=True)
class RepairResult:
    plan: RepairPlan
    outcomes: list[DownloadOutcome]
    downloaded: list[DownloadOutcome]
    failed: list[FailedModel]
    interrupted: list[FailedModel]
    pending: list[PendingEntry]  # the marker as rewritten: exactly what is still missing
    after: MissingReport  # the truth after the run
    resolved: list[str] = field(default_factory=list)  # intents written into pyproject.toml
    resolve_error: str | None = None
    adopted: list[DownloadOutcome] = field(default_factory=list)  # found on disk, checked, indexed

    @property
    def models_downloaded(self) -> list[str]:
        return [outcome.job.filename for outcome in self.downloaded]

    @property
    def models_failed(self) -> list[tuple[str, str]]:
        return [(f.filename, f.error) for f in (*self.failed, *self.interrupted)]

    @property
    def complete(self) -> bool:
        """Every model the strategy asked for is present now."""
        return not self.interrupted and not self.resolve_error and not missing_in_scope(self.after, self.plan.strategy)


def _marker_entries(
    plan: RepairPlan, after: MissingReport, failed: Mapping[str, str], interrupted: Mapping[str, str]
) -> list[PendingEntry]:
    """Exactly what is still missing, each with why."""
    chosen = {info.hash for info in (*plan.models, *plan.on_disk)} | {intent_key(ref) for ref in plan.intents}

    def why(entry: PendingEntry, can_download: bool) -> PendingEntry:
        if entry.key in interrupted:
            return entry._replace(reason="interrupted", error=interrupted[entry.key])
        if entry.key in failed:
            return entry._replace(reason="failed", error=failed[entry.key])
        if not can_download:
            return entry._replace(reason="no-source", error=None)
        if entry.key not in chosen:
            return entry._replace(reason="filtered", error=None)
        previous = plan.previous.get(entry.key)  # chosen but not tried (appeared meanwhile)
        return previous or entry._replace(reason="deferred", error=None)

    entries = [
        why(entry, info.can_download)
        for info, entry in zip(after.missing, pending_entries(after.missing, (), "deferred", "repair"))
    ]
    entries += [why(entry, True) for entry in pending_entries((), after.intents, "deferred", "repair")]
    entries += [why(entry, False) for entry in pending_entries((), after.not_found, "no-source", "repair")]
    return entries


def run_repair(
    env: Environment,
    plan: RepairPlan,
    *,
    callbacks: DownloadCallbacks | None = None,
    cancel: threading.Event | None = None,
    warn: Warn | None = None,
) -> RepairResult:
    """Index what is already on disk, download what the plan picked, resolve downloaded intents,
    rewrite the marker."""
    jobs = jobs_from(plan.models, plan.intents) if (plan.models or plan.intents) else []
    marker = Marker(env.git_dir, warn)
    try:
        batch = run_batch(env, plan.on_disk, jobs, callbacks, cancel)
    except KeyboardInterrupt:
        # Not cooperative (a second Ctrl-C): still leave a marker that says what happened.
        base = pending_entries(plan.models, plan.intents, "interrupted", "repair")
        marker.merge((entry._replace(error="interrupted") for entry in base), drop=plan.stale)
        raise
    failed_all, interrupted_all, downloaded = batch.failed, batch.interrupted, batch.fetched.succeeded
    resolved: list[str] = []
    resolve_error = None
    try:
        resolved = resolve_downloaded_intents(env, downloaded)
        resolved += resolve_remembered_intents(env, plan.report.satisfied_intents)
    except CfdError as exc:
        resolve_error = str(exc)
    after = _detect(env)
    pending = _marker_entries(plan, after, failed_all, interrupted_all)
    if resolve_error:  # downloaded but not written back: the marker says so until a run finishes it
        pending += _unwritten(plan, after, downloaded, resolve_error)
    try:
        marker.write(pending)
    except OSError as exc:
        if warn is not None:
            warn(f"{disk_message(exc, 'the pending marker')}; `cfd status` still shows what is missing")
    clear_skipped(env.git_dir)  # repair read the whole manifest: what a hook skipped is done
    by_key = batch.job_of

    def failure(key: str, error: str) -> FailedModel:
        job = by_key[key]
        return FailedModel(key, job.expected_hash, job.filename, error)

    return RepairResult(
        plan=plan,
        outcomes=list(batch.outcomes),
        downloaded=downloaded,
        failed=[failure(key, error) for key, error in failed_all.items()],
        interrupted=[failure(key, error) for key, error in interrupted_all.items()],
        pending=pending,
        after=after,
        resolved=resolved,
        resolve_error=resolve_error,
        adopted=batch.adopted.succeeded,
    )


def _unwritten(plan: RepairPlan, after: MissingReport, succeeded: Sequence[DownloadOutcome], error: str) -> list[PendingEntry]:
    """Marker entries for intents that are here but not yet written into pyproject.toml."""
    here = {o.job.key for o in succeeded} | {intent_key(ref) for ref in plan.report.satisfied_intents}
    still_open = {intent_key(ref) for ref in after.intents}
    refs = [ref for ref in (*plan.intents, *plan.report.satisfied_intents)
            if intent_key(ref) in here and intent_key(ref) not in still_open]
    return pending_entries((), refs, "write-back", "repair", {intent_key(ref): error for ref in refs})


def resolve_downloaded_intents(env: Environment, outcomes: Iterable[DownloadOutcome]) -> list[str]:
    """Write the hashes of downloaded intents into pyproject.toml (tomlkit); returns their filenames."""
    from ..manifest.intents import ResolvedIntent, write_resolutions
    from ..store.shorthash import short_hash_file

    done = [o for o in outcomes if o.success and o.job.key.startswith("intent:")]
    if not done:
        return []
    open_intents = intent_groups(load_working_manifest(env).intents)
    resolutions: list[ResolvedIntent] = []
    for outcome in done:
        relative_path = outcome.relative_path or outcome.job.relative_path
        path = env.models_dir / relative_path
        try:
            size = path.stat().st_size
            short_hash = outcome.short_hash or short_hash_file(path, env.dialect.short_hash)
        except OSError:
            continue  # gone again: it stays an intent
        for ref in open_intents.get(outcome.job.relative_path, []):
            resolutions.append(ResolvedIntent(ref, short_hash, size, relative_path))
    return write_resolutions(env.pyproject, resolutions)


def resolve_remembered_intents(env: Environment, refs: Sequence[WorkflowModelRef]) -> list[str]:
    """Intents fetched earlier but never written into pyproject.toml: by a hook or the agent
    (they never touch tracked files), or by a `cfd repair` killed before it got there. The
    index remembers them by source URL; returns the filenames resolved."""
    if not refs:
        return []
    from ..manifest.intents import ResolvedIntent, write_resolutions

    with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
        found = index.present_by_source(url for ref in refs for url in ref.sources)
        locations = index.locations()
    resolutions = []
    for ref in refs:
        relative_path = next((found[url] for url in ref.sources if url in found), None)
        location = locations.get(relative_path) if relative_path else None
        if location is not None:
            resolutions.append(ResolvedIntent(ref, location.model_hash, location.size, location.relative_path))
    return write_resolutions(env.pyproject, resolutions) if resolutions else []
