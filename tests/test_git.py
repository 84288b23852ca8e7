"""core/git.py: the one git subprocess wrapper and the one no_git_env()."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfd.core.git import LOCAL_ENV_VARS, GitError, git_value, no_git_env, run_git, start_git
from cfd.core.settings import read_git_config, start_reading_git_config, stop_reading_git_config


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


def test_a_config_read_started_early_reads_what_a_plain_read_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hook starts `git config` before its imports: the same repository, scopes and clean
    environment as a plain read, and used only for the repository it was started for."""
    ours = _repo(tmp_path / "ours", "/models/ours")
    other = _repo(tmp_path / "other", "/models/other")
    subprocess.run(["git", "-C", str(ours), "config", "--global", "cfd.jobs", "3"], check=True)
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))  # a hook of `other` is running
    plain = read_git_config(ours)
    assert plain["cfd.modelsdir"] == ("/models/ours", "local") and plain["cfd.jobs"] == ("3", "global")
    start_reading_git_config(ours)
    assert read_git_config(other)["cfd.modelsdir"][0] == "/models/other"  # not ours: a read of its own
    assert read_git_config(ours) == plain  # collected
    subprocess.run(["git", "config", "cfd.jobs", "5"], cwd=ours, env=no_git_env(), check=True)
    assert read_git_config(ours)["cfd.jobs"] == ("5", "local")  # an early read is used once only
    monkeypatch.setenv("PATH", str(tmp_path))  # no git: start and read cope, as a plain read does
    start_reading_git_config(ours)
    assert read_git_config(ours) == {}


def _hanging_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `git` that says it started (its pid in a file), then never ends."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "git.pid"
    git = bin_dir / "git"
    git.write_text(f'#!/bin/sh\necho $$ > "{pid_file}.tmp" && mv "{pid_file}.tmp" "{pid_file}"\nexec sleep 600\n')
    git.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return pid_file


def _wait_for(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(path.read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True  # killed and reaped: not even a zombie
    return False


def test_an_early_read_nobody_collects_is_killed_and_reaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = _hanging_git(tmp_path, monkeypatch)
    start_reading_git_config(tmp_path)
    pid = _wait_for(pid_file)
    assert not _gone(pid)  # running
    stop_reading_git_config()
    assert _gone(pid)
    stop_reading_git_config()  # nothing left: a no-op


def test_a_started_git_that_hangs_times_out_and_is_reaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = _hanging_git(tmp_path, monkeypatch)
    started = start_git("config", "--list", cwd=tmp_path, timeout=0.5)
    pid = _wait_for(pid_file)
    with pytest.raises(GitError, match="timed out"):
        started.result()
    assert _gone(pid)


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
import os, sys
import cfd.core.gitobjects as g
print(os.environ.get('SSL_CERT_FILE'))
print(g.LOADED_AS, 'pygit2.repository' in sys.modules, 'ssl' in sys.modules, 'pygit2.enums' in sys.modules)
r = g.open_repo({str(repo)!r})
blob = r.blob_id(r.resolve_commit('HEAD'))
print(blob, r.blob_size(blob), r.read_blob(blob).decode().splitlines()[0], r.has_blob(blob), r.has_blob('0' * 40))
import pygit2
full = pygit2.Repository({str(repo)!r})
print(full.revparse_single('HEAD:pyproject.toml').id, full[blob].size, pygit2.enums.ObjectType.BLOB == 3,
      type(full.odb.read_header(blob)[0]).__name__, r.blob_size(blob))
"""
    env = {**os.environ, "SSL_CERT_FILE": "/etc/ssl/the-users-own.pem"}  # libgit2 loads without it, downloads keep it
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split("\n")
    assert lines[0] == "/etc/ssl/the-users-own.pem"
    out = lines[1:]
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
