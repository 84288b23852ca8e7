"""The background queue: downloads that survive restarts, retries, the rate cap, crashes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from helpers.faults import ModelServer
from cfd.demo.content import generate_model_bytes
from cfd.core.sync.marker import Marker, PendingEntry
from helpers import ManifestBuilder, make_model, short_hash_for
from test_agent_support import agent_env, agents, locations, make_env_repo, wait_for  # noqa: F401

MIB = 1024 * 1024


class Served:
    def __init__(self, server: ModelServer, name: str, seed: int, size: int) -> None:
        self.name, self.path = name, f"/{name}"
        self.data = generate_model_bytes(seed, size)
        self.hash = short_hash_for(self.data)
        self.url = server.add_file(self.path, self.data)
        self.relative_path = f"checkpoints/{name}"

    def entry(self, reason: str = "background", trigger: str = "post-merge") -> PendingEntry:
        return PendingEntry(self.hash, self.name, self.relative_path, len(self.data), (self.url,), "required", ("wf1",), reason, trigger=trigger)


def manifest(*models: Served) -> str:
    builder = ManifestBuilder()
    for m in models:
        builder.model(m.hash, m.name, len(m.data), m.relative_path, "checkpoints", [m.url])
        builder.ref("wf1", m.name, "checkpoints", hash=m.hash, criticality="required", status="resolved", node_id=m.hash[:4])
    return builder.render()


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


def marker_of(repo: Path) -> dict[str, str]:
    return {e.key: e.reason for e in Marker(repo / ".git").read()}


def test_background_download_survives_a_restart_and_resumes(scenario, models_dir, agent_env, agents, server):
    model = Served(server, "big.safetensors", seed=1, size=6 * MIB)
    server.set_fault(model.path, throttle=2 * MIB)
    repo = make_env_repo(scenario, manifest(model))
    Marker(repo / ".git").write([model.entry()])  # what a hook in background mode leaves
    agent = agents(repo, models_dir)

    def progress() -> int:
        downloads = agent.status().get("downloads") or []
        return max((d.get("downloaded") or 0 for d in downloads), default=0)

    wait_for(lambda: progress() >= MIB, what="download under way")
    assert agent.stop() == 0
    assert agent.stop_seconds < 5
    final = models_dir / model.relative_path
    # Stopped mid-way: nothing half-placed, the partial kept for resuming, the marker says so.
    assert not final.exists()
    parts = list((models_dir / ".cfd" / "staging").glob("*.part"))
    assert parts and 0 < parts[0].stat().st_size
    assert marker_of(repo) == {model.hash: "interrupted"}
    assert model.hash not in locations(models_dir).values()
    assert agent.status()["state"] == "stopped"

    server.set_fault(model.path)  # full speed now
    agents(repo, models_dir)
    wait_for(lambda: locations(models_dir).get(model.relative_path) == model.hash, what="resumed download placed")
    assert final.read_bytes() == model.data
    wait_for(lambda: marker_of(repo) == {}, what="marker cleared")
    ranges = [r.range for r in server.requests_for(model.path) if r.method == "GET"]
    assert ranges[-1] and not ranges[-1].startswith("bytes=0-"), f"the second run resumed: {ranges}"


def test_failed_download_is_retried_with_backoff(scenario, models_dir, agent_env, agents, server):
    model = Served(server, "flaky.safetensors", seed=2, size=MIB)
    server.set_fault(model.path, status_always=404)
    repo = make_env_repo(scenario, manifest(model))
    Marker(repo / ".git").write([model.entry()])
    agent = agents(repo, models_dir, "--retry-base", "1")
    wait_for(lambda: marker_of(repo) == {model.hash: "failed"}, what="first attempt failed")
    server.set_fault(model.path)
    wait_for(lambda: locations(models_dir).get(model.relative_path) == model.hash, what="retried and placed")
    wait_for(lambda: marker_of(repo) == {}, what="marker cleared")
    assert agent.stats()["downloads_failed"] >= 1
    assert agent.proc.poll() is None


def test_rate_cap_slows_background_downloads(scenario, models_dir, agent_env, agents, server, monkeypatch):
    monkeypatch.setenv("CFD_AGENT_MAX_RATE", "2M")
    model = Served(server, "capped.safetensors", seed=3, size=6 * MIB)
    server.set_fault(model.path, throttle=8 * MIB)  # uncapped, 0.75 s
    repo = make_env_repo(scenario, manifest(model))
    agent = agents(repo, models_dir)
    started = time.monotonic()
    Marker(repo / ".git").write([model.entry()])  # the marker watch wakes the queue
    wait_for(lambda: locations(models_dir).get(model.relative_path) == model.hash, what="placed")
    elapsed = time.monotonic() - started
    assert elapsed >= 1.8, f"6 MiB at 2 MiB/s (1 s of burst credit) took only {elapsed:.2f} s"
    assert agent.status()["max_rate"] == 2 * MIB


def test_a_crashing_job_is_logged_and_the_agent_goes_on(scenario, models_dir, agent_env, agents, server, tmp_path):
    model = Served(server, "m.safetensors", seed=4, size=MIB)
    repo = make_env_repo(scenario, manifest(model))
    (repo / "pyproject.toml").write_text("this is [not toml")  # the queue's manifest read raises
    Marker(repo / ".git").write([model.entry()])
    agent = agents(repo, models_dir)
    wait_for(lambda: agent.status().get("errors"), what="the error reported")
    assert "background downloads" in agent.status()["errors"][0]["message"]
    assert "Traceback" in agent.paths.log.read_text()  # the details are in the log
    copied_hash, copied = make_model(tmp_path / "src", "x.safetensors", seed=5, size=MIB)
    shutil.copy(copied, models_dir / "x.safetensors")
    wait_for(lambda: locations(models_dir).get("x.safetensors") == copied_hash, what="still indexing")
    assert agent.proc.poll() is None
