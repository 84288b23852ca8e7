"""Compatibility both ways with the real ComfyDock implementation (comfydock-core from PyPI).

comfydock-core is a test-only dependency (pyproject's dev extra): it is the oracle for the
short hash, the index schema and the pyproject format.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# comfydock-core (the dev extra) is the compatibility oracle: a missing oracle is a failure, not a skip.
import comfydock_core  # noqa: E402,F401

from comfydock_core.analyzers.model_scanner import ModelScanner  # noqa: E402
from comfydock_core.managers.pyproject_manager import PyprojectManager  # noqa: E402
from comfydock_core.models.manifest import ManifestModel as CDModel  # noqa: E402
from comfydock_core.models.manifest import ManifestWorkflowModel as CDWorkflowModel  # noqa: E402
from comfydock_core.models.workflow import WorkflowNodeWidgetRef  # noqa: E402
from comfydock_core.repositories.model_repository import ModelRepository  # noqa: E402

from cfd.core.manifest import fasttoml  # noqa: E402
from cfd.core.manifest.diff import diff_manifest_bytes, diff_manifests  # noqa: E402
from cfd.core.store.index import ModelIndex  # noqa: E402
from cfd.core.manifest.model import parse_manifest  # noqa: E402
from cfd.core.sync.missing import detect_missing_models  # noqa: E402
from cfd.core.store.scan import scan_models  # noqa: E402
from cfd.core.store.shorthash import StreamingShortHasher, short_hash_bytes, short_hash_file  # noqa: E402

MIB = 1024 * 1024
HF = "https://huggingface.co/org/repo/resolve/main/"
CIVITAI = "https://civitai.com/api/download/models/"


def comfydock_hash(path: Path, tmp_path: Path) -> str:
    return ModelRepository(tmp_path / "oracle.db").calculate_short_hash(path)


# --- the short hash -------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        10,
        5 * MIB - 1,
        5 * MIB,
        5 * MIB + 1,
        30 * MIB,  # the last size sampled at the start only
        30 * MIB + 1,  # just above: start, middle and end
        31 * MIB + 12345,  # odd size: the middle offset rounds
        64 * MIB,
    ],
    ids=lambda size: f"{size // MIB}MiB+{size % MIB}" if size >= MIB else f"{size}B",
)
def test_short_hash_equals_comfydocks(size: int, tmp_path: Path) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    expected = comfydock_hash(path, tmp_path)
    assert short_hash_file(path) == expected
    assert short_hash_bytes(data) == expected
    # As a download computes it: bytes streaming in, in order and out of order.
    streaming = StreamingShortHasher(size)
    for start in range(0, size, 3 * MIB + 17):
        streaming.update(data[start : start + 3 * MIB + 17])
    assert streaming.hexdigest() == expected
    pieces = [(start, data[start : start + 4 * MIB]) for start in range(0, size, 4 * MIB)]
    random.Random(1).shuffle(pieces)
    scattered = StreamingShortHasher(size)
    for start, piece in pieces:
        scattered.update_at(start, piece)
    assert scattered.hexdigest() == expected


def test_spec_test_vector(tmp_path: Path) -> None:
    path = tmp_path / "t.bin"
    path.write_bytes(b"abcdefghij")
    assert short_hash_file(path) == comfydock_hash(path, tmp_path) == "7bc234d9c29950da"


def _cfd_hash(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfd.cli.main", "hash", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cfd_hash_prints_the_spec_test_vector(tmp_path: Path) -> None:
    (tmp_path / "t.bin").write_bytes(b"abcdefghij")
    result = _cfd_hash("t.bin", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "7bc234d9c29950da  10  t.bin\n", "")


def test_cfd_hash_agrees_with_comfydock(tmp_path: Path) -> None:
    """Short hash, size and --full digests of `cfd hash` against comfydock-core's own functions."""
    sizes = {"tiny.bin": 10, "start-only.bin": 5 * MIB + 1, "sampled.safetensors": 31 * MIB + 12345}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(random.Random(size).randbytes(size))
    oracle = ModelRepository(tmp_path / "oracle.db")
    result = _cfd_hash("--full", "--json", *sizes, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = [
        {
            "path": name,
            "hash": oracle.calculate_short_hash(tmp_path / name),
            "size": size,
            "blake3": oracle.compute_blake3(tmp_path / name),
            "sha256": oracle.compute_sha256(tmp_path / name),
        }
        for name, size in sizes.items()
    ]
    assert json.loads(result.stdout) == expected
    text = _cfd_hash(*sizes, cwd=tmp_path).stdout.splitlines()
    assert [line.split() for line in text] == [[row["hash"], str(row["size"]), row["path"]] for row in expected]


def test_cfd_hash_of_what_is_not_a_file_is_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "t.bin").write_bytes(b"abcdefghij")
    (tmp_path / "dir").mkdir()
    result = _cfd_hash("t.bin", "missing.bin", "dir", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == "7bc234d9c29950da  10  t.bin\n"  # what could be hashed still is
    assert result.stderr.splitlines() == [
        "cfd: error: cannot hash missing.bin: No such file or directory",
        "cfd: error: cannot hash dir: not a regular file",
    ]


def test_resumed_download_seeds_the_hash_from_disk(tmp_path: Path) -> None:
    size = 40 * MIB + 3
    data = random.Random(7).randbytes(size)
    partial = tmp_path / "m.part"
    partial.write_bytes(data[: 22 * MIB])
    hasher = StreamingShortHasher(size)
    hasher.seed_from_file(partial, [(0, 22 * MIB)])
    hasher.update_at(22 * MIB, data[22 * MIB :])
    full = tmp_path / "m.safetensors"
    full.write_bytes(data)
    assert hasher.hexdigest() == comfydock_hash(full, tmp_path)


# --- the index, both ways -------------------------------------------------------------------


def populate(models_dir: Path) -> dict[str, str]:
    """A models dir as a user has it: relpath -> short hash (computed by ComfyDock)."""
    files = {
        "checkpoints/a.safetensors": 2 * MIB,
        "loras/b.safetensors": 4096,
        "loras/sub dir/c.safetensors": 3000,
        "vae/d.pt": 1024,
    }
    hashes = {}
    for n, (relpath, size) in enumerate(files.items()):
        path = models_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.Random(n).randbytes(size))
        hashes[relpath] = short_hash_bytes(path.read_bytes())
    return hashes


