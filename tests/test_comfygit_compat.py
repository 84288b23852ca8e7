"""Compatibility both ways with the real ComfyGit implementation (comfygit-core 0.7.1 from PyPI).

comfygit-core is a test-only dependency (pyproject's dev extra), the oracle for the xxh3
short hash, the v10 index and the `[tool.comfygit]` format, as comfydock-core is for ComfyDock
(tests/test_comfydock_compat.py).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import tempfile
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# A missing oracle is a failure, not a skip.
from comfygit_core.analyzers.model_scanner import ModelScanner
from comfygit_core.managers.environment_model_manager import EnvironmentModelManager
from comfygit_core.managers.pyproject_manager import PyprojectManager
from comfygit_core.models.manifest import ManifestModel as CGModel
from comfygit_core.models.manifest import ManifestWorkflowModel as CGWorkflowModel
from comfygit_core.models.workflow import WorkflowNodeWidgetRef
from comfygit_core.repositories.model_repository import ModelRepository

from cfd.core.dialect import COMFYGIT
from cfd.core.manifest import fasttoml
from cfd.core.manifest.diff import diff_manifest_bytes, diff_manifests
from cfd.core.manifest.intents import ResolvedIntent, apply_resolutions
from cfd.core.manifest.model import ENVIRONMENT, parse_manifest
from cfd.core.store.index import ModelIndex
from cfd.core.store.scan import scan_models
from cfd.core.store.shorthash import XXH3_SAMPLE, StreamingShortHasher, short_hash_bytes, short_hash_file
from cfd.core.sync.missing import detect_missing_models

import test_comfydock_missing_diff as shared  # the generated cases and cfd's listed differences

MIB = 1024 * 1024
HF = "https://huggingface.co/org/repo/resolve/main/"
CIVITAI = "https://civitai.com/api/download/models/"


def comfygit_hash(path: Path, tmp_path: Path) -> str:
    return ModelRepository(tmp_path / "oracle.db").calculate_short_hash(path)


# --- the short hash -------------------------------------------------------------------


def test_issue_vectors(tmp_path: Path) -> None:
    """The vectors the issue gives, computed with comfygit-core 0.7.1, and checked against it here."""
    zeros = b"\0" * 1000
    ramp = (bytes(range(251)) * (41943040 // 251 + 1))[:41943040]
    assert short_hash_bytes(zeros, XXH3_SAMPLE) == "7f200fcb182e7bed"
    assert short_hash_bytes(ramp, XXH3_SAMPLE) == "ca759a71a8fefd29"
    assert (short_hash_bytes(zeros), short_hash_bytes(ramp)) == ("f989cadf11c485b0", "697e14d725108c57")
    for data in (zeros, ramp):
        path = tmp_path / "m.bin"
        path.write_bytes(data)
        assert short_hash_file(path, XXH3_SAMPLE) == comfygit_hash(path, tmp_path)


@pytest.mark.parametrize("size", [10, 5 * MIB, 30 * MIB, 30 * MIB + 1, 31 * MIB + 12345],
                         ids=lambda size: f"{size // MIB}MiB+{size % MIB}")
def test_short_hash_equals_comfygits_on_disk_and_streaming(size: int, tmp_path: Path) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    expected = comfygit_hash(path, tmp_path)
    assert short_hash_file(path, XXH3_SAMPLE) == expected
    pieces = [(start, data[start : start + 4 * MIB]) for start in range(0, size, 4 * MIB)]
    random.Random(1).shuffle(pieces)
    scattered = StreamingShortHasher(size, XXH3_SAMPLE)  # a download on several connections
    for start, piece in pieces:
        scattered.update_at(start, piece)
    assert scattered.hexdigest() == expected


# --- the v10 index, both ways ------------------------------------------------------------


def populate(models_dir: Path) -> dict[str, str]:
    files = {"checkpoints/a.safetensors": 2 * MIB, "loras/b.safetensors": 4096, "loras/sub dir/c.safetensors": 3000}
    hashes = {}
    for n, (relpath, size) in enumerate(files.items()):
        path = models_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.Random(n).randbytes(size))
        hashes[relpath] = short_hash_bytes(path.read_bytes(), XXH3_SAMPLE)
    return hashes


def rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The rows as a user would diff them: without ids and clock columns."""
    conn = sqlite3.connect(db)
    try:
        return {
            "models": sorted(conn.execute("SELECT hash, file_size, blake3_hash, sha256_hash, metadata FROM models")),
            "model_locations": sorted(conn.execute("SELECT model_hash, base_directory, relative_path, filename, mtime FROM model_locations")),
            "model_sources": sorted(conn.execute("SELECT model_hash, source_type, source_url, metadata FROM model_sources")),
        }
    finally:
        conn.close()


