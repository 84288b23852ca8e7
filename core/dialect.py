"""Which environment manager wrote a pyproject.toml: ComfyGit (0.7.x) or ComfyDock (1.0.x).

ComfyDock was renamed ComfyGit. The two write the same model tables under a different
`[tool.<name>]` table, keep their workspace under a different home and cache folder, and
key models by a different sampled hash (BLAKE3 vs xxh3_128), so their indexes (schema
9 vs 10) never hold each other's hashes. Everything that differs lives here.
"""

from __future__ import annotations

import re

from .errors import ManifestError


class Dialect:
    """One environment manager's conventions (two instances: COMFYDOCK and COMFYGIT)."""

    __slots__ = ("name", "title", "home_env", "default_home", "cache_dir", "index_schema", "short_hash")

    def __init__(self, name: str, title: str, home_env: str, default_home: str, cache_dir: str, index_schema: int,
                 short_hash: str) -> None:
        self.name = name  # "comfygit" | "comfydock": the `[tool.<name>]` table, and what `--json` says
        self.title = title  # for people
        self.home_env = home_env  # workspace root override
        self.default_home = default_home  # below ~
        self.cache_dir = cache_dir  # below the workspace root: holds models.db
        self.index_schema = index_schema  # the index's schema_info version
        self.short_hash = short_hash  # the sampled-hash algorithm keying [tool.<name>.models]

    def __repr__(self) -> str:
        return f"Dialect({self.name!r})"

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

# A table header or dotted key that opens `tool.<name>` (bare or quoted parts, any spacing);
# compiled on first use, so only for a name the text holds.
_MENTION = {
    d.name: r"""(?m)^[ \t]*\[{0,2}[ \t]*["']?tool["']?[ \t]*\.[ \t]*["']?""" + d.name + r"""["']?[ \t]*[.\]=]"""
    for d in DIALECTS.values()
}


_FIRST_MENTION = _MENTION["comfygit"].replace("comfygit", "(" + "|".join(DIALECTS) + ")")


def first_mentioned(text: str) -> Dialect | None:
    """The dialect whose table the text opens first: one search that stops there (`mentioned`
    looks through all of it for each name). The caller checks the rest names no other."""
    match = re.search(_FIRST_MENTION, text)
    return DIALECTS[match.group(1)] if match else None


def mentioned(data: bytes | str) -> list[Dialect]:
    """The dialects whose table a document's text (bytes, or already decoded) opens (a cheap look, no parsing)."""
    def same_kind(text: str) -> str | bytes:
        return text if isinstance(data, str) else text.encode()

    return [d for d in DIALECTS.values() if same_kind(d.name) in data and re.search(same_kind(_MENTION[d.name]), data)]


def detect(data: bytes | str, label: str = "pyproject.toml") -> Dialect | None:
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
