"""`cfd hooks install | uninstall | status`, as library functions returning reports.

A foreign hook found where ours goes is kept as `<hook>.legacy` and run first
by our shim (same argv and stdin); uninstall puts it back. When core.hooksPath
points at a directory holding another tool's hooks (husky's `.husky/_`, a
team's hooks dir), nothing is written there: the shims go to
`<git-common-dir>/cfd/hooks/` and the report says which line to add to the
other tool's hooks to chain them.

`install_global` covers new clones: git copies `init.templateDir/hooks` into
every repository it creates or clones, so the shims land in the template (an
existing init.templateDir is reused, else one is made under the XDG config dir
and configured globally). Clones made before need `cfd hooks install`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cfd.core.files import move_no_clobber, write_atomic

from .location import (
    HooksError,
    HooksLocation,
    chain_line,
    foreign_hooks,
    git,
    is_chained,
    legacy_path,
    locate,
    owning_tool,
    user_hook_file,
)
from .runtime import HOOK_NAMES
from .shim import read_shim, render_shim

if TYPE_CHECKING:
    from cfd.core.environment import Environment
    from cfd.core.sync.status import StatusReport

EXCLUDE_BEGIN = "# >>> cfd hooks (removed by `cfd hooks uninstall`)"
EXCLUDE_END = "# <<< cfd hooks"


@dataclass
class HookChange:
    hook: str
    path: Path
    action: str  # installed | upgraded | unchanged | kept-legacy | conflict | removed | restored | left-foreign | absent
    detail: str = ""


@dataclass
class InstallReport:
    location: HooksLocation | None
    directory: Path  # where the shims were written
    changes: list[HookChange] = field(default_factory=list)
    chain: list[tuple[Path, str]] = field(default_factory=list)  # (file to edit, line to add)
    tool: str | None = None  # who owns hooks_dir, when chaining

    @property
    def ok(self) -> bool:
        return not self.chain and not any(c.action == "conflict" for c in self.changes)


def default_python() -> str:
    # Git for Windows' sh wants forward slashes (C:/Python/python.exe).
    python = sys.executable or "python3"
    return python.replace("\\", "/") if os.name == "nt" else python


def _write_shim(path: Path, hook: str, python: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_shim(hook, python), mode=0o755)


def install_into(directory: Path, python: str) -> list[HookChange]:
    """Write our shims into `directory`, moving a foreign hook aside as .legacy."""
    changes = []
    for hook in HOOK_NAMES:
        path = directory / hook
        legacy = legacy_path(path)
        info = read_shim(path)
        action = "installed"
        if info is not None:
            action = "unchanged" if info.current and info.python == python else "upgraded"
        elif os.path.lexists(path):
            if os.path.lexists(legacy):
                changes.append(
                    HookChange(hook, path, "conflict", f"both {path.name} and {legacy.name} exist and neither is cfd's; merge them by hand")
                )
                continue
            move_no_clobber(path, legacy)  # a symlink moves as a symlink; relative targets still resolve
            action = "kept-legacy"
        if action != "unchanged":
            _write_shim(path, hook, python)
        detail = f"previous hook kept as {legacy.name} and run first" if action == "kept-legacy" else ""
        changes.append(HookChange(hook, path, action, detail))
    return changes


def uninstall_from(directory: Path) -> list[HookChange]:
    changes = []
    for hook in HOOK_NAMES:
        path = directory / hook
        legacy = legacy_path(path)
        if read_shim(path) is not None:
            path.unlink()
            if os.path.lexists(legacy):
                move_no_clobber(legacy, path)
                changes.append(HookChange(hook, path, "restored", f"{legacy.name} is back as {path.name}"))
            else:
                changes.append(HookChange(hook, path, "removed"))
        elif os.path.lexists(path):
            changes.append(HookChange(hook, path, "left-foreign", "not cfd's; left alone"))
    return changes


def _update_exclude(location: HooksLocation, add: bool) -> None:
    """Shims in a work-tree hooks dir (relative core.hooksPath) must not dirty `git status`."""
    try:
        text = location.exclude_file.read_text(encoding="utf-8")
    except OSError:
        text = ""
    if EXCLUDE_BEGIN in text:
        head, _, rest = text.partition(EXCLUDE_BEGIN)
        text = head + rest.partition(EXCLUDE_END + "\n")[2]
    relative = location.inside_worktree
    if add and relative is not None and "\n" not in relative and "\r" not in relative:  # one pattern per line
        lines = [f"/{relative}/{hook}{suffix}" for hook in HOOK_NAMES for suffix in ("", ".legacy")]
        text = text + ("" if not text or text.endswith("\n") else "\n") + "\n".join([EXCLUDE_BEGIN, *lines, EXCLUDE_END]) + "\n"
    location.exclude_file.parent.mkdir(parents=True, exist_ok=True)
    location.exclude_file.write_text(text, encoding="utf-8")


def install_hooks(repo: Path, python: str | None = None, force: bool = False) -> InstallReport:
    location = locate(repo)
    python = python or default_python()
    others = foreign_hooks(location.hooks_dir) if location.hooks_path else []
    if others and not force:
        # Another tool's directory: git never runs .legacy files there, and the tool may regenerate it.
        report = InstallReport(location, location.chain_dir, tool=owning_tool(location.hooks_dir) or "another tool")
        report.changes = install_into(location.chain_dir, python)
        report.chain = [
            (user_hook_file(location, hook), chain_line(hook))
            for hook in HOOK_NAMES
            if not is_chained(user_hook_file(location, hook), hook)
        ]
        return report
    report = InstallReport(location, location.hooks_dir, install_into(location.hooks_dir, python))
    if location.inside_worktree is not None:
        _update_exclude(location, add=True)
    return report


def uninstall_hooks(repo: Path) -> InstallReport:
    location = locate(repo)
    changes: list[HookChange] = []
    for directory in dict.fromkeys([location.hooks_dir, location.default_dir, location.chain_dir]):
        found = uninstall_from(directory)
        changes += found if directory == location.hooks_dir else [c for c in found if c.action != "left-foreign"]
    if location.inside_worktree is not None:
        _update_exclude(location, add=False)
    return InstallReport(location, location.hooks_dir, changes)


# -- global (new clones) ----------------------------------------------------------


def _global_git(*args: str) -> str:
    return git(Path.home() if Path.home().is_dir() else Path("/"), "config", "--global", *args)


def template_dir() -> tuple[Path, bool]:
    """(init.templateDir, whether cfd chose it) — the configured one, else cfd's own."""
    try:
        configured = _global_git("--get", "init.templateDir").strip()
    except HooksError:
        configured = ""
    if configured:
        return Path(os.path.expanduser(configured)), False
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "cfd" / "git-template", True


