"""The work tree's pyproject.toml, parsed once per content.

Shared by `cfd status`, `cfd repair` and the agent (daemon and queue): all read
the working manifest through `load_working_manifest` and its pickle cache.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import fields
from operator import attrgetter
from pathlib import Path
from typing import Any

from ..environment import Environment
from ..errors import ManifestError
from ..files import write_atomic
from ..manifest.model import Manifest, ManifestModel, WorkflowModelRef, parse_manifest
from ..state import clone_state

_CACHE_FORMAT = 3  # 3: dialect, schema_version, environment-level models
_MODEL_FIELDS = tuple(f.name for f in fields(ManifestModel))
_REF_FIELDS = tuple(f.name for f in fields(WorkflowModelRef))


def load_working_manifest(env: Environment) -> Manifest:
    """The work tree's pyproject.toml, parsed (cached per content in the git dir).

    A 10,000-model manifest takes ~0.3 s to parse even on the fast path; status
    runs often and the file rarely changes, so the parsed records are kept, as
    plain tuples (unpickling 20,000 frozen dataclasses alone took ~0.3 s), keyed
    by a digest of the bytes.
    """
    try:
        data = env.pyproject.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {env.pyproject}: {exc.strerror}", "check the environment path") from None
    digest = hashlib.sha1(data).hexdigest()
    cache = clone_state(env.git_dir).manifest_cache
    try:
        version, cached_digest, payload = pickle.loads(cache.read_bytes())
        if version == _CACHE_FORMAT and cached_digest == digest:
            return _from_cache(payload)
    except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        pass
    manifest = parse_manifest(data, str(env.pyproject))
    if len(data) > 64 * 1024:
        _store_cache(cache, digest, manifest)
    return manifest


def _to_cache(manifest: Manifest) -> tuple[Any, ...]:
    model_values, ref_values = attrgetter(*_MODEL_FIELDS), attrgetter(*_REF_FIELDS)
    return (
        [model_values(model) for model in manifest.models.values()],
        [ref_values(ref) for ref in manifest.refs],
        manifest.workflows,
        manifest.problems,
        manifest.label,
        manifest.has_comfydock,
        manifest.dialect,
        manifest.schema_version,
    )


def _from_cache(payload: tuple[Any, ...]) -> Manifest:
    models, refs, workflows, problems, label, has_comfydock, dialect, schema_version = payload
    return Manifest(
        models={values[0]: ManifestModel(*values) for values in models},
        refs=tuple(WorkflowModelRef(*values) for values in refs),
        workflows=tuple(workflows),
        problems=tuple(problems),
        label=label,
        has_comfydock=has_comfydock,
        dialect=dialect,
        schema_version=schema_version,
    )


def _store_cache(cache: Path, digest: str, manifest: Manifest) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        payload = pickle.dumps((_CACHE_FORMAT, digest, _to_cache(manifest)), protocol=pickle.HIGHEST_PROTOCOL)
        write_atomic(cache, payload, durable=False)  # a cache: lost, it is rebuilt
    except OSError:
        pass  # a cache is an optimisation only
