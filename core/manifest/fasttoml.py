"""A fast reader for the TOML that ComfyDock and ComfyGit write; tomllib stays the definition.

tomllib reads ~4.5 MB/s, and a pyproject.toml with 10,000 models and 10,000
workflow entries is ~6 MB. Nearly all of it has two shapes: the lines of
`[tool.comfydock.models]` (`<hash> = {inline table}`) and the
`[[tool.comfydock.workflows.<name>.models]]` entries (`key = value` lines).
Those are rewritten to JSON by a few regular-expression passes and read by the
json module (in C); everything else is read by tomllib.

`loads` returns exactly what `tomllib.loads` would, or None when the document
steps outside the subset it vouches for (comments, escapes, literal strings,
floats, dates, multi-line values, dotted keys near the model tables, ...): the
caller then parses it with tomllib, which also names any syntax error.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tomllib import TOMLDecodeError  # noqa: F401

# Anything here sends the document to tomllib (control characters would clash with the placeholders).
_DECLINE = ('"""', "'''", "\\", "\x7f", "\x00", "\x01", "\r", "\t")
_INDENTED_BRACKET_RE = re.compile(r"\n[ \t]+\[")


class _Shapes:
    """The header spellings of one dialect's tables (`[tool.<name>...]`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.models_header = f"[tool.{name}.models]"
        self.ref_prefix = f"[[tool.{name}.workflows."
        self.ref_header_re = re.compile(rf'\[\[tool\.{name}\.workflows\.([A-Za-z0-9_-]+|"[^"\n]*")\.models\]\] *')
        self.workflow_table_re = re.compile(rf'\[tool\.{name}\.workflows\.([A-Za-z0-9_-]+|"[^"\n]*")(?:\.| *\])')


_SHAPES: dict[str, _Shapes] = {}


def _shapes(name: str) -> _Shapes:
    """One dialect's patterns, compiled when a document of that dialect is first read."""
    if name not in _SHAPES:
        _SHAPES[name] = _Shapes(name)
    return _SHAPES[name]


def _decode_error() -> type[Exception]:
    import tomllib

    return tomllib.TOMLDecodeError


def __getattr__(name: str) -> Any:
    # tomllib (~4 ms of a hook's imports) loads only when something falls back to it; callers'
    # `except fasttoml.TOMLDecodeError` looks the type up only when an exception is matched.
    if name == "TOMLDecodeError":
        return _decode_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
# Key lines elsewhere that could define the model tables too (dotted keys, inline tables).
_RISKY_KEY_RE = re.compile(r"(?:^|\n) *[^\n=\[#]*(?:tool|comfydock|comfygit|models|workflows)[^\n=]*=")
# The grammar of the two shapes once their strings are set aside (\x00 stands for a string,
# \x01 separates workflow entries): one `key = value` per line; a value is a string, an
# integer, a boolean, an array of those, an inline table of those and such arrays, or an
# array of such inline tables. No floats, no nesting beyond that, no trailing commas.
# Possessive quantifiers and atomic groups: nothing to backtrack into, ~5x faster.
_K = r"[A-Za-z0-9_-]++"
_S = r"(?>\x00|-?+(?:0|[1-9][0-9]*+)|true|false)"
_A = rf"\[ *+(?:{_S} *+(?:, *+{_S} *+)*+)?+\]"
_T = rf"\{{ *+(?:{_K} *+= *+(?:{_S}|{_A}) *+(?:, *+{_K} *+= *+(?:{_S}|{_A}) *+)*+)?+\}}"
_V = rf"(?>{_S}|{_A}|{_T}|\[ *+(?:{_T} *+(?:, *+{_T} *+)*+)?+\])"
_STRUCTURE_RE = re.compile(rf"(?:\n(?:{_K} *+= *+{_V} *+)?+|\x01)*+")
# Literal replacements only: with a template, Python 3.11's re.sub calls back into Python per match.
_LINE_KEY_RE = re.compile(r"\n(?=[A-Za-z0-9_-]+ *=)")
_INLINE_KEY_RE = re.compile(r"\{ *(?=[A-Za-z0-9_-]+ *=)")
_NEXT_KEY_RE = re.compile(r", *(?=[A-Za-z0-9_-]+ *=)")
_EQUALS_RE = re.compile(r" *= *")
_NEWLINES_RE = re.compile(r"\n[ \n]*")
_BLANK_LINES_RE = re.compile(r"\n[ \n]*\n")