def test_index_written_by_comfydock_is_read_by_cfd(tmp_path: Path, models_dir: Path) -> None:
    hashes = populate(models_dir)
    db = tmp_path / "comfydock_cache" / "models.db"
    repo = ModelRepository(db, models_dir)
    result = ModelScanner(repo).scan_directory(models_dir, quiet=True)
    assert result.added_count == len(hashes)
    model_hash = hashes["loras/b.safetensors"]
    repo.add_source(model_hash, "civitai", CIVITAI + "5")

    with ModelIndex(db, models_dir) as index:
        assert index.present(hashes.values()) == {h: relpath for relpath, h in hashes.items()}
        assert index.present_by_source([CIVITAI + "5"]) == {CIVITAI + "5": "loras/b.safetensors"}
        # cfd's incremental scan trusts ComfyDock's mtimes: nothing is hashed again.
        again = scan_models(index)
        assert (again.hashed, again.unchanged, again.removed) == (0, len(hashes), 0)
        (models_dir / "vae" / "d.pt").unlink()
        assert hashes["vae/d.pt"] not in index.present(hashes.values())


def test_index_written_by_cfd_answers_comfydock(tmp_path: Path, models_dir: Path) -> None:
    hashes = populate(models_dir)
    db = tmp_path / "comfydock_cache" / "models.db"
    with ModelIndex(db, models_dir) as index:
        scan_models(index)
        model_hash = hashes["checkpoints/a.safetensors"]
        index.record_file(model_hash, "checkpoints/a.safetensors", size=2 * MIB,
                          mtime=(models_dir / "checkpoints" / "a.safetensors").stat().st_mtime, source_url=HF + "a")

    repo = ModelRepository(db, models_dir)  # ComfyDock opening our file must not rebuild it
    for relpath, h in hashes.items():
        assert repo.has_model(h)
        (location,) = repo.get_locations(h)
        assert location["relative_path"] == relpath
        assert location["base_directory"] == str(models_dir.resolve())
        assert location["filename"] == relpath.rsplit("/", 1)[-1]
        (found,) = repo.find_model_by_hash(h)
        assert (found.relative_path, found.file_size) == (relpath, (models_dir / relpath).stat().st_size)
    assert {m.relative_path for m in repo.get_all_models()} == set(hashes)
    assert repo.find_by_exact_path("loras/sub dir/c.safetensors").hash == hashes["loras/sub dir/c.safetensors"]
    assert [(s["type"], s["url"]) for s in repo.get_sources(hashes["checkpoints/a.safetensors"])] == [("huggingface", HF + "a")]
    # ComfyDock's scanner sees our exact mtimes and re-hashes nothing.
    result = ModelScanner(repo).scan_directory(models_dir, quiet=True)
    assert (result.skipped_count, result.added_count, result.updated_count) == (len(hashes), 0, 0)


