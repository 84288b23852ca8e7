"""Differential manifest diff: parse only the entries whose text changed.

A pyproject.toml is cut into pieces, one per table header, and the
`[tool.comfydock.models]` table further into one line per model. Pieces and
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
import tomllib
from collections import Counter, defaultdict
from typing import Any

from . import fasttoml
from .fasttoml import BATCH as _BATCH
from .diff import ManifestDiff, partial_manifest
from .model import CRITICALITY_RANK, Manifest, ManifestModel, WorkflowModelRef, _Reader, stronger

MODELS_HEADER = "tool.comfydock.models"
_MODELS_PREFIX = MODELS_HEADER + "."
_WORKFLOWS_PREFIX = "tool.comfydock.workflows."
_MODELS_LINE = "[tool.comfydock.models]\n"
# A table header line at the start of a piece (group 1: "[" or "[["; group 2: the dotted path).
_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_HEADER_RE = re.compile(
    rf"[ \t]*(\[\[?)[ \t]*({_KEY}(?:[ \t]*\.[ \t]*{_KEY})*)[ \t]*\]\]?[ \t]*(?:#[^\n]*)?\r?(?=\n|$)"
)
_SPACES_AROUND_DOTS = re.compile(r"[ \t]*\.[ \t]*")
_INDENTED_BRACKET_RE = re.compile(r"\n[ \t]+\[")
# Array headers that are not `[[<...>.models]]`: they need a closer look.
_ODD_ARRAY_RE = re.compile(r"\n\[\[(?![^\n]*\.models[ \t]*\]\][ \t]*(?:#[^\n]*)?\r?(?:\n|$))")
_ODD_INDENTED_ARRAY_RE = re.compile(r"\n[ \t]*\[\[(?![^\n]*\.models[ \t]*\]\][ \t]*(?:#[^\n]*)?\r?(?:\n|$))")
# Key lines of [tool.comfydock.models] (group 2: "=" for a key, "." for a dotted key).
_KEY_LINE_RE = re.compile(r"\n[ \t]*(\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z0-9_-]+)[ \t]*([.=])")
_KEY_LINE_SPLIT_RE = re.compile(r"\n(?=[ \t]*(?:\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z0-9_-]+)[ \t]*[.=])")
# A key line whose key mentions "models" (dotted keys or inline arrays holding model data).
_MODELS_KEY_RE = re.compile(r"(?:^|\n)[ \t]*[^\n=\[#]*models[^\n=]*=")
_REF_HASH_RE = re.compile(r"^[ \t]*hash[ \t]*=[ \t]*[\"']([^\"'\n]*)[\"']", re.MULTILINE)
_HASH_KEY_RE = re.compile(r"^[ \t]*[\"']?hash[\"']?[ \t]*[.=]", re.MULTILINE)
# Tables that could hold model data through dotted keys or inline arrays.
_ANCESTORS = ("", "tool", "tool.comfydock", "tool.comfydock.workflows")


class ChunkFallback(Exception):
    """The differential read cannot vouch for its answer: parse in full."""


def _cut(text: str) -> tuple[list[str], bool]:
    """[lines before the first header (with a newline in front), then one piece per header].

    A piece is its header line and body, without the newline before the next header.
    The flag says whether the fast cut was used (no multi-line strings, no indented "[").
    """
    if '"""' not in text and "'''" not in text and not _INDENTED_BRACKET_RE.search(text):
        # Every header starts a line with "[". A line of a multi-line array may too: such a
        # piece is not a header, and the piece before it does not parse (caught when read).
        parts = ("\n" + text).split("\n[")
        return [parts[0]] + ["[" + part for part in parts[1:]], True
    starts = []
    position = 0
    in_string = False
    for line in text.split("\n"):
        if (line.count('"""') + line.count("'''")) % 2:
            in_string = not in_string
        elif not in_string and line.lstrip().startswith("[") and _HEADER_RE.match(line):
            starts.append(position)
        position += len(line) + 1
    if not starts:
        return ["\n" + text], False
    ends = [start - 1 for start in starts[1:]] + [len(text)]
    return ["\n" + text[: max(starts[0] - 1, 0)]] + [text[start:end] for start, end in zip(starts, ends)], False


def _header(piece: str) -> tuple[str, bool]:
    """(normalised dotted path, is array) of a piece's header line."""
    match = _HEADER_RE.match(piece)
    if match is None:
        raise ChunkFallback  # a "[" line that is no header: the cut cannot be trusted here
    bracket, path = match.group(1, 2)
    if " " in path or "\t" in path:
        path = _SPACES_AROUND_DOTS.sub(".", path)
    return path, bracket == "[["


