"""The working manifest's cache: what `cfd status` reads instead of parsing pyproject.toml again."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfd.core.environment import open_environment
from cfd.core.manifest.model import parse_manifest
from cfd.core.state import clone_state
from cfd.core.sync import manifestcache, working
from helpers.gitscenario import run_git
from helpers.manifest import ManifestBuilder

pytestmark = pytest.mark.usefixtures("both_dialects")
HF = "https://huggingface.co/org/repo/resolve/main/"


def every_kind_of_entry(dialect: str, models: int = 3) -> bytes:
    builder = ManifestBuilder()
    for i in range(models):
        builder.model(f"{i:016x}", f"m{i}.safetensors", 1000 + i, category="checkpoints", sources=[HF + f"m{i}"])
    builder.model("e" * 16, "bare.safetensors", 5, "loras/bare.safetensors", sources=None)
    builder.model("d" * 16, "digests.safetensors", 6, category="vae", blake3="ab" * 32, sha256="cd" * 32)
    builder.model("bad", "not-a-hash.safetensors", 7)  # a problem, not a model
    if dialect == "comfygit":
        builder.model("c" * 16, "env.safetensors", 8, "clip\\env.safetensors", criticality="required")
    builder.ref("wf", "m0.safetensors", "checkpoints", hash=f"{0:016x}", criticality="required")
    builder.ref("wf", "gone.safetensors", "loras", hash="f" * 16)  # dangling: a problem
    builder.ref("wf", "intent.safetensors", "loras", status="unresolved", sources=[HF + "intent"], node_id="7")
    builder.ref("other", "nowhere.safetensors", "vae", status="unresolved", widget_idx=-1)
    return builder.render().encode()


def test_round_trip_gives_the_parsed_manifest(dialect: str) -> None:
    manifest = parse_manifest(every_kind_of_entry(dialect), "env/pyproject.toml")
    assert manifest.problems and manifest.refs and len(manifest.models) >= 5
    cached = manifestcache.decode(manifestcache.encode("digest", manifest), "digest")
    assert cached == manifest
    assert dict(cached.models.items()) == dict(manifest.models.items())
    assert (cached.dialect, cached.schema_version, cached.label) == (manifest.dialect, manifest.schema_version, "env/pyproject.toml")


def test_an_empty_manifest_round_trips() -> None:
    manifest = parse_manifest(ManifestBuilder().render().encode())
    assert manifest.has_comfydock and not manifest.models
    assert manifest == manifestcache.decode(manifestcache.encode("d", manifest), "d")


def test_another_digest_or_format_is_not_used(dialect: str) -> None:
    data = manifestcache.encode("one", parse_manifest(every_kind_of_entry(dialect)))
    assert manifestcache.decode(data, "two") is None
    assert manifestcache.decode(data.replace(bytes([manifestcache.FORMAT]), bytes([99]), 1), "one") is None


def test_status_reads_the_cache_and_a_changed_file_is_parsed_again(tmp_path: Path, dialect: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "env" / ".cec"
    repo.mkdir(parents=True)
    run_git("init", "-q", cwd=repo)
    padding = "\n".join(f"# {'x' * 100}" for _ in range(700))  # over the 64 KiB below which nothing is cached
    data = every_kind_of_entry(dialect, models=600) + padding.encode()
    (repo / "pyproject.toml").write_bytes(data)
    env = open_environment(str(repo))
    first = working.load_working_manifest(env)
    assert clone_state(env.git_dir).manifest_cache.exists()
    parsed: list[bytes] = []
    monkeypatch.setattr(working, "parse_manifest", lambda data, label: parsed.append(data) or parse_manifest(data, label))
    assert working.load_working_manifest(env) == first and not parsed  # from the cache
    (repo / "pyproject.toml").write_bytes(data.replace(b"m1.safetensors", b"m1-renamed.safetensors"))
    changed = working.load_working_manifest(env)
    assert len(parsed) == 1 and changed.models[f"{1:016x}"].filename == "m1-renamed.safetensors"
