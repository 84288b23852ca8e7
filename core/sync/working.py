"""The work tree's pyproject.toml, parsed once per content.

Shared by `cfd status`, `cfd repair` and the agent (daemon and queue): all read
the working manifest through `load_working_manifest` and its cache (manifestcache).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..environment import Environment
from ..errors import ManifestError
from ..files import write_atomic
from ..manifest.model import Manifest, parse_manifest
from ..state import clone_state
from . import manifestcache

_MAX_CACHE_RATIO = 4  # cache bytes per manifest byte read at most


def load_working_manifest(env: Environment) -> Manifest:
    """The work tree's pyproject.toml, parsed (cached per content in the git dir).

    A 10,000-model manifest takes ~0.3 s to parse even on the fast path; status
    runs often and the file rarely changes, so the parsed records are kept
    (manifestcache: a column per field), keyed by a digest of the bytes.
    """
    try:
        data = env.pyproject.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {env.pyproject}: {exc.strerror}", "check the environment path") from None
    digest = hashlib.sha1(data).hexdigest()
    cache = clone_state(env.git_dir).manifest_cache
    try:
        with open(cache, "rb") as handle:
            # Bounded: the cache is a third smaller than the file it stands for; more is not ours.
            cached_bytes = handle.read(_MAX_CACHE_RATIO * len(data) + 1)
        cached = manifestcache.decode(cached_bytes, digest) if len(cached_bytes) <= _MAX_CACHE_RATIO * len(data) else None
    except OSError:
        cached = None  # no cache yet (or unreadable): parsed and written below
    if cached is not None:
        return cached
    manifest = parse_manifest(data, str(env.pyproject))
    if len(data) > 64 * 1024:
        _store_cache(cache, digest, manifest)
    return manifest


def _store_cache(cache: Path, digest: str, manifest: Manifest) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, manifestcache.encode(digest, manifest), durable=False)  # a cache: lost, it is rebuilt
    except OSError:
        pass  # a cache is an optimisation only
