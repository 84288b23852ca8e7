"""The issue's "done when", end to end: a ComfyGit 0.7.1 workspace, a teammate's pull with the
hooks installed, `cfd status`, `cfd repair`, and the workflow files ComfyUI loads.

The workspace and the pyproject.toml are made by comfygit-core 0.7.1 itself; cfd has no
settings of its own here (no CFD_MODELS_DIR, no CFD_INDEX): it finds the workspace around the
environment, its models dir and `comfygit_cache/models.db`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from comfygit_core.factories.workspace_factory import WorkspaceFactory
from comfygit_core.managers.pyproject_manager import PyprojectManager
from comfygit_core.models.manifest import ManifestModel as CGModel
from comfygit_core.models.manifest import ManifestWorkflowModel as CGWorkflowModel
from comfygit_core.models.workflow import WorkflowNodeWidgetRef
from comfygit_core.repositories.model_repository import ModelRepository

from helpers.faults import ModelServer
from helpers.gitscenario import Clone, Scenario, run_git
from helpers.manifest import model_bytes, short_hash_for

CFD = [sys.executable, "-m", "cfd.cli.main"]
SIZE = 64 * 1024


def cfd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CFD, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def node(node_id: str, value: str) -> WorkflowNodeWidgetRef:
    return WorkflowNodeWidgetRef(node_id=node_id, node_type="Loader", widget_index=0, widget_value=value)


def alices_pyproject(path: Path, server: ModelServer) -> dict[str, str]:
    """0.7.1's own writer: a required and an optional workflow model, an environment-level
    model, and a download intent. Returns name -> short hash."""
    hashes = {}
    manager = PyprojectManager(path)
    refs = []
    for seed, name, criticality in ((1, "base.safetensors", "required"), (2, "detail.safetensors", "optional")):
        data = model_bytes(seed, SIZE)
        server.add_file(f"/{name}", data)
        hashes[name] = short_hash_for(data, "comfygit")
        manager.models.add_model(CGModel(hashes[name], name, SIZE, f"checkpoints/{name}", "checkpoints", [server.url(f"/{name}")]))
        refs.append(CGWorkflowModel(name, "checkpoints", criticality, "resolved", [node(str(seed), name)], hash=hashes[name]))
    upscaler = model_bytes(3, SIZE)
    server.add_file("/up.pth", upscaler)
    hashes["up.pth"] = short_hash_for(upscaler, "comfygit")
    manager.models.add_model(CGModel(hashes["up.pth"], "up.pth", SIZE, "upscale_models\\up.pth", "upscale_models",
                                     [server.url("/up.pth")], criticality="required"))
    server.add_file("/style.safetensors", model_bytes(4, SIZE))
    refs.append(CGWorkflowModel("style.safetensors", "loras", "optional", "unresolved", [node("9", "style.safetensors")],
                                sources=[server.url("/style.safetensors")], relative_path="loras/style.safetensors"))
    manager.workflows.set_workflow_models("portrait", refs)
    return hashes


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CFD_ALLOW_PRIVATE_NETWORKS", "true")  # the model server listens on loopback
    monkeypatch.setenv("CFD_RETRIES", "1")
    ws = WorkspaceFactory.create(tmp_path / "bob-ws")
    return Path(ws.paths.root)


def test_a_teammates_pull_on_a_comfygit_workspace(tmp_path: Path, workspace: Path) -> None:
    scenario = Scenario(tmp_path / "repos")
    seed_pyproject = tmp_path / "seed.toml"
    seed_pyproject.write_text('[project]\nname = "studio"\nversion = "0.1.0"\n\n[tool.comfygit]\nschema_version = 2\n'
                              'comfyui_version = "v0.3.60"\n')
    portrait_v1 = b'{"nodes": [], "version": 1}\n'
    scenario.seed({"pyproject.toml": seed_pyproject.read_text(), "workflows/portrait.json": portrait_v1})
    env_dir = workspace / "environments" / "studio"
    env_dir.mkdir(parents=True)
    run_git("clone", "-q", scenario.upstream, env_dir / ".cec", cwd=tmp_path)
    (env_dir / "ComfyUI").mkdir()
    bob = env_dir / ".cec"
    run_git("config", "user.name", "bob", cwd=bob)
    run_git("config", "user.email", "bob@example.invalid", cwd=bob)
    installed = cfd("hooks", "install", "--python", sys.executable, cwd=bob)
    assert installed.returncode == 0, installed.stderr

    # Bob's first repair puts the workflow where ComfyUI loads it; then he edits it there.
    first = cfd("repair", "--yes", cwd=bob)
    assert first.returncode == 0, first.stdout + first.stderr
    in_comfyui = env_dir / "ComfyUI" / "user" / "default" / "workflows"
    assert (in_comfyui / "portrait.json").read_bytes() == portrait_v1
    (in_comfyui / "portrait.json").write_bytes(b'{"nodes": [], "version": 1, "bob": "tweaked"}\n')

    with ModelServer() as server:
        alice = scenario.clone("alice")
        hashes = alices_pyproject(alice.path / "pyproject.toml", server)
        alice.write("workflows/portrait.json", b'{"nodes": [], "version": 2}\n')
        alice.write("workflows/landscape.json", b'{"nodes": [], "landscape": true}\n')
        alice.commit("models and workflows")
        alice.push()

        pulled = run_git("pull", "-q", cwd=bob)
        models = workspace / "models"
        assert (models / "checkpoints" / "base.safetensors").read_bytes() == model_bytes(1, SIZE)
        assert (models / "upscale_models" / "up.pth").read_bytes() == model_bytes(3, SIZE)  # environment-level, required
        assert not (models / "checkpoints" / "detail.safetensors").exists()  # optional: left for repair
        assert "Traceback" not in pulled.stderr
        kept = [line for line in pulled.stderr.splitlines() if "edited in ComfyUI kept" in line]
        assert len(kept) == 1 and "portrait" in kept[0] and "1 workflow file(s) copied" in kept[0], pulled.stderr
        assert (in_comfyui / "landscape.json").read_bytes() == b'{"nodes": [], "landscape": true}\n'
        assert b"tweaked" in (in_comfyui / "portrait.json").read_bytes()

        # 0.7.1's own repository finds what the hook downloaded, by its xxh3 hash.
        db = workspace / "comfygit_cache" / "models.db"
        repo = ModelRepository(db, models)
        assert repo.get_schema_version() == 10
        assert repo.find_by_exact_path("checkpoints/base.safetensors").hash == hashes["base.safetensors"]
        assert repo.find_by_exact_path("upscale_models/up.pth").hash == hashes["up.pth"]

        status = cfd("status", "--json", cwd=bob)
        report = json.loads(status.stdout)
        assert report["dialect"] == "comfygit" and status.returncode == 1
        assert [m["hash"] for m in report["missing"]] == [hashes["detail.safetensors"]]
        assert [i["filename"] for i in report["intents"]] == ["style.safetensors"]
        assert {f["name"]: f["state"] for f in report["workflow_files"]} == {"landscape": "in sync", "portrait": "modified locally"}
        header = cfd("status", cwd=bob).stdout.splitlines()[0]
        assert header.endswith("(ComfyGit)")

        repaired = cfd("repair", "--yes", cwd=bob)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    text = (bob / "pyproject.toml").read_text()
    assert "[tool.comfydock" not in text
    manager = PyprojectManager(bob / "pyproject.toml")
    (style,) = [m for m in manager.workflows.get_workflow_models("portrait") if m.filename == "style.safetensors"]
    assert style.status == "resolved" and manager.models.get_by_hash(style.hash).relative_path == "loras/style.safetensors"
    assert style.hash == short_hash_for(model_bytes(4, SIZE), "comfygit")
    final = cfd("status", "--json", cwd=bob)
    assert json.loads(final.stdout)["in_sync"] is True, final.stdout
    assert b"tweaked" in (in_comfyui / "portrait.json").read_bytes()  # still Bob's

    # A pull that brings only a workflow (pyproject.toml unchanged) still puts it into ComfyUI.
    run_git("commit", "-qam", "resolved the style LoRA", cwd=bob)
    run_git("push", "-q", cwd=bob)
    alice.git("pull", "-q")
    alice.write("workflows/night.json", b'{"nodes": [], "night": true}\n')
    alice.commit("night workflow")
    alice.push()
    run_git("pull", "-q", cwd=bob)
    assert (in_comfyui / "night.json").read_bytes() == b'{"nodes": [], "night": true}\n'
