"""What changed between two versions of the manifest (core/manifest/diff.py, core/manifest/differential.py).

`diff_manifests` on parsed manifests is the definition; `diff_manifest_bytes` reads only
the entries whose text changed. The property test at the end holds the differential
read to the definition over generated manifests and random edits.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfd.core.manifest.differential import ChunkFallback, differential_diff
from cfd.core.manifest.diff import diff_manifest_bytes, diff_manifests
from cfd.core.errors import ManifestError
from cfd.core.store.index import ModelIndex
from cfd.core.manifest.model import parse_manifest
from cfd.core.sync.missing import detect_missing_models
from helpers.manifest import ManifestBuilder, big_manifest, inline_table, toml_key, toml_value

H1, H2, H3, H4 = "dcf5f306c2a63465", "0123456789abcdef", "fedcba9876543210", "00000000deadbeef"
HF = "https://huggingface.co/org/repo/resolve/main/"


def base() -> ManifestBuilder:
    return (
        ManifestBuilder()
        .model(H1, "a.safetensors", 100, "checkpoints/a.safetensors", "checkpoints", [HF + "a.safetensors"])
        .model(H2, "b.safetensors", 200, "loras/b.safetensors", "loras", [HF + "b.safetensors"])
        .ref("wf1", "a.safetensors", "checkpoints", hash=H1, criticality="flexible", status="resolved", node_id="4")
        .ref("wf2", "b.safetensors", "loras", hash=H2, criticality="optional", status="resolved", node_id="7")
    )


def both(old: str, new: str):  # type: ignore[no-untyped-def]
    """The differential diff, checked against the full one on the same input."""
    quick = diff_manifest_bytes(old.encode(), new.encode())
    full = diff_manifests(parse_manifest(old.encode()), parse_manifest(new.encode()))
    assert summary(quick) == summary(full)
    return quick


def summary(diff: Any) -> tuple[Any, ...]:
    return (
        dict(diff.newly_needed),
        dict(diff.criticality_raised),
        sorted(map(repr, (r.identity for r in diff.new_intents))),
        sorted(diff.no_longer_needed),
    )


# --- examples a user would recognise --------------------------------------------------


def test_a_new_workflow_with_a_new_model_is_newly_needed() -> None:
    old = base().render()
    new = (
        base()
        .model(H3, "c.safetensors", 300, "vae/c.safetensors", "vae", [HF + "c.safetensors"])
        .ref("wf3", "c.safetensors", "vae", hash=H3, criticality="required", status="resolved")
        .render()
    )
    diff = both(old, new)
    assert diff.newly_needed == {H3: "required"}
    assert diff.hashes_to_check == [H3]
    assert diff.new.models[H3].relative_path == "vae/c.safetensors"
    assert [r.workflow for r in diff.new.refs if r.hash == H3] == ["wf3"]
    assert not diff.criticality_raised and not diff.no_longer_needed


def test_a_model_already_needed_elsewhere_is_not_new() -> None:
    old = base().render()
    new = base().ref("wf3", "a.safetensors", "checkpoints", hash=H1, criticality="flexible", status="resolved").render()
    diff = both(old, new)
    assert diff.is_empty


def test_criticality_raised_and_lowered() -> None:
    old = base().render()
    raised = base().ref("wf3", "b.safetensors", "loras", hash=H2, criticality="required", status="resolved").render()
    diff = both(old, raised)
    assert diff.criticality_raised == {H2: ("optional", "required")}
    assert diff.hashes_to_check == [H2]
    # The partial manifest carries every workflow that needs it, not only the changed one.
    assert {r.workflow for r in diff.new.refs if r.hash == H2} == {"wf2", "wf3"}
    lowered = both(raised, old)
    assert lowered.is_empty  # nothing to fetch when a model becomes less important


def test_absent_criticality_counts_as_flexible() -> None:
    old = ManifestBuilder().model(H1, "a", 1).ref("wf1", "a", "checkpoints", hash=H1, criticality="optional").render()
    new = ManifestBuilder().model(H1, "a", 1).ref("wf1", "a", "checkpoints", hash=H1).render()
    assert both(old, new).criticality_raised == {H1: ("optional", "flexible")}


def test_removed_workflow_makes_its_models_no_longer_needed() -> None:
    old = base().render()
    new = (
        ManifestBuilder()
        .model(H1, "a.safetensors", 100, "checkpoints/a.safetensors", "checkpoints", [HF + "a.safetensors"])
        .model(H2, "b.safetensors", 200, "loras/b.safetensors", "loras", [HF + "b.safetensors"])
        .ref("wf1", "a.safetensors", "checkpoints", hash=H1, criticality="flexible", status="resolved", node_id="4")
        .render()
    )
    diff = both(old, new)
    assert diff.no_longer_needed == (H2,)
    assert not diff.newly_needed


def test_new_intent_is_reported_once_and_keeps_its_identity_when_edited() -> None:
    old = base().render()
    with_intent = (
        base()
        .ref("wf1", "lora.safetensors", "loras", criticality="optional", status="unresolved", node_id="9",
             widget_idx=1, sources=["https://civitai.com/api/download/models/1"])
        .render()
    )
    diff = both(old, with_intent)
    assert [(r.workflow, r.node_id, r.widget_idx, r.target_path) for r in diff.new_intents] == [
        ("wf1", "9", 1, "loras/lora.safetensors")
    ]
    # Same (workflow, node, widget), new URL and criticality: not a new intent.
    edited = with_intent.replace("models/1", "models/2").replace('criticality = "optional"', 'criticality = "required"')
    assert both(with_intent, edited).new_intents == ()


def test_unresolved_entry_without_sources_is_not_an_intent() -> None:
    new = base().ref("wf1", "x.safetensors", "loras", status="unresolved", node_id="9").render()
    assert both(base().render(), new).new_intents == ()


def test_reordering_and_comments_change_nothing() -> None:
    old = base().render()
    lines = old.splitlines(keepends=True)
    new = "# team manifest\n" + "".join(lines).replace("[tool.comfydock.models]\n", "[tool.comfydock.models]\n# models\n")
    b = ManifestBuilder()
    b.model(H2, "b.safetensors", 200, "loras/b.safetensors", "loras", [HF + "b.safetensors"], style="table")
    b.model(H1, "a.safetensors", 100, "checkpoints/a.safetensors", "checkpoints", [HF + "a.safetensors"])
    b.ref("wf2", "b.safetensors", "loras", hash=H2, criticality="optional", status="resolved", node_id="7")
    b.ref("wf1", "a.safetensors", "checkpoints", hash=H1, criticality="flexible", status="resolved", node_id="4")
    assert both(old, new).is_empty
    assert both(old, b.render()).is_empty


def test_identical_bytes_short_circuit() -> None:
    text = base().render().encode()
    assert diff_manifest_bytes(text, text).is_empty


def test_first_version_everything_is_new() -> None:
    new = base().render().encode()
    diff = diff_manifest_bytes(None, new)
    assert diff.newly_needed == {H1: "flexible", H2: "optional"}


def test_unreadable_old_version_counts_as_empty() -> None:
    new = base().render().encode()
    diff = diff_manifest_bytes(b"<<<<<<< HEAD\nbroken", new)
    assert set(diff.newly_needed) == {H1, H2}


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda t: t.replace("[tool.comfydock.workflows.wf2]", "<<<<<<< HEAD\n[tool.comfydock.workflows.wf2]"), id="conflict"),
        pytest.param(lambda t: t.replace('filename = "b.safetensors"', 'filename = "b.safetensors'), id="unterminated-string"),
        pytest.param(lambda t: t.replace(f"{H2} = {{", f"{H2} = {{{{"), id="bad-inline-table"),
        pytest.param(lambda t: t + f'\n[tool.comfydock.models.{H1}]\nfilename = "dup"\n', id="duplicate-model-table"),
    ],
)
def test_unreadable_new_version_raises_a_located_error(breakage: Any) -> None:
    old = base().render()
    new = breakage(old)
    with pytest.raises(ManifestError) as caught:
        diff_manifest_bytes(old.encode(), new.encode(), new_label="new pyproject.toml")
    assert str(caught.value).startswith("new pyproject.toml")


def test_the_same_model_added_twice_by_a_merge_is_an_error_not_a_silent_pick() -> None:
    # Alice and Bob both add model H3 at different places; git merges both lines.
    old = base().render()
    line = f"{H3} = {inline_table({'filename': 'c', 'size': 1, 'sources': [HF + 'c']})}\n"
    new = old.replace("[tool.comfydock.models]\n", "[tool.comfydock.models]\n" + line)
    new = new.replace(f"{H2} = ", line + f"{H2} = ")
    new += '\n[[tool.comfydock.workflows.wf1.models]]\nfilename = "c"\ncategory = "vae"\nhash = "' + H3 + '"\n'
    with pytest.raises(ManifestError):
        parse_manifest(new.encode())
    with pytest.raises(ManifestError):
        diff_manifest_bytes(old.encode(), new.encode())


def test_dangling_hash_in_new_version_is_a_problem_not_a_crash() -> None:
    old = base().render()
    new = base().ref("wf3", "ghost.safetensors", "vae", hash=H4, status="resolved").render()
    diff = both(old, new)
    assert H4 in diff.newly_needed
    assert any(H4 in p for p in diff.new.problems)
    report = detect_missing_models(diff.new, _EmptyIndex(), diff.hashes_to_check)
    assert [(m.hash, m.can_download) for m in report.missing] == [(H4, False)]  # needed, not downloadable


def test_big_manifest_five_percent_new() -> None:
    old, new = big_manifest(300, 30, 5, new_fraction=0.05, seed=3)
    diff = both(old, new)
    assert len(diff.newly_needed) == 15
    assert all(h in diff.new.models for h in diff.newly_needed)


class _EmptyIndex:
    """An index that has nothing: every needed model is missing."""

    def present(self, hashes: Any) -> dict[str, str]:
        list(hashes)
        return {}

    def present_by_source(self, urls: Any) -> dict[str, str]:
        list(urls)
        return {}


# --- the property: differential == full --------------------------------------------

POOL = [f"{n:016x}" for n in (0x1, 0xABCDEF0123, 0xDEADBEEF00, 0x5EED, 0xCAFE, 0xF00D, 0xBEEF, 0x77)]
WORKFLOW_NAMES = ["wf1", "wf2", "portrait", "my workflow", "a.b", "café", "x-y_z"]
CATEGORIES = ["checkpoints", "loras", "vae"]
CRITICALITIES = [None, "required", "flexible", "optional"]


@dataclass
class Ref:
    filename: str
    category: str
    criticality: str | None
    status: str | None
    hash: str | None
    node_id: str | None
    widget_idx: int
    sources: list[str] = field(default_factory=list)
    comment: str | None = None

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"filename": self.filename, "category": self.category}
        if self.criticality:
            entry["criticality"] = self.criticality
        if self.status:
            entry["status"] = self.status
        if self.node_id is not None:
            entry["nodes"] = [{"node_id": self.node_id, "node_type": "Loader", "widget_idx": self.widget_idx, "widget_value": self.filename}]
        if self.hash:
            entry["hash"] = self.hash
        if self.sources:
            entry["sources"] = self.sources
        return entry


@dataclass
class Model:
    filename: str
    size: int
    category: str
    sources: list[str]
    style: str  # inline | table | dotted
    comment: str | None = None
    criticality: str | None = None  # ComfyGit: an environment-level model


@dataclass
class Doc:
    models: dict[str, Model]
    workflows: dict[str, list[Ref]]
    models_first: bool
    inline_workflows: set[str] = field(default_factory=set)  # `models = [{...}]` instead of [[...]]
    description: bool = False  # a multi-line string in [project]
    crlf: bool = False
    version: int = 1
    spaced: bool = False  # `[[ tool.comfydock.workflows.x.models ]]`
    dialect: str = "comfydock"  # the `[tool.<dialect>]` table (ComfyGit adds environment-level models)


    def render(self) -> str:
        parts = [f'[project]\nname = "env"\nversion = "0.{self.version}"\n']
        if self.description:
            parts.append('description = """\nA team environment.\n[not.a.table]\n"""\n')
        parts.append(f'\n[tool.{self.dialect}]\ncomfyui_version = "v0.3.40"\n')
        model_part = self._models()
        workflow_part = self._workflows()
        parts += [model_part, workflow_part] if self.models_first else [workflow_part, model_part]
        text = "".join(parts)
        return text.replace("\n", "\r\n") if self.crlf else text

    def _models(self) -> str:
        if not self.models:
            return ""
        out = [f"\n[tool.{self.dialect}.models]\n"]
        tables = []
        for key, m in self.models.items():
            entry = {"filename": m.filename, "size": m.size, "relative_path": f"{m.category}/{m.filename}", "category": m.category}
            if m.sources:
                entry["sources"] = m.sources
            if m.criticality is not None:
                entry["criticality"] = m.criticality
            comment = f"# {m.comment}\n" if m.comment else ""
            if m.style == "inline":
                out.append(f"{comment}{key} = {inline_table(entry)}\n")
            elif m.style == "dotted":
                out.append(comment + "".join(f"{key}.{toml_key(k)} = {toml_value(v)}\n" for k, v in entry.items()))
            else:
                body = "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in entry.items())
                tables.append(f"\n{comment}[tool.{self.dialect}.models.{key}]\n{body}")
        return "".join(out + tables)

    def _workflows(self) -> str:
        out = []
        for name, refs in self.workflows.items():
            prefix = f"tool.{self.dialect}.workflows.{toml_key(name)}"
            out.append(f"\n[{prefix}]\npath = {toml_value('workflows/' + name + '.json')}\n")
            if name in self.inline_workflows:
                out.append("models = [\n" + "".join(f"  {inline_table(r.body())},\n" for r in refs) + "]\n")
                continue
            for ref in refs:
                comment = f"# {ref.comment}\n" if ref.comment else ""
                body = "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in ref.body().items())
                header = f"[[ {prefix}.models ]]" if self.spaced else f"[[{prefix}.models]]"
                out.append(f"\n{comment}{header}\n{body}")
        return "".join(out)


def _ref(rng: random.Random, doc: Doc, resolved: bool) -> Ref:
    category = rng.choice(CATEGORIES)
    node = None if rng.random() < 0.1 else str(rng.randrange(1, 30))
    if resolved and doc.models and rng.random() < 0.9:
        model_hash = rng.choice(list(doc.models))
        return Ref(doc.models[model_hash].filename, category, rng.choice(CRITICALITIES), rng.choice([None, "resolved"]),
                   model_hash, node, rng.randrange(3))
    if resolved:  # a dangling hash: a problem, still part of the diff
        return Ref("ghost.safetensors", category, rng.choice(CRITICALITIES), "resolved", rng.choice(POOL), node, 0)
    sources = [] if rng.random() < 0.2 else [f"https://civitai.com/api/download/models/{rng.randrange(1000)}"]
    return Ref(f"intent{rng.randrange(5)}.safetensors", category, rng.choice(CRITICALITIES), "unresolved", None, node,
               rng.randrange(3), sources)


def _style(rng: random.Random) -> str:
    """Mostly what ComfyDock writes; now and then the layouts the fast path hands to the full read."""
    return rng.choices(["inline", "table", "dotted"], weights=[70, 28, 2])[0]


def random_doc(rng: random.Random) -> Doc:
    models = {}
    for model_hash in rng.sample(POOL, rng.randrange(0, 6)):
        models[model_hash] = Model(f"m{model_hash[-4:]}.safetensors", rng.randrange(1, 10**10), rng.choice(CATEGORIES),
                                   [] if rng.random() < 0.2 else [HF + model_hash], _style(rng),
                                   rng.choice([None, None, "note"]))
    doc = Doc(models, {}, models_first=rng.random() < 0.5, description=rng.random() < 0.15, crlf=rng.random() < 0.1,
              dialect=rng.choice(("comfydock", "comfygit")))
    if doc.dialect == "comfygit" and models and rng.random() < 0.15:  # read in full: kept rare
        rng.choice(list(models.values())).criticality = rng.choice(["required", "optional"])
    for name in rng.sample(WORKFLOW_NAMES, rng.randrange(0, 5)):
        doc.workflows[name] = [_ref(rng, doc, rng.random() < 0.8) for _ in range(rng.randrange(0, 4))]
        if rng.random() < 0.02:
            doc.inline_workflows.add(name)
    return doc


def edit(rng: random.Random, doc: Doc) -> str:
    """Apply one random edit in place; returns its name (for failure reports)."""
    kind = rng.choice(
        ["add_model_and_ref", "remove_ref", "criticality", "remove_workflow", "add_workflow", "add_intent",
         "resolve_intent", "shuffle_models", "shuffle_refs", "restyle_model", "comment", "sources", "retarget_ref",
         "remove_model", "status", "rename_workflow", "project", "spacing", "environment_model"]
    )
    workflows = list(doc.workflows)
    refs = [(w, i) for w in workflows for i in range(len(doc.workflows[w]))]
    if kind == "add_model_and_ref":
        free = [h for h in POOL if h not in doc.models]
        if free:
            model_hash = rng.choice(free)
            doc.models[model_hash] = Model("new.safetensors", rng.randrange(1, 10**9), "loras", [HF + model_hash], _style(rng))
            items = list(doc.models.items())
            rng.shuffle(items)
            doc.models = dict(items)
            target = rng.choice(workflows + ["brand new"])
            doc.workflows.setdefault(target, []).append(
                Ref("new.safetensors", "loras", rng.choice(CRITICALITIES), "resolved", model_hash, str(rng.randrange(50)), 0))
    elif kind == "remove_ref" and refs:
        w, i = rng.choice(refs)
        del doc.workflows[w][i]
    elif kind == "criticality" and refs:
        w, i = rng.choice(refs)
        doc.workflows[w][i].criticality = rng.choice(CRITICALITIES)
    elif kind == "remove_workflow" and workflows:
        del doc.workflows[rng.choice(workflows)]
    elif kind == "add_workflow":
        name = rng.choice(WORKFLOW_NAMES)
        doc.workflows[name] = [_ref(rng, doc, rng.random() < 0.7) for _ in range(rng.randrange(1, 4))]
    elif kind == "add_intent" and workflows:
        doc.workflows[rng.choice(workflows)].append(_ref(rng, doc, resolved=False))
    elif kind == "resolve_intent":
        open_refs = [(w, i) for w, i in refs if doc.workflows[w][i].status == "unresolved"]
        if open_refs and doc.models:
            w, i = rng.choice(open_refs)
            ref = doc.workflows[w][i]
            ref.status, ref.hash, ref.sources = "resolved", rng.choice(list(doc.models)), []
    elif kind == "shuffle_models":
        items = list(doc.models.items())
        rng.shuffle(items)
        doc.models = dict(items)
        doc.models_first = not doc.models_first
    elif kind == "shuffle_refs" and workflows:
        rng.shuffle(doc.workflows[rng.choice(workflows)])
    elif kind == "restyle_model" and doc.models:
        doc.models[rng.choice(list(doc.models))].style = _style(rng)
    elif kind == "comment":
        targets: list[Any] = list(doc.models.values()) + [doc.workflows[w][i] for w, i in refs]
        if targets:
            rng.choice(targets).comment = rng.choice([None, "changed", "hash = \"0000000000000000\""])
    elif kind == "sources" and doc.models:
        doc.models[rng.choice(list(doc.models))].sources = rng.choice([[], [HF + "other"]])
    elif kind == "retarget_ref" and refs and doc.models:
        w, i = rng.choice(refs)
        doc.workflows[w][i].hash = rng.choice(list(doc.models))
        doc.workflows[w][i].status = "resolved"
    elif kind == "remove_model" and doc.models:
        del doc.models[rng.choice(list(doc.models))]
    elif kind == "rename_workflow" and workflows:
        name = rng.choice(workflows)
        doc.workflows = {(n + "_renamed" if n == name else n): r for n, r in doc.workflows.items()}
    elif kind == "project":
        doc.version += 1
    elif kind == "environment_model" and doc.models and doc.dialect == "comfygit" and rng.random() < 0.3:
        doc.models[rng.choice(list(doc.models))].criticality = rng.choice([None, "required", "optional"])
    elif kind == "spacing":
        doc.spaced = not doc.spaced
    elif kind == "status" and refs:
        w, i = rng.choice(refs)
        doc.workflows[w][i].status = rng.choice([None, "resolved", "unresolved"])
    return kind


def missing_view(diff: Any) -> list[tuple[Any, ...]]:
    """What a user would be shown: the missing-model records for the hashes to check."""
    report = detect_missing_models(diff.new, _EmptyIndex(), diff.hashes_to_check)
    return sorted(((m.model, tuple(sorted(m.workflow_names)), m.criticality, m.can_download) for m in report.missing), key=repr)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_edits=st.integers(1, 6))
def test_differential_diff_equals_full_diff(seed: int, n_edits: int) -> None:
    rng = random.Random(seed)
    old_doc = random_doc(rng)
    new_doc = copy.deepcopy(old_doc)
    edits = [edit(rng, new_doc) for _ in range(n_edits)]
    old, new = old_doc.render().encode(), new_doc.render().encode()
    full = diff_manifests(parse_manifest(old), parse_manifest(new))
    quick = diff_manifest_bytes(old, new)
    context = f"edits={edits}\n--- old ---\n{old.decode()}\n--- new ---\n{new.decode()}"
    assert summary(quick) == summary(full), context
    assert missing_view(quick) == missing_view(full), context


def test_property_generator_covers_the_interesting_cases() -> None:
    """The generator must reach the layouts the property is about (else it proves little),
    and most edits must go through the differential read, not its full-parse fallback."""
    seen: set[str] = set()
    differential = changed = 0
    for seed in range(300):
        rng = random.Random(seed)
        doc = random_doc(rng)
        new_doc = copy.deepcopy(doc)
        edit(rng, new_doc)
        old, new = doc.render().encode(), new_doc.render().encode()
        diff = diff_manifest_bytes(old, new)
        if old != new:
            changed += 1
            try:
                differential_diff(old, new, "old", "new")
                differential += 1
            except ChunkFallback:
                pass
        seen |= {s for s in ("inline", "table", "dotted") if any(m.style == s for m in doc.models.values())}
        seen |= {"crlf"} if doc.crlf else set()
        seen |= {"multiline"} if doc.description else set()
        seen |= {"newly"} if diff.newly_needed else set()
        seen |= {"raised"} if diff.criticality_raised else set()
        seen |= {"intents"} if diff.new_intents else set()
        seen |= {"gone"} if diff.no_longer_needed else set()
        seen |= {doc.dialect}
        seen |= {"environment"} if any(m.criticality for m in new_doc.models.values()) else set()
    assert seen >= {"inline", "table", "dotted", "crlf", "multiline", "newly", "raised", "intents", "gone",
                    "comfydock", "comfygit", "environment"}
    assert differential > 0.8 * changed


def test_index_backed_missing_check_after_diff(tmp_path: Path) -> None:
    """The hook's path: diff, then ask the index only about the changed hashes."""
    old = base().render()
    new = (
        base()
        .model(H3, "c.safetensors", 5, "vae/c.safetensors", "vae", [HF + "c.safetensors"])
        .ref("wf3", "c.safetensors", "vae", hash=H3, criticality="required", status="resolved")
        .render()
    )
    diff = diff_manifest_bytes(old.encode(), new.encode())
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    with ModelIndex(tmp_path / "models.db", models) as index:
        report = detect_missing_models(diff.new, index, diff.hashes_to_check)
        assert [(m.hash, m.workflow_names, m.is_required) for m in report.missing] == [(H3, ("wf3",), True)]
        (models / "vae" / "c.safetensors").write_bytes(b"12345")
        index.record_file(H3, "vae/c.safetensors", size=5, mtime=1.0)
        assert detect_missing_models(diff.new, index, diff.hashes_to_check).missing == ()


