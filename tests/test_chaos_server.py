"""Hostile and broken servers, met through `cfd repair` as a user runs it.

Each fault is one the field knows from real CDNs and mirrors: a stall after the headers, a
connection closed mid-body, a Content-Length that lies, Range ignored, the file changing
between two attempts, a redirect loop, 429 with a Retry-After of a day, an HTML error page
served with status 200. Whatever the server does: nothing wrong is placed or indexed, the
command ends in bounded time with one line per failed file, and the next run completes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Clone, Scenario
from helpers.chaos import MIB, Served, check_invariants, manifest, report, run_cfd, serve, wait_until
from helpers.faults import ModelServer

from cfd.demo.content import generate_model_bytes
from cfd.core.store.index import ModelIndex
from cfd.core.store.shorthash import sample_regions, short_hash_bytes

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


class Setup:
    def __init__(self, scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> None:
        self.scenario, self.server, self.models_dir = scenario, server, models_dir
        self.env = {**cfd_env, "CFD_STALL_TIMEOUT": "1", "CFD_RETRIES": "3", "CFD_CONNECTIONS": "1"}
        self.index = Path(cfd_env["CFD_INDEX"])
        self.clone: Clone | None = None
        self.models: list[Served] = []

    def environment(self, *models: Served) -> Clone:
        self.models = list(models)
        self.clone = self.scenario.clone("bob")
        self.clone.commit("environment", {"pyproject.toml": manifest(models).render()})
        return self.clone

    def repair(self, **env: str) -> tuple[int, dict[str, Any], str, float]:
        assert self.clone is not None
        started = time.monotonic()
        result = run_cfd("repair", "--yes", "--json", cwd=self.clone.path, env={**self.env, **env})
        elapsed = time.monotonic() - started
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, json.loads(result.stdout), result.stderr, elapsed

    def check(self, complete: bool = False) -> dict[str, Any]:
        assert self.clone is not None
        return check_invariants(self.models_dir, self.index, [self.clone.path / ".git"], self.models, complete=complete)

    def nothing_placed(self, m: Served) -> None:
        assert not (self.models_dir / m.relpath).exists()
        with ModelIndex(self.index, self.models_dir) as index:
            assert index.present([m.hash]) == {} and m.relpath not in index.locations()

    def marker_error(self, m: Served) -> str:
        from cfd.core.sync.marker import Marker

        assert self.clone is not None
        entries = {e.key: e for e in Marker(self.clone.path / ".git").read()}
        assert entries[m.hash].reason == "failed"
        return entries[m.hash].error or ""


@pytest.fixture
def setup(scenario: Scenario, server: ModelServer, cfd_env: dict[str, str], models_dir: Path) -> Setup:
    return Setup(scenario, server, cfd_env, models_dir)


def one_line_error(data: dict[str, Any], m: Served) -> str:
    failed = {f["hash"]: f["error"] for f in data["failed"]}
    assert m.hash in failed, data
    error = failed[m.hash]
    assert "\n" not in error and len(error) < 400
    return error


# --------------------------------------------------------------------------- stalls and drops


def test_stall_forever_after_headers_gives_up_in_bounded_time(setup: Setup) -> None:
    m = serve(setup.server, "stall.safetensors", 1, 3 * MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, stall_after=0)
    code, data, _, elapsed = setup.repair()
    assert code == 1
    assert "stalled" in one_line_error(data, m)
    assert elapsed < 15  # 3 attempts of 1 s each plus backoff, not forever
    setup.nothing_placed(m)
    assert "stalled" in setup.marker_error(m)
    setup.check()
    setup.server.clear_faults()
    code, _, _, _ = setup.repair()
    assert code == 0
    setup.check(complete=True)
    report("server-stall-forever", faults=len(setup.server.requests_for(m.path)) - 1, seconds_to_give_up=round(elapsed, 1))


def test_stall_mid_body_resumes_where_it_stopped(setup: Setup) -> None:
    m = serve(setup.server, "stall.safetensors", 2, 4 * MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, stall_after=3 * MIB // 2, stall_times=2)
    code, data, _, _ = setup.repair()
    assert code == 0, data
    setup.check(complete=True)
    assert setup.server.bytes_sent(m.path) == m.size  # no byte fetched twice
    assert [r.range for r in setup.server.requests_for(m.path)] == [None, f"bytes={3 * MIB // 2}-", f"bytes={3 * MIB}-"]


def test_connection_closed_mid_body_every_time_still_completes(setup: Setup) -> None:
    m = serve(setup.server, "drop.safetensors", 3, 6 * MIB + 5)
    setup.environment(m)
    setup.server.set_fault(m.path, close_after=3 * MIB // 2)  # every response is cut short
    code, data, _, _ = setup.repair()
    assert code == 0, data
    setup.check(complete=True)
    assert setup.server.bytes_sent(m.path) == m.size
    report("server-close-mid-body", faults=len(setup.server.requests_for(m.path)) - 1, refetched_bytes=setup.server.bytes_sent() - m.size)


def test_connection_closed_early_without_progress_keeps_the_partial(setup: Setup) -> None:
    m = serve(setup.server, "drop.safetensors", 4, 3 * MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, close_after=100_000)  # less than 1 MiB per attempt: a dead source
    code, data, _, _ = setup.repair()
    assert code == 1
    assert "closed" in one_line_error(data, m)
    setup.nothing_placed(m)
    facts = setup.check()
    assert facts["partials"], "the bytes received are kept for the next run"
    received = setup.server.bytes_sent(m.path)
    setup.server.clear_faults()
    setup.server.reset_stats()
    assert setup.repair()[0] == 0
    setup.check(complete=True)
    assert setup.server.bytes_sent() == m.size - received  # resumed exactly where it stopped


# --------------------------------------------------------------------------- lying servers


@pytest.mark.parametrize("delta", [-4096, 4096])
def test_wrong_content_length_is_refused_before_the_body(setup: Setup, delta: int) -> None:
    m = serve(setup.server, "lie.safetensors", 5, 2 * MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, wrong_content_length=m.size + delta)
    code, data, _, _ = setup.repair()
    assert code == 1
    assert f"announces {m.size + delta} bytes" in one_line_error(data, m)
    setup.nothing_placed(m)
    setup.check()
    setup.server.clear_faults()
    assert setup.repair()[0] == 0
    setup.check(complete=True)


def test_server_that_ignores_range_restarts_from_zero_and_is_right(setup: Setup) -> None:
    m = serve(setup.server, "norange.safetensors", 6, 5 * MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, close_after=2 * MIB + 3, close_times=1)
    assert setup.repair(CFD_RETRIES="1")[0] == 1  # a partial is left
    setup.server.set_fault(m.path, ignore_range=True)
    setup.server.reset_stats()
    code, data, _, _ = setup.repair()
    assert code == 0, data
    setup.check(complete=True)
    requests = setup.server.requests_for(m.path)
    assert [(r.range, r.status) for r in requests] == [(f"bytes={2 * MIB + 3}-", 200)]
    assert setup.server.bytes_sent() == m.size  # one clean stream from byte 0


def test_file_changed_between_attempts_is_never_spliced(setup: Setup) -> None:
    m = serve(setup.server, "changing.safetensors", 7, 5 * MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, close_after=2 * MIB, close_times=1)
    assert setup.repair(CFD_RETRIES="1")[0] == 1
    old_etag = setup.server.etag(m.path)
    # Upstream re-uploaded another file under the same name (new ETag).
    setup.server.replace_file(m.path, generate_model_bytes(99, m.size))
    setup.server.clear_faults()
    code, data, _, _ = setup.repair()
    assert code == 1
    assert "does not match the manifest" in one_line_error(data, m)
    setup.nothing_placed(m)
    assert setup.check()["partials"] == []  # the wrong bytes are discarded, not kept for a resume
    resumed = setup.server.requests_for(m.path)[-1]
    assert resumed.headers.get("If-Range") == old_etag and resumed.status == 200
    # The right file is back (yet another ETag): fetched whole, verified, placed.
    setup.server.replace_file(m.path, m.data)
    assert setup.repair()[0] == 0
    setup.check(complete=True)


def test_file_replaced_during_a_multi_connection_download(setup: Setup) -> None:
    """The file changes on the server while two connections fetch it. The new version differs
    only outside the regions the short hash samples, so a file spliced from both versions
    would pass verification: only the engine's If-Range/ETag check keeps it from mixing."""
    m = serve(setup.server, "big.safetensors", 8, 64 * MIB)
    old = m.data
    new = bytearray(old)
    sampled = sample_regions(len(old))
    for start in range(0, len(new), MIB):  # flip every unsampled MiB
        if not any(lo < start + MIB and start < hi for lo, hi in sampled):
            new[start : start + MIB] = bytes(b ^ 0xFF for b in new[start : start + 64]) * (MIB // 64)
    new = bytes(new)
    assert new != old and short_hash_bytes(new) == m.hash  # a mixture of the two would verify too
    setup.environment(m)
    # Both first responses are cut at 12 MiB, after the swap: each connection must then come back
    # for the rest of its segment, from a server that now has the new version.
    setup.server.set_fault(m.path, throttle=16 * MIB, close_after=12 * MIB, close_times=2)
    import threading

    swapped_after: list[int] = []

    def swap() -> None:
        def swapped_while_both_stream() -> bool:
            # Frozen: no throttled write, so no cut, between the look and the swap (a thread of this
            # process slowed by the load could otherwise swap after a cut and a new request).
            with setup.server.frozen():
                started = setup.server.requests_for(m.path)
                if len(started) > 2 or not (len(started) == 2 and all(MIB <= r.bytes_sent < 12 * MIB for r in started)):
                    return len(started) > 2  # too late: the assertion below says so
                setup.server.replace_file(m.path, new)  # other bytes, same size and short hash, new ETag
                swapped_after.append(len(setup.server.requests_for(m.path)))
                return True

        wait_until(swapped_while_both_stream, 20, "two connections streaming the old version")

    thread = threading.Thread(target=swap)
    thread.start()
    code, data, _, _ = setup.repair(CFD_CONNECTIONS="2")
    thread.join()
    assert code == 0, data
    assert swapped_after == [2], "the swap came after the first responses were cut: nothing could mix"
    resumed = [r for r in setup.server.requests_for(m.path)[2:] if "Range" in r.headers]
    assert resumed, "no connection came back for the rest of its segment after the swap"
    placed = (setup.models_dir / m.relpath).read_bytes()
    assert placed in (old, new), "the placed file mixes the two versions"
    version = "old" if placed == old else "new"
    m.data = placed
    setup.check(complete=True)
    report("server-file-replaced-mid-download", faults=1, placed_version=version,
           refetched_mib=round((setup.server.bytes_sent() - m.size) / MIB, 1))


def test_mirror_with_inconsistent_etags_falls_back_to_one_connection(setup: Setup) -> None:
    """A load-balanced mirror whose two backends give the same file different ETags: ranges on several
    connections keep hitting the other backend (its If-Range fails); one connection reads one copy."""
    m = serve(setup.server, "mirrored.safetensors", 9, 64 * MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, mirror_etags=2)
    assert setup.clone is not None
    result = run_cfd("repair", "--yes", cwd=setup.clone.path, env={**setup.env, "CFD_CONNECTIONS": "4"})
    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "answers differently on different connections" in said and "using one connection" in said, said
    setup.check(complete=True)
    report("mirror-inconsistent-etags", backends=2, connections=4, requests=len(setup.server.requests_for(m.path)),
           sent_mib=round(setup.server.bytes_sent(m.path) / MIB, 1))


# --------------------------------------------------------------------------- redirects and rate limits


def test_redirect_loop_fails_fast(setup: Setup) -> None:
    m = serve(setup.server, "loop.safetensors", 9, MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, redirect_loop=True)
    code, data, _, elapsed = setup.repair()
    assert code == 1 and elapsed < 10
    assert "redirects" in one_line_error(data, m)
    assert len(setup.server.requests_for(m.path)) == 11
    setup.nothing_placed(m)
    setup.check()


def test_redirect_ping_pong_between_two_urls_fails_fast(setup: Setup) -> None:
    m = serve(setup.server, "pingpong.safetensors", 10, MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, redirect_to=setup.server.url("/elsewhere"))
    setup.server.set_fault("/elsewhere", redirect_to=m.url)
    code, data, _, elapsed = setup.repair()
    assert code == 1 and elapsed < 10
    assert "redirects" in one_line_error(data, m)
    setup.nothing_placed(m)


@pytest.mark.parametrize("retry_after", ["86400", "Wed, 21 Oct 2099 07:28:00 GMT"])
def test_429_with_a_huge_retry_after_is_not_waited_for(setup: Setup, retry_after: str) -> None:
    m = serve(setup.server, "busy.safetensors", 11, MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, status_always=429, retry_after=retry_after)
    code, data, _, elapsed = setup.repair()
    assert code == 1
    assert elapsed < 10, f"waited {elapsed:.0f} s for a server that asked for hours"
    error = one_line_error(data, m)
    assert "429" in error and "later" in error
    setup.nothing_placed(m)
    assert "429" in setup.marker_error(m)
    report(f"server-429-retry-after-{'seconds' if retry_after.isdigit() else 'date'}", faults=len(setup.server.requests_for(m.path)),
           seconds=round(elapsed, 1))


def test_429_with_a_short_retry_after_is_honoured(setup: Setup) -> None:
    m = serve(setup.server, "busy.safetensors", 12, MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, fail_times=1, fail_status=429, retry_after=2)
    code, data, _, elapsed = setup.repair()
    assert code == 0, data
    first, second = setup.server.requests_for(m.path)
    assert second.started - first.started >= 1.9
    setup.check(complete=True)


# --------------------------------------------------------------------------- HTML instead of a model


def test_html_error_page_with_status_200_is_not_placed(setup: Setup) -> None:
    m = serve(setup.server, "page.safetensors", 13, MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, html_200=True)
    code, data, _, _ = setup.repair()
    assert code == 1
    assert "web page" in one_line_error(data, m)
    setup.nothing_placed(m)
    setup.check()


def test_html_page_disguised_as_a_binary_is_caught_by_size_or_hash(setup: Setup) -> None:
    m = serve(setup.server, "page.safetensors", 14, MIB)
    setup.environment(m)
    setup.server.set_fault(m.path, html_200=True, headers={"Content-Type": "application/octet-stream"})
    code, data, _, _ = setup.repair()
    assert code == 1
    assert "announces" in one_line_error(data, m)
    setup.nothing_placed(m)
    # Same size, other bytes (a proxy rewrote the body): the hash says no.
    setup.server.set_fault(m.path, corrupt_at=m.size // 2)
    code, data, _, _ = setup.repair()
    assert code == 1
    assert "does not match the manifest" in one_line_error(data, m)
    setup.nothing_placed(m)
    assert setup.check()["partials"] == []
    setup.server.clear_faults()
    assert setup.repair()[0] == 0
    setup.check(complete=True)
