"""The hooks really firing: real git commands in real clones, the installed shims, cfd.

Alice (a teammate) pushes manifest changes; Bob has the hooks installed and runs
`git pull`, `git checkout`, `git rebase`... Every test also checks that git
succeeded and that the work tree stayed clean.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Clone, ManifestBuilder, Scenario
from helpers.manifest import model_bytes, short_hash_for

CFD = [sys.executable, "-m", "cfd.cli.main"]


@dataclass(frozen=True)
class M:
    """A model of the tests: bytes, hash, where it goes, how much it matters."""

    seed: int
    criticality: str = "required"
    size: int = 4096
    source: str | None = "https://models.invalid/{name}"

    @property
    def data(self) -> bytes:
        return model_bytes(self.seed, self.size)

    @property
    def hash(self) -> str:
        return short_hash_for(self.data)

    @property
    def name(self) -> str:
        return f"m{self.seed}.safetensors"

    @property
    def relpath(self) -> str:
        return f"checkpoints/{self.name}"


def manifest(*models: M, workflow: str = "wf1", extra: str = "") -> str:
    b = ManifestBuilder()
    for i, m in enumerate(models):
        sources = [m.source.format(name=m.name)] if m.source else []
        b.model(m.hash, m.name, m.size, relative_path=m.relpath, category="checkpoints", sources=sources)
        b.ref(workflow, m.name, "checkpoints", hash=m.hash, criticality=m.criticality, status="resolved", node_id=str(i + 1))
    return b.render() + extra


def cfd(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CFD, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def pending(clone: Clone | Path) -> dict[str, dict]:
    git_dir = Path(subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=clone if isinstance(clone, Path) else clone.path,
                                  capture_output=True, text=True, check=True).stdout.strip())
    path = git_dir / "cfd" / "pending.json"
    if not path.exists():
        return {}
    return {e["key"]: e for e in json.loads(path.read_text())["entries"]}


def python_logger(tmp_path: Path) -> tuple[Path, Path]:
    """An "interpreter" that logs each start, then runs the real one."""
    log = tmp_path / "python-starts.log"
    wrapper = tmp_path / "logging-python"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper, log


def starts(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def team(scenario: Scenario, cfd_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Alice and Bob share an environment; Bob's clone has the hooks (interpreter logged)."""
    for key in ("CFD_MODELS_DIR", "CFD_INDEX", "CFD_ALLOW_PRIVATE_NETWORKS"):
        monkeypatch.setenv(key, cfd_env[key])
    monkeypatch.setenv("CFD_ON_PULL", "defer")  # downloads have their own tests
    scenario.seed({"pyproject.toml": manifest(), "README.md": "hello\n"})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    python, log = python_logger(tmp_path)
    installed = cfd("hooks", "install", "--python", str(python), cwd=bob.path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    log.unlink(missing_ok=True)
    return alice, bob, log


def publish(alice: Clone, content: str, message: str = "models") -> str:
    sha = alice.commit(message, {"pyproject.toml": content})
    alice.push()
    return sha


def test_pull_fast_forward_records_the_new_models(team):
    alice, bob, log = team
    a, b = M(1), M(2, "optional")
    publish(alice, manifest(a, b))
    pulled = bob.pull()
    assert pulled.returncode == 0
    assert "cfd repair" in pulled.stderr
    entries = pending(bob)
    assert entries[a.hash]["reason"] == "deferred" and entries[a.hash]["trigger"] == "post-merge"
    assert entries[b.hash]["reason"] == "filtered"
    assert bob.is_clean()
    assert len(starts(log)) == 1


def test_pull_true_merge(team):
    alice, bob, _ = team
    bob.commit("local work", {"notes.txt": "mine\n"})
    a = M(3)
    publish(alice, manifest(a))
    pulled = bob.pull("--no-rebase", "--no-edit")
    assert pulled.returncode == 0, pulled.stderr
    assert len(bob.git("rev-list", "--parents", "-n1", "HEAD").stdout.split()) == 3  # a merge commit
    assert pending(bob)[a.hash]["trigger"] == "post-merge"
    assert bob.is_clean()


def test_pull_rebase_that_fast_forwards(team):
    alice, bob, _ = team
    a = M(4)
    publish(alice, manifest(a))
    assert bob.pull("--rebase").returncode == 0
    assert pending(bob)[a.hash]["trigger"] == "post-merge"


def test_pull_rebase_with_local_commits_syncs_once_at_the_end(team):
    alice, bob, log = team
    bob.commit("local work", {"notes.txt": "mine\n"})
    a = M(5)
    publish(alice, manifest(a))
    pulled = bob.pull("--rebase")
    assert pulled.returncode == 0, pulled.stderr
    assert pending(bob)[a.hash]["trigger"] == "post-rewrite"
    # post-checkout mid-rebase and the post-commit of the replayed commit started nothing
    assert [line.split("cfd.hooks.runtime ")[1].split()[0] for line in starts(log)] == ["post-rewrite"]
    assert bob.is_clean()


def test_conflicted_merge_finished_with_git_commit(team):
    alice, bob, _ = team
    mine, theirs = M(6), M(7)
    bob.commit("my model", {"pyproject.toml": manifest(mine)})
    publish(alice, manifest(theirs))
    stopped = bob.pull("--no-rebase")
    assert stopped.returncode != 0 and "CONFLICT" in stopped.stdout
    assert theirs.hash not in pending(bob)  # no hook fired for the stopped merge
    bob.write("pyproject.toml", manifest(mine, theirs))
    bob.git("add", "pyproject.toml")
    done = bob.git("commit", "--no-edit")
    assert pending(bob)[theirs.hash]["trigger"] == "post-commit", done.stderr
    assert mine.hash in pending(bob)  # bob's own model is missing on this machine too
    assert bob.is_clean()


def test_checkout_another_branch_and_back(team):
    alice, bob, _ = team
    c = M(8)
    alice.git("checkout", "-b", "feature")
    alice.commit("feature model", {"pyproject.toml": manifest(c)})
    alice.push()
    bob.git("fetch")
    switched = bob.checkout("feature")
    assert switched.returncode == 0
    assert pending(bob)[c.hash]["trigger"] == "post-checkout"
    bob.checkout("main")
    assert c.hash not in pending(bob)  # main does not need it
    assert bob.is_clean()


def test_file_checkout_starts_nothing(team):
    alice, bob, log = team
    bob.write("pyproject.toml", manifest(M(9)))
    restored = bob.git("checkout", "--", "pyproject.toml")
    assert restored.returncode == 0
    assert starts(log) == [] and pending(bob) == {}
    assert bob.is_clean()


def test_pull_that_does_not_touch_the_manifest_starts_no_python(team):
    alice, bob, log = team
    alice.commit("docs", {"README.md": "more\n"})
    alice.push()
    assert bob.pull().returncode == 0
    bob.git("checkout", "-b", "topic")  # same commit: same manifest
    bob.git("checkout", "main")
    assert starts(log) == []
    publish(alice, manifest(M(10)))
    assert bob.pull().returncode == 0
    assert len(starts(log)) == 1


def test_hooks_are_idempotent_across_events(team):
    alice, bob, log = team
    a = M(11)
    publish(alice, manifest(a))
    bob.pull()
    first = pending(bob)[a.hash]["when"]
    # Same manifest reached again through another event: nothing re-recorded, no Python.
    bob.git("checkout", "-b", "again")
    bob.git("commit", "--allow-empty", "-m", "noop")
    assert pending(bob)[a.hash]["when"] == first
    assert len(starts(log)) == 1


def test_clone_with_template_hooks(scenario: Scenario, cfd_env, monkeypatch):
    for key in ("CFD_MODELS_DIR", "CFD_INDEX"):
        monkeypatch.setenv(key, cfd_env[key])
    monkeypatch.setenv("CFD_ON_PULL", "defer")
    a = M(12)
    scenario.seed({"pyproject.toml": manifest(a)})
    installed = cfd("hooks", "install", "--global", "--python", sys.executable, cwd=scenario.root)
    assert installed.returncode == 0, installed.stderr
    carol = scenario.clone("carol")
    assert carol.cloned.returncode == 0
    assert pending(carol)[a.hash]["trigger"] == "post-checkout"
    assert "cfd repair" in carol.cloned.stderr
    assert carol.is_clean()
    status = cfd("hooks", "status", cwd=carol.path)
    assert status.returncode == 0 and "installed" in status.stdout


def test_linked_worktree(team):
    alice, bob, _ = team
    a, c = M(13), M(14)
    publish(alice, manifest(a))
    alice.git("checkout", "-b", "feature")
    alice.commit("feature model", {"pyproject.toml": manifest(a, c)})
    alice.push()
    bob.git("fetch")
    wt = bob.path.parent / "bob-wt"
    added = bob.git("worktree", "add", wt, "origin/main")
    assert added.returncode == 0
    assert pending(wt)[a.hash]["trigger"] == "post-checkout"  # the common hooks dir fired, state per worktree
    assert pending(bob) == {}
    moved = run(["git", "checkout", "-q", "--detach", "origin/feature"], wt)
    assert moved.returncode == 0
    assert c.hash in pending(wt)
    assert run(["git", "status", "--porcelain"], wt).stdout == ""


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True)


