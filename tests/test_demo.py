"""`cfd demo` end to end (small sizes): each step checks its own result."""

from __future__ import annotations

import subprocess
import sys


def test_demo_tells_the_whole_story_and_cleans_up(tmp_path, dialect):
    sandbox = tmp_path / "sandbox"
    result = subprocess.run(
        [sys.executable, "-m", "cfd.cli.main", "demo", "--scale", "0.05", "--dir", str(sandbox), "--dialect", dialect],
        capture_output=True, text=True, timeout=240,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for expectation in (
        "the required SDXL checkpoint arrived, verified, during git pull",
        "the pull left .cec clean",
        "status lists the LoRA, the shared VAE and the source-less upscaler",
        "the LoRA and the VAE are in place and verified",
        "only the source-less upscaler is missing",
        "each model was fetched exactly once",
        "the pulled 'landscape' workflow is where ComfyUI loads it",
    ):
        assert f"✓ {expectation}" in out
    assert "need downloading" in out  # the status language ComfyDock users know
    assert "Traceback" not in out + result.stderr
    assert not sandbox.exists(), "without --keep the sandbox is removed"


def test_demo_keep_leaves_the_sandbox(tmp_path):
    sandbox = tmp_path / "kept"
    result = subprocess.run(
        [sys.executable, "-m", "cfd.cli.main", "demo", "--scale", "0.02", "--dir", str(sandbox), "--keep"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bob = sandbox / "bob" / "comfygit"  # the current format by default
    assert (bob / "models" / "checkpoints" / "juggernaut-xl-v9.safetensors").is_file()
    assert (bob / "comfygit_cache" / "models.db").is_file()
    assert "[tool.comfygit]" in (bob / "environments" / "studio" / ".cec" / "pyproject.toml").read_text()
    assert (bob / "environments" / "studio" / ".cec" / ".git" / "hooks" / "post-merge").is_file()


def test_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "something").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "cfd.cli.main", "demo", "--dir", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "not empty" in result.stdout
    assert (tmp_path / "something").exists()
