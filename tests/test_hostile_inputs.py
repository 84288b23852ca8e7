"""A teammate's pyproject.toml is untrusted input, met through the real commands.

Paths that climb out of the models directory, URLs of other schemes or with credentials,
hosts on loopback / private / link-local addresses, redirects into the LAN, absurd sizes,
wrong types, a 100,000-entry table, deep nesting, invalid UTF-8, control characters that
would forge output lines: never a traceback, never a write outside the models directory,
never a request that should not be made, and a token never shows up anywhere.
Property tests (hypothesis) drive the reader, the diff, `cfd repair` and the hook's sync
over generated hostile manifests.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Clone, ManifestBuilder, Scenario
from helpers.chaos import CFD, MIB, Served, manifest, report, run_cfd, serve
from helpers.faults import ModelServer
from helpers.manifest import big_manifest, toml_value

from cfd.demo.content import generate_model_bytes
from cfd.core.sync.marker import MARKER_NAME

pytestmark = pytest.mark.timeout(180)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def server():
    with ModelServer() as srv:
        yield srv


@pytest.fixture
def sandbox(tmp_path: Path, cfd_env: dict[str, str]) -> dict[str, Any]:
    """A models dir inside a sandbox folder: anything written beside it is an escape."""
    root = tmp_path / "sandbox"
    models = root / "deep" / "er" / "models"
    models.mkdir(parents=True)
    (root / "outside").mkdir()
    (root / "outside" / "keep.txt").write_text("untouched\n")
    env = {**cfd_env, "CFD_MODELS_DIR": str(models), "CFD_STALL_TIMEOUT": "2", "CFD_RETRIES": "1"}
    return {"root": root, "models": models, "outside": root / "outside", "env": env, "index": Path(cfd_env["CFD_INDEX"])}


def snapshot(root: Path, models: Path) -> dict[str, tuple[int, float]]:
    """Every file under `root` except the models dir, with size and mtime."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == models.parent:
            dirs[:] = [d for d in dirs if d != models.name]
        for name in files:
            path = Path(folder) / name
            found[str(path)] = (path.stat().st_size, path.stat().st_mtime)
    return found


def clean_output(*texts: str) -> int:
    """Assert no traceback, no internal error, no control character; the number of texts checked."""
    for text in texts:
        assert "Traceback" not in text, text
        assert "internal error" not in text and "unexpected error" not in text, text
        assert not CONTROL.search(text), f"control characters reach the terminal: {text[:2000]!r}"
        assert not BIDI.search(text), f"bidi controls reach the terminal: {text[:2000]!r}"
    return len(texts)


def env_with(scenario: Scenario, text: str | bytes, name: str = "bob") -> Clone:
    clone = scenario.clone(name)
    clone.commit("environment", {"pyproject.toml": text})
    return clone


