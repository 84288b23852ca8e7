"""A pulled manifest must not fill a disk or hold `git pull`: each attack through a real `git pull`
with the installed hooks (or a real `cfd repair`), against the real HTTP server on 127.0.0.1.

A hook's downloads are bounded by a time budget (cfd.hookTimeBudget); every connection by a
low-speed limit (cfd.lowSpeedLimit over cfd.lowSpeedTime), the agent's and repair's too; a
download whose size the manifest does not give by cfd.maxUnknownSize, by the free space, and
by a length something confirms. The figures these tests print (pytest -s, or CFD_CHAOS_FIGURES)
are the ones docs/RELIABILITY.md quotes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import ManifestBuilder, Scenario
from helpers.chaos import MIB, manifest, pending_keys, report, run_cfd, serve
from helpers.faults import ModelServer

from cfd.core.download.staging import staging_name

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


class Team:
    """Alice publishes manifests; Bob has the hooks installed and pulls them."""

    def __init__(self, scenario: Scenario, cfd_env: dict[str, str], models_dir: Path) -> None:
        self.models_dir = models_dir
        self.env = {**cfd_env, "CFD_RETRIES": "2", "CFD_STALL_TIMEOUT": "30", "CFD_MODELS": "all"}
        scenario.seed({"pyproject.toml": ManifestBuilder().render()})
        self.alice, self.bob = scenario.clone("alice"), scenario.clone("bob")
        installed = run_cfd("hooks", "install", cwd=self.bob.path, env=self.env)
        assert installed.returncode == 0, installed.stderr

    def publish(self, builder: ManifestBuilder) -> None:
        self.alice.commit("models", {"pyproject.toml": builder.render()})
        self.alice.push()

    def pull(self, **settings: str) -> tuple[float, str]:
        """`git pull` in Bob's clone; (seconds it took, stderr). Git must succeed and stay clean."""
        started = time.monotonic()
        result = self.bob.pull(env={**self.env, **settings})
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
        assert self.bob.is_clean()
        return elapsed, result.stderr

    @property
    def git_dir(self) -> Path:
        return self.bob.path / ".git"

    def staging(self) -> list[str]:
        folder = self.models_dir / ".cfd" / "staging"
        return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture
def team(scenario: Scenario, cfd_env: dict[str, str], models_dir: Path) -> Team:
    return Team(scenario, cfd_env, models_dir)


def intent(builder: ManifestBuilder, filename: str, url: str, node: str = "7") -> ManifestBuilder:
    return builder.ref("wf1", filename, "loras", criticality="required", status="unresolved", node_id=node,
                       node_type="LoraLoader", sources=[url], relative_path=f"loras/{filename}")


def marker_entry(team: Team, filename: str):  # type: ignore[no-untyped-def]
    from cfd.core.sync.marker import Marker

    return next(e for e in Marker(team.git_dir).read() if e.filename == filename)


def cfd_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cfd:")]


# --------------------------------------------------------------------------- code in the pulled tree


def test_python_files_in_the_pulled_tree_never_run_in_the_hook(team: Team, tmp_path: Path) -> None:
    """The hook's Python starts in the work tree's top: a pushed `typing.py`, `json.py` or `cfd/`
    there must not be imported in place of Python's or cfd's own modules."""
    ran = tmp_path / "ran"
    payload = f"open({str(ran)!r}, 'a').write(__name__ + '\\n')\n"
    team.alice.commit("tools", {"typing.py": payload, "json.py": payload, "subprocess.py": payload,
                                "cfd/__init__.py": payload, "cfd/hooks/__init__.py": payload})
    needed = "0123456789abcdef"
    team.publish(ManifestBuilder().model(needed, "a.safetensors", 10, relative_path="loras/a.safetensors", category="loras")
                 .ref("wf1", "a.safetensors", "loras", hash=needed, criticality="required", status="resolved", node_id="1"))
    _, stderr = team.pull()
    assert needed in pending_keys(team.git_dir), stderr  # the hook did run, and synced
    assert not ran.exists(), ran.read_text()
    assert not [line for line in cfd_lines(stderr) if "older cfd" in line]


