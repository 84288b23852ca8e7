"""SIGKILL at random points: of `cfd repair`, of a hook downloading inside a real `git pull`,
and of the agent. Seeded (CFD_CHAOS_SEEDS runs, default 3), real processes, a real server.

After every kill a user finds: no partial file at any model path, an index that opens and
agrees with the disk, markers that parse. The next run completes and fetches again at most
what the kill could cost (counted by the server): per interrupted file the progress since its
last checkpoint (4 MiB), per open connection one read (1 MiB) and what sat in its socket
queues, read from /proc/net/tcp while the server is frozen around the kill.
"""

from __future__ import annotations

import random
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import Scenario
from helpers.chaos import (
    agent_pid,
    MIB,
    Served,
    chaos_seeds,
    check_invariants,
    children_of,
    cmdline,
    Kill,
    fetched_unplaced,
    is_running,
    kill_at_random_point,
    kill_budget,
    manifest,
    pending_keys,
    report,
    run_cfd,
    serve,
    spawn_cfd,
    wait_until,
)
from helpers.faults import ModelServer

from cfd.core.sync.pullsync import read_last_synced

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SEEDS = chaos_seeds()
RATE = 24 * MIB  # per connection while a kill is pending: each run takes a second or two


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


def models_for(rng: random.Random, server: ModelServer) -> list[Served]:
    """Three to four models; one big enough to be fetched on two connections."""
    sizes = [64 * MIB + rng.randrange(MIB), rng.randrange(6, 14) * MIB + rng.randrange(MIB), rng.randrange(2, 6) * MIB + 17]
    if rng.random() < 0.5:
        sizes.append(rng.randrange(3, 8) * MIB)
    salt = rng.randrange(1 << 20)
    return [serve(server, f"m{i}-{salt}.safetensors", salt + i, size) for i, size in enumerate(sizes)]


def throttle(server: ModelServer, models: list[Served], rate: float | None) -> None:
    for m in models:
        if rate:
            server.set_fault(m.path, throttle=rate)
        else:
            server.clear_faults(m.path)


def engine_settings(rng: random.Random) -> dict[str, str]:
    return {"CFD_JOBS": str(rng.choice([1, 2, 4])), "CFD_CONNECTIONS": str(rng.choice([1, 2, 4])), "CFD_STALL_TIMEOUT": "10"}


class Costs:
    """What each kill may cost the next run (helpers.chaos.kill_budget), summed over a test's kills."""

    def __init__(self) -> None:
        self.interrupted = self.budget = self.queued = 0
        self.points: list[str] = []

    def add(self, kill: Kill, interrupted: int) -> None:
        self.interrupted += interrupted
        self.queued += kill.queued
        self.budget += kill_budget(kill, interrupted)
        self.points.append(f"{kill} [{interrupted} file(s), {kill.connections} conn., {kill.queued / MIB:.2f} MiB queued, {kill.after / MIB:.2f} MiB after]")

    def check(self, server: ModelServer, models: list[Served]) -> int:
        refetched = server.bytes_sent() - sum(m.size for m in models)
        assert refetched <= self.budget, (
            f"fetched {refetched / MIB:.1f} MiB again, more than the kills could cost ({self.budget / MIB:.1f} MiB): "
            + "; ".join(self.points) + "; requests (range, MiB sent): " + requests_by_file(server, models))
        return refetched

    def figures(self, refetched: int) -> dict[str, object]:
        return {"interrupted_files": self.interrupted, "refetched_mib": round(refetched / MIB, 2),
                "bound_mib": round(self.budget / MIB, 2), "queued_at_kills_mib": round(self.queued / MIB, 2)}


def requests_by_file(server: ModelServer, models: list[Served]) -> str:
    """Each file's GETs in order, for a failure message: where each resumed and how much it was sent."""
    shown = []
    for m in models:
        gets = [f"{r.range or 'all'}+{r.bytes_sent / MIB:.2f}" for r in server.requests_for(m.path) if r.method == "GET"]
        shown.append(f"{m.name}: " + " ".join(gets))
    return " | ".join(shown)


