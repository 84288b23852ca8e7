"""Differential manifest diff: parse only the entries whose text changed.

A pyproject.toml is cut into pieces, one per table header, and the
`[tool.<dialect>.models]` table further into one line per model. Pieces and
lines are compared between the two versions as plain strings: one that is in
both contributes identically to both sides, so only the changed ones are
parsed. Unchanged workflow entries are consulted through a cheap search for
the hash they name, and parsed only when they name a model the change touches;
unchanged global entries only when a changed workflow entry needs them.

Nothing is classified that does not have to be: a 10,000-model manifest has
some 20,000 pieces and lines per version, and any Python-level work per piece
costs more than parsing the few that changed.

Anything unusual (a piece that does not parse on its own, sub-tables of model
entries, dotted keys or inline arrays holding model data outside the usual
places, a table or model defined twice) raises ChunkFallback and the caller
parses both documents in full: same answer, just slower.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from itertools import filterfalse
from typing import Any

from . import fasttoml
from .fasttoml import BATCH as _BATCH
from .diff import ManifestDiff, partial_manifest
from .model import CRITICALITY_RANK, Manifest, ManifestModel, WorkflowModelRef, strongest
from .reader import Reader
from .. import dialect as dialects
from ..dialect import COMFYDOCK
from ..errors import ManifestError
from .pieces import NAMES, ChunkFallback, Names, Version, has_multiline_strings, header, line_keys


_REF_HASH_RE = re.compile(r"^[ \t]*hash[ \t]*=[ \t]*[\"']([^\"'\n]*)[\"']", re.MULTILINE)
_HASH_KEY_RE = re.compile(r"^[ \t]*[\"']?hash[\"']?[ \t]*[.=]", re.MULTILINE)




def _compare(old: list[str], new: list[str], with_common: bool = True) -> tuple[list[str], list[str], list[str]]:
    """(only in old, only in new, in both) as multisets of strings (in both: [] unless `with_common`)."""
    old_set, new_set = set(old), set(new)
    if len(old_set) == len(old) and len(new_set) == len(new):
        # filter/filterfalse walk the lists in C: ~2x a comprehension on 10,000 lines
        common = list(filter(old_set.__contains__, new)) if with_common else []
        return list(filterfalse(new_set.__contains__, old)), list(filterfalse(old_set.__contains__, new)), common
    # Repeated identical pieces (two equal entries in one workflow): count them.
    left = Counter(old)
    only_new, common = [], []
    for s in new:
        if left[s] > 0:
            left[s] -= 1
            common.append(s)
        else:
            only_new.append(s)
    return list(left.elements()), only_new, common


def _parse(text: str) -> tuple[dict[str, Any], bool]:
    """The document of a piece, and whether its strings are known plain (fasttoml.read)."""
    if text.endswith("\r"):
        text += "\n"  # a CRLF document cut before its "\n["
    try:
        return fasttoml.read(text)
    except (fasttoml.TOMLDecodeError, RecursionError):
        raise ChunkFallback from None


class _Side:
    """Records read from some pieces of one version."""

    def __init__(self, label: str, names: Names) -> None:
        self.names = names
        self.reader = Reader(label, names.dialect)
        self.models: dict[str, ManifestModel] = {}
        self.refs: list[WorkflowModelRef] = []

    def add(self, text: str) -> None:
        self.add_documents([_parse(text)])

    def add_documents(self, parsed: list[tuple[dict[str, Any], bool]]) -> None:
        """Records of consecutive parts of one document, read as tomllib would read them
        joined: every model first, then each workflow's entries in order of first appearance."""
        tables: list[dict[str, Any]] = []
        self.reader.plain_strings = all(plain for _, plain in parsed)
        for doc, _ in parsed:
            tool = doc.get("tool")
            if tool is None:
                continue
            name = self.names.dialect.name
            if not isinstance(tool, dict) or not isinstance(tool.get(name, {}), dict):
                raise ChunkFallback
            cd = tool.get(name)
            if cd is not None:
                tables.append(cd)
        workflow_entries: dict[str, list[Any]] = {}
        for cd in tables:
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
                    workflow_entries.setdefault(name, []).extend(workflow.get("models", []))
        for name, entries in workflow_entries.items():
            for entry in entries:
                ref = self.reader.ref(name, 0, entry)
                if ref is not None:
                    self.refs.append(ref)

    def add_line(self, line: str) -> None:
        self.add(self.names.models_line + line)

    def add_all(self, pieces: list[str], lines: list[str]) -> None:
        """The changed pieces and model lines of one version, read in one parse.

        They are parts of one valid document, so together they are one too (the
        lines before the first header first, model lines under their header).
        """
        roots = [piece for piece in pieces if piece.startswith("\n")]
        tables = [piece for piece in pieces if not piece.startswith("\n")]
        for piece in tables:
            if piece.startswith("["):
                header(piece)  # a "[" line that is no header cannot be read on its own
        heads = [line for line in lines if line.lstrip().startswith("[")]  # the models table's own first line
        models = [line for line in lines if not line.lstrip().startswith("[")]
        if models and not heads:
            heads = [self.names.models_line[:-1]]
        if not (roots or tables or heads):
            return
        parts = roots + tables + heads + models
        if len(parts) <= 2 * _BATCH:
            self.add("\n".join(parts))
            return
        # Many changed entries (a first sync, a rewritten file): parsed in consecutive slices,
        # so the reader's copies of the text stay bounded (memory ~10x the text before, issue 10).
        first_model_line = len(parts) - len(models)
        docs = []
        for start in range(0, len(parts), _BATCH):
            batch = parts[start : start + _BATCH]
            if models and start >= first_model_line:
                batch = [self.names.models_line[:-1], *batch]  # model lines under their table's header
            docs.append(_parse("\n".join(batch)))
        self.add_documents(docs)

    def by_hash(self) -> dict[str, list[WorkflowModelRef]]:
        grouped: dict[str, list[WorkflowModelRef]] = defaultdict(list)
        for ref in self.refs:
            if ref.hash is not None:
                grouped[ref.hash].append(ref)
        return grouped


