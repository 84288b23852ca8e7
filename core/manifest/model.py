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
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from . import fasttoml
from .. import dialect as dialects
from ..dialect import COMFYDOCK, Dialect
from ..errors import ManifestError
from ..text import sanitize

CRITICALITY_RANK = {"optional": 1, "flexible": 2, "required": 3}
DEFAULT_CRITICALITY = "flexible"
STATUSES = ("resolved", "unresolved")
ENVIRONMENT_CRITICALITIES = ("required", "optional")  # 0.7.1's ManifestModel accepts only these
ENVIRONMENT = ""  # the workflow name of an environment-level model's entry (no workflow has it)
MODELS_TABLE = "tool.comfydock.models"
WORKFLOWS_TABLE = "tool.comfydock.workflows"
_HASH_RE = re.compile(r"[0-9a-fA-F]{8,128}")  # fullmatch: `$` would let a trailing newline in
_CONFLICT_RE = re.compile(rb"^(<{7}|={7}|>{7})(?: |\r?$)", re.MULTILINE)
# C0/C1 controls and DEL: in a name they would forge output lines or drive the terminal
# (escape sequences) wherever cfd prints it; no real model file or workflow has them.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def strongest(*criticalities: str) -> str:
    """The strongest criticality given (required > flexible > optional; the first of equals).

    The one rule wherever several workflow entries need one model."""
    return max(criticalities, key=lambda value: CRITICALITY_RANK.get(value, 0))


@dataclass(frozen=True, slots=True)
class ManifestModel:
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


MODEL_FIELDS = tuple(f.name for f in fields(ManifestModel))
model_row = attrgetter(*MODEL_FIELDS)  # ManifestModel -> its field values, in order


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


@dataclass(frozen=True, slots=True)
class WorkflowModelRef:
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


@dataclass(frozen=True)
class Manifest:
    """The model-related content of one version of pyproject.toml."""

    models: Mapping[str, ManifestModel] = field(default_factory=dict)
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
    conflict = _CONFLICT_RE.search(data)
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
    fast = fasttoml.loads(text)  # ComfyDock's usual layout, several times faster; None when unsure
    if fast is not None:
        return fast, fasttoml.strings_are_plain(text)
    import tomllib  # the general reader: only for what the fast one declines

    try:
        return tomllib.loads(text), False
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{label}: invalid TOML: {exc}", "fix the syntax error in pyproject.toml") from None
    except RecursionError:
        raise ManifestError(f"{label}: TOML nested too deeply", "simplify pyproject.toml") from None


def parse_manifest(data: bytes, label: str = "pyproject.toml") -> Manifest:
    """Parse pyproject.toml bytes; raises ManifestError only for unreadable TOML."""
    doc, plain = _decode(data, label)
    return manifest_from_document(doc, label, plain)


def manifest_from_document(doc: Mapping[str, Any], label: str = "pyproject.toml", plain_strings: bool = False) -> Manifest:
    """`plain_strings`: no string can hold a control character (fasttoml.strings_are_plain), so
    the reader need not look at each one."""
    reader = _Reader(label)
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


