"""The real command line in a subprocess: `cfd status`, `cfd config`, `cfd index scan`, --help.

Every malformed input must end as one clear `cfd: error:` line (plus a hint), exit 2,
and never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from cfd.cli.main import build_parser
from cfd.core import __version__
from cfd.core.store.index import ModelIndex
from cfd.core.sync.marker import Marker, PendingEntry
from cfd.core.settings import SPECS
from helpers.gitscenario import run_git
from helpers.manifest import ManifestBuilder, make_model

HF = "https://huggingface.co/org/repo/resolve/main/"
CIVITAI = "https://civitai.com/api/download/models/"


def cfd(*args: str, cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfd.cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, one `cfd: error:` line (and at most a hint line), no traceback."""
    assert result.returncode == 2, (result.stdout[-800:], result.stderr)
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("cfd: error: "), result.stderr
    assert len(lines) <= 2 and all(line.startswith("hint: ") for line in lines[1:]), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class Env:
    """One environment repo (.cec), its models dir and index, as a user has them."""

    def __init__(self, root: Path, cfd_env: dict[str, str]) -> None:
        self.repo = root / "env" / ".cec"
        self.repo.mkdir(parents=True)
        run_git("init", "-q", cwd=self.repo)
        self.models = Path(cfd_env["CFD_MODELS_DIR"])
        self.vars = cfd_env

    def write(self, text: str | bytes) -> None:
        path = self.repo / "pyproject.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    def run(self, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        return cfd(*args, cwd=self.repo, env={**self.vars, **overrides})

    def status_json(self) -> tuple[int, dict]:  # type: ignore[type-arg]
        result = self.run("status", "--json")
        assert result.stderr == "" or "warning" in result.stderr, result.stderr
        return result.returncode, json.loads(result.stdout)


@pytest.fixture
def env(tmp_path: Path, cfd_env: dict[str, str]) -> Env:
    return Env(tmp_path, cfd_env)


def two_workflows(env: Env, present: bool) -> tuple[str, str]:
    """wf1 and wf2 share checkpoint A (required in wf2); wf2 also wants LoRA B (no source)."""
    a, _ = make_model(env.models, "checkpoints/a.safetensors", 1, 4096)
    b, _ = make_model(env.models, "loras/b.safetensors", 2, 2048)
    if not present:
        (env.models / "checkpoints" / "a.safetensors").unlink()
        (env.models / "loras" / "b.safetensors").unlink()
    env.write(
        ManifestBuilder()
        .model(a, "a.safetensors", 4096, "checkpoints/a.safetensors", "checkpoints", [HF + "a.safetensors?token=SECRET"])
        .model(b, "b.safetensors", 2048, "loras/b.safetensors", "loras", sources=None)
        .ref("wf1", "a.safetensors", "checkpoints", hash=a, criticality="flexible")
        .ref("wf2", "a.safetensors", "checkpoints", hash=a, criticality="required")
        .ref("wf2", "b.safetensors", "loras", hash=b, criticality="optional", node_id="5", node_type="LoraLoader")
        .render()
    )
    return a, b


# --- exit codes and --json -------------------------------------------------------------


def test_in_sync_exits_0(env: Env) -> None:
    two_workflows(env, present=True)
    scan = env.run("index", "scan")
    assert scan.returncode == 0 and scan.stdout.startswith("2 file(s): 2 hashed"), scan
    result = env.run("status")
    assert result.returncode == 0, result
    assert "In sync" in result.stdout
    code, data = env.status_json()
    assert code == 0 and data["in_sync"] is True and data["missing"] == []


