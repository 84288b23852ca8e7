"""Reading the model tables of pyproject.toml (core/manifest/model.py)."""

from __future__ import annotations

import random
import tomllib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cfd.core.manifest import fasttoml
from cfd.core.errors import ManifestError
from cfd.core.manifest.model import EMPTY_MANIFEST, parse_manifest
from helpers.manifest import ManifestBuilder, big_manifest
from test_diff import random_doc  # the manifest generator of the differential-diff property

H1, H2, H3 = "dcf5f306c2a63465", "0123456789abcdef", "fedcba9876543210"
LABEL = "/env/.cec/pyproject.toml"

# The example of SPEC.md, byte for byte.
SPEC_EXAMPLE = b"""\
[project]
name = "env"

[tool.comfydock.models]
dcf5f306c2a63465 = {filename = "a.safetensors", size = 41943040, relative_path = "checkpoints/a.safetensors", category = "checkpoints", sources = ["https://huggingface.co/org/repo/resolve/main/a.safetensors"]}

[tool.comfydock.workflows.wf1]
path = "workflows/wf1.json"

[[tool.comfydock.workflows.wf1.models]]
filename = "a.safetensors"
category = "checkpoints"
criticality = "required"        # required | flexible | optional; absent means flexible
status = "resolved"             # resolved | unresolved; absent means resolved
nodes = [{node_id = "4", node_type = "CheckpointLoaderSimple", widget_idx = 0, widget_value = "a.safetensors"}]
hash = "dcf5f306c2a63465"       # resolved entries point into the global table

[[tool.comfydock.workflows.wf1.models]]
filename = "lora.safetensors"
category = "loras"
criticality = "optional"
status = "unresolved"           # a download intent: no hash yet
nodes = [{node_id = "7", node_type = "LoraLoader", widget_idx = 0, widget_value = "lora.safetensors"}]
sources = ["https://civitai.com/api/download/models/12345"]
relative_path = "loras/lora.safetensors"
"""


def test_spec_example() -> None:
    manifest = parse_manifest(SPEC_EXAMPLE, LABEL)
    assert manifest.problems == ()
    assert manifest.has_comfydock
    model = manifest.models[H1]
    assert (model.filename, model.size, model.relative_path, model.category) == (
        "a.safetensors", 41943040, "checkpoints/a.safetensors", "checkpoints")
    assert model.sources == ("https://huggingface.co/org/repo/resolve/main/a.safetensors",)
    assert manifest.workflows == ("wf1",)
    resolved, intent = manifest.refs
    assert (resolved.hash, resolved.criticality, resolved.is_resolved, resolved.is_intent) == (H1, "required", True, False)
    assert resolved.identity == ("wf1", "4", 0, None)
    assert (intent.is_intent, intent.hash, intent.criticality) == (True, None, "optional")
    assert intent.target_path == "loras/lora.safetensors"
    assert intent.identity == ("wf1", "7", 0, None)
    assert manifest.intents == (intent,)
    assert manifest.needed() == {H1: "required"}


def test_absent_criticality_and_status_mean_flexible_and_resolved() -> None:
    text = ManifestBuilder().model(H1, "a.safetensors", 1).ref("wf", "a.safetensors", "checkpoints", hash=H1).render()
    (ref,) = parse_manifest(text.encode()).refs
    assert (ref.criticality, ref.status) == ("flexible", "resolved")


def test_inline_and_table_styles_give_the_same_records() -> None:
    def build(style: str) -> bytes:
        return (
            ManifestBuilder()
            .model(H1, "a.safetensors", 10, "checkpoints/a.safetensors", "checkpoints", ["https://x/a"], style=style)  # type: ignore[arg-type]
            .ref("wf", "a.safetensors", "checkpoints", hash=H1)
            .render()
            .encode()
        )

    assert parse_manifest(build("inline")).models == parse_manifest(build("table")).models


def test_optional_keys_of_global_entries() -> None:
    text = (
        ManifestBuilder()
        .model(H1, "a.safetensors", 10, category="vae", sources=None)  # no relative_path, no sources
        .model(H2, "b.safetensors", 10, sources=[])
        .model(H3, "c.safetensors", 10, blake3="ab" * 32, sha256="cd" * 32)  # cfd's own optional keys
        .render()
    )
    manifest = parse_manifest(text.encode())
    assert manifest.problems == ()
    assert manifest.models[H1].relative_path == "vae/a.safetensors"
    assert manifest.models[H1].sources == () and manifest.models[H2].sources == ()
    assert (manifest.models[H3].blake3, manifest.models[H3].sha256) == ("ab" * 32, "cd" * 32)


