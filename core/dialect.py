"""Which environment manager wrote a pyproject.toml: ComfyGit (0.7.x) or ComfyDock (1.0.x).

ComfyDock was renamed ComfyGit. The two write the same model tables under a different
`[tool.<name>]` table, keep their workspace under a different home and cache folder, and
key models by a different sampled hash (BLAKE3 vs xxh3_128), so their indexes (schema
9 vs 10) never hold each other's hashes. Everything that differs lives here.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import ManifestError


class Dialect(NamedTuple):
    name: str  # "comfygit" | "comfydock": the `[tool.<name>]` table, and what `--json` says
    title: str  # for people
    home_env: str  # workspace root override
    default_home: str  # below ~
    cache_dir: str  # below the workspace root: holds models.db
    index_schema: int  # the index's schema_info version
    short_hash: str  # the sampled-hash algorithm keying [tool.<name>.models]

    @property
    def models_table(self) -> str:
        return f"tool.{self.name}.models"

    @property
    def workflows_table(self) -> str:
        return f"tool.{self.name}.workflows"


COMFYDOCK = Dialect("comfydock", "ComfyDock", "COMFYDOCK_HOME", "comfydock", "comfydock_cache", 9, "blake3_sample")
COMFYGIT = Dialect("comfygit", "ComfyGit", "COMFYGIT_HOME", "comfygit", "comfygit_cache", 10, "xxh3_128_sample_v1")
DIALECTS = {d.name: d for d in (COMFYGIT, COMFYDOCK)}
BY_SCHEMA = {d.index_schema: d for d in (COMFYGIT, COMFYDOCK)}

# A table header or dotted key that opens `tool.<name>` (bare or quoted parts, any spacing).
_MENTION_RE = {
    d.name: re.compile(rb"""(?m)^[ \t]*\[{0,2}[ \t]*["']?tool["']?[ \t]*\.[ \t]*["']?""" + d.name.encode() + rb"""["']?[ \t]*[.\]=]""")
    for d in DIALECTS.values()
}


def mentioned(data: bytes) -> list[Dialect]:
    """The dialects whose table a document's text opens (a cheap look, no parsing)."""
    return [d for d in DIALECTS.values() if d.name.encode() in data and _MENTION_RE[d.name].search(data)]


def detect(data: bytes, label: str = "pyproject.toml") -> Dialect | None:
    """The dialect of pyproject.toml bytes; None when neither table is there.

    Both tables at once is an error: which one to sync would be a guess.
    """
    found = mentioned(data)
    if len(found) > 1:
        raise both_tables_error(label)
    return found[0] if found else None


def both_tables_error(label: str) -> ManifestError:
    return ManifestError(
        f"{label} has both [tool.comfygit] and [tool.comfydock] tables",
        "keep the one your environment manager uses (ComfyGit writes [tool.comfygit]) and delete the other",
    )


def of_document(tool: object, label: str = "pyproject.toml") -> Dialect | None:
    """The dialect of a parsed document's `tool` table (the definition `detect` approximates)."""
    if not isinstance(tool, dict):
        return None
    found = [d for d in DIALECTS.values() if d.name in tool]
    if len(found) > 1:
        raise both_tables_error(label)
    return found[0] if found else None
BY_SHORT_HASH = {d.short_hash: d for d in (COMFYGIT, COMFYDOCK)}
