"""`cfd status`: the truth about one environment, as data (the CLI prints it)."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .environment import Environment
from .errors import ManifestError
from .index import ModelIndex
from .manifest import Manifest, WorkflowModelRef, parse_manifest
from .marker import Marker, PendingEntry
from .missing import MissingModelInfo, MissingReport, detect_missing_models
from .urls import redact_url

_CACHE_NAME = "manifest-cache.pickle"
_CACHE_FORMAT = 1


def load_working_manifest(env: Environment) -> Manifest:
    """The work tree's pyproject.toml, parsed (cached per content in the git dir).

    A 10,000-model manifest takes ~0.6 s to parse; status runs often and the
    file rarely changes, so the parsed form is kept keyed by a digest of the bytes.
    """
    try:
        data = env.pyproject.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {env.pyproject}: {exc.strerror}", "check the environment path") from None
    digest = hashlib.sha1(data).hexdigest()
    cache = env.state_dir / _CACHE_NAME
    try:
        with open(cache, "rb") as handle:
            version, cached_digest, manifest = pickle.load(handle)
        if version == _CACHE_FORMAT and cached_digest == digest and isinstance(manifest, Manifest):
            return manifest
    except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        pass
    manifest = parse_manifest(data, str(env.pyproject))
    if len(data) > 64 * 1024:
        _store_cache(cache, digest, manifest)
    return manifest


def _store_cache(cache: Path, digest: str, manifest: Manifest) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temp = cache.with_name(f".{_CACHE_NAME}.{os.getpid()}")
        with open(temp, "wb") as handle:
            pickle.dump((_CACHE_FORMAT, digest, manifest), handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temp, cache)
    except OSError:
        pass  # a cache is an optimisation only


@dataclass(frozen=True)
class WorkflowStatus:
    name: str
    missing: tuple[MissingModelInfo, ...]
    intents: tuple[WorkflowModelRef, ...]
    not_found: tuple[WorkflowModelRef, ...]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.intents or self.not_found)

    @property
    def need_download(self) -> int:
        return sum(1 for m in self.missing if m.can_download) + len(self.intents)


@dataclass(frozen=True)
class StatusReport:
    env: Environment
    manifest: Manifest
    report: MissingReport
    pending: tuple[PendingEntry, ...]
    workflows: tuple[WorkflowStatus, ...]

    @property
    def in_sync(self) -> bool:
        return self.report.in_sync

    @property
    def bytes_to_download(self) -> int:
        return sum(m.model.size or 0 for m in self.report.downloadable)

    def to_json(self) -> dict[str, Any]:
        return {
            "in_sync": self.in_sync,
            "environment": str(self.env.repo),
            "models_dir": str(self.env.models_dir),
            "index": str(self.env.index_path),
            "missing": [missing_to_json(m) for m in self.report.missing],
            "intents": [intent_to_json(r) for r in self.report.intents],
            "not_found": [intent_to_json(r) for r in self.report.not_found],
            "problems": list(self.report.problems),
            "pending": [p.to_json() for p in self.pending],
            "workflows": [
                {
                    "name": w.name,
                    "ok": w.ok,
                    "missing": [m.model.hash for m in w.missing],
                    "intents": [r.filename for r in w.intents],
                    "not_found": [r.filename for r in w.not_found],
                }
                for w in self.workflows
            ],
            "bytes_to_download": self.bytes_to_download,
        }


def missing_to_json(info: MissingModelInfo) -> dict[str, Any]:
    model = info.model
    return {
        "hash": model.hash,
        "filename": model.filename,
        "relative_path": model.relative_path,
        "size": model.size,
        "criticality": info.criticality,
        "workflows": list(info.workflow_names),
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


def compute_status(env: Environment, warn: Any = None) -> StatusReport:
    manifest = load_working_manifest(env)
    with ModelIndex(env.index_path, env.models_dir) as index:
        report = detect_missing_models(manifest, index)
    pending = tuple(Marker(env.git_dir, warn).read())
    workflows = []
    for name in manifest.workflows:
        workflows.append(
            WorkflowStatus(
                name=name,
                missing=tuple(m for m in report.missing if name in m.workflow_names),
                intents=tuple(r for r in report.intents if r.workflow == name),
                not_found=tuple(r for r in report.not_found if r.workflow == name),
            )
        )
    return StatusReport(env, manifest, report, pending, tuple(workflows))