def test_missing_models_exit_1_with_the_contracted_json(env: Env) -> None:
    a, b = two_workflows(env, present=False)
    env.write((env.repo / "pyproject.toml").read_text() + (
        '\n[[tool.comfydock.workflows.wf1.models]]\nfilename = "style.safetensors"\ncategory = "loras"\n'
        f'criticality = "optional"\nstatus = "unresolved"\nsources = ["{CIVITAI}99"]\n'
        'nodes = [{node_id = "9", node_type = "LoraLoader", widget_idx = 0, widget_value = "style.safetensors"}]\n'
    ))
    Marker(env.repo / ".git").write([PendingEntry(
        key=a, filename="a.safetensors", relative_path="checkpoints/a.safetensors", size=4096,
        sources=(HF + "a.safetensors?token=SECRET",), criticality="required", workflows=("wf1", "wf2"), reason="deferred",
    )])
    code, data = env.status_json()
    assert code == 1
    assert data["in_sync"] is False
    assert {"in_sync", "missing", "intents", "problems", "pending"} <= set(data)
    by_hash = {m["hash"]: m for m in data["missing"]}
    assert by_hash[a] == {
        "hash": a, "filename": "a.safetensors", "relative_path": "checkpoints/a.safetensors", "size": 4096,
        "criticality": "required", "workflows": ["wf1", "wf2"], "can_download": True,
        "sources": [HF + "a.safetensors?token=***"],  # secrets never printed
    }
    assert by_hash[b]["can_download"] is False and by_hash[b]["sources"] == []
    assert [m["hash"] for m in data["missing"]] == [a, b]  # required first
    (intent,) = data["intents"]
    assert (intent["workflow"], intent["filename"], intent["relative_path"]) == ("wf1", "style.safetensors", "loras/style.safetensors")
    assert data["problems"] == []
    (pending,) = data["pending"]
    assert pending["key"] == a and pending["reason"] == "deferred" and "SECRET" not in json.dumps(pending)
    assert "SECRET" not in env.run("status").stdout


def test_plain_text_when_not_a_terminal(env: Env) -> None:
    two_workflows(env, present=False)
    result = env.run("status")
    assert result.returncode == 1
    out = result.stdout
    assert "\x1b[" not in out and "✅" not in out and "⬇" not in out
    assert "- wf1 — 1 model(s) need downloading" in out
    assert "- wf2 — 1 model(s) need downloading" in out
    assert "required  checkpoints/a.safetensors (4.0 KiB)" in out
    assert "loras/b.safetensors (2.0 KiB) — no source" in out
    assert "Run `cfd repair`" in out


def body(out: str) -> list[str]:
    """Status output below the Environment/Models header lines."""
    return out.splitlines()[2:]


def test_each_workflow_shows_its_own_criticality_and_counts_add_up(env: Env) -> None:
    a, b = two_workflows(env, present=False)
    Marker(env.repo / ".git").write([
        PendingEntry(a, "a.safetensors", "checkpoints/a.safetensors", 4096, (HF + "a.safetensors",), "required",
                     ("wf1", "wf2"), "failed", error="huggingface.co answered 503 (gave up after 5 attempts)"),
        PendingEntry(b, "b.safetensors", "loras/b.safetensors", 2048, (), "optional", ("wf2",), "no-source"),
    ])
    result = env.run("status")
    assert result.returncode == 1
    assert body(result.stdout) == [
        "- wf1 — 1 model(s) need downloading",
        "    flexible  checkpoints/a.safetensors (4.0 KiB) — last attempt failed: huggingface.co answered 503 (gave up after 5 attempts)",
        "- wf2 — 1 model(s) need downloading (2 missing, 1 without a source)",
        "    required  checkpoints/a.safetensors (4.0 KiB) — last attempt failed: huggingface.co answered 503 (gave up after 5 attempts)",
        f"    optional  loras/b.safetensors (2.0 KiB) — no source (hash {b})",
        "",
        "1 model(s) to download (4.0 KiB). Run `cfd repair` to fetch them.",
        "1 model(s) without a source: add one to pyproject.toml, or place the file by hand and run `cfd index scan`.",
    ]


