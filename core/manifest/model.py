"""Reading the model tables of a ComfyGit or ComfyDock pyproject.toml into typed records.

Both dialects (see dialect.py) share the format; ComfyGit 0.7 adds `schema_version`,
a model-level `criticality` (an environment-level model: needed with no workflow naming
it) and `declared_by` on workflow entries, and may write `relative_path` with `\\`.

The input is bytes, so the same code reads a working file or a git blob. A
document that is not TOML at all raises ManifestError (with file and line); a
document that is TOML but has wrong types, missing fields or dangling hashes
still yields a Manifest whose `problems` say what is wrong and where: one bad
entry never hides the good ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from . import fasttoml
from .. import dialect as dialects
from ..errors import ManifestError
from ..text import sanitize

CRITICALITY_RANK = {"optional": 1, "flexible": 2, "required": 3}
DEFAULT_CRITICALITY = "flexible"
STATUSES = ("resolved", "unresolved")
ENVIRONMENT_CRITICALITIES = ("required", "optional")  # 0.7.1's ManifestModel accepts only these
ENVIRONMENT = ""  # the workflow name of an environment-level model's entry (no workflow has it)
MODELS_TABLE = "tool.comfydock.models"
WORKFLOWS_TABLE = "tool.comfydock.workflows"
_CONFLICT = rb"(?m)^(<{7}|={7}|>{7})(?: |\r?$)"  # compiled on first use: the differential diff never reads it


def strongest(*criticalities: str) -> str:
    """The strongest criticality given (required > flexible > optional; the first of equals).

    The one rule wherever several workflow entries need one model."""
    return max(criticalities, key=lambda value: CRITICALITY_RANK.get(value, 0))


class ManifestModel(NamedTuple):
    """One entry of the global `[tool.comfydock.models]` table."""

    hash: str
    filename: str
    size: int | None
    relative_path: str
    category: str | None = None
    sources: tuple[str, ...] = ()
    blake3: str | None = None
    sha256: str | None = None
    criticality: str | None = None  # ComfyGit: needed by the environment itself

    @property
    def source_set(self) -> frozenset[str]:
        """Sources compare as a set: ComfyGit 0.3.x wrote them in unstable order."""
        return frozenset(self.sources)


model_row = tuple  # ManifestModel -> its field values, in order


class ModelTable(Mapping[str, ManifestModel]):
    """A models table, hash -> ManifestModel, each record made when first looked up.

    A cold `cfd status` reads 10,000 entries and looks at the ~1,500 its workflows name;
    making every frozen record up front took as long as checking them all. `rows` holds
    each model's field values (as ManifestModel takes them), already checked.
    """

    __slots__ = ("rows", "_made")

    def __init__(self, rows: dict[str, tuple[Any, ...]], made: dict[str, ManifestModel] | None = None) -> None:
        self.rows = rows
        self._made = made if made is not None else {}

    def __getitem__(self, key: str) -> ManifestModel:
        model = self._made.get(key)
        if model is None:
            model = self._made[key] = ManifestModel(*self.rows[key])
        return model

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self.rows else default

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ModelTable({dict(self.items())!r})"


class WorkflowModelRef(NamedTuple):
    """One `[[tool.comfydock.workflows.<wf>.models]]` entry."""

    workflow: str
    filename: str
    category: str | None
    criticality: str
    status: str
    hash: str | None = None
    sources: tuple[str, ...] = ()
    relative_path: str | None = None
    node_id: str | None = None
    widget_idx: int | None = None
    declared_by: str | None = None  # ComfyGit: "manual" for a dependency no graph node names

    @property
    def is_environment(self) -> bool:
        """Stands for an environment-level model (no workflow names it)."""
        return self.workflow == ENVIRONMENT

    @property
    def is_resolved(self) -> bool:
        return self.status == "resolved"

    @property
    def is_intent(self) -> bool:
        """An unresolved entry with sources: a download the author asked for."""
        return self.status == "unresolved" and bool(self.sources)

    @property
    def identity(self) -> tuple[str, str | None, int | None, str | None]:
        """Stable across versions of the manifest: (workflow, node, widget).

        The filename only breaks ties when an entry names no node at all.
        """
        if self.node_id is None and self.widget_idx is None:
            return (self.workflow, None, None, self.filename)
        return (self.workflow, self.node_id, self.widget_idx, None)

    @property
    def target_path(self) -> str:
        """Where an intent lands below the models dir."""
        if self.relative_path:
            return self.relative_path
        return f"{self.category}/{self.filename}" if self.category else self.filename


class Manifest(NamedTuple):
    """The model-related content of one version of pyproject.toml."""

    models: Mapping[str, ManifestModel] = MappingProxyType({})  # shared by every empty manifest: read-only
    refs: tuple[WorkflowModelRef, ...] = ()
    workflows: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    label: str = "pyproject.toml"
    has_comfydock: bool = False  # has its dialect's tool table (either dialect)
    dialect: str | None = None  # "comfygit" | "comfydock"; None: neither table
    schema_version: int = 1  # ComfyGit's [tool.comfygit] schema_version (missing or invalid: 1)

    @property
    def intents(self) -> tuple[WorkflowModelRef, ...]:
        return tuple(ref for ref in self.refs if ref.is_intent)

    def needed(self) -> dict[str, str]:
        """Hash -> strongest criticality over every resolved workflow entry."""
        needed: dict[str, str] = {}
        for ref in self.refs:
            if ref.is_resolved and ref.hash is not None:
                previous = needed.get(ref.hash)
                needed[ref.hash] = ref.criticality if previous is None else strongest(previous, ref.criticality)
        return needed


EMPTY_MANIFEST = Manifest(label="(no pyproject.toml)")


def decode_toml(data: bytes, label: str) -> dict[str, Any]:
    """bytes -> TOML document, or a ManifestError that names file and line."""
    return _decode(data, label)[0]


def _decode(data: bytes, label: str) -> tuple[dict[str, Any], bool]:
    """The document, and whether none of its strings can hold a control character."""
    conflict = re.search(_CONFLICT, data)
    if conflict:
        line = data.count(b"\n", 0, conflict.start()) + 1
        raise ManifestError(
            f"{label}:{line}: merge-conflict marker '{conflict.group(1).decode()}' left in the file",
            "resolve the conflict in pyproject.toml and commit again",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(f"{label}:{line}: not valid UTF-8", "save pyproject.toml as UTF-8") from None
    try:
        return fasttoml.read(text)  # ComfyDock's usual layout several times faster, else tomllib
    except fasttoml.TOMLDecodeError as exc:
        raise ManifestError(f"{label}: invalid TOML: {exc}", "fix the syntax error in pyproject.toml") from None
    except RecursionError:
        raise ManifestError(f"{label}: TOML nested too deeply", "simplify pyproject.toml") from None


def parse_manifest(data: bytes, label: str = "pyproject.toml") -> Manifest:
    """Parse pyproject.toml bytes; raises ManifestError only for unreadable TOML."""
    doc, plain = _decode(data, label)
    return manifest_from_document(doc, label, plain)


def manifest_from_document(doc: Mapping[str, Any], label: str = "pyproject.toml", plain_strings: bool = False) -> Manifest:
    """`plain_strings`: no string can hold a control character (fasttoml.read says), so
    the reader need not look at each one."""
    from .reader import Reader  # the rules for each value; it imports this module's records

    reader = Reader(label)
    reader.plain_strings = plain_strings
    tool = doc.get("tool")
    found = dialects.of_document(tool, label)
    if found is None:
        return Manifest(label=label)
    reader.dialect = found
    comfydock = tool[found.name]
    if not isinstance(comfydock, dict):
        reader.problem(f"tool.{found.name}", "is not a table")
        return Manifest(label=label, problems=tuple(sanitize(p) for p in reader.problems), dialect=found.name)
    models = reader.model_table(comfydock.get("models", {}))
    workflows, refs = reader.workflows(comfydock.get("workflows", {}))
    for ref in refs:
        if ref.is_resolved and ref.hash is not None and ref.hash not in models:
            reader.problems.append(
                f"{label}: [{found.workflows_table}.{ref.workflow}.models] '{ref.filename}' names hash "
                f"{ref.hash}, which [{found.models_table}] lacks"
            )
    refs.extend(environment_refs(models))
    return Manifest(
        models=models,
        refs=tuple(refs),
        workflows=tuple(workflows),
        problems=tuple(sanitize(p) for p in reader.problems),  # they echo keys and names: shown as text
        label=label,
        has_comfydock=True,
        dialect=found.name,
        schema_version=schema_version(comfydock.get("schema_version")),
    )


def schema_version(value: Any) -> int:
    """0.7.1 reads `int(value)`, and 1 when that fails (so "2" is 2, 2.9 is 2)."""
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value) if isinstance(value, (int, float, str)) else 1
    except (ValueError, OverflowError):
        return 1


def environment_refs(models: Mapping[str, ManifestModel]) -> list[WorkflowModelRef]:
    """One resolved entry per environment-level model: needed with its own criticality,
    whichever workflows name it (so needed(), the diff and missing-model detection see it)."""
    rows = models.rows.values() if isinstance(models, ModelTable) else map(model_row, models.values())
    return [
        WorkflowModelRef(ENVIRONMENT, filename, category, criticality, "resolved", model_hash, sources, relative_path)
        for model_hash, filename, _size, relative_path, category, sources, _blake3, _sha256, criticality in rows
        if criticality is not None
    ]
