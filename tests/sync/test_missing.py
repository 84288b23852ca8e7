"""Which models the manifest needs and this machine lacks (core/sync/missing.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cfd.core.store.index import ModelIndex
from cfd.core.manifest.model import parse_manifest
from cfd.core.sync.missing import detect_missing_models
from cfd.core.sync.strategy import Selection, select_for_download
from helpers.manifest import ManifestBuilder, make_model

HF = "https://huggingface.co/org/repo/resolve/main/"
CIVITAI = "https://civitai.com/api/download/models/"
H_GHOST = "fedcba9876543210"
pytestmark = pytest.mark.usefixtures("both_dialects")  # the same answers for ComfyGit and ComfyDock


@pytest.fixture
def index(tmp_path: Path, models_dir: Path, both_dialects: str):  # type: ignore[no-untyped-def]
    from cfd.core.dialect import DIALECTS

    with ModelIndex(tmp_path / "models.db", models_dir, DIALECTS[both_dialects]) as idx:
        yield idx


def have(index: ModelIndex, relpath: str, seed: int, size: int = 64) -> str:
    """Put a model on disk and in the index; returns its hash."""
    model_hash, path = make_model(index.models_dir, relpath, seed, size)
    index.record_file(model_hash, relpath, size=size, mtime=path.stat().st_mtime)
    return model_hash


def hash_of(seed: int, size: int = 64) -> str:
    from helpers.manifest import model_bytes, short_hash_for

    return short_hash_for(model_bytes(seed, size))


def test_shared_model_is_one_record_with_both_workflows_and_the_strongest_criticality(index: ModelIndex) -> None:
    h = hash_of(1)
    text = (
        ManifestBuilder()
        .model(h, "a.safetensors", 64, "checkpoints/a.safetensors", "checkpoints", [HF + "a"])
        .ref("portrait", "a.safetensors", "checkpoints", hash=h, criticality="optional")
        .ref("landscape", "a.safetensors", "checkpoints", hash=h, criticality="required")
        .ref("landscape", "a.safetensors", "checkpoints", hash=h, criticality="flexible", node_id="9")
        .render()
    )
    report = detect_missing_models(parse_manifest(text.encode()), index)
    (info,) = report.missing
    assert info.model.hash == h == info.hash
    assert info.workflow_names == ("portrait", "landscape")
    assert (info.criticality, info.is_required, info.can_download) == ("required", True, True)
    assert not report.in_sync


@pytest.mark.parametrize(
    ("criticalities", "expected"),
    [(("optional", None), "flexible"), (("optional", "optional"), "optional"), (("flexible", "required"), "required")],
)
def test_criticality_upgrades(index: ModelIndex, criticalities: tuple[str | None, ...], expected: str) -> None:
    h = hash_of(1)
    builder = ManifestBuilder().model(h, "a", 64, sources=[HF + "a"])
    for n, criticality in enumerate(criticalities):
        builder.ref(f"wf{n}", "a", "checkpoints", hash=h, criticality=criticality)
    (info,) = detect_missing_models(parse_manifest(builder.render().encode()), index).missing
    assert info.criticality == expected


def test_model_without_source_is_missing_and_unavailable(index: ModelIndex) -> None:
    h1, h2 = hash_of(1), hash_of(2)
    text = (
        ManifestBuilder()
        .model(h1, "nosrc.safetensors", 64, sources=None)
        .model(h2, "empty.safetensors", 64, sources=[])
        .ref("wf", "nosrc.safetensors", "checkpoints", hash=h1, criticality="required")
        .ref("wf", "empty.safetensors", "checkpoints", hash=h2, node_id="5")
        .render()
    )
    report = detect_missing_models(parse_manifest(text.encode()), index)
    assert {m.hash for m in report.unavailable} == {h1, h2}
    assert report.downloadable == ()
    assert select_for_download(report, "all") == Selection((), (), (), ())


def test_deleted_file_is_missing_although_the_index_has_its_row(index: ModelIndex) -> None:
    h = have(index, "checkpoints/a.safetensors", 1)
    text = ManifestBuilder().model(h, "a.safetensors", 64, "checkpoints/a.safetensors", sources=[HF + "a"]).ref(
        "wf", "a.safetensors", "checkpoints", hash=h).render()
    manifest = parse_manifest(text.encode())
    assert detect_missing_models(manifest, index).in_sync
    (index.models_dir / "checkpoints" / "a.safetensors").unlink()
    report = detect_missing_models(manifest, index)
    assert [m.hash for m in report.missing] == [h]
    assert index.has_model(h)


def test_a_model_present_under_another_name_counts(index: ModelIndex) -> None:
    h = have(index, "my-own-folder/renamed.safetensors", 1)
    text = ManifestBuilder().model(h, "a.safetensors", 64, "checkpoints/a.safetensors", sources=[HF + "a"]).ref(
        "wf", "a.safetensors", "checkpoints", hash=h).render()
    assert detect_missing_models(parse_manifest(text.encode()), index).in_sync


def test_unresolved_entries(index: ModelIndex) -> None:
    text = (
        ManifestBuilder()
        .ref("wf", "lora.safetensors", "loras", status="unresolved", criticality="optional", node_id="7",
             sources=[CIVITAI + "1"], relative_path="loras/style/lora.safetensors")
        .ref("wf", "lost.safetensors", "loras", status="unresolved", node_id="8")  # no source: not found
        .ref("wf", "maybe.safetensors", "loras", status="unresolved", criticality="optional", node_id="9")
        .render()
    )
    report = detect_missing_models(parse_manifest(text.encode()), index)
    assert [(r.filename, r.target_path) for r in report.intents] == [("lora.safetensors", "loras/style/lora.safetensors")]
    assert [r.filename for r in report.not_found] == ["lost.safetensors"]  # optional without source: neither
    assert report.missing == () and not report.in_sync


def test_downloaded_intent_is_remembered_by_its_url(index: ModelIndex, models_dir: Path) -> None:
    text = ManifestBuilder().ref("wf", "lora.safetensors", "loras", status="unresolved", sources=[CIVITAI + "1"]).render()
    manifest = parse_manifest(text.encode())
    h, path = make_model(models_dir, "loras/lora.safetensors", 5, 64)
    index.record_file(h, "loras/lora.safetensors", size=64, mtime=path.stat().st_mtime, source_url=CIVITAI + "1")
    report = detect_missing_models(manifest, index)
    assert report.intents == () and report.in_sync
    assert [r.filename for r in report.satisfied_intents] == ["lora.safetensors"]
    path.unlink()
    assert [r.filename for r in detect_missing_models(manifest, index).intents] == ["lora.safetensors"]


def test_dangling_hash_is_a_problem_and_an_unavailable_missing_model(index: ModelIndex) -> None:
    text = ManifestBuilder().ref("wf", "ghost.safetensors", "checkpoints", hash=H_GHOST, criticality="required").render()
    manifest = parse_manifest(text.encode())
    report = detect_missing_models(manifest, index)
    assert len(report.problems) == 1 and H_GHOST in report.problems[0]
    (info,) = report.missing  # the workflow still needs it: not "in sync"
    assert (info.hash, info.model.filename, info.model.relative_path) == (H_GHOST, "ghost.safetensors", "checkpoints/ghost.safetensors")
    assert (info.can_download, info.is_required, info.model.size) == (False, True, None)
    assert not report.in_sync and report.unavailable == (info,)
    # The file is there after all (indexed under its hash): nothing is missing, the problem stays.
    have_ghost = make_model(index.models_dir, "checkpoints/ghost.safetensors", 7, 64)
    index.record_file(H_GHOST, "checkpoints/ghost.safetensors", size=64, mtime=have_ghost[1].stat().st_mtime)
    report = detect_missing_models(manifest, index)
    assert report.missing == () and report.in_sync and len(report.problems) == 1


def test_required_models_come_first(index: ModelIndex) -> None:
    builder = ManifestBuilder()
    for seed, criticality in enumerate(["optional", "required", "flexible"], 1):
        h = hash_of(seed)
        builder.model(h, f"{criticality}.safetensors", 64, sources=[HF + str(seed)])
        builder.ref("wf", f"{criticality}.safetensors", "checkpoints", hash=h, criticality=criticality, node_id=str(seed))
    report = detect_missing_models(parse_manifest(builder.render().encode()), index)
    assert [m.criticality for m in report.missing] == ["required", "flexible", "optional"]


def test_hashes_narrow_the_check(index: ModelIndex) -> None:
    h1, h2 = hash_of(1), hash_of(2)
    text = (
        ManifestBuilder()
        .model(h1, "a", 64, sources=[HF + "a"]).model(h2, "b", 64, sources=[HF + "b"])
        .ref("wf", "a", "checkpoints", hash=h1).ref("wf", "b", "checkpoints", hash=h2, node_id="5")
        .render()
    )
    report = detect_missing_models(parse_manifest(text.encode()), index, hashes=[h2])
    assert [m.hash for m in report.missing] == [h2]


def test_strategies(index: ModelIndex) -> None:
    h1, h2, h3 = hash_of(1), hash_of(2), hash_of(3)
    text = (
        ManifestBuilder()
        .model(h1, "req", 64, sources=[HF + "1"]).model(h2, "flex", 64, sources=[HF + "2"]).model(h3, "nosrc", 64)
        .ref("wf", "req", "checkpoints", hash=h1, criticality="required", node_id="1")
        .ref("wf", "flex", "checkpoints", hash=h2, criticality="flexible", node_id="2")
        .ref("wf", "nosrc", "checkpoints", hash=h3, criticality="required", node_id="3")
        .ref("wf", "i-req", "loras", status="unresolved", criticality="required", sources=[CIVITAI + "1"], node_id="4")
        .ref("wf", "i-opt", "loras", status="unresolved", criticality="optional", sources=[CIVITAI + "2"], node_id="5")
        .render()
    )
    report = detect_missing_models(parse_manifest(text.encode()), index)

    def names(selection: Selection) -> tuple[list[str], list[str], list[str], list[str]]:
        return (
            [m.model.filename for m in selection.models],
            [r.filename for r in selection.intents],
            [m.model.filename for m in selection.filtered_models],
            [r.filename for r in selection.filtered_intents],
        )

    assert names(select_for_download(report, "all")) == (["req", "flex"], ["i-req", "i-opt"], [], [])
    assert names(select_for_download(report, "required")) == (["req"], ["i-req"], ["flex"], ["i-opt"])
    assert names(select_for_download(report, "skip")) == ([], [], ["req", "flex"], ["i-req", "i-opt"])


def test_detection_is_read_only(index: ModelIndex, tmp_path: Path) -> None:
    h = have(index, "a.safetensors", 1)
    text = ManifestBuilder().model(h, "a", 64).model(hash_of(9), "b", 64, sources=[HF + "b"]).ref(
        "wf", "a", "checkpoints", hash=h).ref("wf", "b", "checkpoints", hash=hash_of(9), node_id="2").render()

    def dump() -> list[tuple[object, ...]]:
        conn = sqlite3.connect(tmp_path / "models.db")
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [(table, *row) for table in tables for row in conn.execute(f"SELECT * FROM {table}")]

    before = dump()
    detect_missing_models(parse_manifest(text.encode()), index)
    assert dump() == before


# -- linear in manifest size (issue 10, item 5) ---------------------------------------------


def _intents_manifest(n: int) -> tuple[bytes, bytes]:
    """(old, new) pyproject.toml: new adds n intents to one resolved model."""
    h = hash_of(1)
    base = ManifestBuilder().model(h, "a.safetensors", 64, sources=[HF + "a"]).ref("wf0", "a.safetensors", "checkpoints", hash=h)
    old = base.render().encode()
    for i in range(n):
        base.ref(f"wf{i % 50}", f"l{i}.safetensors", "loras", status="unresolved", node_id=str(i + 1), sources=[CIVITAI + str(i)])
    return old, base.render().encode()


def _hook_path(tmp_path: Path, models_dir: Path, n: int) -> None:
    """What a hook and `cfd status` do with n new intents, half of them already downloaded."""
    from cfd.core.manifest.diff import diff_manifest_bytes
    from cfd.core.sync.marker import Marker, intent_key
    from cfd.core.sync.fetch import pending_entries

    old, new = _intents_manifest(n)
    db = tmp_path / f"idx{n}.db"
    with ModelIndex(db, models_dir) as index:
        h, path = make_model(models_dir, f"loras/l{n}.bin", 7, 64)
        with index.transaction():
            index.add_model(h, 64)
            index.add_location(h, f"loras/l{n}.bin", path.stat().st_mtime)
            for i in range(0, n, 2):
                index.add_source(h, CIVITAI + str(i))
        diff = diff_manifest_bytes(old, new)
        report = detect_missing_models(diff.new, index)
        full = detect_missing_models(parse_manifest(new), index)
    assert len(report.intents) == len(full.intents) == n // 2 and len(full.satisfied_intents) == n - n // 2
    marker = Marker(tmp_path / f"git{n}")
    entries = pending_entries((), full.intents, "deferred", "post-merge")
    marker.merge(entries, drop=[intent_key(r) for r in full.satisfied_intents])
    marker.merge(entries[: n // 4])
    needed = {intent_key(r) for r in full.intents}
    assert len([e for e in marker.read() if e.key in needed]) == n // 2


def test_the_hook_path_never_compares_records_and_grows_linearly(tmp_path: Path, models_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Issue 10: `ref in tuple_of_refs` compared dataclasses field by field, so 20,000
    intents took minutes. No timing here: count record comparisons (there must be none)
    and Python calls, which must not grow faster than the manifest."""
    import sys

    from cfd.core.manifest.model import ManifestModel, WorkflowModelRef
    from cfd.core.sync.marker import PendingEntry
    from cfd.core.sync.missing import MissingModelInfo

    comparisons = {"n": 0}
    for record in (WorkflowModelRef, ManifestModel, PendingEntry, MissingModelInfo):
        original = record.__eq__

        def counting(self, other, _original=original):  # type: ignore[no-untyped-def]
            comparisons["n"] += 1
            return _original(self, other)

        monkeypatch.setattr(record, "__eq__", counting)

    def calls(n: int) -> int:
        count = {"n": 0}

        def profile(frame, event, arg):  # type: ignore[no-untyped-def]
            if event == "call":
                count["n"] += 1

        sys.setprofile(profile)
        try:
            _hook_path(tmp_path, models_dir, n)
        finally:
            sys.setprofile(None)
        return count["n"]

    small, large = calls(400), calls(1600)
    assert comparisons["n"] == 0
    # 4x the intents: linear work is ~4x the calls, quadratic 16x.
    assert large < 5 * small, (small, large)