def test_both_tools_take_turns_on_one_index(tmp_path: Path, models_dir: Path) -> None:
    hashes = populate(models_dir)
    db = tmp_path / "models.db"
    with ModelIndex(db, models_dir) as index:
        scan_models(index)
    shutil.copy(models_dir / "loras" / "b.safetensors", models_dir / "loras" / "b-copy.safetensors")
    repo = ModelRepository(db, models_dir)
    ModelScanner(repo).scan_directory(models_dir, quiet=True)  # ComfyDock adds the copy
    (models_dir / "loras" / "b.safetensors").unlink()
    with ModelIndex(db, models_dir) as index:
        assert index.present([hashes["loras/b.safetensors"]]) == {hashes["loras/b.safetensors"]: "loras/b-copy.safetensors"}
        result = scan_models(index)
        assert result.removed == 1
    assert {loc["relative_path"] for loc in repo.get_all_locations(models_dir)} == set(hashes) - {"loras/b.safetensors"} | {"loras/b-copy.safetensors"}


# --- pyproject.toml written by ComfyDock -------------------------------------------------------


def node(node_id: str, node_type: str, value: str) -> WorkflowNodeWidgetRef:
    return WorkflowNodeWidgetRef(node_id=node_id, node_type=node_type, widget_index=0, widget_value=value)


def comfydock_pyproject(path: Path, with_second_workflow: bool) -> PyprojectManager:
    path.write_text('[project]\nname = "studio"\nversion = "0.1.0"\n\n[tool.comfydock]\ncomfyui_version = "v0.3.40"\n')
    manager = PyprojectManager(path)
    a = CDModel(hash="dcf5f306c2a63465", filename="a.safetensors", size=41943040, relative_path="checkpoints/a.safetensors",
                category="checkpoints", sources=[HF + "a.safetensors"])
    b = CDModel(hash="0123456789abcdef", filename="b.safetensors", size=1234, relative_path="loras/b.safetensors",
                category="loras", sources=[])
    manager.models.add_model(a)
    manager.models.add_model(b)
    manager.workflows.set_workflow_models("portrait", [
        CDWorkflowModel(filename="a.safetensors", category="checkpoints", criticality="required", status="resolved",
                        nodes=[node("4", "CheckpointLoaderSimple", "a.safetensors")], hash=a.hash),
        CDWorkflowModel(filename="style.safetensors", category="loras", criticality="optional", status="unresolved",
                        nodes=[node("7", "LoraLoader", "style.safetensors")], sources=[CIVITAI + "12345"],
                        relative_path="loras/style.safetensors"),
    ])
    if with_second_workflow:
        c = CDModel(hash="fedcba9876543210", filename="c.safetensors", size=99, relative_path="vae/c.safetensors",
                    category="vae", sources=[HF + "c.safetensors"])
        manager.models.add_model(c)
        manager.workflows.set_workflow_models("landscape", [
            CDWorkflowModel(filename="a.safetensors", category="checkpoints", criticality="flexible", status="resolved",
                            nodes=[node("3", "CheckpointLoaderSimple", "a.safetensors")], hash=a.hash),
            CDWorkflowModel(filename="b.safetensors", category="loras", criticality="required", status="resolved",
                            nodes=[node("5", "LoraLoader", "b.safetensors")], hash=b.hash),
            CDWorkflowModel(filename="c.safetensors", category="vae", criticality="flexible", status="resolved",
                            nodes=[node("6", "VAELoader", "c.safetensors")], hash=c.hash),
        ])
    return manager


