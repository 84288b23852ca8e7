"""Disk trouble, met through the real commands: a write failing mid-file, a read-only models
directory, an index database another program holds locked, a truncated or garbled marker.

Each time a user gets a clean one-line report (never a traceback, never "internal error"),
keeps what was already fetched, and the next run completes once the trouble is gone.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Clone, Scenario
from helpers.chaos import MIB, CFD, Served, check_invariants, manifest, report, run_cfd, serve, wait_until
from helpers.faults import ModelServer

from cfd.core.store.index import ModelIndex
from cfd.core.sync.marker import MARKER_NAME, Marker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


class Env:
    def __init__(self, scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
        self.scenario, self.server, self.models_dir = scenario, server, models_dir
        self.env = {**cfd_env, "CFD_STALL_TIMEOUT": "2", "CFD_RETRIES": "2", "CFD_CONNECTIONS": "1"}
        self.index = Path(cfd_env["CFD_INDEX"])
        self.models: list[Served] = []
        self.clone: Clone

    def environment(self, *models: Served) -> Clone:
        self.models = list(models)
        self.clone = self.scenario.clone("bob")
        self.clone.commit("environment", {"pyproject.toml": manifest(models).render()})
        return self.clone

    @property
    def git_dir(self) -> Path:
        return self.clone.path / ".git"

    def repair(self, *argv: str, extra: dict[str, str] | None = None, **popen: Any) -> tuple[int, dict[str, Any], str]:
        result = subprocess.run([*(argv or CFD), "repair", "--yes", "--json"], cwd=self.clone.path,
                                env={**self.env, **(extra or {})},
                                capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, **popen)
        clean_stderr(result.stderr)
        return result.returncode, json.loads(result.stdout), result.stderr

    def check(self, complete: bool = False) -> dict[str, Any]:
        return check_invariants(self.models_dir, self.index, [self.git_dir], self.models, complete=complete)

    def marker(self) -> dict[str, Any]:
        return {e.key: e for e in Marker(self.git_dir).read()}


def clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr and "unexpected error" not in stderr, stderr


def failure_of(data: dict[str, Any], m: Served) -> str:
    failed = {f["hash"]: f["error"] for f in data["failed"]}
    assert m.hash in failed, data
    error = failed[m.hash]
    assert "\n" not in error and "unexpected error" not in error, error
    return error


@pytest.fixture
def env(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> Env:
    return Env(scenario, server, cfd_env, models_dir)


# --------------------------------------------------------------------------- a write failing mid-file


def size_limit(limit: int):  # type: ignore[no-untyped-def]
    def apply() -> None:  # in the child, before exec: both survive exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_write_failure_mid_file_keeps_the_partial_then_completes(env: Env) -> None:
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as a full disk would."""
    m = serve(env.server, "big.safetensors", 1, 10 * MIB)
    env.environment(m)
    ModelIndex(env.index, env.models_dir).close()  # the index must exist before the limit applies
    # A first run is cut off early (connection drop): a partial of ~1 MiB is staged.
    env.server.set_fault(m.path, close_after=MIB + 7, close_times=1)
    code, data, _ = env.repair(extra={"CFD_RETRIES": "1"})
    assert code == 1 and "closed" in failure_of(data, m)
    env.server.clear_faults()
    # The resumed run hits the size limit at 4 MiB: one clean line, the partial stays.
    limit = 4 * MIB
    code, data, _ = env.repair(preexec_fn=size_limit(limit))
    assert code == 1
    error = failure_of(data, m)
    assert error.startswith("file too large for the file system while writing big.safetensors"), error
    assert "kept" in error
    assert env.marker()[m.hash].reason == "failed" and "file too large" in (env.marker()[m.hash].error or "")
    facts = env.check()
    assert facts["partials"] == [f"{m.hash}.part"]
    sidecar = json.loads((env.models_dir / ".cfd" / "staging" / f"{m.hash}.json").read_text())
    kept = sum(seg[2] for seg in sidecar["segments"])
    # Everything written before the failure is remembered, but the one read cut by the limit.
    assert limit - MIB <= kept <= limit, kept
    # The limit is lifted: the next run fetches only the rest.
    env.server.reset_stats()
    code, data, _ = env.repair()
    assert code == 0, data
    env.check(complete=True)
    assert env.server.bytes_sent() == m.size - kept
    assert data["downloaded"][0]["bytes_fetched"] == m.size - kept
    report("disk-write-failure-mid-file", faults=1, kept_mib=round(kept / MIB, 2),
           refetched_mib=round((limit - kept) / MIB, 2))


