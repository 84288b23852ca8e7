"""Cutting a pyproject.toml into pieces for the differential read (core/manifest/differential.py).

One piece per table header; the `[tool.<dialect>.models]` table further into one
line per model. Nothing here parses TOML: it only cuts, names and classifies text,
and raises ChunkFallback where the cut cannot vouch for itself (the caller then
parses both documents in full).
"""

from __future__ import annotations

import operator
import re

from .. import dialect as dialects
from ..dialect import Dialect


class Names:
    """The table spellings of one dialect (`tool.comfydock` or `tool.comfygit`)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.tool = f"tool.{dialect.name}"
        self.models_header = dialect.models_table
        self.models_prefix = self.models_header + "."
        self.workflows_prefix = dialect.workflows_table + "."
        self.models_line = f"[{self.models_header}]\n"
        self.ancestors = ("", "tool", self.tool, dialect.workflows_table)


NAMES = {d.name: Names(d) for d in dialects.DIALECTS.values()}
MODELS_HEADER = NAMES["comfydock"].models_header
# A table header line at the start of a piece (group 1: "[" or "[["; group 2: the dotted path).
_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_HEADER_RE = re.compile(
    rf"[ \t]*(\[\[?)[ \t]*({_KEY}(?:[ \t]*\.[ \t]*{_KEY})*)[ \t]*\]\]?[ \t]*(?:#[^\n]*)?\r?(?=\n|$)"
)
_SPACES_AROUND_DOTS = re.compile(r"[ \t]*\.[ \t]*")
_TRIPLE_DOUBLE_RE = re.compile('"""')
_TRIPLE_SINGLE_RE = re.compile("'''")
# Splits before every line whose first non-blank is "[" (the newline goes).
_LINE_BRACKET_SPLIT_RE = re.compile(r"\n(?=[ \t]*\[)")
_starts_with_bracket = operator.methodcaller("startswith", "[")
# Array headers that are not `[[<...>.models]]`: they need a closer look.
_ODD_ARRAY_RE = re.compile(r"\n\[\[(?![^\n]*\.models[ \t]*\]\][ \t]*(?:#[^\n]*)?\r?(?:\n|$))")
_ODD_INDENTED_ARRAY_RE = re.compile(r"\n[ \t]*\[\[(?![^\n]*\.models[ \t]*\]\][ \t]*(?:#[^\n]*)?\r?(?:\n|$))")
# Key lines of [tool.comfydock.models]: `key =` (group 1: the key), `key.` (a dotted key: one
# model over several lines), and where any key line starts.
_MODEL_KEY_RE = re.compile(r"\n[ \t]*(\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z0-9_-]+)[ \t]*=")
_DOTTED_KEY_LINE_RE = re.compile(r"\n[ \t]*(?:\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z0-9_-]+)[ \t]*\.")
_KEY_LINE_SPLIT_RE = re.compile(r"\n(?=[ \t]*(?:\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z0-9_-]+)[ \t]*[.=])")
# A key line whose key mentions "models" (dotted keys or inline arrays holding model data).
_MODELS_KEY_RE = re.compile(r"(?:^|\n)[ \t]*[^\n=\[#]*models[^\n=]*=")
# Tables that could hold model data through dotted keys or inline arrays.


class ChunkFallback(Exception):
    """The differential read cannot vouch for its answer: parse in full."""


def has_multiline_strings(text: str) -> bool:
    return _TRIPLE_DOUBLE_RE.search(text) is not None or _TRIPLE_SINGLE_RE.search(text) is not None


def cut(text: str, check_strings: bool = True) -> tuple[list[str], bool]:
    """[lines before the first header (with a newline in front), then one piece per header].

    A piece is its header line and body, without the newline before the next header.
    The flag says whether the fast cut was used (no multi-line strings, no indented "[").
    `check_strings=False`: the caller looks for multi-line strings itself (the fast cut
    is then only right for a text without them).
    """
    # Each pass over a 3 MB text costs 1-3 ms: the regular-expression module's literal
    # search beats `in` for these needles, and one split finds headers and indented "[" both.
    if not (check_strings and has_multiline_strings(text)):
        # As if split after a newline put in front (no copy of the text: the hook is a fresh
        # process, where every new MB costs page faults).
        parts = _LINE_BRACKET_SPLIT_RE.split(text)
        head = parts[0]
        if head.startswith("["):
            parts.insert(0, "")
            fast = True
        else:
            fast = not (head[:1] in (" ", "\t") and head.lstrip(" \t").startswith("["))
            parts[0] = "\n" + head
        # Every header starts a line with "[". A line of a multi-line array may too: such a
        # piece is not a header, and the piece before it does not parse (caught when read).
        if fast and all(map(_starts_with_bracket, parts[1:])):
            return parts, True
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