def test_rows_cfd_writes_are_the_rows_comfygit_writes(tmp_path: Path, models_dir: Path) -> None:
    hashes = populate(models_dir)
    ours, theirs = tmp_path / "cfd.db", tmp_path / "comfygit.db"
    with ModelIndex(ours, models_dir, COMFYGIT) as index:
        scan_models(index)
        h = hashes["loras/b.safetensors"]
        for url in (HF + "b", CIVITAI + "5", "https://evilhuggingface.co/b", "https://cdn.example/b"):
            index.add_source(h, url)
    repo = ModelRepository(theirs, models_dir)
    ModelScanner(repo).scan_directory(models_dir, quiet=True)
    for url in (HF + "b", CIVITAI + "5", "https://evilhuggingface.co/b", "https://cdn.example/b"):
        repo.add_source(h, repo_source_type(url), url)
    assert rows(ours) == rows(theirs)
    assert len(rows(ours)["model_locations"]) == 3 and len(rows(ours)["model_sources"]) == 4
    conn = sqlite3.connect(ours)
    assert not has_table(conn, "schema_info")  # ComfyGit writes its own version when it first opens the file
    conn.close()


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def repo_source_type(url: str) -> str:
    from comfygit_core.services.model_downloader import ModelDownloader

    return ModelDownloader.detect_url_type(SimpleNamespace(), url)  # type: ignore[arg-type]


def test_index_written_by_cfd_answers_comfygit_without_a_rebuild(tmp_path: Path, models_dir: Path) -> None:
    hashes = populate(models_dir)
    db = tmp_path / "comfygit_cache" / "models.db"
    with ModelIndex(db, models_dir, COMFYGIT) as index:
        scan_models(index)
        index.add_source(hashes["checkpoints/a.safetensors"], HF + "a")
    repo = ModelRepository(db, models_dir)  # opening our file must not drop its tables
    assert repo.get_schema_version() == 10
    for relpath, h in hashes.items():
        (found,) = repo.find_model_by_hash(h)
        assert (found.relative_path, found.file_size) == (relpath, (models_dir / relpath).stat().st_size)
    assert repo.find_by_exact_path("loras/sub dir/c.safetensors").hash == hashes["loras/sub dir/c.safetensors"]
    assert [(s["type"], s["url"]) for s in repo.get_sources(hashes["checkpoints/a.safetensors"])] == [("huggingface", HF + "a")]
    result = ModelScanner(repo).scan_directory(models_dir, quiet=True)  # our exact mtimes: nothing re-hashed
    assert (result.skipped_count, result.added_count, result.updated_count) == (len(hashes), 0, 0)
    with ModelIndex(db, models_dir, COMFYGIT) as index:  # and cfd still opens it once ComfyGit wrote its version
        assert index.present(hashes.values()) == {h: relpath for relpath, h in hashes.items()}


def test_index_written_by_comfygit_is_read_by_cfd_without_rehashing(tmp_path: Path, models_dir: Path) -> None:
    hashes = populate(models_dir)
    db = tmp_path / "comfygit_cache" / "models.db"
    repo = ModelRepository(db, models_dir)
    ModelScanner(repo).scan_directory(models_dir, quiet=True)
    repo.add_source(hashes["loras/b.safetensors"], "civitai", CIVITAI + "5")
    with ModelIndex(db, models_dir) as index:  # no dialect given: the file's own (v10)
        assert index.dialect is COMFYGIT
        assert index.present(hashes.values()) == {h: relpath for relpath, h in hashes.items()}
        assert index.present_by_source([CIVITAI + "5"]) == {CIVITAI + "5": "loras/b.safetensors"}
        again = scan_models(index)
        assert (again.hashed, again.unchanged) == (0, len(hashes))


# --- pyproject.toml written by ComfyGit ---------------------------------------------------


def node(node_id: str, node_type: str, value: str) -> WorkflowNodeWidgetRef:
    return WorkflowNodeWidgetRef(node_id=node_id, node_type=node_type, widget_index=0, widget_value=value)


