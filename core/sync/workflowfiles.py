"""Workflow files: `.cec/workflows/<name>.json` into ComfyUI, never over a user's edits.

ComfyUI loads workflows from `<env>/ComfyUI/user/default/workflows/`, while a pull brings
them into `.cec/workflows/`. A hook sync and `cfd repair` copy each one over when the
ComfyUI copy is absent, or is byte-identical to what cfd last placed there (a digest kept in
`<git_dir>/cfd/workflow-files.json`) or to the previous commit's version. A copy the user
edited is left alone and reported ("modified locally"). Writes are atomic (a temporary file
in the same folder, then a rename; a new file never replaces one that appeared meanwhile);
nothing is ever deleted. `workflow_states` only reads (for `cfd status`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from ..environment import Environment
from ..text import sanitize

STATE_FILE = "workflow-files.json"
MAX_FILES = 10_000  # a hostile repo with a million workflows: the rest are left for later
MAX_BYTES = 64 * 1024 * 1024  # a workflow JSON is kilobytes; bigger ones are not copied

IN_SYNC = "in sync"
MISSING = "missing"  # absent from ComfyUI: copied on the next sync
OUTDATED = "outdated"  # cfd's (or the previous commit's) copy of an older version: updated on the next sync
MODIFIED = "modified locally"  # edited in ComfyUI: never overwritten
COPIED = "copied"
UPDATED = "updated"
TOO_LARGE = "too large"
UNREADABLE = "unreadable"


class WorkflowFile(NamedTuple):
    name: str  # without .json
    state: str

    def to_json(self) -> dict[str, str]:
        return {"name": sanitize(self.name), "state": self.state}


def comfyui_workflows_dir(env: Environment) -> Path | None:
    """`<env>/ComfyUI/user/default/workflows` when the environment has a ComfyUI beside `.cec`."""
    if env.repo.name != ".cec" or not (env.repo.parent / "ComfyUI").is_dir():
        return None
    return env.repo.parent / "ComfyUI" / "user" / "default" / "workflows"


def _digest(data: bytes) -> str:
    import hashlib  # loads OpenSSL: only when a workflow file is compared

    return hashlib.sha256(data).hexdigest()


def _sources(env: Environment) -> list[Path]:
    folder = env.repo / "workflows"
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    found = [Path(e.path) for e in entries if e.name.endswith(".json") and e.is_file(follow_symlinks=False)]
    return found[:MAX_FILES]


def _read(path: Path) -> bytes | None:
    """The file's bytes; None when absent, unreadable, a symlink (never written through) or too big."""
    try:
        if path.is_symlink() or path.stat().st_size > MAX_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _load_state(env: Environment) -> dict[str, str]:
    try:
        state = json.loads((env.state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(state, dict) else {}


def _save_state(env: Environment, state: Mapping[str, str]) -> None:
    try:
        env.state_dir.mkdir(parents=True, exist_ok=True)
        temp = env.state_dir / f".{STATE_FILE}.{os.getpid()}"
        temp.write_text(json.dumps(dict(sorted(state.items())), indent=0), encoding="utf-8")
        os.replace(temp, env.state_dir / STATE_FILE)
    except OSError:
        pass  # without the record, an unchanged copy still matches by content or the previous commit


def _classify(
    name: str, source: bytes, target: Path, placed: Mapping[str, str], previous: Callable[[str], bytes | None]
) -> str:
    if not os.path.lexists(target):
        return MISSING
    current = _read(target)
    if current is None:
        return MODIFIED  # a symlink, a folder or a huge file the user put there: not ours to replace
    if current == source:
        return IN_SYNC
    digest = _digest(current)
    if placed.get(name) == digest:
        return OUTDATED
    before = previous(name)
    return OUTDATED if before is not None and _digest(before) == digest else MODIFIED


def workflow_states(env: Environment, previous: Callable[[str], bytes | None] | None = None) -> list[WorkflowFile]:
    """Each `.cec` workflow's state in ComfyUI, without writing anything ([] without ComfyUI)."""
    target_dir = comfyui_workflows_dir(env)
    if target_dir is None:
        return []
    placed, previous = _load_state(env), previous or (lambda name: None)
    states = []
    for source_path in _sources(env):
        name = source_path.name[: -len(".json")]
        source = _read(source_path)
        state = TOO_LARGE if source is None else _classify(name, source, target_dir / source_path.name, placed, previous)
        states.append(WorkflowFile(name, state))
    return states


def sync_workflow_files(env: Environment, previous: Callable[[str], bytes | None] | None = None) -> list[WorkflowFile]:
    """Copy what is missing or outdated; returns every workflow's state after the run."""
    target_dir = comfyui_workflows_dir(env)
    if target_dir is None:
        return []
    placed, previous = _load_state(env), previous or (lambda name: None)
    results, changed = [], False
    for source_path in _sources(env):
        name = source_path.name[: -len(".json")]
        source = _read(source_path)
        if source is None:
            results.append(WorkflowFile(name, TOO_LARGE))
            continue
        target = target_dir / source_path.name
        state = _classify(name, source, target, placed, previous)
        if state in (MISSING, OUTDATED):
            try:
                _write(target, source, replace=state == OUTDATED)
                state = COPIED if state == MISSING else UPDATED
            except FileExistsError:
                state = MODIFIED  # appeared while we wrote: the user's
            except OSError:
                state = UNREADABLE
        if state in (IN_SYNC, COPIED, UPDATED) and placed.get(name) != _digest(source):
            placed[name] = _digest(source)
            changed = True
        results.append(WorkflowFile(name, state))
    if changed:
        _save_state(env, placed)
    return results


def _write(target: Path, data: bytes, replace: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.cfd-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temp, target)
        else:
            os.link(temp, target)  # no-clobber: fails if a file appeared meanwhile
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


def previous_from_git(repo: object, commit: str | None) -> Callable[[str], bytes | None]:
    """`.cec/workflows/<name>.json` as the previous commit had it (None when it had none)."""

    def read(name: str) -> bytes | None:
        try:
            blob = repo.blob_id(commit, f"workflows/{name}.json")  # type: ignore[attr-defined]
            if blob is None or (repo.blob_size(blob) or 0) > MAX_BYTES:  # type: ignore[attr-defined]
                return None
            return repo.read_blob(blob)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a missing object only means "no previous version"
            return None

    return read


def summary_line(files: list[WorkflowFile]) -> str | None:
    """One line for the hook: what was copied, and which edited copies were kept."""
    copied = [f.name for f in files if f.state in (COPIED, UPDATED)]
    kept = [f.name for f in files if f.state == MODIFIED]
    parts = []
    if copied:
        parts.append(f"{len(copied)} workflow file(s) copied into ComfyUI")
    if kept:
        names = ", ".join(sanitize(n) for n in kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
        parts.append(f"{len(kept)} edited in ComfyUI kept, not overwritten ({names}; `cfd status` lists them)")
    return "cfd: " + "; ".join(parts) if parts else None
