"""A model key spelled with a TOML escape is the same key (tomllib reads `"\\u0064cf..."` as `dcf...`)."""

from __future__ import annotations

import pytest

from test_diff_shapes import H1, H1_LINE, H3_LINE, NEW, OLD, answer, definition

from cfd.core.manifest.diff import diff_manifest_bytes

ESCAPED_H1_LINE = '"\\u0064' + H1_LINE[1:].replace(" = ", '" = ', 1).replace("100", "101")

CASES = {
    # the old version defines H1 twice (a merge's leftover, one spelling escaped); the new one fixed it
    "old defines a model twice, one key escaped": (OLD.replace(H1_LINE, H1_LINE + "\n" + ESCAPED_H1_LINE), NEW),
    # the new version defines H1 twice: it does not parse
    "new defines a model twice, one key escaped": (OLD, NEW.replace(H3_LINE, ESCAPED_H1_LINE + "\n" + H3_LINE)),
    # the old version defines H1 as a line and as a table whose header spells the key with an escape
    "old defines a model as a line and an escaped table": (
        OLD + f'\n[tool.comfydock.models."\\u0064{H1[1:]}"]\nfilename = "a2"\nsize = 1\n', NEW),
}


@pytest.mark.parametrize("name", CASES)
def test_an_escaped_key_is_the_same_key(name: str) -> None:
    old, new = (text.encode() for text in CASES[name])
    expected = answer(lambda: definition(old, new))
    assert answer(lambda: diff_manifest_bytes(old, new)) == expected


def test_a_document_ending_in_a_bare_carriage_return_does_not_parse() -> None:
    """Pre-existing (fails on e98acdc too): a bare CR is not a newline in TOML, so a version whose last
    line ends in "\\r" without "\\n" does not parse; `_parse` adds the "\\n" meant for a piece cut before "\\n["."""
    old = OLD.replace("\n", "\r\n").encode()
    new = NEW.replace("\n", "\r\n").rstrip("\n").encode()  # ends with "\r"
    assert new.endswith(b"\r")
    expected = answer(lambda: definition(old, new))
    assert expected == "does not parse"
    assert answer(lambda: diff_manifest_bytes(old, new)) == expected
