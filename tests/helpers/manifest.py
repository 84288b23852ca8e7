"""ComfyGit / ComfyDock pyproject.toml text for tests, model files, and each dialect's short hash.

Tests shared by both dialects take the `dialect` fixture (tests/conftest.py) and pass it
to `ManifestBuilder(dialect)`, `short_hash_for(data, dialect)` and `make_model(..., dialect=)`.

The TOML is written by hand, not with tomlkit: tests need exact control over layout
(inline entries vs. full tables, keys left out) and benchmarks need 10,000 entries fast.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from blake3 import blake3

MIB = 1024 * 1024
_SAMPLE = 5 * MIB

# Present in every rendered manifest; cfd must read past these and never rewrite them.
PROJECT_TABLE = """\
[project]
name = "test-env"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["torch>=2.1", "safetensors==0.4.5"]
"""
DIALECTS = ("comfydock", "comfygit")
# The dialect the helpers write when none is given: a module parametrised over both dialects
# as a whole (`pytestmark = pytest.mark.usefixtures("both_dialects")`) switches it per test.
CURRENT = {"dialect": "comfydock"}


def current_dialect() -> str:
    return CURRENT["dialect"]
NODES_TABLE = """\
[tool.comfydock.nodes]
comfyui-impact-pack = {name = "ComfyUI Impact Pack", registry_id = "comfyui-impact-pack", version = "8.8.1", source = "registry"}
"""


def short_hash_for(data: bytes, dialect: str | None = None) -> str:
    """The dialect's sampled short hash of a file's bytes: BLAKE3 (ComfyDock, see SPEC.md)
    or xxh3_128 (ComfyGit 0.7), written out here independently of cfd's own code."""
    size = len(data)
    if (dialect or current_dialect()) == "comfygit":
        import xxhash

        h = xxhash.xxh3_128(str(size).encode())
    else:
        h = blake3(str(size).encode())
    h.update(data[:_SAMPLE])
    if size > 30 * MIB:
        middle = size // 2 - _SAMPLE // 2
        h.update(data[middle : middle + _SAMPLE])
        h.update(data[-_SAMPLE:])
    return h.hexdigest()[:16]


def model_bytes(seed: int, size: int) -> bytes:
    """Deterministic content: the same seed and size always give the same model."""
    return random.Random(seed).randbytes(size)


def make_model(models_dir: Path, relpath: str, seed: int, size: int, dialect: str | None = None) -> tuple[str, Path]:
    """Write a deterministic model file at models_dir/relpath; return (short hash, path)."""
    data = model_bytes(seed, size)
    path = models_dir / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return short_hash_for(data, dialect), path


# --- TOML writing -------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def toml_value(value: Any) -> str:
    """A TOML literal for str, bool, int, float, list or dict (as an inline table)."""
    if isinstance(value, str):
        # JSON string escapes are TOML basic-string escapes; DEL must be escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return inline_table(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def inline_table(entries: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in entries.items()) + "}"


def _present(**entries: Any) -> dict[str, Any]:
    """Keys whose value is None are left out, so tests can write the "absent" cases."""
    return {k: v for k, v in entries.items() if v is not None}


@dataclass
class _Workflow:
    path: str | None
    refs: list[dict[str, Any]] = field(default_factory=list)