def test_write_failure_on_a_fresh_download_is_one_clean_line(env: Env) -> None:
    m = serve(env.server, "fresh.safetensors", 2, 6 * MIB)
    env.environment(m)
    ModelIndex(env.index, env.models_dir).close()
    code, data, stderr = env.repair(preexec_fn=size_limit(2 * MIB))
    assert code == 1
    assert failure_of(data, m).startswith("file too large for the file system while writing fresh.safetensors")
    assert not (env.models_dir / m.relpath).exists()
    env.check()
    code, data, _ = env.repair()
    assert code == 0, data
    env.check(complete=True)


# --------------------------------------------------------------------------- the models directory refuses writes


RO_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _unshare_works() -> bool:
    """Whether this machine lets us bind-mount a folder read-only in a user+mount namespace."""
    if not shutil.which("unshare"):
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", RO_MOUNT, "sh", folder, "touch", f"{folder}/x"],
                               capture_output=True, timeout=10)
        return probe.returncode != 0 and b"Read-only" in probe.stderr and not os.path.exists(f"{folder}/x")


READ_ONLY_MOUNT = _unshare_works()


def test_read_only_models_directory(env: Env) -> None:
    """A read-only bind mount of the models dir (in a user+mount namespace) where the machine
    allows it; otherwise the models dir's own subfolder for cfd is a FILE, so nothing can be
    created in it (root ignores chmod, so chmod proves nothing here)."""
    m = serve(env.server, "ro.safetensors", 3, 2 * MIB)
    env.environment(m)
    ModelIndex(env.index, env.models_dir).close()
    if READ_ONLY_MOUNT:
        how = "read-only bind mount"
        argv = ["unshare", "-rm", "sh", "-c", RO_MOUNT, "sh", str(env.models_dir), *CFD]
        code, data, _ = env.repair(*argv)
    else:
        how = ".cfd is a file"
        (env.models_dir / ".cfd").write_text("in the way\n")
        code, data, _ = env.repair()
    assert code == 1
    error = failure_of(data, m)
    assert str(env.models_dir) in error and ("read-only" in error.lower() or "cannot" in error), error
    assert env.server.requests == []  # nothing fetched that could not be kept
    assert "ro.safetensors" not in {p.name for p in env.models_dir.rglob("*")}
    assert env.marker()[m.hash].reason == "failed"
    if not READ_ONLY_MOUNT:
        (env.models_dir / ".cfd").unlink()
    code, data, _ = env.repair()
    assert code == 0, data
    env.check(complete=True)
    report("disk-read-only-models-dir", how=how, faults=1, requests_while_read_only=0)


def test_category_folder_that_is_a_file(env: Env) -> None:
    """`checkpoints` is a regular file: the folder cannot be made. Said before any download."""
    m = serve(env.server, "blocked.safetensors", 4, 2 * MIB)
    other = serve(env.server, "fine.safetensors", 5, MIB, category="loras")
    env.environment(m, other)
    (env.models_dir / "checkpoints").write_text("a note someone saved here\n")
    code, data, _ = env.repair()
    assert code == 1
    error = failure_of(data, m)
    assert "checkpoints" in error and "is a file" in error
    assert env.server.requests_for(m.path) == []
    assert (env.models_dir / "checkpoints").read_text() == "a note someone saved here\n"  # untouched
    assert (env.models_dir / other.relpath).read_bytes() == other.data  # the others go on
    (env.models_dir / "checkpoints").unlink()
    code, data, _ = env.repair()
    assert code == 0, data
    env.check(complete=True)


# --------------------------------------------------------------------------- the index is locked


LOCKER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[3] == "rollback":
    con.execute("PRAGMA journal_mode=DELETE")
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


def hold_index(index: Path, seconds: float, journal: str) -> subprocess.Popen[str]:
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(index), str(seconds), journal], stdout=subprocess.PIPE,
                              text=True)
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


@pytest.mark.parametrize("journal", ["wal", "rollback"])
def test_index_locked_by_another_process_for_a_while(env: Env, journal: str) -> None:
    """ComfyDock (or anything) holds an exclusive transaction for 2 s: cfd waits and succeeds."""
    m = serve(env.server, "locked.safetensors", 6, 2 * MIB)
    env.environment(m)
    ModelIndex(env.index, env.models_dir).close()
    locker = hold_index(env.index, 2.0, journal)
    started = time.monotonic()
    status = run_cfd("status", cwd=env.clone.path, env=env.env)
    code, data, _ = env.repair()
    elapsed = time.monotonic() - started
    locker.wait(10)
    clean_stderr(status.stderr)
    assert status.returncode == 1 and "locked.safetensors" in status.stdout
    assert code == 0, data
    env.check(complete=True)
    report(f"disk-index-locked-{journal}", faults=1, seconds=round(elapsed, 1))


