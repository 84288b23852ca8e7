"""The agent's marker upkeep per indexed file, with a large pending marker (issue 10).

Not part of pytest. Run:  python bench/bench_marker_upkeep.py [--entries 20000] [--files 500]

An environment whose pending marker holds --entries entries; the agent's models worker
reports --files indexed files that no entry waits for (what a scan of a big models folder
does), then --awaited files that entries wait for, in one pass of the worker. Printed: the time per file now (the marker is read
once and re-read only when it changed), and the time of one marker read, which is what every
file cost before (each file read and parsed every environment's marker).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cfd.agent.daemon import Agent, AgentConfig
from cfd.core.environment import open_environment
from cfd.core.store.index import ModelIndex
from cfd.core.sync.marker import Marker, PendingEntry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--awaited", type=int, default=100, help="files that pending entries wait for")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cfd-bench-marker-"))
    try:
        repo, models = work / "env", work / "models"
        repo.mkdir()
        models.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        (repo / "pyproject.toml").write_text('[tool.comfydock]\ncomfyui_version = "v0.3.40"\n')
        os.environ.update(CFD_MODELS_DIR=str(models), CFD_INDEX=str(work / "models.db"))
        env = open_environment(repo)
        entries = [
            PendingEntry(f"{n:016x}", f"m{n}.safetensors", f"checkpoints/m{n}.safetensors", 10, ("https://h.example/x",), "required", ("wf",), "deferred")
            for n in range(args.entries)
        ]
        marker = Marker(env.git_dir)
        marker.write(entries)
        started = time.perf_counter()
        marker.read()
        one_read = time.perf_counter() - started
        agent = Agent(AgentConfig(envs=(env,), models_dir=models, index_path=work / "models.db"))
        with ModelIndex(work / "models.db", models) as index:
            started = time.perf_counter()
            for n in range(args.files):
                agent._on_indexed(index, f"ffff{n:012x}", f"loras/other{n}.safetensors")
            per_file = (time.perf_counter() - started) / args.files
            started = time.perf_counter()
            for entry in entries[: args.awaited]:  # arriving in one pass of the models worker
                agent._on_indexed(index, entry.key, entry.relative_path)
            agent._flush(index)
            awaited = time.perf_counter() - started
            left = len(marker.read())
        print(f"marker of {args.entries:,} entries ({marker.path.stat().st_size / 2**20:.1f} MiB)")
        print(f"  one marker read (each indexed file paid this before): {one_read * 1000:8.1f} ms")
        print(f"  per indexed file now, {args.files} files no entry waits for: {per_file * 1000:8.3f} ms")
        print(f"  {args.awaited} files entries wait for, in one pass (one merge: read, drop, write): {awaited * 1000:8.1f} ms")
        assert left == args.entries - args.awaited
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
