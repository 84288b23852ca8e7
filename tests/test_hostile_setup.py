"""Hostile setups (issue 10): a models dir that is not there, a repo path with a newline,
a huge manifest, two agents on one models dir. Driven through the real commands: `git pull`
firing the installed hooks, `cfd repair`, `cfd index scan`, the agent."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from helpers import ManifestBuilder, Scenario, make_model, run_git
from helpers.chaos import Served, run_cfd, serve
from helpers.faults import ModelServer


pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


def locations(index: Path) -> int:
    with sqlite3.connect(index) as conn:
        return conn.execute("SELECT COUNT(*) FROM model_locations").fetchone()[0]


def use_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The CFD_* settings of `env` in this process too (the hooks inherit them)."""
    for key, value in env.items():
        if key.startswith("CFD_"):
            monkeypatch.setenv(key, value)


def one_model(server: ModelServer, name: str, seed: int) -> tuple[Served, str]:
    """A served model and a manifest whose workflow requires it."""
    m = serve(server, name, seed, 4096)
    builder = ManifestBuilder().model(m.hash, m.name, m.size, f"checkpoints/{m.name}", "checkpoints", [m.url])
    builder.ref("wf", m.name, "checkpoints", hash=m.hash, criticality="required", node_id="1")
    return m, builder.render()


# --------------------------------------------------------------------------- a models dir that is not there


