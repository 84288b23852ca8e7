"""What changed between two versions of the manifest.

`diff_manifests` is the pure definition on parsed manifests. `diff_manifest_bytes`
gives the same answer from the raw bytes of both versions while parsing only
the entries whose text changed (see chunks.py): a 10,000-model pyproject takes
~0.6 s to parse with tomllib, while a pull usually changes a few dozen lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from .model import (
    CRITICALITY_RANK,
    EMPTY_MANIFEST,
    Manifest,
    ManifestModel,
    WorkflowModelRef,
    parse_manifest,
)


class ManifestDiff(NamedTuple):
    """Models the new version needs that the old did not, and the like.

    `new` is the new manifest, or (after a differential read) the part of it
    that concerns the changed models: their global entries and every workflow
    entry naming them, which is all that missing-model detection needs.
    """

    newly_needed: Mapping[str, str] = MappingProxyType({})
    criticality_raised: Mapping[str, tuple[str, str]] = MappingProxyType({})
    new_intents: tuple[WorkflowModelRef, ...] = ()
    no_longer_needed: tuple[str, ...] = ()
    new: Manifest = EMPTY_MANIFEST

    @property
    def hashes_to_check(self) -> list[str]:
        """Hashes whose presence matters after this change, in a stable order."""
        return sorted(set(self.newly_needed) | set(self.criticality_raised))

    @property
    def is_empty(self) -> bool:
        return not (self.newly_needed or self.criticality_raised or self.new_intents or self.no_longer_needed)


def diff_manifests(old: Manifest, new: Manifest) -> ManifestDiff:
    old_needed, new_needed = old.needed(), new.needed()
    newly = {h: c for h, c in new_needed.items() if h not in old_needed}
    raised = {
        h: (old_needed[h], c)
        for h, c in new_needed.items()
        if h in old_needed and CRITICALITY_RANK[c] > CRITICALITY_RANK[old_needed[h]]
    }
    old_intents = {ref.identity for ref in old.refs if ref.status == "unresolved"}
    new_intents = tuple(ref for ref in new.intents if ref.identity not in old_intents)
    gone = tuple(sorted(h for h in old_needed if h not in new_needed))
    return ManifestDiff(newly, raised, new_intents, gone, new)


def diff_manifest_bytes(
    old: bytes | memoryview | None,
    new: bytes | memoryview | None,
    old_label: str = "old pyproject.toml",
    new_label: str = "new pyproject.toml",
) -> ManifestDiff:
    """diff_manifests over raw bytes, reading only what changed when it can.

    Either version may be a memoryview (of a git blob: GitRepo.read_blob_view), which the
    differential read decodes without copying it first. Raises ManifestError when the new
    version is not readable TOML. An old version that does not parse counts as empty
    (everything is new).
    """
    from .differential import ChunkFallback, differential_diff
    from ..errors import ManifestError

    new_bytes = new or b""
    if len(old or b"") == len(new_bytes) and old == new_bytes:  # a length differs first, not byte by byte
        return ManifestDiff(new=Manifest(label=new_label))
    if old:
        try:
            return differential_diff(old, new_bytes, old_label, new_label)
        except ChunkFallback:
            pass
    new_manifest = parse_manifest(bytes(new_bytes), new_label)
    try:
        old_manifest = parse_manifest(bytes(old), old_label) if old else EMPTY_MANIFEST
    except ManifestError:
        old_manifest = EMPTY_MANIFEST
    return diff_manifests(old_manifest, new_manifest)


def partial_manifest(
    models: Mapping[str, ManifestModel], refs: list[WorkflowModelRef], problems: list[str], label: str,
    dialect: str = "comfydock",
) -> Manifest:
    workflows = tuple(dict.fromkeys(ref.workflow for ref in refs if not ref.is_environment))
    return Manifest(
        models=dict(models), refs=tuple(refs), workflows=workflows, problems=tuple(problems), label=label,
        has_comfydock=True, dialect=dialect,
    )
