"""The test helpers themselves: if these fail, every other failure is suspect."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from helpers.gitscenario import Scenario, run_git
from helpers.manifest import MIB, ManifestBuilder, big_manifest, make_model, short_hash_for

H1 = "dcf5f306c2a63465"
H2 = "0123456789abcdef"


def test_environment_is_isolated(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, cfd_env: dict[str, str]
) -> None:
    assert Path.home().is_relative_to(tmp_path_factory.getbasetemp())
    assert not any(k.startswith("CFD_") or k in ("GIT_DIR", "GIT_WORK_TREE") for k in os.environ)
    assert "COMFYDOCK_HOME" not in os.environ
    get = lambda key: run_git("config", "--get", key, cwd=tmp_path).stdout.strip()  # noqa: E731
    assert get("protocol.file.allow") == "always"
    assert get("init.defaultBranch") == "main"
    assert cfd_env["CFD_ALLOW_PRIVATE_NETWORKS"] == "true"
    assert Path(cfd_env["CFD_MODELS_DIR"]).is_dir()


def test_pygit2_reads_the_isolated_global_config(tmp_path: Path) -> None:
    import pygit2

    repo = pygit2.init_repository(str(tmp_path / "r"))
    assert repo.config["user.email"] == "tests@cfd.invalid"


def test_two_clones_share_commits(scenario: Scenario) -> None:
    alice = scenario.clone("alice")  # upstream is empty: seeded first
    bob = scenario.clone("bob")
    assert alice.head() == bob.head()

    sha = alice.commit("add model list", {"pyproject.toml": "[tool.comfydock]\n"})
    alice.push()
    result = bob.pull()
    assert result.returncode == 0, result.stderr
    assert bob.head() == sha
    assert bob.read("pyproject.toml") == "[tool.comfydock]\n"
    assert bob.is_clean()
    assert alice.git("log", "-1", "--format=%an").stdout.strip() == "alice"


def test_seed_branch_and_checkout(scenario: Scenario) -> None:
    first = scenario.seed({"a.txt": "1\n", "bin/b": b"\x00\x01"})
    alice = scenario.clone("alice")
    assert alice.head() == first
    assert (alice.path / "bin/b").read_bytes() == b"\x00\x01"

    alice.branch("feature")
    alice.checkout("feature")
    second = alice.commit("on feature", {"a.txt": "2\n"})
    alice.push()
    alice.checkout("main")
    assert alice.read("a.txt") == "1\n"
    assert alice.rev_parse("origin/feature") == second

    alice.write("untracked.txt", "x")
    assert not alice.is_clean()


def test_failed_git_shows_stderr(scenario: Scenario) -> None:
    alice = scenario.clone("alice")
    with pytest.raises(AssertionError, match="no-such-ref"):
        alice.checkout("no-such-ref")


def test_builder_inline_and_table_styles() -> None:
    text = (
        ManifestBuilder()
        .model(H1, "a.safetensors", 41943040, "checkpoints/a.safetensors", "checkpoints",
               sources=["https://huggingface.co/org/repo/resolve/main/a.safetensors"])
        .model(H2, "v.safetensors", 10, category="vae", sources=None, style="table",
               blake3="ab" * 32)
        .ref("wf1", "a.safetensors", "checkpoints", hash=H1, criticality="required",
             status="resolved")
        .ref("wf 2", "lora.safetensors", "loras", criticality="optional", status="unresolved",
             node_id="7", node_type="LoraLoader",
             sources=["https://civitai.com/api/download/models/12345"])
        .render()
    )
    doc = tomllib.loads(text)
    assert doc["project"]["name"] == "test-env"
    cd = doc["tool"]["comfydock"]
    assert "comfyui-impact-pack" in cd["nodes"]
    assert cd["models"][H1] == {
        "filename": "a.safetensors",
        "size": 41943040,
        "relative_path": "checkpoints/a.safetensors",
        "category": "checkpoints",
        "sources": ["https://huggingface.co/org/repo/resolve/main/a.safetensors"],
    }
    assert f"[tool.comfydock.models.{H2}]" in text
    assert cd["models"][H2] == {"filename": "v.safetensors", "size": 10, "category": "vae",
                                "blake3": "ab" * 32}
    wf1 = cd["workflows"]["wf1"]
    assert wf1["path"] == "workflows/wf1.json"
    assert wf1["models"] == [{
        "filename": "a.safetensors", "category": "checkpoints", "criticality": "required",
        "status": "resolved", "hash": H1,
        "nodes": [{"node_id": "4", "node_type": "CheckpointLoaderSimple", "widget_idx": 0,
                   "widget_value": "a.safetensors"}],
    }]
    (lora,) = cd["workflows"]["wf 2"]["models"]
    assert "hash" not in lora and "relative_path" not in lora
    assert lora["nodes"][0]["node_id"] == "7"


def test_builder_leaves_absent_keys_out() -> None:
    doc = tomllib.loads(ManifestBuilder().ref("wf", "a.safetensors", "checkpoints").render())
    (ref,) = doc["tool"]["comfydock"]["workflows"]["wf"]["models"]
    assert set(ref) == {"filename", "category", "nodes"}
    assert "models" not in doc["tool"]["comfydock"]


def test_short_hash() -> None:
    assert short_hash_for(b"abcdefghij") == "7bc234d9c29950da"


def test_short_hash_samples_large_files() -> None:
    data = bytearray(31 * MIB)
    base = short_hash_for(bytes(data))
    data[8 * MIB] = 1  # outside all three samples: same hash
    assert short_hash_for(bytes(data)) == base
    data[-1] = 1  # inside the last sample
    assert short_hash_for(bytes(data)) != base


def test_make_model_is_deterministic(models_dir: Path) -> None:
    h1, p1 = make_model(models_dir, "checkpoints/a.safetensors", seed=1, size=1000)
    h2, _ = make_model(models_dir, "checkpoints/b.safetensors", seed=1, size=1000)
    h3, _ = make_model(models_dir, "loras/c.safetensors", seed=2, size=1000)
    assert p1 == models_dir / "checkpoints/a.safetensors" and p1.stat().st_size == 1000
    assert h1 == h2 == short_hash_for(p1.read_bytes()) != h3


def test_big_manifest_adds_newly_referenced_models() -> None:
    old, new = big_manifest(50, 4, 5, new_fraction=0.2, seed=3)
    o, n = (tomllib.loads(t)["tool"]["comfydock"] for t in (old, new))
    added = set(n["models"]) - set(o["models"])
    assert len(n["models"]) == 50 and len(added) == 10

    def referenced(cd: dict) -> set[str]:
        return {r["hash"] for wf in cd["workflows"].values() for r in wf["models"]}

    assert referenced(n) - referenced(o) == added
    assert big_manifest(50, 4, 5, new_fraction=0.2, seed=3) == (old, new)


def test_figures_sums_seeded_runs_per_test() -> None:
    from helpers.figures import summarise

    lines = ['{"test": "kill-repair[1]", "faults": 2, "refetched_mib": 1.5, "points": "x"}',
             '{"test": "kill-repair[2]", "faults": 1, "refetched_mib": 0.25}', '{"test": "other", "ok": true}']
    assert summarise(lines) == {"kill-repair": {"runs": 2, "faults": 3, "refetched_mib": 1.75}, "other": {"runs": 1}}


def test_proxy_forwards_and_tunnels() -> None:
    import socket

    import requests

    from helpers.faults import ModelServer
    from helpers.proxy import Proxy

    with ModelServer() as server, Proxy() as proxy:
        url = server.add_file("/m", b"model bytes")
        reply = requests.get(url, proxies={"http": proxy.url}, timeout=10)
        assert (reply.status_code, reply.content) == (200, b"model bytes")
        assert proxy.requests == [("GET", url)]
        with socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=10) as tunnel:
            tunnel.sendall(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n\r\n".encode())
            assert tunnel.recv(1024).startswith(b"HTTP/1.0 200")
            tunnel.sendall(b"GET /m HTTP/1.0\r\n\r\n")
            received = b""
            while chunk := tunnel.recv(4096):
                received += chunk
        assert received.endswith(b"model bytes") and proxy.requests[-1] == ("CONNECT", f"127.0.0.1:{server.port}")
