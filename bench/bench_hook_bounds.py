"""How long a hostile server can hold `git pull`, with cfd's default settings (not pytest).

    python bench/bench_hook_bounds.py [--models 3] [--sources 2] [--only black-hole|slowloris]

A teammate's manifest names N models, each with S sources, all on one loopback server that is
1. a black hole: it accepts the connection, reads the request and never answers;
2. a slowloris: it answers, then sends one byte every 2 s (never silent long enough to stall).
Bob pulls with the hooks installed and every setting at its default (only private networks
are allowed, the server being on 127.0.0.1). Printed: the wall time of `git pull` and what the
hook said; the bound is cfd.hookTimeBudget (300 s) plus start-up. Takes about 5 minutes each.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_hooks import ManifestBuilder, git, make_team, setup_env  # noqa: E402
from helpers.faults import ModelServer  # noqa: E402

from cfd.demo.content import generate_model_bytes  # noqa: E402
from cfd.core.store.shorthash import short_hash_bytes  # noqa: E402


def run(kind: str, models: int, sources: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cfd-bounds-") as tmp, ModelServer() as server:
        root = Path(tmp)
        setup_env(root)
        os.environ["CFD_ALLOW_PRIVATE_NETWORKS"] = "true"
        alice, bob, _ = make_team(root / "repos", ManifestBuilder().render())
        builder = ManifestBuilder()
        for i in range(models):
            data = generate_model_bytes(100 + i, 1 << 20)
            digest, name = short_hash_bytes(data), f"m{i}.safetensors"
            urls = []
            for s in range(sources):
                path = f"/{kind}/{s}/{name}"
                urls.append(server.add_file(path, data))
                server.set_fault(path, **({"black_hole": True} if kind == "black-hole" else {"drip": 2.0}))
            builder.model(digest, name, len(data), f"checkpoints/{name}", "checkpoints", urls)
            builder.ref("wf1", name, "checkpoints", hash=digest, criticality="required", status="resolved", node_id=str(i))
        (alice / "pyproject.toml").write_text(builder.render())
        git(alice, "commit", "-qam", "models")
        git(alice, "push", "-q", "origin", "main")
        started = time.monotonic()
        said = git(bob, "pull", "-q")
        elapsed = time.monotonic() - started
        summary = [line for line in said.splitlines() if "new model(s) needed" in line]
        print(f"{kind:10} {models} models x {sources} sources, default settings: git pull {elapsed:.1f} s; "
              f"{summary[-1] if summary else said.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--sources", type=int, default=2)
    parser.add_argument("--only", choices=("black-hole", "slowloris"))
    args = parser.parse_args()
    for kind in ("black-hole", "slowloris"):
        if args.only in (None, kind):
            run(kind, args.models, args.sources)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