def repair_json(clone: Clone, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    result = run_cfd("repair", "--yes", "--json", cwd=clone.path, env=env)
    clean_output(result.stderr)
    return result.returncode, json.loads(result.stdout), result.stderr


# --------------------------------------------------------------------------- paths that escape


ESCAPES = {
    "dotdot": "../escape-dotdot.safetensors",
    "dotdot-deep": "checkpoints/../../../../escape-deep.safetensors",
    "dotdot-very-deep": "/".join([".."] * 40) + "/tmp/cfd-escape-very-deep.safetensors",
    "absolute": "{outside}/escape-absolute.safetensors",
    "windows-drive": "C:\\escape-windows.safetensors",
    "windows-drive-slash": "C:/escape-windows2.safetensors",
    "unc": "\\\\server\\share\\escape-unc.safetensors",
    "backslash-dotdot": "..\\..\\escape-backslash.safetensors",
    "nul": "checkpoints/escape\x00nul.safetensors",
    "newline": "checkpoints/escape\nnewline.safetensors",
    "cfd-own-folder": ".cfd/staging/escape-staging.part",
    "only-dots": "./../.",
    "long-name": "checkpoints/" + "x" * 300 + ".safetensors",
    "long-path": "a/" * 3000 + "escape-long.safetensors",
    "cfd-own-folder-upper": ".CFD/staging/escape-staging-upper.part",  # the same folder on macOS/Windows
    "windows-stream": "checkpoints/escape.safetensors:hidden",
    "windows-device": "checkpoints/NUL.safetensors",
    "windows-device-folder": "COM1/escape.safetensors",
    "windows-trailing-dot": "checkpoints./escape.safetensors",
    "windows-trailing-space": "checkpoints/escape.safetensors ",
}
# Paths with control characters are dropped by the reader (a listed problem), and the entry
# falls back to <category>/<filename> inside the models dir, where it is downloaded.
FALLS_BACK_INSIDE = ("nul", "newline")
BAD_FILENAMES = {
    "filename-dotdot": "../escape-fn.safetensors",
    "filename-absolute": "/etc/escape-fn",
    "filename-drive": "C:\\escape-fn",
    "filename-nul": "escape\x00fn",
    "filename-newline": "escape\nfn.safetensors",
    "filename-escape-seq": "\x1b]0;pwned\x07\x1b[2J.safetensors",
}


def test_path_escapes_are_refused_before_any_request(scenario: Scenario, server: ModelServer, sandbox: dict[str, Any]) -> None:
    models, outside = sandbox["models"], sandbox["outside"]
    good = serve(server, "good.safetensors", 1, MIB)
    builder = manifest([good])
    hostile: list[tuple[str, Served, str]] = []
    for number, (label, relpath) in enumerate({**ESCAPES, **{k: f"checkpoints/ok-{k}.safetensors" for k in BAD_FILENAMES}}.items()):
        m = serve(server, f"h{number}.safetensors", 100 + number, 4096)
        relpath = relpath.format(outside=outside)
        filename = BAD_FILENAMES.get(label, m.name)
        builder.model(m.hash, filename, m.size, relpath, "checkpoints", [m.url])
        builder.ref("wf-hostile", filename, "checkpoints", hash=m.hash, criticality="required", status="resolved",
                    node_id=str(number))
        # The same path as a download intent (no hash: nothing to verify it against).
        builder.ref("wf-intents", filename, "loras", criticality="required", status="unresolved", node_id=str(number),
                    sources=[m.url], relative_path=relpath)
        hostile.append((label, m, relpath))
    clone = env_with(scenario, builder.render())
    before = snapshot(sandbox["root"], models)
    landings = {label: landing(models, relpath) for label, _, relpath in hostile}
    existed = {label: os.path.lexists(path) for label, path in landings.items() if path}

    status = run_cfd("status", cwd=clone.path, env=sandbox["env"])
    clean_output(status.stdout, status.stderr)
    assert status.returncode == 1
    status_json = run_cfd("status", "--json", cwd=clone.path, env=sandbox["env"])
    code, data, stderr = repair_json(clone, sandbox["env"])
    text = run_cfd("repair", "--yes", cwd=clone.path, env=sandbox["env"])
    clean_output(text.stdout, text.stderr)
    assert code == 1
    assert (models / good.relpath).read_bytes() == good.data  # the good entry is not held back
    failed = {f["key"]: f["error"] for f in data["failed"]}
    dropped = json.loads(status_json.stdout)["problems"]
    requests = {label: len(server.requests_for(m.path)) for label, m, _ in hostile}
    for label, m, relpath in hostile:
        if label in FALLS_BACK_INSIDE:
            # The reader drops a path with control characters (a listed problem) and the entry
            # falls back to <category>/<filename>, inside the models dir: that file is fetched.
            assert any(label in p or "control characters" in p for p in dropped)
            assert (models / "checkpoints" / m.name).read_bytes() == m.data
            assert requests[label] >= 1
        else:
            assert requests[label] == 0, f"{label}: fetched although refused"
        if m.hash in failed:
            assert "refusing" in failed[m.hash], (label, failed[m.hash])
            assert len(failed[m.hash]) < 400, (label, len(failed[m.hash]))
    written_outside = [label for label, path in landings.items() if path and os.path.lexists(path) != existed[label]]
    written_outside += ["beside the models dir"] if snapshot(sandbox["root"], models) != before else []
    written_outside += ["/tmp"] if Path("/tmp/cfd-escape-very-deep.safetensors").exists() else []
    assert written_outside == [], written_outside
    marker = (clone.path / ".git" / "cfd" / MARKER_NAME).read_text()
    assert "\\u001b" not in marker and "\x1b" not in marker
    refused = [label for label, count in requests.items() if count == 0]
    report("hostile-paths", inputs=len(hostile) * 2, refused_entries=len(refused) * 2,
           requests_for_refused=sum(requests[label] for label in refused),
           fell_back_inside=sorted(set(requests) - set(refused)),
           requests_for_fallbacks=sum(count for label, count in requests.items() if label not in refused),
           written_outside=len(written_outside), longest_message=max(map(len, failed.values()), default=0))


def test_a_path_escape_to_a_matching_file_is_not_found_on_disk(scenario: Scenario, server: ModelServer, sandbox: dict[str, Any]) -> None:
    """'Already on disk, not indexed' looks at the manifest's path: one that climbs out of the models
    dir to the very file (right size, right hash) must not make status or repair treat it as present."""
    models, outside = sandbox["models"], sandbox["outside"]
    m = serve(server, "m.safetensors", 7, 4096)
    (outside / "m.safetensors").write_bytes(m.data)
    builder = ManifestBuilder()
    builder.model(m.hash, m.name, m.size, "../../../outside/m.safetensors", "checkpoints", [m.url])
    builder.ref("wf1", m.name, "checkpoints", hash=m.hash, criticality="required", status="resolved", node_id="1")
    clone = env_with(scenario, builder.render())
    status = run_cfd("status", "--json", cwd=clone.path, env=sandbox["env"])
    assert json.loads(status.stdout)["on_disk_unindexed"] == []
    text = run_cfd("status", cwd=clone.path, env=sandbox["env"])
    clean_output(text.stdout, text.stderr)
    assert "on disk" not in text.stdout
    code, data, _ = repair_json(clone, sandbox["env"])
    assert code == 1 and data["on_disk_unindexed"] == [] and data["adopted"] == []
    assert "refusing" in data["failed"][0]["error"]
    assert server.requests_for(m.path) == []
    with sqlite3.connect(sandbox["index"]) as db:
        paths = [row[0] for row in db.execute("SELECT relative_path FROM model_locations")]
    assert not any(".." in path for path in paths)


def landing(models: Path, relpath: str) -> str | None:
    """Where a path would land if nothing checked it, when that is outside the models dir."""
    path = os.path.normpath(os.path.join(models, relpath.replace("\\", "/").replace("\x00", "")))
    return None if path.startswith(str(models) + os.sep) else path


def test_hook_refuses_path_escapes_too(scenario: Scenario, server: ModelServer, sandbox: dict[str, Any],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**sandbox["env"], "CFD_MODELS": "all"}.items():
        if key.startswith("CFD_"):
            monkeypatch.setenv(key, value)
    models = sandbox["models"]
    scenario.seed({"pyproject.toml": ManifestBuilder().render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=dict(os.environ)).returncode == 0
    builder = ManifestBuilder()
    served: dict[str, Served] = {}
    for number, (label, relpath) in enumerate(ESCAPES.items()):
        m = serve(server, f"p{number}.safetensors", 200 + number, 2048)
        builder.model(m.hash, m.name, m.size, relpath.format(outside=sandbox["outside"]), "checkpoints", [m.url])
        builder.ref("wf", m.name, "checkpoints", hash=m.hash, criticality="required", status="resolved", node_id=str(number))
        served[label] = m
    alice.commit("hostile", {"pyproject.toml": builder.render()})
    alice.push()
    before = snapshot(sandbox["root"], models)
    pulled = bob.pull()
    assert pulled.returncode == 0 and bob.is_clean()
    clean_output(pulled.stderr)
    requests = {label: len(server.requests_for(m.path)) for label, m in served.items()}
    for label in FALLS_BACK_INSIDE:  # dropped by the reader; the entry falls back inside (see above)
        assert (models / "checkpoints" / served[label].name).read_bytes() == served[label].data
        assert requests.pop(label) >= 1
    assert requests == {label: 0 for label in requests}, "a refused path was fetched"
    assert len(server.requests) == sum(len(server.requests_for(served[label].path)) for label in FALLS_BACK_INSIDE)
    assert snapshot(sandbox["root"], models) == before
    report("hostile-paths-hook", inputs=len(served), refused=len(requests), requests_for_refused=sum(requests.values()),
           requests_for_fallbacks=len(server.requests))


# --------------------------------------------------------------------------- URLs


def test_other_schemes_and_credentials(scenario: Scenario, server: ModelServer, sandbox: dict[str, Any]) -> None:
    secret_words = ("s3cretPW", "SECRET_QUERY_TOKEN", "SECRET_SIG_VALUE")
    data = generate_model_bytes(5, MIB)
    path = "/checkpoints/cred.safetensors"
    server.add_file(path, data)
    with_credentials = server.url(path).replace("http://", "http://alice:s3cretPW@") + "?token=SECRET_QUERY_TOKEN&sig=SECRET_SIG_VALUE"
    bad_schemes = ["file:///etc/passwd", "ftp://example.com/x.safetensors", "data:text/plain;base64,aGVsbG8=",
                   "javascript:alert(1)", "gopher://example.com/x", "http://", "https:///nohost", "http://127.0.0.1:99999/x",
                   " http://127.0.0.1/x", "http://exa mple.com/x"]
    builder = ManifestBuilder()
    from helpers.manifest import short_hash_for

    cred_hash = short_hash_for(data)
    builder.model(cred_hash, "cred.safetensors", len(data), "checkpoints/cred.safetensors", "checkpoints", [with_credentials])
    builder.ref("wf", "cred.safetensors", "checkpoints", hash=cred_hash, criticality="required", status="resolved", node_id="1")
    bad_hashes = []
    for number, url in enumerate(bad_schemes):
        h = f"{number + 1:016x}"
        bad_hashes.append(h)
        builder.model(h, f"s{number}.safetensors", 10, f"checkpoints/s{number}.safetensors", "checkpoints", [url])
        builder.ref("wf", f"s{number}.safetensors", "checkpoints", hash=h, criticality="required", status="resolved",
                    node_id=str(10 + number))
    clone = env_with(scenario, builder.render())
    outputs = []
    for args in (("status",), ("status", "--json"), ("repair", "--dry-run"), ("repair", "--yes"), ("repair", "--yes", "--json")):
        result = run_cfd(*args, cwd=clone.path, env=sandbox["env"])
        clean_output(result.stdout, result.stderr)
        outputs += [result.stdout, result.stderr]
    assert (sandbox["models"] / "checkpoints" / "cred.safetensors").read_bytes() == data
    assert server.requests_for(path)[0].headers.get("Authorization", "").startswith("Basic ")  # the URL's own credentials
    data_json = json.loads(outputs[-2])
    failed = {f["key"]: f["error"] for f in data_json["failed"]}
    assert all(h in failed for h in bad_hashes), failed
    assert sum("only http and https" in failed[h] for h in bad_hashes) >= 5
    stored = [(clone.path / ".git" / "cfd" / MARKER_NAME).read_text(), dump_index(sandbox["index"])]
    leaks = [(word, text[:300]) for word in secret_words for text in outputs + stored if word in text]
    assert leaks == []
    # The two bad URLs that name this server (a bad port, a leading space) never reach it either.
    fetched_bad = [r.path for r in server.requests if r.path.split("?")[0] != path]
    assert fetched_bad == []
    report("hostile-urls", inputs=len(bad_schemes) + 1, refused=sum(h in failed for h in bad_hashes),
           fetched_bad=len(fetched_bad), secrets_leaked=len(leaks))


def dump_index(path: Path) -> str:
    with sqlite3.connect(path) as con:
        return "\n".join(con.iterdump())


PRIVATE = [
    "http://127.0.0.1:{port}/m.safetensors",
    "http://localhost:{port}/m.safetensors",
    "http://[::1]:{port}/m.safetensors",
    "http://[::ffff:127.0.0.1]:{port}/m.safetensors",
    "http://0.0.0.0:{port}/m.safetensors",
    "http://2130706433:{port}/m.safetensors",  # 127.0.0.1 as one number
    "http://0x7f000001:{port}/m.safetensors",
    "http://127.1:{port}/m.safetensors",
    "http://10.0.0.1/m.safetensors",
    "http://192.168.1.1/m.safetensors",
    "http://172.16.0.1/m.safetensors",
    "http://100.64.0.1/m.safetensors",  # carrier-grade NAT
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[fe80::1]/m.safetensors",
    "http://[fd00::1]/m.safetensors",
]


def test_private_addresses_are_refused_without_a_connection(scenario: Scenario, server: ModelServer,
                                                            sandbox: dict[str, Any]) -> None:
    data = generate_model_bytes(6, 4096)
    server.add_file("/m.safetensors", data)
    builder = ManifestBuilder()
    hashes = []
    for number, url in enumerate(PRIVATE):
        h = f"{number + 0x100:016x}"
        hashes.append(h)
        builder.model(h, f"p{number}.safetensors", 4096, f"checkpoints/p{number}.safetensors", "checkpoints",
                      [url.format(port=server.port)])
        builder.ref("wf", f"p{number}.safetensors", "checkpoints", hash=h, criticality="required", status="resolved",
                    node_id=str(number))
    clone = env_with(scenario, builder.render())
    env = {**sandbox["env"], "CFD_ALLOW_PRIVATE_NETWORKS": "false", "CFD_JOBS": "8"}
    started = time.monotonic()
    code, data_json, _ = repair_json(clone, env)
    elapsed = time.monotonic() - started
    assert code == 1
    failed = {f["key"]: f["error"] for f in data_json["failed"]}
    for h, url in zip(hashes, PRIVATE):
        assert "loopback, private or link-local" in failed[h] or "cannot resolve" in failed[h], (url, failed[h])
    assert server.requests == []
    assert elapsed < 15, "refusals must not wait for connection timeouts"
    report("hostile-private-hosts", inputs=len(PRIVATE), refused=sum(h in failed for h in hashes),
           connections=len(server.requests), seconds=round(elapsed, 1))


def test_redirect_from_a_public_host_into_the_lan_is_refused(server: ModelServer, tmp_path: Path) -> None:
    """The first hop counts as public (DownloadOptions.private_hosts, the API's trusted-mirror list);
    every redirect target is checked again and refused without a connection."""
    from cfd.core.download.engine import DownloadJob, DownloadOptions, download_models
    from cfd.core.store.shorthash import short_hash_bytes

    data = generate_model_bytes(7, MIB)
    with ModelServer() as lan:
        lan.add_file("/secret", data)
        targets = {
            "loopback": lan.url("/secret"),
            "localhost": lan.url("/secret").replace("127.0.0.1", "localhost"),
            "metadata": "http://169.254.169.254/latest/meta-data/iam",
            "private": "http://10.1.2.3/secret",
            "ipv6-loopback": f"http://[::1]:{lan.port}/secret",
            # urllib.parse reads the public 8.8.8.8, requests connects to the LAN server.
            "backslash": f"http://127.0.0.1:{lan.port}\\@8.8.8.8/secret",
        }
        jobs = []
        for label, target in targets.items():
            server.set_fault(f"/{label}", redirect_to=target)
            jobs.append(DownloadJob(short_hash_bytes(data), f"{label}.safetensors", f"checkpoints/{label}.safetensors",
                                    len(data), (server.url(f"/{label}"),), short_hash_bytes(data)))
        options = DownloadOptions(private_hosts=(f"127.0.0.1:{server.port}",), retries=1, connect_timeout=2)
        (tmp_path / "models").mkdir()  # cfd never creates the models dir
        outcomes = []
        for job in jobs:  # one at a time: they share a key (and so a lock)
            outcomes += download_models([job], models_dir=tmp_path / "models", index_path=tmp_path / "i.db", options=options)
        for label, outcome in zip(targets, outcomes):
            assert not outcome.success, label
            expected = "backslash" if label == "backslash" else "loopback, private or link-local"
            assert expected in (outcome.error or ""), (label, outcome.error)
        connections_to_lan = len(lan.requests)
        assert connections_to_lan == 0
        assert len(server.requests) == len(targets)  # the first hop was allowed and asked
        # The same chain with the LAN host trusted too works: the refusal was about the address.
        trusted = DownloadOptions(private_hosts=(f"127.0.0.1:{server.port}", f"127.0.0.1:{lan.port}"))
        ok = download_models([jobs[0]], models_dir=tmp_path / "models", index_path=tmp_path / "i.db", options=trusted)[0]
        assert ok.success, ok.error
    report("hostile-redirect-into-lan", inputs=len(targets), refused=sum(not o.success for o in outcomes),
           connections_to_lan=connections_to_lan)


# --------------------------------------------------------------------------- values of the wrong kind


WRONG_TYPES = """
[tool.comfydock.models]
aaaaaaaaaaaaaaa1 = {filename = 5, size = 10, sources = ["http://x.invalid/a"]}
aaaaaaaaaaaaaaa2 = {filename = "b.safetensors", size = -5, relative_path = true, sources = "http://x.invalid/b"}
aaaaaaaaaaaaaaa3 = {filename = "c.safetensors", size = "big", sources = [1, {a = 1}, "http://x.invalid/c"]}
aaaaaaaaaaaaaaa4 = {filename = "d.safetensors", size = 99999999999999999999, sources = ["http://x.invalid/d"]}
aaaaaaaaaaaaaaa5 = {filename = "e.safetensors", size = 9223372036854775807, category = [], sources = ["{url}"]}
aaaaaaaaaaaaaaa6 = "just a string"
aaaaaaaaaaaaaaa7 = {filename = "g.safetensors", size = 1.5e300, blake3 = 7, sha256 = ["x"]}
not-a-hash = {filename = "h.safetensors"}

[[tool.comfydock.workflows.wf.models]]
filename = "a"
hash = 123
status = ["resolved"]
criticality = 5
nodes = "x"

[[tool.comfydock.workflows.wf.models]]
filename = "e.safetensors"
hash = "aaaaaaaaaaaaaaa5"
criticality = "required"
nodes = [{{node_id = [], widget_idx = "0"}}]

[[tool.comfydock.workflows.wf.models]]
filename = "d.safetensors"
hash = "aaaaaaaaaaaaaaa4"
nodes = [1, 2]

[[tool.comfydock.workflows.wf.models]]
filename = "b.safetensors"
hash = "aaaaaaaaaaaaaaa2"

[tool.comfydock.workflows.broken]
models = 7

[tool.comfydock.workflows."wf\\u001b[2Jclear"]
path = "x"
"""


FORGED_KEY = "\\u001b]0;pwned\\u0007\\u001b[2J\\ncfd: forged line \\u202egpj.exe"


def test_escape_sequences_and_bidi_controls_from_a_manifest_never_reach_the_terminal(
        scenario: Scenario, server: ModelServer, sandbox: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Model-table keys that are not hashes (escape sequences, a forged `cfd:` line, a bidi
    override, a hash with a trailing newline) and names with bidi controls, pulled through the
    installed hooks and shown by status, the repair preview, the repair run and its JSON."""
    for key, value in {**sandbox["env"], "CFD_ON_PULL": "defer"}.items():
        if key.startswith("CFD_"):
            monkeypatch.setenv(key, value)
    good = serve(server, "good.safetensors", 40, 64 * 1024)
    trick = "\u202egpj.safetensors"
    builder = ManifestBuilder()
    builder.model(good.hash, trick, good.size, f"checkpoints/{trick}", "checkpoints", [good.url])
    builder.ref("wf\u2066x", trick, "checkpoints", hash=good.hash, criticality="required", status="resolved", node_id="1")
    builder.model("ffffffffffffff01", "a.safetensors", 10, "checkpoints/a.safetensors", "checkpoints", ["http://x.invalid/a"])
    builder.model("ffffffffffffff02", "b.safetensors", 10, "checkpoints/b.safetensors", "checkpoints", ["http://x.invalid/b"])
    text = builder.render()
    text = text.replace("ffffffffffffff01 =", f'"{FORGED_KEY}" =').replace("ffffffffffffff02 =", '"abcdef0123456789\\n" =')
    scenario.seed({"pyproject.toml": ManifestBuilder().render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=dict(os.environ)).returncode == 0
    alice.commit("hostile keys", {"pyproject.toml": text})
    alice.push()
    pulled = bob.pull()
    assert pulled.returncode == 0 and "not a model hash" in pulled.stderr, pulled.stderr
    outputs = {"git pull": pulled.stderr}
    for args in (("status",), ("status", "--json"), ("repair", "--dry-run"), ("repair", "--yes"), ("repair", "--yes", "--json")):
        result = run_cfd(*args, cwd=bob.path, env=dict(os.environ))
        outputs[" ".join(args)] = result.stdout + result.stderr
    raw_controls = sum(bool(CONTROL.search(out) or BIDI.search(out)) for out in outputs.values())
    forged = [where for where, out in outputs.items() if any(line.startswith("cfd: forged") for line in out.splitlines())]
    for out in outputs.values():
        clean_output(out)
    assert forged == [], forged
    assert "\\u202egpj.safetensors" in outputs["repair --dry-run"]  # shown, as escapes
    problems = json.loads(run_cfd("status", "--json", cwd=bob.path, env=dict(os.environ)).stdout)["problems"]
    assert any("abcdef0123456789\\u000a" in p and "not a model hash" in p for p in problems), problems
    assert any("\\u001b]0;pwned" in p for p in problems), problems
    assert (sandbox["models"] / "checkpoints" / trick).read_bytes() == good.data  # the name itself is kept
    report("hostile-escapes", outputs_checked=len(outputs), outputs_with_raw_controls=raw_controls, forged_lines=len(forged))


def test_wrong_types_huge_and_negative_sizes(scenario: Scenario, server: ModelServer, sandbox: dict[str, Any]) -> None:
    text = WRONG_TYPES.replace("{url}", server.url("/e")).replace("{{", "{").replace("}}", "}")
    clone = env_with(scenario, ManifestBuilder().render() + text)
    checked = 0
    for args in (("status",), ("status", "--json"), ("repair", "--dry-run"), ("repair", "--yes"), ("index", "scan")):
        result = run_cfd(*args, cwd=clone.path, env=sandbox["env"])
        checked += clean_output(result.stdout, result.stderr)
        assert result.returncode in (0, 1), (args, result.stdout, result.stderr)
    status = json.loads(run_cfd("status", "--json", cwd=clone.path, env=sandbox["env"]).stdout)
    assert len(status["problems"]) >= 8
    code, data, _ = repair_json(clone, sandbox["env"])
    failed = {f["key"]: f["error"] for f in data["failed"]}
    assert "not enough disk space" in failed["aaaaaaaaaaaaaaa5"]  # 8 EiB
    assert "aaaaaaaaaaaaaaa4" in failed  # a size beyond TOML's range is no size; x.invalid cannot resolve
    assert server.requests == []
    report("hostile-types", entries=text.count("filename ="), problems_listed=len(status["problems"]),
           requests=len(server.requests), outputs_checked=checked)


def test_deep_nesting_and_invalid_utf8_through_repair_and_hooks(scenario: Scenario, sandbox: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sandbox["env"].items():
        if key.startswith("CFD_"):
            monkeypatch.setenv(key, value)
    cases = {
        "deep nesting": b"[tool.comfydock]\nx = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "deep tables": b"[tool.comfydock.models]\na = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n",
        "invalid UTF-8": b"[tool.comfydock.models]\n# \xff\xfe\nabcdefabcdefabcd = {filename = \"\xc3\x28\"}\n",
        "NUL byte": b"[tool.comfydock.models]\nabcdefabcdefabcd = {filename = \"a\x00b\"}\n",
        "UTF-16": "[tool.comfydock.models]\n".encode("utf-16"),
    }
    scenario.seed({"pyproject.toml": ManifestBuilder().render()})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=dict(os.environ)).returncode == 0
    checked = 0
    for label, data in cases.items():
        alice.commit(label, {"pyproject.toml": data})
        alice.push()
        pulled = bob.pull()
        assert pulled.returncode == 0 and bob.is_clean(), (label, pulled.stderr)
        checked += clean_output(pulled.stderr)
        assert "does not parse" in pulled.stderr or "not valid UTF-8" in pulled.stderr, (label, pulled.stderr)
        for args in (("status",), ("repair", "--yes")):
            result = run_cfd(*args, cwd=bob.path, env=dict(os.environ))
            checked += clean_output(result.stdout, result.stderr)
            assert result.returncode == 2 and result.stderr.startswith("cfd: error:"), (label, args, result.stderr)
            assert len(result.stderr.splitlines()) <= 2, (label, result.stderr)
    report("hostile-encodings", inputs=len(cases), outputs_checked=checked)


# --------------------------------------------------------------------------- size of the manifest


def test_a_100000_entry_table_stays_responsive(scenario: Scenario, sandbox: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sandbox["env"].items():
        if key.startswith("CFD_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("CFD_ON_PULL", "defer")
    old, new = big_manifest(100_000, 20, 5, new_fraction=0.0002, seed=3)
    scenario.seed({"pyproject.toml": old})
    alice, bob = scenario.clone("alice"), scenario.clone("bob")
    assert run_cfd("hooks", "install", cwd=bob.path, env=dict(os.environ)).returncode == 0
    times = {}
    for args in (("status",), ("status", "--json"), ("repair", "--dry-run")):
        started = time.monotonic()
        result = run_cfd(*args, cwd=bob.path, env=dict(os.environ))
        times[" ".join(args)] = round(time.monotonic() - started, 2)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    alice.commit("20 more models", {"pyproject.toml": new})
    alice.push()
    started = time.monotonic()
    pulled = bob.pull()
    times["git pull (hook)"] = round(time.monotonic() - started, 2)
    assert pulled.returncode == 0 and "20 new model(s) needed" in pulled.stderr, pulled.stderr
    # Its times are figures (RELIABILITY.md), not assertions: what the test holds is that every
    # command finishes with the right answer, under the suite's timeout.
    report("hostile-100k-entries", entries=100_000, manifest_mib=round(len(new) / MIB, 1),
           **{k.replace(" ", "_"): v for k, v in times.items()})


# --------------------------------------------------------------------------- tokens never leak


HF_SECRET = "hf_SeCrEt0KeN0123456789abcdef"
CIVITAI_SECRET = "civ_SeCrEtKeY0123456789abcdef"


def test_a_token_never_appears_anywhere(scenario: Scenario, cfd_env: dict[str, str], models_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_ENDPOINT makes the test's hub a Hugging Face host (as huggingface_hub has it), so the
    token really is sent; the hub redirects to storage on another host, which fails in every way."""
    from cfd.agent.paths import agent_paths

    with ModelServer(tls=True) as hub, ModelServer(host="localhost") as storage:
        for key in ("CFD_MODELS_DIR", "CFD_INDEX", "CFD_ALLOW_PRIVATE_NETWORKS"):
            monkeypatch.setenv(key, cfd_env[key])
        monkeypatch.setenv("HF_ENDPOINT", hub.base_url)  # https: a token goes over nothing else
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", hub.ca_file or "")
        monkeypatch.setenv("HF_TOKEN", HF_SECRET)
        monkeypatch.setenv("CIVITAI_API_KEY", CIVITAI_SECRET)
        monkeypatch.setenv("CFD_MODELS", "all")
        monkeypatch.setenv("CFD_RETRIES", "2")
        monkeypatch.setenv("CFD_STALL_TIMEOUT", "1")
        env = dict(os.environ)
        models: list[Served] = []
        for number, (name, fault) in enumerate({
            "ok": {}, "denied": {"status_always": 401}, "forbidden": {"status_always": 403}, "broken": {"status_always": 500},
            "page": {"html_200": True}, "gone": {"status_always": 404}, "stall": {"stall_after": 100},
            "lying": {"wrong_content_length": 5},
        }.items()):
            data = generate_model_bytes(900 + number, 64 * 1024)
            storage.add_file(f"/blob/{name}", data)
            hub_path = f"/org/repo/resolve/main/{name}.safetensors"
            if name == "denied" or name == "forbidden":
                hub.set_fault(hub_path, **fault)
            else:
                signed = storage.url(f"/blob/{name}") + f"?X-Amz-Signature=SIGSECRET{number}&token={HF_SECRET}"
                hub.set_fault(hub_path, redirect_to=signed)
                if fault:
                    storage.set_fault(f"/blob/{name}", **fault)
            from helpers.manifest import short_hash_for

            models.append(Served(f"{name}.safetensors", number, len(data), data, short_hash_for(data),
                                 hub.url(f"/org/repo/blob/main/{name}.safetensors")))
        scenario.seed({"pyproject.toml": ManifestBuilder().render()})
        alice, bob = scenario.clone("alice"), scenario.clone("bob")
        assert run_cfd("hooks", "install", cwd=bob.path, env=env).returncode == 0
        alice.commit("models", {"pyproject.toml": manifest(models).render()})
        alice.push()

        texts: dict[str, str] = {}
        pulled = bob.pull()
        assert pulled.returncode == 0
        texts["git pull"] = pulled.stdout + pulled.stderr
        for args in (("status",), ("status", "--json"), ("repair", "--dry-run"), ("repair", "--yes"),
                     ("repair", "--yes", "--json"), ("index", "list"), ("index", "list", "--json"),
                     ("index", "show", models[0].hash), ("index", "show", models[0].hash, "--json")):
            result = run_cfd(*args, cwd=bob.path, env=env)
            texts[" ".join(args)] = result.stdout + result.stderr
        agent = subprocess.Popen([*CFD, "agent", "run", "--retry-base", "0.2", "--settle", "0.2"], cwd=bob.path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        paths = agent_paths(models_dir)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and "download failed" not in (paths.log.read_text() if paths.log.exists() else ""):
                time.sleep(0.1)
            texts["agent status"] = run_cfd("agent", "status", cwd=bob.path, env=env).stdout
            texts["agent status --json"] = run_cfd("agent", "status", "--json", cwd=bob.path, env=env).stdout
        finally:
            agent.terminate()
            texts["agent console"] = agent.communicate(timeout=20)[0]
        assert "download failed" in paths.log.read_text(), "the agent never retried: the log proves nothing"
        for file in [*paths.root.iterdir(), *(bob.path / ".git" / "cfd").iterdir(), *(models_dir / ".cfd").rglob("*")]:
            if file.is_file() and not file.name.endswith(".part"):
                texts[str(file)] = file.read_text(errors="replace")
        texts["index"] = dump_index(Path(cfd_env["CFD_INDEX"]))
        texts["pyproject"] = (bob.path / "pyproject.toml").read_text()

        sent = [r for r in hub.requests if r.headers.get("Authorization")]
        assert sent and all(r.headers["Authorization"] == f"Bearer {HF_SECRET}" for r in sent)  # the token was in play
        assert not any("Authorization" in r.headers for r in storage.requests)  # and never left its host
        assert (models_dir / models[0].relpath).read_bytes() == models[0].data
        leaks = [(secret, where) for where, text in texts.items() for secret in (HF_SECRET, CIVITAI_SECRET, "SIGSECRET")
                 if secret in text]
        assert leaks == [], leaks
        assert "HF_TOKEN" in texts["repair --yes"]  # the hint names where the token came from, not what it is
    report("hostile-token-leak", outputs_checked=len(texts), hub_requests_with_token=len(sent),
           storage_requests_with_token=sum("Authorization" in r.headers for r in storage.requests), leaks=len(leaks))


def test_cfd_hash_of_a_fifo_or_device_does_not_block(tmp_path: Path) -> None:
    """`cfd hash` reads what it is given: a FIFO would block and /dev/zero never ends."""
    os.mkfifo(tmp_path / "pipe")
    result = subprocess.run([*CFD, "hash", "pipe", "/dev/zero"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "cfd: error: cannot hash pipe: not a regular file",
        "cfd: error: cannot hash /dev/zero: not a regular file",
    ]


def test_a_token_is_not_in_exception_text_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: outcomes, their errors, repr of the options and every log record."""
    import logging

    from cfd.core.download.engine import DownloadJob, DownloadOptions, download_models
    from cfd.core.download.tokens import Tokens

    caplog.set_level(logging.DEBUG)
    with ModelServer(tls=True) as hub, ModelServer(host="localhost") as storage:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", hub.ca_file or "")
        hub.set_fault("/r/denied", status_always=401)
        hub.set_fault("/r/away", redirect_to=storage.url("/x") + f"?token={HF_SECRET}")
        storage.set_fault("/x", status_always=500)
        hub.set_fault("/r/bad", redirect_to=f"ftp://user:{HF_SECRET}@example.com/x")
        options = DownloadOptions(tokens=Tokens(hf=HF_SECRET, civitai=CIVITAI_SECRET, hf_origin="HF_TOKEN"),
                                  hf_hosts=(f"127.0.0.1:{hub.port}",), allow_private_networks=True, retries=2, backoff_base=0.01)
        jobs = [DownloadJob(f"{n:016x}", f"{n}.safetensors", f"checkpoints/{n}.safetensors", 10, (hub.url(p),), f"{n:016x}")
                for n, p in enumerate(["/r/denied", "/r/away", "/r/bad"])]
        (tmp_path / "m").mkdir()  # cfd never creates the models dir
        outcomes = download_models(jobs, models_dir=tmp_path / "m", index_path=tmp_path / "i.db", options=options)
    assert all(not o.success for o in outcomes)
    texts = [repr(options), str(options), *(repr(o) for o in outcomes), caplog.text]
    for text in texts:
        assert HF_SECRET not in text and CIVITAI_SECRET not in text, text[:500]


# --------------------------------------------------------------------------- property tests

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("CFD_HOSTILE_EXAMPLES", "60"))
PIECES = ["..", ".", "", "a", "C:", ".cfd", "staging", "x" * 256, "é", "\u202e", "con", "~", "$HOME", "*", " ", "a b"]
NASTY_CHARS = "/\\.:\x00\n\r\t\x1b\x7f\x85\u2028\u202e\"'[]{}=#é字😀 aZ9-_~%$"
nasty_text = st.text(alphabet=NASTY_CHARS, max_size=24)
path_like = st.one_of(
    st.lists(st.sampled_from(PIECES) | nasty_text, min_size=1, max_size=6).map("/".join),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("\\".join),
    st.sampled_from([*ESCAPES.values(), *BAD_FILENAMES.values(), "/{outside}/abs.safetensors", "{outside}/x"]),
    nasty_text,
)
name_like = st.one_of(st.sampled_from(["m.safetensors", "lora.safetensors", *BAD_FILENAMES.values()]), nasty_text)


def url_like(good: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(good),
        st.sampled_from(["file:///etc/passwd", "ftp://example.com/x", "data:,hello", "javascript:x", "http://", "//x/y",
                         "http://127.0.0.1:1/x", "http://[::1", "http://a\nb/", "https://user:pw@127.0.0.1:1/x?token=t"]),
        nasty_text,
    )


def scalar_junk() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False),
                     nasty_text, st.lists(nasty_text, max_size=2))


@st.composite
def hostile_manifests(draw: Any, served: list[Served], outside: str) -> str:
    """A ComfyDock pyproject whose entries mix served models (real hashes: downloads happen)
    with hostile paths, names, URLs and values of the wrong type."""
    good_urls = [m.url for m in served]
    builder = ManifestBuilder()
    lines: list[str] = []
    def mostly(good: Any, bad: st.SearchStrategy[Any]) -> Any:
        """The sane value two times in three (so that downloads happen), else a hostile one."""
        return good if draw(st.integers(0, 2)) else draw(bad)

    for number in range(draw(st.integers(0, 4))):
        base = draw(st.sampled_from(served))
        h = mostly(base.hash, st.text(alphabet="0123456789abcdef", min_size=16, max_size=16))
        entry: dict[str, Any] = {
            "filename": mostly(base.name, st.one_of(name_like, scalar_junk())),
            "size": mostly(base.size, st.one_of(st.sampled_from([-1, 0, 2**63 - 1]), scalar_junk())),
            "relative_path": mostly(draw(st.sampled_from([base.relpath, f"x/{base.name}", f"a/./b/../{base.name}"])),
                                    st.one_of(path_like, scalar_junk())),
            "category": mostly("checkpoints", st.one_of(nasty_text, scalar_junk())),
            "sources": mostly([base.url], st.one_of(st.lists(url_like(good_urls), max_size=3), scalar_junk())),
        }
        entry = {k: (v.replace("{outside}", outside) if isinstance(v, str) else v) for k, v in entry.items() if v is not None}
        lines.append(f"{json.dumps(h)} = {toml_value(_tomlable(entry))}")
        wf = draw(st.sampled_from(["wf", "w-2", "w\u202e3"]))
        builder.ref(wf, entry["filename"] if isinstance(entry.get("filename"), str) else "x", "checkpoints", hash=h,
                    criticality=draw(st.sampled_from(["required", "optional", "flexible", "bogus"])),
                    status=mostly("resolved", st.sampled_from(["unresolved", "other"])), node_id=str(number))
    for number in range(draw(st.integers(0, 3))):  # download intents
        relpath = mostly(None, st.one_of(path_like, st.just("loras/i.safetensors")))
        builder.ref("intents", draw(name_like), draw(st.one_of(st.just("loras"), nasty_text)), status="unresolved",
                    criticality="required", node_id=str(100 + number),
                    sources=draw(st.lists(url_like(good_urls), min_size=1, max_size=2)),
                    relative_path=None if relpath is None else relpath.replace("{outside}", outside))
    text = builder.render()
    return text.replace("[tool.comfydock.models]\n", "") + "\n[tool.comfydock.models]\n" + "\n".join(lines) + "\n"


def _tomlable(value: Any) -> Any:
    if isinstance(value, list):
        return [_tomlable(v) for v in value if v is not None]
    return value


def outside_writes(sandbox_root: Path, models: Path, before: dict[str, tuple[int, float]], landings: list[str]) -> list[str]:
    after = snapshot(sandbox_root, models)
    changed = [p for p in after if before.get(p) != after[p]]
    return changed + [p for p in landings if os.path.lexists(p)]


def deep_landings(models: Path, text: str) -> list[str]:
    """Escapes that would land beyond the sandbox (checked by name, since we cannot snapshot /)."""
    import tomllib

    try:
        comfydock = tomllib.loads(text)["tool"]["comfydock"]
    except (tomllib.TOMLDecodeError, KeyError):
        return []
    entries = list((comfydock.get("models") or {}).values())
    entries += [ref for wf in (comfydock.get("workflows") or {}).values() for ref in wf.get("models", [])]
    found = []
    for entry in entries:
        relpath = entry.get("relative_path") if isinstance(entry, dict) else None
        path = landing(models, relpath) if isinstance(relpath, str) else None
        if path and "/sandbox" not in path and not os.path.isdir(path) and not os.path.lexists(path):
            found.append(path)
    return found


def test_reader_and_diff_never_crash_on_hostile_strings() -> None:
    """Counted, so a figure says how many generated manifests were really read and compared."""
    counts = {"examples": 0, "unreadable_versions": 0, "diffs_compared": 0}
    _reader_and_diff_example(counts)
    assert counts["examples"] > 0
    report("hostile-property-reader-and-diff", **counts)


@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def _reader_and_diff_example(counts: dict[str, int], data: Any) -> None:
    from cfd.core.manifest.diff import diff_manifest_bytes, diff_manifests
    from cfd.core.errors import ManifestError
    from cfd.core.manifest.model import parse_manifest

    served = [Served("m.safetensors", 1, 4096, b"", "0123456789abcdef", "http://127.0.0.1:9/m")]
    old = data.draw(hostile_manifests(served, "/tmp/outside")).encode()
    new = data.draw(hostile_manifests(served, "/tmp/outside")).encode()
    counts["examples"] += 1
    for blob in (old, new):
        try:
            manifest_ = parse_manifest(blob)
        except ManifestError as exc:
            assert "\n" not in exc.message
            counts["unreadable_versions"] += 1
            continue
        for model in manifest_.models.values():
            for text in (model.filename, model.relative_path, model.category or "", *model.sources):
                assert not CONTROL.search(text), repr(text)
        for ref in manifest_.refs:
            assert not CONTROL.search(ref.workflow + ref.filename + (ref.relative_path or "")), repr(ref)
        for problem in manifest_.problems:
            assert not CONTROL.search(problem) and "\n" not in problem, repr(problem)
    try:
        quick = diff_manifest_bytes(old, new)
        new_manifest = parse_manifest(new)
    except ManifestError:
        return
    try:
        old_manifest = parse_manifest(old)
    except ManifestError:  # an unreadable old version counts as empty
        from cfd.core.manifest.model import EMPTY_MANIFEST as old_manifest
    full = diff_manifests(old_manifest, new_manifest)
    assert dict(quick.newly_needed) == dict(full.newly_needed)
    assert {r.identity for r in quick.new_intents} == {r.identity for r in full.new_intents}
    counts["diffs_compared"] += 1


@pytest.mark.timeout(max(180, EXAMPLES))
def test_repair_and_hook_never_write_outside_the_models_dir(scenario: Scenario, server: ModelServer, tmp_path: Path,
                                                            cfd_env: dict[str, str]) -> None:
    """Generated hostile manifests through plan_repair/run_repair and the hook's sync_between, in
    process (a fresh models dir and index per example): never anything but a CfdError, never a
    file outside the models dir, whatever the paths say."""
    from cfd.core.environment import open_environment
    from cfd.core.errors import CfdError
    from cfd.core.sync.pullsync import sync_between
    from cfd.core.sync.repair import plan_repair, run_repair

    served = [serve(server, f"m{i}.safetensors", 500 + i, 4096 + i) for i in range(3)]
    root = tmp_path / "sandbox"
    outside = root / "outside"
    outside.mkdir(parents=True)
    clone = scenario.clone("bob")
    clone.commit("start", {"pyproject.toml": ManifestBuilder().render()})
    counter = {"examples": 0, "downloaded": 0, "refused": 0, "outside": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(data: Any) -> None:
        counter["examples"] += 1
        run = root / f"run{counter['examples']}" / "a" / "b"
        models = run / "models"
        models.mkdir(parents=True)
        text = data.draw(hostile_manifests(served, str(outside)))
        indexes = tmp_path / "indexes" / str(counter["examples"])
        environ = {**cfd_env, "CFD_MODELS_DIR": str(models), "CFD_INDEX": str(indexes / "1.db"), "CFD_RETRIES": "1",
                   "CFD_STALL_TIMEOUT": "2", "CFD_MODELS": "all"}
        before = snapshot(root, models)
        landings = deep_landings(models, text)
        (clone.path / "pyproject.toml").write_text(text, encoding="utf-8")
        try:
            env = open_environment(clone.path, environ=environ)
            result = run_repair(env, plan_repair(env, "all"))
            counter["downloaded"] += len(result.downloaded)
            counter["refused"] += sum("refusing" in f.error for f in result.failed)
        except CfdError:
            pass
        escaped = outside_writes(root, models, before, landings)
        counter["outside"] += len(escaped)
        assert escaped == [], text
        # The same manifest arriving through a pull (the hook's path), into a fresh models dir.
        models2 = run / "models2"
        models2.mkdir()
        before = snapshot(root, models2)
        clone.git("add", "pyproject.toml")
        clone.git("commit", "-q", "--allow-empty", "-m", "hostile")
        try:
            env = open_environment(clone.path, environ={**environ, "CFD_MODELS_DIR": str(models2),
                                                        "CFD_INDEX": str(indexes / "2.db")})
            sync_between(env, "HEAD~1", "HEAD", trigger="post-merge", mode="download", strategy="all")
        except CfdError:
            pass
        escaped = [p for p in outside_writes(root, models2, before, deep_landings(models2, text))
                   if not p.startswith(str(models) + os.sep)]
        counter["outside"] += len(escaped)
        assert escaped == [], text
        clone.git("checkout", "-q", "--", "pyproject.toml")

    check()
    assert counter["downloaded"] > 0, "no example downloaded anything: the property proved little"
    report("hostile-property-repair-and-hook", examples=counter["examples"], downloads=counter["downloaded"],
           refusals=counter["refused"], written_outside=counter["outside"])


def test_a_server_that_rewards_every_connection_gets_no_more_than_the_ceiling(server, tmp_path):
    """Capping each connection makes every extra one pay: cfd still stops at cfd.connections=auto's ceiling,
    and an absurd cfd.connections is refused with a one-line error."""
    from cfd.core.download.engine import DownloadJob, DownloadOptions, download_models
    from cfd.core.settings import MAX_CONNECTIONS
    from cfd.core.store.shorthash import short_hash_bytes

    data = generate_model_bytes(seed=11, size=96 * MIB)
    url = server.add_file("/greedy.safetensors", data)
    server.set_fault("/greedy.safetensors", throttle=2 * MIB)
    digest = short_hash_bytes(data)
    job = DownloadJob(key=digest, filename="greedy.safetensors", relative_path="checkpoints/greedy.safetensors",
                      size=len(data), sources=(url,), expected_hash=digest)
    (tmp_path / "models").mkdir()
    options = DownloadOptions(allow_private_networks=True, segment_min=4 * MIB)
    [outcome] = download_models([job], models_dir=tmp_path / "models", index_path=tmp_path / "m.db", options=options)
    assert outcome.success, outcome.error
    spans = sorted((r.started, r.finished or float("inf")) for r in server.requests_for("/greedy.safetensors"))
    at_once = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert 8 < at_once <= options.connections  # it grew (past two steps), and stopped at the ceiling
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    subprocess.run(["git", "init", "-q", str(env_dir)], check=True)
    (env_dir / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    result = run_cfd("config", env={**os.environ, "CFD_CONNECTIONS": str(MAX_CONNECTIONS + 1)}, cwd=env_dir)
    assert "Traceback" not in result.stderr
    assert f"expected auto or a whole number from 1 to {MAX_CONNECTIONS}" in result.stdout + result.stderr
    report("greedy-per-connection-cap", connections_at_once=at_once, ceiling=options.connections)
