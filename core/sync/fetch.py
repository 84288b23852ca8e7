"""Fetching what hooks, the agent and `cfd repair` picked, and keeping the marker true.

`jobs_from` turns missing models and intents into download jobs, `pending_entries`
into marker entries. `sync_models` is the shared entry of hooks and agent:
download what they picked, then merge failures and interruptions into the
pending marker and drop what arrived. `cfd repair` (repair.py) runs its plan
through `run_batch` (files found on disk are checked and indexed, the rest downloaded).

The download engine (and with it `requests`) is imported only when something
is downloaded, so a hook that merely records pending models stays light.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..environment import Environment
from ..errors import CfdError, ConfigError
from ..manifest.model import WorkflowModelRef, strongest
from .marker import BUDGET_REASON, Marker, PendingEntry, Warn, intent_key
from .missing import MissingModelInfo, on_disk_unindexed
from ..download.urls import redact_urls_in

if TYPE_CHECKING:
    from ..download.engine import DownloadCallbacks, DownloadJob, DownloadOutcome



def scrub(text: str | None) -> str | None:
    """Error text with every URL in it redacted (errors end up in the marker and JSON)."""
    return None if text is None else redact_urls_in(text)


def intent_groups(intents: Iterable[WorkflowModelRef]) -> dict[str, list[WorkflowModelRef]]:
    """Intents by target path: two entries asking for the same file make one download."""
    groups: dict[str, list[WorkflowModelRef]] = {}
    for ref in intents:
        groups.setdefault(ref.target_path, []).append(ref)
    return groups


def _group_facts(group: Sequence[WorkflowModelRef]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    criticality = strongest(*(ref.criticality for ref in group))
    sources = tuple(dict.fromkeys(url for ref in group for url in ref.sources))
    workflows = tuple(dict.fromkeys(ref.workflow for ref in group))
    return criticality, sources, workflows


def jobs_from(models: Sequence[MissingModelInfo], intents: Sequence[WorkflowModelRef]) -> list[DownloadJob]:
    from ..download.types import DownloadJob  # the value types only: no requests import

    jobs = [
        DownloadJob(
            key=info.hash,
            filename=info.model.filename,
            relative_path=info.model.relative_path,
            size=info.model.size,
            sources=info.model.sources,
            expected_hash=info.hash,
            blake3=info.model.blake3,
            sha256=info.model.sha256,
            criticality=info.criticality,
            workflows=info.named_workflows,
        )
        for info in models
    ]
    for target, group in intent_groups(intents).items():
        criticality, sources, workflows = _group_facts(group)
        jobs.append(
            DownloadJob(
                key=intent_key(group[0]),
                filename=group[0].filename,
                relative_path=target,
                size=None,
                sources=sources,
                expected_hash=None,
                criticality=criticality,
                workflows=workflows,
            )
        )
    return jobs


def pending_entries(
    models: Iterable[MissingModelInfo],
    intents: Iterable[WorkflowModelRef],
    reason: str,
    trigger: str,
    errors: Mapping[str, str] | None = None,
) -> list[PendingEntry]:
    """Marker entries for models and intents (one per download job); `errors` maps a key to its last error."""
    errors = errors or {}
    return [
        PendingEntry(
            key=job.key,
            filename=job.filename,
            relative_path=job.relative_path,
            size=job.size,
            sources=job.sources,
            criticality=job.criticality,
            workflows=job.workflows,
            reason=reason,
            error=scrub(errors.get(job.key)),
            trigger=trigger,
            hash=job.expected_hash,
        )
        for job in jobs_from(list(models), list(intents))
    ]


# -- downloading -----------------------------------------------------------------


def _run_jobs(
    env: Environment,
    jobs: list[DownloadJob],
    callbacks: DownloadCallbacks | None,
    cancel: threading.Event | None,
    max_rate: int = 0,
    deadline: float | None = None,
) -> list[DownloadOutcome]:
    from ..download.engine import DownloadOptions, download_models
    from ..download.types import failed

    # A bad setting (cfd.jobs = lots) is the command's error, not every file's failure.
    overrides: dict[str, object] = {"max_rate": max_rate} if max_rate else {}
    if deadline is not None:
        overrides.update(deadline=deadline, budget=env.settings["cfd.hookTimeBudget"])
    options = DownloadOptions.from_settings(env, **overrides)
    try:
        return download_models(
            jobs,
            models_dir=env.models_dir,
            index_path=env.index_path,
            options=options,
            callbacks=callbacks,
            cancel=cancel,
        )
    except CfdError as exc:  # refused as a whole (e.g. no room on disk): every job failed, for this reason
        return [failed(job, str(exc)) for job in jobs]


@dataclass(frozen=True)
class _Sorted:
    succeeded: list[DownloadOutcome]
    failed: dict[str, str]  # key -> error
    interrupted: dict[str, str]  # key -> error (or "interrupted")


def _sort_outcomes(jobs: Sequence[DownloadJob], outcomes: Sequence[DownloadOutcome], cancelled: bool) -> _Sorted:
    by_key = {outcome.job.key: outcome for outcome in outcomes}
    succeeded: list[DownloadOutcome] = []
    failed: dict[str, str] = {}
    interrupted: dict[str, str] = {}
    for job in jobs:
        outcome = by_key.get(job.key)
        if outcome is not None and outcome.success:
            succeeded.append(outcome)
        elif outcome is None:
            (interrupted if cancelled else failed)[job.key] = "interrupted" if cancelled else "no result from the downloader"
        elif outcome.interrupted or (cancelled and not outcome.error):
            interrupted[job.key] = scrub(outcome.error) or "interrupted"
        else:  # a real failure stays a failure even if Ctrl-C came later
            failed[job.key] = scrub(outcome.error) or "failed"
    return _Sorted(succeeded, failed, interrupted)


@dataclass(frozen=True)
class SyncResult:
    models_downloaded: list[str]  # filenames
    models_failed: list[tuple[str, str]]  # (filename, error)
    outcomes: list[DownloadOutcome]
    interrupted: bool = False
    models_found: list[str] = field(default_factory=list)  # already on disk: checked and indexed, not downloaded
    models_over_budget: list[str] = field(default_factory=list)  # of models_failed, those a hook's time budget stopped


@dataclass(frozen=True)
class Batch:
    """One run's work, sorted: files found at their path (checked, indexed) and files downloaded."""

    adopt_jobs: list[DownloadJob]
    adoptions: list[DownloadOutcome]
    jobs: list[DownloadJob]
    outcomes: list[DownloadOutcome]  # of the downloads
    adopted: _Sorted
    fetched: _Sorted

    @property
    def failed(self) -> dict[str, str]:
        return {**self.adopted.failed, **self.fetched.failed}

    @property
    def interrupted(self) -> dict[str, str]:
        return {**self.adopted.interrupted, **self.fetched.interrupted}

    @property
    def job_of(self) -> dict[str, DownloadJob]:
        return {job.key: job for job in (*self.adopt_jobs, *self.jobs)}