# --------------------------------------------------------------------------- cfd repair


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_of_repair(seed: int, scenario: Scenario, server: ModelServer, cfd_env: dict[str, str],
                           models_dir: Path) -> None:
    rng = random.Random(seed)
    models = models_for(rng, server)
    # A download intent too: once fetched, repair writes its hash into pyproject.toml (a kill
    # there must leave the old file or the new one, never half of it).
    intent = serve(server, f"intent-{seed}.safetensors", 9000 + seed, rng.randrange(1, 5) * MIB + 3, category="loras")
    builder = manifest(models).ref("wf-intent", intent.name, "loras", criticality="required", status="unresolved",
                                   node_id="900", sources=[intent.url], relative_path=intent.relpath)
    original = builder.render()
    clone = scenario.clone("bob")
    clone.commit("environment", {"pyproject.toml": original})
    models = [*models, intent]
    env = {**cfd_env, **engine_settings(rng)}
    index, git_dir = Path(cfd_env["CFD_INDEX"]), clone.path / ".git"
    kills, costs, landed, survived = rng.randint(1, 3), Costs(), 0, 0
    total = sum(m.size for m in models)

    throttle(server, models, RATE)
    for _ in range(kills):
        since = len(server.requests)
        proc = spawn_cfd("repair", "--yes", cwd=clone.path, env=env)
        kill = kill_at_random_point(rng, proc, server.bytes_sent, total, server=server)
        proc.communicate(timeout=60)
        # Only a kill that ended the run counts as a fault (the run may have finished first).
        kill = replace(kill, landed=kill.landed and proc.returncode == -signal.SIGKILL)
        landed += kill.landed
        facts = check_invariants(models_dir, index, [git_dir], models)
        costs.add(kill, fetched_unplaced(server.requests[since:], models, facts["placed"]))
        assert_status_agrees(run_cfd("status", "--json", cwd=clone.path, env=env).stdout)
        text = clone.read("pyproject.toml")
        assert text == original or resolved(text, intent), "pyproject.toml is neither the old nor the new version"
        survived += kill.landed

    throttle(server, models, None)
    final = run_cfd("repair", "--yes", cwd=clone.path, env=env)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "Traceback" not in final.stderr
    check_invariants(models_dir, index, [git_dir], models, complete=True)
    assert pending_keys(git_dir) == {}
    assert resolved(clone.read("pyproject.toml"), intent)
    assert clone.status().split() == ["M", "pyproject.toml"]  # the resolution, for the user to commit
    refetched = costs.check(server, models)
    report(f"kill-repair[{seed}]", faults=landed, kill_attempts=kills, runs_survived=survived, files=len(models),
           total_mib=round(total / MIB, 1), **costs.figures(refetched), points=";".join(costs.points))


def assert_status_agrees(stdout: str) -> None:
    """What `cfd status` calls pending is still missing: it never lists a model that is here."""
    import json

    data = json.loads(stdout)
    missing = {m["hash"] for m in data["missing"]}
    stale = [p["relative_path"] for p in data["pending"] if p.get("hash") and p["hash"] not in missing]
    assert stale == [], f"cfd status says these are pending, but they are here: {stale}"


def resolved(text: str, intent: Served) -> bool:
    """pyproject.toml parses and names the intent's hash as a resolved model."""
    import tomllib

    comfydock = tomllib.loads(text)["tool"]["comfydock"]
    refs = comfydock["workflows"]["wf-intent"]["models"]
    return intent.hash in comfydock["models"] and refs[0].get("status") == "resolved" and refs[0].get("hash") == intent.hash


# --------------------------------------------------------------------------- a hook inside git pull


