"""Where git really runs hooks from, and whether another tool owns that place.

`git rev-parse --git-path hooks` answers for every layout: core.hooksPath
absolute or relative (resolved against the worktree), linked worktrees (the
common dir's hooks). pygit2 reads core.hooksPath raw, so ask git itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cfd.core.errors import CfdError
from cfd.core.git import GitError, one_value, run_git
from cfd.core.state import chain_hooks_dir

from .shim import LEGACY_SUFFIX, is_ours

# Every hook name git knows: a file with one of these names is a hook.
GIT_HOOKS = frozenset(
    """applypatch-msg pre-applypatch post-applypatch pre-commit pre-merge-commit prepare-commit-msg
    commit-msg post-commit pre-rebase post-checkout post-merge pre-push pre-receive update
    proc-receive post-receive post-update reference-transaction push-to-checkout pre-auto-gc
    post-rewrite sendemail-validate fsmonitor-watchman p4-changelist p4-prepare-changelist
    p4-post-changelist p4-pre-submit post-index-change""".split()
)


class HooksError(CfdError):
    """Hooks cannot be installed or inspected here."""


def git(repo: Path, *args: str) -> str:
    """Run git in `repo`; its stdout, or a HooksError carrying git's message."""
    try:
        result = run_git(*args, cwd=repo)
    except GitError as exc:
        raise HooksError(exc.message, exc.hint) from None
    if result.returncode != 0:
        message = (os.fsdecode(result.stderr).strip().splitlines() or [f"exit {result.returncode}"])[-1]
        if "not a git repository" in message:
            raise HooksError(f"{repo} is not inside a git repository",
                             "run this inside a clone of the environment (its .cec folder), or pass --env PATH")
        raise HooksError(f"`git {' '.join(args)}` failed in {repo}: {message}", "run it inside a git work tree")
    return os.fsdecode(result.stdout)


@dataclass(frozen=True)
class HooksLocation:
    worktree: Path
    hooks_dir: Path  # where git runs hooks from
    default_dir: Path  # <common git dir>/hooks, used when core.hooksPath is unset
    common_dir: Path
    exclude_file: Path  # info/exclude, to keep shims in a work-tree hooks dir out of `git status`
    hooks_path: str | None  # core.hooksPath as configured (raw)

    @property
    def chain_dir(self) -> Path:
        """Where shims go when another tool owns hooks_dir (their hooks call ours)."""
        return chain_hooks_dir(self.common_dir)

    @property
    def inside_worktree(self) -> str | None:
        """hooks_dir relative to the work tree (posix), when it lies inside it."""
        try:
            return self.hooks_dir.relative_to(self.worktree).as_posix()
        except ValueError:
            return None


def git_value(repo: Path, *args: str) -> str:
    """One value from git, exactly (git is asked for one value per call: see one_value)."""
    return one_value(os.fsencode(git(repo, *args)))


def locate(repo: Path) -> HooksLocation:
    repo = Path(repo)
    top = git_value(repo, "rev-parse", "--show-toplevel")
    hooks = git_value(repo, "rev-parse", "--git-path", "hooks")
    common = git_value(repo, "rev-parse", "--git-common-dir")
    exclude = git_value(repo, "rev-parse", "--git-path", "info/exclude")
    try:
        hooks_path: str | None = git_value(repo, "config", "--get", "core.hooksPath") or None
    except HooksError:
        hooks_path = None

    def absolute(value: str) -> Path:
        return (repo / value).resolve() if not os.path.isabs(value) else Path(value).resolve()

    common_dir = absolute(common)
    return HooksLocation(
        worktree=Path(top).resolve(),
        hooks_dir=absolute(hooks),
        default_dir=common_dir / "hooks",
        common_dir=common_dir,
        exclude_file=absolute(exclude),
        hooks_path=hooks_path,
    )


def foreign_hooks(directory: Path) -> list[str]:
    """Hook files in `directory` that are not cfd's (samples and .legacy files aside)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [n for n in names if n in GIT_HOOKS and not is_ours(directory / n)]


def owning_tool(directory: Path) -> str | None:
    """A name for the tool that manages `directory`, when we can tell."""
    if directory.name == "_" and directory.parent.name == ".husky" or (directory / "husky.sh").exists():
        return "husky"
    if (directory / "h").is_file() and directory.parent.name == ".husky":
        return "husky"
    return None


def user_hook_file(location: HooksLocation, hook: str) -> Path:
    """The file a user edits to chain our hook (husky: .husky/<hook>, not the generated _/)."""
    if owning_tool(location.hooks_dir) == "husky" and location.hooks_dir.name == "_":
        return location.hooks_dir.parent / hook
    return location.hooks_dir / hook


def chain_line(hook: str) -> str:
    """One sh line for another tool's hook; a no-op for a teammate without cfd."""
    return (
        f'cfd_hook="$(git rev-parse --git-common-dir)/cfd/hooks/{hook}"; '
        f'if [ -x "$cfd_hook" ]; then "$cfd_hook" "$@"; fi'
    )


def is_chained(path: Path, hook: str) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return f"cfd/hooks/{hook}" in text or f"hook-run {hook}" in text or "cfd.hooks.runtime" in text


def legacy_path(path: Path) -> Path:
    return path.with_name(path.name + LEGACY_SUFFIX)
