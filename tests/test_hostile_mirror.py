"""A mirror is a shared bucket: anyone with write access (or a bit flip) may put anything in it.

Nothing read from it is trusted: a consistent forgery (a blob and an alias that agree with each
other, not with the manifest) is refused and the origin used; a malformed alias is ignored; with
cfd.mirror.only nothing unverified is ever placed; the private-address allowance covers the
mirror's own presigned URLs, never a manifest URL on the same host; credentials never leak.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from blake3 import blake3
from helpers import Scenario
from helpers.chaos import MIB, manifest, model_files, run_cfd, serve
from helpers.s3mirror import (ACCESS_KEY, BUCKET, PREFIX, SECRET_KEY, RcloneS3, alice_publishes, assert_placed,
                              delete_object, machine, models_of)
from helpers.s3mirror import _no_aws_from_outside, mirror, origin  # noqa: F401 - fixtures

from cfd.demo.content import generate_model_bytes
from helpers.faults import ModelServer

pytestmark = pytest.mark.timeout(240)


def forge(mirror: RcloneS3, short: str, size: int, data: bytes, alias: bytes | None = None) -> None:
    """Put `data` in the bucket as if it were the model (short, size), with an alias that agrees with it."""
    digest = blake3(data).hexdigest()
    base = mirror.root / BUCKET / PREFIX
    (base / "blobs" / "blake3").mkdir(parents=True, exist_ok=True)
    (base / "blobs" / "blake3" / digest).write_bytes(data)
    (base / "aliases" / "comfydock").mkdir(parents=True, exist_ok=True)
    body = alias if alias is not None else json.dumps({
        "format": "cfd-mirror-alias/1", "dialect": "comfydock", "short_hash": short, "size": size, "blake3": digest, "sha256": None,
        "blob": f"blobs/blake3/{digest}", "filenames": ["x"], "sources": []}).encode()
    (base / "aliases" / "comfydock" / f"{short}-{size}.json").write_bytes(body)


def test_a_consistent_forgery_is_refused_and_the_origin_used(tmp_path: Path, scenario: Scenario, origin: ModelServer,
                                                              mirror: RcloneS3) -> None:
    m = serve(origin, "real.safetensors", 5, 6 * MIB + 1)
    forge(mirror, m.hash, m.size, generate_model_bytes(999, m.size))  # same size, other bytes
    clone = scenario.clone("bob")
    clone.commit("models", {"pyproject.toml": manifest([m]).render()})
    env = machine(tmp_path, "bob", mirror.env())
    done = run_cfd("repair", "--yes", cwd=clone.path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_placed(env, [m])
    assert "mirror copy refused" in done.stdout + done.stderr and "does not match the manifest" in done.stdout + done.stderr
    assert origin.bytes_sent() >= m.size


OTHER_DIALECT = b"other dialect"  # a well-formed alias, but it says its key is a ComfyGit (xxh3) one


@pytest.mark.parametrize("alias", [b"not json", b"{" + b" " * (200 * 1024) + b"}", b'{"format": "cfd-mirror-alias/1"}',
                                   b'{"format": "cfd-mirror-alias/1", "blake3": "../../etc/passwd"}', OTHER_DIALECT])
def test_a_malformed_alias_is_ignored(alias: bytes, tmp_path: Path, scenario: Scenario, origin: ModelServer,
                                      mirror: RcloneS3) -> None:
    m = serve(origin, "real.safetensors", 6, 2 * MIB + 5)
    if alias == OTHER_DIALECT:
        digest = blake3(m.data).hexdigest()
        alias = json.dumps({"format": "cfd-mirror-alias/1", "dialect": "comfygit", "short_hash": m.hash, "size": m.size,
                            "blake3": digest, "sha256": None, "blob": f"blobs/blake3/{digest}", "filenames": ["x"],
                            "sources": []}).encode()
    forge(mirror, m.hash, m.size, m.data, alias=alias)
    clone = scenario.clone("bob")
    clone.commit("models", {"pyproject.toml": manifest([m]).render()})
    env = machine(tmp_path, "bob", mirror.env(), {"CFD_MIRROR_PUBLISH": "false"})
    done = run_cfd("repair", "--yes", cwd=clone.path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_placed(env, [m])
    assert "not a valid alias" in done.stdout + done.stderr
    assert origin.bytes_sent() >= m.size  # the mirror's copy was not used on the strength of a bad alias


def test_mirror_only_never_places_a_forgery(tmp_path: Path, scenario: Scenario, origin: ModelServer,
                                            mirror: RcloneS3) -> None:
    m = serve(origin, "real.safetensors", 7, 3 * MIB + 2)
    forge(mirror, m.hash, m.size, generate_model_bytes(998, m.size))
    clone = scenario.clone("bob")
    clone.commit("models", {"pyproject.toml": manifest([m]).render()})
    env = machine(tmp_path, "bob", mirror.env(), {"CFD_MIRROR_ONLY": "true"})
    done = run_cfd("repair", "--yes", cwd=clone.path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert model_files(models_of(env)) == {}  # nothing placed, no partial file among the models
    assert origin.requests == []  # and the origin was never contacted


def test_the_mirrors_private_address_is_not_opened_to_manifest_urls(tmp_path: Path, scenario: Scenario,
                                                                    origin: ModelServer, mirror: RcloneS3) -> None:
    m = serve(origin, "m.safetensors", 8, 2 * MIB + 1)
    alice_publishes(tmp_path, scenario, origin, mirror, [m])
    # A teammate's manifest points a model at the mirror's (loopback) endpoint: the allowance is for
    # URLs cfd presigned itself, so this one is refused like any private address.
    other = serve(origin, "other.safetensors", 9, MIB + 3)
    other.url = f"{mirror.endpoint}/{BUCKET}/{PREFIX}/aliases/"
    clone = scenario.clone("bob")
    clone.commit("models", {"pyproject.toml": manifest([other]).render()})
    env = machine(tmp_path, "bob", mirror.env(), {"CFD_ALLOW_PRIVATE_NETWORKS": "false"})
    done = run_cfd("repair", "--yes", cwd=clone.path, env=env)
    assert done.returncode == 1
    assert "loopback, private or link-local" in done.stdout + done.stderr


def test_credentials_never_leak(tmp_path: Path, scenario: Scenario, origin: ModelServer, mirror: RcloneS3) -> None:
    m = serve(origin, "m.safetensors", 10, 4 * MIB + 1)
    env = alice_publishes(tmp_path, scenario, origin, mirror, [m])
    bob = scenario.clone("bob")
    bob_env = machine(tmp_path, "bob", mirror.env())
    outputs = [run_cfd(*args, cwd=bob.path, env=bob_env) for args in
               (["repair", "--yes", "--json"], ["mirror", "status", "--json"], ["mirror", "push"], ["config"],
                ["config", "--json"], ["status", "--json"], ["index", "list", "--json"])]
    text = "".join(o.stdout + o.stderr for o in outputs)
    for path in [*models_of(bob_env).rglob("*"), *(bob.path / ".git" / "cfd").rglob("*"), Path(bob_env["CFD_INDEX"])]:
        if path.is_file() and path.stat().st_size < 16 * MIB:
            text += path.read_bytes().decode("utf-8", "replace")
    assert SECRET_KEY not in text and ACCESS_KEY not in text and "X-Amz-Signature" not in text
    assert env  # Alice's machine published with the same credentials


@pytest.mark.parametrize("value", ["http://bucket", "s3://A", "s3://ok-bucket/../up", "s3://"])
def test_a_bad_mirror_setting_is_one_line(value: str, tmp_path: Path, scenario: Scenario) -> None:
    clone = scenario.clone("bob")
    clone.commit("environment", {"pyproject.toml": manifest([]).render()})
    env = machine(tmp_path, "bob", {"CFD_MIRROR": value})
    done = run_cfd("mirror", "status", cwd=clone.path, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("cfd: error: CFD_MIRROR") and len(done.stderr.strip().splitlines()) <= 2
    shown = run_cfd("config", cwd=clone.path, env=env)
    assert shown.returncode == 0 and "invalid" in shown.stdout


def test_a_blob_missing_from_the_mirror_never_marks_the_manifest_source_gone(
        tmp_path: Path, scenario: Scenario, origin: ModelServer, mirror: RcloneS3) -> None:
    m = serve(origin, "m.safetensors", 12, 2 * MIB + 9)
    alice_publishes(tmp_path, scenario, origin, mirror, [m])
    for key in mirror.objects():
        if "/blobs/" in key:
            delete_object(mirror, key)  # pruned by hand, alias left behind
    origin.set_fault(m.path, status_always=503)  # and the origin is down for now, not gone
    bob = scenario.clone("bob")
    env = machine(tmp_path, "bob", mirror.env(), {"CFD_RETRIES": "1"})
    done = run_cfd("repair", "--yes", cwd=bob.path, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "names a blob it does not hold" in done.stdout + done.stderr
    status = json.loads(run_cfd("status", "--json", cwd=bob.path, env=env).stdout)
    assert status["sources_gone"] == []  # a retry later may work: nobody is told to edit pyproject.toml
    origin.clear_faults(m.path)
    again = run_cfd("repair", "--yes", cwd=bob.path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_placed(env, [m])


def test_a_job_whose_hash_would_climb_out_of_the_prefix_never_reaches_the_mirror(
        tmp_path: Path, scenario: Scenario, origin: ModelServer, mirror: RcloneS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest parser only lets hex hashes through, but download_models is an API (ComfyDock calls it):
    a job keyed `../../..` would make the presigned alias path climb out of the prefix. Unescaped, an HTTP
    client normalises the dots away, the signature no longer matches, and the store's 403 would read as
    refused credentials: one crafted job would switch the mirror off for the whole batch. It is refused
    for that job alone, before any request; the next job still comes from the mirror."""
    from cfd.core.download.callbacks import DownloadCallbacks
    from cfd.core.download.engine import DownloadJob, DownloadOptions, download_models
    from cfd.core.mirror.config import MirrorConfig
    from cfd.core.mirror.reading import EngineMirror

    good = serve(origin, "good.safetensors", 14, 2 * MIB + 3)
    alice_publishes(tmp_path, scenario, origin, mirror, [good])
    for name, value in mirror.env().items():
        monkeypatch.setenv(name, value)
    climbing = "../../../evil/0123456789abcdef"
    notes: list[str] = []

    class Notes(DownloadCallbacks):
        def on_file_note(self, filename: str, message: str) -> None:
            notes.append(message)

    models = tmp_path / "carol-models"
    models.mkdir()
    jobs = [DownloadJob(climbing, "evil.safetensors", "checkpoints/evil.safetensors", 7, (), climbing),
            DownloadJob(good.hash, good.name, good.relpath, good.size, (good.url,), good.hash)]
    mirror_source = EngineMirror(MirrorConfig(BUCKET, PREFIX + "/", mirror.endpoint, False, False))
    evil, fetched = download_models(jobs, models_dir=models, index_path=tmp_path / "carol.db", callbacks=Notes(),
                                    options=DownloadOptions(allow_private_networks=True, mirror=mirror_source, jobs=1))
    assert not evil.success and not (models / "checkpoints" / "evil.safetensors").exists()
    assert any("refused to ask the mirror" in note for note in notes), notes
    assert not any("refused the credentials" in note or "mirror not used:" in note for note in notes), notes
    assert fetched.success and (fetched.source or "").startswith(f"s3://{BUCKET}/{PREFIX}/blobs/"), fetched
    assert (models / good.relpath).read_bytes() == good.data
