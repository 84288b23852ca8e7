"""Resolving downloaded intents in pyproject.toml (only `cfd repair` does this).

An intent is an unresolved workflow entry with sources. Once its file is
downloaded and hashed, ComfyDock's design "updates the pyproject hash": the
global `[tool.comfydock.models]` table gains the model, and the workflow entry
becomes `status = "resolved"` with `hash = ...`. tomlkit keeps every other byte
of the file as it was; the user reviews and commits the change. Hooks never
call this: a pull must leave the work tree clean.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ManifestError, disk_message
from ..files import write_atomic
from .model import WorkflowModelRef, parse_manifest


@dataclass(frozen=True)
class ResolvedIntent:
    """One downloaded intent to write back: which entry, and what it turned out to be."""

    ref: WorkflowModelRef
    hash: str
    size: int
    relative_path: str


def _identity(entry: Any, workflow: str) -> tuple[str, str | None, int | None, str | None]:
    """The same identity as WorkflowModelRef.identity, read from a tomlkit table."""
    nodes = entry.get("nodes")
    node_id: str | None = None
    widget_idx: int | None = None
    if isinstance(nodes, list) and nodes and isinstance(nodes[0], dict):
        raw_id = nodes[0].get("node_id")
        raw_widget = nodes[0].get("widget_idx")
        if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
            node_id = str(raw_id)
        if isinstance(raw_widget, int) and not isinstance(raw_widget, bool):
            widget_idx = int(raw_widget)
    if node_id is None and widget_idx is None:
        return (workflow, None, None, str(entry.get("filename")))
    return (workflow, node_id, widget_idx, None)


def apply_resolutions(text: str, resolutions: Sequence[ResolvedIntent]) -> tuple[str, list[ResolvedIntent]]:
    """The new pyproject.toml text, and the resolutions it applied.

    An entry that is no longer an open intent (someone resolved it meanwhile) is
    left alone; a model already in the global table is not rewritten.
    """
    import tomlkit  # ~10x slower than tomllib: imported only when writing
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ManifestError(f"pyproject.toml: invalid TOML: {exc}", "fix the syntax error, then run `cfd repair` again") from None
    from .. import dialect as dialects

    tool = doc.get("tool", {})
    dialect = dialects.of_document(tool)  # both tables: ManifestError, nothing written
    comfydock = tool.get(dialect.name) if dialect is not None else None
    if comfydock is None:
        return text, []
    workflows = comfydock.get("workflows", {})
    wanted = {r.ref.identity: r for r in resolutions}
    done: list[ResolvedIntent] = []
    added: dict[str, ResolvedIntent] = {}
    for name, workflow in workflows.items():
        entries = workflow.get("models") if isinstance(workflow, dict) else None
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("status") != "unresolved":
                continue
            resolution = wanted.get(_identity(entry, str(name)))
            if resolution is None:
                continue
            entry["status"] = "resolved"
            entry["hash"] = resolution.hash
            added.setdefault(resolution.hash, resolution)
            done.append(resolution)
    if not done:
        return text, []
    models = comfydock.get("models")
    if models is None:
        models = tomlkit.table()
        comfydock["models"] = models
    as_tables = _siblings_are_tables(models)  # once: asking per added model is quadratic
    with _appending_at_the_end(models):
        for model_hash, resolution in added.items():
            if model_hash in models:
                continue
            ref = resolution.ref
            fields: dict[str, Any] = {"filename": ref.filename, "size": resolution.size, "relative_path": resolution.relative_path}
            if dialect is dialects.COMFYGIT:
                # 0.7.1's ManifestModel.to_toml_dict: category always, sources only when there are some
                fields["category"] = ref.category or "unknown"
                if ref.sources:
                    fields["sources"] = list(ref.sources)
            else:
                if ref.category:
                    fields["category"] = ref.category
                fields["sources"] = list(ref.sources)
            models[model_hash] = _entry_like_siblings(tomlkit, as_tables, fields)
    new_text = tomlkit.dumps(doc)
    if "\r\n" in text:  # tomlkit writes "\n" for what it adds; keep a CRLF file CRLF
        new_text = new_text.replace("\r\n", "\n").replace("\n", "\r\n")
    return new_text, done


@contextmanager
def _appending_at_the_end(models: Any) -> Iterator[None]:
    """tomlkit looks for the last key before any sub-table on every key it adds, scanning
    the whole table: quadratic (4,000 intents took 9 s to write back). A table of inline
    entries only has no sub-table, so it is put in the mode tomlkit uses while parsing,
    where a key is appended at the end at once."""
    from tomlkit.items import AoT, Table, Whitespace

    container = models.value
    body = container._body  # tomlkit has no public way; the output is the same as its own
    if any(isinstance(item, (Table, AoT)) for _, item in body):
        yield  # sub-tables: let tomlkit place keys before them
        return
    trailing = []  # the blank lines that end the table stay after the new keys, as tomlkit puts them
    while body and body[-1][0] is None and isinstance(body[-1][1], Whitespace):
        trailing.append(body.pop())
    container.parsing(True)
    try:
        yield
    finally:
        container.parsing(False)
        body.extend(reversed(trailing))


def _siblings_are_tables(models: Any) -> bool:
    """Whether every existing entry is a full `[...models.<hash>]` table (and there is one)."""
    from tomlkit.items import Table

    values = list(models.values())
    return bool(values) and all(isinstance(value, Table) for value in values)


def _entry_like_siblings(tomlkit: Any, as_tables: bool, fields: dict[str, Any]) -> Any:
    """An inline table, unless the existing entries are full tables."""
    if as_tables:
        table = tomlkit.table()
        table.update(fields)
        return table
    inline = tomlkit.inline_table()
    inline.update(fields)
    return inline


def write_resolutions(pyproject: Path, resolutions: Iterable[ResolvedIntent]) -> list[str]:
    """Rewrite pyproject.toml in place (atomically); returns the resolved filenames."""
    resolutions = list(resolutions)
    if not resolutions:
        return []
    try:
        raw = pyproject.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {pyproject}: {exc.strerror}", "check the environment path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{pyproject}: not valid UTF-8", "save pyproject.toml as UTF-8") from None
    new_text, done = apply_resolutions(text, resolutions)
    if not done or new_text == text:
        return []
    # Never write what we cannot read back as intended.
    check = parse_manifest(new_text.encode("utf-8"), str(pyproject))
    resolved = {ref.identity: ref.hash for ref in check.refs if ref.is_resolved}
    for resolution in done:
        if resolved.get(resolution.ref.identity) != resolution.hash or resolution.hash not in check.models:
            raise ManifestError(f"{pyproject}: resolving '{resolution.ref.filename}' went wrong; nothing was changed")

    def unchanged() -> None:  # edited while we worked: do not clobber the user's change
        if pyproject.read_bytes() != raw:
            raise ManifestError(f"{pyproject} changed while cfd was updating it", "run `cfd repair` again")

    try:
        write_atomic(pyproject, new_text, check=unchanged)
    except OSError as exc:  # a full disk: the models are here, only their hashes are not written yet
        raise ManifestError(disk_message(exc, pyproject.name) + "; it is unchanged",
                            "free some space and run `cfd repair` again: it finishes writing the resolved models") from None
    return [resolution.ref.filename for resolution in done]