@pytest.mark.parametrize("reason, text", [
    ("deferred", "left for later (cfd.onPull=defer)"),
    ("filtered", "skipped by cfd.models=required"),
    ("interrupted", "interrupted; `cfd repair` resumes it"),
    ("background", "queued for the background agent"),
])
def test_pending_reasons_are_words_on_the_models_line(env: Env, reason: str, text: str) -> None:
    a, _ = make_model(env.models, "checkpoints/a.safetensors", 1, 4096)
    (env.models / "checkpoints" / "a.safetensors").unlink()
    env.write(ManifestBuilder().model(a, "a.safetensors", 4096, "checkpoints/a.safetensors", "checkpoints", [HF + "a"])
              .ref("wf1", "a.safetensors", "checkpoints", hash=a, criticality="optional").render())
    Marker(env.repo / ".git").write([
        PendingEntry(a, "a.safetensors", "checkpoints/a.safetensors", 4096, (), "optional", ("wf1",), reason)])
    assert body(env.run("status").stdout)[:2] == [
        "- wf1 — 1 model(s) need downloading", f"    optional  checkpoints/a.safetensors (4.0 KiB) — {text}"]


def test_long_lists_end_with_how_many_more_and_json_has_all(env: Env) -> None:
    builder = ManifestBuilder()
    hashes = []
    for number in range(13):
        h, _ = make_model(env.models, f"loras/m{number:02d}.safetensors", 10 + number, 1024)
        (env.models / "loras" / f"m{number:02d}.safetensors").unlink()
        builder.model(h, f"m{number:02d}.safetensors", 1024, f"loras/m{number:02d}.safetensors", "loras", [HF + str(number)])
        builder.ref("wf1", f"m{number:02d}.safetensors", "loras", hash=h, criticality="flexible", node_id=str(number))
        hashes.append(h)
    env.write(builder.render())
    Marker(env.repo / ".git").write([
        PendingEntry(h, "x", "x", 1, (), "flexible", ("wf1",), "failed", error=f"error {n}") for n, h in enumerate(hashes)])
    lines = body(env.run("status").stdout)
    assert lines[0] == "- wf1 — 13 model(s) need downloading"
    assert len([line for line in lines if line.startswith("    flexible")]) == 10
    assert lines[11] == "    … and 3 more (`cfd status --json` lists all)"
    assert not any("Pending from" in line for line in lines)
    code, data = env.status_json()
    assert len(data["missing"]) == 13 and len(data["pending"]) == 13 and len(data["workflows"][0]["missing"]) == 13


def test_a_file_on_disk_but_not_indexed_is_not_to_download(env: Env) -> None:
    a, b = two_workflows(env, present=False)
    make_model(env.models, "checkpoints/a.safetensors", 1, 4096)  # copied in by hand, no scan
    lines = body(env.run("status").stdout)
    assert lines == [
        "! wf1 — 1 missing (1 on disk unindexed)",
        "    flexible  checkpoints/a.safetensors (4.0 KiB) — on disk, not indexed yet: run `cfd index scan`",
        "! wf2 — 2 missing (1 on disk unindexed, 1 without a source)",
        "    required  checkpoints/a.safetensors (4.0 KiB) — on disk, not indexed yet: run `cfd index scan`",
        f"    optional  loras/b.safetensors (2.0 KiB) — no source (hash {b})",
        "",
        "1 model(s) already on disk but not indexed: run `cfd index scan` (`cfd repair` also checks and indexes them).",
        "1 model(s) without a source: add one to pyproject.toml, or place the file by hand and run `cfd index scan`.",
    ]
    code, data = env.status_json()
    assert data["on_disk_unindexed"] == [a]
    assert env.run("index", "scan").returncode == 0
    assert body(env.run("status").stdout)[0] == "ok wf1"


def test_terminal_output_uses_comfydock_status_language(env: Env) -> None:
    two_workflows(env, present=False)
    main_fd, child_fd = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cfd.cli.main", "status"], cwd=env.repo, env=env.vars,
            stdout=child_fd, stderr=subprocess.PIPE, timeout=60,
        )
        os.close(child_fd)
        chunks = []
        while True:
            try:
                data = os.read(main_fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main_fd)
    out = b"".join(chunks).decode()
    assert proc.returncode == 1
    assert "⬇️  wf1 — 1 model(s) need downloading" in out or "⬇️ wf1 — 1 model(s) need downloading" in out