def test_broken_manifest_never_fails_git(team):
    alice, bob, _ = team
    broken = manifest(M(15)) + "\n<<<<<<< HEAD\nx = 1\n=======\nx = 2\n>>>>>>> theirs\n"
    sha = publish(alice, broken)
    pulled = bob.pull()
    assert pulled.returncode == 0
    assert "does not parse" in pulled.stderr and sha[:10] in pulled.stderr
    assert pending(bob) == {}
    alice.git("checkout", "-b", "broken-branch")
    alice.push()
    bob.git("fetch")
    bob.checkout("main~1")
    assert bob.checkout("origin/broken-branch").returncode == 0  # post-checkout's status is git's: still 0


def test_missing_cfd_installation_exits_0_with_one_line(team, tmp_path):
    alice, bob, _ = team
    cfd("hooks", "install", "--python", str(tmp_path / "gone" / "python"), cwd=bob.path)
    publish(alice, manifest(M(16)))
    bare_path = {"PATH": "/usr/bin:/bin"}  # git, sh; no cfd
    pulled = bob.pull(env=bare_path)
    assert pulled.returncode == 0
    lines = [line for line in pulled.stderr.splitlines() if line.startswith("cfd")]
    assert len(lines) == 1 and "not installed" in lines[0]
    alice.git("checkout", "-b", "other")
    alice.push()
    bob.git("fetch")
    assert bob.checkout("origin/other", env=bare_path).returncode == 0


