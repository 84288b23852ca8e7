"""`cfd repair` and sync_models, driven through the real CLI against a real HTTP server."""

from __future__ import annotations

import difflib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Clone, ManifestBuilder, Scenario, short_hash_for

from cfd.cli.model_server import ModelServer, generate_model_bytes
from cfd.core.environment import open_environment
from cfd.core.index import ModelIndex
from cfd.core.marker import Marker, PendingEntry
from cfd.core.repair import plan_repair, run_repair

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
ENGINE = (Path(__file__).resolve().parents[1] / "core" / "download.py").exists()
needs_engine = pytest.mark.skipif(not ENGINE, reason="core/download.py (the download engine) has not landed yet")


class Model:
    def __init__(self, server: ModelServer, name: str, seed: int, size: int, category: str = "checkpoints") -> None:
        self.name = name
        self.category = category
        self.data = generate_model_bytes(seed, size)
        self.hash = short_hash_for(self.data)
        self.size = size
        self.path = f"/{category}/{name}"
        self.relative_path = f"{category}/{name}"
        self.url = server.add_file(self.path, self.data)


@pytest.fixture
def server() -> Any:
    with ModelServer() as srv:
        yield srv


def make_env(scenario: Scenario, text: str, name: str = "bob") -> Clone:
    clone = scenario.clone(name)
    clone.commit("environment", {"pyproject.toml": text})
    return clone


def manifest(models: list[Model], criticality: str = "required", unavailable: int = 0, **intents: str) -> ManifestBuilder:
    builder = ManifestBuilder()
    for number, model in enumerate(models):
        builder.model(model.hash, model.name, model.size, model.relative_path, model.category, [model.url])
        builder.ref("wf1", model.name, model.category, hash=model.hash, criticality=criticality,
                    status="resolved", node_id=str(number + 1))
    for number in range(unavailable):
        fake = f"{number:016x}"
        builder.model(fake, f"gone{number}.safetensors", 100, f"vae/gone{number}.safetensors", "vae", None)
        builder.ref("wf2", f"gone{number}.safetensors", "vae", hash=fake, criticality="flexible",
                    status="resolved", node_id=str(100 + number))
    for number, (filename, url) in enumerate(intents.items()):
        builder.ref("wf3", filename, "loras", criticality="optional", status="unresolved", node_id=str(200 + number),
                    node_type="LoraLoader", sources=[url], relative_path=f"loras/{filename}")
    return builder


def cfd(
    clone: Clone, env: dict[str, str], *args: str, timeout: float = 90, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "cfd.cli.main", *args], cwd=clone.path, env=env, capture_output=True,
        text=True, timeout=timeout, **kwargs,
    )


def marker_of(clone: Clone) -> dict[str, PendingEntry]:
    return {e.key: e for e in Marker(clone.path / ".git").read()}


def env_of(clone: Clone, cfd_env: dict[str, str]) -> Any:
    return open_environment(clone.path, environ=cfd_env)


# -- planning, preview and the question (no downloads) ---------------------------


def test_dry_run_previews_and_downloads_nothing(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    models = [Model(server, f"m{i:02d}.safetensors", i, 1000 + i) for i in range(13)]
    clone = make_env(scenario, manifest(models, unavailable=1, extra="http://127.0.0.1:1/x").render())
    result = cfd(clone, cfd_env, "repair", "--dry-run")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "To download: 14 model(s)" in out and "+ 1 of unknown size" in out
    assert "… and 3 more" in out
    assert "Unavailable (no source in pyproject.toml): 1" in out and "gone0.safetensors" in out
    assert "Download intents" in out and "loras/extra" in out
    assert "Dry run" in out
    assert server.requests == []
    assert list(models_dir.iterdir()) == [] or not any(models_dir.rglob("*.safetensors"))
    assert marker_of(clone) == {} and clone.is_clean()


def test_dry_run_json(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    models = [Model(server, "a.safetensors", 1, 5000), Model(server, "b.safetensors", 2, 6000)]
    clone = make_env(scenario, manifest(models, unavailable=1).render())
    result = cfd(clone, cfd_env, "repair", "--dry-run", "--json", "--models", "required")
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["downloaded"] == [] and data["failed"] == []
    assert [m["hash"] for m in data["to_download"]] == [models[0].hash, models[1].hash]
    assert data["bytes_to_download"] == 11000
    assert [u["filename"] for u in data["unavailable"]] == ["gone0.safetensors"]
    assert data["skipped"] == []
    assert server.requests == []


def test_without_terminal_and_yes_it_says_what_to_run(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    clone = make_env(scenario, manifest([Model(server, "a.safetensors", 1, 5000)]).render())
    started = time.monotonic()
    result = cfd(clone, cfd_env, "repair", "--models", "required", timeout=30)
    assert time.monotonic() - started < 20
    assert result.returncode == 2
    assert "cfd repair --models required --yes" in result.stderr
    assert server.requests == []


def test_nothing_missing_is_exit_0(scenario: Scenario, cfd_env: dict[str, str]) -> None:
    clone = make_env(scenario, ManifestBuilder().render())
    result = cfd(clone, cfd_env, "repair")
    assert result.returncode == 0, result.stderr
    assert "In sync" in result.stdout


def test_skip_records_pending_with_reasons_and_drops_stale(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    models = [Model(server, "a.safetensors", 1, 5000)]
    clone = make_env(scenario, manifest(models, unavailable=1, l1="http://127.0.0.1:1/l1").render())
    Marker(clone.path / ".git").write([
        PendingEntry("feedfeedfeedfeed", "old.safetensors", "checkpoints/old.safetensors", 1, (), "required", ("wf9",), "deferred"),
        PendingEntry(models[0].hash, "a.safetensors", "checkpoints/a.safetensors", 5000, (), "required", ("wf1",), "failed", error="HTTP 500"),
    ])
    env = env_of(clone, cfd_env)
    plan = plan_repair(env, "skip")
    assert plan.stale == ("feedfeedfeedfeed",)
    assert plan.previous[models[0].hash].error == "HTTP 500"
    assert plan.download_count == 0 and plan.complete

    result = cfd(clone, cfd_env, "repair", "--models", "skip")
    assert result.returncode == 0, result.stderr
    pending = marker_of(clone)
    assert "feedfeedfeedfeed" not in pending
    assert pending[models[0].hash].reason == "filtered"
    assert pending["0000000000000000"].reason == "no-source"
    assert pending["intent:wf3/200/0"].reason == "filtered"
    assert server.requests == []


def test_plan_strategies(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    required = Model(server, "r.safetensors", 1, 5000)
    optional = Model(server, "o.safetensors", 2, 5000)
    builder = manifest([required])
    builder.model(optional.hash, optional.name, optional.size, optional.relative_path, "checkpoints", [optional.url])
    builder.ref("wf2", optional.name, "checkpoints", hash=optional.hash, criticality="optional", status="resolved", node_id="50")
    clone = make_env(scenario, builder.render())
    env = env_of(clone, cfd_env)
    plan = plan_repair(env, "required")
    assert [m.hash for m in plan.models] == [required.hash]
    assert [m.hash for m in plan.filtered_models] == [optional.hash]
    assert plan.download_bytes == 5000
    assert [m.hash for m in plan_repair(env, "all").models] == [required.hash, optional.hash]
    # run with nothing picked: the marker says exactly what is still missing, and why
    result = run_repair(env, plan_repair(env, "skip"))
    assert {e.key: e.reason for e in result.pending} == {required.hash: "filtered", optional.hash: "filtered"}
    assert result.complete  # skip asks for nothing
