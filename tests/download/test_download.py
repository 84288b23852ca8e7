"""The download engine against a real HTTP server on 127.0.0.1, real files, a real index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from helpers.chaos import Lines, wait_until
from helpers.faults import ModelServer

from cfd.demo.content import generate_model_bytes
from cfd.core.download.tensorfile import safetensors_bytes
from cfd.core.download.engine import (
    DownloadCallbacks,
    DownloadJob,
    DownloadOptions,
    DownloadOutcome,
    download_models,
    plan_segments,
    staging_name,
)
from cfd.core.store.index import ModelIndex
from cfd.core.store.shorthash import short_hash_bytes
from cfd.core.download.tokens import Tokens
from cfd.core.download.types import Ending

MIB = 1 << 20
REL = "checkpoints/m.safetensors"


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


@pytest.fixture
def trust_tls(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModelServer], ModelServer]:
    """Make requests trust a TLS ModelServer's certificate (tokens only go over https)."""
    def trust(srv: ModelServer) -> ModelServer:
        assert srv.ca_file
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", srv.ca_file)
        return srv
    return trust


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "models.db"


def fast_options(**overrides: Any) -> DownloadOptions:
    values: dict[str, Any] = dict(
        allow_private_networks=True, backoff_base=0.01, backoff_cap=0.05, stall_timeout=5.0,
        connect_timeout=2.0, segment_min=4 * MIB, checkpoint_bytes=MIB,
    )
    values.update(overrides)
    return DownloadOptions(**values)


def make_job(data: bytes, *sources: str, relpath: str = REL, **fields: Any) -> DownloadJob:
    digest = short_hash_bytes(data)
    values: dict[str, Any] = dict(key=digest, filename=relpath.rsplit("/", 1)[-1], relative_path=relpath,
                                  size=len(data), sources=tuple(sources), expected_hash=digest)
    values.update(fields)
    return DownloadJob(**values)


def fetch(jobs: list[DownloadJob], models_dir: Path, index_path: Path, **kw: Any) -> list[DownloadOutcome]:
    options = kw.pop("options", None) or fast_options(**kw.pop("opts", {}))
    return download_models(jobs, models_dir=models_dir, index_path=index_path, options=options, **kw)


def one(job: DownloadJob, models_dir: Path, index_path: Path, **kw: Any) -> DownloadOutcome:
    return fetch([job], models_dir, index_path, **kw)[0]


def staging_files(models_dir: Path) -> list[str]:
    staging = models_dir / ".cfd" / "staging"
    return sorted(os.listdir(staging)) if staging.exists() else []


def assert_placed(models_dir: Path, index_path: Path, data: bytes, relpath: str = REL, downloaded: bool = True) -> None:
    path = models_dir / relpath
    assert path.read_bytes() == data
    with ModelIndex(index_path, models_dir) as index:
        digest = short_hash_bytes(data)
        assert index.present([digest]) == {digest: relpath}
        assert index.locations()[relpath].mtime == path.stat().st_mtime
        if downloaded:  # its full BLAKE3 is recorded
            assert index.model_row(digest)[1] == blake3(data).hexdigest()
    assert not [n for n in staging_files(models_dir) if n.endswith(".part")]


# --------------------------------------------------------------------------- basics