def test_a_bad_download_setting_stops_the_hook_and_loses_nothing(served, cfd_env):
    alice, bob, _, server, model = served
    bob.git("config", "cfd.jobs", "lots")
    a = model(47)
    publish(alice, manifest(a))
    pulled = bob.pull()
    assert pulled.returncode == 0 and bob.is_clean()
    assert "cfd.jobs = 'lots' is not valid" in pulled.stderr and "Traceback" not in pulled.stderr
    assert server.requests == []
    entry = pending(bob)[a.hash]  # still to fetch, and why
    assert entry["reason"] == "failed" and "cfd.jobs" in entry["error"]


def test_a_bare_path_still_finds_a_working_installation(served, cfd_env):
    """A GUI git client runs hooks with a bare PATH: the hook calls the cfd recorded at install
    time, so the model is downloaded all the same."""
    alice, bob, _, server, model = served
    installed = cfd("hooks", "install", cwd=bob.path)  # this installation, as a user would run it
    assert installed.returncode == 0, installed.stderr
    a = model(46)
    publish(alice, manifest(a))
    bare = {"PATH": "/usr/bin:/bin"}  # git and sh; no cfd, no venv
    assert subprocess.run(["sh", "-c", "command -v cfd"], env={**os.environ, **bare}, capture_output=True).returncode != 0
    pulled = bob.pull(env=bare)
    assert pulled.returncode == 0, pulled.stderr
    assert on_disk(cfd_env, a), pulled.stderr
    assert server.bytes_sent(f"/{a.name}") == a.size
    assert pending(bob) == {}


