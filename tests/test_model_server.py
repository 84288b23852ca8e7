"""Tests for the local model server (cfd.demo.server) and its fault switches (helpers.faults)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from helpers.chaos import wait_until
from helpers.faults import ModelServer

from cfd.demo.content import generate_model_bytes, iter_model_chunks, write_model_file

pytestmark = pytest.mark.timeout(60)

DATA = generate_model_bytes(7, 300_000)
PATH = "/models/a.safetensors"


@pytest.fixture
def srv():
    with ModelServer() as server:
        server.add_file(PATH, DATA)
        yield server


def get(srv, path=PATH, **kw):
    kw.setdefault("timeout", 5)
    return requests.get(srv.url(path), **kw)


# --------------------------------------------------------------------------- content


def test_generated_bytes_are_deterministic_and_regions_differ():
    a = generate_model_bytes(1, 3 << 20)
    assert a == generate_model_bytes(1, 3 << 20)
    assert a != generate_model_bytes(2, 3 << 20)
    blocks = [a[i << 20 : (i + 1) << 20] for i in range(3)]
    assert len(set(blocks)) == 3
    assert generate_model_bytes(1, 1000) == a[:1000]
    assert generate_model_bytes(1, 0) == b""


def test_generated_bytes_equal_their_streamed_chunks():
    """The server streams files from iter_model_chunks; a file written at once must be the same bytes."""
    data = generate_model_bytes(3, 10_000_003)
    assert len(data) == 10_000_003
    assert b"".join(iter_model_chunks(3, 10_000_003)) == data


def test_write_model_file_matches_generate(tmp_path):
    path = write_model_file(tmp_path / "sub" / "m.bin", 5, (2 << 20) + 17)
    assert path.read_bytes() == generate_model_bytes(5, (2 << 20) + 17)


# --------------------------------------------------------------------------- plain HTTP


def settled(srv: ModelServer, path: str) -> int:
    """Bytes sent for `path` once the server is done with its requests (a client can read the
    last byte before the handler books it)."""
    wait_until(lambda: all(r.finished for r in srv.requests_for(path)), 10, f"the server finished {path}")
    return srv.bytes_sent(path)


def test_full_get_has_validators(srv):
    r = get(srv)
    assert r.status_code == 200
    assert r.content == DATA
    h = r.headers
    assert h["Content-Length"] == str(len(DATA))
    assert h["ETag"].startswith('"') and h["ETag"].endswith('"')
    assert h["Last-Modified"].endswith("GMT")
    assert h["Accept-Ranges"] == "bytes"
    assert h["Content-Type"] == "application/octet-stream"
    assert settled(srv, PATH) == len(DATA)


def test_head_sends_headers_only(srv):
    r = requests.head(srv.url(PATH), timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.content == b""
    assert srv.bytes_sent() == 0
    assert srv.requests[0].method == "HEAD"


def test_unknown_path_is_404(srv):
    assert get(srv, "/nope").status_code == 404


@pytest.mark.parametrize(
    "spec, start, end",
    [
        ("bytes=10-19", 10, 19),
        ("bytes=299990-", 299990, 299999),
        ("bytes=-25", 299975, 299999),
        ("bytes=299000-999999", 299000, 299999),  # end clamped to the size
    ],
)
def test_range_forms(srv, spec, start, end):
    r = get(srv, headers={"Range": spec})
    assert r.status_code == 206
    assert r.content == DATA[start : end + 1]
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert r.headers["Content-Length"] == str(end - start + 1)
    assert srv.requests[-1].range == spec


@pytest.mark.parametrize("spec", ["bytes=300000-", "bytes=999999-1000000", "bytes=-0"])
def test_unsatisfiable_range_is_416(srv, spec):
    r = get(srv, headers={"Range": spec})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_multi_range_is_ignored(srv):
    r = get(srv, headers={"Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and r.content == DATA


def test_if_range_etag_and_date(srv):
    first = get(srv)
    etag, date = first.headers["ETag"], first.headers["Last-Modified"]
    for validator in (etag, date):
        r = get(srv, headers={"Range": "bytes=100-", "If-Range": validator})
        assert r.status_code == 206 and r.content == DATA[100:]

    new = generate_model_bytes(8, 1000)
    srv.replace_file(PATH, new)
    assert srv.etag(PATH) != etag
    assert srv.last_modified(PATH) != date  # even within the same second
    for validator in (etag, date, "W/" + etag):
        r = get(srv, headers={"Range": "bytes=100-", "If-Range": validator})
        assert r.status_code == 200 and r.content == new


def test_disk_file_full_and_range(srv, tmp_path):
    path = write_model_file(tmp_path / "d.bin", 9, (3 << 20) + 5)
    data = path.read_bytes()
    srv.add_file("/d.bin", path)
    assert get(srv, "/d.bin").content == data
    r = get(srv, "/d.bin", headers={"Range": "bytes=1048570-2097200"})
    assert r.status_code == 206 and r.content == data[1048570:2097201]
    assert settled(srv, "/d.bin") == len(data) + len(r.content)


def test_paths_with_spaces_and_queries(srv):
    srv.add_file("/dir/a b.bin", b"xyz")
    assert get(srv, "/dir/a b.bin").content == b"xyz"
    assert requests.get(srv.url("/dir/a b.bin") + "?download=true", timeout=5).content == b"xyz"


# --------------------------------------------------------------------------- observation


def test_records_and_reset(srv):
    get(srv, headers={"Authorization": "Bearer t0k", "Range": "bytes=0-9"})
    assert settled(srv, PATH) == 10  # the handler books its bytes after the client has them
    (rec,) = srv.requests
    assert rec.method == "GET" and rec.path == PATH
    assert rec.headers["Authorization"] == "Bearer t0k"
    assert rec.range == "bytes=0-9" and rec.status == 206 and rec.bytes_sent == 10
    assert rec.client[0] == "127.0.0.1"
    srv.reset_stats()
    assert srv.requests == [] and srv.bytes_sent() == 0


def test_keep_alive_reuses_one_connection(srv):
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(srv.url(PATH), timeout=5).status_code == 200
        s.get(srv.url("/missing"), timeout=5)  # errors keep the connection too
        s.get(srv.url(PATH), timeout=5)
    assert len({r.client for r in srv.requests}) == 1


def test_bytes_sent_counts_partial_write_when_client_hangs_up(srv):
    srv.set_fault(PATH, throttle=200_000)
    r = get(srv, stream=True)
    first = next(r.iter_content(1000))
    r.close()  # hang up mid-body
    wait_until(lambda: srv.requests_for(PATH)[0].finished, 20, "the server to notice the hang-up")
    sent = srv.bytes_sent(PATH)
    assert len(first) <= sent < len(DATA)


def test_localhost_and_second_server_are_other_hosts(srv):
    with ModelServer(host="localhost") as other:
        assert other.base_url.startswith("http://localhost:")
        other.add_file("/x", b"other")
        assert requests.get(other.url("/x"), timeout=5).content == b"other"
        assert other.port != srv.port


def test_quiet_even_when_clients_hang_up(srv, capfd):
    srv.set_fault(PATH, close_after=10)
    with pytest.raises(requests.exceptions.RequestException):
        get(srv)
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    get(srv, "/nope")
    wait_until(lambda: len(srv.requests) == 3 and all(r.finished for r in srv.requests), 20, "every request to be handled")
    out, err = capfd.readouterr()
    assert err == ""


# --------------------------------------------------------------------------- faults


def test_fail_times_then_success(srv):
    srv.set_fault(PATH, fail_times=2, fail_status=503)
    assert [get(srv).status_code for _ in range(3)] == [503, 503, 200]


def test_429_with_huge_retry_after(srv):
    srv.set_fault(PATH, fail_times=1, fail_status=429, retry_after=10**9)
    r = get(srv)
    assert r.status_code == 429 and r.headers["Retry-After"] == str(10**9)
    assert get(srv).status_code == 200


@pytest.mark.parametrize("code", [401, 403, 404])
def test_status_always(srv, code):
    srv.set_fault(PATH, status_always=code)
    assert get(srv).status_code == code
    assert requests.head(srv.url(PATH), timeout=5).status_code == code
    srv.clear_faults(PATH)
    assert get(srv).status_code == 200


def test_stall_after_sends_prefix_then_hangs(srv):
    srv.set_fault(PATH, stall_after=5000, stall_times=1)
    r = get(srv, stream=True, timeout=(2, 0.3))
    got = bytearray()
    with pytest.raises(requests.exceptions.ConnectionError):
        for chunk in r.iter_content(1000):  # divides 5000: no partial read lost to the timeout
            got += chunk
    assert bytes(got) == DATA[:5000]
    assert settled(srv, PATH) == 5000
    r.close()
    assert get(srv).content == DATA  # stall_times=1: the next request is served


def test_stalled_handler_notices_client_hangup(srv):
    srv.set_fault(PATH, stall_after=0)
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.recv(4096)
    # The server still works for others and stays responsive.
    srv.clear_faults()
    assert get(srv).status_code == 200


def test_stop_returns_promptly_while_stalled():
    srv = ModelServer().start()
    srv.add_file("/s", DATA)
    srv.set_fault("/s", stall_after=100)
    errors = []

    def client():
        try:
            requests.get(srv.url("/s"), timeout=30).content
        except requests.exceptions.RequestException as exc:
            errors.append(exc)

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 5
    while srv.bytes_sent("/s") < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.stop()  # must end the stalled transfer, not wait for it
    t.join(5)
    assert not t.is_alive() and errors


def test_close_after_truncates_then_recovers(srv):
    srv.set_fault(PATH, close_after=1234, close_times=1)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(srv)
    assert settled(srv, PATH) == 1234
    assert get(srv).content == DATA


def test_close_after_with_range(srv):
    srv.set_fault(PATH, close_after=10)
    r = get(srv, stream=True, headers={"Range": "bytes=100-"})
    assert r.status_code == 206
    got = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in r.iter_content(5):  # urllib3 drops a short final read; 5 divides 10
            got += chunk
    assert bytes(got) == DATA[100:110]


def test_wrong_content_length(srv):
    srv.set_fault(PATH, wrong_content_length=len(DATA) + 100)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(srv)
    srv.set_fault(PATH, wrong_content_length=100)
    r = get(srv)
    assert r.headers["Content-Length"] == "100" and r.content == DATA[:100]


def test_ignore_range(srv):
    srv.set_fault(PATH, ignore_range=True)
    r = get(srv, headers={"Range": "bytes=10-"})
    assert r.status_code == 200 and r.content == DATA


@pytest.mark.parametrize("offset", [0, 77, len(DATA) - 1])
def test_corrupt_at(srv, offset):
    srv.set_fault(PATH, corrupt_at=offset)
    body = get(srv).content
    diff = [i for i in range(len(DATA)) if body[i] != DATA[i]]
    assert diff == [offset]
    r = get(srv, headers={"Range": f"bytes={offset}-"})
    assert r.content[0] != DATA[offset] and r.content[1:] == DATA[offset + 1 :]


def test_corrupt_at_on_disk_file(srv, tmp_path):
    path = write_model_file(tmp_path / "c.bin", 4, 3 << 20)
    srv.add_file("/c.bin", path)
    srv.set_fault("/c.bin", corrupt_at=(2 << 20) + 3)
    body = get(srv, "/c.bin").content
    data = path.read_bytes()
    assert body != data and body[: 2 << 20] == data[: 2 << 20]


def test_extra_bytes_with_and_without_length(srv):
    srv.set_fault(PATH, extra_bytes=50)
    r = get(srv)
    assert r.headers["Content-Length"] == str(len(DATA) + 50)
    assert len(r.content) == len(DATA) + 50 and r.content[: len(DATA)] == DATA
    srv.set_fault(PATH, extra_bytes=50, no_length=True)
    r = get(srv)
    assert "Content-Length" not in r.headers
    assert len(r.content) == len(DATA) + 50


def test_extra_bytes_on_disk_file(srv, tmp_path):
    path = write_model_file(tmp_path / "e.bin", 4, 5000)
    srv.add_file("/e.bin", path)
    srv.set_fault("/e.bin", extra_bytes=7)
    assert len(get(srv, "/e.bin").content) == 5007


def test_html_200(srv):
    srv.set_fault(PATH, html_200=True)
    r = get(srv)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.content.lstrip().lower().startswith(b"<!doctype html")


def test_redirect_to_another_host(srv):
    with ModelServer(host="localhost") as cdn:
        cdn.add_file("/blob", DATA)
        srv.set_fault(PATH, redirect_to=cdn.url("/blob"))
        r = get(srv, headers={"Authorization": "Bearer secret"})
        assert r.status_code == 200 and r.content == DATA
        assert r.history[0].status_code == 302
        assert r.history[0].headers["Location"] == cdn.url("/blob")
        # requests drops credentials on a cross-host redirect; the server records what came.
        assert "Authorization" not in cdn.requests[0].headers


def test_redirect_loop(srv):
    srv.set_fault(PATH, redirect_loop=True)
    with requests.Session() as s:
        s.max_redirects = 5
        with pytest.raises(requests.exceptions.TooManyRedirects):
            s.get(srv.url(PATH), timeout=5)
    paths = [r.path for r in srv.requests]
    assert paths[0] == PATH and paths[1] == PATH + "?loop=1" and len(set(paths)) == len(paths)


def test_throttle_caps_rate(srv):
    srv.add_file("/t", DATA[:200_000])
    srv.set_fault("/t", throttle=400_000)
    t0 = time.monotonic()
    assert get(srv, "/t").content == DATA[:200_000]
    elapsed = time.monotonic() - t0
    assert elapsed > 0.3  # ~0.5 s at 400 kB/s, first 64 KiB free: a floor only a broken throttle misses


def test_extra_headers(srv):
    srv.set_fault(PATH, headers={"X-Linked-Size": "123", "ETag": '"custom"'})
    r = get(srv)
    assert r.headers["X-Linked-Size"] == "123" and r.headers["ETag"] == '"custom"'
    srv.clear_faults()
    assert "X-Linked-Size" not in get(srv).headers


def test_mirror_backends_have_their_own_etags(srv):
    srv.set_fault(PATH, mirror_etags=2)
    first, second = get(srv), get(srv)
    assert first.content == second.content == DATA
    assert first.headers["ETag"] != second.headers["ETag"]
    # Each backend honours If-Range only with its own ETag: the other one answers the whole file.
    third = get(srv, headers={"Range": "bytes=10-19", "If-Range": second.headers["ETag"]})
    fourth = get(srv, headers={"Range": "bytes=10-19", "If-Range": second.headers["ETag"]})
    assert sorted([third.status_code, fourth.status_code]) == [200, 206]


def test_black_hole_accepts_and_never_answers(srv):
    srv.set_fault(PATH, black_hole=True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        get(srv, timeout=(2, 0.3))
    assert len(srv.requests_for(PATH)) == 1  # it was received


def test_drip_sends_one_byte_at_a_time(srv):
    srv.set_fault(PATH, drip=0.05)
    with requests.get(srv.url(PATH), stream=True, timeout=5) as resp:
        assert resp.headers["Content-Length"] == str(len(DATA))
        got = [resp.raw.read1(1024) for _ in range(3)]
    joined = b"".join(got)
    assert len(joined) < 16 and joined == DATA[: len(joined)]  # a byte per 0.05 s, not the body


def test_unknown_fault_option_is_rejected(srv):
    with pytest.raises(TypeError):
        srv.set_fault(PATH, explode=True)


# --------------------------------------------------------------------------- throughput & CLI


def test_serves_a_64mib_disk_file_whole(tmp_path):
    """Streams a large file from disk (its speed is bench/'s business, not a test's)."""
    size = 64 << 20
    path = write_model_file(tmp_path / "big.bin", 11, size)
    with ModelServer() as srv:
        srv.add_file("/big.bin", path)
        n = 0
        with requests.get(srv.url("/big.bin"), stream=True, timeout=10) as r:
            for chunk in r.iter_content(1 << 20):
                n += len(chunk)
        assert n == size and settled(srv, "/big.bin") == size


def test_cli_serves_a_directory(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "m.bin").write_bytes(b"model!")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfd.demo.server", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        base = proc.stdout.readline().decode().strip()
        assert base.startswith("http://127.0.0.1:")
        assert requests.get(base + "/checkpoints/m.bin", timeout=5).content == b"model!"
    finally:
        proc.terminate()
        proc.wait(5)


# --------------------------------------------------------------------------- hold


def test_hold_keeps_requests_waiting_until_release(srv):
    srv.hold()
    replies = []
    clients = [threading.Thread(target=lambda: replies.append(get(srv, timeout=30))) for _ in range(2)]
    for client in clients:
        client.start()
    wait_until(lambda: len(srv.held) == 2, 20, "both clients to connect")
    assert replies == []  # both connected, neither answered
    srv.release()
    for client in clients:
        client.join(timeout=30)
    assert [r.content for r in replies] == [DATA, DATA] and srv.held == []
