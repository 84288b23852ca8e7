"""After git moved HEAD: what the new manifest needs, and what to do about it.

Shared by the hooks and the agent. Both manifests are read from git objects
(never the work tree), diffed differentially, and only the hashes the change
touched are checked against the index. Then, per `cfd.onPull`:
`download` fetches what `cfd.models` selects now, `background` hands it to the
agent, `defer` only records. Whatever is not downloaded goes to the pending
marker, so `cfd repair` can finish the job.

`<git_dir>/cfd/last-synced` holds the pyproject.toml blob id last acted on, so
several hooks firing for one operation (or a hook and the agent) act once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..manifest.diff import ManifestDiff, diff_manifest_bytes
from ..environment import Environment
from ..errors import ManifestError
from ..files import write_atomic
from ..gitobjects import MANIFEST_PATH, GitRepo, open_repo
from ..state import clone_state
from ..store.index import ModelIndex
from ..manifest.model import WorkflowModelRef
from .marker import Marker, PendingEntry, intent_key
from .missing import MissingModelInfo, MissingReport, detect_missing_models
from .skipped import clear_skipped, record_skipped
from .strategy import Selection, select_for_download

# How a front end starts the agent for an environment (the hooks pass the agent package's
# start_in_background); True when it is (being) started. Core cannot do it: it imports no agent.
AgentStarter = Callable[[Environment], bool]

if TYPE_CHECKING:
    from ..download.types import DownloadCallbacks


# Outcome actions.
ALREADY_SYNCED = "already-synced"  # last-synced == the new blob: another hook did it
UNCHANGED = "unchanged"  # same pyproject.toml blob in both commits
NO_MANIFEST = "no-manifest"  # the new commit has no pyproject.toml
BROKEN_MANIFEST = "broken-manifest"  # the new pyproject.toml does not parse
TOO_LARGE = "too-large"  # the new pyproject.toml is over cfd.maxManifestSize: left to `cfd repair`
SYNCED = "synced"


class PullSyncOutcome(NamedTuple):
    trigger: str
    action: str
    mode: str = "download"
    strategy: str = "required"
    old_commit: str | None = None
    new_commit: str | None = None
    new_blob: str | None = None
    missing: tuple[MissingModelInfo, ...] = ()  # newly needed and absent (incl. not downloadable)
    intents: tuple[WorkflowModelRef, ...] = ()  # new download intents
    downloaded: tuple[str, ...] = ()  # filenames
    found: tuple[str, ...] = ()  # filenames already on disk: checked and indexed, not downloaded
    failed: tuple[tuple[str, str], ...] = ()  # (filename, error)
    over_budget: tuple[str, ...] = ()  # filenames, of `failed`, that a hook's time budget stopped (pending)
    pending: tuple[PendingEntry, ...] = ()  # what this run left in the marker
    handed_to_agent: int = 0
    agent_started: bool = False
    warnings: tuple[str, ...] = ()
    checked: int = 0  # hashes checked against the index

    @property
    def needs_repair(self) -> bool:
        """Something is left that only `cfd repair` (not the agent) will fetch."""
        return any(entry.reason != "background" for entry in self.pending)


# -- last-synced --------------------------------------------------------------


def last_synced_path(git_dir: Path) -> Path:
    return clone_state(git_dir).last_synced


def read_last_synced(git_dir: Path) -> str | None:
    try:
        # bytes.decode: a text file opened as ASCII would load the codec module, ~0.2 ms of a hook
        value = last_synced_path(git_dir).read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value or None


def write_last_synced(git_dir: Path, blob_id: str) -> None:
    """Atomic, and newline-terminated so the shim's `read` builtin takes it whole."""
    path = last_synced_path(git_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not durable: a value lost to a power cut only makes the next hook diff again.
    write_atomic(path, blob_id + "\n", durable=False)


# -- marker entries -----------------------------------------------------------


def _pending_entries(
    models: Sequence[MissingModelInfo], intents: Sequence[WorkflowModelRef], reason: str, trigger: str
) -> list[PendingEntry]:
    if not models and not intents:
        return []  # nothing to convert: spare the hook importing core.repair
    from .fetch import pending_entries  # the canonical conversion; not imported when nothing is pending

    return list(pending_entries(models, intents, reason, trigger))


# -- the sync -----------------------------------------------------------------


class _Plan:
    __slots__ = ("report", "selection", "satisfied_keys")

    def __init__(self, report: MissingReport, selection: Selection, satisfied_keys: list[str]) -> None:
        self.report = report  # narrowed to what the pull changed (its intents: the new ones)
        self.selection = selection
        self.satisfied_keys = satisfied_keys


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "(none)"


def sync_between(
    env: Environment,
    old_commit: str | None,
    new_commit: str,
    *,
    trigger: str,
    mode: str | None = None,
    strategy: str | None = None,
    callbacks: DownloadCallbacks | None = None,
    cancel: threading.Event | None = None,
    repo: GitRepo | None = None,
    time_budget: float | None = None,
    start_agent: AgentStarter | None = None,
) -> PullSyncOutcome:
    """Sync models after HEAD moved from `old_commit` to `new_commit`.

    The diff starts from the last-synced blob when git still has it, else from
    `old_commit` (None or unresolvable: the empty manifest). Never
    raises for a bad manifest (the outcome carries a warning); configuration
    problems (no models dir) raise CfdError. KeyboardInterrupt propagates
    after the marker already lists what was not downloaded.
    """
    deadline = None if time_budget is None else time.monotonic() + time_budget  # a hook's: counted from here
    out = PullSyncOutcome(
        trigger=trigger, action=NO_MANIFEST, mode=mode or env.settings["cfd.onPull"], strategy=strategy or env.settings["cfd.models"]
    )
    repo = repo or open_repo(env.repo)
    new = repo.resolve_commit(new_commit)
    if new is None:
        return out._replace(warnings=(f"cannot resolve {new_commit}",))
    old = repo.resolve_commit(old_commit)
    new_blob = repo.blob_id(new, MANIFEST_PATH)
    out = out._replace(old_commit=old, new_commit=new, new_blob=new_blob)
    if new_blob is None:
        return out
    last = read_last_synced(env.git_dir)
    if last == new_blob:
        return out._replace(action=ALREADY_SYNCED)
    old_blob = repo.blob_id(old, MANIFEST_PATH)
    if old_blob == new_blob:
        return out._replace(action=UNCHANGED)
    # Diff from what this clone last acted on when git still has it: that also
    # covers moves no hook saw (reset, stash, libgit2) and local manifest commits.
    old_label = f"pyproject.toml at {_short(old)}"
    if last and last != old_blob and repo.has_blob(last):
        old_blob, old_label = last, "pyproject.toml as last synced"
    # Memory grows with the manifest: above the ceiling, read nothing (issue 10).
    limit = env.settings["cfd.maxManifestSize"]
    new_size = repo.blob_size(new_blob) or 0
    if limit and new_size > limit:
        skipped = record_skipped(env.git_dir, new_blob, new_size, limit, trigger)
        write_last_synced(env.git_dir, new_blob)  # the other hooks of this operation need not look again
        return out._replace(action=TOO_LARGE, warnings=(skipped.message(),))
    if old_blob and limit and (repo.blob_size(old_blob) or 0) > limit:
        old_blob = None  # diff from nothing: every model of the new version is checked
    clear_skipped(env.git_dir)

    new_label = f"pyproject.toml at {_short(new)}"
    try:
        diff = diff_manifest_bytes(
            repo.read_blob_view(old_blob) if old_blob else None, repo.read_blob_view(new_blob), old_label, new_label
        )
    except ManifestError as exc:
        warning = f"{new_label} does not parse ({exc.message}); models were not synced. Fix it, commit, then run `cfd repair`"
        return out._replace(action=BROKEN_MANIFEST, warnings=(warning,))
    out = out._replace(action=SYNCED, warnings=tuple(diff.new.problems))

    if not diff.hashes_to_check and not diff.new_intents:
        notes = _drop_from_marker(env, diff.no_longer_needed) if diff.no_longer_needed else []
        write_last_synced(env.git_dir, new_blob)
        return out._replace(warnings=(*notes, *out.warnings))
    return _act(env, diff, _plan(env, diff, out.strategy), out, new_blob, callbacks, cancel, deadline, start_agent)


def _plan(env: Environment, diff: ManifestDiff, strategy: str) -> _Plan:
    with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
        report = detect_missing_models(diff.new, index, diff.hashes_to_check)
    from ..mirror.availability import mark_mirrored  # no mirror configured: returns at once, imports nothing heavy

    report = mark_mirrored(report, env)
    wanted = {ref.identity for ref in diff.new_intents}
    intents = [ref for ref in report.intents if ref.identity in wanted]
    scoped = MissingReport(report.missing, tuple(intents), (), report.problems)
    missing = {m.hash for m in report.missing}
    return _Plan(
        report=scoped,
        selection=select_for_download(scoped, strategy),
        satisfied_keys=[h for h in diff.hashes_to_check if h not in missing]
        + [intent_key(r) for r in report.satisfied_intents if r.identity in wanted],
    )


def _act(
    env: Environment,
    diff: ManifestDiff,
    plan: _Plan,
    out: PullSyncOutcome,
    new_blob: str,
    callbacks: DownloadCallbacks | None,
    cancel: threading.Event | None,
    deadline: float | None = None,
    start_agent: AgentStarter | None = None,
) -> PullSyncOutcome:
    trigger, mode = out.trigger, out.mode
    selection = plan.selection
    selected_reason = {"download": "interrupted", "background": "background", "defer": "deferred"}[mode]
    entries = (
        _pending_entries(selection.models, selection.intents, selected_reason, trigger)
        + _pending_entries(selection.filtered_models, selection.filtered_intents, "filtered", trigger)
        + _pending_entries(plan.report.unavailable, (), "no-source", trigger)
    )
    # Recorded before any download: a kill or Ctrl-C leaves the marker saying what is left.
    notes: list[str] = []  # a corrupt marker is set aside: the hook says so
    marker = Marker(env.git_dir, notes.append)
    marker.merge(entries, drop=[*plan.satisfied_keys, *diff.no_longer_needed])
    write_last_synced(env.git_dir, new_blob)
    out = out._replace(missing=plan.report.missing, intents=plan.report.intents, checked=len(diff.hashes_to_check))

    chosen = selection.chosen
    if mode == "download" and chosen:
        out = _download(env, plan, marker, out, callbacks, cancel, deadline)
    elif mode == "background" and chosen:
        # The agent itself syncs with trigger "agent": it must not spawn another.
        started = trigger == "agent" or (start_agent is not None and start_agent(env))
        out = out._replace(handed_to_agent=chosen, agent_started=started)
    keys = {e.key for e in entries}
    pending = tuple(e for e in marker.read() if e.key in keys)
    return out._replace(pending=pending, warnings=(*dict.fromkeys(notes), *out.warnings))


def _download(
    env: Environment, plan: _Plan, marker: Marker, out: PullSyncOutcome, callbacks: DownloadCallbacks | None, cancel: threading.Event | None,
    deadline: float | None = None,
) -> PullSyncOutcome:
    from .fetch import sync_models  # the engine's value types only; requests comes when something downloads

    synced = sync_models(
        env, plan.selection.models, plan.selection.intents, callbacks=callbacks, cancel=cancel, trigger=out.trigger,
        deadline=deadline,
    )
    return out._replace(downloaded=tuple(synced.models_downloaded), found=tuple(synced.models_found),
                   failed=tuple(synced.models_failed), over_budget=tuple(synced.models_over_budget))


def _drop_from_marker(env: Environment, keys: Sequence[str]) -> list[str]:
    notes: list[str] = []
    marker = Marker(env.git_dir, notes.append)
    if marker.path.exists():
        marker.merge((), drop=keys)
    return notes
