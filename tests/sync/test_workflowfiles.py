"""Workflow files: `.cec/workflows/*.json` into ComfyUI, never over a user's edits (both dialects)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cfd.core.environment import open_environment
from cfd.core.sync.workflowfiles import (
    COPIED, IN_SYNC, MAX_BYTES, MISSING, MODIFIED, OUTDATED, UPDATED, TOO_LARGE, summary_line, sync_workflow_files,
    workflow_states,
)

from helpers.manifest import ManifestBuilder


@pytest.fixture
def env_dir(tmp_path: Path, dialect: str, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CFD_MODELS_DIR", str(models_dir))
    root = tmp_path / "environments" / "studio"
    cec = root / ".cec"
    (cec / "workflows").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(cec)], check=True)
    (cec / "pyproject.toml").write_text(ManifestBuilder(dialect).render())
    (root / "ComfyUI").mkdir()
    return root


def states(env_dir: Path, sync: bool = True, previous=None) -> dict[str, str]:
    env = open_environment(env_dir / ".cec")
    found = sync_workflow_files(env, previous) if sync else workflow_states(env, previous)
    return {f.name: f.state for f in found}


def comfyui(env_dir: Path, name: str) -> Path:
    return env_dir / "ComfyUI" / "user" / "default" / "workflows" / f"{name}.json"


def test_copied_when_absent_then_in_sync_then_updated(env_dir: Path) -> None:
    (env_dir / ".cec" / "workflows" / "portrait.json").write_bytes(b"v1")
    assert states(env_dir, sync=False) == {"portrait": MISSING}  # status only reads
    assert not comfyui(env_dir, "portrait").exists()
    assert states(env_dir) == {"portrait": COPIED}
    assert comfyui(env_dir, "portrait").read_bytes() == b"v1"
    assert states(env_dir) == {"portrait": IN_SYNC}
    (env_dir / ".cec" / "workflows" / "portrait.json").write_bytes(b"v2")  # a pull brought a new version
    assert states(env_dir, sync=False) == {"portrait": OUTDATED}
    assert states(env_dir) == {"portrait": UPDATED}
    assert comfyui(env_dir, "portrait").read_bytes() == b"v2"


def test_a_user_edit_is_never_overwritten_and_is_reported(env_dir: Path) -> None:
    (env_dir / ".cec" / "workflows" / "portrait.json").write_bytes(b"v1")
    states(env_dir)
    comfyui(env_dir, "portrait").write_bytes(b"v1 + my edit")
    (env_dir / ".cec" / "workflows" / "portrait.json").write_bytes(b"v2")
    assert states(env_dir) == {"portrait": MODIFIED}
    assert comfyui(env_dir, "portrait").read_bytes() == b"v1 + my edit"
    line = summary_line(sync_workflow_files(open_environment(env_dir / ".cec")))
    assert line is not None and "portrait" in line and "kept, not overwritten" in line


def test_a_copy_equal_to_the_previous_commit_is_updated(env_dir: Path) -> None:
    """Placed by the environment manager (not cfd): it matches the previous commit's version."""
    comfyui(env_dir, "portrait").parent.mkdir(parents=True)
    comfyui(env_dir, "portrait").write_bytes(b"v1")
    (env_dir / ".cec" / "workflows" / "portrait.json").write_bytes(b"v2")
    assert states(env_dir, previous=lambda name: None) == {"portrait": MODIFIED}
    assert states(env_dir, previous=lambda name: b"v1" if name == "portrait" else None) == {"portrait": UPDATED}
    assert comfyui(env_dir, "portrait").read_bytes() == b"v2"


def test_nothing_is_deleted(env_dir: Path) -> None:
    (env_dir / ".cec" / "workflows" / "gone.json").write_bytes(b"x")
    states(env_dir)
    (env_dir / ".cec" / "workflows" / "gone.json").unlink()
    assert states(env_dir) == {}
    assert comfyui(env_dir, "gone").read_bytes() == b"x"


def test_without_comfyui_nothing_happens(env_dir: Path) -> None:
    (env_dir / ".cec" / "workflows" / "portrait.json").write_bytes(b"v1")
    (env_dir / "ComfyUI").rmdir()
    assert states(env_dir) == {}
    assert not (env_dir / "ComfyUI").exists()


# --- hostile ---------------------------------------------------------------------------------


def test_a_symlink_in_comfyui_is_never_written_through(env_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    comfyui(env_dir, "portrait").parent.mkdir(parents=True)
    os.symlink(outside, comfyui(env_dir, "portrait"))
    (env_dir / ".cec" / "workflows" / "portrait.json").write_bytes(b"v1")
    assert states(env_dir) == {"portrait": MODIFIED}
    assert outside.read_bytes() == b"precious"


def test_a_symlinked_or_huge_source_is_not_copied(env_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_bytes(b"{}")
    os.symlink(secret, env_dir / ".cec" / "workflows" / "linked.json")  # a pulled symlink to a local file
    with open(env_dir / ".cec" / "workflows" / "huge.json", "wb") as handle:
        handle.truncate(MAX_BYTES + 1)
    assert states(env_dir) == {"huge": TOO_LARGE}
    assert not comfyui(env_dir, "linked").exists() and not comfyui(env_dir, "huge").exists()


def test_a_name_with_control_characters_is_printed_sanitised(env_dir: Path) -> None:
    name = "evil\x1b[2Jname"
    (env_dir / ".cec" / "workflows" / f"{name}.json").write_bytes(b"v1")
    states(env_dir)
    comfyui(env_dir, name).write_bytes(b"edited")
    (env_dir / ".cec" / "workflows" / f"{name}.json").write_bytes(b"v2")
    found = sync_workflow_files(open_environment(env_dir / ".cec"))
    line = summary_line(found) or ""
    assert "\x1b" not in line and "evil" in line
    assert "\x1b" not in found[0].to_json()["name"]
