"""`cfd mirror status`: which of the manifest's models the mirror has, and what only it still serves.

The truth comes from the bucket (two listings, then each present model's alias, read
and checked like a download would) and from the working manifest; "origins gone" is
what the manifest gives no source for, or what the pending marker last found 404/410
at every source.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..environment import Environment
from ..sync.marker import Marker, sources_gone
from ..sync.status import load_working_manifest
from .client import MirrorClient
from .config import MirrorConfig
from .inventory import read_inventory
from .layout import MAX_ALIAS_BYTES, alias_key, blob_key, parse_alias


@dataclass(frozen=True)
class MirroredModel:
    hash: str
    filename: str
    relative_path: str
    size: int | None
    in_mirror: bool
    problem: str | None  # an alias without its blob, or not a valid alias
    origins: int  # sources in the manifest
    origins_gone: bool  # no source, or every source answered 404/410 last time

    @property
    def only_in_mirror(self) -> bool:
        return self.in_mirror and self.origins_gone

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "filename": self.filename, "relative_path": self.relative_path, "size": self.size,
                "in_mirror": self.in_mirror, "problem": self.problem, "origins": self.origins,
                "origins_gone": self.origins_gone, "only_in_mirror": self.only_in_mirror}


@dataclass(frozen=True)
class MirrorStatus:
    mirror: str
    models: tuple[MirroredModel, ...]

    @property
    def present(self) -> tuple[MirroredModel, ...]:
        return tuple(m for m in self.models if m.in_mirror)

    def to_json(self) -> dict[str, Any]:
        present = self.present
        return {
            "mirror": self.mirror,
            "models": len(self.models),
            "in_mirror": len(present),
            "bytes_in_mirror": sum(m.size or 0 for m in present),
            "missing_from_mirror": [m.relative_path for m in self.models if not m.in_mirror],
            "only_in_mirror": [m.relative_path for m in present if m.only_in_mirror],
            "entries": [m.to_json() for m in self.models],
        }


def mirror_status(env: Environment, config: MirrorConfig) -> MirrorStatus:
    manifest = load_working_manifest(env)
    gone = {entry.key for entry in Marker(env.git_dir).read() if sources_gone(entry)}
    client = MirrorClient(config)
    inventory = read_inventory(client)

    def check(model: Any) -> MirroredModel:
        in_mirror, problem = False, None
        if model.size is not None and inventory.has_alias(model.hash, model.size):
            data = client.get_small(alias_key(config.prefix, model.hash, model.size, config.dialect), MAX_ALIAS_BYTES)
            alias = parse_alias(data or b"", model.hash, model.size, config.dialect)
            if alias is None:
                problem = "its alias is not valid (a download would ignore it)"
            elif inventory.blobs.get(blob_key(config.prefix, alias.blake3)) != model.size:
                problem = "its alias names a blob that is missing or of another size"
            else:
                in_mirror = True
        return MirroredModel(model.hash, model.filename, model.relative_path, model.size, in_mirror, problem,
                             len(model.sources), not model.sources or model.hash in gone)

    models = sorted(manifest.models.values(), key=lambda m: m.relative_path)
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = tuple(pool.map(check, models))
    return MirrorStatus(config.url, rows)