def test_empty_environment_is_in_sync(env: Env) -> None:
    env.write('[project]\nname = "x"\n\n[tool.comfydock]\ncomfyui_version = "v0.3.40"\n')
    result = env.run("status")
    assert result.returncode == 0 and "No models or workflows" in result.stdout


def test_a_plain_python_project_is_named_as_such(env: Env) -> None:
    env.write('[project]\nname = "x"\n')
    result = env.run("status")
    assert result.returncode == 0
    assert "neither a [tool.comfygit] nor a [tool.comfydock] table: not a ComfyGit or ComfyDock environment" in result.stdout


# --- malformed manifests: a located error, or a listed problem; never a traceback ------


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        pytest.param(b'[project]\nname = "x"\n<<<<<<< HEAD\n[tool.comfydock.models]\n=======\n>>>>>>> b\n',
                     ("pyproject.toml:3: merge-conflict marker",), id="conflict-markers"),
        pytest.param(b"[tool.comfydock.models\n", ("pyproject.toml: invalid TOML",), id="bad-toml"),
        pytest.param(b'[project]\nname = "\xff\xfe"\n', ("pyproject.toml:2: not valid UTF-8",), id="invalid-utf8"),
        pytest.param(b"[tool.comfydock]\n" + b"x = " + b"[" * 3000 + b"]" * 3000, ("pyproject.toml",), id="deep-nesting"),
    ],
)
def test_unreadable_pyproject(env: Env, content: bytes, fragments: tuple[str, ...]) -> None:
    env.write(content)
    assert_clean_error(env.run("status"), *fragments)
    assert_clean_error(env.run("status", "--json"), *fragments)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        pytest.param('{filename = "a.safetensors", size = "big", sources = ["https://x/a"]}', "'size' must be a non-negative integer", id="wrong-type"),
        pytest.param('{size = 10, sources = ["https://x/a"]}', "missing 'filename'", id="missing-field"),
        pytest.param(None, "names hash dcf5f306c2a63465, which [tool.comfydock.models] lacks", id="dangling-hash"),
    ],
)
def test_bad_entries_are_listed_problems(env: Env, entry: str | None, problem: str) -> None:
    table = f"[tool.comfydock.models]\ndcf5f306c2a63465 = {entry}\n" if entry else ""
    env.write(
        f'[tool.comfydock]\n{table}\n[[tool.comfydock.workflows.wf1.models]]\nfilename = "a.safetensors"\n'
        'category = "checkpoints"\nhash = "dcf5f306c2a63465"\n'
    )
    result = env.run("status")
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 1  # the workflow still needs a model this machine lacks
    problem_lines = [line for line in result.stdout.splitlines() if problem in line]
    assert len(problem_lines) == 1 and "pyproject.toml: [tool.comfydock." in problem_lines[0]
    code, data = env.status_json()
    assert code == 1 and any(problem in p for p in data["problems"])


# --- errors in the setup ---------------------------------------------------------------


def test_no_environment(tmp_path: Path, cfd_env: dict[str, str]) -> None:
    assert_clean_error(cfd("status", cwd=tmp_path, env=cfd_env), "no ComfyGit or ComfyDock environment found")
    assert_clean_error(cfd("status", "--env", str(tmp_path / "nope"), cwd=tmp_path, env=cfd_env), "does not exist")


def test_repo_without_pyproject_is_not_an_environment(env: Env) -> None:
    # The .cec repo exists but holds no pyproject.toml yet.
    assert_clean_error(env.run("status"), "no ComfyGit or ComfyDock environment found")


