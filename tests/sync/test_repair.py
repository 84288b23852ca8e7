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
from urllib.parse import urlsplit
from typing import Any

import pytest
from helpers import Clone, ManifestBuilder, Scenario, short_hash_for
from helpers.chaos import wait_until
from helpers.faults import ModelServer
from helpers.proxy import Proxy

from cfd.demo.content import generate_model_bytes
from cfd.core.environment import open_environment
from cfd.core.dialect import DIALECTS
from cfd.core.store.index import ModelIndex
from helpers.manifest import current_dialect
from cfd.core.sync.marker import Marker, PendingEntry
from cfd.core.sync.repair import plan_repair, run_repair

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("both_dialects")]  # both dialects

MIB = 1024 * 1024


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
    listed = out.split("To download:")[1].split("\n\n")[0].splitlines()[1:]
    assert len(listed) == 6 and listed[5] == "    ... and 8 more"  # the first 5, as ComfyDock's repair shows them
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


# -- downloads (the real engine, a real server) ----------------------------------


def pyproject_changes(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [d[2:] for d in diff if d.startswith("- ")], [d[2:] for d in diff if d.startswith("+ ")]


def test_yes_downloads_verifies_and_status_agrees(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    models = [Model(server, "a.safetensors", 1, 3 * MIB + 5), Model(server, "b.safetensors", 2, 700_000, "loras")]
    clone = make_env(scenario, manifest(models).render())
    Marker(clone.path / ".git").write([
        PendingEntry(models[0].hash, "a.safetensors", models[0].relative_path, models[0].size, (), "required", ("wf1",), "deferred"),
    ])
    result = cfd(clone, cfd_env, "repair", "--yes", "--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Downloaded 2 model(s)" in result.stdout and "All requested models are present" in result.stdout
    for model in models:
        assert (models_dir / model.relative_path).read_bytes() == model.data
        assert server.bytes_sent(model.path) == model.size
    with ModelIndex(cfd_env["CFD_INDEX"], models_dir, DIALECTS[current_dialect()]) as index:
        assert set(index.present([m.hash for m in models])) == {m.hash for m in models}
    assert marker_of(clone) == {}
    assert cfd(clone, cfd_env, "status").returncode == 0
    assert clone.is_clean()  # a plain repair never touches tracked files
    again = cfd(clone, cfd_env, "repair", "--yes")
    assert again.returncode == 0 and "In sync" in again.stdout


def test_failing_source_goes_to_the_marker_and_json(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    good = Model(server, "good.safetensors", 1, 200_000)
    bad = Model(server, "bad.safetensors", 2, 200_000)
    server.set_fault(bad.path, status_always=404)
    clone = make_env(scenario, manifest([good, bad], unavailable=1).render())
    result = cfd(clone, cfd_env, "repair", "--yes", "--json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    for key in ("downloaded", "failed", "unavailable", "skipped"):
        assert isinstance(data[key], list)
    assert [d["hash"] for d in data["downloaded"]] == [good.hash]
    assert [(f["hash"], f["filename"]) for f in data["failed"]] == [(bad.hash, "bad.safetensors")]
    assert "404" in data["failed"][0]["error"]
    assert [u["filename"] for u in data["unavailable"]] == ["gone0.safetensors"]
    assert data["skipped"] == [] and data["complete"] is False
    pending = marker_of(clone)
    assert set(pending) == {bad.hash, "0000000000000000"}
    assert pending[bad.hash].reason == "failed" and "404" in (pending[bad.hash].error or "")
    assert pending["0000000000000000"].reason == "no-source"
    assert not (models_dir / bad.relative_path).exists()


def test_status_after_a_404_says_fix_the_source_not_run_repair(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    good = Model(server, "good.safetensors", 1, 200_000)
    bad = Model(server, "bad.safetensors", 2, 200_000)
    other = Model(server, "other.safetensors", 3, 300_000)
    server.set_fault(bad.path, status_always=404)
    clone = make_env(scenario, manifest([good, bad]).render())
    assert cfd(clone, cfd_env, "repair", "--yes").returncode == 1
    clone.commit("another model", {"pyproject.toml": manifest([good, bad, other]).render()})
    status = cfd(clone, cfd_env, "status")
    assert status.returncode == 1
    lines = status.stdout.splitlines()[2:]
    shown = bad.url.split("://")[1]
    assert lines == [
        "- wf1 — 2 model(s) need downloading",
        f"    required  checkpoints/bad.safetensors (195.3 KiB) — last attempt failed: http://{shown} was not found (404); "
        "fix or replace this source in pyproject.toml",
        "    required  checkpoints/other.safetensors (293.0 KiB)",
        "",
        "1 model(s) to download (293.0 KiB). Run `cfd repair` to fetch them.",
        '1 model(s) whose source answered "not found": fix or replace the source in pyproject.toml '
        "(running `cfd repair` again will not help).",
    ]


def test_required_strategy_is_complete_when_required_models_are_here(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    required = Model(server, "r.safetensors", 1, 100_000)
    optional = Model(server, "o.safetensors", 2, 100_000)
    builder = manifest([required])
    builder.model(optional.hash, optional.name, optional.size, optional.relative_path, "checkpoints", [optional.url])
    builder.ref("wf2", optional.name, "checkpoints", hash=optional.hash, criticality="optional", status="resolved", node_id="50")
    clone = make_env(scenario, builder.render())
    result = cfd(clone, cfd_env, "repair", "--yes", "--models", "required")
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.bytes_sent(optional.path) == 0
    assert {k: e.reason for k, e in marker_of(clone).items()} == {optional.hash: "filtered"}


def test_two_concurrent_repairs_download_each_file_once(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    """The first run (2 at a time) connects for m0 and m1 and is held there; the second (3 at a
    time) waits at those two locks and connects for m2: both are connected at once."""
    models = [Model(server, f"m{i}.safetensors", i, 4 * MIB + i) for i in range(3)]
    clone = make_env(scenario, manifest(models).render())
    argv = [sys.executable, "-m", "cfd.cli.main", "repair", "--yes"]

    def start(jobs: int) -> subprocess.Popen[str]:
        return subprocess.Popen(argv, cwd=clone.path, env={**cfd_env, "CFD_JOBS": str(jobs)}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    server.hold()
    first = start(2)
    wait_until(lambda: len(server.held) == 2, 60, "the first repair to connect for two models")
    second = start(3)
    wait_until(lambda: len(server.held) == 3, 60, "the second repair to connect for the third model")
    held_paths = sorted(r.path for r in server.held)
    server.release()
    outputs = [run.communicate(timeout=100) for run in (first, second)]
    assert held_paths == sorted(model.path for model in models)  # all three in flight at once, from two processes
    assert [run.returncode for run in (first, second)] == [0, 0], outputs
    for model in models:
        assert (models_dir / model.relative_path).read_bytes() == model.data
        assert server.bytes_sent(model.path) == model.size, model.name
    assert marker_of(clone) == {}


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_downloads_go_through_the_proxy_the_environment_names(scenario: Scenario, server: ModelServer,
                                                               cfd_env: dict[str, str], models_dir: Path, variable: str) -> None:
    """The README: downloads honour HTTP(S)_PROXY and NO_PROXY as requests does (a real proxy)."""
    models = [Model(server, f"p{i}.safetensors", 60 + i, MIB + i) for i in range(2)]
    clone = make_env(scenario, manifest(models).render())
    with Proxy() as proxy:
        first = cfd(clone, {**cfd_env, variable: proxy.url, "NO_PROXY": "example.invalid"}, "repair", "--yes", "--models", "all")
        assert first.returncode == 0, first.stdout + first.stderr
        assert sorted(proxy.requests) == sorted(("GET", server.url(m.path)) for m in models)  # every file, via the proxy
        assert all((models_dir / m.relative_path).read_bytes() == m.data for m in models)
        for m in models:
            (models_dir / m.relative_path).unlink()
        second = cfd(clone, {**cfd_env, variable: proxy.url, "NO_PROXY": "127.0.0.1"}, "repair", "--yes", "--models", "all")
        assert second.returncode == 0, second.stdout + second.stderr
        assert len(proxy.requests) == len(models)  # NO_PROXY: straight to the server this time
        assert len(server.requests) == 2 * len(models)


def test_intent_is_downloaded_and_written_into_pyproject(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    lora = generate_model_bytes(9, 300_000)
    url = server.add_file("/civitai/lora.safetensors", lora)
    model = Model(server, "a.safetensors", 1, 100_000)
    clone = make_env(scenario, manifest([model], **{"lora.safetensors": url}).render())
    before = clone.read("pyproject.toml")
    status = cfd(clone, cfd_env, "status", "--json")
    assert [i["filename"] for i in json.loads(status.stdout)["intents"]] == ["lora.safetensors"]

    result = cfd(clone, cfd_env, "repair", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pyproject.toml updated" in result.stdout
    assert f"git -C {clone.path} commit" in result.stdout
    assert (models_dir / "loras/lora.safetensors").read_bytes() == lora

    after = clone.read("pyproject.toml")
    removed, added = pyproject_changes(before, after)
    lora_hash = short_hash_for(lora)
    assert removed == ['status = "unresolved"']
    assert added == [
        f'{lora_hash} = {{filename = "lora.safetensors", size = 300000, relative_path = "loras/lora.safetensors", '
        f'category = "loras", sources = ["{url}"]}}',
        'status = "resolved"',
        f'hash = "{lora_hash}"',
    ]
    assert cfd(clone, cfd_env, "status").returncode == 0
    assert clone.status().strip() == "M pyproject.toml"
    assert marker_of(clone) == {}


def test_ctrl_c_leaves_a_resumable_partial_and_says_interrupted(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    big = Model(server, "big.safetensors", 3, 48 * MIB)
    server.set_fault(big.path, throttle=8 * MIB)
    clone = make_env(scenario, manifest([big]).render())
    env = {**cfd_env, "CFD_CONNECTIONS": "1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "cfd.cli.main", "repair", "--yes"], cwd=clone.path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while server.bytes_sent(big.path) < 6 * MIB and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 130, out + err
    first = server.bytes_sent(big.path)
    assert first < big.size
    pending = marker_of(clone)
    assert pending[big.hash].reason == "interrupted"
    assert not (models_dir / big.relative_path).exists()

    server.clear_faults()
    again = cfd(clone, cfd_env, "repair", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (models_dir / big.relative_path).read_bytes() == big.data
    assert server.bytes_sent(big.path) <= big.size + 4 * MIB  # resumed, not restarted
    assert marker_of(clone) == {}


def test_sync_models_merges_failures_and_drops_successes(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    from cfd.core.sync.fetch import sync_models

    good = Model(server, "good.safetensors", 1, 100_000)
    bad = Model(server, "bad.safetensors", 2, 100_000)
    server.set_fault(bad.path, status_always=403)
    clone = make_env(scenario, manifest([good, bad]).render())
    marker = Marker(clone.path / ".git")
    marker.write([
        PendingEntry("1111111111111111", "other.safetensors", "vae/other.safetensors", 1, (), "optional", ("wf9",), "filtered"),
        PendingEntry(good.hash, good.name, good.relative_path, good.size, (), "required", ("wf1",), "deferred"),
    ])
    env = env_of(clone, cfd_env)
    plan = plan_repair(env, "all")
    result = sync_models(env, plan.models, (), trigger="post-merge")
    assert result.models_downloaded == ["good.safetensors"]
    assert [name for name, _ in result.models_failed] == ["bad.safetensors"]
    pending = marker_of(clone)
    assert set(pending) == {"1111111111111111", bad.hash}
    assert pending[bad.hash].reason == "failed" and pending[bad.hash].trigger == "post-merge"
    assert "403" in (pending[bad.hash].error or "")


@pytest.mark.parametrize("answer", ["n", "y"])
def test_on_a_terminal_it_asks(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path, answer: str) -> None:
    import pty
    import select

    model = Model(server, "a.safetensors", 1, 3 * MIB)
    clone = make_env(scenario, manifest([model]).render())
    primary, secondary = pty.openpty()
    run = subprocess.Popen(
        [sys.executable, "-m", "cfd.cli.main", "repair"], cwd=clone.path, env=cfd_env,
        stdin=secondary, stdout=subprocess.PIPE, stderr=secondary, text=True,
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 30
    while b"[Y/n]" not in seen and time.monotonic() < deadline:
        if select.select([primary], [], [], 0.2)[0]:
            seen += os.read(primary, 4096)
    assert b"Download 1 model(s)? [Y/n]" in seen
    os.write(primary, answer.encode() + b"\n")
    drain = threading.Thread(target=lambda: _drain(primary), daemon=True)  # rich bars must not block on a full pty
    drain.start()
    out, _ = run.communicate(timeout=60)
    os.close(primary)
    assert "a.safetensors" in out
    if answer == "n":
        assert run.returncode == 1 and server.requests == []
    else:
        assert run.returncode == 0, out
        assert (models_dir / model.relative_path).read_bytes() == model.data


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


# -- ComfyDock's callbacks type (library users) ------------------------------------


def test_comfydocks_own_batch_callbacks_drive_cfd_repair(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    """Code written against ComfyDock's repair passes its BatchDownloadCallbacks instance to cfd's core."""
    from comfydock_core.models.workflow import BatchDownloadCallbacks as ComfyDockCallbacks

    from cfd.core.sync.fetch import sync_models

    models = [Model(server, "a.safetensors", 1, 3 * MIB + 5), Model(server, "b.safetensors", 2, 2 * MIB)]
    bad = Model(server, "bad.safetensors", 3, 100_000)
    server.set_fault(bad.path, status_always=404)
    clone = make_env(scenario, manifest([*models, bad]).render())
    env = env_of(clone, cfd_env)
    calls: list[tuple[Any, ...]] = []
    progress: list[tuple[int, int | None]] = []
    callbacks = ComfyDockCallbacks(
        on_batch_start=lambda total: calls.append(("batch_start", total)),
        on_file_start=lambda name, index, total: calls.append(("start", name, index, total)),
        on_file_progress=lambda done, total: progress.append((done, total)),
        on_file_complete=lambda name, ok, error: calls.append(("complete", name, ok, error is not None and "404" in error)),
        on_batch_complete=lambda ok, total: calls.append(("batch_complete", ok, total)),
    )
    result = run_repair(env, plan_repair(env, "all"), callbacks=callbacks)
    assert sorted(result.models_downloaded) == ["a.safetensors", "b.safetensors"]
    assert calls[0] == ("batch_start", 3) and calls[-1] == ("batch_complete", 2, 3)
    # One file at a time, as ComfyDock's own repair reports them (cfd fetched them in parallel).
    files = calls[1:-1]
    assert [c[0] for c in files] == ["start", "complete"] * 3
    assert [c[1] for c in files[::2]] == [c[1] for c in files[1::2]]
    assert [c[2] for c in files[::2]] == [1, 2, 3]
    assert sorted(c[1:] for c in files[1::2]) == [
        ("a.safetensors", True, False), ("b.safetensors", True, False), ("bad.safetensors", False, True)]
    assert (models[0].size, models[0].size) in progress and (models[1].size, models[1].size) in progress
    assert all(total in (models[0].size, models[1].size) for _done, total in progress)
    # Only some callables set (the rest None), through sync_models: no error.
    (models_dir / models[0].relative_path).unlink()
    finished: list[str] = []
    sync_models(env, plan_repair(env, "all").models[:1], (), callbacks=ComfyDockCallbacks(on_file_complete=lambda n, ok, e: finished.append(n)))
    assert finished == ["a.safetensors"]


# -- what the preview and the summary count ------------------------------------------


def test_a_file_already_on_disk_is_indexed_not_downloaded(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    here = Model(server, "here.safetensors", 1, 300_000)
    fetch = Model(server, "fetch.safetensors", 2, 200_000)
    clone = make_env(scenario, manifest([here, fetch]).render())
    (models_dir / "checkpoints").mkdir(parents=True)
    (models_dir / here.relative_path).write_bytes(here.data)  # copied in by hand, never scanned
    result = cfd(clone, cfd_env, "repair", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[3:9] == [
        "To download: 1 model(s), 195.3 KiB",
        "    required  checkpoints/fetch.safetensors (195.3 KiB) for wf1",
        "",
        "Already on disk, not indexed: 1 model(s) (checked by hash and indexed, not downloaded)",
        "    required  checkpoints/here.safetensors (293.0 KiB)",
        "",
    ]
    assert out[9:] == [
        "Downloaded 1 model(s).",
        "Found on disk, indexed: 1 model(s) (nothing downloaded for them)",
        "    checkpoints/here.safetensors",
        "All requested models are present.",
    ]
    assert "here.safetensors" not in result.stderr  # never shown as downloading
    assert server.requests_for(here.path) == []
    assert cfd(clone, cfd_env, "status").returncode == 0


def test_skip_says_nothing_was_requested(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    clone = make_env(scenario, manifest([Model(server, "a.safetensors", 1, 5000)]).render())
    result = cfd(clone, cfd_env, "repair", "--models", "skip")
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last == "Nothing requested (--models skip): nothing downloaded; 1 model(s) recorded as pending (`cfd repair` downloads them)."
    assert "All requested models are present" not in result.stdout


def test_preview_subtracts_bytes_already_staged(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    from cfd.core.units import human_size
    from cfd.core.download.types import DownloadJob
    from cfd.core.download.staging import partial_bytes

    model = Model(server, "big.safetensors", 1, 3 * MIB)
    server.set_fault(model.path, close_after=MIB)
    clone = make_env(scenario, manifest([model]).render())
    first = cfd(clone, {**cfd_env, "CFD_RETRIES": "1"}, "repair", "--yes")
    assert first.returncode == 1
    staged = partial_bytes(models_dir / ".cfd" / "staging", DownloadJob(model.hash, model.name, model.relative_path, model.size, (), model.hash))
    assert 0 < staged < model.size
    preview = cfd(clone, cfd_env, "repair", "--dry-run").stdout.splitlines()
    assert preview[3] == f"To download: 1 model(s), {human_size(model.size - staged)}, {human_size(staged)} already here"
    assert preview[4].startswith(f"    required  checkpoints/big.safetensors (3.0 MiB, {human_size(staged)} already here) for wf1")


def test_intent_counts_in_preview_and_summary_agree(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
    lora = generate_model_bytes(9, 300_000)
    url = server.add_file("/civitai/lora.safetensors", lora)
    builder = ManifestBuilder()
    for workflow, node in (("wf1", "7"), ("wf2", "8")):  # one file, asked for by two workflows
        builder.ref(workflow, "lora.safetensors", "loras", criticality="optional", status="unresolved", node_id=node,
                    node_type="LoraLoader", sources=[url], relative_path="loras/lora.safetensors")
    clone = make_env(scenario, builder.render())
    result = cfd(clone, cfd_env, "repair", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert "To download: 1 model(s), 1 of unknown size" in out
    assert f"    optional  loras/lora.safetensors from {urlsplit(url).netloc} for wf1, wf2" in out
    assert "Downloaded 1 model(s)." in out
    assert "pyproject.toml updated: 1 download intent(s) resolved (2 workflow entries). Commit it:" in out


def test_an_intent_fetched_earlier_is_in_the_preview_as_well_as_the_summary(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    from cfd.core.sync.fetch import sync_models

    url = server.add_file("/civitai/lora.safetensors", generate_model_bytes(9, 300_000))
    builder = ManifestBuilder()
    for workflow, node in (("wf1", "7"), ("wf2", "8")):
        builder.ref(workflow, "lora.safetensors", "loras", criticality="optional", status="unresolved", node_id=node,
                    node_type="LoraLoader", sources=[url], relative_path="loras/lora.safetensors")
    clone = make_env(scenario, builder.render())
    env = env_of(clone, cfd_env)
    sync_models(env, (), plan_repair(env).intents, trigger="post-merge")  # a hook: never writes pyproject.toml
    result = cfd(clone, cfd_env, "repair", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert "Downloaded earlier, not yet in pyproject.toml: 1 download intent(s) (`cfd repair` writes them in)" in out
    assert "pyproject.toml updated: 1 download intent(s) resolved (2 workflow entries). Commit it:" in out
    assert not any(line.startswith(("To download", "Downloaded 1")) for line in out)


def test_a_retried_download_says_so_in_the_progress_lines(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str]) -> None:
    model = Model(server, "a.safetensors", 1, 200_000)
    server.set_fault(model.path, fail_times=1, fail_status=503)
    clone = make_env(scenario, manifest([model]).render())
    result = cfd(clone, cfd_env, "repair", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    retry = [line for line in result.stderr.splitlines() if line.startswith("retrying a.safetensors in ")]
    assert len(retry) == 1 and "503" in retry[0]