@pytest.mark.parametrize("how", ["CFD_SKIP", "config"])
def test_hooks_can_be_turned_off(team, how):
    alice, bob, log = team
    env = {"CFD_SKIP": "1"} if how == "CFD_SKIP" else None
    if how == "config":
        bob.git("config", "cfd.hooks.enabled", "false")
    publish(alice, manifest(M(17)))
    assert bob.pull(env=env).returncode == 0
    assert pending(bob) == {}
    if how == "CFD_SKIP":
        assert starts(log) == []


@pytest.mark.parametrize(
    "strategy, deferred, filtered",
    [("required", {"req"}, {"opt", "flex"}), ("all", {"req", "opt", "flex"}, set()), ("skip", set(), {"req", "opt", "flex"})],
)
def test_defer_mode_records_per_strategy(team, strategy, deferred, filtered):
    alice, bob, _ = team
    models = {"req": M(20, "required"), "opt": M(21, "optional"), "flex": M(22, "flexible"), "nosrc": M(23, source=None)}
    bob.git("config", "cfd.models", strategy)
    publish(alice, manifest(*models.values()))
    bob.pull()
    entries = pending(bob)
    reasons = {name: entries[m.hash]["reason"] for name, m in models.items()}
    assert {n for n, r in reasons.items() if r == "deferred"} == deferred
    assert {n for n, r in reasons.items() if r == "filtered"} == filtered
    assert reasons["nosrc"] == "no-source"


def test_models_already_present_are_not_recorded(team, cfd_env):
    alice, bob, _ = team
    a = M(25)
    models_dir = Path(cfd_env["CFD_MODELS_DIR"])
    (models_dir / a.relpath).parent.mkdir(parents=True, exist_ok=True)
    (models_dir / a.relpath).write_bytes(a.data)
    scanned = cfd("index", "scan", cwd=bob.path)
    assert scanned.returncode == 0, scanned.stderr
    publish(alice, manifest(a))
    pulled = bob.pull()
    assert pending(bob) == {}
    assert "cfd repair" not in pulled.stderr


def test_a_hook_that_syncs_loads_no_dataclasses(team, cfd_env, tmp_path):
    """A hook's time is mostly Python starting: its records are NamedTuples (a dataclass takes
    ~0.6 ms to create, and `dataclasses` loads inspect, ast and tokenize, ~10 ms); pygit2's enum
    classes (~8 ms) and tomllib (~4 ms: the fast reader took the changed entries) stay unloaded."""
    alice, bob, _ = team
    a, b = M(26), M(27)
    models_dir = Path(cfd_env["CFD_MODELS_DIR"])
    for m in (a, b):
        (models_dir / m.relpath).parent.mkdir(parents=True, exist_ok=True)
        (models_dir / m.relpath).write_bytes(m.data)
    assert cfd("index", "scan", cwd=bob.path).returncode == 0
    publish(alice, manifest(b))
    assert bob.pull().returncode == 0  # the usual pull then: a model line and an entry added
    python = tmp_path / "importtime-python"  # the hook's interpreter lists each module it loads
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -X importtime "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    assert cfd("hooks", "install", "--python", str(python), cwd=bob.path).returncode == 0
    publish(alice, manifest(b, a))
    pulled = bob.pull()
    loaded = {line.rsplit("|", 1)[-1].strip() for line in pulled.stderr.splitlines() if line.startswith("import time:")}
    assert {"cfd.core.sync.pullsync", "cfd.core.store.index"} <= loaded  # it did sync: diffed, checked the index
    assert pending(bob) == {}
    assert not loaded & {"dataclasses", "inspect", "ast", "pygit2.enums", "tomllib"}


# -- download mode (real HTTP) -----------------------------------------------------------