def test_intent_target_falls_back_to_category_and_filename() -> None:
    text = ManifestBuilder().ref("wf", "x.safetensors", "loras", status="unresolved", sources=["https://civitai.com/api/download/models/1"]).render()
    (intent,) = parse_manifest(text.encode()).intents
    assert intent.target_path == "loras/x.safetensors"


def test_entry_without_nodes_is_identified_by_filename() -> None:
    text = b'[[tool.comfydock.workflows.wf.models]]\nfilename = "x.safetensors"\nstatus = "unresolved"\n'
    (ref,) = parse_manifest(text).refs
    assert ref.identity == ("wf", None, None, "x.safetensors")
    assert ref.category is None and ref.target_path == "x.safetensors"


def test_needed_takes_the_strongest_criticality() -> None:
    text = (
        ManifestBuilder()
        .model(H1, "a", 1)
        .ref("wf1", "a", "checkpoints", hash=H1, criticality="optional")
        .ref("wf2", "a", "checkpoints", hash=H1, criticality="required")
        .ref("wf3", "a", "checkpoints", hash=H1)
        .ref("wf4", "b", "checkpoints", status="unresolved", sources=["https://x/b"], criticality="required")
        .render()
    )
    assert parse_manifest(text.encode()).needed() == {H1: "required"}


def test_other_tables_are_read_past() -> None:
    manifest = parse_manifest(ManifestBuilder().render().encode())  # [project], [tool.comfydock.nodes] only
    assert manifest.models == {} and manifest.refs == () and manifest.problems == ()
    assert manifest.has_comfydock


def test_a_pyproject_without_comfydock_is_an_empty_manifest() -> None:
    manifest = parse_manifest(b'[project]\nname = "x"\n[tool.ruff]\nline-length = 100\n')
    assert not manifest.has_comfydock and manifest.needed() == {} and manifest.problems == ()
    assert not EMPTY_MANIFEST.has_comfydock


def test_records_are_immutable() -> None:
    manifest = parse_manifest(SPEC_EXAMPLE)
    with pytest.raises(AttributeError):
        manifest.models[H1].size = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        manifest.refs[0].hash = H2  # type: ignore[misc]


# --- unreadable documents: one located ManifestError -----------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            b'[tool.comfydock.models]\n<<<<<<< HEAD\nx = 1\n=======\nx = 2\n>>>>>>> theirs\n',
            f"{LABEL}:2: merge-conflict marker '<<<<<<<'",
            id="conflict-markers",
        ),
        pytest.param(
            b'[project]\r\nname = "x"\r\n<<<<<<<\r\nversion = "1"\r\n=======\r\nversion = "2"\r\n>>>>>>>\r\n',
            f"{LABEL}:3: merge-conflict marker '<<<<<<<'",
            id="unlabelled-markers-crlf",
        ),
        pytest.param(b'[tool.comfydock.models\nabc = 1\n', f"{LABEL}: invalid TOML", id="bad-toml"),
        pytest.param(b'[project]\nname = "x"\nname = "y"\n', f"{LABEL}: invalid TOML", id="duplicate-key"),
        pytest.param(b'[project]\nname = "caf\xe9"\n', f"{LABEL}:2: not valid UTF-8", id="latin-1"),
        pytest.param(b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", f"{LABEL}:", id="deeply-nested"),
    ],
)
def test_unreadable_documents_raise_one_located_error(data: bytes, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, LABEL)
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message
    assert caught.value.hint  # says what to do


# --- readable documents with bad entries: problems, and the good entries survive -----


