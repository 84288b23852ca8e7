"""The agent keeps the index current from watchdog events on a real models directory."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from cfd.core.environment import open_environment
from cfd.core.sync.marker import Marker, PendingEntry
from cfd.core.sync.status import compute_status
from helpers import ManifestBuilder, make_model
from test_agent_support import agent_env, agents, locations, make_env_repo, wait_for  # noqa: F401

import pytest

MIB = 1024 * 1024
pytestmark = pytest.mark.usefixtures("both_dialects")  # the agent indexes with the environment's hash


def pending_keys(repo: Path) -> set[str]:
    return {entry.key for entry in Marker(repo / ".git").read()}


def test_copied_in_model_is_indexed_and_leaves_the_pending_list(scenario, models_dir, agent_env, agents, tmp_path):
    outside = tmp_path / "downloads"
    model_hash, source = make_model(outside, "big.safetensors", seed=1, size=3 * MIB)
    lora_hash, lora = make_model(outside, "lora.safetensors", seed=2, size=MIB)
    repo = make_env_repo(scenario)
    Marker(repo / ".git").write(
        [
            PendingEntry(model_hash, "big.safetensors", "checkpoints/big.safetensors", 3 * MIB, (), "required", ("wf1",), "deferred"),
            PendingEntry("intent:wf1/7/0", "lora.safetensors", "loras/lora.safetensors", None, (), "optional", ("wf1",), "no-source"),
            PendingEntry("0123456789abcdef", "other.safetensors", "checkpoints/other.safetensors", 10, (), "required", ("wf1",), "deferred"),
        ]
    )
    agent = agents(repo, models_dir)

    (models_dir / "checkpoints").mkdir()
    shutil.copyfile(source, models_dir / "checkpoints" / "copied.safetensors")  # any name: found by hash
    (models_dir / "loras").mkdir()
    shutil.copyfile(lora, models_dir / "loras" / "lora.safetensors")  # an intent: found by its target path

    wait_for(lambda: locations(models_dir).get("checkpoints/copied.safetensors") == model_hash, what="indexed")
    wait_for(lambda: pending_keys(repo) == {"0123456789abcdef"}, what="pending entries dropped")
    assert locations(models_dir)["loras/lora.safetensors"] == lora_hash
    wait_for(lambda: agent.stats().get("hashed") == 2, what="two files hashed")


def test_partially_written_file_is_not_indexed_until_complete(scenario, models_dir, agent_env, agents):
    data = os.urandom(4 * MIB)
    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    target = models_dir / "slow.safetensors"
    with open(target, "wb") as handle:
        handle.write(data[: MIB])
        handle.flush()
        # A file written after the partial one, and closed, is the positive signal: once it is
        # indexed, the agent has been through the partial file's events and settle period too.
        sentinel_hash, _ = make_model(models_dir, "sentinel.safetensors", seed=9, size=MIB)
        wait_for(lambda: locations(models_dir).get("sentinel.safetensors") == sentinel_hash, what="a later file indexed")
        assert "slow.safetensors" not in locations(models_dir)
        handle.write(data[MIB:])
    wait_for(lambda: "slow.safetensors" in locations(models_dir), what="indexed after close")
    with open(models_dir / "check.bin", "wb") as handle:
        handle.write(data)
    from helpers.manifest import short_hash_for  # the environment's dialect

    assert locations(models_dir)["slow.safetensors"] == short_hash_for(data)
    wait_for(lambda: "check.bin" in locations(models_dir), what="check.bin indexed")
    wait_for(lambda: agent.stats().get("hashed", 0) >= 3, what="the status file to count check.bin")
    assert agent.stats()["hashed"] == 3  # sentinel, slow.safetensors once, check.bin once: never the partial state


def test_partial_download_names_and_hidden_dirs_are_skipped_until_renamed(scenario, models_dir, agent_env, agents):
    repo = make_env_repo(scenario)
    agents(repo, models_dir)
    model_hash, part = make_model(models_dir, "x.safetensors.part", seed=3, size=MIB)
    make_model(models_dir, ".cfd/staging/y.part", seed=4, size=MIB)
    make_model(models_dir, ".hidden/z.safetensors", seed=5, size=MIB)
    sentinel_hash, _ = make_model(models_dir, "sentinel.safetensors", seed=9, size=MIB)  # written last
    wait_for(lambda: locations(models_dir).get("sentinel.safetensors") == sentinel_hash, what="a later file indexed")
    assert locations(models_dir) == {"sentinel.safetensors": sentinel_hash}
    os.replace(part, models_dir / "x.safetensors")
    wait_for(lambda: locations(models_dir) == {"x.safetensors": model_hash, "sentinel.safetensors": sentinel_hash},
             what="renamed file indexed")


def test_moved_file_keeps_its_hash_and_gets_its_new_location(scenario, models_dir, agent_env, agents):
    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    one, _ = make_model(models_dir, "inbox/one.safetensors", seed=6, size=2 * MIB)
    two, _ = make_model(models_dir, "inbox/sub/two.safetensors", seed=7, size=2 * MIB)
    wait_for(lambda: len(locations(models_dir)) == 2, what="both indexed")
    wait_for(lambda: agent.stats().get("hashed") == 2, what="status updated")

    (models_dir / "checkpoints").mkdir()
    os.rename(models_dir / "inbox/one.safetensors", models_dir / "checkpoints/one.safetensors")
    os.rename(models_dir / "inbox/sub", models_dir / "loras")  # a whole folder
    expected = {"checkpoints/one.safetensors": one, "loras/two.safetensors": two}
    wait_for(lambda: locations(models_dir) == expected, what="new locations")
    wait_for(lambda: agent.stats().get("moved") == 2, what="moves counted")
    assert agent.stats()["hashed"] == 2, "a move must not re-hash"


def test_deleted_file_is_missing_again(scenario, models_dir, agent_env, agents):
    model_hash, path = make_model(models_dir, "checkpoints/a.safetensors", seed=8, size=MIB)
    manifest = (
        ManifestBuilder()
        .model(model_hash, "a.safetensors", MIB, "checkpoints/a.safetensors", "checkpoints", ["https://example.invalid/a"])
        .ref("wf1", "a.safetensors", "checkpoints", hash=model_hash, criticality="required", status="resolved")
        .render()
    )
    repo = make_env_repo(scenario, manifest)
    agents(repo, models_dir)  # the initial scan indexes what is already there
    env = open_environment(repo)
    wait_for(lambda: compute_status(env).in_sync, what="in sync")

    path.unlink()
    wait_for(lambda: locations(models_dir) == {}, what="location removed")
    status = compute_status(env)
    assert [m.hash for m in status.report.missing] == [model_hash]

    make_model(models_dir, "deeper/dir/b.safetensors", seed=9, size=MIB)
    wait_for(lambda: "deeper/dir/b.safetensors" in locations(models_dir), what="indexed")
    shutil.rmtree(models_dir / "deeper")
    wait_for(lambda: locations(models_dir) == {}, what="folder removal seen")


def test_files_changed_while_no_agent_ran_are_caught_up_at_start(scenario, models_dir, agent_env, agents):
    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    make_model(models_dir, "gone.safetensors", seed=10, size=MIB)
    wait_for(lambda: "gone.safetensors" in locations(models_dir), what="indexed")
    assert agent.stop() == 0
    (models_dir / "gone.safetensors").unlink()
    new_hash, _ = make_model(models_dir, "new.safetensors", seed=11, size=MIB)
    os.utime(models_dir / "new.safetensors", (time.time() - 60, time.time() - 60))
    agents(repo, models_dir)
    assert locations(models_dir) == {"new.safetensors": new_hash}


def test_file_moved_while_no_agent_ran_keeps_its_hash(scenario, models_dir, agent_env, agents):
    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    model_hash, path = make_model(models_dir, "a/one.safetensors", seed=12, size=MIB)
    wait_for(lambda: "a/one.safetensors" in locations(models_dir), what="indexed")
    assert agent.stop() == 0
    (models_dir / "b").mkdir()
    os.rename(path, models_dir / "b" / "renamed.safetensors")
    os.utime(models_dir / "b", (time.time() - 60, time.time() - 60))
    agent = agents(repo, models_dir)
    assert locations(models_dir) == {"b/renamed.safetensors": model_hash}
    wait_for(lambda: agent.stats().get("moved") == 1, what="adopted as a move")
    assert "hashed" not in agent.stats()


def test_a_burst_of_files_is_indexed(scenario, models_dir, agent_env, agents, tmp_path):
    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    source = tmp_path / "pack"
    hashes = {f"loras/pack/l{i:03d}.safetensors": make_model(source, f"l{i:03d}.safetensors", seed=100 + i, size=64 * 1024)[0] for i in range(200)}
    shutil.copytree(source, models_dir / "loras" / "pack")
    wait_for(lambda: locations(models_dir) == hashes, timeout=20, what="200 files indexed")
    wait_for(lambda: agent.stats().get("hashed") == 200, what="status updated")


def test_first_scan_of_an_empty_mount_point_keeps_the_index(scenario, models_dir, agent_env, agents, tmp_path):
    """Issue 10: an agent starting while the models drive is not mounted saw an empty folder
    and removed every location from the shared index. It refuses, and says so."""
    from cfd.core.store.scan import scan_models
    from test_agent_support import index_of

    for n in range(5):
        make_model(models_dir, f"checkpoints/m{n}.safetensors", seed=n, size=4096)
    with index_of(models_dir) as index:
        scan_models(index)
    before = locations(models_dir)
    assert len(before) == 5
    models_dir.rename(tmp_path / "unmounted")
    models_dir.mkdir()  # the bare mount point
    repo = make_env_repo(scenario)
    agent = agents(repo, models_dir)
    errors = [e["message"] for e in agent.status().get("errors", [])]
    assert any("5 of the 5 indexed files" in e and "kept the index" in e for e in errors), errors
    assert locations(models_dir) == before
    assert agent.stats().get("removed", 0) == 0


def test_the_marker_is_read_once_not_per_indexed_file(scenario, models_dir, agent_env, monkeypatch):
    """Issue 10: the agent re-read (and parsed) every environment's marker for each file it
    indexed: 0.4 s a file with a 20,000-entry marker. Counted, not timed: reads happen once,
    and again only after the marker changed."""
    from cfd.agent.daemon import Agent, AgentConfig
    from test_agent_support import index_of

    repos = [make_env_repo(scenario, name=name) for name in ("alice", "bob")]
    envs = tuple(open_environment(repo) for repo in repos)
    waiting = [make_model(models_dir, f"checkpoints/w{n}.safetensors", seed=n, size=256) for n in range(2)]
    filler = [
        PendingEntry(f"{n:016x}", f"f{n}.safetensors", f"checkpoints/f{n}.safetensors", 10, (), "required", ("wf1",), "deferred")
        for n in range(2000)
    ]
    wanted = [
        PendingEntry(h, path.name, f"checkpoints/{path.name}", 256, (), "required", ("wf1",), "deferred") for h, path in waiting[:2]
    ]
    for repo in repos:
        Marker(repo / ".git").write(filler + wanted)
    reads = {"n": 0}
    original = Marker.read

    def counting(self):  # type: ignore[no-untyped-def]
        reads["n"] += 1
        return original(self)

    monkeypatch.setattr(Marker, "read", counting)
    agent = Agent(AgentConfig(envs=envs, models_dir=models_dir, index_path=Path(os.environ["CFD_INDEX"])))
    others = [make_model(models_dir, f"loras/o{n}.safetensors", seed=100 + n, size=256) for n in range(200)]
    with index_of(models_dir) as index:
        for h, path in others:
            agent._on_indexed(index, h, f"loras/{path.name}")
        assert reads["n"] == 2  # once per environment, not 200 times each
        h, path = waiting[0]
        agent._on_indexed(index, h, f"checkpoints/{path.name}")
        agent._on_indexed(index, h, f"checkpoints/{path.name}")  # a second event for it: still one write
        agent._flush(index)  # what the models worker does after each pass
        assert reads["n"] == 2 + 2  # the merge's own read-modify-write, once per environment
        for h, path in others:
            agent._on_indexed(index, h, f"loras/{path.name}")
        assert reads["n"] == 4 + 2  # each changed marker read once more
        h, path = waiting[1]
        index.record_file(h, f"checkpoints/{path.name}", size=256, mtime=path.stat().st_mtime)
        before = reads["n"]
        agent._on_scan_done(index)
        assert reads["n"] - before == 2  # per environment one merge (the view is current)
    for repo in repos:
        assert pending_keys(repo) == {e.key for e in filler}
