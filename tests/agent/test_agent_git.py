"""HEAD moves that fire no hook (reset --hard, empty commits) reach the pull sync once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfd.core.sync.marker import Marker
from helpers import ManifestBuilder
from test_agent_support import agent_env, agents, cfd, locations, wait_for  # noqa: F401

NEW = "abcdef0123456789"


def manifest_with(url: str, size: int = 1000, model_hash: str = NEW) -> str:
    return (
        ManifestBuilder()
        .model(model_hash, "new.safetensors", size, "checkpoints/new.safetensors", "checkpoints", [url])
        .ref("wf1", "new.safetensors", "checkpoints", hash=model_hash, criticality="required", status="resolved")
        .render()
    )


def pending(repo: Path) -> dict[str, str]:
    return {e.key: e.reason for e in Marker(repo / ".git").read()}


def back_before_a_new_model(scenario, models_dir, agents):  # type: ignore[no-untyped-def]
    """A clone at commit A with an agent watching it; commit B (a new model) waits in its history."""
    clone = scenario.clone("alice")
    a = clone.commit("A", {"pyproject.toml": ManifestBuilder().render()})
    b = clone.commit("B", {"pyproject.toml": manifest_with("https://example.invalid/new.safetensors")})
    clone.git("reset", "-q", "--hard", a)
    return clone, b, agents(clone.path, models_dir)


def test_reset_hard_to_a_commit_with_a_new_model_syncs_once(scenario, models_dir, agent_env, agents, monkeypatch):
    monkeypatch.setenv("CFD_ON_PULL", "defer")
    clone, b, agent = back_before_a_new_model(scenario, models_dir, agents)
    assert pending(clone.path) == {}

    clone.git("reset", "-q", "--hard", b)  # no hook fires for this
    wait_for(lambda: pending(clone.path) == {NEW: "deferred"}, what="the sync to record the new model")
    blob = clone.rev_parse(f"{b}:pyproject.toml")
    assert (clone.path / ".git" / "cfd" / "last-synced").read_text().strip() == blob
    wait_for(lambda: agent.stats().get("git_syncs") == 1, what="one sync counted")

    checks = agent.stats().get("git_checks", 0)
    clone.git("commit", "-q", "--allow-empty", "-m", "same manifest")  # HEAD moves, manifest does not
    wait_for(lambda: agent.stats().get("git_checks", 0) > checks, what="the agent to look at the new HEAD")
    assert agent.stats().get("git_syncs") == 1
    log = agent.paths.log.read_text()
    assert log.count("with a new pyproject.toml: syncing") == 1


def test_git_stash_and_pop_of_a_manifest_change(scenario, models_dir, agent_env, agents, monkeypatch):
    """A real `git stash` / `git stash pop` of an uncommitted pyproject.toml change moves no
    HEAD: the agent looks (positive signal: a HEAD check) and acts on committed manifests only.
    `cfd status` reads the working tree, so it shows the popped model at once; committing it
    is what syncs it (the post-commit hook)."""
    monkeypatch.setenv("CFD_ON_PULL", "defer")
    clone = scenario.clone("alice")
    clone.commit("A", {"pyproject.toml": ManifestBuilder().render()})
    agent = agents(clone.path, models_dir)
    (clone.path / "pyproject.toml").write_text(manifest_with("https://example.invalid/new.safetensors"))
    checks = agent.stats().get("git_checks", 0)
    clone.git("stash", "-q")
    assert "abcdef0123456789" not in (clone.path / "pyproject.toml").read_text()  # the stash really moved it
    wait_for(lambda: agent.stats().get("git_checks", 0) > checks, what="the agent to look after the stash")
    assert pending(clone.path) == {} and not agent.stats().get("git_syncs")  # HEAD did not move: nothing to act on
    clone.git("stash", "pop", "-q")
    assert NEW in (clone.path / "pyproject.toml").read_text()
    status = json.loads(cfd("status", "--json", cwd=clone.path).stdout)
    assert [m["hash"] for m in status["missing"]] == [NEW]  # the working tree, as the user sees it
    clone.git("commit", "-q", "-am", "the popped model")  # the post-commit hook acts on it
    wait_for(lambda: pending(clone.path) == {NEW: "deferred"}, what="the committed manifest to be synced")


def test_sync_waits_while_a_rebase_is_under_way(scenario, models_dir, agent_env, agents, monkeypatch):
    monkeypatch.setenv("CFD_ON_PULL", "defer")
    clone, b, agent = back_before_a_new_model(scenario, models_dir, agents)
    busy = clone.path / ".git" / "rebase-merge"
    busy.mkdir()
    clone.git("reset", "-q", "--hard", b)
    wait_for(lambda: agent.stats().get("git_waits", 0) >= 1, what="the agent to see the HEAD move and wait")
    assert pending(clone.path) == {}, "no sync in the middle of a rebase"
    busy.rmdir()
    wait_for(lambda: pending(clone.path) == {NEW: "deferred"}, what="sync once the rebase is over")
    wait_for(lambda: agent.stats().get("git_syncs") == 1, what="one sync")


@pytest.fixture
def server():
    from helpers.faults import ModelServer

    with ModelServer() as srv:
        yield srv


def test_background_mode_downloads_through_the_agent_queue(scenario, models_dir, agent_env, agents, server, monkeypatch):
    from cfd.demo.content import generate_model_bytes
    from helpers import short_hash_for

    monkeypatch.setenv("CFD_ON_PULL", "background")
    data = generate_model_bytes(21, 2 * 1024 * 1024)
    model_hash = short_hash_for(data)
    url = server.add_file("/new.safetensors", data)
    clone = scenario.clone("alice")
    a = clone.commit("A", {"pyproject.toml": ManifestBuilder().render()})
    b = clone.commit("B", {"pyproject.toml": manifest_with(url, len(data), model_hash)})
    clone.git("reset", "-q", "--hard", a)
    agents(clone.path, models_dir)
    clone.git("reset", "-q", "--hard", b)
    wait_for(lambda: locations(models_dir).get("checkpoints/new.safetensors") == model_hash, what="downloaded by the agent")
    wait_for(lambda: pending(clone.path) == {}, what="pending list empty")
    assert (models_dir / "checkpoints" / "new.safetensors").read_bytes() == data
