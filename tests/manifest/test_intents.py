"""Writing downloaded intents back into pyproject.toml: only the intended lines change."""

from __future__ import annotations

import difflib
import stat
from pathlib import Path

import pytest
from helpers import ManifestBuilder
from helpers.manifest import current_dialect

from cfd.core.errors import ManifestError
from cfd.core.manifest.intents import ResolvedIntent, apply_resolutions, write_resolutions
from cfd.core.manifest.model import parse_manifest

pytestmark = pytest.mark.usefixtures("both_dialects")  # shared behaviour: ComfyGit and ComfyDock

A = "dcf5f306c2a63465"
NEW = "fedcba9876543210"
LORA_URL = "https://civitai.com/api/download/models/12345"


def _builder(style: str = "inline") -> ManifestBuilder:
    return (
        ManifestBuilder()
        .model(A, "a.safetensors", 10, "checkpoints/a.safetensors", "checkpoints", ["https://h/a"], style=style)
        .ref("wf1", "a.safetensors", "checkpoints", hash=A, criticality="required", status="resolved")
        .ref(
            "wf1", "lora.safetensors", "loras", criticality="optional", status="unresolved", node_id="7",
            node_type="LoraLoader", sources=[LORA_URL], relative_path="loras/lora.safetensors",
        )
    )


def _resolution(text: str, size: int = 123) -> ResolvedIntent:
    (intent,) = parse_manifest(text.encode()).intents
    return ResolvedIntent(intent, NEW, size, intent.target_path)


def _changes(old: str, new: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.ndiff(old.splitlines(), new.splitlines()))
    return [d[2:] for d in diff if d.startswith("- ")], [d[2:] for d in diff if d.startswith("+ ")]


def test_only_the_intended_lines_change() -> None:
    text = _builder().render()
    new, done = apply_resolutions(text, [_resolution(text)])
    assert [r.ref.filename for r in done] == ["lora.safetensors"]
    removed, added = _changes(text, new)
    assert removed == ['status = "unresolved"']
    assert added == [
        f'{NEW} = {{filename = "lora.safetensors", size = 123, relative_path = "loras/lora.safetensors", '
        f'category = "loras", sources = ["{LORA_URL}"]}}',
        'status = "resolved"',
        f'hash = "{NEW}"',
    ]
    manifest = parse_manifest(new.encode())
    assert not manifest.problems and not manifest.intents
    assert manifest.models[NEW].size == 123
    assert {r.hash for r in manifest.refs} == {A, NEW}


def test_full_table_style_is_kept() -> None:
    text = _builder(style="table").render()
    new, _ = apply_resolutions(text, [_resolution(text)])
    _, added = _changes(text, new)
    assert f"[tool.{current_dialect()}.models.{NEW}]" in added
    assert parse_manifest(new.encode()).models[NEW].relative_path == "loras/lora.safetensors"


def test_models_table_created_when_absent() -> None:
    text = (
        ManifestBuilder()
        .ref("wf1", "l.safetensors", "loras", status="unresolved", sources=[LORA_URL])
        .render()
    )
    new, done = apply_resolutions(text, [_resolution(text)])
    assert done
    removed, _ = _changes(text, new)
    assert removed == ['status = "unresolved"']
    manifest = parse_manifest(new.encode())
    assert NEW in manifest.models and not manifest.problems


def test_crlf_and_comments_survive() -> None:
    text = _builder().render().replace('status = "unresolved"', 'status = "unresolved"  # by hand')
    text = text.replace("\n", "\r\n")
    new, _ = apply_resolutions(text, [_resolution(text)])
    assert "\r\n" in new and "\n" not in new.replace("\r\n", "")
    assert new.count("\r\n") == text.count("\r\n") + 2
    assert "[project]" in new and 'name = "test-env"' in new


def test_already_resolved_entry_is_left_alone() -> None:
    text = _builder().render()
    resolution = _resolution(text)
    once, _ = apply_resolutions(text, [resolution])
    twice, done = apply_resolutions(once, [resolution])
    assert twice == once and done == []


def test_write_is_atomic_and_keeps_mode(tmp_path: Path) -> None:
    text = _builder().render()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(text)
    pyproject.chmod(0o640)
    assert write_resolutions(pyproject, [_resolution(text)]) == ["lora.safetensors"]
    assert stat.S_IMODE(pyproject.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml"]
    assert parse_manifest(pyproject.read_bytes()).models[NEW].size == 123
    assert write_resolutions(pyproject, []) == []


@pytest.mark.parametrize("bad", [b"not toml [", b"\xff\xfe"])
def test_unreadable_file_is_not_touched(tmp_path: Path, bad: bytes) -> None:
    text = _builder().render()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_bytes(bad)
    with pytest.raises(ManifestError):
        write_resolutions(pyproject, [_resolution(text)])
    assert pyproject.read_bytes() == bad


def test_one_download_resolves_every_entry_asking_for_it() -> None:
    text = (
        _builder()
        .ref("wf2", "lora.safetensors", "loras", criticality="required", status="unresolved", node_id="3",
             node_type="LoraLoader", sources=[LORA_URL], relative_path="loras/lora.safetensors")
        .render()
    )
    intents = parse_manifest(text.encode()).intents
    assert len(intents) == 2
    new, done = apply_resolutions(text, [ResolvedIntent(ref, NEW, 9, ref.target_path) for ref in intents])
    assert len(done) == 2
    _, added = _changes(text, new)
    assert sum(line.startswith(f"{NEW} = ") for line in added) == 1
    manifest = parse_manifest(new.encode())
    assert not manifest.intents and [r.hash for r in manifest.refs if r.filename == "lora.safetensors"] == [NEW, NEW]


def test_writing_back_many_intents_never_rescans_the_models_table(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Issue 10: tomlkit scanned the whole models table for each model added (quadratic:
    4,000 intents took 9 s). Counted, not timed: no scan of a large table, same text as before."""
    from tomlkit.container import Container

    from cfd.core.manifest.intents import ResolvedIntent, apply_resolutions
    from cfd.core.manifest.model import parse_manifest
    from helpers.manifest import ManifestBuilder

    scanned: list[int] = []
    original = Container._get_last_index_before_table

    def counting(self):  # type: ignore[no-untyped-def]
        scanned.append(len(self._body))
        return original(self)

    monkeypatch.setattr(Container, "_get_last_index_before_table", counting)
    builder = ManifestBuilder().model("0123456789abcdef", "a.safetensors", 1, sources=["https://h.example/a"])
    for i in range(300):
        builder.ref(f"wf{i % 7}", f"l{i}.safetensors", "loras", status="unresolved", node_id=str(i + 1), sources=[f"https://c.example/{i}"])
    text = builder.render()
    refs = parse_manifest(text.encode()).intents
    new_text, done = apply_resolutions(text, [ResolvedIntent(r, f"{i:016x}", 10, r.target_path) for i, r in enumerate(refs)])
    assert len(done) == 300
    assert max(scanned) < 20, max(scanned)  # only the small entry tables, never the models table
    resolved = parse_manifest(new_text.encode())
    assert len(resolved.models) == 301 and not resolved.intents
    after_header = new_text.split(f"[tool.{current_dialect()}.models]\n", 1)[1]
    models_table, _, _ = after_header.partition("\n\n")  # the table ends at its blank line, as before
    assert models_table.count("\n") == 300 and after_header[len(models_table) + 2] == "["
