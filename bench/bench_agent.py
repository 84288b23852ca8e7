"""Agent benchmarks: idle CPU while watching 10,000 files, and copy-to-index latency.

    python bench/bench_agent.py [--files 10000] [--idle-seconds 60] [--size-gib 1]

1. A models dir with N small model files in 100 folders and an environment repo;
   `cfd agent start`; once the initial scan has indexed everything, the agent's
   utime+stime (from /proc/<pid>/stat, all threads) over --idle-seconds.
   Target: < 1 % of one core.
2. A 1 GiB model copied into the watched dir (shutil.copyfile); the time from
   the end of the copy (file closed) to its row in the index. Target: < 2 s.
   The agent's default settle time (1 s) is used: it dominates the figure.
Everything lives in a temp dir (XDG_STATE_HOME too); the agent is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def cfd(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfd.cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)


def status(state_home: Path) -> dict:
    found = list((state_home / "cfd").glob("agent-*/agent-status.json"))
    return json.loads(found[0].read_text()) if found else {}


def wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def make_files(models: Path, count: int) -> None:
    for i in range(count):
        folder = models / "loras" / f"pack{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"l{i:05d}.safetensors").write_bytes(os.urandom(64))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir, removed afterwards)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cfd-bench-agent-", dir=args.dir))
    models, repo, state = work / "models", work / "env", work / "state"
    index_path = work / "index.db"
    env = {**os.environ, "CFD_MODELS_DIR": str(models), "CFD_INDEX": str(index_path), "XDG_STATE_HOME": str(state)}
    for key in [k for k in env if k.startswith("GIT_") and k not in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM")]:
        env.pop(key)
    try:
        repo.mkdir(parents=True)
        (repo / "pyproject.toml").write_text('[tool.comfydock]\ncomfyui_version = "v0.3.40"\n')
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@cfd.invalid"]
        subprocess.run([*git, "init", "-q"], cwd=repo, env=env, check=True)
        subprocess.run([*git, "add", "pyproject.toml"], cwd=repo, env=env, check=True)
        subprocess.run([*git, "commit", "-q", "-m", "env"], cwd=repo, env=env, check=True)

        t0 = time.monotonic()
        make_files(models, args.files)
        print(f"created {args.files} files in {time.monotonic() - t0:.1f} s")

        t0 = time.monotonic()
        print(cfd(env, repo, "agent", "start").stdout.strip().splitlines()[0])
        pid = status(state)["pid"]
        wait(lambda: status(state).get("scan") == "done", 3600, "the initial scan")
        # Files younger than the settle time wait in `pending`: idle means all of them hashed.
        wait(lambda: status(state).get("stats", {}).get("hashed", 0) >= args.files and status(state).get("pending") == 0, 3600, "hashing")
        scan_s = time.monotonic() - t0
        hashed = status(state).get("stats", {}).get("hashed", 0)
        print(f"initial scan: {hashed} files hashed and indexed in {scan_s:.1f} s (start included)")

        time.sleep(2)  # let the last status flush and the index's WAL checkpoint pass
        before, t_before = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        used, span = cpu_seconds(pid) - before, time.monotonic() - t_before
        idle_pct = 100.0 * used / span
        print(f"idle CPU watching {args.files} files over {span:.0f} s: {used:.2f} s CPU = {idle_pct:.3f} % of one core (target < 1 %)")

        size = int(args.size_gib * 1024**3)
        source = work / "source.safetensors"
        with open(source, "wb") as handle:
            block = os.urandom(16 * 1024 * 1024)
            for _ in range(size // len(block)):
                handle.write(block[:8] + os.urandom(8) + block[16:])  # distinct sampled regions
        target = models / "checkpoints" / "big.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        t_copy = time.monotonic()
        shutil.copyfile(source, target)
        copy_end = time.monotonic()
        connection = sqlite3.connect(index_path)

        def indexed() -> bool:
            row = connection.execute(
                "SELECT 1 FROM model_locations WHERE relative_path = ?", ("checkpoints/big.safetensors",)
            ).fetchone()
            return row is not None

        wait(indexed, 60, "the 1 GiB model's index entry")
        latency = time.monotonic() - copy_end
        connection.close()
        print(f"copy of {size / 1024**3:.1f} GiB took {copy_end - t_copy:.2f} s; indexed {latency:.2f} s after the copy ended (target < 2 s; settle 1 s)")
        cfd(env, repo, "agent", "stop")
        print(json.dumps({"files": args.files, "idle_seconds": round(span, 1), "idle_cpu_percent": round(idle_pct, 3),
                          "initial_scan_s": round(scan_s, 1), "copy_to_index_s": round(latency, 2)}))
        return 0
    finally:
        subprocess.run([sys.executable, "-m", "cfd.cli.main", "agent", "stop"], cwd=repo, env=env, capture_output=True)
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