def test_a_bad_setting_stops_only_what_reads_it(env: Env) -> None:
    two_workflows(env, present=True)
    env.run("index", "scan")
    run_git("config", "cfd.models", "requierd", cwd=env.repo)  # read by hooks and plain `cfd repair` only
    status = env.run("status")
    assert status.returncode == 0, status.stderr
    assert "In sync" in status.stdout or "in sync" in status.stdout.lower(), status.stdout
    assert status.stderr.splitlines() == [
        "cfd: warning: cfd.models = 'requierd' is not valid: expected one of all|required|skip "
        "(not used by this command; fix it, or unset it (git config --unset cfd.models))"
    ]
    for args in (("repair", "--models", "all"), ("repair",), ("config",)):
        result = env.run(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
    # What reads the setting stops there: the hook says so and leaves git alone.
    hook = subprocess.run(
        [sys.executable, "-P", "-m", "cfd.hooks.runtime", "post-checkout", "0" * 40, "0" * 40, "1"],  # as the shim runs it
        cwd=env.repo, env=env.vars, capture_output=True, text=True, timeout=60,
    )
    assert hook.returncode == 0 and "cfd.models = 'requierd' is not valid" in hook.stderr, hook.stderr


def test_a_bad_setting_a_command_reads_is_its_error(env: Env) -> None:
    two_workflows(env, present=False)
    assert_clean_error(env.run("repair", "--yes", CFD_JOBS="many"), "CFD_JOBS = 'many' is not valid")


def test_no_models_dir_configured(env: Env) -> None:
    two_workflows(env, present=True)
    result = cfd("status", cwd=env.repo, env={k: v for k, v in env.vars.items() if k not in ("CFD_MODELS_DIR", "CFD_INDEX")})
    assert_clean_error(result, "no models directory configured")


def test_index_that_is_not_a_database(env: Env) -> None:
    two_workflows(env, present=True)
    Path(env.vars["CFD_INDEX"]).write_bytes(b"garbage" * 1000)
    assert_clean_error(env.run("status"), "cannot open the model index")
    assert_clean_error(env.run("index", "scan"), "cannot open the model index")


def test_corrupt_pending_marker_is_a_warning_not_an_error(env: Env) -> None:
    two_workflows(env, present=True)
    env.run("index", "scan")
    marker = env.repo / ".git" / "cfd" / "pending.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{not json")
    result = env.run("status")
    assert result.returncode == 0
    assert "cfd: warning: the pending marker was corrupt" in result.stderr and "Traceback" not in result.stderr


# --- cfd index scan ----------------------------------------------------------------------


def test_index_scan_json_and_rescan(env: Env) -> None:
    env.write(ManifestBuilder().render())
    make_model(env.models, "checkpoints/a.safetensors", 1, 4096)
    first = json.loads(env.run("index", "scan", "--json").stdout)
    assert first == {"files": 1, "hashed": 1, "unchanged": 0, "removed": 0, "errors": []}
    second = json.loads(env.run("index", "scan", "--json").stdout)
    assert (second["hashed"], second["unchanged"]) == (0, 1)


def test_index_scan_of_a_missing_models_dir_is_a_clean_error(env: Env, tmp_path: Path) -> None:
    env.write(ManifestBuilder().render())
    make_model(env.models, "checkpoints/a.safetensors", 1, 64)
    assert env.run("index", "scan").returncode == 0
    assert_clean_error(env.run("index", "scan", CFD_MODELS_DIR=str(tmp_path / "unmounted")), "does not exist")


def test_index_list_and_show_give_a_manifest_writer_the_hashes(env: Env) -> None:
    env.write(ManifestBuilder().render())
    a, _ = make_model(env.models, "checkpoints/a.safetensors", 1, 4096)
    b, b_path = make_model(env.models, "loras/b.safetensors", 2, 2048)
    assert env.run("index", "scan").returncode == 0
    with ModelIndex(env.vars["CFD_INDEX"], env.models) as index:
        index.add_source(a, HF + "a.safetensors?token=SECRET")
    b_path.unlink()  # indexed, but no longer on disk
    listed = json.loads(env.run("index", "list", "--json").stdout)
    assert [(m["hash"], m["size"], m["locations"]) for m in listed] == [
        (a, 4096, [{"relative_path": "checkpoints/a.safetensors", "on_disk": True}]),
        (b, 2048, [{"relative_path": "loras/b.safetensors", "on_disk": False}]),
    ]
    text = env.run("index", "list")
    assert text.returncode == 0 and text.stdout.splitlines()[0].split()[:4] == [a, "4.0", "KiB", "checkpoints/a.safetensors"]
    assert "loras/b.safetensors  (not on disk" in text.stdout
    shown = json.loads(env.run("index", "show", a[:6], "--json").stdout)
    assert (shown["hash"], shown["sources"]) == (a, [HF + "a.safetensors?token=***"])
    assert "SECRET" not in env.run("index", "show", a).stdout
    assert f"file:    {env.models / 'checkpoints/a.safetensors'}" in env.run("index", "show", a).stdout
    assert_clean_error(env.run("index", "show", "0123456789abcdef"), "no model 0123456789abcdef in the index")
    assert_clean_error(env.run("index", "show", "zz; rm"), "'zz; rm' is not a hash")


