"""URLs from a teammate's manifest whose host is not what it seems, and where tokens may go.

Parsers disagree on authorities RFC 3986 does not allow (`http://evil\\@huggingface.co/`:
urllib.parse reads huggingface.co, urllib3 connects to evil). Such a source, or a redirect
hop, is refused before any connection, and nothing printed names the host that was not
going to be contacted. Tokens go only over https to their own service's scheme, host and
port (HF_ENDPOINT's too). Every attack runs through a real `cfd repair` against servers on
127.0.0.1 that record the Authorization header they receive.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import ManifestBuilder, Scenario
from helpers.chaos import MIB, report, run_cfd
from helpers.faults import ModelServer
from helpers.manifest import short_hash_for

from cfd.demo.content import generate_model_bytes
from cfd.core.sync.marker import MARKER_NAME

pytestmark = pytest.mark.timeout(180)
HF_SECRET = "hf_UrLsEcReT0123456789abcdef"
CIVITAI_SECRET = "civ_UrLsEcReT0123456789abcdef"


def dump_index(path: Path) -> str:
    with sqlite3.connect(path) as con:
        return "\n".join(con.iterdump())


def model_manifest(entries: list[tuple[str, bytes, str]]) -> str:
    """(name, data, source) -> a manifest with each as a required resolved model."""
    builder = ManifestBuilder()
    for number, (name, data, source) in enumerate(entries):
        digest = short_hash_for(data)
        builder.model(digest, f"{name}.safetensors", len(data), f"checkpoints/{name}.safetensors", "checkpoints", [source])
        builder.ref("wf", f"{name}.safetensors", "checkpoints", hash=digest, criticality="required", status="resolved",
                    node_id=str(number))
    return builder.render()


def repair(scenario: Scenario, text: str, env: dict[str, str], name: str = "bob") -> tuple[dict[str, Any], list[str], Path]:
    clone = scenario.clone(name)
    clone.commit("environment", {"pyproject.toml": text})
    outputs = []
    for args in (("status",), ("status", "--json"), ("repair", "--dry-run"), ("repair", "--yes")):
        result = run_cfd(*args, cwd=clone.path, env=env)
        outputs += [result.stdout, result.stderr]
    result = run_cfd("repair", "--yes", "--json", cwd=clone.path, env=env)
    outputs += [result.stdout, result.stderr]
    for text_out in outputs:
        assert "Traceback" not in text_out and "internal error" not in text_out, text_out
    return json.loads(result.stdout), outputs, clone.path


# --------------------------------------------------------------------------- item 1: the authority


def test_a_backslash_or_two_ats_in_the_authority_is_refused_before_any_connection(
        scenario: Scenario, cfd_env: dict[str, str], models_dir: Path) -> None:
    """Each source names huggingface.co / civitai.com / a public address to urllib.parse while
    requests would connect to the recording server on 127.0.0.1 (with the token, and past the
    private-address check): with private networks allowed (the token case) and not."""
    with ModelServer() as thief, ModelServer(tls=True) as tls_thief:
        data = generate_model_bytes(1, 64 * 1024)
        for srv in (thief, tls_thief):
            srv.add_file("/m.safetensors", data)
        base, tls_base = f"127.0.0.1:{thief.port}", f"127.0.0.1:{tls_thief.port}"
        hostile = {
            "hf-http": f"http://{base}\\@huggingface.co/org/repo/resolve/main/m.safetensors",
            "hf-https": f"https://{tls_base}\\@huggingface.co/org/repo/resolve/main/m.safetensors",
            "hf-short": f"https://{tls_base}\\@hf.co/m.safetensors",
            "civitai": f"https://{tls_base}\\@civitai.com/api/download/models/1",
            "public-ip": f"http://{base}\\@8.8.8.8/m.safetensors",  # passes the address check as 8.8.8.8
            "two-ats": f"http://x@{base}@huggingface.co/m.safetensors",
            "percent-host": f"http://%31%32%37.0.0.1:{thief.port}/m.safetensors",
        }
        env = {**cfd_env, "HF_TOKEN": HF_SECRET, "CIVITAI_API_KEY": CIVITAI_SECRET,
               "REQUESTS_CA_BUNDLE": tls_thief.ca_file or "", "CFD_RETRIES": "1"}
        entries = [(label, generate_model_bytes(10 + n, 4096), url) for n, (label, url) in enumerate(hostile.items())]
        text = model_manifest(entries)
        for allow in ("true", "false"):
            result, outputs, clone = repair(scenario, text, {**env, "CFD_ALLOW_PRIVATE_NETWORKS": allow}, f"bob-{allow}")
            assert thief.requests == [] and tls_thief.requests == [], "a connection was made to the real host"
            failed = {f["filename"]: f["error"] for f in result["failed"]}
            for label, _, _ in entries:
                error = failed[f"{label}.safetensors"]
                assert "refusing source" in error and "HTTP clients read differently" in error, (label, error)
            marker = (clone / ".git" / "cfd" / MARKER_NAME).read_text()
            for where in [*outputs, marker, dump_index(Path(cfd_env["CFD_INDEX"]))]:
                assert HF_SECRET not in where and CIVITAI_SECRET not in where
                # Nothing shows the host that was never going to be contacted.
                assert not re.search(r"@(huggingface\.co|hf\.co|civitai\.com|8\.8\.8\.8)", where), where[:2000]
        assert not (models_dir / "checkpoints").exists() or not any((models_dir / "checkpoints").iterdir())
    report("hostile-authority", inputs=len(hostile) * 2, connections=0, tokens_sent=0)


def test_a_redirect_hop_with_a_backslash_authority_is_refused(scenario: Scenario, cfd_env: dict[str, str],
                                                               models_dir: Path) -> None:
    """The hub (HF_ENDPOINT, https, token sent) redirects to `https://<lan>\\@<hub>/...`: to
    urllib.parse that is the hub's own origin (the token would follow), to requests it is the
    LAN server. Refused at that hop; the LAN server never sees a connection."""
    data = generate_model_bytes(3, MIB)
    with ModelServer(tls=True) as hub, ModelServer(tls=True) as lan:
        lan.add_file("/blob", data)
        hub.set_fault("/org/repo/resolve/main/m.safetensors",
                      redirect_to=f"https://127.0.0.1:{lan.port}\\@127.0.0.1:{hub.port}/blob")
        hub.set_fault("/org/repo/resolve/main/n.safetensors", redirect_to=f"http://127.0.0.1:{lan.port}\\@8.8.8.8/blob")
        env = {**cfd_env, "HF_ENDPOINT": hub.base_url, "HF_TOKEN": HF_SECRET, "REQUESTS_CA_BUNDLE": hub.ca_file or "",
               "CFD_RETRIES": "1"}
        text = model_manifest([("m", data, hub.url("/org/repo/resolve/main/m.safetensors")),
                               ("n", generate_model_bytes(4, MIB), hub.url("/org/repo/resolve/main/n.safetensors"))])
        result, outputs, _ = repair(scenario, text, env)
        assert lan.requests == []
        assert hub.requests and all(r.headers.get("Authorization") == f"Bearer {HF_SECRET}" for r in hub.requests)
        for failure in result["failed"]:
            assert "redirected to a refused URL" in failure["error"] and "backslash" in failure["error"], failure
        assert all(HF_SECRET not in out for out in outputs)
    report("hostile-authority-redirect", hops=2, connections_to_lan=0)


# --------------------------------------------------------------------------- item 2: where a token goes


def test_tokens_go_only_over_https_to_their_own_scheme_host_and_port(scenario: Scenario, cfd_env: dict[str, str],
                                                                     models_dir: Path) -> None:
    """HF_ENDPOINT is an https hub on 127.0.0.1:<hub>. A file there gets the token (it is in
    play); a redirect to the same host on another port (https or http) and a plain-http
    source on that host get none. Then HF_ENDPOINT itself is plain http: no token goes."""
    with ModelServer(tls=True) as hub, ModelServer(tls=True) as other, ModelServer() as plain:
        files = {name: generate_model_bytes(20 + n, 256 * 1024) for n, name in enumerate("abcd")}
        hub.add_file("/org/repo/resolve/main/a.safetensors", files["a"])
        hub.set_fault("/org/repo/resolve/main/b.safetensors", redirect_to=other.add_file("/b", files["b"]))
        hub.set_fault("/org/repo/resolve/main/c.safetensors", redirect_to=plain.add_file("/c", files["c"]))
        plain.add_file("/org/repo/resolve/main/d.safetensors", files["d"])
        env = {**cfd_env, "HF_ENDPOINT": hub.base_url, "HF_TOKEN": HF_SECRET, "REQUESTS_CA_BUNDLE": hub.ca_file or ""}
        text = model_manifest([(name, files[name], hub.url(f"/org/repo/resolve/main/{name}.safetensors")) for name in "abc"]
                              + [("d", files["d"], plain.url("/org/repo/resolve/main/d.safetensors"))])
        result, outputs, _ = repair(scenario, text, env)
        assert result["failed"] == [], result["failed"]
        for name in "abcd":
            assert (models_dir / f"checkpoints/{name}.safetensors").read_bytes() == files[name]
        assert [r.headers.get("Authorization") for r in hub.requests_for("/org/repo/resolve/main/a.safetensors")] == [
            f"Bearer {HF_SECRET}"]
        for srv in (other, plain):
            assert srv.requests and not any("Authorization" in r.headers for r in srv.requests), srv.base_url
        # A plain-http HF_ENDPOINT: its host is Hugging Face's, but a token never goes in cleartext.
        plain.reset_stats()
        (models_dir / "checkpoints/d.safetensors").unlink()
        again = scenario.clone("carol")
        again.commit("environment", {"pyproject.toml": text})
        done = run_cfd("repair", "--yes", "--json", cwd=again.path, env={**env, "HF_ENDPOINT": plain.base_url})
        assert done.returncode == 0, done.stderr
        assert plain.requests and not any("Authorization" in r.headers for r in plain.requests)
        assert all(HF_SECRET not in out for out in outputs + [done.stdout, done.stderr])
    report("hostile-token-scope", servers=3, tokens_outside_origin=0)


# --------------------------------------------------------------------------- item 13: secrets in query strings


SECRET_PARAMS = {"X-Goog-Signature": "gsig", "X-Goog-Credential": "gcred", "X-Amz-Security-Token": "amztok",
                 "hf_token": "hftok", "access-token": "acctok", "PASSWORD": "pwval", "client_secret": "clsec",
                 "X-Api-Key": "apikey"}


def test_secret_query_parameters_never_reach_output_marker_json_or_index(scenario: Scenario, cfd_env: dict[str, str],
                                                                          models_dir: Path) -> None:
    with ModelServer() as server:
        good, bad = generate_model_bytes(30, 64 * 1024), generate_model_bytes(31, 64 * 1024)
        query = "&".join(f"{k}=SeCrEt{v}" for k, v in SECRET_PARAMS.items())
        server.add_file("/good", good)
        server.set_fault("/bad", status_always=404)
        text = model_manifest([("good", good, server.url("/good") + "?" + query),
                               ("bad", bad, server.url("/bad") + "?" + query)])
        result, outputs, clone = repair(scenario, text, cfd_env)
        assert (models_dir / "checkpoints/good.safetensors").read_bytes() == good
        assert len(result["failed"]) == 1
        stored = [(clone / ".git" / "cfd" / MARKER_NAME).read_text(), dump_index(Path(cfd_env["CFD_INDEX"]))]
        for where in outputs + stored:
            assert "SeCrEt" not in where, where[:2000]
        assert "X-Goog-Signature=***" in stored[1]  # the index keeps the URL, its secret masked
    report("hostile-secret-params", params=len(SECRET_PARAMS), leaks=0)
