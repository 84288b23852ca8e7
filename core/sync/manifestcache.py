"""The parsed working manifest as a cache file: compact to write, safe to read.

Written on a cold `cfd status` (part of its time), read on every warm one. The records
are stored a column per field (a tuple of 10,000 filenames, of sizes, ...): pickling that
takes a third of the time 10,000 row tuples did, and reading it back makes no record
until one is looked up (ModelTable).

The file lives in the git dir, so whoever can write it could run code through a plain
pickle: it is read with no class allowed (plain tuples, strings, numbers only), and
every column is checked for the types and values the reader itself produces. Anything
else (truncated, corrupt, hostile, another format) is not used: the manifest is parsed
again, so the answer is never the cache's doing.
"""

from __future__ import annotations

import io
import pickle
from itertools import chain
from typing import Any

from ..manifest.model import (
    CRITICALITY_RANK,
    ENVIRONMENT_CRITICALITIES,
    STATUSES,
    Manifest,
    ModelTable,
    WorkflowModelRef,
    model_row,
)
from ..manifest.reader import CONTROL_RE

FORMAT = 4  # 4: a column per field; 3: a tuple per record (plain pickle)
# What each column may hold. Strings are non-empty and free of control characters, as the
# reader keeps them, except where it keeps others: "" is the environment's own "workflow"
# (ComfyGit) and node ids are taken as written.
_STR, _OPT_STR, _OPT_INT = frozenset({str}), frozenset({str, type(None)}), frozenset({int, type(None)})
_SIZE = frozenset({int, type(None)})  # as _OPT_INT, and never negative
_WORKFLOW = frozenset({str})  # as _STR, and may be ""
_ANY_TEXT = frozenset({str, type(None)})  # as _OPT_STR, unchecked
# ManifestModel's fields: hash, filename, size, relative_path, category, sources, blake3, sha256, criticality
_MODEL_TYPES = (_STR, _STR, _SIZE, _STR, _OPT_STR, None, _OPT_STR, _OPT_STR, _OPT_STR)
# WorkflowModelRef's: workflow, filename, category, criticality, status, hash, sources, relative_path,
# node_id, widget_idx, declared_by
_REF_TYPES = (_WORKFLOW, _STR, _OPT_STR, _STR, _STR, _OPT_STR, None, _OPT_STR, _ANY_TEXT, _OPT_INT, _OPT_STR)


def encode(digest: str, manifest: Manifest) -> bytes:
    models = manifest.models
    rows = models.rows.values() if isinstance(models, ModelTable) else map(model_row, models.values())
    payload = (
        tuple(zip(*rows)) or ((),) * len(_MODEL_TYPES),
        tuple(zip(*manifest.refs)) or ((),) * len(_REF_TYPES),  # a WorkflowModelRef is the tuple of its fields
        manifest.workflows,
        manifest.problems,
        manifest.label,
        manifest.has_comfydock,
        manifest.dialect,
        manifest.schema_version,
    )
    return pickle.dumps((FORMAT, digest, payload), protocol=pickle.HIGHEST_PROTOCOL)


class _DataOnly(pickle.Unpickler):
    """Tuples, strings, numbers, None: no class, no function (no code run by reading)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("the manifest cache holds plain data only")


def decode(data: bytes, digest: str) -> Manifest | None:
    """The cached manifest for the file with this digest, or None (stale, corrupt, hostile)."""
    try:
        version, cached_digest, payload = _DataOnly(io.BytesIO(data)).load()
        if version != FORMAT or cached_digest != digest:
            return None
        return _manifest(payload)
    except Exception:  # noqa: BLE001 - whatever the file holds, it is only not used
        return None


def _manifest(payload: Any) -> Manifest | None:
    model_columns, ref_columns, workflows, problems, label, has_comfydock, dialect, schema_version = payload
    if not (
        _columns(model_columns, _MODEL_TYPES)
        and _columns(ref_columns, _REF_TYPES)
        and _strings(workflows)
        and _strings(problems)
        and type(label) is str
        and type(has_comfydock) is bool
        and dialect in (None, "comfydock", "comfygit")
        and type(schema_version) is int
    ):
        return None
    hashes, criticalities = model_columns[0], model_columns[8]
    statuses, ref_criticalities = ref_columns[4], ref_columns[3]
    if len(set(hashes)) != len(hashes) or not set(criticalities) <= {None, *ENVIRONMENT_CRITICALITIES}:
        return None
    if not set(statuses) <= set(STATUSES) or not set(ref_criticalities) <= set(CRITICALITY_RANK):
        return None
    return Manifest(
        models=ModelTable(dict(zip(hashes, zip(*model_columns)))),
        refs=tuple(WorkflowModelRef(*values) for values in zip(*ref_columns)),
        workflows=workflows,
        problems=problems,
        label=label,
        has_comfydock=has_comfydock,
        dialect=dialect,
        schema_version=schema_version,
    )


def _strings(values: Any, empty: bool = False) -> bool:
    """A tuple of strings free of control characters, non-empty unless `empty`."""
    if type(values) is not tuple or not set(map(type, values)) <= _STR:
        return False
    return (empty or "" not in values) and not CONTROL_RE.search("".join(values))


def _columns(columns: Any, types: tuple[frozenset[type] | None, ...]) -> bool:
    """As many columns as fields, all as long, each of its field's types and values."""
    if type(columns) is not tuple or len(columns) != len(types) or any(type(c) is not tuple for c in columns):
        return False
    if len({len(column) for column in columns}) > 1:
        return False
    for column, allowed in zip(columns, types):
        if allowed is None:  # sources: tuples of strings
            if not set(map(type, column)) <= {tuple} or not _strings(tuple(chain.from_iterable(column))):
                return False
            continue
        kinds = set(map(type, column))
        if not kinds <= allowed:
            return False
        if str in kinds and allowed is not _ANY_TEXT:
            if not _strings(tuple(value for value in column if value is not None), empty=allowed is _WORKFLOW):
                return False
        if allowed is _SIZE and int in kinds and min(value for value in column if value is not None) < 0:
            return False
    return True