def comfygit_pyproject(path: Path, second: bool) -> PyprojectManager:
    path.write_text('[project]\nname = "studio"\nversion = "0.1.0"\n\n[tool.comfygit]\nschema_version = 2\n'
                    'comfyui_version = "v0.3.60"\n\n[tool.comfygit.team]\nnote = "kept"\n')
    manager = PyprojectManager(path)
    a = CGModel(hash="ca759a71a8fefd29", filename="a.safetensors", size=41943040, relative_path="checkpoints/a.safetensors",
                category="checkpoints", sources=[HF + "a.safetensors", HF + "a2.safetensors"])
    upscaler = CGModel(hash="7f200fcb182e7bed", filename="up.pth", size=1000, relative_path="upscale_models\\up.pth",
                       category="upscale_models", sources=[HF + "up.pth"], criticality="required")
    manager.models.add_model(a)
    manager.models.add_model(upscaler)
    manager.workflows.set_workflow_models("portrait", [
        CGWorkflowModel(filename="a.safetensors", category="checkpoints", criticality="flexible", status="resolved",
                        nodes=[node("4", "CheckpointLoaderSimple", "a.safetensors")], hash=a.hash),
        CGWorkflowModel(filename="style.safetensors", category="loras", criticality="optional", status="unresolved",
                        nodes=[], sources=[CIVITAI + "12345"], relative_path="loras\\style.safetensors", declared_by="manual"),
    ])
    if second:
        c = CGModel(hash="fedcba9876543210", filename="c.safetensors", size=99, relative_path="vae/c.safetensors",
                    category="vae", sources=[])
        manager.models.add_model(c)
        manager.workflows.set_workflow_models("landscape", [
            CGWorkflowModel(filename="a.safetensors", category="checkpoints", criticality="required", status="resolved",
                            nodes=[node("3", "CheckpointLoaderSimple", "a.safetensors")], hash=a.hash),
            CGWorkflowModel(filename="c.safetensors", category="vae", criticality="flexible", status="resolved",
                            nodes=[node("6", "VAELoader", "c.safetensors")], hash=c.hash),
        ])
    return manager


def test_pyproject_written_by_comfygit_parses_to_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    manager = comfygit_pyproject(path, second=True)
    manifest = parse_manifest(path.read_bytes(), str(path))
    assert manifest.problems == () and manifest.dialect == "comfygit" and manifest.schema_version == 2
    # 0.7.1's layout takes the fast reader (a backslash, an escape, sends any document to tomllib)
    assert fasttoml.loads(path.read_text().replace("\\\\", "/")) == tomllib.loads(path.read_text().replace("\\\\", "/"))
    snapshot = manager.get_manifest_snapshot()
    assert snapshot.schema_version == manifest.schema_version
    theirs = {m.hash: m for m in manager.models.get_all()}
    assert set(manifest.models) == set(theirs)
    for model_hash, model in manifest.models.items():
        other = theirs[model_hash]
        assert (model.filename, model.size, model.category, model.source_set, model.criticality) == (
            other.filename, other.size, other.category, frozenset(other.sources), other.criticality)
        assert model.relative_path == other.relative_path.replace("\\", "/")
    for workflow in ("portrait", "landscape"):
        ours = [r for r in manifest.refs if r.workflow == workflow]
        their_refs = manager.workflows.get_workflow_models(workflow)
        assert [(r.filename, r.category, r.criticality, r.status, r.hash, set(r.sources), r.declared_by) for r in ours] == [
            (t.filename, t.category, t.criticality, t.status, t.hash, set(t.sources), t.declared_by) for t in their_refs]
    (intent,) = manifest.intents
    assert (intent.target_path, intent.declared_by) == ("loras/style.safetensors", "manual")
    # The environment-level upscaler is needed by the environment itself, with its own criticality.
    assert manifest.needed() == {"ca759a71a8fefd29": "required", "fedcba9876543210": "flexible", "7f200fcb182e7bed": "required"}
    assert [r.workflow for r in manifest.refs if r.hash == "7f200fcb182e7bed"] == [ENVIRONMENT]


def test_comfygit_edit_is_diffed_the_same_by_the_differential_read(tmp_path: Path) -> None:
    before, after = tmp_path / "before.toml", tmp_path / "after.toml"
    comfygit_pyproject(before, second=False)
    comfygit_pyproject(after, second=True)
    old, new = before.read_bytes(), after.read_bytes()
    quick, full = diff_manifest_bytes(old, new), diff_manifests(parse_manifest(old), parse_manifest(new))
    assert dict(quick.newly_needed) == dict(full.newly_needed) == {"fedcba9876543210": "flexible"}
    assert dict(quick.criticality_raised) == dict(full.criticality_raised) == {"ca759a71a8fefd29": ("flexible", "required")}
    assert quick.new.dialect == "comfygit"


