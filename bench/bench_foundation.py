"""Foundation benchmark: manifest diff + missing check, `cfd status`, incremental `cfd index scan`.

Not part of pytest. Run:  python bench/bench_foundation.py [--runs 7] [--sizes 100,1000,10000]

  1. In-process, for manifests of 100 / 1,000 / 10,000 models (one workflow per 10 models,
     10 entries per workflow) whose new version adds 5 % new models: the hook's path
     `diff_manifest_bytes` (differential read) + `detect_missing_models` on the hashes it
     names, and for comparison the same with both versions parsed in full (with the fast
     reader for ComfyDock's layout, and with tomllib alone).
     Target: under 150 ms at 10,000.
  2. `cfd status` as a subprocess on 10,000 models / 1,000 workflows, 95 % of the models on
     disk: without the manifest cache (first run after the file changed) and with it (cache in
     <git dir>/cfd). Both with bytecode cached, as pip installs it: "cold" would mean an empty
     page cache and no .pyc files, which this bench does not measure.
     Target: under 1 s.
  3. `cfd index scan` as a subprocess over 10,000 unchanged files (after a first scan).
     Target: under 1 s.
  4. Download intents (issue 10: detection was quadratic, 20,000 took minutes): a pull that
     adds 5,000 / 20,000 intents, half of them downloaded already. The hook's path
     (differential diff + missing check) and `cfd status` (subprocess, no manifest cache),
     with intents per second. Target: 20,000 under 5 s for each.

Figures are medians (min and max in brackets); wall time, so other load on the machine
shows. Everything lives in a temporary directory, deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.manifest import ManifestBuilder, big_manifest  # noqa: E402

from cfd.core.manifest import fasttoml  # noqa: E402
from cfd.core.manifest.diff import diff_manifest_bytes, diff_manifests  # noqa: E402
from cfd.core.state import clone_state  # noqa: E402
from cfd.core.store.index import ModelIndex  # noqa: E402
from cfd.core.manifest.model import parse_manifest  # noqa: E402
from cfd.core.sync.missing import detect_missing_models  # noqa: E402
from cfd.core.store.shorthash import short_hash_bytes  # noqa: E402

TARGETS_MS = {"diff": 150.0, "status": 1000.0, "scan": 1000.0, "intents": 5000.0}


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def fmt(times: list[float]) -> str:
    return f"{statistics.median(times):8.1f} ms  [{min(times):.1f} .. {max(times):.1f}]"


def verdict(times: list[float], target: float) -> str:
    return "ok" if statistics.median(times) < target else f"MISSES {target:.0f} ms"


def place_models(index: ModelIndex, hashes: list[str]) -> None:
    """Small stand-in files for `hashes`, indexed under those hashes (present() stats them)."""
    with index.transaction():
        for n, model_hash in enumerate(hashes):
            relpath = f"m{n % 16:02d}/{model_hash}.safetensors"
            path = index.models_dir / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(model_hash.encode())
            stat = path.stat()
            index.add_model(model_hash, stat.st_size)
            index.add_location(model_hash, relpath, stat.st_mtime)


def bench_diff(sizes: list[int], runs: int, work: Path) -> bool:
    print("1. parse + diff + missing check, 5 % new models (in-process)")
    print(f"   {'models':>7} {'bytes':>10}   {'differential (hook path)':<36} {'full parse of both':<36} {'full, tomllib only':<36}")
    ok = True
    for n in sizes:
        old, new = big_manifest(n, max(1, n // 10), 10, new_fraction=0.05, seed=n)
        old_b, new_b = old.encode(), new.encode()
        new_hashes = sorted(parse_manifest(new_b).models.keys() - parse_manifest(old_b).models.keys())
        root = work / f"diff-{n}"
        (root / "models").mkdir(parents=True)  # cfd never creates the models dir
        with ModelIndex(root / "models.db", root / "models") as index:
            place_models(index, new_hashes[::2])  # half of the new models are already here

            def differential() -> None:
                diff = diff_manifest_bytes(old_b, new_b)
                report = detect_missing_models(diff.new, index, diff.hashes_to_check)
                assert len(diff.newly_needed) == len(new_hashes) and len(report.missing) == len(new_hashes) // 2

            def full() -> None:
                diff = diff_manifests(parse_manifest(old_b), parse_manifest(new_b))
                detect_missing_models(diff.new, index, diff.hashes_to_check)

            differential()  # warm imports and caches
            quick = timed(differential, runs)
            slow = timed(full, max(3, runs // 2))
            fast_reader = fasttoml.loads
            fasttoml.loads = lambda text: None  # type: ignore[assignment]  # what parsing cost before it
            try:
                slowest = timed(full, 3)
            finally:
                fasttoml.loads = fast_reader
        mark = verdict(quick, TARGETS_MS["diff"]) if n >= 10_000 else ""
        ok &= not mark.startswith("MISSES")
        print(f"   {n:>7} {len(new_b):>10}   {fmt(quick):<36} {fmt(slow):<36} {fmt(slowest):<36} {mark}")
    return ok


def cfd(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cfd.cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode not in (0, 1):
        raise SystemExit(f"cfd {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return elapsed


def bench_status(runs: int, work: Path) -> bool:
    print("2. `cfd status` on 10,000 models / 1,000 workflows (subprocess, 95 % of the models on disk)")
    root = work / "status"
    repo = root / "env" / ".cec"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    old, new = big_manifest(10_000, 1_000, 10, new_fraction=0.05, seed=1)
    (repo / "pyproject.toml").write_text(new)
    models, db = root / "models", root / "models.db"
    models.mkdir()
    with ModelIndex(db, models) as index:
        place_models(index, sorted(parse_manifest(old.encode()).models))
    env = {**os.environ, "CFD_MODELS_DIR": str(models), "CFD_INDEX": str(db)}
    cache = clone_state(repo / ".git").manifest_cache
    cfd(["--version"], repo, env)  # the interpreter and its files are in the page cache

    def cold() -> None:
        cache.unlink(missing_ok=True)
        cfd(["status"], repo, env)

    cold_times = timed(cold, max(3, runs // 2))
    cfd(["status"], repo, env)
    warm_times = timed(lambda: cfd(["status"], repo, env), runs)
    json_times = timed(lambda: cfd(["status", "--json"], repo, env), max(3, runs // 2))
    print(f"   {'pyproject.toml':<28} {len(new.encode()):>10} bytes")
    print(f"   {'no manifest cache':<28} {fmt(cold_times)}   {verdict(cold_times, TARGETS_MS['status'])}")
    print(f"   {'manifest cache':<28} {fmt(warm_times)}   {verdict(warm_times, TARGETS_MS['status'])}")
    print(f"   {'manifest cache, --json':<28} {fmt(json_times)}")
    started = timed(lambda: cfd(["--version"], repo, env), runs)
    print(f"   {'(cfd --version: startup)':<28} {fmt(started)}")
    return all(statistics.median(t) < TARGETS_MS["status"] for t in (cold_times, warm_times))


def bench_scan(runs: int, work: Path, files: int = 10_000) -> bool:
    print(f"3. incremental `cfd index scan` of {files:,} unchanged files (subprocess)")
    root = work / "scan"
    repo = root / "env" / ".cec"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "pyproject.toml").write_text('[tool.comfydock]\ncomfyui_version = "v0.3.40"\n')
    models = root / "models"
    for n in range(files):
        path = models / ("checkpoints", "loras", "vae", "controlnet", "upscale_models")[n % 5] / f"sub{n % 20}" / f"model_{n:05d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(n.to_bytes(4, "little") * 16)
    env = {**os.environ, "CFD_MODELS_DIR": str(models), "CFD_INDEX": str(root / "models.db")}
    first = cfd(["index", "scan"], repo, env)
    times = timed(lambda: cfd(["index", "scan"], repo, env), runs)
    assert short_hash_bytes(b"abcdefghij") == "7bc234d9c29950da"
    print(f"   {'first scan (hashes all)':<28} {first:8.1f} ms")
    print(f"   {'rescan, nothing changed':<28} {fmt(times)}   {verdict(times, TARGETS_MS['scan'])}")
    return statistics.median(times) < TARGETS_MS["scan"]


def intents_manifest(n: int) -> tuple[bytes, bytes]:
    """(old, new): new adds n intents (one workflow per 100) to a one-model manifest."""
    builder = ManifestBuilder().model("0123456789abcdef", "base.safetensors", 64, sources=["https://huggingface.co/o/r/resolve/main/base"])
    builder.ref("wf0000", "base.safetensors", "checkpoints", hash="0123456789abcdef")
    old = builder.render().encode()
    for i in range(n):
        builder.ref(f"wf{i // 100:04d}", f"lora_{i:05d}.safetensors", "loras", status="unresolved",
                    node_id=str(i + 2), sources=[f"https://civitai.com/api/download/models/{i}"])
    return old, builder.render().encode()


def bench_intents(sizes: list[int], runs: int, work: Path) -> bool:
    print("4. download intents added by a pull, half already downloaded")
    print(f"   {'intents':>7} {'bytes':>10}   {'hook path (in-process)':<36} {'intents/s':>10}   {'`cfd status`, no manifest cache':<36} {'intents/s':>10}")
    ok = True
    for n in sizes:
        old, new = intents_manifest(n)
        root = work / f"intents-{n}"
        repo = root / "env" / ".cec"
        repo.mkdir(parents=True)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        (repo / "pyproject.toml").write_bytes(new)
        models, db = root / "models", root / "models.db"
        models.mkdir()
        with ModelIndex(db, models) as index:
            place_models(index, ["fedcba9876543210"])
            with index.transaction():
                for i in range(0, n, 2):
                    index.add_source("fedcba9876543210", f"https://civitai.com/api/download/models/{i}")

            def hook_path() -> None:
                diff = diff_manifest_bytes(old, new)
                report = detect_missing_models(diff.new, index, diff.hashes_to_check)
                assert len(diff.new_intents) == n and len(report.intents) == n - (n + 1) // 2

            hook = timed(hook_path, max(3, runs // 2))
        env = {**os.environ, "CFD_MODELS_DIR": str(models), "CFD_INDEX": str(db)}
        cache = clone_state(repo / ".git").manifest_cache

        def cold() -> None:
            cache.unlink(missing_ok=True)
            cfd(["status"], repo, env)

        status = timed(cold, 3)
        rate = lambda times: f"{n / (statistics.median(times) / 1000):10,.0f}"  # noqa: E731
        mark = ""
        if n >= 20_000:
            mark = "ok" if max(statistics.median(hook), statistics.median(status)) < TARGETS_MS["intents"] else f"MISSES {TARGETS_MS['intents']:.0f} ms"
            ok &= mark == "ok"
        print(f"   {n:>7} {len(new):>10}   {fmt(hook):<36} {rate(hook)}   {fmt(status):<36} {rate(status)}   {mark}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per figure (median reported)")
    parser.add_argument("--sizes", default="100,1000,10000", help="manifest sizes for part 1")
    parser.add_argument("--intents", default="5000,20000", help="intent counts for part 4")
    parser.add_argument("--only", choices=("diff", "status", "scan", "intents"), help="run one part")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cfd-bench-"))
    # As installed by pip: bytecode compiled once and reused (some sandboxes set
    # PYTHONDONTWRITEBYTECODE; every child would then compile cfd at each start).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    print("bytecode: cached (compiled by the first run of each command, reused after)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n")
    ok = True
    try:
        if args.only in (None, "diff"):
            ok &= bench_diff([int(n) for n in args.sizes.split(",")], args.runs, work)
        if args.only in (None, "status"):
            ok &= bench_status(args.runs, work)
        if args.only in (None, "scan"):
            ok &= bench_scan(args.runs, work)
        if args.only in (None, "intents"):
            ok &= bench_intents([int(n) for n in args.intents.split(",")], args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