def problems_of(text: str) -> list[str]:
    manifest = parse_manifest(text.encode(), LABEL)
    return list(manifest.problems)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('{filename = "a", size = "big"}', f"[tool.comfydock.models.{H2}] 'size' must be a non-negative integer, not str 'big'"),
        ('{filename = "a", size = -1}', f"[tool.comfydock.models.{H2}] 'size' must be a non-negative integer"),
        ('{filename = "a", size = true}', f"[tool.comfydock.models.{H2}] 'size' must be a non-negative integer, not bool"),
        ('{size = 10}', f"[tool.comfydock.models.{H2}] missing 'filename'"),
        ('{filename = 7}', f"[tool.comfydock.models.{H2}] 'filename' must be a non-empty string, not int 7"),
        ('{filename = "a", sources = "https://x/a"}', f"[tool.comfydock.models.{H2}] 'sources' must be an array of URLs"),
        ('{filename = "a", sources = [1, "https://x/a"]}', f"[tool.comfydock.models.{H2}] 'sources' holds entries that are not URL strings"),
        ('"just a string"', f"[tool.comfydock.models.{H2}] is not a table"),
    ],
)
def test_bad_global_entries_are_located_problems(entry: str, expected: str) -> None:
    text = f'[tool.comfydock.models]\n{H1} = {{filename = "good", size = 1}}\n{H2} = {entry}\n'
    manifest = parse_manifest(text.encode(), LABEL)
    assert [p for p in manifest.problems if expected in p], manifest.problems
    assert all(p.startswith(f"{LABEL}: ") for p in manifest.problems)
    assert manifest.models[H1].filename == "good"  # the good entry survives


def test_a_key_that_is_no_hash_is_a_problem() -> None:
    problems = problems_of('[tool.comfydock.models]\n"my model" = {filename = "a"}\n')
    assert problems == [f"{LABEL}: [tool.comfydock.models.my model] key is not a model hash (hex digits)"]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ('criticality = "urgent"', "'criticality' is str 'urgent'; expected one of optional, flexible, required"),
        ('status = "done"', "'status' is str 'done'; expected one of resolved, unresolved"),
        ("filename = 3", "'filename' must be a non-empty string, not int 3"),
    ],
)
def test_bad_workflow_entries_are_located_problems(field: str, expected: str) -> None:
    base = {"filename": 'filename = "a.safetensors"', "hash": f'hash = "{H1}"'}
    key = field.split(" ")[0]
    lines = [line for k, line in base.items() if k != key] + [field]
    text = (
        f'[tool.comfydock.models]\n{H1} = {{filename = "a.safetensors", size = 1}}\n'
        '[[tool.comfydock.workflows.wf.models]]\n' + "\n".join(lines) + "\n"
        '[[tool.comfydock.workflows.wf.models]]\nfilename = "ok.safetensors"\nhash = "' + H1 + '"\n'
    )
    manifest = parse_manifest(text.encode(), LABEL)
    assert manifest.problems == (f"{LABEL}: [tool.comfydock.workflows.wf.models[0]] {expected}",)
    assert "ok.safetensors" in [r.filename for r in manifest.refs]


def test_structural_problems() -> None:
    assert problems_of('[tool.comfydock]\nmodels = 3\nworkflows = ["a"]\n') == [
        f"{LABEL}: [tool.comfydock.models] is not a table",
        f"{LABEL}: [tool.comfydock.workflows] is not a table",
    ]
    assert problems_of('[tool.comfydock.workflows.wf]\nmodels = "a"\n') == [
        f"{LABEL}: [tool.comfydock.workflows.wf.models] is not an array of tables"
    ]
    assert problems_of('[tool]\ncomfydock = 1\n') == [f"{LABEL}: [tool.comfydock] is not a table"]
    assert problems_of('[tool.comfydock.workflows.wf]\nmodels = [1]\n') == [
        f"{LABEL}: [tool.comfydock.workflows.wf.models[0]] is not a table"
    ]


def test_dangling_hash_is_a_problem_naming_workflow_file_and_hash() -> None:
    text = ManifestBuilder().model(H1, "a", 1).ref("portrait", "ghost.safetensors", "loras", hash=H3).render()
    manifest = parse_manifest(text.encode(), LABEL)
    assert manifest.problems == (
        f"{LABEL}: [tool.comfydock.workflows.portrait.models] 'ghost.safetensors' names hash {H3}, "
        "which [tool.comfydock.models] lacks",
    )
    assert manifest.needed() == {H3: "flexible"}  # still needed: detect_missing reports, never crashes


def test_resolved_entry_without_hash() -> None:
    problems = problems_of('[[tool.comfydock.workflows.wf.models]]\nfilename = "a.safetensors"\nstatus = "resolved"\n')
    assert problems == [f"{LABEL}: [tool.comfydock.workflows.wf.models[0]] 'a.safetensors' is resolved but has no hash"]


# --- the fast reader (core/manifest/fasttoml.py): tomllib's answer or none ------------------------

