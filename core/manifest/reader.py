"""Turning the loosely-typed values of a parsed pyproject.toml into records, one rule per field.

Every value from a teammate's manifest is checked here (types, hashes, control characters,
criticality and status names); what is wrong becomes a listed problem, never an exception, and
a bad entry never hides the good ones. `model.manifest_from_document` and the differential diff
are its users.
"""

from __future__ import annotations

import re
from typing import Any

from ..dialect import COMFYDOCK, Dialect
from .model import (CRITICALITY_RANK, DEFAULT_CRITICALITY, ENVIRONMENT, ENVIRONMENT_CRITICALITIES, STATUSES,
                    ManifestModel, ModelTable, WorkflowModelRef, model_row)

# C0/C1 controls and DEL: in a name they would forge output lines or drive the terminal
# (escape sequences) wherever cfd prints it; no real model file or workflow has them.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HASH_RE = re.compile(r"[0-9a-fA-F]{8,128}")  # fullmatch: `$` would let a trailing newline in


class Reader:
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
        sources = _plain_sources(sources)
        if sources is None:
            return None
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
        filename = self.filename_of(entry, where)
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

    def filename_of(self, entry: Any, where: str) -> str | None:
        """An entry's required filename; None (the problem listed) when the entry is no table or has none."""
        if not isinstance(entry, dict):
            self.problem(where, "is not a table")
            return None
        return self.string(entry, "filename", where, required=True)

    def workflows(self, table: Any) -> tuple[list[str], list[WorkflowModelRef]]:
        if not isinstance(table, dict):
            self.problem(self.dialect.workflows_table, "is not a table")
            return [], []
        names: list[str] = []
        refs: list[WorkflowModelRef] = []
        for name, workflow in table.items():
            where = f"{self.dialect.workflows_table}.{name}"
            if (not self.plain_strings and CONTROL_RE.search(name)) or name == ENVIRONMENT:
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
        if self.plain_strings:
            plain = self.plain_ref(workflow, entry)
            if plain is not None:
                return plain
        where = f"{self.dialect.workflows_table}.{workflow}.models[{position}]"
        filename = self.filename_of(entry, where)
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

    def plain_ref(self, workflow: str, entry: Any) -> WorkflowModelRef | None:
        """`ref`'s record for the usual entry, without its per-field calls (~2.5 us less per entry);
        None when any field is not the plain type or value, and `ref` then says what is wrong.
        Only when `plain_strings`: no control-character checks to make."""
        if type(entry) is not dict:
            return None
        get = entry.get
        filename, category, model_hash = get("filename"), get("category"), get("hash")
        relative_path, sources = get("relative_path"), get("sources")
        criticality, status = get("criticality", DEFAULT_CRITICALITY), get("status", "resolved")
        if type(filename) is not str or not filename:
            return None
        if type(criticality) is not str or criticality not in CRITICALITY_RANK or type(status) is not str or status not in STATUSES:
            return None
        if (category is not None and (type(category) is not str or not category)) or (
            model_hash is not None and (type(model_hash) is not str or not model_hash)
        ):
            return None
        if model_hash is None and status == "resolved":
            return None  # a problem to list
        if relative_path is not None:
            if type(relative_path) is not str or not relative_path:
                return None
            if self.dialect is not COMFYDOCK:
                relative_path = relative_path.replace("\\", "/")  # as `relative_path` does
        sources = _plain_sources(sources)
        if sources is None:
            return None
        declared_by = None
        if self.dialect is not COMFYDOCK:
            declared_by = get("declared_by")
            if declared_by is not None and (type(declared_by) is not str or not declared_by):
                return None
        node_id, widget_idx = self.first_node(entry, "")
        return WorkflowModelRef(workflow, filename, category, criticality, status, model_hash, sources, relative_path,
                                node_id, widget_idx, declared_by)

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
        if not self.plain_strings and CONTROL_RE.search(value):
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
        good = tuple(item for item in value if isinstance(item, str) and item and (plain or not CONTROL_RE.search(item)))
        if len(good) != len(value):
            self.problem(where, "'sources' holds entries that are not URL strings (ignored)")
        return good


def _plain_sources(value: Any) -> tuple[str, ...] | None:
    """Absent or a list of non-empty strings, as a tuple; anything else None (`sources` says what is wrong)."""
    if value is None:
        return ()
    if type(value) is not list or not all(type(url) is str and url for url in value):
        return None
    return tuple(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"