def test_index_locked_past_the_busy_timeout_fails_in_one_line(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held for longer than cfd waits (30 s; 1 s here): a clean error naming the index, not a crash."""
    import cfd.core.store.index as index_module
    from cfd.core.environment import open_environment
    from cfd.core.errors import CfdError
    from cfd.core.sync.repair import plan_repair
    from cfd.core.sync.status import compute_status

    m = serve(env.server, "locked.safetensors", 7, MIB)
    env.environment(m)
    ModelIndex(env.index, env.models_dir).close()
    monkeypatch.setattr(index_module, "BUSY_TIMEOUT_S", 1.0)
    locker = hold_index(env.index, 30.0, "rollback")
    try:
        environment = open_environment(env.clone.path, environ=env.env)
        for action in (lambda: compute_status(environment), lambda: plan_repair(environment)):
            with pytest.raises(CfdError) as caught:
                action()
            message = str(caught.value)
            assert "locked" in message and str(env.index) in message and "\n" not in message
    finally:
        locker.kill()
        locker.wait()


# --------------------------------------------------------------------------- the marker is damaged


DAMAGED = {
    "truncated": lambda good: good[: len(good) // 2],
    "not JSON": lambda good: b"this is not json\n",
    "binary": lambda good: b"\x00\xff\xfe garbage \x80",
    "empty": lambda good: b"",
    "wrong shape": lambda good: b'{"version": 1, "entries": [{"key": 5, "when": "yesterday"}]}',
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_damaged_marker_is_set_aside_and_rebuilt(env: Env, damage: str) -> None:
    m = serve(env.server, "pending.safetensors", 8, MIB)
    env.environment(m)
    run_cfd("repair", "--models", "skip", "--yes", cwd=env.clone.path, env=env.env)
    marker = env.git_dir / "cfd" / MARKER_NAME
    assert json.loads(marker.read_bytes())["entries"][0]["key"] == m.hash
    marker.write_bytes(DAMAGED[damage](marker.read_bytes()))

    status = run_cfd("status", cwd=env.clone.path, env=env.env)
    clean_stderr(status.stderr)
    assert status.returncode == 1 and "pending.safetensors" in status.stdout  # the truth does not depend on it
    assert len([line for line in status.stderr.splitlines() if "marker" in line]) == 1, status.stderr
    code, data, _ = env.repair()
    assert code == 0, data
    assert not marker.exists() or json.loads(marker.read_bytes())["entries"] == []
    aside = list((env.git_dir / "cfd").glob(f"{MARKER_NAME}.corrupt-*"))
    assert len(aside) == 1  # kept for a look, never silently lost
    report(f"disk-marker-{damage.replace(' ', '-')}", faults=1, survived=1)


def test_damaged_marker_during_a_hook_and_the_agent(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str],
                                                    models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CFD_MODELS_DIR", "CFD_INDEX", "CFD_ALLOW_PRIVATE_NETWORKS"):
        monkeypatch.setenv(key, cfd_env[key])
    monkeypatch.setenv("CFD_ON_PULL", "defer")
    environ = dict(os.environ)
    a, b = serve(server, "a.safetensors", 9, MIB), serve(server, "b.safetensors", 10, MIB)
    scenario.seed({"pyproject.toml": manifest([a]).render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=environ).returncode == 0
    marker = bob.path / ".git" / "cfd" / MARKER_NAME
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(b'{"version": 1, "entries": [{"key": "abc", ')
    alice.commit("b", {"pyproject.toml": manifest([a, b]).render()})
    alice.push()
    pulled = bob.pull()
    assert pulled.returncode == 0 and bob.is_clean()
    assert "Traceback" not in pulled.stderr
    assert "marker was corrupt" in pulled.stderr  # the hook says so, in one line
    assert set(json.loads(marker.read_bytes()) and {e["key"] for e in json.loads(marker.read_bytes())["entries"]}) == {b.hash}
    # The agent meets a garbled marker: it logs, sets it aside and goes on serving.
    marker.write_bytes(b"\xff\xfe not json")
    monkeypatch.setenv("CFD_ON_PULL", "background")
    agent = subprocess.Popen([*CFD, "agent", "run", "--settle", "0.2", "--git-debounce", "0.2"], cwd=bob.path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The agent looks at the marker once it starts: wait until it has set the garbled one aside,
        # or the pull below could meet it first (the hook sets it aside too).
        wait_until(lambda: len(list(marker.parent.glob(f"{MARKER_NAME}.corrupt-*"))) == 2 or agent.poll() is not None,
                   30, "the agent to set the garbled marker aside", poll=0.1)
        assert agent.poll() is None
        # The next pull hands a model to it: the marker is rewritten and the agent downloads.
        c = serve(server, "c.safetensors", 11, MIB)
        alice.commit("c", {"pyproject.toml": manifest([a, b, c]).render()})
        alice.push()
        assert bob.pull().returncode == 0
        wait_until(lambda: (models_dir / c.relpath).is_file(), 30, "the agent to download c", poll=0.1)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=20)
    assert agent.returncode == 0
    assert "Traceback" not in err
    assert "marker was corrupt" in err  # said in the agent's log, once it met it
    assert not marker.exists() or isinstance(json.loads(marker.read_bytes())["entries"], list)
    assert len(list(marker.parent.glob(f"{MARKER_NAME}.corrupt-*"))) == 2  # both damaged markers kept for a look
    status = run_cfd("status", cwd=bob.path, env=environ)
    assert status.returncode == 1 and "b.safetensors" in status.stdout  # the truth never depended on the marker


# --------------------------------------------------------------------------- a full disk under the environment


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 4 MiB file system (tmpfs) to fill up; needs root, as on the CI machine."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); this test needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` until only `leave` bytes are free."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


def test_full_disk_during_the_pyproject_write_back(small_disk: Path, server: ModelServer, cfd_env: dict[str, str],
                                                   models_dir: Path) -> None:
    """The downloads succeed (models on another disk), then the environment's disk is full when
    `cfd repair` writes the resolved hashes back: one clear line, the marker written, and the next
    run finishes the write-back."""
    from helpers import ManifestBuilder

    scenario = Scenario(small_disk / "repos")
    m = serve(server, "lora.safetensors", 12, MIB, category="loras")
    builder = ManifestBuilder().ref("wf1", m.name, "loras", criticality="required", status="unresolved",
                                    node_id="5", node_type="LoraLoader", sources=[m.url], relative_path=m.relpath)
    padding = "".join(f"# {'x' * 70}\n" for _ in range(800))  # ~58 KiB: more than the disk will have left
    clone = scenario.clone("bob")
    clone.commit("environment", {"pyproject.toml": builder.render() + padding})
    env = {**cfd_env, "CFD_RETRIES": "2", "CFD_CONNECTIONS": "1"}
    filler = fill(small_disk, 16 * 1024)
    result = run_cfd("repair", "--yes", cwd=clone.path, env=env)
    clean_stderr(result.stderr)
    assert (models_dir / m.relpath).read_bytes() == m.data  # the download itself worked
    lines = [line for line in result.stderr.splitlines() if "pyproject.toml" in line]
    assert len(lines) == 1 and "disk full" in lines[0] and "run `cfd repair` again" in lines[0], result.stderr
    assert result.returncode == 1
    assert 'status = "unresolved"' in clone.read("pyproject.toml")  # untouched, not half-written
    assert not [p for p in clone.path.iterdir() if p.name.endswith(".tmp")]
    marker = Marker(clone.path / ".git").read()
    assert [e.filename for e in marker] == [m.name] and "disk full" in (marker[0].error or "")
    # Space again: the next run writes the hash back without downloading anything.
    filler.unlink()
    server.reset_stats()
    result = run_cfd("repair", "--yes", cwd=clone.path, env=env)
    clean_stderr(result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.requests == [] and 'status = "unresolved"' not in clone.read("pyproject.toml")
    assert Marker(clone.path / ".git").read() == []
    report("disk-full-during-write-back", faults=1, survived=1)


def test_disk_filled_by_an_intent_of_unknown_size_keeps_nothing(small_disk: Path, env: Env) -> None:
    """An intent streamed without a length until the models disk is full (4 MiB tmpfs, default
    ceiling): one line, nothing placed, and no filler kept in staging for a later run to refill."""
    from helpers import ManifestBuilder

    from cfd.core.download.tensorfile import safetensors_bytes

    models = small_disk / "models"
    models.mkdir()
    url = env.server.add_file("/loras/filler.safetensors", safetensors_bytes(b"\1" * MIB))
    env.server.set_fault("/loras/filler.safetensors", no_length=True, extra_bytes=1 << 40)
    builder = ManifestBuilder().ref("wf1", "filler.safetensors", "loras", criticality="required", status="unresolved",
                                    node_id="5", node_type="LoraLoader", sources=[url], relative_path="loras/filler.safetensors")
    env.clone = env.scenario.clone("bob")
    env.clone.commit("environment", {"pyproject.toml": builder.render()})
    code, data, _ = env.repair(extra={"CFD_MODELS_DIR": str(models)})
    assert code == 1
    error = data["failed"][0]["error"]
    assert error.startswith("disk full while writing filler.safetensors") and "discarded" in error, error
    assert not (models / "loras" / "filler.safetensors").exists()
    assert os.listdir(models / ".cfd" / "staging") == []
    assert shutil.disk_usage(small_disk).free > 3 * MIB  # the space is given back
