"""Differential manifest diff: parse only the entries whose text changed.

A pyproject.toml is cut into chunks: one per table header (sub-tables of an
entry stay with it), and one per key line inside `[tool.comfydock.models]`.
Chunks present in both versions contribute identically to both sides, so only
the changed chunks are parsed; unchanged workflow entries are consulted through
a cheap regex for the hash they name, and parsed only when they name a model
the change touches. Anything unusual (a chunk that does not parse on its own,
dotted keys reaching into the model tables from elsewhere) raises ChunkFallback
and the caller parses both documents in full: same answer, just slower.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from .diff import ManifestDiff, partial_manifest
from .manifest import CRITICALITY_RANK, Manifest, ManifestModel, WorkflowModelRef, _Reader, stronger

MODELS_HEADER = "tool.comfydock.models"
_HEADER_RE = re.compile(r"^[ \t]*(\[\[?)[ \t]*([A-Za-z0-9_\-.\"' \t]+?)[ \t]*\]\]?[ \t]*(?:#.*)?$")
_KEY_LINE_RE = re.compile(r"^[ \t]*(\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z0-9_-]+)[ \t]*[.=]")
_REF_HASH_RE = re.compile(r"^[ \t]*hash[ \t]*=[ \t]*[\"']([^\"'\n]*)[\"']", re.MULTILINE)
_MODEL_KEY_RE = re.compile(r"^[ \t]*[\"']?([0-9A-Za-z_-]+)[\"']?[ \t]*=", re.MULTILINE)
# Tables that could hold model data through dotted keys or inline arrays.
_ANCESTORS = ("", "tool", "tool.comfydock", "tool.comfydock.workflows")


class ChunkFallback(Exception):
    """The differential read cannot vouch for its answer: parse in full."""


@dataclass(frozen=True, slots=True)
class Chunk:
    header: str  # dotted path as written, quotes kept ("" for the root)
    is_array: bool
    text: str  # header line + body, parseable on its own

    @property
    def is_ref(self) -> bool:
        return self.is_array and self.header.startswith("tool.comfydock.workflows.") and self.header.endswith(".models")

    @property
    def is_model(self) -> bool:
        return self.header == MODELS_HEADER or (not self.is_array and self.header.startswith(MODELS_HEADER + "."))


def split_chunks(text: str) -> list[Chunk]:
    chunks: list[Chunk] = []
    header, is_array, header_line = "", False, ""
    body: list[str] = []
    in_models = False
    in_string = False

    def flush() -> None:
        if header_line or any(line.strip() for line in body):
            chunks.append(Chunk(header, is_array, header_line + "".join(body)))

    for line in text.splitlines(keepends=True):
        if in_string or line.count('"""') % 2 or line.count("'''") % 2:
            # Inside a multi-line string no line starts a table or an entry.
            if line.count('"""') % 2 or line.count("'''") % 2:
                in_string = not in_string
            body.append(line)
            continue
        match = _HEADER_RE.match(line) if line.lstrip().startswith("[") else None
        if match:
            path = re.sub(r"[ \t]*\.[ \t]*", ".", match.group(2))
            array = match.group(1) == "[["
            if header and not array and path.startswith(header + ".") and (header.startswith(MODELS_HEADER + ".") or is_array):
                body.append(line)  # a sub-table of the current entry
                continue
            flush()
            header, is_array, header_line, body = path, array, line if line.endswith("\n") else line + "\n", []
            in_models = path == MODELS_HEADER and not array
            continue
        if in_models and _KEY_LINE_RE.match(line) and any(_KEY_LINE_RE.match(b) for b in body):
            flush()
            body = []
        body.append(line)
    flush()
    return chunks


def _parse(chunk: Chunk) -> dict[str, Any]:
    try:
        return tomllib.loads(chunk.text)
    except (tomllib.TOMLDecodeError, RecursionError):
        raise ChunkFallback from None


def _comfydock(doc: dict[str, Any]) -> dict[str, Any] | None:
    tool = doc.get("tool")
    if tool is None:
        return None
    if not isinstance(tool, dict) or not isinstance(tool.get("comfydock", {}), dict):
        raise ChunkFallback
    return tool.get("comfydock")


class _Side:
    """Records extracted from the changed chunks of one version."""

    def __init__(self, label: str) -> None:
        self.reader = _Reader(label)
        self.models: dict[str, ManifestModel] = {}
        self.refs: list[WorkflowModelRef] = []

    def add(self, chunk: Chunk) -> None:
        cd = _comfydock(_parse(chunk))
        if cd is None:
            return
        models = cd.get("models")
        if models is not None:
            if not isinstance(models, dict):
                raise ChunkFallback
            self.models.update(self.reader.models(models))
        workflows = cd.get("workflows")
        if workflows is not None:
            if not isinstance(workflows, dict):
                raise ChunkFallback
            for name, workflow in workflows.items():
                if not isinstance(workflow, dict) or not isinstance(workflow.get("models", []), list):
                    raise ChunkFallback
                for entry in workflow.get("models", []):
                    ref = self.reader.ref(name, 0, entry)
                    if ref is not None:
                        self.refs.append(ref)


