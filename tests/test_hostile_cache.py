"""The manifest cache in the git dir is read by every warm `cfd status`: whatever it holds
(truncated, corrupt, a pickle that would run code, well-formed records of the wrong kind),
status neither crashes nor runs anything nor answers differently from a fresh parse."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cfd.core.environment import open_environment
from cfd.core.manifest.model import ManifestModel, parse_manifest
from cfd.core.state import clone_state
from cfd.core.sync import manifestcache, working
from helpers.gitscenario import run_git
from helpers.manifest import ManifestBuilder

HF = "https://huggingface.co/org/repo/resolve/main/"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "env" / ".cec"
    repo.mkdir(parents=True)
    run_git("init", "-q", cwd=repo)
    builder = ManifestBuilder("comfydock")
    for i in range(600):  # over 64 KiB: a file this size is cached
        builder.model(f"{i:016x}", f"m{i}.safetensors", 1000 + i, category="checkpoints", sources=[HF + f"m{i}"])
        builder.ref(f"wf{i % 7}", f"m{i}.safetensors", "checkpoints", hash=f"{i:016x}", node_id=str(i))
    builder.ref("wf0", "intent.safetensors", "loras", status="unresolved", sources=[HF + "intent"], node_id="x")
    (repo / "pyproject.toml").write_text(builder.render())
    assert (repo / "pyproject.toml").stat().st_size > 64 * 1024
    return repo


def digest_and_payload(repo: Path) -> tuple[str, Any]:
    """The cache cfd wrote, unpacked (by the test, which trusts it) for tampering."""
    working.load_working_manifest(open_environment(str(repo)))
    _version, digest, payload = pickle.loads(cache_of(repo).read_bytes())
    return digest, payload


def cache_of(repo: Path) -> Path:
    return clone_state(repo / ".git").manifest_cache


def with_column(payload: Any, table: int, column: int, values: tuple[Any, ...]) -> Any:
    columns = list(payload[table])
    columns[column] = values
    return (*payload[:table], tuple(columns), *payload[table + 1 :])


def tampered(payload: Any) -> list[tuple[str, Any]]:
    models, refs = payload[0], payload[1]
    n = len(models[0])
    return [
        ("size as text", with_column(payload, 0, 2, ("huge",) * n)),
        ("negative size", with_column(payload, 0, 2, (-1,) * n)),
        ("size as bool", with_column(payload, 0, 2, (True,) * n)),
        ("empty filename", with_column(payload, 0, 1, ("",) * n)),
        ("escape sequence in a filename", with_column(payload, 0, 1, ("\x1b[2Jx.safetensors",) * n)),
        ("sources not a tuple", with_column(payload, 0, 5, ("http://x",) * n)),
        ("a source not a string", with_column(payload, 0, 5, ((1,),) * n)),
        ("short column", with_column(payload, 0, 3, models[3][:-1])),
        ("duplicate hashes", with_column(payload, 0, 0, (models[0][0],) * n)),
        ("unknown model criticality", with_column(payload, 0, 8, ("always",) * n)),
        ("unknown ref status", with_column(payload, 1, 4, ("maybe",) * len(refs[0]))),
        ("unknown ref criticality", with_column(payload, 1, 3, ("urgent",) * len(refs[0]))),
        ("records instead of columns", ([ManifestModel(*row) for row in zip(*models)], *payload[1:])),
        ("missing column", (models[:-1], *payload[1:])),
        ("label not text", (*payload[:4], 42, *payload[5:])),
        ("dialect unknown", (*payload[:6], "other", payload[7])),
        ("workflows not a tuple", (*payload[:2], list(payload[2]), *payload[3:])),
        ("nothing", ()),
    ]


def test_tampered_records_are_not_used(repo: Path) -> None:
    fresh = parse_manifest((repo / "pyproject.toml").read_bytes(), str(repo / "pyproject.toml"))
    digest, payload = digest_and_payload(repo)
    for name, bad in tampered(payload):
        cache_of(repo).write_bytes(pickle.dumps((manifestcache.FORMAT, digest, bad)))
        assert working.load_working_manifest(open_environment(str(repo))) == fresh, name
        assert manifestcache.decode(cache_of(repo).read_bytes(), digest) == fresh, f"{name}: not rewritten"


def test_a_pickle_that_would_run_code_runs_nothing(repo: Path, tmp_path: Path) -> None:
    digest, payload = digest_and_payload(repo)
    pwned = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.mkdir, (str(pwned),))

    for evil in ((manifestcache.FORMAT, digest, RunsCode()), RunsCode(), (manifestcache.FORMAT, digest, (RunsCode(), *payload[1:]))):
        cache_of(repo).write_bytes(pickle.dumps(evil))
        manifest = working.load_working_manifest(open_environment(str(repo)))
        assert not pwned.exists() and len(manifest.models) == 600


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "huge"])
def test_corrupt_cache_files_are_parsed_around(repo: Path, damage: str) -> None:
    fresh = parse_manifest((repo / "pyproject.toml").read_bytes(), str(repo / "pyproject.toml"))
    digest_and_payload(repo)
    good = cache_of(repo).read_bytes()
    size = (repo / "pyproject.toml").stat().st_size
    cache_of(repo).write_bytes({
        "truncated": good[: len(good) // 2],
        "random bytes": bytes(range(256)) * 64,
        "empty": b"",
        "huge": good + b"\0" * (4 * size),  # over the bound: not even read whole
    }[damage])
    assert working.load_working_manifest(open_environment(str(repo))) == fresh


def test_status_answers_the_same_with_a_hostile_cache(repo: Path, cfd_env: dict[str, str], tmp_path: Path) -> None:
    def status() -> tuple[int, Any]:
        result = subprocess.run([sys.executable, "-m", "cfd.cli.main", "status", "--json"], cwd=repo, env=cfd_env,
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, json.loads(result.stdout)

    cache_of(repo).unlink(missing_ok=True)
    expected = status()
    assert expected[0] == 1 and len(expected[1]["missing"]) == 600  # nothing on this machine
    digest, payload = digest_and_payload(repo)
    bad = with_column(payload, 0, 1, ("\x1b]52;c;evil\x07.safetensors",) * len(payload[0][0]))
    cache_of(repo).write_bytes(pickle.dumps((manifestcache.FORMAT, digest, bad)))
    assert status() == expected