_JUNK = ["=", ",", "[", "]", "{", "}", "1", "a", "-", '"', "\n", " ", "#", "'", ".", "\\", "\t", "true", "-0", "01",
         "1e5", "1.5", "+1", "1_0", "nan", "NaN", "= 1", ", a = 1", "{}", "[]", "\n\n", "x = [1,\n2]\n", "y = {a = 1}\n",
         "\nz = [{a = [1]}]", "[[", "]]", "\n[tool.comfydock.models]\n", "\n[[tool.comfydock.workflows.wf1.models]]\n",
         "\n[tool.comfydock.workflows]\nx = 1\n", "models.a = 1\n", "é", "99999999999999999999999"]


def _same_document(fast: dict, reference: dict) -> bool:  # type: ignore[type-arg]
    def workflows(doc: dict) -> list[str] | None:  # type: ignore[type-arg]
        found = doc.get("tool", {}).get("comfydock", {}).get("workflows")
        return list(found) if isinstance(found, dict) else None

    return fast == reference and workflows(fast) == workflows(reference)  # workflow order is status order


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), damage=st.integers(0, 3))
def test_fast_reader_gives_tomllibs_answer_or_none(seed: int, damage: int) -> None:
    rng = random.Random(seed)
    doc = random_doc(rng)
    if rng.random() < 0.7:  # mostly ComfyDock's own layout, which the fast path takes
        doc.description, doc.crlf, doc.inline_workflows = False, False, set()
        for model in doc.models.values():
            model.style, model.comment = "inline", None
    text = doc.render()
    for _ in range(damage):
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(_JUNK) + text[at + rng.choice([0, 0, 1, 3]):]
    fast = fasttoml.loads(text)
    try:
        reference = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assert fast is None, text
        return
    assert fast is None or _same_document(fast, reference), text


def test_fast_reader_takes_comfydocks_layout() -> None:
    old, new = big_manifest(300, 30, 5, new_fraction=0.1)
    for text in (old, new):
        fast = fasttoml.loads(text)
        assert fast is not None and _same_document(fast, tomllib.loads(text))
    assert fasttoml.loads(SPEC_EXAMPLE.decode()) is None  # comments: tomllib reads it


def test_fast_reader_across_its_batches() -> None:
    """Issue 10: the fast reader rewrites the text in batches (its copies stayed ~10x the
    text). Across batch boundaries: the same document, and a model defined twice still declines."""
    _, new = big_manifest(2 * fasttoml.BATCH + 300, 500, 9, new_fraction=0.1)
    fast = fasttoml.loads(new)
    assert fast is not None and _same_document(fast, tomllib.loads(new))
    lines = [f'h{n:05d} = {{filename = "m{n}"}}' for n in range(2 * fasttoml.BATCH)]
    twice = "[tool.comfydock.models]\n" + "\n".join(lines + [lines[0]]) + "\n"
    assert fasttoml.loads(twice) is None


@pytest.mark.parametrize(
    "text",
    [
        '[tool.comfydock.models]\nabc = {filename = "a", filename = "b"}\n',  # duplicate key
        '[tool.comfydock.models]\nabc = {filename = "a"}\nabc = {filename = "b"}\n',
        # Counted, not checked per table: a duplicate among many plain lines, and in a table of mixed shapes.
        '[tool.comfydock.models]\n' + "".join(f'm{i} = {{filename = "f{i}", size = {i}}}\n' for i in range(50))
        + 'm7 = {filename = "again"}\n',
        '[tool.comfydock.models]\nabc = {filename = "a", size = 1, size = 2}\ndef = "xy"\n',
        '[tool.comfydock.models]\nabc = [{x = 1, x = 2}, {}]\ndef = "ab"\n',
        '[tool.comfydock.models]\nabc = {filename = "a", size = 1\n}\n',  # newline inside an inline table
        '[[tool.comfydock.workflows.w.models]]\nsize = 1 2\n',
        '[[tool.comfydock.workflows.w.models]]\nsize = 1, x = 2\n',
        '[[tool.comfydock.workflows.w.models]]\nx = [1\n2]\n',
        '[tool.comfydock]\nmodels = {}\n[tool.comfydock.models]\nabc = {filename = "a"}\n',
        '[tool.comfydock.workflows]\nw = {path = "x"}\n[[tool.comfydock.workflows.w.models]]\nfilename = "a"\n',
        '[tool.comfydock.models]\nabc = {size = NaN}\n',
        '[tool.comfydock.models]\nabc = {filename = "a\x7f"}\n',
    ],
)
def test_fast_reader_never_accepts_what_tomllib_rejects(text: str) -> None:
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    assert fasttoml.loads(text) is None
    with pytest.raises(ManifestError):
        parse_manifest(text.encode())