def _ref_hash(text: str) -> str | None:
    """The hash a workflow entry names, without parsing it (None: it names none)."""
    if text.count("hash") == 1:
        at = text.find('\nhash = "')
        if at >= 0:
            close = text.find('"', at + 9)
            value = text[at + 9 : close]
            if close > 0 and "\n" not in value:
                return value
    found = _REF_HASH_RE.findall(text)
    if len(found) == 1:
        return found[0]
    if found or _HASH_KEY_RE.search(text):
        raise ChunkFallback  # a hash written in a way we do not read without parsing
    return None


def _is_ref(piece: str, names: Names) -> bool:
    """Whether an array piece is a workflow model entry; unsure (quoted paths): fall back."""
    path, array = header(piece)
    if array and path.startswith(names.workflows_prefix) and path.endswith(".models"):
        return True
    if names.dialect.name in path:
        raise ChunkFallback
    return False


def differential_diff(old: bytes | memoryview, new: bytes | memoryview, old_label: str, new_label: str) -> ManifestDiff:
    # Each large text and list is let go as soon as it is done with: in a fresh process (a hook)
    # memory reused costs no first-touch page faults.
    new_text = _decoded(new)
    if new_text.endswith("\r"):
        raise ChunkFallback  # a bare CR ends it: invalid TOML, which the pieces (cut before "\n[") cannot tell
    names, old_checked = _names_of(old, new_text, new_label)
    new_version = Version(new_text, names)
    del new_text
    if not old_checked and _mentions_another_dialect(new_version.pieces(), names):
        raise ChunkFallback  # both tables in the new version: the full read says so
    old_text = _decoded(old)
    if old_text.endswith("\r"):
        raise ChunkFallback  # the old version does not parse either: the full read counts it as empty
    old_version = _old_version(old_text, names, new_version.fast)
    only_old, only_new, common, old_lines, new_lines = _compare_versions(old_version, new_version)
    if old_version.strings_unchecked and has_multiline_strings("\n".join(only_old + old_lines)):
        # The old version's own text holds a multi-line string: cut it the careful way after all.
        old_version = Version(old_text, names, check_model_lines=False)
        only_old, only_new, common, old_lines, new_lines = _compare_versions(old_version, new_version)
    del old_text
    if not old_checked and _mentions_another_dialect(only_old + old_lines, names):
        raise ChunkFallback  # the environment changed manager between the two versions
    if any("<<<<<<<" in s or ">>>>>>>" in s for s in only_new + new_lines):
        raise ChunkFallback  # let the full reader name the conflict marker
    if _old_defines_a_model_twice(old_lines, new_lines, old_version, new_version):
        raise ChunkFallback  # the old version does not parse, so it counts as empty: the full read says so
    del old_version

    old_side, new_side = _Side(old_label, names), _Side(new_label, names)
    old_side.add_all(only_old, old_lines)
    new_side.add_all(only_new, new_lines)

    # Unchanged workflow entries, found by the hash they name (parsed on demand).
    old_by_hash, new_by_hash = old_side.by_hash(), new_side.by_hash()
    candidates = {r.hash for r in old_side.refs + new_side.refs if r.is_resolved and r.hash is not None}
    common_by_hash: dict[str, list[str]] = defaultdict(list)
    if candidates:
        for piece in common:
            if piece.startswith("[["):
                value = _ref_hash(piece)
                if value in candidates:
                    common_by_hash[value].append(piece)
    common_side = _Side(new_label, names)

    def common_refs(model_hash: str) -> list[WorkflowModelRef]:
        start = len(common_side.refs)
        for piece in common_by_hash.get(model_hash, ()):
            if _is_ref(piece, names):
                common_side.add(piece)
        return common_side.refs[start:]

    newly: dict[str, str] = {}
    raised: dict[str, tuple[str, str]] = {}
    gone: list[str] = []
    refs_for: dict[str, list[WorkflowModelRef]] = {}
    for model_hash in sorted(candidates):
        shared = common_refs(model_hash)
        old_crit = _strongest(shared + old_by_hash.get(model_hash, []))
        new_refs = shared + new_by_hash.get(model_hash, [])
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
    models = _global_entries(set(refs_for), new_side, new_version, new_label)
    new_manifest: Manifest
    problems = list(new_side.reader.problems)
    refs: list[WorkflowModelRef] = [r for group in refs_for.values() for r in group] + list(intents)
    for model_hash in refs_for:
        if model_hash not in models:
            problems.append(f"{new_label}: a workflow names hash {model_hash}, which [{names.models_header}] lacks")
    new_manifest = partial_manifest(models, refs, problems, new_label, names.dialect.name)
    return ManifestDiff(newly, raised, intents, tuple(gone), new_manifest)