def test_download_places_verifies_and_indexes(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(1, 3 * MIB)
    url = server.add_file("/org/m.safetensors", data)
    outcome = one(make_job(data, url), models_dir, index_path)
    assert outcome.success and outcome.ending is Ending.DONE, outcome.error
    assert (outcome.relative_path, outcome.source, outcome.short_hash) == (REL, url, short_hash_bytes(data))
    assert outcome.bytes_fetched == len(data)
    assert_placed(models_dir, index_path, data)
    again = one(make_job(data, url), models_dir, index_path)  # indexed now: nothing is fetched
    assert again.success and again.ending is Ending.FOUND and len(server.requests) == 1
    with ModelIndex(index_path, models_dir) as index:
        assert index.sources_of(short_hash_bytes(data)) == [url]
        # The manifest gave no blake3: the full one is recorded anyway (the short hash samples).
        assert index.model_row(short_hash_bytes(data)) == (len(data), blake3(data).hexdigest(), None)
    request = server.requests[0]
    assert request.headers.get("Accept-Encoding") == "identity"
    assert "Authorization" not in request.headers


def test_large_file_uses_parallel_segments_and_three_region_hash(
    server: ModelServer, models_dir: Path, index_path: Path
) -> None:
    data = generate_model_bytes(2, 40 * MIB)  # > 30 MiB: middle and tail regions count
    url = server.add_file("/big.safetensors", data)
    job = make_job(data, url)  # no blake3 in the manifest: segments are hashed in full all the same
    outcome = one(job, models_dir, index_path, opts={"connections": 4})
    assert outcome.success, outcome.error
    assert_placed(models_dir, index_path, data)
    ranges = [r.range for r in server.requests]
    # Four segments, plus any tail an idle connection took over from a slower one.
    assert len(ranges) >= 4 and all(r and r.startswith("bytes=") for r in ranges)
    assert server.bytes_sent() <= len(data) + 16 * MIB  # a steal wastes what was in flight to the owner
    with ModelIndex(index_path, models_dir) as index:
        assert index.model_row(short_hash_bytes(data)) == (len(data), blake3(data).hexdigest(), None)


def test_segment_plan_covers_the_file() -> None:
    for size in (1, MIB, 40 * MIB + 7, 2 * 1024 * MIB + 3):
        segments = plan_segments(size, 4, 4 * MIB)
        assert segments[0][0] == 0 and segments[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
    assert plan_segments(None, 4, MIB) == [[0, -1, 0]]
    assert len(plan_segments(6 * MIB, 8, 4 * MIB)) == 1


def test_full_sha256_checked_while_streaming(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    import hashlib

    data = generate_model_bytes(3, 2 * MIB)
    url = server.add_file("/m", data)
    good = make_job(data, url, sha256=hashlib.sha256(data).hexdigest())
    assert one(good, models_dir, index_path).success
    (models_dir / REL).unlink()
    bad = make_job(data, url, relpath="checkpoints/other.safetensors", sha256="0" * 64)
    ModelIndex(index_path, models_dir).close()
    outcome = one(replace(bad, key="f" * 16), models_dir, index_path)
    # The first download is indexed under the same short hash and has been deleted: re-fetched and refused.
    assert not outcome.success and "sha256 does not match" in outcome.error
    assert not (models_dir / "checkpoints/other.safetensors").exists()


def test_callbacks_follow_comfydock_shape(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    events: list[tuple[Any, ...]] = []
    lock = threading.Lock()

    class Recorder(DownloadCallbacks):
        def on_batch_start(self, total: int) -> None:
            events.append(("batch", total))

        def on_file_start(self, filename: str, index: int, total: int) -> None:
            with lock:
                events.append(("start", filename, index, total))

        def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
            with lock:
                events.append(("progress", filename, downloaded, total))

        def on_file_complete(self, filename: str, success: bool, error: str | None) -> None:
            with lock:
                events.append(("done", filename, success, error))

        def on_batch_complete(self, succeeded: int, total: int) -> None:
            events.append(("end", succeeded, total))

    a, b = generate_model_bytes(4, MIB), generate_model_bytes(5, MIB)
    jobs = [make_job(a, server.add_file("/a", a), relpath="loras/a.safetensors"),
            make_job(b, server.url("/missing"), relpath="loras/b.safetensors")]
    outcomes = fetch(jobs, models_dir, index_path, callbacks=Recorder())
    assert [o.success for o in outcomes] == [True, False]
    assert events[0] == ("batch", 2) and events[-1] == ("end", 1, 2)
    assert {e[2] for e in events if e[0] == "start"} == {1, 2}
    assert ("done", "a.safetensors", True, None) in events
    assert any(e[0] == "progress" and e[1] == "a.safetensors" for e in events)


# --------------------------------------------------------------------------- resume


_CHILD = r"""
import json, sys
from cfd.core.download.engine import DownloadJob, DownloadOptions, download_models
from cfd.core.download.types import DownloadCallbacks

class SayStart(DownloadCallbacks):
    def on_file_start(self, filename, index, total):  # called right before the file's lock is taken
        print("started", filename, file=sys.stderr, flush=True)

args = json.loads(sys.argv[1])
job = DownloadJob(**{**args["job"], "sources": tuple(args["job"]["sources"])})
out = download_models([job], models_dir=args["models"], index_path=args["index"],
                      options=DownloadOptions(**args["options"]), callbacks=SayStart())[0]
print(json.dumps({"success": out.success, "error": out.error, "fetched": out.bytes_fetched}))
"""


def spawn(job: DownloadJob, models_dir: Path, index_path: Path, **options: Any) -> subprocess.Popen[str]:
    options = {"allow_private_networks": True, "backoff_base": 0.01, "checkpoint_bytes": MIB, **options}
    args = {"job": asdict(job), "models": str(models_dir), "index": str(index_path), "options": options}
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_bytes(server: ModelServer, at_least: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while server.bytes_sent() < at_least:
        assert time.monotonic() < deadline, "the download did not start"
        time.sleep(0.01)


def test_a_restart_records_its_empty_plan_before_emptying_the_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between the two steps of a restart, the progress file must not still vouch for bytes
    that are gone (the next run would resume over zeros, fail the hash check and fetch it all)."""
    from cfd.core.download.staging import StagingFile, State
    from cfd.core.download.types import DownloadOptions

    data = generate_model_bytes(9, 2 * MIB)
    job = make_job(data, "http://127.0.0.1:1/m")
    staged = StagingFile(tmp_path / "staging" / "m", job, "m", DownloadOptions(), lambda done, total: None)
    staged.open()
    os.pwrite(staged.fd, data[:MIB], 0)
    staged.state = State("http://127.0.0.1:1/m", len(data), [[0, len(data), MIB]])
    staged.save()

    def killed(fd: int, length: int) -> None:
        raise KeyboardInterrupt  # stands for a SIGKILL landing right here

    monkeypatch.setattr(os, "ftruncate", killed)
    with pytest.raises(KeyboardInterrupt):
        staged.reset([[0, len(data), 0]])
    monkeypatch.undo()
    staged.close()
    saved = json.loads(staged.sidecar.read_text())
    assert [seg[2] for seg in saved["segments"]] == [0]  # nothing claimed that the restart may have wiped


@pytest.mark.parametrize("connections", [1, 4])
def test_resume_after_sigkill_refetches_little(
    server: ModelServer, models_dir: Path, index_path: Path, connections: int
) -> None:
    data = generate_model_bytes(6, 16 * MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", throttle=8 * MIB / connections)  # per connection
    job = make_job(data, url)
    child = spawn(job, models_dir, index_path, connections=connections, segment_min=2 * MIB)
    wait_for_bytes(server, len(data) // 2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    first = server.bytes_sent()
    assert first < len(data)
    assert any(n.endswith(".part") for n in staging_files(models_dir))
    # What a kill in the middle of saving progress leaves beside the sidecar (files.temp_beside):
    # the run that completes the download removes it too (CI once found one left).
    sidecar = models_dir / ".cfd" / "staging" / f"{staging_name(job.key)}.json"
    sidecar.with_name(f".{sidecar.name}.999999-1.tmp").write_text('{"source": ')
    server.clear_faults()
    before = len(server.requests)
    outcome = one(job, models_dir, index_path, opts={"connections": connections, "segment_min": 2 * MIB})
    assert outcome.success, outcome.error
    assert_placed(models_dir, index_path, data)
    # Only what arrived after the last checkpoint (1 MiB per segment at most) is fetched twice.
    assert server.bytes_sent() <= len(data) + connections * MIB + 256 * 1024
    assert outcome.bytes_fetched <= len(data) - first + connections * MIB + 256 * 1024
    resumed = [r.range or "" for r in server.requests[before:]]
    assert resumed and not any(r == "" or r.startswith("bytes=0-") for r in resumed), resumed
    assert staging_files(models_dir) == []


def test_drop_mid_stream_then_success(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(7, 3 * MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", close_after=MIB + 123, close_times=2)
    outcome = one(make_job(data, url), models_dir, index_path, opts={"connections": 1})
    assert outcome.success, outcome.error
    assert_placed(models_dir, index_path, data)
    ranges = [r.range for r in server.requests]
    assert ranges == [None, f"bytes={MIB + 123}-", f"bytes={2 * (MIB + 123)}-"]
    assert server.bytes_sent() == len(data)


def test_server_ignoring_range_restarts_cleanly(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(8, 3 * MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", close_after=MIB, close_times=1)
    job = make_job(data, url)
    failed = one(job, models_dir, index_path, opts={"connections": 1, "retries": 1})
    assert not failed.success and "closed" in failed.error
    assert not (models_dir / REL).exists()
    server.set_fault("/m", ignore_range=True)
    server.reset_stats()
    outcome = one(job, models_dir, index_path, opts={"connections": 1})
    assert outcome.success, outcome.error
    assert_placed(models_dir, index_path, data)
    assert [(r.range, r.status) for r in server.requests] == [(f"bytes={MIB}-", 200)]


def test_server_without_ranges_gets_one_stream(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(9, 12 * MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", ignore_range=True)
    outcome = one(make_job(data, url), models_dir, index_path, opts={"connections": 4})
    assert outcome.success, outcome.error
    assert_placed(models_dir, index_path, data)
    assert len(server.requests) == 1 and server.bytes_sent() == len(data)


def test_changed_validator_restarts_from_zero(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(10, 3 * MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", close_after=MIB, close_times=1)
    job = make_job(data, url)
    assert not one(job, models_dir, index_path, opts={"connections": 1, "retries": 1}).success
    server.replace_file("/m", data)  # new ETag: If-Range must fail
    server.clear_faults()
    server.reset_stats()
    outcome = one(job, models_dir, index_path, opts={"connections": 1})
    assert outcome.success, outcome.error
    assert [(r.range, r.status) for r in server.requests] == [(f"bytes={MIB}-", 200)]
    assert server.requests[0].headers.get("If-Range", "").startswith('"')


def test_cancel_leaves_a_resumable_partial(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(11, 8 * MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", throttle=8 * MIB)
    cancel = threading.Event()

    class CancelHalfway(DownloadCallbacks):
        def on_file_progress(self, filename: str, downloaded: int, total: int | None) -> None:
            if downloaded >= 3 * MIB:
                cancel.set()

    job = make_job(data, url)
    started = time.monotonic()
    outcome = one(job, models_dir, index_path, opts={"connections": 1}, callbacks=CancelHalfway(), cancel=cancel)
    assert time.monotonic() - started < 3
    assert not outcome.success and outcome.interrupted and outcome.ending is Ending.INTERRUPTED
    assert {f"{job.key}.part", f"{job.key}.json"} <= set(staging_files(models_dir))
    assert not (models_dir / REL).exists()
    server.clear_faults()
    second = one(job, models_dir, index_path, opts={"connections": 1})
    assert second.success and second.bytes_fetched <= len(data) - 3 * MIB + MIB
    assert_placed(models_dir, index_path, data)


# --------------------------------------------------------------------------- retries


def test_500s_then_success(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(12, MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", fail_times=3, fail_status=503)
    outcome = one(make_job(data, url), models_dir, index_path)
    assert outcome.success, outcome.error
    assert [r.status for r in server.requests] == [503, 503, 503, 200]


def test_500s_forever_give_up_with_a_one_line_error(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(12, MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", status_always=500)
    outcome = one(make_job(data, url), models_dir, index_path, opts={"retries": 3})
    assert not outcome.success and "answered 500" in outcome.error and "3 attempts" in outcome.error
    assert "\n" not in outcome.error and len(server.requests) == 3


def test_429_honours_retry_after(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(13, MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", fail_times=1, fail_status=429, retry_after=1)
    started = time.monotonic()
    outcome = one(make_job(data, url), models_dir, index_path)
    assert outcome.success, outcome.error
    assert time.monotonic() - started >= 0.95
    # A Retry-After beyond the cap is not waited for: the file fails now, for a later run.
    server.set_fault("/m", fail_times=1, fail_status=429, retry_after=3600)
    (models_dir / REL).unlink()
    started = time.monotonic()
    outcome = one(make_job(data, url), models_dir, index_path, opts={"retry_after_cap": 0.2})
    assert time.monotonic() - started < 2
    assert not outcome.success and "asks to wait 60 min" in outcome.error and "later" in outcome.error


def test_404_and_401_are_not_retried_and_say_what_to_fix(server: ModelServer, models_dir: Path, index_path: Path,
                                                         trust_tls: Callable[[ModelServer], ModelServer]) -> None:
    data = generate_model_bytes(14, MIB)
    outcome = one(make_job(data, server.url("/nope")), models_dir, index_path)
    assert not outcome.success and "not found (404)" in outcome.error and "pyproject.toml" in outcome.error
    assert outcome.ending is Ending.SOURCE_GONE  # retrying will not help: the manifest must change
    assert len(server.requests) == 1
    with trust_tls(ModelServer(tls=True)) as hub:
        hub.add_file("/gated", data)
        hub.set_fault("/gated", status_always=401)
        opts = {"hf_hosts": (f"127.0.0.1:{hub.port}",)}
        outcome = one(make_job(data, hub.url("/gated")), models_dir, index_path, opts=opts)
        assert "HF_TOKEN" in outcome.error and outcome.ending is Ending.FAILED  # a token may fix it
        tokens = Tokens(hf="hf_secret_value", hf_origin="HF_TOKEN")
        outcome = one(make_job(data, hub.url("/gated")), models_dir, index_path, opts={**opts, "tokens": tokens})
        assert "token from HF_TOKEN was refused" in outcome.error and "hf_secret_value" not in outcome.error
        assert len(hub.requests) == 2 and hub.requests[1].headers.get("Authorization") == "Bearer hf_secret_value"
    # The same service over plain http: no token goes, and the error says why.
    server.add_file("/gated", data)
    server.set_fault("/gated", status_always=401)
    outcome = one(make_job(data, server.url("/gated")), models_dir, index_path,
                  opts={"tokens": tokens, "hf_hosts": (f"127.0.0.1:{server.port}",)})
    assert "only over https" in outcome.error and "Authorization" not in server.requests_for("/gated")[0].headers


def test_stall_timeout_fires_then_resumes(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(15, 2 * MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", stall_after=512 * 1024, stall_times=1)
    started = time.monotonic()
    outcome = one(make_job(data, url), models_dir, index_path, opts={"stall_timeout": 0.5, "connections": 1})
    assert outcome.success, outcome.error
    assert 0.5 <= time.monotonic() - started < 3
    assert [r.range for r in server.requests] == [None, f"bytes={512 * 1024}-"]


def test_endless_stall_fails_with_stalled(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(15, 2 * MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", stall_after=0)
    outcome = one(make_job(data, url), models_dir, index_path, opts={"stall_timeout": 0.3, "retries": 2})
    assert not outcome.success and "stalled" in outcome.error


# --------------------------------------------------------------------------- lying servers


def test_wrong_byte_is_refused_and_names_the_source(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(16, 2 * MIB)
    bad = server.add_file("/bad", data)
    server.set_fault("/bad", corrupt_at=100)
    outcome = one(make_job(data, bad), models_dir, index_path)
    assert not outcome.success
    assert bad in outcome.error and "does not match the manifest" in outcome.error
    assert not (models_dir / REL).exists() and staging_files(models_dir) == []
    # With a second, honest source the model arrives and the outcome says which one worked.
    good = server.add_file("/good", data)
    outcome = one(make_job(data, bad, good), models_dir, index_path)
    assert outcome.success and outcome.source == good
    assert_placed(models_dir, index_path, data)
    with ModelIndex(index_path, models_dir) as index:
        assert index.sources_of(short_hash_bytes(data)) == [good]


@pytest.mark.parametrize("no_length", [False, True])
def test_more_bytes_than_declared_is_cut_off(server: ModelServer, models_dir: Path, index_path: Path, no_length: bool) -> None:
    data = generate_model_bytes(17, MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", extra_bytes=4 * MIB, no_length=no_length)
    outcome = one(make_job(data, url), models_dir, index_path)
    assert not outcome.success and "refused" in outcome.error, outcome.error
    assert not (models_dir / REL).exists()
    part = models_dir / ".cfd" / "staging" / f"{short_hash_bytes(data)}.part"
    assert not part.exists() or part.stat().st_size <= len(data)


def test_web_page_instead_of_model_is_refused(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(18, MIB)
    url = server.add_file("/m", data)
    server.set_fault("/m", html_200=True)
    outcome = one(make_job(data, url), models_dir, index_path)
    assert not outcome.success and "web page" in outcome.error


# --------------------------------------------------------------------------- redirects and tokens


def test_token_reaches_its_host_but_not_a_redirect_target(models_dir: Path, index_path: Path,
                                                          trust_tls: Callable[[ModelServer], ModelServer]) -> None:
    data = generate_model_bytes(19, MIB)
    with trust_tls(ModelServer(tls=True)) as hub, ModelServer(host="localhost") as storage:
        target = storage.add_file("/blob", data)
        hub.add_file("/org/repo/resolve/main/m.safetensors", b"")
        hub.set_fault("/org/repo/resolve/main/m.safetensors", redirect_to=target)
        source = hub.url("/org/repo/blob/main/m.safetensors")  # a page link: rewritten to /resolve/
        tokens = Tokens(hf="hf_secret", civitai="civ_secret")
        opts = {"tokens": tokens, "hf_hosts": (f"127.0.0.1:{hub.port}",)}
        outcome = one(make_job(data, source), models_dir, index_path, opts=opts)
        assert outcome.success, outcome.error
        assert hub.requests[0].path == "/org/repo/resolve/main/m.safetensors"
        assert hub.requests[0].headers.get("Authorization") == "Bearer hf_secret"
        assert "Authorization" not in storage.requests[0].headers
        with ModelIndex(index_path, models_dir) as index:
            assert index.sources_of(short_hash_bytes(data)) == [source]  # the manifest's URL, as written


def test_civitai_token_only_to_civitai(models_dir: Path, index_path: Path,
                                      trust_tls: Callable[[ModelServer], ModelServer]) -> None:
    data = generate_model_bytes(20, MIB)
    with trust_tls(ModelServer(tls=True)) as civitai, ModelServer(host="localhost") as storage:
        civitai.set_fault("/api/download/models/12345", redirect_to=storage.add_file("/x", data))
        tokens = Tokens(hf="hf_secret", civitai="civ_secret")
        opts = {"tokens": tokens, "civitai_hosts": (f"127.0.0.1:{civitai.port}",)}
        outcome = one(make_job(data, civitai.url("/api/download/models/12345")), models_dir, index_path, opts=opts)
        assert outcome.success, outcome.error
        assert civitai.requests[0].headers.get("Authorization") == "Bearer civ_secret"
        assert "Authorization" not in storage.requests[0].headers
        # A plain host gets no token at all.
        (models_dir / REL).unlink()
        storage.reset_stats()
        assert one(make_job(data, storage.url("/x")), models_dir, index_path, opts=opts).success
        assert "Authorization" not in storage.requests[0].headers


def test_redirect_to_bad_scheme_and_loops_are_refused(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(21, MIB)
    server.set_fault("/to-file", redirect_to="file:///etc/passwd")
    outcome = one(make_job(data, server.url("/to-file")), models_dir, index_path)
    assert not outcome.success and "only http and https" in outcome.error
    server.set_fault("/loop", redirect_loop=True)
    outcome = one(make_job(data, server.url("/loop")), models_dir, index_path)
    assert not outcome.success and "more than 10 redirects" in outcome.error
    assert len(server.requests_for("/loop")) == 11


def test_loopback_refused_unless_private_networks_allowed(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(22, MIB)
    url = server.add_file("/m", data)
    outcome = one(make_job(data, url), models_dir, index_path, opts={"allow_private_networks": False})
    assert not outcome.success and "loopback" in outcome.error and "allowPrivateNetworks" in outcome.error
    assert server.requests == []


def test_path_escapes_and_bad_schemes_are_refused(server: ModelServer, models_dir: Path, index_path: Path, tmp_path: Path) -> None:
    data = generate_model_bytes(23, MIB)
    url = server.add_file("/m", data)
    outcomes = fetch([make_job(data, url, relpath="../../escape.safetensors"),
                      make_job(data, url, relpath="/tmp/abs.safetensors"),
                      make_job(data, url, relpath="loras/x.safetensors", filename="../x.safetensors"),
                      make_job(data, "file:///etc/passwd", relpath="loras/y.safetensors"),
                      make_job(data, "ftp://example.com/y", relpath="loras/z.safetensors")],
                     models_dir, index_path)
    assert [o.success for o in outcomes] == [False] * 5
    assert all("refusing model path" in o.error for o in outcomes[:2])
    assert "refusing model filename" in outcomes[2].error
    assert all("only http and https" in o.error for o in outcomes[3:])
    assert server.requests == [] and not (tmp_path / "escape.safetensors").exists()


# --------------------------------------------------------------------------- the models directory


def test_existing_right_file_is_indexed_not_downloaded(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(24, MIB)
    (models_dir / "checkpoints").mkdir()
    (models_dir / REL).write_bytes(data)
    outcome = one(make_job(data, server.add_file("/m", data)), models_dir, index_path)
    assert outcome.success and outcome.bytes_fetched == 0
    assert server.requests == []
    assert_placed(models_dir, index_path, data, downloaded=False)


def test_existing_wrong_file_is_not_overwritten(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(25, MIB)
    (models_dir / "checkpoints").mkdir()
    (models_dir / REL).write_bytes(b"mine, not yours")
    outcome = one(make_job(data, server.add_file("/m", data)), models_dir, index_path)
    assert not outcome.success and "does not overwrite" in outcome.error
    assert (models_dir / REL).read_bytes() == b"mine, not yours"
    assert server.requests == []


def test_symlinked_category_folder_receives_the_file(server: ModelServer, models_dir: Path, index_path: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    (models_dir / "checkpoints").symlink_to(elsewhere)
    data = generate_model_bytes(26, MIB)
    assert one(make_job(data, server.add_file("/m", data)), models_dir, index_path).success
    assert (elsewhere / "m.safetensors").read_bytes() == data


def test_not_enough_space_is_said_plainly(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(27, MIB)
    job = replace(make_job(data, server.add_file("/m", data)), size=1 << 60)
    outcome = one(job, models_dir, index_path)
    assert not outcome.success and outcome.error.startswith("not enough disk space for m.safetensors")
    assert server.requests == []


def test_write_error_discards_a_partial_of_unknown_size(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    """A file-size limit makes pwrite fail with EFBIG mid-stream, as a full or FAT disk would. Without a
    length nothing could check a resumed file: the partial is discarded, never kept to be refilled."""
    data = safetensors_bytes(generate_model_bytes(28, 4 * MIB))
    url = server.add_file("/m", data)
    server.set_fault("/m", no_length=True)  # an intent of unknown size: nothing is preallocated
    job = DownloadJob("intent:wf/1/0", "m.safetensors", REL, None, (url,), None)
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({2 * MIB}, resource.RLIM_INFINITY))\n"
        "exec(sys.argv[2])\n"
    )
    options = {"allow_private_networks": True, "backoff_base": 0.01, "connections": 1}
    args = {"job": asdict(job), "models": str(models_dir), "index": str(index_path), "options": options}
    ModelIndex(index_path, models_dir).close()  # the index itself must not hit the limit
    result = subprocess.run([sys.executable, "-c", script, json.dumps(args), _CHILD],
                            capture_output=True, text=True, timeout=60)
    assert result.stderr == "started m.safetensors\n"  # and nothing else: no traceback
    reply = json.loads(result.stdout)
    assert not reply["success"] and reply["error"].startswith("file too large for the file system while writing m.safetensors")
    assert "discarded" in reply["error"] and not (models_dir / REL).exists()
    assert staging_files(models_dir) == []
    server.clear_faults()
    outcome = one(job, models_dir, index_path)
    assert outcome.success and outcome.bytes_fetched == len(data)
    assert (models_dir / REL).read_bytes() == data


# --------------------------------------------------------------------------- concurrency


def test_two_processes_fetch_one_hash_once(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(29, 6 * MIB)
    url = server.add_file("/m", data)
    job = make_job(data, url)
    server.hold()  # the first process's request waits until the second is at the file's lock
    first = spawn(job, models_dir, index_path)
    wait_until(lambda: len(server.held) == 1, 30, "the first process to connect")
    second = spawn(job, models_dir, index_path)
    second_err = Lines(second.stderr)
    wait_until(lambda: second_err.has("started"), 30, "the second process to reach the download")
    overlapped = len(server.held) == 1 and first.poll() is None  # the first is still mid-request
    server.release()
    replies = [json.loads(child.communicate(timeout=30)[0]) for child in (first, second)]
    assert overlapped, "the two processes did not overlap"
    assert all(r["success"] for r in replies), replies
    assert [r["fetched"] for r in replies] == [len(data), 0]  # the second waited at the lock, then found it
    assert server.bytes_sent() == len(data) and len(server.requests) == 1
    assert_placed(models_dir, index_path, data)


def test_many_files_at_once(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    blobs = [generate_model_bytes(100 + i, MIB + i) for i in range(6)]
    jobs = [make_job(b, server.add_file(f"/m{i}", b), relpath=f"loras/m{i}.safetensors") for i, b in enumerate(blobs)]
    outcomes = fetch(jobs, models_dir, index_path, opts={"jobs": 3})
    assert [o.job for o in outcomes] == jobs and all(o.success for o in outcomes)
    for i, blob in enumerate(blobs):
        assert (models_dir / f"loras/m{i}.safetensors").read_bytes() == blob


# --------------------------------------------------------------------------- intents


def test_intent_is_downloaded_hashed_and_remembered_by_source(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(30, 2 * MIB + 5)
    url = server.add_file("/api/download/models/12345", data)
    job = DownloadJob("intent:wf1/7/0", "lora.safetensors", "loras/lora.safetensors", None, (url,), None)
    assert staging_name(job.key).startswith("intent-")
    outcome = one(job, models_dir, index_path)
    assert outcome.success and outcome.short_hash == short_hash_bytes(data)
    assert (models_dir / "loras/lora.safetensors").read_bytes() == data
    with ModelIndex(index_path, models_dir) as index:
        assert index.present_by_source([url]) == {url: "loras/lora.safetensors"}
        assert index.model_row(outcome.short_hash) == (len(data), blake3(data).hexdigest(), None)
    server.reset_stats()
    again = one(job, models_dir, index_path)
    assert again.success and again.bytes_fetched == 0 and server.requests == []


def test_intent_cut_short_without_length_is_refused(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    """Without a length a cut looks like the end: nothing confirms it, so nothing is placed (nor kept)."""
    data = generate_model_bytes(31, 3 * MIB)
    url = server.add_file("/x", data)
    server.set_fault("/x", no_length=True, close_after=MIB, close_times=1)
    job = DownloadJob("intent:wf1/8/0", "x.ckpt", "loras/x.ckpt", None, (url,), None)
    outcome = one(job, models_dir, index_path)
    assert not outcome.success and "without saying how many to expect" in outcome.error
    assert "\n" not in outcome.error and not (models_dir / "loras/x.ckpt").exists()
    assert staging_files(models_dir) == []
    # With a length (the normal case) the cut is detected and resumed.
    server.set_fault("/x", close_after=MIB, close_times=1)
    outcome = one(job, models_dir, index_path, opts={"connections": 1})
    assert outcome.success and (models_dir / "loras/x.ckpt").read_bytes() == data
    assert outcome.short_hash == short_hash_bytes(data)


@pytest.mark.parametrize("cut", [True, False])
def test_safetensors_without_length_is_checked_against_its_header(
    server: ModelServer, models_dir: Path, index_path: Path, cut: bool
) -> None:
    data = safetensors_bytes(generate_model_bytes(32, 3 * MIB))
    url = server.add_file("/s", data)
    server.set_fault("/s", no_length=True, **({"close_after": 2 * MIB, "close_times": 1} if cut else {}))
    job = DownloadJob("intent:wf1/9/0", "s.safetensors", "loras/s.safetensors", None, (url,), None)
    outcome = one(job, models_dir, index_path)
    if cut:
        assert not outcome.success and "cut short" in outcome.error and f"header says {len(data)}" in outcome.error
        assert not (models_dir / "loras/s.safetensors").exists() and staging_files(models_dir) == []
    else:
        assert outcome.success and (models_dir / "loras/s.safetensors").read_bytes() == data


def test_unknown_size_over_the_ceiling_is_refused(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = safetensors_bytes(generate_model_bytes(33, 3 * MIB))
    url = server.add_file("/big", data)
    job = DownloadJob("intent:wf1/10/0", "big.safetensors", "loras/big.safetensors", None, (url,), None)
    for no_length in (False, True):  # announced, then streamed without a length
        server.set_fault("/big", no_length=no_length)
        outcome = one(job, models_dir, index_path, opts={"max_unknown_size": 2 * MIB})
        assert not outcome.success and "more than cfd.maxUnknownSize (2.0 MiB)" in outcome.error, outcome.error
        assert staging_files(models_dir) == [] and not (models_dir / "loras/big.safetensors").exists()


def test_announced_length_larger_than_the_free_space_is_refused(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    data = generate_model_bytes(34, MIB)
    url = server.add_file("/huge", data)
    server.set_fault("/huge", wrong_content_length=1 << 60)  # claims an exabyte
    job = DownloadJob("intent:wf1/11/0", "huge.ckpt", "loras/huge.ckpt", None, (url,), None)
    outcome = one(job, models_dir, index_path, opts={"max_unknown_size": 1 << 62})
    assert not outcome.success and outcome.error.startswith("not enough disk space for huge.ckpt"), outcome.error
    assert staging_files(models_dir) == []


def test_errors_never_leak_tokens_or_url_secrets(models_dir: Path, index_path: Path,
                                                 trust_tls: Callable[[ModelServer], ModelServer]) -> None:
    data = generate_model_bytes(32, MIB)
    with trust_tls(ModelServer(tls=True)) as server:
        server.set_fault("/m", status_always=403)
        url = server.url("/m?token=supersecret&X-Goog-Signature=supersecret2&access-token=supersecret3")
        tokens = Tokens(hf="hf_supersecret", hf_origin="HF_TOKEN")
        outcome = one(make_job(data, url), models_dir, index_path, opts={"tokens": tokens, "hf_hosts": (f"127.0.0.1:{server.port}",)})
        assert server.requests[0].headers.get("Authorization") == "Bearer hf_supersecret"  # the token was in play
    assert not outcome.success and "supersecret" not in outcome.error and "403" in outcome.error


@pytest.mark.parametrize("connections", [1, 4])
def test_server_with_another_size_is_refused(server: ModelServer, models_dir: Path, index_path: Path, connections: int) -> None:
    data = generate_model_bytes(33, 12 * MIB)
    url = server.add_file("/m", data[: 8 * MIB])  # the server's file is not the manifest's
    outcome = one(make_job(data, url), models_dir, index_path, opts={"connections": connections})
    assert not outcome.success and f"announces {8 * MIB} bytes where the manifest says {12 * MIB}" in outcome.error
    assert not (models_dir / REL).exists() and len(server.requests) == 1


def test_unreachable_source_falls_through_to_the_next(server: ModelServer, models_dir: Path, index_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/m"
    data = generate_model_bytes(34, MIB)
    good = server.add_file("/m", data)
    outcome = one(make_job(data, dead), models_dir, index_path, opts={"retries": 2})
    assert not outcome.success and "connection refused" in outcome.error and "2 attempts" in outcome.error
    outcome = one(make_job(data, dead, good), models_dir, index_path, opts={"retries": 2})
    assert outcome.success and outcome.source == good


def test_low_speed_limit_ignores_our_own_rate_cap_but_not_a_slow_server(
    server: ModelServer, models_dir: Path, index_path: Path
) -> None:
    data = generate_model_bytes(35, 2 * MIB)
    url = server.add_file("/capped", data)
    slow = {"low_speed_limit": 4 * MIB, "low_speed_time": 0.3, "retries": 1, "connections": 1}
    # The agent's cap (1 MiB/s) is far under the limit: waiting for it is not the server's slowness.
    outcome = one(make_job(data, url), models_dir, index_path, opts={**slow, "max_rate": MIB, "chunk_size": 64 * 1024})
    assert outcome.success, outcome.error
    # A server dripping bytes is still cut, cap or not.
    drip = generate_model_bytes(36, MIB)
    server.add_file("/drip", drip)
    server.set_fault("/drip", drip=0.05)
    outcome = one(make_job(drip, server.url("/drip"), relpath="loras/d.safetensors"), models_dir, index_path,
                  opts={**slow, "max_rate": 100 * MIB})
    assert not outcome.success and "slower than 4.0 MiB/s for 0.3 s" in outcome.error, outcome.error