def _model_key(path: str) -> str:
    rest = path[len(_MODELS_PREFIX) :]
    if rest[:1] in "\"'":
        quote = rest[0]
        end = rest.find(quote, 1)
        if end < 0 or end + 1 != len(rest):
            raise ChunkFallback  # a sub-table of a model entry, or a key we do not read this way
        return rest[1:end]
    if "." in rest or '"' in rest or "'" in rest:
        raise ChunkFallback
    return rest


class _Version:
    """One version of the document, cut but (mostly) not classified."""

    def __init__(self, text: str) -> None:
        parts, fast = _cut(text)
        self.parts = parts
        self.models_at: int | None = None
        self.table_models: dict[str, int] = {}  # model key -> index of its [tool.comfydock.models.<key>] piece
        tables: list[str] = []
        if _MODELS_KEY_RE.search(parts[0]):
            raise ChunkFallback  # model data through dotted keys at the top level
        for i in range(1, len(parts)):
            piece = parts[i]
            if piece.startswith("[["):
                continue  # array entries are looked at when needed (odd ones just below)
            if piece.startswith("[tool.comfydock.models."):
                path, _ = _header(piece)
                key = _model_key(path)
                if key in self.table_models:
                    raise ChunkFallback  # defined twice: let the full read report it
                self.table_models[key] = i
                continue
            if piece.startswith("[tool.comfydock.workflows.") and "models" not in piece:
                end = piece.find("\n")
                tables.append(piece if end < 0 else piece[:end])
                continue
            path, array = _header(piece)
            if array:
                continue
            tables.append(path)
            plain = path.replace('"', "").replace("'", "") if ('"' in path or "'" in path) else path
            if plain == MODELS_HEADER:
                if path != plain:
                    raise ChunkFallback  # quoted header parts: not worth special-casing
                self.models_at = i
            elif plain.startswith(_MODELS_PREFIX):
                if not path.startswith(_MODELS_PREFIX):
                    raise ChunkFallback
                key = _model_key(path)
                if key in self.table_models:
                    raise ChunkFallback
                self.table_models[key] = i
            elif plain.startswith(_WORKFLOWS_PREFIX):
                if not path.startswith(_WORKFLOWS_PREFIX):
                    raise ChunkFallback
                if ".models." in (path + ".")[len(_WORKFLOWS_PREFIX) - 1 :] or _MODELS_KEY_RE.search(piece):
                    raise ChunkFallback  # model data in a sub-table or an inline array
            elif plain in _ANCESTORS and _MODELS_KEY_RE.search(piece):
                raise ChunkFallback  # model data through dotted keys
        if len(set(tables)) != len(tables):
            raise ChunkFallback  # a table defined twice (say, by a merge): invalid TOML
        odd_arrays = _ODD_ARRAY_RE if fast else _ODD_INDENTED_ARRAY_RE
        for match in odd_arrays.finditer("\n" + text):
            line_end = text.find("\n", match.start())
            path, _ = _header(text[match.start() : len(text) if line_end < 0 else line_end])
            plain = path.replace('"', "").replace("'", "")
            if plain.startswith(("tool.comfydock.", "comfydock.")) or plain in _ANCESTORS:
                if not (path.startswith(_WORKFLOWS_PREFIX) and path.endswith(".models")):
                    raise ChunkFallback  # arrays of tables inside model entries, or quoted paths
        self.lines: list[str] = []  # the models table: [header and leading comments, one line per model]
        self.keys: list[str] = []  # the model key of lines[1:]
        if self.models_at is not None:
            self._split_models_table(parts[self.models_at])

    def _split_models_table(self, piece: str) -> None:
        if '"""' in piece or "'''" in piece:
            raise ChunkFallback  # a key line could hide inside a multi-line string
        lines = _KEY_LINE_SPLIT_RE.split(piece)
        found = _KEY_LINE_RE.findall(piece)
        if len(found) != len(lines) - 1 or any(separator == "." for _, separator in found):
            raise ChunkFallback  # dotted keys spread one model over several lines
        keys = [key.strip("\"'") for key, _ in found]
        if len(set(keys)) != len(keys) or not self.table_models.keys().isdisjoint(keys):
            raise ChunkFallback  # a model defined twice (say, by a merge): invalid TOML
        self.lines, self.keys = lines, keys

    def pieces(self) -> list[str]:
        """Every piece except the models table (compared line by line instead)."""
        if self.models_at is None:
            return self.parts
        return self.parts[: self.models_at] + self.parts[self.models_at + 1 :]


