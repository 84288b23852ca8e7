"""The pending marker: atomic, self-healing, safe under concurrency, never holds a secret."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.chaos import Lines, wait_until

from cfd.core.manifest.model import ManifestModel, WorkflowModelRef
from cfd.core.sync.marker import MARKER_NAME, Marker, PendingEntry, intent_key
from cfd.core.sync.missing import MissingModelInfo
from cfd.core.sync.fetch import pending_entries, scrub

pytestmark = pytest.mark.timeout(120)


def entry(key: str, **fields: object) -> PendingEntry:
    values: dict[str, object] = dict(
        key=key, filename=f"{key}.safetensors", relative_path=f"checkpoints/{key}.safetensors", size=10,
        sources=(f"https://h/{key}",), criticality="required", workflows=("wf1",), reason="deferred",
    )
    values.update(fields)
    return PendingEntry(**values)  # type: ignore[arg-type]


def _run(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args])


def test_round_trip_and_empty_write_removes(tmp_path: Path) -> None:
    marker = Marker(tmp_path)
    marker.write([entry("a"), entry("b", reason="failed", error="HTTP 404")])
    read = marker.read()
    assert [e.key for e in read] == ["a", "b"]
    assert read[1].error == "HTTP 404"
    marker.write([])
    assert not marker.path.exists() and marker.read() == []


def test_merge_replaces_by_key_and_drops(tmp_path: Path) -> None:
    marker = Marker(tmp_path)
    marker.write([entry("a"), entry("b"), entry("c")])
    marker.merge([entry("b", reason="failed", error="boom"), entry("d")], drop=["a"])
    by_key = {e.key: e for e in marker.read()}
    assert sorted(by_key) == ["b", "c", "d"]
    assert by_key["b"].reason == "failed" and by_key["b"].error == "boom"


def test_corrupt_marker_is_set_aside_with_a_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    marker = Marker(tmp_path, warnings.append)
    marker.path.parent.mkdir(parents=True)
    marker.path.write_text('{"version": 1, "entries": [{"key": ')
    assert marker.read() == []
    assert warnings and "corrupt" in warnings[0]
    aside = list(marker.path.parent.glob(f"{MARKER_NAME}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().startswith('{"version"')
    marker.merge([entry("a")])  # and life goes on
    assert [e.key for e in marker.read()] == ["a"]


@pytest.mark.parametrize("junk", ["[]", '{"entries": 5}', "\x00\x01", '{"entries": [7]}'])
def test_wrong_shapes_never_crash(tmp_path: Path, junk: str) -> None:
    marker = Marker(tmp_path)
    marker.path.parent.mkdir(parents=True)
    marker.path.write_text(junk)
    assert marker.read() == []


def test_stale_temp_file_from_a_dead_writer_is_harmless(tmp_path: Path) -> None:
    marker = Marker(tmp_path)
    marker.write([entry("a")])
    stale = marker.path.with_name(f".{MARKER_NAME}.999999.tmp")
    stale.write_text('{"version": 1, "entr')
    assert [e.key for e in marker.read()] == ["a"]
    marker.merge([entry("b")])
    assert [e.key for e in marker.read()] == ["a", "b"]


WRITER = """
    import sys, time
    from pathlib import Path
    from cfd.core.sync.marker import Marker, PendingEntry
    marker = Marker(Path(sys.argv[1]))
    n = 0
    while True:
        n += 1
        marker.write([PendingEntry(key=f"{n}-{i}", filename="f" * 200, relative_path="p" * 200, size=i,
                                   sources=("https://h/x",), criticality="required", workflows=("wf",),
                                   reason="deferred") for i in range(2000)])
        print(n, flush=True)
