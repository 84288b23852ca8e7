"""Running git as a subprocess: the one wrapper and the one clean environment for it.

Inside a hook git exports variables that tie a git process to one repository (GIT_DIR,
GIT_INDEX_FILE, GIT_PREFIX, `git -c` settings ...). Passed on, they would point a git
run for another repository at the wrong one, or stick to a long-lived child (the agent).
`no_git_env()` drops exactly the variables git itself drops before it works in another
repository (`git rev-parse --local-env-vars`); the user's own settings (GIT_CONFIG_GLOBAL,
GIT_SSH_COMMAND, ...) pass. Every git subprocess and every detached cfd process gets it.

Output is bytes decoded the way the OS decodes paths, so any file name survives. No heavy
import here: objects are read through `core/gitobjects.py` (pygit2).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .errors import CfdError

# `git rev-parse --local-env-vars` (git 2.39; tests/test_git.py compares with the installed git).
LOCAL_ENV_VARS = frozenset({
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
})
GIT_TIMEOUT = 30.0  # seconds: a git that hangs (a lock, a network mount) must not hold a hook


class GitError(CfdError):
    """A git repository or object cannot be read, or git cannot run."""


def no_git_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (default os.environ) without the variables that bind git to one repository."""
    environ = os.environ if environ is None else environ
    return {key: value for key, value in environ.items() if key not in LOCAL_ENV_VARS}


def run_git(*args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run `git args` in `cwd` with no_git_env(); stdout/stderr as bytes, whatever the exit code.

    Raises GitError when git cannot run at all (not installed, `cwd` gone, timed out)."""
    shown = " ".join(("git", *args))
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=no_git_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise GitError(f"`{shown}` timed out after {timeout:.0f} s in {cwd or Path.cwd()}") from None
    except FileNotFoundError:
        if cwd is not None and not os.path.isdir(cwd):
            raise GitError(f"{cwd} does not exist", "check the environment path") from None
        raise GitError("git is not installed (or not on PATH)", "install git") from None
    except OSError as exc:
        raise GitError(f"cannot run `{shown}`: {exc.strerror or exc}") from None


def one_value(stdout: bytes) -> str:
    """One value as git printed it: a path may hold a newline or end in a space, so only the
    newline git adds is removed (splitting several values on newlines once put the hooks into
    a folder of the work tree, issue 10)."""
    text = os.fsdecode(stdout)
    return text[:-1] if text.endswith("\n") else text


def git_value(*args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT) -> str | None:
    """The one value `git args` prints; None when git fails or cannot run."""
    try:
        result = run_git(*args, cwd=cwd, timeout=timeout)
    except GitError:
        return None
    return one_value(result.stdout) if result.returncode == 0 else None