def _changed(old_chunks: list[Chunk], new_chunks: list[Chunk]) -> tuple[list[Chunk], list[Chunk], list[Chunk]]:
    old_count = Counter(old_chunks)
    new_count = Counter(new_chunks)
    only_old = list((old_count - new_count).elements())
    only_new = list((new_count - old_count).elements())
    common = list((old_count & new_count).elements())
    return only_old, only_new, common


def differential_diff(old: bytes, new: bytes, old_label: str, new_label: str) -> ManifestDiff:
    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        raise ChunkFallback from None
    old_chunks, new_chunks = split_chunks(old_text), split_chunks(new_text)
    only_old, only_new, common = _changed(old_chunks, new_chunks)
    if any("<<<<<<<" in c.text or ">>>>>>>" in c.text for c in only_new):
        raise ChunkFallback  # let the full reader name the conflict marker

    old_side, new_side = _Side(old_label), _Side(new_label)
    for chunk in only_old:
        old_side.add(chunk)
    for chunk in only_new:
        new_side.add(chunk)

    # Unchanged workflow entries, found by the hash they name (parsed on demand).
    common_by_hash: dict[str, list[Chunk]] = defaultdict(list)
    for chunk in common:
        if chunk.is_ref:
            found = _REF_HASH_RE.findall(chunk.text)
            if len(found) != 1 and "hash" in chunk.text:
                raise ChunkFallback
            for value in found:
                common_by_hash[value].append(chunk)
        elif not chunk.is_model and "models" in chunk.text and (
            chunk.header in _ANCESTORS or chunk.header.startswith("tool.comfydock.workflows.")
        ):
            raise ChunkFallback  # dotted keys or inline model arrays: not worth special-casing
    common_side = _Side(new_label)

    def common_refs(model_hash: str) -> list[WorkflowModelRef]:
        start = len(common_side.refs)
        for chunk in common_by_hash.get(model_hash, ()):
            common_side.add(chunk)
        return common_side.refs[start:]

    candidates = {r.hash for r in old_side.refs + new_side.refs if r.is_resolved and r.hash is not None}
    newly: dict[str, str] = {}
    raised: dict[str, tuple[str, str]] = {}
    gone: list[str] = []
    refs_for: dict[str, list[WorkflowModelRef]] = {}
    for model_hash in sorted(candidates):
        shared = common_refs(model_hash)
        old_crit = _strongest(shared + [r for r in old_side.refs if r.hash == model_hash])
        new_refs = shared + [r for r in new_side.refs if r.hash == model_hash]
        new_crit = _strongest(new_refs)
        if new_crit and not old_crit:
            newly[model_hash] = new_crit
        elif new_crit and old_crit and CRITICALITY_RANK[new_crit] > CRITICALITY_RANK[old_crit]:
            raised[model_hash] = (old_crit, new_crit)
        elif old_crit and not new_crit:
            gone.append(model_hash)
        if model_hash in newly or model_hash in raised:
            refs_for[model_hash] = new_refs

    intents = _new_intents(old_side, new_side, common)
    models = _global_entries(set(refs_for), new_side, common, new_label)
    problems = [p for p in new_side.reader.problems]
    refs: list[WorkflowModelRef] = [r for group in refs_for.values() for r in group] + list(intents)
    for model_hash in refs_for:
        if model_hash not in models:
            problems.append(f"{new_label}: a workflow names hash {model_hash}, which [{MODELS_HEADER}] lacks")
    new_manifest: Manifest = partial_manifest(models, refs, problems, new_label)
    return ManifestDiff(newly, raised, intents, tuple(gone), new_manifest)


def _strongest(refs: list[WorkflowModelRef]) -> str | None:
    result: str | None = None
    for ref in refs:
        if ref.is_resolved:
            result = ref.criticality if result is None else stronger(result, ref.criticality)
    return result


def _new_intents(old_side: _Side, new_side: _Side, common: list[Chunk]) -> tuple[WorkflowModelRef, ...]:
    candidates = [r for r in new_side.refs if r.is_intent]
    if not candidates:
        return ()
    known = {r.identity for r in old_side.refs if r.status == "unresolved"}
    unresolved_common = _Side("")
    for chunk in common:
        if chunk.is_ref and "unresolved" in chunk.text:
            unresolved_common.add(chunk)
    known |= {r.identity for r in unresolved_common.refs if r.status == "unresolved"}
    return tuple(r for r in candidates if r.identity not in known)


def _global_entries(hashes: set[str], new_side: _Side, common: list[Chunk], label: str) -> dict[str, ManifestModel]:
    found = {h: m for h, m in new_side.models.items() if h in hashes}
    wanted = hashes - set(found)
    if not wanted:
        return found
    side = _Side(label)
    for chunk in common:
        if not chunk.is_model:
            continue
        if chunk.header == MODELS_HEADER:
            body = chunk.text.split("\n", 1)[1] if "\n" in chunk.text else ""
            match = _MODEL_KEY_RE.search(body)
            key = match.group(1) if match else None
        else:
            key = chunk.header[len(MODELS_HEADER) + 1 :].split(".")[0].strip("\"'")
        if key in wanted:
            side.add(chunk)
    found.update({h: m for h, m in side.models.items() if h in hashes})
    return found
