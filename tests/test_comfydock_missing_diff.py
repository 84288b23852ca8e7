"""Differential test: cfd's detect_missing_models against comfydock-core 1.0.11's own
(`Environment.detect_missing_models`, run unbound on a real PyprojectManager and a real
ModelRepository reading the index cfd wrote), on generated manifests and model folders.

cfd differs on purpose in three places (docs/DESIGN.md, "Which models are missing"); the
test derives cfd's answer from ComfyDock's plus exactly these, so any other difference fails:

1. Presence needs the file on disk at its indexed size. ComfyDock trusts the index row: a
   model whose file was deleted or truncated since it was indexed is "present" to it,
   missing to cfd (ComfyDock would let ComfyUI fail on it later).
2. Dangling hashes: a workflow entry whose hash is not in the global models table is
   skipped by ComfyDock; cfd lists it as missing and not downloadable (and as a problem).
3. Strongest criticality: cfd reads a criticality it does not know ("Required", "critical")
   as flexible (a listed problem, as for an absent key) and keeps the strongest over every
   entry that uses the model. ComfyDock keeps the first entry's raw string and upgrades it
   only on an exact "required" / "flexible", so ["critical", "optional"] stays "critical"
   and ["optional", "critical"] stays "optional"; cfd says "flexible" for both. Where every
   value is one of the three, both give the strongest, and the test checks they agree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from comfydock_core.core.environment import Environment as ComfyDockEnvironment
from comfydock_core.managers.pyproject_manager import PyprojectManager
from comfydock_core.repositories.model_repository import ModelRepository
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfd.core.dialect import DIALECTS
from cfd.core.store.index import ModelIndex
from cfd.core.manifest.model import parse_manifest
from cfd.core.sync.missing import detect_missing_models
from helpers import ManifestBuilder
from helpers.manifest import model_bytes, short_hash_for

EXAMPLES = int(os.environ.get("CFD_HOSTILE_EXAMPLES", "60"))
STATES = ("absent", "on disk", "deleted", "truncated")  # the file, and whether the index knows it
# None: the key left out (flexible for both); "Required" and "critical" are not values the SPEC knows.
CRITICALITIES = ("required", "flexible", "optional", None, "Required", "critical")
VALID = ("required", "flexible", "optional")


@st.composite
def environments(draw: Any) -> dict[str, Any]:
    count = draw(st.integers(1, 5))
    models = [
        {"seed": i, "size": 200 + 37 * i, "state": draw(st.sampled_from(STATES)), "sources": draw(st.booleans())}
        for i in range(count)
    ]
    dangling = [f"{0xdead0000 + i:016x}" for i in range(draw(st.integers(0, 2)))]
    workflows = {}
    for w in range(draw(st.integers(1, 3))):
        refs = draw(st.lists(st.tuples(st.integers(0, count + len(dangling) - 1), st.sampled_from(CRITICALITIES)),
                             min_size=0, max_size=4))
        workflows[f"wf{w}"] = refs
    return {"models": models, "dangling": dangling, "workflows": workflows}


def build(case: dict[str, Any], root: Path, dialect: str = "comfydock") -> tuple[Path, Path, Path, dict[str, str]]:
    """The manifest, the models folder and the index a case describes; hash -> state.
    (tests/test_comfygit_compat.py builds the same cases in ComfyGit's dialect.)"""
    models_dir, db, pyproject = root / "models", root / "models.db", root / "pyproject.toml"
    models_dir.mkdir()
    builder, hashes, states = ManifestBuilder(dialect), [], {}
    with ModelIndex(db, models_dir, DIALECTS[dialect]) as index:
        for m in case["models"]:
            data = model_bytes(m["seed"], m["size"])
            h, relpath = short_hash_for(data, dialect), f"checkpoints/m{m['seed']}.safetensors"
            hashes.append(h)
            states[h] = m["state"]
            builder.model(h, f"m{m['seed']}.safetensors", len(data), relpath, "checkpoints",
                          [f"https://huggingface.co/o/r/resolve/main/m{m['seed']}.safetensors"] if m["sources"] else [],
                          criticality=m.get("criticality"))  # ComfyGit: an environment-level model
            if m["state"] == "absent":
                continue
            path = models_dir / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            index.record_file(h, relpath, size=len(data), mtime=path.stat().st_mtime)
            if m["state"] == "deleted":
                path.unlink()
            elif m["state"] == "truncated":
                path.write_bytes(data[: len(data) // 2])
    hashes += case["dangling"]
    for workflow, refs in case["workflows"].items():
        for n, (which, criticality) in enumerate(refs):
            h = hashes[which]
            builder.ref(workflow, f"{h}.safetensors", "checkpoints", hash=h, criticality=criticality, status="resolved",
                        node_id=str(n + 1))
    pyproject.write_text(builder.render(), encoding="utf-8")
    return pyproject, models_dir, db, states


def comfydock_missing(pyproject: Path, models_dir: Path, db: Path) -> dict[str, tuple[list[str], str, bool]]:
    """ComfyDock's own method, on its own pyproject reader and model repository."""
    env = SimpleNamespace(pyproject=PyprojectManager(pyproject), model_repository=ModelRepository(db, models_dir))
    found = ComfyDockEnvironment.detect_missing_models(env)  # type: ignore[arg-type]
    return {m.model.hash: (sorted(m.workflow_names), m.criticality, m.can_download) for m in found}


def cfd_missing(pyproject: Path, models_dir: Path, db: Path) -> dict[str, tuple[list[str], str, bool]]:
    with ModelIndex(db, models_dir) as index:
        report = detect_missing_models(parse_manifest(pyproject.read_bytes()), index)
    return {m.hash: (sorted(m.workflow_names), m.criticality, m.can_download) for m in report.missing}


def strongest(criticalities: list[str | None]) -> str:
    """cfd's reading: an absent or unknown criticality is flexible; the strongest wins."""
    read = [c if c in VALID else "flexible" for c in criticalities]
    return next(c for c in VALID if c in read)


def expected_from_comfydock(case: dict[str, Any], comfydock: dict[str, Any], states: dict[str, str],
                            hashes: list[str]) -> dict[str, tuple[list[str], str, bool]]:
    """ComfyDock's answer plus cfd's deliberate differences (the module docstring, 1 to 3)."""
    expected = dict(comfydock)
    users: dict[str, dict[str, list[str | None]]] = {}
    for workflow, refs in case["workflows"].items():
        for which, criticality in refs:
            users.setdefault(hashes[which], {}).setdefault(workflow, []).append(criticality)
    sources = {h: m["sources"] for h, m in zip(hashes, case["models"])}
    own = {h: m["criticality"] for h, m in zip(hashes, case["models"]) if m.get("criticality")}  # ComfyGit only
    for h in own:
        users.setdefault(h, {})
    for h, by_workflow in users.items():
        everything = [c for cs in by_workflow.values() for c in cs] + ([own[h]] if h in own else [])
        if h in comfydock and all(c in VALID or c is None for c in everything):
            assert comfydock[h][1] == strongest(everything)  # both: the strongest, when every value is valid
        if h in comfydock:  # 3: unknown values read as flexible, then the strongest
            expected[h] = (comfydock[h][0], strongest(everything), comfydock[h][2])
        if states.get(h) in ("deleted", "truncated"):  # 1: indexed, but not on disk at its size
            assert h not in comfydock, "ComfyDock now checks the disk: update the listed difference"
            expected[h] = (sorted(by_workflow), strongest(everything), sources[h])
        elif h not in states:  # 2: a dangling hash
            assert h not in comfydock, "ComfyDock now reports dangling hashes: update the listed difference"
            expected[h] = (sorted(by_workflow), strongest(everything), False)
    return expected


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(environments())
def test_cfd_finds_what_comfydock_finds_plus_the_listed_differences(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pyproject, models_dir, db, states = build(case, Path(tmp))
        hashes = list(states) + case["dangling"]
        comfydock = comfydock_missing(pyproject, models_dir, db)
        assert cfd_missing(pyproject, models_dir, db) == expected_from_comfydock(case, comfydock, states, hashes)


@pytest.mark.parametrize("state", ["deleted", "truncated"])
def test_an_indexed_file_gone_from_disk_is_the_listed_presence_difference(state: str) -> None:
    case = {"models": [{"seed": 1, "size": 300, "state": state, "sources": True}], "dangling": [],
            "workflows": {"wf0": [(0, "required")]}}
    with tempfile.TemporaryDirectory() as tmp:
        pyproject, models_dir, db, states = build(case, Path(tmp))
        (h,) = states
        assert comfydock_missing(pyproject, models_dir, db) == {}  # ComfyDock: the index row is enough
        assert cfd_missing(pyproject, models_dir, db) == {h: (["wf0"], "required", True)}


def test_an_unknown_criticality_is_the_listed_criticality_difference() -> None:
    case = {"models": [{"seed": 2, "size": 300, "state": "absent", "sources": True}], "dangling": [],
            "workflows": {"wf0": [(0, "critical")], "wf1": [(0, "optional")]}}
    with tempfile.TemporaryDirectory() as tmp:
        pyproject, models_dir, db, states = build(case, Path(tmp))
        (h,) = states
        assert comfydock_missing(pyproject, models_dir, db) == {h: (["wf0", "wf1"], "critical", True)}
        assert cfd_missing(pyproject, models_dir, db) == {h: (["wf0", "wf1"], "flexible", True)}


def test_a_dangling_hash_is_the_listed_difference() -> None:
    case = {"models": [], "dangling": ["00000000dead0000"], "workflows": {"wf0": [(0, "required")]}}
    with tempfile.TemporaryDirectory() as tmp:
        pyproject, models_dir, db, _ = build(case, Path(tmp))
        assert comfydock_missing(pyproject, models_dir, db) == {}
        assert cfd_missing(pyproject, models_dir, db) == {"00000000dead0000": (["wf0"], "required", False)}