def line_keys(lines: list[str]) -> list[str]:
    """The model keys that some models-table lines define (a dotted key: ChunkFallback)."""
    text = "\n" + "\n".join(lines)
    if _DOTTED_KEY_LINE_RE.search(text):
        raise ChunkFallback  # one model over several lines
    return _unquoted(_MODEL_KEY_RE.findall(text))


def _unquoted(keys: list[str]) -> list[str]:
    if "\"" in (joined := "".join(keys)) or "'" in joined:
        if "\\" in joined:
            raise ChunkFallback  # an escape in a quoted key (`"\\u0061"` is `a`): only the full read compares keys
        return [key.strip("\"'") for key in keys]
    return keys


def _lines(piece: str) -> list[str]:
    """A table's lines, the blank lines before the next header kept with the last line (as the
    key-line split keeps them), so that the last model's line reads the same in both versions."""
    lines = piece.split("\n")
    tail = piece[-64:]
    kept = tail.rstrip("\n")
    trailing = len(tail) - len(kept) if kept else len(piece) - len(piece.rstrip("\n"))  # no copy of the piece
    if trailing:
        del lines[-trailing:]
        lines[-1] += "\n" * trailing
    return lines


def header(piece: str) -> tuple[str, bool]:
    """(normalised dotted path, is array) of a piece's header line."""
    match = _HEADER_RE.match(piece)
    if match is None:
        raise ChunkFallback  # a "[" line that is no header: the cut cannot be trusted here
    bracket, path = match.group(1, 2)
    if " " in path or "\t" in path:
        path = _SPACES_AROUND_DOTS.sub(".", path)
    return path, bracket == "[["


def model_key(path: str, names: Names) -> str:
    rest = path[len(names.models_prefix) :]
    if rest[:1] in "\"'":
        quote = rest[0]
        end = rest.find(quote, 1)
        if end < 0 or end + 1 != len(rest):
            raise ChunkFallback  # a sub-table of a model entry, or a key we do not read this way
        if "\\" in rest:
            raise ChunkFallback  # an escape in a quoted key: only the full read compares keys
        return rest[1:end]
    if "." in rest or '"' in rest or "'" in rest:
        raise ChunkFallback
    return rest