@pytest.fixture
def served(team, monkeypatch):
    """The team, a ModelServer, and models whose sources point at it (download mode)."""
    from helpers.faults import ModelServer

    monkeypatch.delenv("CFD_ON_PULL")
    monkeypatch.setenv("CFD_ALLOW_PRIVATE_NETWORKS", "true")
    monkeypatch.setenv("CFD_RETRIES", "1")
    with ModelServer() as server:

        def model(seed: int, criticality: str = "required", size: int = 64 * 1024) -> M:
            m = M(seed, criticality, size, source=server.url("/") + "{name}")
            server.add_file(f"/{m.name}", m.data)
            return m

        yield (*team, server, model)


def on_disk(cfd_env: dict[str, str], m: M) -> bool:
    path = Path(cfd_env["CFD_MODELS_DIR"]) / m.relpath
    return path.is_file() and path.read_bytes() == m.data


def gc_logger(tmp_path: Path) -> tuple[Path, Path]:
    """An "interpreter" for the hook that logs each cyclic collection it runs: while Python
    starts, once the sync has begun, or once the download engine (requests) is loaded."""
    log = tmp_path / "collections.log"
    probe = tmp_path / "gc_probe.py"
    probe.write_text(
        "import gc, runpy, sys\n"
        "def note(phase, info):\n"
        "    if phase == 'start':\n"
        "        when = 'download' if 'requests' in sys.modules else 'sync' if 'cfd.core.environment' in sys.modules else 'start'\n"
        f"        with open({str(log)!r}, 'a') as f: f.write(when + '\\n')\n"
        "gc.callbacks.append(note)\n"
        "at = sys.argv.index('-m')\n"  # the shim's `python -P -m cfd.hooks.runtime hook args`
        "module = sys.argv[at + 1]\n"
        "sys.argv = [module, *sys.argv[at + 2:]]\n"
        "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
    )
    wrapper = tmp_path / "gc-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{probe}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper, log


def test_a_hook_collects_cycles_only_once_it_downloads(served, cfd_env, tmp_path):
    """Planning allocates ~100k objects and frees them by reference counting: the cyclic
    collector stays off for it (~6 ms of a 10,000-model hook). Downloads run for minutes, with
    threads and retries: their memory stays bounded, the collector is on again."""
    alice, bob, _, server, model = served
    python, log = gc_logger(tmp_path)
    assert cfd("hooks", "install", "--python", str(python), cwd=bob.path).returncode == 0
    first, second = model(45), model(46)
    bob.git("config", "cfd.onPull", "defer")
    publish(alice, manifest(first))
    assert bob.pull().returncode == 0 and set(pending(bob)) == {first.hash}  # it synced: the hook ran
    assert "sync" not in log.read_text().split()  # none while it read the manifests and planned
    bob.git("config", "--unset", "cfd.onPull")
    publish(alice, manifest(first, second))
    pulled = bob.pull()
    assert pulled.returncode == 0 and on_disk(cfd_env, second), pulled.stderr
    assert "download" in log.read_text().split()


@pytest.mark.parametrize("strategy", ["required", "all", "skip"])
def test_download_mode_fetches_what_the_strategy_selects(served, cfd_env, strategy):
    alice, bob, _, server, model = served
    req, opt = model(40), model(41, "optional")
    if strategy != "required":
        bob.git("config", "cfd.models", strategy)
    publish(alice, manifest(req, opt))
    pulled = bob.pull()
    assert pulled.returncode == 0, pulled.stderr
    expected = {"required": {req}, "all": {req, opt}, "skip": set()}[strategy]
    assert {m for m in (req, opt) if on_disk(cfd_env, m)} == expected
    left = pending(bob)
    assert set(left) == {m.hash for m in (req, opt) if m not in expected}
    assert all(entry["reason"] == "filtered" for entry in left.values())
    if expected:
        assert "downloaded" in pulled.stderr
    summary = [line for line in pulled.stderr.splitlines() if "new model(s) needed" in line]
    assert len(summary) == 1 and ("`cfd repair`" in summary[0]) == bool(left)
    assert bob.is_clean()
    assert "Traceback" not in pulled.stderr