# --- cfd config ----------------------------------------------------------------------------


def test_config_shows_values_and_their_sources(env: Env) -> None:
    two_workflows(env, present=True)
    run_git("config", "cfd.models", "all", cwd=env.repo)
    run_git("config", "--global", "cfd.onPull", "defer", cwd=env.repo)
    result = env.run("config", CFD_JOBS="3")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("cfd.")}
    assert lines["cfd.models"].split()[1:] == ["all", "[git", "config", "(local)]"]
    assert lines["cfd.onPull"].split()[1:] == ["defer", "[git", "config", "(global)]"]
    assert lines["cfd.jobs"].split()[1:] == ["3", "[env", "CFD_JOBS]"]
    assert lines["cfd.retries"].endswith("[default]")
    assert lines["cfd.modelsDir"].split()[1:] == [env.vars["CFD_MODELS_DIR"], "[env", "CFD_MODELS_DIR]"]
    data = json.loads(env.run("config", "--json", CFD_JOBS="3").stdout)
    rows = {row["key"]: row for row in data["settings"]}
    assert rows["cfd.jobs"] == {"key": "cfd.jobs", "value": "3", "source": "env CFD_JOBS"}
    assert {spec.key for spec in SPECS} == set(rows)


def test_config_works_before_a_models_dir_is_set(env: Env) -> None:
    env.write(ManifestBuilder().render())
    result = cfd("config", cwd=env.repo, env={k: v for k, v in env.vars.items() if k not in ("CFD_MODELS_DIR", "CFD_INDEX")})
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:2] == ["cfd.modelsDir", "(unset)"] for line in result.stdout.splitlines())


def test_config_help_names_every_variable(env: Env) -> None:
    result = env.run("config", "--help")
    for spec in SPECS:
        assert spec.key in result.stdout and spec.env in result.stdout


def test_config_shows_a_bad_value_with_its_error(env: Env) -> None:
    two_workflows(env, present=True)
    run_git("config", "cfd.models", "requierd", cwd=env.repo)
    result = env.run("config", CFD_ALLOW_PRIVATE_NETWORKS="perhaps")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    models = next(i for i, line in enumerate(lines) if line.startswith("cfd.models "))
    assert lines[models].split()[1:] == ["requierd", "[git", "config", "(local)]"]
    assert "not valid: expected one of all|required|skip" in lines[models + 1]
    assert "git config --unset cfd.models" in lines[models + 1]
    rows = {row["key"]: row for row in json.loads(env.run("config", "--json", CFD_ALLOW_PRIVATE_NETWORKS="perhaps").stdout)["settings"]}
    assert rows["cfd.allowPrivateNetworks"]["value"] == "perhaps"
    assert rows["cfd.allowPrivateNetworks"]["error"].startswith("CFD_ALLOW_PRIVATE_NETWORKS = 'perhaps' is not valid")
    assert "error" not in rows["cfd.jobs"]


def test_config_lists_unknown_keys_with_a_guess(env: Env) -> None:
    env.write(ManifestBuilder().render())
    run_git("config", "cfd.modelDir", "/data/models", cwd=env.repo)
    result = env.run("config")
    assert result.returncode == 0, result.stderr
    assert "unknown key cfd.modeldir in git config (local): cfd ignores it (did you mean cfd.modelsDir?)" in result.stdout
    data = json.loads(env.run("config", "--json").stdout)
    assert data["unknown_keys"] == [{"key": "cfd.modeldir", "scope": "local", "did_you_mean": "cfd.modelsDir"}]