class Version:
    """One version of the document, cut but (mostly) not classified."""

    def __init__(self, text: str, names: Names, check_model_lines: bool = True, check_strings: bool = True) -> None:
        """`check_model_lines=False` (the old version): its models table is only compared line by
        line, never read for the answer, so its lines are not vetted one by one (the new
        version's are: a line the two share is vetted there). `check_strings=False`: as `cut`'s."""
        parts, fast = cut(text, check_strings)
        self.parts = parts
        self.fast = fast  # cut the fast way: no multi-line string in the text, unless `strings_unchecked`
        self.strings_unchecked = fast and not check_strings
        self.models_at: int | None = None
        self.table_models: dict[str, int] = {}  # model key -> index of its [tool.comfydock.models.<key>] piece
        tables: list[str] = []
        models_table_prefix, workflow_table_prefix = "[" + names.models_prefix, "[" + names.workflows_prefix
        if _MODELS_KEY_RE.search(parts[0]):
            raise ChunkFallback  # model data through dotted keys at the top level
        for i in range(1, len(parts)):
            piece = parts[i]
            if piece.startswith("[["):
                continue  # array entries are looked at when needed (odd ones just below)
            if piece.startswith(models_table_prefix):
                path, _ = header(piece)
                key = model_key(path, names)
                if key in self.table_models:
                    raise ChunkFallback  # defined twice: let the full read report it
                self.table_models[key] = i
                continue
            if piece.startswith(workflow_table_prefix) and "models" not in piece:
                end = piece.find("\n")
                tables.append(piece if end < 0 else piece[:end])
                continue
            path, array = header(piece)
            if array:
                continue
            tables.append(path)
            plain = path.replace('"', "").replace("'", "") if ('"' in path or "'" in path) else path
            if plain == names.models_header:
                if path != plain:
                    raise ChunkFallback  # quoted header parts: not worth special-casing
                self.models_at = i
            elif plain.startswith(names.models_prefix):
                if not path.startswith(names.models_prefix):
                    raise ChunkFallback
                key = model_key(path, names)
                if key in self.table_models:
                    raise ChunkFallback
                self.table_models[key] = i
            elif plain.startswith(names.workflows_prefix):
                if not path.startswith(names.workflows_prefix):
                    raise ChunkFallback
                if ".models." in (path + ".")[len(names.workflows_prefix) - 1 :] or _MODELS_KEY_RE.search(piece):
                    raise ChunkFallback  # model data in a sub-table or an inline array
            elif plain in names.ancestors and _MODELS_KEY_RE.search(piece):
                raise ChunkFallback  # model data through dotted keys
        if len(set(tables)) != len(tables):
            raise ChunkFallback  # a table defined twice (say, by a merge): invalid TOML
        if fast:
            # Every "\n[[" starts a piece, and the models table (most of a large text) holds none.
            others = parts[1:] if self.models_at is None else parts[1 : self.models_at] + parts[self.models_at + 1 :]
            scanned, odd_arrays = "\n" + "\n".join(others), _ODD_ARRAY_RE
        else:
            scanned, odd_arrays = "\n" + text, _ODD_INDENTED_ARRAY_RE
        for match in odd_arrays.finditer(scanned):
            line_start = match.start() + 1
            line_end = scanned.find("\n", line_start)
            path, _ = header(scanned[line_start : len(scanned) if line_end < 0 else line_end])
            plain = path.replace('"', "").replace("'", "")
            if plain.startswith((names.tool + ".", names.dialect.name + ".")) or plain in names.ancestors:
                if not (path.startswith(names.workflows_prefix) and path.endswith(".models")):
                    raise ChunkFallback  # arrays of tables inside model entries, or quoted paths
        self.lines: list[str] = []  # the models table: [header and leading comments, one line per model]
        self.keys: list[str] = []  # the model key of lines[1:]
        if self.models_at is not None:
            if check_model_lines:
                self._split_models_table(parts[self.models_at], checked_strings=fast)
            else:
                self.lines = _lines(parts[self.models_at])
        # Environment-level models (ComfyGit): needed with no workflow entry. ComfyDock has none.
        if names.dialect.name != "comfydock":
            if self.models_at is not None and "criticality" in parts[self.models_at]:
                raise ChunkFallback
            if any("criticality" in parts[i] for i in self.table_models.values()):
                raise ChunkFallback
        if self.models_at is not None:
            # Read line by line from here on: let its one large copy go (its memory serves what
            # comes next), keeping the header line that names it.
            parts[self.models_at] = self.lines[0] if self.lines else parts[self.models_at]

    def _split_models_table(self, piece: str, checked_strings: bool = False) -> None:
        """`checked_strings`: the fast cut already found no multi-line string in the whole text."""
        if not checked_strings and ('"""' in piece or "'''" in piece):
            raise ChunkFallback  # a key line could hide inside a multi-line string
        keys = _MODEL_KEY_RE.findall(piece)
        # Every line after the header a key line (the usual case): the plain split is the same cut,
        # the blank lines before the next header kept with the last line as the key-line split does.
        lines = _lines(piece)
        if len(keys) != len(lines) - 1:
            lines = _KEY_LINE_SPLIT_RE.split(piece)
            if len(keys) != len(lines) - 1:
                raise ChunkFallback  # dotted keys spread one model over several lines
        keys = _unquoted(keys)
        if len(set(keys)) != len(keys) or not self.table_models.keys().isdisjoint(keys):
            raise ChunkFallback  # a model defined twice (say, by a merge): invalid TOML
        self.lines, self.keys = lines, keys

    def pieces(self) -> list[str]:
        """Every piece except the models table (compared line by line instead)."""
        if self.models_at is None:
            return self.parts
        return self.parts[: self.models_at] + self.parts[self.models_at + 1 :]