class _Reader:
    """Turns loosely-typed TOML values into records, collecting problems."""

    def __init__(self, label: str, dialect: Dialect = COMFYDOCK) -> None:
        self.label = label
        self.problems: list[str] = []
        self.dialect = dialect
        self.plain_strings = False  # True: every string is known free of control characters

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.label}: [{where}] {what}")

    def models(self, table: Any) -> dict[str, ManifestModel]:
        return dict(self.model_table(table).items())

    def model_table(self, table: Any) -> ModelTable:
        if not isinstance(table, dict):
            self.problem(self.dialect.models_table, "is not a table")
            return ModelTable({})
        rows: dict[str, tuple[Any, ...]] = {}
        made: dict[str, ManifestModel] = {}
        plain = self.plain_row if self.plain_strings else None
        for key, entry in table.items():
            row = plain(key, entry) if plain else None
            if row is None:
                model = self.model(key, entry)
                if model is None:
                    continue
                made[key] = model
                row = model_row(model)
            rows[key] = row
        return ModelTable(rows, made)

    def plain_row(self, key: str, entry: Any) -> tuple[Any, ...] | None:
        """`model`'s values for the usual entry, in one pass without its per-field calls (a
        10,000-model table is read on every cold `cfd status`); None when any field is not
        the plain type (or a ComfyGit criticality is not one it accepts), and `model` then says
        what is wrong. Only when `plain_strings`: no control-character checks to make."""
        if type(entry) is not dict or not _HASH_RE.fullmatch(key):
            return None
        get = entry.get
        filename, size, relative_path, category = get("filename"), get("size"), get("relative_path"), get("category")
        sources, blake3, sha256 = get("sources"), get("blake3"), get("sha256")
        if type(filename) is not str or not filename or (size is not None and (type(size) is not int or size < 0)):
            return None
        if category is not None and (type(category) is not str or not category):
            return None
        comfygit = self.dialect is not COMFYDOCK
        if relative_path is None:
            relative_path = f"{category}/{filename}" if category else filename
        elif type(relative_path) is not str or not relative_path:
            return None
        elif comfygit and "\\" in relative_path:
            relative_path = relative_path.replace("\\", "/")  # as `relative_path` does
        criticality = get("criticality") if comfygit else None
        if criticality is not None and (type(criticality) is not str or criticality not in ENVIRONMENT_CRITICALITIES):
            return None
        if sources is None:
            sources = ()
        elif type(sources) is not list or not all(type(url) is str and url for url in sources):
            return None
        else:
            sources = tuple(sources)
        if (blake3 is not None and (type(blake3) is not str or not blake3)) or (
            sha256 is not None and (type(sha256) is not str or not sha256)
        ):
            return None
        return (key, filename, size, relative_path, category, sources, blake3, sha256, criticality)

    def model(self, key: str, entry: Any) -> ManifestModel | None:
        where = f"{self.dialect.models_table}.{key}"
        if not _HASH_RE.fullmatch(key):
            self.problem(where, "key is not a model hash (hex digits)")
            return None
        if not isinstance(entry, dict):
            self.problem(where, "is not a table")
            return None
        filename = self.string(entry, "filename", where, required=True)
        if filename is None:
            return None
        category = self.string(entry, "category", where)
        relative_path = self.relative_path(entry, where)
        if relative_path is None:
            relative_path = f"{category}/{filename}" if category else filename
        criticality = None
        if self.dialect is not COMFYDOCK and "criticality" in entry:
            criticality = self.choice(entry, "criticality", where, ENVIRONMENT_CRITICALITIES, None)
        return ManifestModel(
            hash=key,
            filename=filename,
            size=self.size(entry, where),
            relative_path=relative_path,
            category=category,
            sources=self.sources(entry, where),
            blake3=self.string(entry, "blake3", where),
            sha256=self.string(entry, "sha256", where),
            criticality=criticality,
        )

    def workflows(self, table: Any) -> tuple[list[str], list[WorkflowModelRef]]:
        if not isinstance(table, dict):
            self.problem(self.dialect.workflows_table, "is not a table")
            return [], []
        names: list[str] = []
        refs: list[WorkflowModelRef] = []
        for name, workflow in table.items():
            where = f"{self.dialect.workflows_table}.{name}"
            if (not self.plain_strings and _CONTROL_RE.search(name)) or name == ENVIRONMENT:
                self.problem(f"{self.dialect.workflows_table}.{name!r}", "workflow name contains control characters (ignored)")
                continue
            if not isinstance(workflow, dict):
                self.problem(where, "is not a table")
                continue
            names.append(name)
            entries = workflow.get("models", [])
            if not isinstance(entries, list):
                self.problem(f"{where}.models", "is not an array of tables")
                continue
            for position, entry in enumerate(entries):
                ref = self.ref(name, position, entry)
                if ref is not None:
                    refs.append(ref)
        return names, refs

    def ref(self, workflow: str, position: int, entry: Any) -> WorkflowModelRef | None:
        where = f"{self.dialect.workflows_table}.{workflow}.models[{position}]"
        if not isinstance(entry, dict):
            self.problem(where, "is not a table")
            return None
        filename = self.string(entry, "filename", where, required=True)
        if filename is None:
            return None
        criticality = self.choice(entry, "criticality", where, tuple(CRITICALITY_RANK), DEFAULT_CRITICALITY)
        status = self.choice(entry, "status", where, STATUSES, "resolved")
        model_hash = self.string(entry, "hash", where)
        if status == "resolved" and model_hash is None:
            self.problem(where, f"'{filename}' is resolved but has no hash")
        node_id, widget_idx = self.first_node(entry, where)
        return WorkflowModelRef(
            workflow=workflow,
            filename=filename,
            category=self.string(entry, "category", where),
            criticality=criticality,
            status=status,
            hash=model_hash,
            sources=self.sources(entry, where),
            relative_path=self.relative_path(entry, where),
            node_id=node_id,
            widget_idx=widget_idx,
            declared_by=self.string(entry, "declared_by", where) if self.dialect is not COMFYDOCK else None,
        )

    def relative_path(self, entry: dict[str, Any], where: str) -> str | None:
        value = self.string(entry, "relative_path", where)
        if value is not None and self.dialect is not COMFYDOCK:
            value = value.replace("\\", "/")  # ComfyGit normalises Windows separators on read
        return value

    def first_node(self, entry: dict[str, Any], where: str) -> tuple[str | None, int | None]:
        nodes = entry.get("nodes")
        if not isinstance(nodes, list) or not nodes or not isinstance(nodes[0], dict):
            return None, None
        node = nodes[0]
        node_id = node.get("node_id")
        widget_idx = node.get("widget_idx")
        return (
            str(node_id) if isinstance(node_id, (str, int)) and not isinstance(node_id, bool) else None,
            widget_idx if isinstance(widget_idx, int) and not isinstance(widget_idx, bool) else None,
        )

    def string(self, entry: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
        value = entry.get(key)
        if value is None:
            if required:
                self.problem(where, f"missing '{key}'")
            return None
        if not isinstance(value, str) or not value:
            self.problem(where, f"'{key}' must be a non-empty string, not {_describe(value)}")
            return None
        if not self.plain_strings and _CONTROL_RE.search(value):
            self.problem(where, f"'{key}' contains control characters: {_describe(value)}")
            return None
        return value

    def choice(self, entry: dict[str, Any], key: str, where: str, allowed: tuple[str, ...], default: Any) -> Any:
        value = entry.get(key, default)
        if value not in allowed:
            self.problem(where, f"'{key}' is {_describe(value)}; expected one of {', '.join(allowed)}")
            return default
        return str(value)

    def size(self, entry: dict[str, Any], where: str) -> int | None:
        value = entry.get("size")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.problem(where, f"'size' must be a non-negative integer, not {_describe(value)}")
            return None
        return value

    def sources(self, entry: dict[str, Any], where: str) -> tuple[str, ...]:
        value = entry.get("sources")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(where, f"'sources' must be an array of URLs, not {_describe(value)}")
            return ()
        plain = self.plain_strings
        good = tuple(item for item in value if isinstance(item, str) and item and (plain or not _CONTROL_RE.search(item)))
        if len(good) != len(value):
            self.problem(where, "'sources' holds entries that are not URL strings (ignored)")
        return good


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"
