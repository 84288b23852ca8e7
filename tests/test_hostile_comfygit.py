"""Hostile ComfyGit inputs: two dialects in one file, odd schema versions, the other tool's index."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cfd.core.dialect import COMFYDOCK, COMFYGIT
from cfd.core.errors import IndexError_, ManifestError
from cfd.core.manifest.diff import diff_manifest_bytes
from cfd.core.manifest.model import parse_manifest
from cfd.core.store.index import ModelIndex

from helpers.manifest import ManifestBuilder

H1 = "0123456789abcdef"


def both_tables() -> bytes:
    text = ManifestBuilder("comfygit").model(H1, "a.safetensors", 5, "loras/a.safetensors", "loras").render()
    return (text + '\n[tool.comfydock]\ncomfyui_version = "v0.3.40"\n').encode()


def test_a_file_with_both_tables_is_an_error_naming_both() -> None:
    for reader in (lambda: parse_manifest(both_tables()), lambda: diff_manifest_bytes(b"", both_tables()),
                   lambda: diff_manifest_bytes(ManifestBuilder("comfygit").render().encode(), both_tables())):
        with pytest.raises(ManifestError) as caught:
            reader()
        assert "[tool.comfygit]" in caught.value.message and "[tool.comfydock]" in caught.value.message


def test_status_on_a_file_with_both_tables_is_one_clear_line(tmp_path: Path, cfd_env: dict[str, str]) -> None:
    repo = tmp_path / "env"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "pyproject.toml").write_bytes(both_tables())
    result = subprocess.run([sys.executable, "-m", "cfd.cli.main", "status"], cwd=repo, capture_output=True, text=True, env=cfd_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("cfd: error:") and "[tool.comfygit]" in first and "[tool.comfydock]" in first


@pytest.mark.parametrize(
    "value, expected",
    [('"2"', 2), ("2", 2), ('"two"', 1), ("[1]", 1), ("{a = 1}", 1), ("true", 1), ("2.5", 2), ("1e400", 1)],
)
def test_schema_version_of_any_type_reads_as_0_7_1_reads_it(value: str, expected: int) -> None:
    text = f'[tool.comfygit]\nschema_version = {value}\n'
    manifest = parse_manifest(text.encode())
    assert manifest.dialect == "comfygit" and manifest.schema_version == expected


def test_model_level_criticality_outside_0_7_1s_vocabulary_is_a_problem_not_a_need() -> None:
    text = ManifestBuilder("comfygit").model(H1, "a.safetensors", 5, criticality="flexible").render()
    manifest = parse_manifest(text.encode())
    assert manifest.models[H1].criticality is None and not manifest.needed()
    assert any("'criticality'" in problem for problem in manifest.problems)


def test_a_workflow_named_like_the_environment_entry_is_refused() -> None:
    text = ManifestBuilder("comfygit").model(H1, "a.safetensors", 5).ref('', "a.safetensors", "loras", hash=H1).render()
    manifest = parse_manifest(text.encode())
    assert manifest.workflows == () and not manifest.needed()
    assert manifest.problems


def test_backslashes_in_relative_path_are_normalised_not_escaping() -> None:
    text = ManifestBuilder("comfygit").model(H1, "a.safetensors", 5, "loras\\sub\\a.safetensors").render()
    assert parse_manifest(text.encode()).models[H1].relative_path == "loras/sub/a.safetensors"


def _index_with_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_info (version INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO schema_info VALUES (?)", (version,))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("version, wanted", [(10, COMFYDOCK), (9, COMFYGIT)])
def test_the_other_dialects_index_is_refused_untouched(tmp_path: Path, models_dir: Path, version: int, wanted) -> None:
    db = tmp_path / "models.db"
    _index_with_version(db, version)
    before = db.read_bytes()
    with pytest.raises(IndexError_) as caught:
        ModelIndex(db, models_dir, wanted)
    assert wanted.title in caught.value.message and f"schema {version}" in caught.value.message
    assert db.read_bytes() == before  # no table created, no version written


def test_a_v10_index_in_a_comfydock_workspace_is_one_clear_error(tmp_path: Path) -> None:
    """The ComfyDock workspace's cache holds a v10 file (copied over by hand): status says so."""
    workspace = tmp_path / "ws"
    (workspace / ".metadata").mkdir(parents=True)
    (workspace / "models").mkdir()
    (workspace / ".metadata" / "workspace.json").write_text('{"global_model_directory": {"path": "%s"}}' % (workspace / "models"))
    (workspace / "comfydock_cache").mkdir()
    _index_with_version(workspace / "comfydock_cache" / "models.db", 10)
    repo = workspace / "environments" / "e" / ".cec"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "pyproject.toml").write_text(ManifestBuilder().model(H1, "a", 5).ref("wf", "a", "loras", hash=H1).render())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CFD_", "COMFY"))}
    result = subprocess.run([sys.executable, "-m", "cfd.cli.main", "status"], cwd=repo, capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "ComfyGit index (schema 10)" in result.stderr.splitlines()[0]


def test_an_unknown_schema_version_is_refused(tmp_path: Path, models_dir: Path) -> None:
    db = tmp_path / "models.db"
    _index_with_version(db, 11)
    with pytest.raises(IndexError_) as caught:
        ModelIndex(db, models_dir, COMFYGIT)
    assert "11" in caught.value.message


def test_a_pull_bringing_both_tables_never_fails_git(scenario, cfd_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CFD_MODELS_DIR", "CFD_INDEX", "CFD_ALLOW_PRIVATE_NETWORKS"):
        monkeypatch.setenv(key, cfd_env[key])
    scenario.seed({"pyproject.toml": ManifestBuilder("comfygit").render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    installed = subprocess.run([sys.executable, "-m", "cfd.cli.main", "hooks", "install", "--python", sys.executable],
                               cwd=bob.path, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    alice.commit("both", {"pyproject.toml": both_tables().decode()})
    alice.push()
    pulled = bob.pull()
    assert pulled.returncode == 0 and "Traceback" not in pulled.stderr
    lines = [line for line in pulled.stderr.splitlines() if "[tool.comfygit]" in line]
    assert len(lines) == 1 and "[tool.comfydock]" in lines[0], pulled.stderr
    assert bob.is_clean()


def test_the_comfygit_workspace_hf_token_is_used_last_and_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cfd.core.download.types import DownloadOptions
    from cfd.core.environment import open_environment

    workspace = tmp_path / "ws"
    (workspace / ".metadata").mkdir(parents=True)
    (workspace / "models").mkdir()
    (workspace / ".metadata" / "workspace.json").write_text(
        '{"global_model_directory": {"path": "%s"}, "api_credentials": {"huggingface_token": "hf_secret_ws", '
        '"civitai_token": "civ_secret_ws"}}' % (workspace / "models"))
    repo = workspace / "environments" / "e" / ".cec"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "pyproject.toml").write_text(ManifestBuilder("comfygit").render())
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_API_KEY", "CIVITAI_API_TOKEN", "COMFYGIT_HOME"):
        monkeypatch.delenv(name, raising=False)
    env = open_environment(repo)
    assert env.dialect is COMFYGIT and env.index_path == workspace / "comfygit_cache" / "models.db"
    assert env.settings.setting("cfd.index").source == "ComfyGit workspace"  # what `cfd config` shows
    tokens = DownloadOptions.from_settings(env).tokens
    assert (tokens.hf, tokens.civitai) == ("hf_secret_ws", "civ_secret_ws")
    assert "ComfyGit workspace" in (tokens.hf_origin or "") and "secret" not in repr(tokens) + (tokens.hf_origin or "")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_from_env")  # the environment comes first, as in 0.7.1
    assert DownloadOptions.from_settings(open_environment(repo)).tokens.hf == "hf_from_env"
