"""Shared test helpers: real git scenarios and ComfyDock manifests (import as `helpers`)."""

from __future__ import annotations

from helpers.gitscenario import Clone, Scenario, run_git
from helpers.manifest import ManifestBuilder, big_manifest, make_model, short_hash_for

__all__ = [
    "Clone",
    "ManifestBuilder",
    "Scenario",
    "big_manifest",
    "make_model",
    "run_git",
    "short_hash_for",
]