"""


def test_killing_a_writer_mid_write_never_corrupts(tmp_path: Path) -> None:
    marker = Marker(tmp_path)
    marker.write([entry("first")])
    for attempt in range(6):
        writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path)],
                                  stdout=subprocess.PIPE, text=True)
        written = Lines(writer.stdout)
        # Killed only once it is in its write loop: 1 to 6 writes done, the next one under way.
        wait_until(lambda: len(written.lines) >= 1 + attempt, 60, f"{1 + attempt} marker writes")
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL  # the kill landed on a running writer
        warnings: list[str] = []
        entries = Marker(tmp_path, warnings.append).read()
        assert not warnings, warnings
        finished = written.text().split()
        # One whole write: the last one finished, or the one the kill cut if its rename came first.
        assert len(entries) == 2000 and entries[0].key.split("-")[0] in (finished[-1], str(len(finished) + 1))
        json.loads(marker.path.read_text())  # whole, valid JSON every time


MERGER = """
    import sys, time
    from pathlib import Path
    from cfd.core.sync.marker import Marker, PendingEntry
    marker, me, other = Marker(Path(sys.argv[1])), sys.argv[2], sys.argv[3]
    for i in range(40):
        marker.merge([PendingEntry(key=f"{me}-{i}", filename="f", relative_path="p", size=1,
                                   sources=(), criticality="optional", workflows=(), reason="deferred")])
        if i == 0:  # overlap for real: go on only once the other process has merged too
            deadline = time.monotonic() + 60
            while f"{other}-0" not in {e.key for e in marker.read()}:
                if time.monotonic() > deadline:
                    sys.exit(3)
                time.sleep(0.01)
"""


def test_concurrent_merges_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    writers = [_run(MERGER, str(tmp_path), name, other) for name, other in (("hook", "agent"), ("agent", "hook"))]
    assert [w.wait(timeout=90) for w in writers] == [0, 0]  # 3: the other never merged while this one ran
    keys = [e.key for e in Marker(tmp_path).read()]
    assert set(keys) == {f"{name}-{i}" for name in ("hook", "agent") for i in range(40)}
    assert len(keys) == 80
    leftovers = [p.name for p in (tmp_path / "cfd").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


SECRET_URLS = (
    "https://user:hunter2@example.com/m.safetensors",
    "https://civitai.com/api/download/models/1?token=sekrit123&type=Model",
)


def test_no_token_ever_stored(tmp_path: Path) -> None:
    model = ManifestModel("0123456789abcdef", "m.safetensors", 5, "checkpoints/m.safetensors", "checkpoints", SECRET_URLS)
    intent = WorkflowModelRef("wf1", "l.safetensors", "loras", "optional", "unresolved", sources=SECRET_URLS, node_id="7", widget_idx=0)
    info = MissingModelInfo(model, ("wf1",), "required", True)
    errors = {
        model.hash: f"HTTP 403 from {SECRET_URLS[1]} (after redirect from {SECRET_URLS[0]})",
        intent_key(intent): f"connection reset by {SECRET_URLS[0]}",
    }
    Marker(tmp_path).merge(pending_entries([info], [intent], "failed", "post-merge", errors))
    text = (tmp_path / "cfd" / MARKER_NAME).read_text()
    for secret in ("hunter2", "sekrit123", "user:"):
        assert secret not in text
    assert "type=Model" in text and "civitai.com/api/download/models/1" in text
    assert {e.key for e in Marker(tmp_path).read()} == {model.hash, "intent:wf1/7/0"}


def test_scrub_keeps_plain_text() -> None:
    assert scrub("HTTP 404: not found") == "HTTP 404: not found"
    assert scrub(None) is None
    assert "hunter2" not in (scrub(f"see {SECRET_URLS[0]}.") or "")


def test_stale_temp_files_of_killed_writers_are_cleaned_up(tmp_path):
    from cfd.core.sync.marker import Marker

    git_dir = tmp_path / ".git"
    (git_dir / "cfd").mkdir(parents=True)
    stale = git_dir / "cfd" / ".pending.json.99999.tmp"
    stale.write_text('{"version": 1, "entr')
    marker = Marker(git_dir)
    marker.write([])
    assert not stale.exists()
    assert marker.read() == []
