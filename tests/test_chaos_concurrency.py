"""Everyone at once: a hook downloading inside `git pull`, the agent downloading in the
background, and two `cfd repair` runs, all on overlapping models in one models directory
with one index. Every file is downloaded once (the server counts the bytes), placed once
(one file, one link), indexed once (one location row per model). Seeded start orders.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import Scenario
from helpers.chaos import (
    CFD,
    MIB,
    Lines,
    Served,
    chaos_seeds,
    check_invariants,
    manifest,
    pending_keys,
    report,
    run_cfd,
    serve,
    wait_until,
)
from helpers.faults import ModelServer

from cfd.agent.paths import agent_paths
from cfd.agent.statusfile import read_status
from cfd.core.sync.marker import Marker, PendingEntry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


def background_entries(models: list[Served]) -> list[PendingEntry]:
    """What a hook in background mode leaves for the agent."""
    return [PendingEntry(m.hash, m.name, m.relpath, m.size, (m.url,), "required", ("wf1",), "background",
                         trigger="post-merge", hash=m.hash) for m in models]


@pytest.mark.parametrize("seed", chaos_seeds())
def test_hook_agent_and_two_repairs_at_once(seed: int, scenario: Scenario, server: ModelServer,
                                            cfd_env: dict[str, str], models_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3000 + seed)
    for key in ("CFD_MODELS_DIR", "CFD_INDEX", "CFD_ALLOW_PRIVATE_NETWORKS"):
        monkeypatch.setenv(key, cfd_env[key])
    monkeypatch.setenv("CFD_MODELS", "all")
    monkeypatch.setenv("CFD_JOBS", str(rng.choice([2, 4])))
    env = dict(os.environ)
    models = [serve(server, f"c{i}-{seed}.safetensors", 100 * seed + i, rng.randrange(3, 12) * MIB + rng.randrange(MIB))
              for i in range(5)]
    for m in models:
        server.set_fault(m.path, throttle=16 * MIB)  # once released, slow enough for everyone to keep colliding
    scenario.seed({"pyproject.toml": manifest([]).render()})
    alice, bob, carol, dave = (scenario.clone(name) for name in ("alice", "bob", "carol", "dave"))
    assert run_cfd("hooks", "install", cwd=bob.path, env=env).returncode == 0
    alice.commit("models", {"pyproject.toml": manifest(models).render()})
    alice.push()
    for clone in (carol, dave):  # no hooks there: they only get the manifest
        assert clone.pull().returncode == 0
    agent_models = rng.sample(models, 3)
    Marker(dave.path / ".git").write(background_entries(agent_models))

    starters = {
        "agent": lambda: subprocess.Popen([*CFD, "agent", "run", "--settle", "0.2", "--git-debounce", "0.2"], cwd=dave.path,
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        "hook": lambda: subprocess.Popen(["git", "pull", "-q"], cwd=bob.path, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True),
        "repair-1": lambda: subprocess.Popen([*CFD, "repair", "--yes"], cwd=carol.path, env=env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "repair-2": lambda: subprocess.Popen([*CFD, "repair", "--yes"], cwd=carol.path, env=env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    # Each one has reached the downloads: the hook and the repairs print a line as a file starts
    # (right before its lock is taken); the agent lists the file in its status file, or counts an
    # entry it left to the process holding that file's lock.
    def agent_started() -> bool:
        status = read_status(agent_paths(models_dir).status) or {}
        return bool(status.get("downloads") or (status.get("stats") or {}).get("left_to_others"))

    started = {
        "agent": agent_started,
        "hook": lambda: errors["hook"].has("cfd: ["),
        "repair-1": lambda: errors["repair-1"].has("downloading"),
        "repair-2": lambda: errors["repair-2"].has("downloading"),
    }
    order = rng.sample(sorted(starters), len(starters))
    procs: dict[str, subprocess.Popen[str]] = {}
    errors: dict[str, Lines] = {}
    server.hold()  # nothing is served until all four are downloading at once
    try:
        for name in order:
            procs[name] = starters[name]()
            errors[name] = Lines(procs[name].stderr)
            time.sleep(rng.uniform(0, 0.3))
        try:
            wait_until(lambda: all(check() for check in started.values()), 60, "all four to be downloading")
        except AssertionError:
            waiting = sorted(name for name, check in started.items() if not check())
            raise AssertionError(f"still not downloading: {waiting}; held: {[r.path for r in server.held]}; "
                                 f"stderr: { {name: lines.lines[-3:] for name, lines in errors.items()} }") from None
        held = len(server.held)
        overlapping = sorted(name for name, proc in procs.items() if proc.poll() is None)
        server.release()
        for name in ("hook", "repair-1", "repair-2"):
            out = procs[name].stdout.read() if procs[name].stdout else ""
            procs[name].wait(timeout=120)
            err = errors[name].text()
            assert procs[name].returncode == 0, (name, out, err)
            assert "Traceback" not in err, (name, err)
        wait_until(lambda: pending_keys(dave.path / ".git") == {}, 60, "the agent's pending list to empty", poll=0.1)
    finally:
        server.release()
        agent = procs.get("agent")
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=20)
    agent_err = errors["agent"].text()
    assert agent.returncode == 0 and "Traceback" not in agent_err
    assert overlapping == sorted(starters) and held >= 1, (overlapping, held)

    total = sum(m.size for m in models)
    assert server.bytes_sent() == total, f"{(server.bytes_sent() - total) / MIB:.1f} MiB downloaded twice"
    check_invariants(models_dir, Path(cfd_env["CFD_INDEX"]), [c.path / ".git" for c in (bob, carol, dave)], models,
                     complete=True)
    for clone in (bob, carol, dave):
        assert pending_keys(clone.path / ".git") == {}
    assert bob.is_clean() and carol.is_clean()
    report(f"concurrency[{seed}]", processes=len(overlapping), held_requests=held, start_order="/".join(order),
           files=len(models), total_mib=round(total / MIB, 1), bytes_sent_mib=round(server.bytes_sent() / MIB, 1),
           sent_twice_mib=round((server.bytes_sent() - total) / MIB, 1))