def install_global(python: str | None = None) -> InstallReport:
    directory, ours = template_dir()
    changes = install_into(directory / "hooks", python or default_python())
    if ours:
        _global_git("init.templateDir", str(directory))
    return InstallReport(None, directory / "hooks", changes)


def uninstall_global() -> InstallReport:
    directory, _ = template_dir()
    changes = uninstall_from(directory / "hooks")
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    if directory == base / "cfd" / "git-template":
        try:
            _global_git("--unset", "init.templateDir")
        except HooksError:
            pass
    return InstallReport(None, directory / "hooks", changes)


# -- status -----------------------------------------------------------------------


@dataclass(frozen=True)
class HookState:
    hook: str
    state: str  # installed | outdated | missing | foreign | bypassed | chained
    path: Path
    detail: str = ""


@dataclass(frozen=True)
class HooksStatus:
    location: HooksLocation
    hooks: tuple[HookState, ...]
    global_template: Path | None  # template dir holding our hooks, if any

    @property
    def all_installed(self) -> bool:
        return all(h.state in ("installed", "chained") for h in self.hooks)

    def to_json(self) -> dict[str, object]:
        return {
            "hooks_dir": str(self.location.hooks_dir),
            "core_hooks_path": self.location.hooks_path,
            "hooks": [{"hook": h.hook, "state": h.state, "path": str(h.path), "detail": h.detail} for h in self.hooks],
            "global_template": str(self.global_template) if self.global_template else None,
            "all_installed": self.all_installed,
        }


def _state(location: HooksLocation, hook: str) -> HookState:
    path = location.hooks_dir / hook
    info = read_shim(path)
    legacy = " (runs the previous hook, kept as .legacy, first)" if os.path.lexists(legacy_path(path)) else ""
    if info is not None:
        if not info.current:
            return HookState(hook, "outdated", path, f"an older cfd hook (version {info.version}): run `cfd hooks install`")
        if info.python and not os.access(info.python, os.X_OK):
            return HookState(hook, "outdated", path, f"its interpreter {info.python} is gone: run `cfd hooks install`")
        return HookState(hook, "installed", path, legacy.strip())
    if os.path.lexists(path):
        if is_chained(path, hook) or is_chained(user_hook_file(location, hook), hook):
            return HookState(hook, "chained", path, "another tool's hook calls cfd's")
        if location.hooks_path and foreign_hooks(location.hooks_dir):
            tool = owning_tool(location.hooks_dir) or "another tool"
            return HookState(hook, "foreign", path, f"core.hooksPath is {tool}'s: `cfd hooks install` shows how to chain cfd")
        return HookState(hook, "foreign", path, "not cfd's: `cfd hooks install` keeps it as .legacy and runs it first")
    if location.hooks_dir != location.default_dir and read_shim(location.default_dir / hook) is not None:
        return HookState(
            hook, "bypassed", path, f"cfd's hook is in {location.default_dir}, but core.hooksPath makes git look in {location.hooks_dir}"
        )
    return HookState(hook, "missing", path)


def hooks_status(repo: Path) -> HooksStatus:
    location = locate(repo)
    directory, _ = template_dir()
    has_global = any(read_shim(directory / "hooks" / hook) is not None for hook in HOOK_NAMES)
    return HooksStatus(
        location, tuple(_state(location, hook) for hook in HOOK_NAMES), directory if has_global else None
    )


# -- what install finds already missing ------------------------------------------


def record_baseline(env: Environment) -> StatusReport:
    """What is missing right now; and, on a first install, HEAD's manifest as last synced.

    Later hooks then act only on what changes from here; `cfd repair` fetches
    what this report lists.
    """
    from cfd.core.gitobjects import open_repo
    from cfd.core.sync.pullsync import read_last_synced, write_last_synced
    from cfd.core.sync.status import compute_status

    report = compute_status(env)
    blob = open_repo(env.repo).blob_id("HEAD")
    if blob and read_last_synced(env.git_dir) is None:
        write_last_synced(env.git_dir, blob)
    return report