def test_pyproject_written_by_comfydock_parses_to_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    manager = comfydock_pyproject(path, with_second_workflow=True)
    manifest = parse_manifest(path.read_bytes(), str(path))
    assert manifest.problems == ()
    assert fasttoml.loads(path.read_text()) is not None  # ComfyDock's layout takes the fast reader
    theirs = {m.hash: m for m in manager.models.get_all()}
    assert set(manifest.models) == set(theirs)
    for model_hash, model in manifest.models.items():
        other = theirs[model_hash]
        assert (model.filename, model.size, model.relative_path, model.category, list(model.sources)) == (
            other.filename, other.size, other.relative_path, other.category, other.sources)
    assert set(manifest.workflows) == {"portrait", "landscape"}
    for workflow in manifest.workflows:
        ours = [r for r in manifest.refs if r.workflow == workflow]
        their_refs = manager.workflows.get_workflow_models(workflow)
        assert [(r.filename, r.category, r.criticality, r.status, r.hash, list(r.sources), r.relative_path) for r in ours] == [
            (t.filename, t.category, t.criticality, t.status, t.hash, t.sources, t.relative_path) for t in their_refs]
        assert [(r.node_id, r.widget_idx) for r in ours] == [(t.nodes[0].node_id, t.nodes[0].widget_index) for t in their_refs]
    (intent,) = manifest.intents
    assert (intent.workflow, intent.target_path, intent.sources) == ("portrait", "loras/style.safetensors", (CIVITAI + "12345",))
    assert manifest.needed() == {"dcf5f306c2a63465": "required", "0123456789abcdef": "required", "fedcba9876543210": "flexible"}


def test_comfydock_edit_is_diffed_the_same_by_the_differential_read(tmp_path: Path, models_dir: Path) -> None:
    before = tmp_path / "before.toml"
    after = tmp_path / "after.toml"
    comfydock_pyproject(before, with_second_workflow=False)
    comfydock_pyproject(after, with_second_workflow=True)
    old, new = before.read_bytes(), after.read_bytes()
    quick = diff_manifest_bytes(old, new)
    full = diff_manifests(parse_manifest(old), parse_manifest(new))
    assert dict(quick.newly_needed) == dict(full.newly_needed) == {"0123456789abcdef": "required", "fedcba9876543210": "flexible"}
    assert quick.criticality_raised == full.criticality_raised == {}
    assert quick.new_intents == full.new_intents == ()
    with ModelIndex(tmp_path / "models.db", models_dir) as index:
        report = detect_missing_models(quick.new, index, quick.hashes_to_check)
    assert [(m.model.filename, m.workflow_names, m.can_download) for m in report.missing] == [
        ("b.safetensors", ("landscape",), False), ("c.safetensors", ("landscape",), True)]


def test_full_digests_cfd_adds_do_not_disturb_comfydock(tmp_path: Path) -> None:
    """cfd may add keys of its own (blake3, sha256) to a global entry; ComfyDock still reads it."""
    path = tmp_path / "pyproject.toml"
    manager = comfydock_pyproject(path, with_second_workflow=False)
    text = path.read_text().replace('category = "checkpoints", sources', f'category = "checkpoints", blake3 = "{"ab" * 32}", sources')
    assert text != path.read_text()
    path.write_text(text)
    os.utime(path, (1, 1))  # ComfyDock caches by mtime
    assert manager.models.get_by_hash("dcf5f306c2a63465").filename == "a.safetensors"
    assert parse_manifest(path.read_bytes()).models["dcf5f306c2a63465"].blake3 == "ab" * 32
