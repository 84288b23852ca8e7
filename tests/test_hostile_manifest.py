"""A teammate's pyproject.toml is untrusted: the reader and the diff never crash on it."""

from __future__ import annotations

import json
import string
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfd.core.manifest.diff import diff_manifest_bytes
from cfd.core.errors import ManifestError
from cfd.core.manifest.model import parse_manifest

HEX = "0123456789abcdef"
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
    st.text(max_size=30), st.text(alphabet=HEX, min_size=16, max_size=16),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def toml_value(value) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


model_entries = st.dictionaries(
    st.sampled_from(["filename", "size", "relative_path", "category", "sources", "blake3", "sha256", "extra", "criticality"]),
    values | st.sampled_from(["required", "optional", "flexible"]), max_size=6
)
ref_entries = st.dictionaries(
    st.sampled_from(["filename", "category", "criticality", "status", "hash", "nodes", "sources", "relative_path", "declared_by"]),
    values | st.sampled_from(["required", "optional", "flexible", "resolved", "unresolved"]),
    max_size=8,
)


@st.composite
def manifests(draw) -> bytes:
    tool = f"tool.{draw(st.sampled_from(['comfydock', 'comfygit']))}"  # both dialects' readers
    lines = ["[project]", 'name = "x"', "", f"[{tool}]", f"schema_version = {toml_value(draw(values))}", "", f"[{tool}.models]"]
    for key, entry in draw(st.dictionaries(st.text(alphabet=HEX + "xyz", min_size=1, max_size=16), model_entries, max_size=5)).items():
        lines.append(f"{json.dumps(key)} = {toml_value(entry)}")
    for wf in draw(st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=5), max_size=3, unique=True)):
        for entry in draw(st.lists(ref_entries, max_size=3)):
            lines.append(f"\n[[{tool}.workflows.{wf}.models]]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_reader_never_crashes_on_wrong_types(data: bytes):
    try:
        manifest = parse_manifest(data, "pyproject.toml")
    except ManifestError as exc:
        assert "pyproject.toml" in str(exc)
        return
    for model in manifest.models.values():
        assert isinstance(model.filename, str) and (model.size is None or model.size >= 0)
    for problem in manifest.problems:
        assert problem.startswith("pyproject.toml: [")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_reader_turns_any_bytes_into_a_manifest_or_a_manifest_error(data: bytes):
    try:
        parse_manifest(data)
    except ManifestError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), manifests())
def test_diff_never_crashes(old: bytes, new: bytes):
    try:
        diff_manifest_bytes(old, new)
    except ManifestError:
        pass


def test_deep_nesting_and_invalid_utf8_are_clear_errors(tmp_path):
    repo = tmp_path / "env"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    cases = {
        "deep nesting": b"[tool.comfydock]\nx = " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "invalid UTF-8": b"[tool.comfydock.models]\n# \xff\xfe\n",
        "huge and negative sizes": b'[tool.comfydock.models]\nabcdefabcdefabcd = {filename = "a", size = -5}\n'
        b'bbcdefabcdefabcd = {filename = "b", size = 99999999999999999999}\n',
    }
    (tmp_path / "models").mkdir(exist_ok=True)  # cfd never creates the models dir
    for label, data in cases.items():
        (repo / "pyproject.toml").write_bytes(data)
        result = subprocess.run(
            [sys.executable, "-m", "cfd.cli.main", "status"], cwd=repo, capture_output=True, text=True,
            env={**__import__("os").environ, "CFD_MODELS_DIR": str(tmp_path / "models")},
        )
        assert "Traceback" not in result.stderr, label
        assert result.returncode in (0, 1, 2), label
        if label != "huge and negative sizes":
            assert result.returncode == 2 and result.stderr.startswith("cfd: error:"), (label, result.stderr)