def _compare(old: list[str], new: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(only in old, only in new, in both) as multisets of strings."""
    old_set, new_set = set(old), set(new)
    if len(old_set) == len(old) and len(new_set) == len(new):
        return [s for s in old if s not in new_set], [s for s in new if s not in old_set], [s for s in new if s in old_set]
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


def _parse(text: str) -> dict[str, Any]:
    if text.endswith("\r"):
        text += "\n"  # a CRLF document cut before its "\n["
    fast = fasttoml.loads(text)
    if fast is not None:
        return fast
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        raise ChunkFallback from None


class _Side:
    """Records read from some pieces of one version."""

    def __init__(self, label: str) -> None:
        self.reader = _Reader(label)
        self.models: dict[str, ManifestModel] = {}
        self.refs: list[WorkflowModelRef] = []

    def add(self, text: str) -> None:
        self.add_documents([_parse(text)])

    def add_documents(self, docs: list[dict[str, Any]]) -> None:
        """Records of consecutive parts of one document, read as tomllib would read them
        joined: every model first, then each workflow's entries in order of first appearance."""
        tables: list[dict[str, Any]] = []
        for doc in docs:
            tool = doc.get("tool")
            if tool is None:
                continue
            if not isinstance(tool, dict) or not isinstance(tool.get("comfydock", {}), dict):
                raise ChunkFallback
            cd = tool.get("comfydock")
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
        self.add(_MODELS_LINE + line)

    def add_all(self, pieces: list[str], lines: list[str]) -> None:
        """The changed pieces and model lines of one version, read in one parse.

        They are parts of one valid document, so together they are one too (the
        lines before the first header first, model lines under their header).
        """
        roots = [piece for piece in pieces if piece.startswith("\n")]
        tables = [piece for piece in pieces if not piece.startswith("\n")]
        for piece in tables:
            if piece.startswith("["):
                _header(piece)  # a "[" line that is no header cannot be read on its own
        heads = [line for line in lines if line.lstrip().startswith("[")]  # the models table's own first line
        models = [line for line in lines if not line.lstrip().startswith("[")]
        if models and not heads:
            heads = [_MODELS_LINE[:-1]]
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
                batch = [_MODELS_LINE[:-1], *batch]  # model lines under their table's header
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


def _is_ref(piece: str) -> bool:
    """Whether an array piece is a workflow model entry; unsure (quoted paths): fall back."""
    path, array = _header(piece)
    if array and path.startswith(_WORKFLOWS_PREFIX) and path.endswith(".models"):
        return True
    if "comfydock" in path:
        raise ChunkFallback
    return False


def differential_diff(old: bytes, new: bytes, old_label: str, new_label: str) -> ManifestDiff:
    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        raise ChunkFallback from None
    old_version, new_version = _Version(old_text), _Version(new_text)
    only_old, only_new, common = _compare(old_version.pieces(), new_version.pieces())
    old_lines, new_lines, _ = _compare(old_version.lines, new_version.lines)
    if any("<<<<<<<" in s or ">>>>>>>" in s for s in only_new + new_lines):
        raise ChunkFallback  # let the full reader name the conflict marker

    old_side, new_side = _Side(old_label), _Side(new_label)
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
    common_side = _Side(new_label)

    def common_refs(model_hash: str) -> list[WorkflowModelRef]:
        start = len(common_side.refs)
        for piece in common_by_hash.get(model_hash, ()):
            if _is_ref(piece):
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
    problems = list(new_side.reader.problems)
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


def _new_intents(old_side: _Side, new_side: _Side, common: list[str]) -> tuple[WorkflowModelRef, ...]:
    candidates = [r for r in new_side.refs if r.is_intent]
    if not candidates:
        return ()
    known = {r.identity for r in old_side.refs if r.status == "unresolved"}
    unresolved_common = _Side("")
    for piece in common:
        if piece.startswith("[[") and "unresolved" in piece and _is_ref(piece):
            unresolved_common.add(piece)
    known |= {r.identity for r in unresolved_common.refs if r.status == "unresolved"}
    return tuple(r for r in candidates if r.identity not in known)


def _global_entries(hashes: set[str], new_side: _Side, version: _Version, label: str) -> dict[str, ManifestModel]:
    """The global entries of `hashes` in the new version (changed ones are already read)."""
    found = {h: m for h, m in new_side.models.items() if h in hashes}
    wanted = hashes - set(found)
    if not wanted:
        return found
    side = _Side(label)
    line_of = dict(zip(version.keys, version.lines[1:]))
    for key in wanted:
        if key in line_of:
            side.add_line(line_of[key])
        elif key in version.table_models:
            side.add(version.parts[version.table_models[key]])
    found.update({h: m for h, m in side.models.items() if h in hashes})
    return found
