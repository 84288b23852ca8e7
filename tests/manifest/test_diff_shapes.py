"""The differential diff's cut (core/manifest/pieces.py) on the shapes it must not misread.

Each case is a pair of versions. The differential read must give the definition's answer
(`diff_manifests` on both versions parsed in full, an old version that does not parse
counting as empty) or the same refusal (a new version that does not parse), whichever way
it gets there; the usual layouts must get there without the full read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from cfd.core.errors import ManifestError
from cfd.core.manifest import pieces
from cfd.core.manifest.diff import diff_manifest_bytes, diff_manifests
from cfd.core.manifest.differential import ChunkFallback, differential_diff
from cfd.core.manifest.model import EMPTY_MANIFEST, parse_manifest
from helpers.manifest import ManifestBuilder, inline_table

H1, H2, H3 = "dcf5f306c2a63465", "0123456789abcdef", "fedcba9876543210"
HF = "https://huggingface.co/org/repo/resolve/main/"
WF3 = "[tool.comfydock.workflows.wf3]"


def base(style: str = "inline") -> ManifestBuilder:
    return (
        ManifestBuilder("comfydock")
        .model(H1, "a.safetensors", 100, "checkpoints/a.safetensors", "checkpoints", [HF + "a"])
        .model(H2, "b.safetensors", 200, "loras/b.safetensors", "loras", [HF + "b"], style=style)  # type: ignore[arg-type]
        .ref("wf1", "a.safetensors", "checkpoints", hash=H1, criticality="flexible", status="resolved", node_id="4")
        .ref("wf2", "b.safetensors", "loras", hash=H2, criticality="optional", status="resolved", node_id="7")
    )


def added(style: str = "inline") -> str:
    """base() and a workflow that needs a new model H3."""
    return (
        base(style)
        .model(H3, "c.safetensors", 300, "vae/c.safetensors", "vae", [HF + "c"])
        .ref("wf3", "c.safetensors", "vae", hash=H3, criticality="required", status="resolved", node_id="9")
        .render()
    )


OLD, NEW = base().render(), added()
H1_LINE = next(line for line in NEW.splitlines() if line.startswith(H1))
H3_LINE = next(line for line in NEW.splitlines() if line.startswith(H3))


def hidden(text: str) -> str:
    """wf3 and its entry inside a multi-line string (of wf2's last entry): read as text, not tables."""
    return text.replace(WF3, 'notes = """\n' + WF3) + '"""\n'


def models_last(text: str, tail: str) -> str:
    """The models table moved to the end of the text, followed by `tail`."""
    blocks = text.split("\n\n")
    models = [b for b in blocks if b.startswith("[tool.comfydock.models]")]
    rest = [b for b in blocks if not b.startswith("[tool.comfydock.models]")]
    return "\n\n".join(rest).rstrip("\n") + "\n\n" + models[0].rstrip("\n") + tail


def dotted(line: str) -> str:
    key, _, table = line.partition(" = ")
    entries = re.findall(r'(\w+) = ("[^"]*"|\d+|\[[^\]]*\])', table)
    return "\n".join(f"{key}.{name} = {value}" for name, value in entries)


Case = tuple[str, str, bool]  # old, new, whether the differential read must take it without the full read
CASES: dict[str, Case] = {
    "usual": (OLD, NEW, True),
    "multi-line string hid the new workflow": (hidden(NEW), NEW, False),
    "multi-line string hides the workflow": (NEW, hidden(NEW), False),
    "indented header": (OLD, NEW.replace(WF3, "  " + WF3), False),
    "indented first header": (OLD, "  " + NEW, False),
    "table defined twice (new)": (OLD, NEW + '\n[tool.comfydock.workflows.wf1]\npath = "x"\n', False),
    "table defined twice (old)": (OLD + '\n[tool.comfydock.workflows.wf1]\npath = "x"\n', NEW, False),
    "models table defined twice": (OLD, NEW + f"\n[tool.comfydock.models]\n{H3_LINE}\n", False),
    "dotted keys (new)": (OLD, NEW.replace(H3_LINE, dotted(H3_LINE)), False),
    "dotted keys (old)": (OLD.replace(H1_LINE, dotted(H1_LINE)), NEW, False),
    "quoted model key": (OLD, NEW.replace(H3_LINE, '"' + H3_LINE.replace(" = ", '" = ', 1)), True),
    "CRLF": (OLD.replace("\n", "\r\n"), NEW.replace("\n", "\r\n"), False),
    "CRLF (new only)": (OLD, NEW.replace("\n", "\r\n"), False),
    "conflict markers": (OLD, NEW.replace(H3_LINE, f"<<<<<<< HEAD\n{H3_LINE}\n=======\n>>>>>>> theirs"), False),
    "array of tables in a model entry": (
        base("table").render(), added("table") + f'\n[[tool.comfydock.models.{H2}.mirrors]]\nurl = "x"\n', False),
    "array header with a comment": (OLD, NEW.replace(f"[[{WF3[1:-1]}.models]]", f"[[{WF3[1:-1]}.models]] # new"), True),
    "models table last, no newline": (models_last(OLD, ""), models_last(NEW, ""), True),
    "models table last, blank lines": (models_last(OLD, "\n\n\n"), models_last(NEW, "\n\n\n"), True),
    "starts with an array of tables": (OLD, NEW[NEW.index(f"[[{WF3[1:-1]}.models]]"):] + NEW[: NEW.index(WF3)], False),
    "a line of an array starts with [": (OLD, NEW.replace('dependencies = ["torch>=2.1"', 'dependencies = [\n["torch>=2.1"]'), False),
    "comments and blank lines in the models table": (
        OLD, NEW.replace(H3_LINE, f"# the new one\n\n{H3_LINE}\n# end"), True),
    "a model twice in the old version, fixed": (
        OLD.replace(H1_LINE, H1_LINE + "\n" + H1_LINE.replace("100", "101")), NEW, False),
    "the same model line twice in the old version": (OLD.replace(H1_LINE, H1_LINE + "\n" + H1_LINE), NEW, False),
    "a model as a line and a table (old)": (
        OLD + f'\n[tool.comfydock.models.{H1}]\nfilename = "a2"\nsize = 1\n', NEW, False),
    "a model as a line and a table (new)": (
        OLD, NEW + f'\n[tool.comfydock.models.{H3}]\nfilename = "c2"\nsize = 1\n', False),
    # Only the new version is scanned for its dialect; the old one's own pieces and lines are looked at after.
    "the manager changed (old ComfyGit)": (OLD.replace("tool.comfydock", "tool.comfygit"), NEW, False),
    "both tables in the old version": (OLD + '\n[tool.comfygit]\ncomfyui_version = "x"\n', NEW, False),
    "the other manager dotted in the old root": ("tool.comfygit.x = 1\n" + OLD, NEW, False),
    "the other manager in an old model line": (OLD.replace(H1_LINE, H1_LINE + "\ntool.comfygit.x = 1"), NEW, False),
    # The old version is cut without looking for multi-line strings when the new one has none; its own text is then.
    "a multi-line string only in the old version": (OLD.replace("[project]\n", '[project]\nnotes = """\nhi\n"""\n', 1), NEW, True),
    "a header inside the old version's multi-line string": (
        OLD.replace("[project]\n", '[project]\nnotes = """\n[tool.comfydock.workflows.wf9]\npath = "x"\n"""\n', 1), NEW, True),
    "the old version's multi-line string hid pieces the new one has": (
        NEW.replace(WF3, 'notes = """\n' + WF3) + '\n[zzz]\n"""\n', NEW, False),
    "a bracket line inside the old version's multi-line string": (
        OLD.replace("[project]\n", '[project]\nnotes = """\n[not a header]\n"""\n', 1), NEW, True),
    # The new version's first mention names its dialect; its pieces are then checked for the other.
    "both tables in the new version": (OLD, NEW + '\n[tool.comfygit]\ncomfyui_version = "x"\n', False),
    "the other manager first in the new version": (OLD, '[tool.comfygit]\nx = 1\n' + NEW, False),
    "the other manager dotted on a new model line": (OLD, NEW.replace(H3_LINE, H3_LINE + "\ntool.comfygit.x = 1"), False),
    "no manager in the new version": (OLD.replace("tool.comfydock", "tool.comfygit"), NEW.replace("tool.comfydock", "tool.x"), False),
}


def answer(read: Callable[[], Any]) -> Any:
    try:
        diff = read()
    except ManifestError:
        return "does not parse"
    needed = sorted(diff.hashes_to_check)
    return (dict(diff.newly_needed), dict(diff.criticality_raised), sorted(diff.no_longer_needed),
            sorted(r.identity for r in diff.new_intents), [diff.new.models[h].relative_path if h in diff.new.models else None
                                                          for h in needed])


def definition(old: bytes, new: bytes) -> Any:
    new_manifest = parse_manifest(new)
    try:
        old_manifest = parse_manifest(old)
    except ManifestError:
        old_manifest = EMPTY_MANIFEST
    return diff_manifests(old_manifest, new_manifest)


@pytest.mark.parametrize("name", CASES)
def test_the_differential_read_gives_the_definitions_answer(name: str) -> None:
    old, new, quick = CASES[name]
    assert old != new
    expected = answer(lambda: definition(old.encode(), new.encode()))
    assert answer(lambda: diff_manifest_bytes(old.encode(), new.encode())) == expected
    # as a hook reads them: views of git's buffers (GitRepo.read_blob_view), also where the full read takes over
    assert answer(lambda: diff_manifest_bytes(memoryview(old.encode()), memoryview(new.encode()))) == expected
    if quick:
        assert answer(lambda: differential_diff(old.encode(), new.encode(), "old", "new")) == expected
    elif expected != "does not parse":
        try:  # a shape the cut cannot vouch for is read in full; if it is read differentially, rightly
            assert answer(lambda: differential_diff(old.encode(), new.encode(), "old", "new")) == expected
        except ChunkFallback:
            pass


def test_the_cases_mean_something() -> None:
    """Hostile shapes change the answer: hiding the workflow, or breaking either version."""
    results = {name: answer(lambda: definition(old.encode(), new.encode())) for name, (old, new, _) in CASES.items()}
    assert results["usual"][0] == {H3: "required"}
    assert results["multi-line string hid the new workflow"][0] == {H3: "required"}
    assert results["multi-line string hides the workflow"] != results["usual"]
    assert results["table defined twice (new)"] == "does not parse"
    assert results["a model twice in the old version, fixed"][0] == {H1: "flexible", H2: "optional", H3: "required"}
    assert results["the same model line twice in the old version"][0] == {H1: "flexible", H2: "optional", H3: "required"}


def reference_cut(text: str) -> list[str] | None:
    """The fast cut by its definition: before every line that starts with "[" (None: not its case)."""
    if '"""' in text or "'''" in text or re.search(r"(?:^|\n)[ \t]+\[", text):
        return None
    parts = ("\n" + text).split("\n[")
    return [parts[0]] + ["[" + part for part in parts[1:]]


@pytest.mark.parametrize("name", CASES)
def test_the_fast_cut_cuts_before_every_line_starting_with_a_bracket(name: str) -> None:
    for text in CASES[name][:2]:
        parts, fast = pieces.cut(text)
        expected = reference_cut(text)
        assert fast == (expected is not None)
        if expected is not None:
            assert parts == expected
        assert "\n".join(parts) in ("\n" + text, "\n\n" + text)  # nothing lost, nothing added


@pytest.mark.parametrize(
    "table",
    [
        "a = 1\nb = 2\n", "a = 1\nb = 2\n\n\n", "a = 1\nb = 2", "", "\n\n", "# c\na = 1\n\nb = 2\n", "a = 1\n  \n",
        "\"q\" = 1\n'r' = 2\n\n", "a = 1\nb = 2" + "\n" * 100, "a.filename = \"x\"\nb = 2\n", "a = 1\r\nb = 2\r\n\r",
    ],
)
def test_the_models_table_is_cut_into_the_same_lines_by_the_plain_split(table: str) -> None:
    """The plain split (with the blank lines before the next header kept on the last line) is
    only a faster way to the key-line split: same lines, same keys, or both refuse."""
    from cfd.core.manifest import pieces

    piece = "[tool.comfydock.models]\n" + table
    version = pieces.Version.__new__(pieces.Version)
    version.table_models = {}
    try:
        version._split_models_table(piece, checked_strings=True)
        got: Any = (version.lines, version.keys)
    except ChunkFallback:
        got = "read in full"
    keys = [key.strip("\"'") for key, separator in re.findall(
        r"\n[ \t]*(\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z0-9_-]+)[ \t]*([.=])", piece)]
    lines = pieces._KEY_LINE_SPLIT_RE.split(piece)
    dotted = re.search(r"\n[ \t]*[A-Za-z0-9_-]+[ \t]*\.", piece)
    assert got == ("read in full" if dotted or len(keys) != len(lines) - 1 else (lines, keys))