def _compare_versions(old: Version, new: Version) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """(pieces only in old, only in new, in both; model lines only in old, only in new)."""
    only_old, only_new, common = _compare(old.pieces(), new.pieces())
    old_lines, new_lines, _ = _compare(old.lines, new.lines, with_common=False)
    return only_old, only_new, common, old_lines, new_lines


def _old_version(text: str, names: Names, new_cut_fast: bool) -> Version:
    """The old version, cut the fast way without looking for multi-line strings first when the
    new version has none (one 3 MB search less, ~1.7 ms): the old text is then the pieces and
    lines it shares with the new one, which hold none, plus its own, which the caller looks at.
    A cut that refused (a "[" line inside a string, say) is made again the careful way."""
    if not new_cut_fast:
        return Version(text, names, check_model_lines=False)
    try:
        return Version(text, names, check_model_lines=False, check_strings=False)
    except ChunkFallback:
        if has_multiline_strings(text):
            return Version(text, names, check_model_lines=False)
        raise


def _old_defines_a_model_twice(old_lines: list[str], new_lines: list[str], old: Version, new: Version) -> bool:
    """Whether the old version defines a model twice where only it has one of the two (a merge's
    leftover the new version fixed): a models-table line or a model's own table. Its lines are
    not vetted one by one; the new version's are, and the lines both have are the new version's."""
    keys = line_keys(old_lines) if old_lines else []
    if not (keys or old.table_models):
        return False
    if len(set(keys)) != len(keys) or not old.table_models.keys().isdisjoint(keys):
        return True
    common = set(new.keys).difference(line_keys(new_lines))
    return not (common.isdisjoint(keys) and common.isdisjoint(old.table_models))


def _strongest(refs: list[WorkflowModelRef]) -> str | None:
    result: str | None = None
    for ref in refs:
        if ref.is_resolved:
            result = ref.criticality if result is None else strongest(result, ref.criticality)
    return result


def _new_intents(old_side: _Side, new_side: _Side, common: list[str]) -> tuple[WorkflowModelRef, ...]:
    candidates = [r for r in new_side.refs if r.is_intent]
    if not candidates:
        return ()
    known = {r.identity for r in old_side.refs if r.status == "unresolved"}
    unresolved_common = _Side("", new_side.names)
    for piece in common:
        if piece.startswith("[[") and "unresolved" in piece and _is_ref(piece, new_side.names):
            unresolved_common.add(piece)
    known |= {r.identity for r in unresolved_common.refs if r.status == "unresolved"}
    return tuple(r for r in candidates if r.identity not in known)


def _global_entries(hashes: set[str], new_side: _Side, version: Version, label: str) -> dict[str, ManifestModel]:
    """The global entries of `hashes` in the new version (changed ones are already read)."""
    found = {h: m for h, m in new_side.models.items() if h in hashes}
    wanted = hashes - set(found)
    if not wanted:
        return found
    side = _Side(label, new_side.names)
    line_of = dict(zip(version.keys, version.lines[1:]))
    for key in wanted:
        if key in line_of:
            side.add_line(line_of[key])
        elif key in version.table_models:
            side.add(version.parts[version.table_models[key]])
    found.update({h: m for h, m in side.models.items() if h in hashes})
    return found


def _decoded(data: bytes | memoryview) -> str:
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError:
        raise ChunkFallback from None


def _names_of(old: bytes | memoryview, new: str, label: str) -> tuple[Names, bool]:
    """The one dialect both versions write (anything else is read in full), and whether the
    versions were looked at in full already.

    When the new version names a dialect, only its first mention is looked for here: the caller
    then checks that the new version's pieces name no other (its models table cannot: its lines
    are vetted as `key = ...` lines, and a mention is a header or a dotted key), and the old
    version's own pieces and lines after the compare (the rest it shares with the new one).
    Both instead of scanning two 3 MB texts for each name (~3 ms)."""
    new_dialect = dialects.first_mentioned(new)
    if new_dialect is not None:
        return NAMES[new_dialect.name], False
    try:
        old_dialect = dialects.detect(_decoded(old), label)
    except ManifestError:
        raise ChunkFallback from None  # both tables: the full read says so
    return NAMES[old_dialect.name if old_dialect else COMFYDOCK.name], True


def _mentions_another_dialect(parts: list[str], names: Names) -> bool:
    """Whether these pieces and lines of a version open another dialect's table (a mention
    sits on one line, and pieces and lines are whole lines of the text)."""
    if not parts:
        return False
    found = dialects.mentioned("\n".join(parts))
    return any(d is not names.dialect for d in found)
