"""core/state.py: the one layout, and the shell shim reading last-synced where Python writes it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cfd.core.environment import open_environment
from cfd.core.state import clone_state, models_state
from cfd.core.sync.marker import Marker, PendingEntry
from cfd.core.sync.pullsync import write_last_synced
from cfd.hooks.shim import render_shim


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def _commit_manifest(repo: Path, text: str) -> str:
    (repo / "pyproject.toml").write_text(text)
    _git(repo, "add", "pyproject.toml")
    _git(repo, "commit", "-q", "-m", text.strip())
    return _git(repo, "rev-parse", "HEAD")


def test_the_shim_reads_last_synced_where_core_state_keeps_it(tmp_path: Path) -> None:
    repo = tmp_path / "env"
    repo.mkdir()
    _git(repo, "init", "-q")
    before = _commit_manifest(repo, '[tool.comfydock]\nname = "a"\n')
    _commit_manifest(repo, '[tool.comfydock]\nname = "b"\n')
    (repo / ".git" / "ORIG_HEAD").write_text(before + "\n")  # as after a `git pull` from `before`
    ran = tmp_path / "python-ran"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> "{ran}"\n')
    hook = tmp_path / "post-merge"
    hook.write_text(render_shim("post-merge", str(python)))
    for script in (python, hook):
        script.chmod(0o755)

    def run_hook() -> None:
        subprocess.run([str(hook), "0"], cwd=repo, check=True, timeout=60)

    run_hook()
    assert ran.read_text().split()[:3] == ["-P", "-m", "cfd.hooks.runtime"]  # a new manifest, nothing synced: Python starts
    ran.unlink()
    write_last_synced(repo / ".git", _git(repo, "rev-parse", "HEAD:pyproject.toml"))
    assert clone_state(repo / ".git").last_synced.is_file()
    run_hook()
    assert not ran.exists()  # the shim found core.state's last-synced and spared Python


def test_every_reader_takes_its_paths_from_the_one_layout(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    repo, models = tmp_path / "env", tmp_path / "models"
    repo.mkdir()
    models.mkdir()
    _git(repo, "init", "-q")
    (repo / "pyproject.toml").write_text('[tool.comfydock]\nname = "a"\n')
    monkeypatch.setenv("CFD_MODELS_DIR", str(models))
    env = open_environment(repo)
    clone, store = clone_state(env.git_dir), models_state(env.models_dir)
    assert env.state_dir == clone.dir == repo / ".git" / "cfd"
    assert env.index_path == store.default_index == models / ".cfd" / "models.db"
    entry = PendingEntry("abc", "m.safetensors", "checkpoints/m.safetensors", 1, (), "flexible", (), "interrupted")
    Marker(env.git_dir).write([entry])
    assert [e.key for e in Marker(env.git_dir).read()] == ["abc"]
    assert sorted(p.name for p in clone.dir.iterdir()) == ["pending.json", "pending.json.lock"]
    assert clone.marker == clone.dir / "pending.json"