BATCH = 2000  # entries or lines rewritten to JSON at once (chunks.py reads pieces in slices of as many)


class _Decline(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Decline  # a key defined twice: tomllib says how
    return result


def _no_constants(name: str) -> Any:
    raise _Decline  # NaN / Infinity are JSON extensions, not TOML


def _to_json(body: str, wrap: tuple[str, str]) -> Any:
    """TOML `key = value` lines (entries separated by \\x01) -> the JSON value, or _Decline."""
    parts = body.split('"')
    if len(parts) % 2 == 0:
        raise _Decline  # an unterminated string
    structure = "\n" + "\x00".join(parts[0::2]).replace("\x01", "\x01\n")  # each entry starts a line
    if not _STRUCTURE_RE.fullmatch(structure):
        raise _Decline
    structure = _BLANK_LINES_RE.sub("\n", structure)
    structure = _LINE_KEY_RE.sub('\n"', structure)
    structure = _INLINE_KEY_RE.sub('{"', structure)
    structure = _NEXT_KEY_RE.sub(',"', structure)
    if structure.count("=") == structure.count(" = ") and "  =" not in structure and "=  " not in structure:
        structure = structure.replace(" = ", '": ')  # tomlkit's spacing: no regex needed
    else:
        structure = _EQUALS_RE.sub('": ', structure)
    structure = structure.replace("\n", ",").replace("\x01,", "},{")[1:]
    pieces = structure.split("\x00")
    if len(pieces) * 2 - 1 != len(parts):
        raise _Decline
    parts[0::2] = pieces
    document = wrap[0] + '"'.join(parts) + wrap[1]
    try:
        if wrap == ("{", "}"):
            return _lines_table(document, keys=structure.count('": '))
        return json.loads(document, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except ValueError:
        raise _Decline from None


def _lines_table(document: str, keys: int) -> dict[str, Any]:
    """A table of `key = value` lines (the models table), read by json's C decoder alone when it can.

    A key written twice is then found by counting, not by a Python call per table: each key of
    the text is one `": ` of the structure (its strings were set aside), and when every value
    is an inline table (which the grammar lets hold no table) json kept the lines' keys plus
    their tables' keys. Any other shape is read again with the per-table check."""
    table = json.loads(document, parse_constant=_no_constants)
    if type(table) is dict and set(map(type, table.values())) <= {dict}:
        if len(table) + sum(map(len, table.values())) != keys:
            raise _Decline  # a key defined twice: tomllib says how
        return table
    return json.loads(document, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def read(text: str) -> tuple[dict[str, Any], bool]:
    """The document (this reader's, else tomllib's, whose errors pass through) and whether no
    string in it can hold a control character.

    The second is true for an ASCII text this reader took: it declines escapes, tabs, CR and
    DEL, and a basic string cannot hold a raw newline, so no C0 or C1 character is left to hide
    in one. The manifest reader then need not look at each string."""
    fast = loads(text)
    if fast is not None:
        return fast, text.isascii()
    import tomllib

    return tomllib.loads(text), False


def _name(quoted_or_bare: str) -> str:
    return quoted_or_bare[1:-1] if quoted_or_bare.startswith('"') else quoted_or_bare


def loads(text: str) -> dict[str, Any] | None:
    """tomllib.loads(text) for ComfyDock's usual layout, faster; None when unsure."""
    if any(marker in text for marker in _DECLINE) or _INDENTED_BRACKET_RE.search(text):
        return None
    shapes = _shapes("comfygit" if "[tool.comfygit" in text else "comfydock")
    if shapes.name == "comfygit" and "comfydock" in text:
        return None  # maybe both tables: the plain reading, then the manifest reader says so
    try:
        return _loads(text, shapes)
    except (_Decline, RecursionError, _decode_error()):  # evaluated only when something was raised
        return None


def _loads(text: str, shapes: _Shapes) -> dict[str, Any]:
    split = ("\n" + text).split("\n[")
    rest = [split[0]]
    models_body: str | None = None
    ref_bodies: list[str] = []
    ref_names: list[str] = []
    order: dict[str, None] = {}  # workflows in order of first appearance
    header_names: dict[str, str] = {}
    for part in split[1:]:
        piece = "[" + part
        end = piece.find("\n")
        header = piece if end < 0 else piece[:end]
        if header.startswith(shapes.ref_prefix):
            name = header_names.get(header)
            if name is None:
                match = shapes.ref_header_re.fullmatch(header)
                if match is None:
                    raise _Decline
                name = header_names[header] = _name(match.group(1))
            ref_names.append(name)
            ref_bodies.append("" if end < 0 else piece[end + 1 :].strip("\n "))
            order[name] = None
        elif header == shapes.models_header:
            if models_body is not None:
                raise _Decline  # the table twice: tomllib says how
            models_body = "" if end < 0 else piece[end + 1 :].strip("\n ")
        else:
            if "workflows" in header:
                match = shapes.workflow_table_re.match(header)
                if match is None:
                    raise _Decline  # [tool.comfydock.workflows] itself, or spelled in a way we do not read here
                order[_name(match.group(1))] = None
            rest.append(piece)
    del split  # every piece is copied into rest, the bodies or the models table by now
    rest_text = "\n".join(rest)
    if models_body is None and not ref_bodies:
        import tomllib

        return tomllib.loads(text)  # nothing for the fast path: the plain reading
    if _RISKY_KEY_RE.search(rest_text):
        raise _Decline
    if rest_text.strip(" \n"):
        import tomllib  # here only: pieces of model lines and entries alone (a hook's usual read) need none

        document = tomllib.loads(rest_text)
    else:
        document = {}  # what tomllib reads from blank lines
    comfydock = _table(_table(document, "tool"), shapes.name)
    if models_body is not None:
        if "models" in comfydock:
            raise _Decline  # also defined by headers elsewhere
        comfydock["models"] = _models_in_batches(models_body)
    if ref_bodies:
        entries = []
        for start in range(0, len(ref_bodies), BATCH):  # the rewriting copies the text several times: bound it
            entries += _to_json("\x01".join(ref_bodies[start : start + BATCH]), ("[{", "}]"))
            ref_bodies[start : start + BATCH] = [""] * len(ref_bodies[start : start + BATCH])
        workflows = _table(comfydock, "workflows")
        for name in order:
            workflow = _table(workflows, name)
            if "models" in workflow:
                raise _Decline
        for name, entry in zip(ref_names, entries):
            workflows[name].setdefault("models", []).append(entry)
        # tomllib creates each workflow where it first appears, whichever header that is.
        reordered = {name: workflows.pop(name) for name in order}
        reordered.update(workflows)
        comfydock["workflows"] = reordered
    return document


def _models_in_batches(body: str) -> dict[str, Any]:
    """The models table, `BATCH` lines at a time: each line is one whole `key = value`
    (a basic string cannot hold a raw newline), so memory stays near the text's size
    instead of several times it (issue 10)."""
    models: dict[str, Any] = {}
    lines = body.split("\n")
    for start in range(0, len(lines), BATCH):
        batch = _to_json("\n".join(lines[start : start + BATCH]), ("{", "}"))
        if not models.keys().isdisjoint(batch):
            raise _Decline  # a model defined twice: tomllib says how
        models.update(batch)
    return models


def _table(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        raise _Decline
    return value