def hook_process(pull_pid: int) -> int | None:
    """The Python the post-merge hook runs (the shim execs it), once it has started."""
    for pid in children_of(pull_pid):
        line = cmdline(pid)
        if "cfd" in line and "python" in line:
            return pid
    return None


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_of_a_hook_mid_download(seed: int, scenario: Scenario, server: ModelServer, cfd_env: dict[str, str],
                                        models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1000 + seed)
    for key, value in {**cfd_env, **engine_settings(rng), "CFD_MODELS": "all"}.items():
        if key.startswith("CFD_"):
            monkeypatch.setenv(key, value)
    import os

    env = dict(os.environ)
    models = models_for(rng, server)
    scenario.seed({"pyproject.toml": manifest([]).render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    installed = run_cfd("hooks", "install", cwd=bob.path, env=env)
    assert installed.returncode == 0, installed.stderr
    alice.commit("new models", {"pyproject.toml": manifest(models).render()})
    alice.push()
    index, git_dir = Path(cfd_env["CFD_INDEX"]), bob.path / ".git"
    total = sum(m.size for m in models)

    throttle(server, models, RATE)
    import subprocess

    since = len(server.requests)
    pull = subprocess.Popen(["git", "pull", "-q"], cwd=bob.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    victim = wait_until(lambda: hook_process(pull.pid), 30, "the post-merge hook to start", poll=0.002)
    kill = kill_at_random_point(rng, pull, server.bytes_sent, total, victim=lambda: victim, server=server)
    out, err = pull.communicate(timeout=60)
    assert pull.returncode == 0, err  # a killed hook never fails the pull
    assert bob.is_clean(), bob.status()
    facts = check_invariants(models_dir, index, [git_dir], models)
    # Nothing is lost: once the hook has acted on this manifest (last-synced), what the
    # kill left undone is in the marker (recorded before any byte was fetched); killed
    # earlier, the next hook acts again. Either way `cfd status` still counts it missing.
    left = {m.hash for m in models if m.relpath not in facts["placed"]}
    blob = bob.rev_parse("HEAD:pyproject.toml")
    if read_last_synced(git_dir) == blob:
        recorded = pending_keys(git_dir)
        assert left <= set(recorded), (kill, left - set(recorded))
    status = run_cfd("status", "--json", cwd=bob.path, env=env)
    assert status.returncode == (1 if left else 0), status.stdout + status.stderr
    assert_status_agrees(status.stdout)

    throttle(server, models, None)
    final_since = len(server.requests)
    final = run_cfd("repair", "--yes", cwd=bob.path, env=env)
    assert final.returncode == 0, final.stdout + final.stderr
    check_invariants(models_dir, index, [git_dir], models, complete=True)
    assert pending_keys(git_dir) == {} and bob.is_clean()
    costs = Costs()
    costs.add(kill, fetched_unplaced(server.requests[since:final_since], models, facts["placed"]))
    refetched = costs.check(server, models)
    report(f"kill-hook[{seed}]", faults=int(kill.landed), kill_attempts=1, runs_survived=int(kill.landed), files=len(models),
           total_mib=round(total / MIB, 1), **costs.figures(refetched), point=";".join(costs.points))


# --------------------------------------------------------------------------- the agent


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_of_the_agent(seed: int, scenario: Scenario, server: ModelServer, cfd_env: dict[str, str],
                              models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hook in background mode hands the models to the agent it starts; the agent is killed."""
    rng = random.Random(2000 + seed)
    for key, value in {**cfd_env, **engine_settings(rng), "CFD_MODELS": "all", "CFD_ON_PULL": "background"}.items():
        if key.startswith("CFD_"):
            monkeypatch.setenv(key, value)
    import os
    import signal

    env = dict(os.environ)
    models = models_for(rng, server)
    scenario.seed({"pyproject.toml": manifest([]).render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=env).returncode == 0
    alice.commit("new models", {"pyproject.toml": manifest(models).render()})
    alice.push()
    index, git_dir = Path(cfd_env["CFD_INDEX"]), bob.path / ".git"
    total = sum(m.size for m in models)
    kills, costs, landed = rng.randint(1, 2), Costs(), 0

    throttle(server, models, RATE)
    since = len(server.requests)
    try:
        pulled = bob.pull()
        assert pulled.returncode == 0 and "background" in pulled.stderr, pulled.stderr
        for round_ in range(kills):
            if round_:
                assert run_cfd("agent", "start", cwd=bob.path, env=env).returncode == 0
            pid = wait_until(lambda: agent_pid(models_dir), 30, "the agent to be ready")

            class _Alive:
                def poll(self) -> int | None:
                    return None if is_running(pid) else 0

            kill = kill_at_random_point(rng, _Alive(), server.bytes_sent, total, victim=lambda: pid,  # type: ignore[arg-type]
                                        server=server)
            landed += kill.landed
            wait_until(lambda: not is_running(pid), 10, "the agent to die")
            facts = check_invariants(models_dir, index, [git_dir], models)
            costs.add(kill, fetched_unplaced(server.requests[since:], models, facts["placed"]))
            since = len(server.requests)
            assert_status_agrees(run_cfd("status", "--json", cwd=bob.path, env=env).stdout)
        throttle(server, models, None)
        # The user (or the next background hook) starts it again; it resumes by itself.
        assert run_cfd("agent", "start", cwd=bob.path, env=env).returncode == 0
        wait_until(lambda: all((models_dir / m.relpath).is_file() for m in models) and pending_keys(git_dir) == {},
                   90, "the restarted agent to finish", poll=0.1)
    finally:
        run_cfd("agent", "stop", cwd=bob.path, env=env)
        pid = agent_pid(models_dir)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    check_invariants(models_dir, index, [git_dir], models, complete=True)
    refetched = costs.check(server, models)
    report(f"kill-agent[{seed}]", faults=landed, kill_attempts=kills, runs_survived=landed, files=len(models),
           total_mib=round(total / MIB, 1), **costs.figures(refetched), points=";".join(costs.points))


# --------------------------------------------------------------------------- the narrowest window


def test_killed_between_the_move_and_the_cleanup(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str],
                                                 models_dir: Path) -> None:
    """The state a kill leaves right after the hard link into place, before the staging files are
    removed and the index is written (too narrow to hit by timing: built by hand). The next run
    indexes the file without fetching it and leaves no staging file linked to it."""
    import os

    from cfd.core.store.index import ModelIndex

    m = serve(server, "placed.safetensors", 77, 3 * MIB)
    clone = scenario.clone("bob")
    clone.commit("environment", {"pyproject.toml": manifest([m]).render()})
    target = models_dir / m.relpath
    target.parent.mkdir(parents=True)
    target.write_bytes(m.data)
    staging = models_dir / ".cfd" / "staging"
    staging.mkdir(parents=True)
    os.link(target, staging / f"{m.hash}.part")
    (staging / f"{m.hash}.json").write_text('{"source": "x", "size": 1, "segments": [[0, 1, 1]]}')
    assert target.stat().st_nlink == 2
    index = Path(cfd_env["CFD_INDEX"])
    ModelIndex(index, models_dir).close()
    result = run_cfd("repair", "--yes", cwd=clone.path, env=cfd_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.requests == []
    check_invariants(models_dir, index, [clone.path / ".git"], [m], complete=True)


def test_an_intent_fetched_before_is_resolved_by_the_next_repair(scenario: Scenario, server: ModelServer,
                                                                 cfd_env: dict[str, str], models_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An intent downloaded by a hook (which never touches tracked files), or by a repair killed
    before it wrote pyproject.toml, is remembered by its URL; the next `cfd repair` writes it back."""
    import os

    for key in ("CFD_MODELS_DIR", "CFD_INDEX", "CFD_ALLOW_PRIVATE_NETWORKS"):
        monkeypatch.setenv(key, cfd_env[key])
    monkeypatch.setenv("CFD_MODELS", "all")
    env = dict(os.environ)
    intent = serve(server, "wanted.safetensors", 4242, MIB + 5, category="loras")
    builder = manifest([]).ref("wf-intent", intent.name, "loras", criticality="required", status="unresolved",
                               node_id="900", sources=[intent.url], relative_path=intent.relpath)
    scenario.seed({"pyproject.toml": manifest([]).render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=env).returncode == 0
    alice.commit("intent", {"pyproject.toml": builder.render()})
    alice.push()
    assert bob.pull().returncode == 0 and bob.is_clean()
    assert (models_dir / intent.relpath).read_bytes() == intent.data  # fetched by the hook
    requests = len(server.requests)
    repaired = run_cfd("repair", "--yes", cwd=bob.path, env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "1 download intent(s) resolved" in repaired.stdout
    assert resolved(bob.read("pyproject.toml"), intent)
    assert len(server.requests) == requests  # nothing fetched again
