"""Adaptive connections against a real server on 127.0.0.1: more connections while they pay.

Connections are counted on the server's side (how many range requests were open at once)
and in what the engine reports to the progress display, never by timing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cfd.demo.content import generate_model_bytes
from cfd.demo.records import RequestRecord
from helpers.faults import ModelServer
from cfd.core.download.engine import DownloadCallbacks, DownloadJob, DownloadOptions, download_models
from cfd.core.download.growth import START
from cfd.core.store.shorthash import short_hash_bytes

MIB = 1 << 20


class Counts(DownloadCallbacks):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reported: list[int] = []

    def on_file_connections(self, filename: str, count: int) -> None:
        with self.lock:
            self.reported.append(count)


def most_at_once(records: list[RequestRecord]) -> int:
    events = sorted([(r.started, 1) for r in records] + [(r.finished or float("inf"), -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def download(tmp_path: Path, server: ModelServer, size: int, **options: Any) -> tuple[Counts, list[RequestRecord]]:
    data = generate_model_bytes(seed=7, size=size)
    url = server.add_file("/big.safetensors", data)
    digest = short_hash_bytes(data)
    job = DownloadJob(key=digest, filename="big.safetensors", relative_path="checkpoints/big.safetensors",
                      size=size, sources=(url,), expected_hash=digest)
    models = tmp_path / "models"
    models.mkdir()
    counts = Counts()
    opts = DownloadOptions(allow_private_networks=True, segment_min=4 * MIB, stall_timeout=10.0, **options)
    [outcome] = download_models([job], models_dir=models, index_path=tmp_path / "models.db", options=opts,
                                callbacks=counts)
    assert outcome.success, outcome.error
    assert (models / "checkpoints/big.safetensors").read_bytes() == data
    return counts, [r for r in server.requests_for("/big.safetensors") if r.method == "GET"]


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


def test_grows_connections_while_each_connection_is_capped(tmp_path: Path, server: ModelServer) -> None:
    server.set_fault("/big.safetensors", throttle=3 * MIB)  # per response, so per connection
    counts, requests = download(tmp_path, server, 48 * MIB)
    assert counts.reported[0] == START
    assert max(counts.reported) >= 2 * START, counts.reported  # at least one step up paid and was kept
    assert most_at_once(requests) >= 2 * START  # the server saw them, open together
    assert most_at_once(requests) <= DownloadOptions().connections  # never past the ceiling


def test_does_not_keep_connections_that_do_not_pay(tmp_path: Path, server: ModelServer) -> None:
    # A shared bottleneck (our own rate cap stands in for a saturated link or a slow disk):
    # the trial step brings nothing, so it is given back and no further step is tried.
    counts, requests = download(tmp_path, server, 64 * MIB, max_rate=24 * MIB)
    assert counts.reported[0] == START
    assert max(counts.reported) <= 2 * START, counts.reported  # one trial step at most
    peak = counts.reported.index(max(counts.reported))
    assert counts.reported[peak + 1:peak + 2] == [START], counts.reported  # and it was given back
    assert most_at_once(requests) <= 2 * START


def test_a_set_ceiling_is_respected(tmp_path: Path, server: ModelServer) -> None:
    server.set_fault("/big.safetensors", throttle=4 * MIB)
    counts, requests = download(tmp_path, server, 24 * MIB, connections=2)
    assert max(counts.reported) == 2
    assert most_at_once(requests) <= 2