def test_a_large_change_read_in_slices_gives_the_full_answer_in_the_same_order() -> None:
    """Issue 10: a first sync or a rewritten manifest changes nearly every piece; they are
    parsed in slices (bounded memory). Same answer as the full read, intents in the same order."""
    from cfd.core.manifest.fasttoml import BATCH

    builder = ManifestBuilder()
    for n in range(BATCH + 700):
        model_hash = f"{n:016x}"
        builder.model(model_hash, f"m{n}.safetensors", 100 + n, f"checkpoints/m{n}.safetensors", "checkpoints", [HF + f"m{n}"])
        builder.ref(f"wf{n % 7}", f"m{n}.safetensors", "checkpoints", hash=model_hash, criticality="required", node_id=str(n))
    for n in range(BATCH + 300):  # interleaved workflows: order of first appearance matters
        builder.ref(f"wf{(n * 3) % 11}", f"i{n}.safetensors", "loras", status="unresolved", node_id=f"i{n}", sources=[HF + f"i{n}"])
    old, new = ManifestBuilder().render(), builder.render()
    quick = both(old, new)
    full = diff_manifests(parse_manifest(old.encode()), parse_manifest(new.encode()))
    assert [r.identity for r in quick.new_intents] == [r.identity for r in full.new_intents]
    assert len(quick.newly_needed) == BATCH + 700 and quick.new.models.keys() == full.new.models.keys()