def run_batch(
    env: Environment,
    on_disk: Sequence[MissingModelInfo],
    jobs: list[DownloadJob],
    callbacks: DownloadCallbacks | None,
    cancel: threading.Event | None,
    max_rate: int = 0,
    deadline: float | None = None,
) -> Batch:
    """Check (short hash) and index the `on_disk` files through the engine's own check, without
    callbacks (nothing is downloaded, so nothing is shown as downloading); then download `jobs`."""
    adopt_jobs = jobs_from(on_disk, ())
    adoptions = _run_jobs(env, adopt_jobs, None, cancel) if adopt_jobs else []
    outcomes = _run_jobs(env, jobs, callbacks, cancel, max_rate, deadline) if jobs else []
    cancelled = cancel is not None and cancel.is_set()
    return Batch(adopt_jobs, adoptions, jobs, outcomes,
                 _sort_outcomes(adopt_jobs, adoptions, cancelled), _sort_outcomes(jobs, outcomes, cancelled))


def sync_models(
    env: Environment,
    models: Sequence[MissingModelInfo],
    intents: Sequence[WorkflowModelRef],
    *,
    callbacks: DownloadCallbacks | None = None,
    cancel: threading.Event | None = None,
    trigger: str = "",
    warn: Warn | None = None,
    max_rate: int = 0,
    deadline: float | None = None,
) -> SyncResult:
    """Download `models` and `intents`; failures and interruptions go to the marker, successes leave it.

    `max_rate` (bytes/s over all files, 0 = unlimited) is the agent's `cfd.agent.maxRate`;
    `deadline` (time.monotonic()) is a hook's time budget: what is left then is pending
    with reason "hook-time-budget"."""
    if not (models or intents):
        return SyncResult([], [], [])
    on_disk = on_disk_unindexed(env.models_dir, models)
    found = {info.hash for info in on_disk}
    to_fetch = [info for info in models if info.hash not in found]
    jobs = jobs_from(to_fetch, intents)
    marker = Marker(env.git_dir, warn)
    base = {entry.key: entry for entry in pending_entries(models, intents, "failed", trigger)}
    try:
        batch = run_batch(env, on_disk, jobs, callbacks, cancel, max_rate, deadline)
    except KeyboardInterrupt:
        marker.merge(entry._replace(reason="interrupted", error="interrupted") for entry in base.values())
        raise
    except ConfigError as exc:  # a bad download setting stops the batch; what it was for stays pending, with why
        marker.merge(entry._replace(reason="failed", error=exc.message) for entry in base.values())
        raise
    failed_all, interrupted_all = batch.failed, batch.interrupted
    over_budget = {outcome.job.key for outcome in batch.outcomes if outcome.over_budget}
    entries = [base[key]._replace(reason=BUDGET_REASON if key in over_budget else "failed", error=error)
               for key, error in failed_all.items()]
    entries += [base[key]._replace(reason="interrupted", error=error) for key, error in interrupted_all.items()]
    marker.merge(entries, drop=[outcome.job.key for outcome in (*batch.adopted.succeeded, *batch.fetched.succeeded)])
    job_of = batch.job_of
    return SyncResult(
        models_downloaded=[outcome.job.filename for outcome in batch.fetched.succeeded],
        models_failed=[(job_of[key].filename, error) for key, error in {**failed_all, **interrupted_all}.items()],
        outcomes=[*batch.adoptions, *batch.outcomes],
        interrupted=bool(interrupted_all),
        models_found=[outcome.job.filename for outcome in batch.adopted.succeeded],
        models_over_budget=[job_of[key].filename for key in failed_all if key in over_budget],
    )
