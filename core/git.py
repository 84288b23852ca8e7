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
import time
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
    return start_git(*args, cwd=cwd, timeout=timeout).result()


class StartedGit:
    """A `git args` run started now and collected later: it works on another core meanwhile.

    `result()` is run_git's answer (the timeout counts from the start); `stop()` ends a run
    nobody collects: killed if still going, and always reaped."""

    __slots__ = ("_process", "_shown", "_cwd", "_timeout", "_deadline")

    def __init__(self, process: subprocess.Popen[bytes], shown: str, cwd: Path | None, timeout: float) -> None:
        self._process = process
        self._shown = shown
        self._cwd = cwd
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    def result(self) -> subprocess.CompletedProcess[bytes]:
        try:
            stdout, stderr = self._process.communicate(timeout=max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise GitError(f"`{self._shown}` timed out after {self._timeout:.0f} s in {self._cwd or Path.cwd()}") from None
        except BaseException:
            self.stop()  # Ctrl-C while waiting: no git left behind
            raise
        return subprocess.CompletedProcess(self._process.args, self._process.returncode, stdout, stderr)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()  # reaps it and closes the pipes


def start_git(*args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT) -> StartedGit:
    """Start `git args` in `cwd` with no_git_env(); raises GitError when git cannot run at all."""
    shown = " ".join(("git", *args))
    try:
        process = subprocess.Popen(["git", *args], cwd=cwd, env=no_git_env(), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        if cwd is not None and not os.path.isdir(cwd):
            raise GitError(f"{cwd} does not exist", "check the environment path") from None
        raise GitError("git is not installed (or not on PATH)", "install git") from None
    except OSError as exc:
        raise GitError(f"cannot run `{shown}`: {exc.strerror or exc}") from None
    return StartedGit(process, shown, cwd, timeout)


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