def test_a_missing_models_dir_is_never_created(scenario: Scenario, server: ModelServer, tmp_path: Path,
                                               cfd_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An unmounted drive or a typo: hooks, repair and status say so in one line and create nothing
    (a created dir on the system disk would be filled by the downloads)."""
    unmounted = tmp_path / "mnt" / "models-drive" / "models"
    env = {**cfd_env, "CFD_MODELS_DIR": str(unmounted), "CFD_INDEX": str(tmp_path / "elsewhere" / "models.db")}
    use_settings(monkeypatch, env)
    scenario.seed({"pyproject.toml": ManifestBuilder().render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=dict(os.environ)).returncode == 0
    m, text = one_model(server, "big.safetensors", 1)
    alice.commit("a model", {"pyproject.toml": text})
    alice.push()

    pulled = bob.pull()
    assert pulled.returncode == 0 and bob.is_clean()
    lines = [line for line in pulled.stderr.splitlines() if line.startswith("cfd:")]
    assert len(lines) == 1 and f"the models directory {unmounted} does not exist" in lines[0], pulled.stderr
    assert "create it or mount it" in lines[0] and "Traceback" not in pulled.stderr
    for args in (("repair", "--yes"), ("status",), ("index", "scan")):
        result = run_cfd(*args, cwd=bob.path, env=dict(os.environ))
        assert result.returncode != 0 and "Traceback" not in result.stderr, (args, result.stderr)
        assert f"the models directory {unmounted} does not exist" in result.stderr, (args, result.stderr)
        assert [line for line in result.stderr.splitlines() if not line.startswith("hint:")] == [
            line for line in result.stderr.splitlines() if line.startswith("cfd: error: the models directory")
        ], (args, result.stderr)  # one error line (and the CLI's usual hint line)
    assert not (tmp_path / "mnt").exists()  # nothing created, not even the parent
    assert server.requests == []


def test_index_scan_of_an_empty_mount_point_keeps_the_index(tmp_path: Path, cfd_env: dict[str, str],
                                                             scenario: Scenario) -> None:
    """The drive is not mounted: its mount point is an empty folder. Forgetting every location
    would empty the shared index for every environment (and ComfyDock)."""
    models = Path(cfd_env["CFD_MODELS_DIR"])
    index = Path(cfd_env["CFD_INDEX"])
    for n in range(6):
        make_model(models, f"checkpoints/m{n}.safetensors", n, 256)
    env_repo = scenario.clone("env")
    env_repo.commit("env", {"pyproject.toml": ManifestBuilder().render()})
    assert run_cfd("index", "scan", cwd=env_repo.path, env=cfd_env).returncode == 0
    assert locations(index) == 6
    stash = tmp_path / "unmounted-content"
    models.rename(stash)
    models.mkdir()  # the bare mount point

    refused = run_cfd("index", "scan", cwd=env_repo.path, env=cfd_env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert len([line for line in refused.stderr.splitlines() if not line.startswith("hint:")]) == 1, refused.stderr
    assert "6 of the 6 indexed files" in refused.stderr and "--prune" in refused.stderr, refused.stderr
    assert locations(index) == 6

    # More than half gone (4 of 6) is refused too; a move inside the dir is not a loss.
    models.rmdir()
    stash.rename(models)
    for n in range(4):
        (models / "checkpoints" / f"m{n}.safetensors").unlink()
    assert "4 of the 6" in run_cfd("index", "scan", cwd=env_repo.path, env=cfd_env).stderr
    assert locations(index) == 6
    pruned = run_cfd("index", "scan", "--prune", cwd=env_repo.path, env=cfd_env)
    assert pruned.returncode == 0 and "4 removed" in pruned.stdout, pruned.stdout + pruned.stderr
    assert locations(index) == 2
    (models / "elsewhere").mkdir()
    for n in (4, 5):
        (models / "checkpoints" / f"m{n}.safetensors").rename(models / "elsewhere" / f"m{n}.safetensors")
    moved = run_cfd("index", "scan", cwd=env_repo.path, env=cfd_env)
    assert moved.returncode == 0 and "2 removed" in moved.stdout, moved.stdout + moved.stderr
    assert locations(index) == 2


# --------------------------------------------------------------------------- a newline in the repository path


def test_a_repository_path_with_a_newline(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10: git's answers were split on newlines, so `cfd hooks install` put executable
    hooks into an untracked folder of the work tree. The hooks go where git runs them, the
    work tree stays clean, and a real `git pull` fires them and syncs."""
    use_settings(monkeypatch, cfd_env)
    scenario.seed({"pyproject.toml": ManifestBuilder().render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob\nhooks")
    installed = run_cfd("hooks", "install", cwd=bob.path, env=dict(os.environ))
    assert installed.returncode == 0 and "Traceback" not in installed.stderr, installed.stdout + installed.stderr
    assert bob.is_clean(), bob.status()
    assert sorted(os.listdir(bob.path)) == [".git", "pyproject.toml"]
    hooks_dir = bob.path / ".git" / "hooks"
    assert all(os.access(hooks_dir / hook, os.X_OK) for hook in ("post-merge", "post-checkout", "post-rewrite", "post-commit"))
    shown = run_cfd("hooks", "status", cwd=bob.path, env=dict(os.environ))
    assert shown.returncode == 0 and "missing" not in shown.stdout, shown.stdout

    m, text = one_model(server, "model.safetensors", 3)
    alice.commit("a model", {"pyproject.toml": text})
    alice.push()
    pulled = bob.pull()
    assert pulled.returncode == 0 and bob.is_clean(), pulled.stderr
    assert "1 downloaded" in pulled.stderr, pulled.stderr
    models = Path(cfd_env["CFD_MODELS_DIR"])
    assert (models / "checkpoints" / m.name).stat().st_size == m.size


def test_a_linked_worktree_of_a_repository_with_a_newline_in_its_path(scenario: Scenario, server: ModelServer, tmp_path: Path,
                                                                     cfd_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A linked worktree's git dir is absolute: the shim's fast path split it on the newline
    and took a piece of the path for the new manifest's blob (one holding ':' made it stop
    as if the commit had no pyproject.toml). Now it hands over to Python, which syncs."""
    use_settings(monkeypatch, cfd_env)
    scenario.seed({"pyproject.toml": ManifestBuilder().render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob\nx:y")
    assert run_cfd("hooks", "install", cwd=bob.path, env=dict(os.environ)).returncode == 0
    worktree = tmp_path / "wt"
    bob.git("worktree", "add", "-q", "--detach", str(worktree), "HEAD")
    m, text = one_model(server, "model.safetensors", 4)
    alice.commit("a model", {"pyproject.toml": text})
    alice.push()
    bob.git("fetch", "-q")
    checked_out = run_git("checkout", "-q", "--detach", "origin/main", cwd=worktree)
    assert "1 downloaded" in checked_out.stderr, checked_out.stderr
    assert (Path(cfd_env["CFD_MODELS_DIR"]) / "checkpoints" / m.name).stat().st_size == m.size


# --------------------------------------------------------------------------- a huge manifest


def test_a_manifest_over_the_ceiling_is_left_to_repair(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10: every hook read a 194 MB manifest (48 s, 3.7 GB). Above cfd.maxManifestSize the
    hook reads nothing, says so in one line, `cfd status` shows it, `cfd repair` does the work."""
    use_settings(monkeypatch, cfd_env)
    scenario.seed({"pyproject.toml": ManifestBuilder().render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=dict(os.environ)).returncode == 0
    m, text = one_model(server, "model.safetensors", 5)
    padded = text + "\n# " + "x" * 200_000 + "\n"  # a comment makes it large; the content is tiny
    alice.commit("a large manifest", {"pyproject.toml": padded})
    alice.push()
    monkeypatch.setenv("CFD_MAX_MANIFEST_SIZE", "100K")

    pulled = bob.pull()
    assert pulled.returncode == 0 and bob.is_clean()
    lines = [line for line in pulled.stderr.splitlines() if line.startswith("cfd:")]
    assert len(lines) == 1 and "over cfd.maxManifestSize (100.0 KiB)" in lines[0] and "cfd repair" in lines[0], pulled.stderr
    assert server.requests == []
    status = run_cfd("status", cwd=bob.path, env=dict(os.environ))
    assert "over cfd.maxManifestSize" in status.stdout and "model(s) need downloading" in status.stdout, status.stdout

    repaired = run_cfd("repair", "--yes", cwd=bob.path, env=dict(os.environ))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert (Path(cfd_env["CFD_MODELS_DIR"]) / "checkpoints" / m.name).stat().st_size == m.size
    status = run_cfd("status", cwd=bob.path, env=dict(os.environ))
    assert status.returncode == 0 and "maxManifestSize" not in status.stdout, status.stdout
