"""core/git.py: the one git subprocess wrapper and the one no_git_env()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cfd.core.git import LOCAL_ENV_VARS, GitError, git_value, no_git_env, run_git
from cfd.core.settings import read_git_config


def _repo(path: Path, models_dir: str) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "config", "cfd.modelsDir", models_dir], check=True)
    return path


def test_the_list_is_the_one_git_itself_clears() -> None:
    listed = subprocess.run(["git", "rev-parse", "--local-env-vars"], capture_output=True, text=True, check=True)
    assert set(listed.stdout.split()) <= LOCAL_ENV_VARS


def test_no_git_env_drops_what_binds_git_to_a_repository_and_keeps_the_rest() -> None:
    hook_env = {"GIT_DIR": ".git/worktrees/wt", "GIT_INDEX_FILE": "/tmp/index.lock", "GIT_PREFIX": "sub/",
                "GIT_CONFIG_PARAMETERS": "'cfd.strategy'='skip'", "GIT_CONFIG_GLOBAL": "/home/u/.gitconfig",
                "GIT_SSH_COMMAND": "ssh -i key", "PATH": "/usr/bin", "HOME": "/home/u"}
    assert no_git_env(hook_env) == {"GIT_CONFIG_GLOBAL": "/home/u/.gitconfig", "GIT_SSH_COMMAND": "ssh -i key",
                                    "PATH": "/usr/bin", "HOME": "/home/u"}


def test_git_runs_in_the_repository_asked_for_under_another_repos_hook_variables(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ours = _repo(tmp_path / "ours", "/models/ours")
    other = _repo(tmp_path / "other", "/models/other")
    # What a hook of `other` exports while it runs `cfd ... --env ours`.
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git" / "index"))
    assert git_value("rev-parse", "--show-toplevel", cwd=ours) == str(ours.resolve())
    assert read_git_config(ours)["cfd.modelsdir"][0] == "/models/ours"


def test_a_path_comes_back_exactly_even_with_a_newline_and_a_trailing_space(tmp_path: Path) -> None:
    odd = tmp_path / "env\nwith newline "
    _repo(odd, "/m")
    assert git_value("rev-parse", "--show-toplevel", cwd=odd) == str(odd.resolve())


def test_a_failing_git_gives_none_and_a_missing_git_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert git_value("rev-parse", "--show-toplevel", cwd=tmp_path) is None  # not a repository
    result = run_git("rev-parse", "--show-toplevel", cwd=tmp_path)
    assert result.returncode != 0 and b"not a git repository" in result.stderr
    with pytest.raises(GitError, match="does not exist"):
        run_git("status", cwd=tmp_path / "gone")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GitError, match="git is not installed"):
        run_git("--version")


def test_the_subprocess_side_does_not_load_pygit2() -> None:
    code = "import sys, cfd.core.git, cfd.core.settings, cfd.core.environment; print('pygit2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_fresh_process_loads_only_pygit2s_compiled_core_and_it_reads_like_the_full_package(tmp_path: Path) -> None:
    """The hook's cheap pygit2 load is the one used, answers as the full package does, and a
    full `import pygit2` afterwards (any other code in the process) still works."""
    repo = tmp_path / "r"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"], check=True)
    code = f"""
import sys
import cfd.core.gitobjects as g
print(g.LOADED_AS, 'pygit2.repository' in sys.modules, 'ssl' in sys.modules, 'pygit2.enums' in sys.modules)
r = g.open_repo({str(repo)!r})
blob = r.blob_id(r.resolve_commit('HEAD'))
print(blob, r.blob_size(blob), r.read_blob(blob).decode().splitlines()[0], r.has_blob(blob), r.has_blob('0' * 40))
import pygit2
full = pygit2.Repository({str(repo)!r})
print(full.revparse_single('HEAD:pyproject.toml').id, full[blob].size, pygit2.enums.ObjectType.BLOB == 3,
      type(full.odb.read_header(blob)[0]).__name__, r.blob_size(blob))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    blob = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD:pyproject.toml"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert out[0] == "core False False False"  # neither the package layer, what it pulls in (ssl), nor its enums
    assert out[1] == f"{blob} 21 [project] True False"
    assert out[2] == f"{blob} 21 True ObjectType 21"


def test_a_blob_view_reads_what_read_blob_reads_and_refuses_what_is_no_blob(tmp_path: Path) -> None:
    from cfd.core.gitobjects import open_repo

    repo = tmp_path / "r"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    content = "[project]\nname = 'é'\n" + "x = 1\n" * 50_000  # a large blob, not only ASCII
    (repo / "pyproject.toml").write_text(content, encoding="utf-8")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"], check=True)
    r = open_repo(repo)
    commit = r.resolve_commit("HEAD")
    blob = r.blob_id(commit)
    assert blob is not None and commit is not None
    view = r.read_blob_view(blob)
    del r  # the view keeps the blob's buffer alive on its own
    assert view.readonly and str(view, "utf-8") == content and bytes(view) == open_repo(repo).read_blob(blob)
    with pytest.raises(GitError, match="is missing"):
        open_repo(repo).read_blob_view("0123456789" * 4)
    with pytest.raises(GitError, match="is not a file"):
        open_repo(repo).read_blob_view(commit)
