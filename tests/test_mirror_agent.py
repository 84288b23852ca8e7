"""The agent and the team mirror: a background pull is served by the mirror alone.

Bob pulls with `cfd.onPull=background`: the hook hands the new models to the agent it
starts, and the agent (not the hook) fetches them from the mirror while the origin is
down, verified against the manifest, and empties the pending marker.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from helpers import Scenario
from helpers.chaos import MIB, agent_pid, pending_keys, run_cfd, serve, wait_until
from helpers.faults import ModelServer
from helpers.s3mirror import RcloneS3, alice_publishes, assert_placed, machine, models_of
from helpers.s3mirror import _no_aws_from_outside, mirror, origin  # noqa: F401 - fixtures


pytestmark = pytest.mark.timeout(240)


def test_the_agent_fetches_from_the_mirror_what_a_background_pull_hands_it(
        tmp_path: Path, scenario: Scenario, origin: ModelServer, mirror: RcloneS3) -> None:
    models = [serve(origin, "ckpt.safetensors", 61, 12 * MIB + 7), serve(origin, "lora.safetensors", 62, 2 * MIB + 1, "loras")]
    alice_publishes(tmp_path, scenario, origin, mirror, models)
    origin.stop()  # only the mirror can serve them now

    bob = scenario.clone("bob")
    bob_env = machine(tmp_path, "bob", mirror.env(), {"CFD_ON_PULL": "background", "CFD_MODELS": "all"})
    git_dir = bob.path / ".git"
    # Bob's clone already has Alice's manifest: go back one commit so that the pull brings it.
    bob.git("reset", "-q", "--hard", "HEAD~1")
    assert run_cfd("hooks", "install", cwd=bob.path, env=bob_env).returncode == 0
    try:
        pulled = bob.pull(env=bob_env)
        assert pulled.returncode == 0, pulled.stderr
        assert "downloading in the background" in pulled.stderr, pulled.stderr
        wait_until(lambda: all((models_of(bob_env) / m.relpath).is_file() for m in models) and pending_keys(git_dir) == {},
                   120, "the agent to fetch both models from the mirror", poll=0.2)
    finally:
        run_cfd("agent", "stop", cwd=bob.path, env=bob_env)
        pid = agent_pid(models_of(bob_env))
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert_placed(bob_env, models)  # byte-identical to what the manifest names
    status = json.loads(run_cfd("status", "--json", cwd=bob.path, env=bob_env).stdout)
    assert status["missing"] == []
    listed = json.loads(run_cfd("index", "list", "--json", cwd=bob.path, env=bob_env).stdout)
    sources = [s for entry in listed for s in entry.get("sources", [])]
    assert sources and all(s.startswith("s3://") for s in sources), sources  # recorded as fetched from the mirror
