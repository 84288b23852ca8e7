"""Peak memory against manifest size (issue 10: ≈19x the pyproject.toml size before).

Not part of pytest. Run:  python bench/bench_memory.py [--models 10000,50000,100000]

For manifests of the given numbers of models (one workflow per 10 models, 10 entries
each, none of them on disk), each command runs as its own process and its peak RSS
(ru_maxrss) is read when it ends:
  - `cfd status --json` without and with the manifest cache, and `cfd repair --dry-run`;
  - a `git pull` bringing that manifest, its hooks installed: once under
    cfd.maxManifestSize (the hook reads it) and once over it (the hook refuses without
    reading it). For the pull, the figure is the largest of git's children (the hook).
Printed: MiB of RSS, and RSS over the manifest's size. The interpreter alone costs ~20 MiB
(`cfd --version` is shown for reference).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.manifest import big_manifest  # noqa: E402

from cfd.core.state import clone_state  # noqa: E402

MIB = 1024 * 1024
CFD = [sys.executable, "-m", "cfd.cli.main"]


def peak_rss(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Peak RSS in MiB of a command (and its children), run through a fresh Python wrapper
    so that RUSAGE_CHILDREN holds this command alone."""
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
    )
    result = subprocess.run([sys.executable, "-c", probe, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    kib = int(result.stderr.strip().splitlines()[-1])
    return kib / 1024, result


def git(*args: str, cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="10000,50000,100000")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cfd-bench-mem-"))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print(f"{'models':>8} {'manifest':>10}   {'command':<40} {'peak RSS':>10} {'x size':>7}")
    try:
        home = work / "home"
        home.mkdir()
        (home / ".gitconfig").write_text("[user]\n\tname = bench\n\temail = b@b.invalid\n[init]\n\tdefaultBranch = main\n")
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("CFD_", "GIT_"))}
        base_env.update(HOME=str(home), XDG_STATE_HOME=str(work / "state"), GIT_CONFIG_NOSYSTEM="1")
        version, _ = peak_rss([*CFD, "--version"], work, base_env)
        print(f"{'':>8} {'':>10}   {'cfd --version (interpreter)':<40} {version:>7.1f} MiB")
        for n in (int(x) for x in args.models.split(",")):
            _, text = big_manifest(n, max(1, n // 10), 10, seed=n)
            data = text.encode()
            size = len(data) / MIB
            root = work / f"m{n}"
            models = root / "models"
            models.mkdir(parents=True)
            env = {**base_env, "CFD_MODELS_DIR": str(models), "CFD_INDEX": str(root / "models.db"), "CFD_ON_PULL": "defer"}
            upstream, alice, bob = root / "up.git", root / "alice", root / "bob"
            git("init", "-q", "--bare", str(upstream), cwd=root, env=env)
            git("clone", "-q", str(upstream), str(alice), cwd=root, env=env)
            (alice / "pyproject.toml").write_text('[tool.comfydock]\ncomfyui_version = "v0.3.40"\n')
            git("add", "-A", cwd=alice, env=env)
            git("commit", "-qm", "seed", cwd=alice, env=env)
            git("push", "-q", "origin", "HEAD", cwd=alice, env=env)
            git("clone", "-q", str(upstream), str(bob), cwd=root, env=env)
            subprocess.run([*CFD, "hooks", "install"], cwd=bob, env=env, check=True, capture_output=True)
            (alice / "pyproject.toml").write_bytes(data)
            git("commit", "-qam", "big", cwd=alice, env=env)
            git("push", "-q", "origin", "HEAD", cwd=alice, env=env)
            rows = []
            over = {**env, "CFD_MAX_MANIFEST_SIZE": str(max(1, len(data) // 2))}
            rss, result = peak_rss(["git", "pull", "-q"], bob, over)
            assert result.returncode == 0, result.stderr
            rows.append(("git pull, hook over cfd.maxManifestSize", rss))
            git("reset", "-q", "--hard", "HEAD~1", cwd=bob, env=env)
            clone_state(bob / ".git").last_synced.unlink(missing_ok=True)
            under = {**env, "CFD_MAX_MANIFEST_SIZE": str(len(data) * 2)}
            rss, result = peak_rss(["git", "pull", "-q"], bob, under)
            assert result.returncode == 0, result.stderr
            rows.append(("git pull, hook under cfd.maxManifestSize", rss))
            clone_state(bob / ".git").manifest_cache.unlink(missing_ok=True)
            rows.append(("cfd status --json (no cache)", peak_rss([*CFD, "status", "--json"], bob, env)[0]))
            rows.append(("cfd status --json (cached)", peak_rss([*CFD, "status", "--json"], bob, env)[0]))
            rows.append(("cfd repair --dry-run", peak_rss([*CFD, "repair", "--dry-run"], bob, env)[0]))
            for label, rss in rows:
                print(f"{n:>8} {size:>6.1f} MiB   {label:<40} {rss:>7.1f} MiB {rss / size:>6.1f}x")
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