def test_config_prints_values_the_way_git_config_takes_them(env: Env) -> None:
    env.write(ManifestBuilder().render())
    run_git("config", "cfd.allowPrivateNetworks", "yes", cwd=env.repo)
    lines = {line.split()[0]: line.split()[1] for line in env.run("config").stdout.splitlines() if line.startswith("cfd.")}
    assert (lines["cfd.allowPrivateNetworks"], lines["cfd.stallTimeout"], lines["cfd.hooks.enabled"]) == ("true", "30", "true")


# --- --help and --version ------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command a user can see in some --help (hidden plumbing like `hook-run` aside)."""
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if name in listed:
                    found += _commands(sub, prefix + (name,))
    return found


COMMANDS = _commands(build_parser())


def test_the_contracted_commands_exist() -> None:
    assert {(), ("status",), ("config",), ("index",), ("index", "scan")} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cfd")
def test_help(command: tuple[str, ...], tmp_path: Path, cfd_env: dict[str, str]) -> None:
    result = cfd(*command, "--help", cwd=tmp_path, env=cfd_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: cfd{' ' if command else ''}{' '.join(command)}")
    assert result.stderr == ""


def test_version(tmp_path: Path, cfd_env: dict[str, str]) -> None:
    result = cfd("--version", cwd=tmp_path, env=cfd_env)
    assert (result.returncode, result.stdout.strip()) == (0, f"cfd {__version__}")


def test_version_does_not_load_typing(tmp_path: Path, cfd_env: dict[str, str]) -> None:
    """`cfd --version` is mostly Python starting: typing alone would be ~3 ms more (10 %)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cfd.cli.main", "--version"], cwd=tmp_path,
                            env=cfd_env, capture_output=True, text=True, timeout=60)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert result.stdout.strip() == f"cfd {__version__}" and "cfd.core.text" in loaded  # the CLI's own imports ran
    assert "typing" not in loaded


def test_unknown_command_is_a_usage_error(tmp_path: Path, cfd_env: dict[str, str]) -> None:
    result = cfd("statsu", cwd=tmp_path, env=cfd_env)
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("action", ["stop", "status", "uninstall-service"])
def test_agent_env_option_says_which_agent_not_what_to_serve(action: str, tmp_path: Path, cfd_env: dict[str, str]) -> None:
    result = cfd("agent", action, "--help", cwd=tmp_path, env=cfd_env)
    text = " ".join(result.stdout.split())
    assert "--env PATH act on the agent of this environment's models directory (default: the current environment's)" in text
    assert "to serve" not in text


@pytest.mark.parametrize("action", ["run", "start", "install-service"])
def test_agent_env_option_of_serving_actions(action: str, tmp_path: Path, cfd_env: dict[str, str]) -> None:
    text = " ".join(cfd("agent", action, "--help", cwd=tmp_path, env=cfd_env).stdout.split())
    assert "--env PATH an environment to serve (repeatable); the current one is always included" in text


def test_agent_stop_timeout_has_a_unit(tmp_path: Path, cfd_env: dict[str, str]) -> None:
    text = " ".join(cfd("agent", "stop", "--help", cwd=tmp_path, env=cfd_env).stdout.split())
    assert "--timeout S seconds to wait for it to end (default 20)" in text


def test_json_output_is_written_in_bounded_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100,000-model status must not hold its whole JSON (json.dumps keeps every token at once:
    twice the memory); nor write token by token through the sanitising stream."""
    from cfd.cli.common import print_json

    writes: list[int] = []
    out: list[str] = []

    class Recorder:
        def write(self, text: str) -> int:
            writes.append(len(text))
            out.append(text)
            return len(text)

    data = {"missing": [{"hash": f"{i:016x}", "filename": f"model_{i}.safetensors", "size": i} for i in range(60_000)]}
    monkeypatch.setattr(sys, "stdout", Recorder())
    print_json(data)
    assert "".join(out) == json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    assert len(writes) > 3 and max(writes) < 2 * (1 << 20)  # several pieces of about a MiB, not tokens
    assert len(writes) < 100
