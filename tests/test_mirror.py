"""The team mirror on a real S3 server (`rclone serve s3`), with real clones, hooks and an origin server.

Alice downloads from the origin and publishes; Bob gets every model from the mirror with the
origin stopped; a corrupt mirror copy is refused for the origin; a SIGKILL mid-mirror-download
resumes; `cfd mirror push` uploads what is missing and nothing twice; a mirror with bad
credentials or no server is one line and the origin is used; without a mirror no hook imports boto3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Scenario
from helpers.chaos import MIB, Served, manifest, run_cfd, serve, spawn_cfd, wait_until
from helpers.s3mirror import (PREFIX, SECRET_KEY, RcloneS3, alice_publishes, assert_placed, blobs_and_aliases,
                              free_port, machine, models_of)
from helpers.s3mirror import _no_aws_from_outside, mirror, origin  # noqa: F401 - fixtures

from helpers.faults import ModelServer

pytestmark = pytest.mark.timeout(240)


def three_models(origin: ModelServer) -> list[Served]:
    # One over the 64 MiB multipart threshold (uploaded in parts, fetched on several connections).
    return [serve(origin, "big.safetensors", 1, 70 * MIB + 5), serve(origin, "vae.safetensors", 2, 9 * MIB + 3, "vae"),
            serve(origin, "lora.safetensors", 3, 3 * MIB + 1, "loras")]


def test_alice_publishes_and_bob_pulls_everything_from_the_mirror_with_the_origin_stopped(
        tmp_path: Path, scenario: Scenario, origin: ModelServer, mirror: RcloneS3, both_dialects: str) -> None:
    """In both dialects: each keys its aliases by its own short hash (blake3 or xxh3 samples)."""
    models = three_models(origin)
    scenario.seed({"pyproject.toml": manifest([]).render()})
    bob = scenario.clone("bob")
    # Bob: hooks installed, the mirror configured, and no private networks allowed (the mirror is
    # user-configured, so its loopback address is reachable; a manifest URL's would not be).
    bob_env = machine(tmp_path, "bob", mirror.env(), {"CFD_ALLOW_PRIVATE_NETWORKS": "false", "CFD_MODELS": "all"})
    installed = run_cfd("hooks", "install", cwd=bob.path, env=bob_env)
    assert installed.returncode == 0, installed.stderr

    alice_publishes(tmp_path, scenario, origin, mirror, models)
    assert origin.bytes_sent() >= sum(m.size for m in models)
    blobs, aliases = blobs_and_aliases(mirror)
    assert len(blobs) == 3 and len(aliases) == 3, (blobs, aliases)
    for m in models:  # each blob is the file itself, under its full BLAKE3
        from blake3 import blake3

        assert (mirror.objects()[f"{PREFIX}/blobs/blake3/{blake3(m.data).hexdigest()}"]).read_bytes() == m.data
        alias = json.loads(mirror.objects()[f"{PREFIX}/aliases/{both_dialects}/{m.hash}-{m.size}.json"].read_text())
        assert alias["dialect"] == both_dialects and alias["size"] == m.size and m.name in alias["filenames"] and m.url in alias["sources"]

    origin.stop()  # from here on, only the mirror can serve anything
    pulled = bob.pull(env=bob_env)
    assert pulled.returncode == 0, pulled.stderr
    assert_placed(bob_env, models, pulled.stdout + pulled.stderr)  # every required model, verified against the manifest and byte-identical
    status = run_cfd("status", "--json", cwd=bob.path, env=bob_env)
    assert status.returncode == 0, status.stdout + status.stderr
    listed = json.loads(run_cfd("index", "list", "--json", cwd=bob.path, env=bob_env).stdout)
    sources = [s for entry in listed for s in entry.get("sources", [])]
    assert sources and all(s.startswith("s3://team-models/studio/blobs/blake3/") for s in sources), sources

    shown = run_cfd("mirror", "status", "--json", cwd=bob.path, env=bob_env)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["in_mirror"] == 3 and report["missing_from_mirror"] == []
    assert report["bytes_in_mirror"] == sum(m.size for m in models)


def test_a_corrupt_mirror_blob_is_refused_and_the_origin_used(tmp_path: Path, scenario: Scenario, origin: ModelServer,
                                                               mirror: RcloneS3) -> None:
    models = [serve(origin, "m.safetensors", 7, 40 * MIB + 9)]
    alice_publishes(tmp_path, scenario, origin, mirror, models)
    blob = mirror.objects()[blobs_and_aliases(mirror)[0][0]]
    data = bytearray(blob.read_bytes())
    data[20 * MIB] ^= 0xFF  # outside the short hash's samples: only the full BLAKE3 can tell
    blob.write_bytes(bytes(data))
    before = origin.bytes_sent()

    bob = scenario.clone("bob")
    bob_env = machine(tmp_path, "bob", mirror.env())
    done = run_cfd("repair", "--yes", cwd=bob.path, env=bob_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_placed(bob_env, models)
    assert origin.bytes_sent() - before >= models[0].size  # the origin served it
    assert "mirror copy refused" in done.stdout + done.stderr
    assert blob.read_bytes() == bytes(data)  # a reader never writes to the mirror's existing objects


def test_sigkill_during_a_mirror_download_resumes(tmp_path: Path, scenario: Scenario, origin: ModelServer,
                                                  mirror: RcloneS3) -> None:
    models = [serve(origin, "slow.safetensors", 11, 48 * MIB + 1)]
    alice_publishes(tmp_path, scenario, origin, mirror, models)
    origin.stop()
    slow = RcloneS3(mirror.root, bwlimit="8M").start()  # the same bucket, served slowly enough to be killed
    try:
        bob = scenario.clone("bob")
        bob_env = machine(tmp_path, "bob", slow.env(), {"CFD_CONNECTIONS": "1"})
        sidecar = models_of(bob_env) / ".cfd" / "staging" / f"{models[0].hash}.json"

        def staged() -> int:
            try:
                return sum(seg[2] for seg in json.loads(sidecar.read_text())["segments"])
            except (OSError, ValueError, KeyError):
                return 0

        proc = spawn_cfd("repair", "--yes", cwd=bob.path, env=bob_env)
        wait_until(lambda: staged() >= 8 * MIB, 60, "8 MiB of the mirror download to be checkpointed")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        kept = staged()
        assert json.loads(sidecar.read_text())["source"].startswith("s3://team-models/studio/blobs/blake3/")
        assert not (models_of(bob_env) / models[0].relpath).exists()

        done = run_cfd("repair", "--yes", "--json", cwd=bob.path, env=bob_env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert_placed(bob_env, models)
        fetched = sum(o.get("bytes_fetched", 0) for o in json.loads(done.stdout)["downloaded"])
        assert fetched <= models[0].size - kept + 4 * MIB, (fetched, kept)  # resumed, not started over
    finally:
        slow.stop()


def test_push_after_a_plain_index_scan_uploads_what_is_missing_and_nothing_twice(
        tmp_path: Path, scenario: Scenario, origin: ModelServer, mirror: RcloneS3) -> None:
    models = [serve(origin, "a.safetensors", 21, 66 * MIB + 1), serve(origin, "b.safetensors", 22, 2 * MIB + 7, "vae")]
    clone = scenario.clone("carol")
    env = machine(tmp_path, "carol", mirror.env())
    clone.commit("models", {"pyproject.toml": manifest(models[:1]).render()})
    for m in models:  # copied in by hand, then indexed: the index knows no full hash yet
        path = models_of(env) / m.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(m.data)
    scanned = run_cfd("index", "scan", cwd=clone.path, env=env)
    assert scanned.returncode == 0, scanned.stderr

    first = run_cfd("mirror", "push", "--json", cwd=clone.path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["uploaded"] == [models[0].relpath], first.stdout + first.stderr
    assert len(blobs_and_aliases(mirror)[0]) == 1, blobs_and_aliases(mirror)
    blob = next(iter(p for k, p in mirror.objects().items() if "/blobs/" in k))
    stamp = blob.stat().st_mtime_ns

    clone.commit("another model", {"pyproject.toml": manifest(models).render()})
    second = run_cfd("mirror", "push", "--json", cwd=clone.path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    result = json.loads(second.stdout)
    assert result["uploaded"] == [models[1].relpath] and result["present"] == [models[0].relpath], result
    assert result["bytes_uploaded"] == models[1].size, result
    assert blob.stat().st_mtime_ns == stamp  # the first blob was not sent again
    blobs, aliases = blobs_and_aliases(mirror)
    assert len(blobs) == 2 and len(aliases) == 2, (blobs, aliases)

    third = run_cfd("mirror", "push", cwd=clone.path, env=env)
    assert third.returncode == 0 and "uploaded 0 model(s)" in third.stdout and "2 already there" in third.stdout, (
        third.stdout + third.stderr)


@pytest.mark.parametrize("trouble", ["bad credentials", "unreachable endpoint"])
def test_a_broken_mirror_is_one_clear_line_and_the_origin_is_used(trouble: str, tmp_path: Path, scenario: Scenario,
                                                                   origin: ModelServer, mirror: RcloneS3) -> None:
    models = [serve(origin, f"m{i}.safetensors", 30 + i, (i + 1) * MIB + 3) for i in range(3)]
    clone = scenario.clone("dave")
    clone.commit("models", {"pyproject.toml": manifest(models).render()})
    overlay = (mirror.env(secret="wrong-secret") if trouble == "bad credentials"
               else mirror.env(endpoint=f"http://127.0.0.1:{free_port()}"))
    env = machine(tmp_path, "dave", overlay)
    done = run_cfd("repair", "--yes", cwd=clone.path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_placed(env, models)
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if "mirror" in line]
    expected = "refused the credentials" if trouble == "bad credentials" else "is unreachable"
    assert len([line for line in lines if expected in line]) == 1, output
    assert "Traceback" not in output and SECRET_KEY not in output and "wrong-secret" not in output
    assert mirror.objects() == {}  # and nothing was published with refused credentials


HOOK_IMPORTS = """
import sys
from cfd.core.environment import open_environment
from cfd.core.sync.pullsync import sync_between
env = open_environment(sys.argv[1])
out = sync_between(env, sys.argv[2], "HEAD", trigger="post-merge", time_budget=120)
print(len(out.downloaded), "boto3" in sys.modules)
"""


@pytest.mark.parametrize("case", ["no mirror, downloads", "mirror, nothing to do", "mirror, downloads",
                                  "mirror holds it, downloads", "mirror holds it, profile credentials"])
def test_boto3_is_imported_only_when_a_mirror_is_set_and_used(case: str, tmp_path: Path, scenario: Scenario,
                                                               origin: ModelServer, mirror: RcloneS3) -> None:
    """A pull served by the mirror presigns its reads itself (environment credentials); boto3 comes in to
    publish what came from an origin, or to read with credentials only boto3's chain finds (a profile)."""
    models = [] if case == "mirror, nothing to do" else [serve(origin, "m.safetensors", 41, 2 * MIB + 1)]
    scenario.seed({"pyproject.toml": manifest([]).render()})
    clone = scenario.clone("erin")
    old = clone.head()
    overlay = mirror.env() if case.startswith("mirror") else {}
    if case.startswith("mirror holds it"):
        alice_publishes(tmp_path, scenario, origin, mirror, models)
        origin.stop()  # only the mirror can serve it now
    if case.endswith("profile credentials"):
        shared = tmp_path / "aws-credentials"
        shared.write_text(f"[studio]\naws_access_key_id = {overlay.pop('AWS_ACCESS_KEY_ID')}\n"
                          f"aws_secret_access_key = {overlay.pop('AWS_SECRET_ACCESS_KEY')}\n")
        overlay.update({"AWS_PROFILE": "studio", "AWS_SHARED_CREDENTIALS_FILE": str(shared)})
    clone.commit("models", {"pyproject.toml": manifest(models).render() + "# changed\n"})
    env = machine(tmp_path, "erin", overlay, {"CFD_MODELS": "all"})
    ran = subprocess.run([sys.executable, "-c", HOOK_IMPORTS, str(clone.path), old], env=env, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    boto3_needed = case in ("mirror, downloads", "mirror holds it, profile credentials")
    assert ran.stdout.split() == [str(len(models)), str(boto3_needed)], ran.stdout + ran.stderr
    if case.startswith("mirror holds it"):
        assert_placed(env, models)
        listed = json.loads(run_cfd("index", "list", "--json", cwd=clone.path, env=env).stdout)
        assert [s for entry in listed for s in entry.get("sources", [])][0].startswith("s3://team-models/studio/blobs/")


def test_the_presigned_reads_are_what_boto3_would_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    """cfd's own SigV4 presigning (the read path without boto3) against boto3's, same clock, odd keys and a token."""
    import datetime

    import boto3
    import botocore.auth
    from botocore.config import Config

    from cfd.core.mirror.sigv4 import Credentials, presign

    fixed = datetime.datetime(2026, 3, 1, 23, 59, 58, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: fixed.replace(tzinfo=None))
    for endpoint, token in (("http://127.0.0.1:9000", None), ("https://s3.example.org", "tok/en+=="),
                            ("http://[::1]:80/base", None), ("https://Store.Example.org:8443", "t")):
        client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-3", aws_access_key_id="AKIDEXAMPLE",
                              aws_secret_access_key="wJalr/K7MDENG+bPxRfi", aws_session_token=token,
                              config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        for key in ("studio/aliases/comfydock/0123456789abcdef-5.json", "a b/ü?x#y%z&=+~!*()'", "blobs/blake3/" + "f" * 64):
            for method, operation in (("GET", "get_object"), ("HEAD", "head_object")):
                theirs = client.generate_presigned_url(operation, Params={"Bucket": "team-models", "Key": key}, ExpiresIn=21600)
                ours = presign(method, endpoint, "team-models", key, Credentials("AKIDEXAMPLE", "wJalr/K7MDENG+bPxRfi", token),
                               "eu-west-3", 21600, now=fixed.timestamp())
                assert ours == theirs, (endpoint, key, method)
    assert "wJalr" not in repr(Credentials("AKIDEXAMPLE", "wJalr/K7MDENG+bPxRfi", "tok"))


def test_a_model_without_sources_that_the_mirror_has_is_downloadable(tmp_path: Path, scenario: Scenario,
                                                                      origin: ModelServer, mirror: RcloneS3) -> None:
    from helpers.manifest import ManifestBuilder

    kept = serve(origin, "studio-only.safetensors", 51, 5 * MIB + 3)  # its origin took it down; the studio kept a copy
    gone = serve(origin, "lost.safetensors", 52, MIB + 1)  # nobody kept this one
    builder = ManifestBuilder()
    for number, m in enumerate((kept, gone)):
        builder.model(m.hash, m.name, m.size, m.relpath, m.category, [])
        builder.ref("wf1", m.name, m.category, hash=m.hash, criticality="required", status="resolved", node_id=str(number))
    carol = scenario.clone("carol")
    carol.commit("models", {"pyproject.toml": builder.render()})
    carol_env = machine(tmp_path, "carol", mirror.env())
    path = models_of(carol_env) / kept.relpath
    path.parent.mkdir(parents=True)
    path.write_bytes(kept.data)
    assert run_cfd("index", "scan", cwd=carol.path, env=carol_env).returncode == 0
    pushed = run_cfd("mirror", "push", cwd=carol.path, env=carol_env)
    assert pushed.returncode == 0 and "uploaded 1 model(s)" in pushed.stdout, pushed.stdout + pushed.stderr
    carol.push()

    bob = scenario.clone("bob")
    bob_env = machine(tmp_path, "bob", mirror.env())
    status = json.loads(run_cfd("status", "--json", cwd=bob.path, env=bob_env).stdout)
    can = {m["filename"]: m["can_download"] for m in status["missing"]}
    assert can == {kept.name: True, gone.name: False}
    shown = json.loads(run_cfd("mirror", "status", "--json", cwd=bob.path, env=bob_env).stdout)
    assert shown["only_in_mirror"] == [kept.relpath] and shown["missing_from_mirror"] == [gone.relpath]
    repaired = run_cfd("repair", "--yes", cwd=bob.path, env=bob_env)
    assert repaired.returncode == 1  # the lost model is still unavailable
    assert_placed(bob_env, [kept], repaired.stdout + repaired.stderr)
    assert "Still unavailable (no source): 1" in repaired.stdout and gone.relpath in repaired.stdout
    assert origin.requests == []


def test_a_hook_with_refused_mirror_credentials_says_one_line_and_the_pull_gets_the_origin(
        tmp_path: Path, scenario: Scenario, origin: ModelServer, mirror: RcloneS3) -> None:
    models = [serve(origin, f"h{i}.safetensors", 60 + i, (i + 2) * MIB + 1) for i in range(3)]
    scenario.seed({"pyproject.toml": manifest([]).render()})
    bob = scenario.clone("bob")
    env = machine(tmp_path, "bob", mirror.env(secret="wrong-secret"), {"CFD_MODELS": "all"})
    assert run_cfd("hooks", "install", cwd=bob.path, env=env).returncode == 0
    alice = scenario.clone("alice")
    alice.commit("models", {"pyproject.toml": manifest(models).render()})
    alice.push()
    pulled = bob.pull(env=env)
    assert pulled.returncode == 0 and bob.is_clean(), pulled.stderr  # a broken mirror never breaks git
    assert_placed(env, models, pulled.stdout + pulled.stderr)
    said = [line for line in (pulled.stdout + pulled.stderr).splitlines() if "mirror" in line]
    assert len(said) == 1 and "refused the credentials" in said[0], said
    assert "wrong-secret" not in pulled.stdout + pulled.stderr
