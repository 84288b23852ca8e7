"""Real git repositories for tests: one bare upstream and named clones (teammates).

Everything goes through the git command line, as a user's would: hooks fire exactly as
they do for a user, which libgit2 would not do. The environment is os.environ (isolated
by conftest) plus an optional per-call overlay.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

Env = Mapping[str, "str | None"]  # None unsets the variable for that call
Files = Mapping[str, "str | bytes"]


def run_git(
    *args: str | os.PathLike[str],
    cwd: Path,
    check: bool = True,
    env: Env | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run git; on failure (when check) raise an AssertionError that shows its output."""
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    argv = ["git", *map(os.fspath, args)]
    result = subprocess.run(
        argv, cwd=cwd, env=full_env, input=input, text=True, capture_output=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(argv)}` failed with exit {result.returncode} in {cwd}\n"
            f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
        )
    return result


def _write(root: Path, relpath: str, content: str | bytes) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        # newline="" so a test's "\r\n" reaches the file as written.
        with path.open("w", encoding="utf-8", newline="") as f:
            f.write(content)
    return path


class Clone:
    """A working clone of the scenario's upstream; commits are authored by its name."""

    def __init__(self, path: Path, cloned: subprocess.CompletedProcess[str]) -> None:
        self.path = path
        self.name = path.name
        # The `git clone` run itself: post-checkout output and exit code live here.
        self.cloned = cloned

    def __repr__(self) -> str:
        return f"Clone({str(self.path)!r})"

    def git(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        env: Env | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run_git(*args, cwd=self.path, check=check, env=env, input=input)

    def write(self, relpath: str, content: str | bytes) -> Path:
        return _write(self.path, relpath, content)

    def read(self, relpath: str) -> str:
        return (self.path / relpath).read_text(encoding="utf-8")

    def commit(self, message: str, files: Files | None = None, all: bool = True) -> str:
        """Write `files`, stage everything (or only `files` when all=False), commit."""
        for relpath, content in (files or {}).items():
            self.write(relpath, content)
        if all:
            self.git("add", "-A")
        elif files:
            self.git("add", "--", *files)
        self.git("commit", "-q", "-m", message)
        return self.head()

    def push(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Default pushes the current branch and tracks it, so new branches just work.
        return self.git("push", *(args or ("-u", "origin", "HEAD")), check=check)

    def pull(self, *args: str, env: Env | None = None) -> subprocess.CompletedProcess[str]:
        """Never raises: tests inspect returncode and the hooks' output in stderr."""
        return self.git("pull", *args, check=False, env=env)

    def rev_parse(self, rev: str) -> str:
        return self.git("rev-parse", "--verify", rev).stdout.strip()

    def head(self) -> str:
        return self.rev_parse("HEAD")

    def branch(self, name: str, start: str = "HEAD") -> None:
        """Create a branch without switching to it (like `git branch`)."""
        self.git("branch", name, start)

    def checkout(
        self, ref: str, *args: str, check: bool = True, env: Env | None = None
    ) -> subprocess.CompletedProcess[str]:
        # post-checkout's exit code becomes checkout's: pass check=False to inspect it.
        return self.git("checkout", *args, ref, check=check, env=env)

    def status(self) -> str:
        return self.git("status", "--porcelain").stdout

    def is_clean(self) -> bool:
        """No staged, unstaged or untracked changes (ignored files do not count)."""
        return self.status() == ""


class Scenario:
    """A bare upstream at root/upstream.git and clones at root/<name>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.upstream = root / "upstream.git"
        root.mkdir(parents=True, exist_ok=True)
        run_git("init", "-q", "--bare", "-b", "main", self.upstream, cwd=root)
        self._seeds = 0

    def is_empty(self) -> bool:
        ref = run_git(
            "rev-parse", "-q", "--verify", "refs/heads/main", cwd=self.upstream, check=False
        )
        return ref.returncode != 0

    def seed(self, files: Files, message: str = "seed") -> str:
        """Commit `files` on main through a throwaway clone and push; returns the sha."""
        self._seeds += 1
        seeder = self.clone(f".seed{self._seeds}", auto_seed=False)
        # An empty clone's HEAD may name another unborn branch; seeding is for main.
        seeder.git("symbolic-ref", "HEAD", "refs/heads/main")
        sha = seeder.commit(message, files)
        seeder.push("origin", "main")
        return sha

    def clone(
        self,
        name: str,
        *args: str,
        env: Env | None = None,
        check: bool = True,
        auto_seed: bool = True,
    ) -> Clone:
        """`git clone [args] upstream root/name`; seeds an empty upstream with a README
        first so that the clone has a main branch (auto_seed=False clones it empty)."""
        if auto_seed and self.is_empty():
            self.seed({"README.md": "seed\n"})
        path = self.root / name
        cloned = run_git(
            "clone", "-q", *args, self.upstream, path, cwd=self.root, check=check, env=env
        )
        clone = Clone(path, cloned)
        if path.is_dir():
            # Each teammate commits under their own name, so history shows who did what.
            clone.git("config", "user.name", name)
            clone.git("config", "user.email", f"{name.lstrip('.')}@example.invalid")
        return clone