# The one-pass reading of plain model entries (`Reader.plain_row`) must give `model`'s answer.
_PLAIN_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cc",)), max_size=12)  # no control characters
_PLAIN_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-3, max_value=2**40), st.floats(allow_nan=False),
    _PLAIN_TEXT, st.sampled_from(["", "required", "optional", "flexible", "a\\b.safetensors"]),
    st.lists(st.one_of(_PLAIN_TEXT, st.integers(), st.just("")), max_size=3),
)
_MODEL_KEYS = ["filename", "size", "relative_path", "category", "sources", "blake3", "sha256", "criticality", "extra"]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["comfydock", "comfygit"]),
    st.dictionaries(st.text(alphabet="0123456789abcdefxy", min_size=1, max_size=16),
                    st.one_of(st.dictionaries(st.sampled_from(_MODEL_KEYS), _PLAIN_VALUES, max_size=8), _PLAIN_VALUES),
                    max_size=6),
)
def test_plain_entries_read_in_one_pass_give_the_per_field_readers_answer(dialect: str, table: dict) -> None:
    from cfd.core.dialect import DIALECTS
    from cfd.core.manifest.reader import Reader

    answers = []
    for plain in (True, False):
        reader = Reader("pyproject.toml", DIALECTS[dialect])
        reader.plain_strings = plain
        answers.append((dict(reader.model_table(table).items()), reader.problems))
    assert answers[0] == answers[1]


_NODES = st.lists(st.one_of(st.dictionaries(st.sampled_from(["node_id", "widget_idx"]), _PLAIN_VALUES, max_size=2),
                            _PLAIN_VALUES), max_size=2)
_USUAL = {"filename": "a.safetensors", "category": "vae", "criticality": "required", "status": "resolved",
          "hash": "abcd1234", "sources": ["https://x"], "relative_path": "vae/a", "declared_by": "manual"}
_ODD = ["", 0, None, ["x", ""], "unresolved", "optional", "a/b\\c", "absent"]
# A usual entry with up to two fields odd or left out: what the one-pass reading must leave to `ref`.
_ENTRY = st.builds(
    lambda changes, nodes: {k: v for k, v in {**_USUAL, "nodes": nodes, **dict(changes)}.items() if v != "absent"},
    st.lists(st.tuples(st.sampled_from([*_USUAL, "extra"]), st.sampled_from(_ODD)), max_size=2), _NODES)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(["comfydock", "comfygit"]), st.lists(st.one_of(_ENTRY, _PLAIN_VALUES), max_size=4))
@example("comfygit", [{**_USUAL, "declared_by": ""}, {**_USUAL, "relative_path": "a\\b"}, {**_USUAL, "relative_path": ""}, _USUAL])
def test_plain_workflow_entries_read_in_one_pass_give_the_per_field_readers_answer(dialect: str, entries: list) -> None:
    """`Reader.plain_ref` (taken when every string is known plain) must give `ref`'s answer."""
    from cfd.core.dialect import DIALECTS
    from cfd.core.manifest.reader import Reader

    answers = []
    for plain in (True, False):
        reader = Reader("pyproject.toml", DIALECTS[dialect])
        reader.plain_strings = plain
        answers.append((reader.workflows({"wf": {"models": entries}}), reader.problems))
    assert answers[0] == answers[1]


def test_models_table_makes_a_record_only_when_looked_up() -> None:
    from cfd.core.manifest.model import ManifestModel, ModelTable

    h1, h2 = "a" * 16, "b" * 16
    manifest = parse_manifest(ManifestBuilder().model(h1, "a.safetensors", 1, "checkpoints/a.safetensors")
                              .model(h2, "b.safetensors", 2, category="loras").render().encode())
    models = manifest.models
    assert isinstance(models, ModelTable) and not models._made
    assert models.get(h2) == ManifestModel(h2, "b.safetensors", 2, "loras/b.safetensors", "loras")
    assert list(models._made) == [h2] and models.get("c" * 16) is None and "c" * 16 not in models
    assert models.get(h2) is models[h2]  # made once
    assert list(models) == [h1, h2] and len(models) == 2
    assert models == {h1: models[h1], h2: models[h2]} and dict(models) == dict(models.items())
    with pytest.raises(KeyError):
        models["c" * 16]