def test_repair_write_back_is_read_by_comfygit_and_keeps_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    manager = comfygit_pyproject(path, second=False)
    (intent,) = parse_manifest(path.read_bytes()).intents
    text, done = apply_resolutions(path.read_text(), [ResolvedIntent(intent, "0011223344556677", 77, "loras/style.safetensors")])
    assert done and '[tool.comfygit.team]\nnote = "kept"' in text and "schema_version = 2" in text
    path.write_text(text)
    os.utime(path, (1, 1))
    manager = PyprojectManager(path)
    written = manager.models.get_by_hash("0011223344556677")
    assert (written.filename, written.size, written.relative_path, written.category, written.sources) == (
        "style.safetensors", 77, "loras/style.safetensors", "loras", [CIVITAI + "12345"])
    (resolved,) = [m for m in manager.workflows.get_workflow_models("portrait") if m.filename == "style.safetensors"]
    assert (resolved.status, resolved.hash, resolved.declared_by) == ("resolved", "0011223344556677", "manual")


# --- missing-model detection: 0.7.1's against cfd's, on generated manifests --------------------


def comfygit_missing(pyproject: Path, models_dir: Path, db: Path) -> dict[str, tuple[list[str], str, bool]]:
    """0.7.1's own method, on its own pyproject reader and model repository."""
    manager = SimpleNamespace(pyproject=PyprojectManager(pyproject), model_repository=ModelRepository(db, models_dir))
    manager._get_available_workflow_model = lambda m: EnvironmentModelManager._get_available_workflow_model(manager, m)
    manager._normalize_model_relative_path = EnvironmentModelManager._normalize_model_relative_path  # a staticmethod
    found = EnvironmentModelManager.detect_missing_models(manager)  # type: ignore[arg-type]
    return {m.model.hash: (sorted(m.workflow_names), m.criticality, m.can_download) for m in found}


def cfd_missing(pyproject: Path, models_dir: Path, db: Path) -> dict[str, tuple[list[str], str, bool]]:
    with ModelIndex(db, models_dir, COMFYGIT) as index:
        report = detect_missing_models(parse_manifest(pyproject.read_bytes()), index)
    return {m.hash: (sorted(m.named_workflows), m.criticality, m.can_download) for m in report.missing}


@st.composite
def comfygit_environments(draw: Any) -> dict[str, Any]:
    """The ComfyDock test's cases, plus 0.7.1's environment-level models (a model's own criticality)."""
    case = draw(shared.environments())
    for model in case["models"]:
        model["criticality"] = draw(st.sampled_from([None, None, "required", "optional"]))
    return case


COMPARED = {"cases": 0, "agreed exactly": 0}


@settings(max_examples=shared.EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(comfygit_environments())
def test_cfd_finds_what_comfygit_finds_plus_the_listed_differences(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pyproject, models_dir, db, states = shared.build(case, Path(tmp), "comfygit")
        hashes = list(states) + case["dangling"]
        theirs = comfygit_missing(pyproject, models_dir, db)
        expected = shared.expected_from_comfydock(case, theirs, states, hashes)
        assert cfd_missing(pyproject, models_dir, db) == expected
        COMPARED["cases"] += 1
        COMPARED["agreed exactly"] += expected == theirs


def test_an_environment_level_model_is_missing_for_both(tmp_path: Path) -> None:
    """0.7.1's second pass: a model with its own criticality is needed with no workflow naming it."""
    case = {"models": [{"seed": 3, "size": 300, "state": "absent", "sources": True, "criticality": "required"},
                       {"seed": 4, "size": 300, "state": "on disk", "sources": True, "criticality": "optional"}],
            "dangling": [], "workflows": {"wf0": []}}
    pyproject, models_dir, db, states = shared.build(case, tmp_path, "comfygit")
    h, _ = states
    assert comfygit_missing(pyproject, models_dir, db) == {h: ([], "required", True)}
    assert cfd_missing(pyproject, models_dir, db) == {h: ([], "required", True)}
    with ModelIndex(db, models_dir, COMFYGIT) as index:
        (info,) = detect_missing_models(parse_manifest(pyproject.read_bytes()), index).missing
    assert info.needed_by == "the environment"  # how status and repair name it


def test_cfd_hash_prints_the_dialects_hash(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "zeros.bin"
    path.write_bytes(b"\0" * 1000)
    run = lambda *args, cwd=tmp_path: subprocess.run([sys.executable, "-m", "cfd.cli.main", "hash", *args, str(path)],  # noqa: E731
                                                     cwd=cwd, capture_output=True, text=True)
    assert run().stdout.split()[0] == "f989cadf11c485b0"  # outside an environment: ComfyDock's, as before
    assert run("--dialect", "comfygit").stdout.split()[0] == "7f200fcb182e7bed"
    env = tmp_path / "env"
    env.mkdir()
    subprocess.run(["git", "init", "-q", str(env)], check=True)
    (env / "pyproject.toml").write_text("[tool.comfygit]\nschema_version = 2\n")
    assert run(cwd=env).stdout.split()[0] == "7f200fcb182e7bed"  # inside a ComfyGit environment: xxh3
