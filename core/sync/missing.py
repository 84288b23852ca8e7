"""Which models the manifest needs that this machine does not have.

A model is missing when a resolved workflow entry names a hash with no indexed
location existing on disk (even a hash the global table lacks: that is also a
manifest problem, and such a model cannot be downloaded). Missing models are
grouped by hash. Unresolved entries with sources are download intents; without
sources (and not optional) they are "not found". `detect_missing_models` only
reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

from ..errors import UnsafeManifestValue
from ..store.index import ModelIndex
from ..manifest.model import CRITICALITY_RANK, ENVIRONMENT, Manifest, ManifestModel, WorkflowModelRef, strongest

class MissingModelInfo(NamedTuple):
    """ComfyDock's record of a missing model: the global entry and who needs it."""

    model: ManifestModel
    workflow_names: tuple[str, ...]
    criticality: str
    can_download: bool

    @property
    def is_required(self) -> bool:
        return self.criticality == "required"

    @property
    def hash(self) -> str:
        return self.model.hash

    @property
    def named_workflows(self) -> tuple[str, ...]:
        """The workflows needing it, without ComfyGit's environment-level entry (0.7.1's list)."""
        return tuple(name for name in self.workflow_names if name != ENVIRONMENT)

    @property
    def needed_by(self) -> str:
        """Who needs it, for people: the workflows, and "the environment" for an environment-level model."""
        names = list(self.named_workflows) + (["the environment"] if ENVIRONMENT in self.workflow_names else [])
        return ", ".join(names)


class MissingReport(NamedTuple):
    missing: tuple[MissingModelInfo, ...] = ()
    intents: tuple[WorkflowModelRef, ...] = ()
    not_found: tuple[WorkflowModelRef, ...] = ()
    problems: tuple[str, ...] = ()
    satisfied_intents: tuple[WorkflowModelRef, ...] = ()

    @property
    def downloadable(self) -> tuple[MissingModelInfo, ...]:
        return tuple(m for m in self.missing if m.can_download)

    @property
    def unavailable(self) -> tuple[MissingModelInfo, ...]:
        return tuple(m for m in self.missing if not m.can_download)

    @property
    def in_sync(self) -> bool:
        return not (self.missing or self.intents or self.not_found)


def _order(info: MissingModelInfo) -> tuple[int, str]:
    return (-CRITICALITY_RANK[info.criticality], info.model.filename)


def _described_by_workflows(model_hash: str, refs: list[WorkflowModelRef]) -> ManifestModel:
    """A hash the global table lacks (a manifest problem, reported as such) is still a model
    the workflows need: described by its workflow entries, without size or sources."""
    ref = min(refs, key=lambda r: (r.filename, r.target_path))
    return ManifestModel(model_hash, ref.filename, None, ref.target_path, ref.category)


def detect_missing_models(
    manifest: Manifest, index: ModelIndex, hashes: Iterable[str] | None = None
) -> MissingReport:
    """What `manifest` needs and the index cannot show on disk (read-only).

    `hashes` narrows the check (the hook passes the hashes a pull touched).
    """
    wanted = set(hashes) if hashes is not None else None
    needers: dict[str, list[WorkflowModelRef]] = {}
    for ref in manifest.refs:
        if ref.is_resolved and ref.hash is not None:
            if wanted is None or ref.hash in wanted:
                needers.setdefault(ref.hash, []).append(ref)
    present = index.present(needers)
    missing = []
    for model_hash, refs in needers.items():
        if model_hash in present:
            continue
        model = manifest.models.get(model_hash) or _described_by_workflows(model_hash, refs)
        criticality = strongest(*(ref.criticality for ref in refs))
        workflows = tuple(dict.fromkeys(ref.workflow for ref in refs))
        missing.append(MissingModelInfo(model, workflows, criticality, bool(model.sources)))
    missing.sort(key=_order)

    intents = [ref for ref in manifest.refs if ref.is_intent]
    done = index.present_by_source(url for ref in intents for url in ref.sources)
    # One pass, no membership test on records: `ref in tuple` compares dataclasses field by
    # field, which made 20,000 intents take minutes (issue 10).
    open_intents: list[WorkflowModelRef] = []
    satisfied: list[WorkflowModelRef] = []
    for ref in intents:
        (satisfied if any(url in done for url in ref.sources) else open_intents).append(ref)
    not_found = tuple(
        ref
        for ref in manifest.refs
        if ref.status == "unresolved" and not ref.sources and ref.criticality != "optional"
    )
    return MissingReport(tuple(missing), tuple(open_intents), not_found, manifest.problems, tuple(satisfied))


def on_disk_unindexed(models_dir: str | os.PathLike[str], missing: Iterable[MissingModelInfo]) -> tuple[MissingModelInfo, ...]:
    """Missing models whose file already lies at its target path with the manifest's size: the
    index does not know it yet (`cfd index scan`, or `cfd repair` checks and indexes it)."""
    from ..download.safety import target_path  # path rules and URL checks: only when something is missing

    found = []
    for info in missing:
        try:
            path = target_path(models_dir, info.model.relative_path)
            size = path.stat().st_size if path.is_file() else None
        except (UnsafeManifestValue, OSError):
            continue
        if size is not None and (info.model.size is None or size == info.model.size):
            found.append(info)
    return tuple(found)