def test_a_hook_from_an_older_cfd_says_it_lets_pulled_python_run(team: Team) -> None:
    """Shims before version 3 start Python without -P, and no runtime can undo that: it says so,
    with what to run."""
    for hook in (team.git_dir / "hooks").glob("post-*"):
        text = hook.read_text()
        if "cfd-hook-id" in text:
            hook.write_text(text.replace(" -P -m cfd.hooks.runtime", " -m cfd.hooks.runtime"))
    needed = "0123456789abcdee"
    team.publish(ManifestBuilder().model(needed, "a.safetensors", 10, relative_path="loras/a.safetensors", category="loras")
                 .ref("wf1", "a.safetensors", "loras", hash=needed, criticality="required", status="resolved", node_id="1"))
    _, stderr = team.pull()
    assert needed in pending_keys(team.git_dir), stderr  # it still syncs
    warned = [line for line in cfd_lines(stderr) if "older cfd" in line]
    assert len(warned) == 1 and "run `cfd hooks install`" in warned[0], stderr


# --------------------------------------------------------------------------- a disk filled by an intent


def test_endless_intent_without_length_stops_at_the_ceiling_and_keeps_nothing(team: Team, server: ModelServer) -> None:
    m = serve(server, "filler.safetensors", 1, MIB, category="loras")
    server.set_fault(m.path, no_length=True, extra_bytes=1 << 40)  # a terabyte of filler, no length
    team.publish(intent(ManifestBuilder(), m.name, m.url))
    _, stderr = team.pull(CFD_MAX_UNKNOWN_SIZE="3M")
    line = next(line for line in cfd_lines(stderr) if m.name in line and "failed" in line)
    assert "more than cfd.maxUnknownSize (3.0 MiB)" in line, stderr
    assert not (team.models_dir / m.relpath).exists()
    assert team.staging() == []  # nothing kept for the agent to refill
    entry = marker_entry(team, m.name)
    assert entry.reason == "failed" and "cfd.maxUnknownSize" in (entry.error or "")