def test_a_file_already_on_disk_is_indexed_not_downloaded_by_the_hook(served, cfd_env):
    alice, bob, _, server, model = served
    here, fetch = model(43), model(44)
    path = Path(cfd_env["CFD_MODELS_DIR"]) / here.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(here.data)  # copied in by hand, never scanned
    publish(alice, manifest(here, fetch))
    pulled = bob.pull()
    assert pulled.returncode == 0, pulled.stderr
    lines = [line for line in pulled.stderr.splitlines() if line.startswith("cfd: ")]
    assert lines == [
        "cfd: downloading 1 model(s) (Ctrl-C stops; `cfd repair` resumes)",
        f"cfd: [1/1] {fetch.name}",
        f"cfd: {fetch.name}: ok",
        "cfd: 2 new model(s) needed; 1 downloaded; 1 found on disk, indexed",
    ]
    assert server.requests_for(f"/{here.name}") == [] and pending(bob) == {}


def test_a_failed_download_is_recorded_and_git_succeeds(served, cfd_env):
    alice, bob, _, server, model = served
    bad = model(42)
    server.set_fault(f"/{bad.name}", status_always=404)
    publish(alice, manifest(bad))
    pulled = bob.pull()
    assert pulled.returncode == 0
    assert pending(bob)[bad.hash]["reason"] == "failed"
    assert "1 failed" in pulled.stderr and "cfd repair" in pulled.stderr
    assert not on_disk(cfd_env, bad)


def test_a_stalled_server_does_not_hold_git(served, monkeypatch):
    alice, bob, _, server, model = served
    slow = model(43)
    server.set_fault(f"/{slow.name}", stall_after=1024)
    monkeypatch.setenv("CFD_STALL_TIMEOUT", "1")
    publish(alice, manifest(slow))
    pulled = bob.pull()
    assert pulled.returncode == 0
    assert pending(bob)[slow.hash]["reason"] == "failed"


def test_ctrl_c_during_a_hook_download_leaves_it_resumable(served, cfd_env):
    import signal
    import time

    alice, bob, _, server, model = served
    big = model(44, size=1024 * 1024)
    server.set_fault(f"/{big.name}", throttle=64 * 1024)
    publish(alice, manifest(big))
    pull = subprocess.Popen(
        ["git", "pull"], cwd=bob.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while not any(r.bytes_sent > 64 * 1024 for r in server.requests_for(f"/{big.name}")):
        assert time.monotonic() < deadline, "the hook never started downloading"
        time.sleep(0.05)
    os.killpg(pull.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    pull.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while pending(bob).get(big.hash, {}).get("reason") != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pending(bob)[big.hash]["reason"] == "interrupted"
    server.clear_faults()
    repaired = cfd("repair", "--yes", cwd=bob.path)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert on_disk(cfd_env, big)
    assert pending(bob) == {}


def test_background_mode_starts_the_agent_which_downloads(served, cfd_env):
    import time

    alice, bob, _, server, model = served
    a = model(45)
    bob.git("config", "cfd.onPull", "background")
    publish(alice, manifest(a))
    try:
        started = time.monotonic()
        pulled = bob.pull()
        assert time.monotonic() - started < 10  # returned at once
        assert pulled.returncode == 0
        assert "background" in pulled.stderr
        deadline = time.monotonic() + 60
        while not on_disk(cfd_env, a) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert on_disk(cfd_env, a), cfd("agent", "status", cwd=bob.path).stdout
    finally:
        cfd("agent", "stop", cwd=bob.path)


def test_live_hook_progress_keeps_its_own_codes_and_sanitises_names() -> None:
    """Under `cfd hook-run` stderr is the CLI's sanitising stream: the hook's own \\r and
    erase-line codes must still reach the terminal, a manifest's escape codes must not."""
    import io

    from cfd.core.text import SanitizingStream
    from cfd.hooks.progress import HookProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    progress = HookProgress(SanitizingStream(terminal))  # type: ignore[arg-type]
    name = "\x1b]0;pwned\x07m.safetensors"
    progress.on_file_start(name, 1, 1)
    progress.on_file_complete(name, True, None)
    shown = terminal.getvalue()
    assert "\r\033[K" in shown and "\x1b]" not in shown and "\\u001b]0;pwned" in shown