class ManifestBuilder:
    """Builds a ComfyDock pyproject.toml. Methods chain: `ManifestBuilder().model(...).ref(...)`."""

    def __init__(self, dialect: str | None = None) -> None:
        self.dialect = dialect or current_dialect()
        self._models: list[tuple[str, dict[str, Any], str]] = []
        self._workflows: dict[str, _Workflow] = {}

    def model(
        self,
        hash: str,
        filename: str,
        size: int,
        relative_path: str | None = None,
        category: str | None = None,
        sources: Iterable[str] | None = (),
        style: Literal["inline", "table"] = "inline",
        **extra: Any,
    ) -> ManifestBuilder:
        """A global `[tool.comfydock.models]` entry; sources=None leaves the key out."""
        entry = _present(
            filename=filename,
            size=size,
            relative_path=relative_path,
            category=category,
            sources=None if sources is None else list(sources),
            **extra,
        )
        self._models.append((hash, entry, style))
        return self

    def workflow(self, name: str, path: str | None = None) -> ManifestBuilder:
        """Declare a workflow (its path defaults to workflows/<name>.json)."""
        wf = self._workflows.setdefault(name, _Workflow(path=None))
        wf.path = path if path is not None else f"workflows/{name}.json"
        return self

    def ref(
        self,
        workflow: str,
        filename: str,
        category: str,
        hash: str | None = None,
        criticality: str | None = None,
        status: str | None = None,
        node_id: str = "4",
        widget_idx: int = 0,
        node_type: str = "CheckpointLoaderSimple",
        sources: Iterable[str] | None = None,
        relative_path: str | None = None,
        **extra: Any,
    ) -> ManifestBuilder:
        """A `[[tool.comfydock.workflows.<workflow>.models]]` entry; None keys are left out."""
        if workflow not in self._workflows:
            self.workflow(workflow)
        node = {
            "node_id": node_id,
            "node_type": node_type,
            "widget_idx": widget_idx,
            "widget_value": filename,
        }
        self._workflows[workflow].refs.append(
            _present(
                filename=filename,
                category=category,
                criticality=criticality,
                status=status,
                nodes=[node],
                hash=hash,
                sources=None if sources is None else list(sources),
                relative_path=relative_path,
                **extra,
            )
        )
        return self

    def render(self) -> str:
        tool = f"tool.{self.dialect}"
        head = f'[{tool}]\ncomfyui_version = "v0.3.40"\n' + ("schema_version = 2\n" if self.dialect == "comfygit" else "")
        parts = [PROJECT_TABLE, head, NODES_TABLE.replace("tool.comfydock", tool)]
        if self._models:
            lines = [f"[{tool}.models]"]
            lines += [f"{h} = {inline_table(e)}" for h, e, s in self._models if s == "inline"]
            parts.append("\n".join(lines) + "\n")
            for h, entry, style in self._models:
                if style == "table":
                    body = "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in entry.items())
                    parts.append(f"[{tool}.models.{h}]\n{body}")
        for name, wf in self._workflows.items():
            prefix = f"{tool}.workflows.{toml_key(name)}"
            parts.append(f"[{prefix}]\npath = {toml_value(wf.path)}\n")
            for ref in wf.refs:
                body = "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in ref.items())
                parts.append(f"[[{prefix}.models]]\n{body}")
        return "\n".join(parts)


# --- Benchmarks -----------------------------------------------------------------------

_CATEGORIES = ("checkpoints", "loras", "vae", "controlnet", "upscale_models")
_NODE_TYPES = {
    "checkpoints": "CheckpointLoaderSimple",
    "loras": "LoraLoader",
    "vae": "VAELoader",
    "controlnet": "ControlNetLoader",
    "upscale_models": "UpscaleModelLoader",
}
_CRITICALITY = ("required", "flexible", "optional")


def big_manifest(
    n_models: int,
    n_workflows: int,
    refs_per_workflow: int,
    new_fraction: float = 0.0,
    seed: int = 0,
    dialect: str = "comfydock",
) -> tuple[str, str]:
    """Two versions of a large manifest, as a pull would bring them: (old, new).

    `new` has n_models global entries; round(n_models * new_fraction) of them are absent
    from `old` and each is referenced by one extra ref in `new` (workflow i % n_workflows).
    The other refs (n_workflows * refs_per_workflow) point round-robin at the old models
    and are the same in both. Global entries are ordered by hash, so new ones are
    interleaved, not appended.
    """
    rng = random.Random(seed)
    hashes: list[str] = []
    seen: set[str] = set()
    while len(hashes) < n_models:
        h = f"{rng.getrandbits(64):016x}"
        if h not in seen:
            seen.add(h)
            hashes.append(h)
    models = []
    for i, h in enumerate(hashes):
        category = _CATEGORIES[i % len(_CATEGORIES)]
        filename = f"model_{i:05d}_{h[:6]}.safetensors"
        entry = {
            "filename": filename,
            "size": rng.randrange(10 * MIB, 7 * 1024 * MIB),
            "relative_path": f"{category}/{filename}",
            "category": category,
            "sources": [f"https://huggingface.co/org{i % 97}/repo{i}/resolve/main/{filename}"],
        }
        models.append((h, entry))
    n_new = round(n_models * new_fraction)
    n_old = n_models - n_new

    def build(include_new: bool) -> str:
        b = ManifestBuilder(dialect)
        shown = models if include_new else models[:n_old]
        for h, entry in sorted(shown, key=lambda m: m[0]):
            b.model(h, **entry)
        refs: list[tuple[int, int]] = []  # (workflow, model index)
        if n_old:
            refs += [
                (w, (w * refs_per_workflow + j) % n_old)
                for w in range(n_workflows)
                for j in range(refs_per_workflow)
            ]
        if include_new and n_workflows:
            refs += [(i % n_workflows, n_old + i) for i in range(n_new)]
        for w in range(n_workflows):
            b.workflow(f"wf{w:04d}")
        for k, (w, m) in enumerate(refs):
            h, entry = models[m]
            category = entry["category"]
            b.ref(
                f"wf{w:04d}",
                entry["filename"],
                category,
                hash=h,
                criticality=_CRITICALITY[m % len(_CRITICALITY)],
                status="resolved",
                node_id=str(k + 1),
                node_type=_NODE_TYPES[category],
            )
        return b.render()

    return build(False), build(True)