def test_intent_cut_short_without_length_is_not_placed(team: Team, server: ModelServer) -> None:
    from cfd.demo.content import generate_model_bytes
    from cfd.core.download.tensorfile import safetensors_bytes

    data = safetensors_bytes(generate_model_bytes(2, 3 * MIB))
    url = server.add_file("/loras/cut.safetensors", data)
    server.set_fault("/loras/cut.safetensors", no_length=True, close_after=MIB)
    team.publish(intent(ManifestBuilder(), "cut.safetensors", url))
    _, stderr = team.pull()
    assert "cut short" in stderr and not (team.models_dir / "loras/cut.safetensors").exists(), stderr
    assert team.staging() == []
    # The server mends: `cfd repair` fetches the whole file, checked against its header, and resolves it.
    server.clear_faults()
    server.set_fault("/loras/cut.safetensors", no_length=True)
    result = run_cfd("repair", "--yes", cwd=team.bob.path, env=team.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (team.models_dir / "loras/cut.safetensors").read_bytes() == data


# --------------------------------------------------------------------------- servers that hold a hook


def test_black_hole_server_is_bounded_by_the_hook_time_budget(team: Team, server: ModelServer) -> None:
    """Three models, each with two sources, all on a server that accepts and never answers: without a
    budget that is models x sources x retries x cfd.stallTimeout; with it, the budget."""
    models = [serve(server, f"hole{i}.safetensors", 3 + i, MIB) for i in range(3)]
    builder = ManifestBuilder()
    for i, m in enumerate(models):
        server.set_fault(m.path, black_hole=True)  # accepts, reads the request, never answers
        server.add_file(m.path + ".mirror", m.data)
        server.set_fault(m.path + ".mirror", black_hole=True)
        builder.model(m.hash, m.name, m.size, m.relpath, m.category, [m.url, m.url + ".mirror"])
        builder.ref("wf1", m.name, m.category, hash=m.hash, criticality="required", status="resolved", node_id=str(i))
    team.publish(builder)
    budget = 2.0
    elapsed, stderr = team.pull(CFD_HOOK_TIME_BUDGET=str(budget))
    assert all(server.requests_for(m.path) for m in models), "the hook never reached the server"
    assert "hook time budget" in stderr and "left by the hook time budget" in stderr, stderr
    assert "3 pending (3 left by the hook time budget" in stderr and "failed;" not in stderr, stderr
    assert pending_keys(team.git_dir) == {m.hash: "hook-time-budget" for m in models}
    assert not any((team.models_dir / m.relpath).exists() for m in models)
    report("hook-vs-black-hole", models=3, sources_each=2, budget_s=budget, stall_timeout_s=30, retries=2,
           git_pull_s=round(elapsed, 2))


def test_slowloris_is_cut_by_the_low_speed_limit(team: Team, server: ModelServer) -> None:
    m = serve(server, "drip.safetensors", 4, MIB)
    server.set_fault(m.path, drip=0.2)  # 5 bytes/s: far under any useful rate, never silent for long
    team.publish(manifest([m]))
    settings = {"CFD_LOW_SPEED_LIMIT": "1K", "CFD_LOW_SPEED_TIME": "1", "CFD_RETRIES": "2"}
    elapsed, stderr = team.pull(**settings)
    line = next(line for line in cfd_lines(stderr) if "failed" in line)
    assert "slower than 1.0 KiB/s for 1 s" in line and "cfd.lowSpeedLimit" in line, stderr
    assert pending_keys(team.git_dir) == {m.hash: "failed"}
    # `cfd repair` has no time budget but keeps the low-speed limit.
    started = time.monotonic()
    result = run_cfd("repair", "--yes", cwd=team.bob.path, env={**team.env, **settings})
    repair_s = time.monotonic() - started
    assert result.returncode == 1 and "slower than 1.0 KiB/s" in result.stdout + result.stderr
    report("hook-vs-slowloris", drip_s=0.2, low_speed="1K/1s", retries=2, git_pull_s=round(elapsed, 2),
           repair_s=round(repair_s, 2))


def test_slowloris_under_the_default_limit_is_bounded_by_the_budget(team: Team, server: ModelServer) -> None:
    """A byte every 0.4 s keeps the socket busy (never a stall) and, with the default 30 s window, never
    trips the low-speed limit within the budget: the budget ends it."""
    m = serve(server, "drip2.safetensors", 5, MIB)
    server.set_fault(m.path, drip=0.4)
    team.publish(manifest([m]))
    budget = 2.0
    elapsed, stderr = team.pull(CFD_HOOK_TIME_BUDGET=str(budget))
    assert "hook time budget" in stderr, stderr
    assert pending_keys(team.git_dir) == {m.hash: "hook-time-budget"}
    report("hook-vs-slowloris-budget", budget_s=budget, drip_s=0.4, git_pull_s=round(elapsed, 2))


def test_hook_waiting_for_another_process_says_so_and_the_wait_counts(team: Team, server: ModelServer) -> None:
    m = serve(server, "shared.safetensors", 6, MIB)
    team.publish(manifest([m]))
    locks = team.models_dir / ".cfd" / "locks"
    locks.mkdir(parents=True)
    with FileLock(str(locks / f"{staging_name(m.hash)}.lock")):  # another process is downloading it
        _, stderr = team.pull(CFD_HOOK_TIME_BUDGET="1.5")
    assert f"cfd: {m.name}: waiting for another cfd process that is downloading it" in stderr, stderr
    assert "hook time budget" in stderr
    assert pending_keys(team.git_dir) == {m.hash: "hook-time-budget"}
    assert server.requests_for(m.path) == []
    # The lock is free again: `cfd repair` (no budget) finishes the job.
    result = run_cfd("repair", "--yes", cwd=team.bob.path, env=team.env)
    assert result.returncode == 0 and (team.models_dir / m.relpath).read_bytes() == m.data


def test_a_source_failing_at_the_deadline_is_left_by_the_budget(team: Team, server: ModelServer) -> None:
    """One attempt whose socket timeout was cut short to end with the budget fails right at the
    deadline: it is the budget that stopped it, and the marker says so (with the last error)."""
    m = serve(server, "edge.safetensors", 7, MIB)
    server.set_fault(m.path, black_hole=True)
    team.publish(manifest([m]))
    _, stderr = team.pull(CFD_HOOK_TIME_BUDGET="1.5", CFD_RETRIES="1")
    assert pending_keys(team.git_dir) == {m.hash: "hook-time-budget"}, stderr
    entry = marker_entry(team, m.name)
    assert (entry.error or "").startswith("hook time budget") and "last error" in (entry.error or ""), entry.error
