"""Benchmarks of the git hooks (not pytest): `python bench/bench_hooks.py [--runs N]`.

1. `git pull` of commits that do not touch pyproject.toml, with cfd's hooks vs
   without: the shell fast path's overhead per pull (target < 10 ms, median).
2. A pull whose manifest changed, 10,000 models (100 workflows x 10 refs), 5 % new,
   all already present (sparse files of the right size, indexed directly). Measured
   side by side, interleaved, as whole processes:
   - the post-merge hook (shim + Python), target < 0.15x
   - cold `cfd status --json` (the work tree's file changed, no manifest cache), target < 0.4x
   of one Python process that parses the two versions with plain tomllib (the baseline).
   `--shapes all` adds 475 workflows x 20 refs (no target).
3. Startup: `cfd --version` and a hook with nothing to do (python part), for the Python
   under test, the Python running the bench when it differs (say an editable install) and
   any --compare-python.

The cfd measured is a plain install of this checkout made in the temp dir (what
./install.sh gives users), and the baseline runs on that same interpreter; pass
--python-under-test to measure another. Figures: median (min-max) over the runs; failed
runs are counted and shown.

Everything runs in a temp dir with its own HOME and git config.
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
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.manifest import ManifestBuilder, big_manifest  # noqa: E402

GITCONFIG = """[user]
\tname = bench
\temail = bench@cfd.invalid
[init]
\tdefaultBranch = main
\ttemplateDir = {template}
[pull]
\trebase = false
[advice]
\tdetachedHead = false
"""


def setup_env(root: Path) -> None:
    home = root / "home"
    (root / "template").mkdir(parents=True)
    home.mkdir()
    (home / ".gitconfig").write_text(GITCONFIG.format(template=root / "template"))
    for name in list(os.environ):
        if name.startswith(("GIT_", "CFD_")):
            del os.environ[name]
    # As installed by pip: bytecode compiled once, not at every hook start (this
    # sandbox sets PYTHONDONTWRITEBYTECODE); the cache goes to the temp dir.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.update(
        PYTHONPYCACHEPREFIX=str(root / "pycache"),
        HOME=str(home),
        GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
        GIT_CONFIG_NOSYSTEM="1",
        XDG_STATE_HOME=str(root / "state"),
        XDG_CONFIG_HOME=str(root / "config"),
        CFD_MODELS_DIR=str(root / "models"),
        CFD_INDEX=str(root / "index" / "models.db"),
    )
    (root / "models").mkdir()


PYTHON = sys.executable  # the Python whose cfd is measured: a plain install made by main()
REPO = Path(__file__).resolve().parent.parent


def plain_install(root: Path) -> str:
    """This checkout installed as ./install.sh installs it for users: copied, not editable.

    An editable install (a developer's .venv) adds an import finder to every Python start,
    ~10-20 ms a hook never pays on a user's machine. The dependencies are not installed
    again: a .pth line points at this Python's site-packages (a path line only; the .pth
    files there, such as the editable finder, are not run).
    """
    import sysconfig

    venv = root / "plain-venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "cfd-bench-deps.pth").write_text("".join(f"{path}\n" for path in deps))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--target", site, str(REPO)], check=True, capture_output=True)
    return str(python)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout + result.stderr


def cfd(cwd: Path, *args: str) -> str:
    result = subprocess.run([PYTHON, "-m", "cfd.cli.main", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise SystemExit(f"cfd {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result.stdout


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def fmt(times: list[float], failed: int = 0) -> str:
    if not times:
        return f"no successful run ({failed} failed)"
    text = f"{statistics.median(times):7.0f} ms ({min(times):.0f}-{max(times):.0f}, n={len(times)})"
    return text + (f", {failed} FAILED" if failed else "")


def verdict(name: str, ratio: float, target: float) -> str:
    return f"VERDICT {name}: {'met' if ratio < target else 'missed'} ({ratio:.3f}x, target < {target}x)"


def process(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, bool]:
    """Whole-process wall time (ms) and whether it succeeded."""
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, env=env)
    return (time.perf_counter() - start) * 1000, result.returncode in (0, 1)


def make_team(root: Path, manifest_text: str) -> tuple[Path, Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    upstream = root / "upstream.git"
    git(root, "init", "-q", "--bare", "-b", "main", str(upstream))
    alice = root / "alice"
    git(root, "clone", "-q", str(upstream), str(alice))
    git(alice, "symbolic-ref", "HEAD", "refs/heads/main")
    (alice / "pyproject.toml").write_text(manifest_text)
    (alice / "README.md").write_text("0\n")
    git(alice, "add", "-A")
    git(alice, "commit", "-qm", "seed")
    git(alice, "push", "-q", "origin", "main")
    with_hooks, without = root / "bob-hooks", root / "bob-plain"
    for clone in (with_hooks, without):
        git(root, "clone", "-q", str(upstream), str(clone))
    cfd(with_hooks, "hooks", "install", "--python", PYTHON)
    return alice, with_hooks, without


def bench_fast_path(root: Path, runs: int) -> dict[str, float]:
    alice, with_hooks, without = make_team(root, ManifestBuilder().render())
    on, off = [], []
    for i in range(runs):
        (alice / "README.md").write_text(f"run {i}\n")
        git(alice, "commit", "-qam", f"docs {i}")
        git(alice, "push", "-q", "origin", "main")
        git(with_hooks, "fetch", "-q")
        git(without, "fetch", "-q")
        # Interleaved, fetch excluded: the merge step is what the hook adds to.
        on.append(timed(lambda: git(with_hooks, "pull", "-q")))
        off.append(timed(lambda: git(without, "pull", "-q")))
    hook = with_hooks / ".git" / "hooks" / "post-merge"
    git(with_hooks, "update-ref", "ORIG_HEAD", "HEAD~1")
    direct = [timed(lambda: subprocess.run([str(hook), "0"], cwd=with_hooks, check=True)) for _ in range(runs * 5)]
    return {
        "pull with hooks (median ms)": statistics.median(on),
        "pull without hooks (median ms)": statistics.median(off),
        "overhead per pull (median ms)": statistics.median(on) - statistics.median(off),
        "post-merge shim alone, nothing to do (median ms)": statistics.median(direct),
    }


def index_all(manifest_text: str, dialect: str) -> int:
    """Every model of the manifest present: sparse files of the right size, indexed directly."""
    from cfd.core.dialect import DIALECTS
    from cfd.core.store.index import ModelIndex

    models = tomllib.loads(manifest_text)["tool"][dialect]["models"]
    models_dir = Path(os.environ["CFD_MODELS_DIR"])
    models_dir.mkdir(parents=True, exist_ok=True)  # cfd never creates the models dir
    Path(os.environ["CFD_INDEX"]).parent.mkdir(parents=True, exist_ok=True)
    with ModelIndex(os.environ["CFD_INDEX"], models_dir, DIALECTS[dialect]) as index, index.transaction():
        for model_hash, entry in models.items():
            path = models_dir / entry["relative_path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                handle.truncate(entry["size"])
            index.add_model(model_hash, entry["size"])
            index.add_location(model_hash, entry["relative_path"], path.stat().st_mtime)
    return len(models)


TOMLLIB_BOTH = "import sys, tomllib\nfor path in sys.argv[1:]:\n    with open(path, 'rb') as f:\n        tomllib.load(f)\n"


def bench_big_change(root: Path, runs: int, n_models: int, workflows: int, refs: int,
                     dialect: str = "comfydock") -> dict[str, object]:
    old_text, new_text = big_manifest(n_models, workflows, refs, new_fraction=0.05, seed=7, dialect=dialect)
    alice, with_hooks, without = make_team(root, old_text)
    os.environ["CFD_INDEX"] = str(root / "index" / "models.db")  # one index per dialect (schema 9 or 10)
    indexed = index_all(new_text, dialect)
    old = git(with_hooks, "rev-parse", "HEAD").strip()
    old_blob = git(with_hooks, "rev-parse", "HEAD:pyproject.toml").strip()
    (alice / "pyproject.toml").write_text(new_text)
    git(alice, "commit", "-qam", "5 % new models")
    git(alice, "push", "-q", "origin", "main")
    for clone in (with_hooks, without):
        git(clone, "fetch", "-q")
    versions = [root / "old.toml", root / "new.toml"]
    versions[0].write_text(old_text)
    versions[1].write_text(new_text)
    last_synced = with_hooks / ".git" / "cfd" / "last-synced"
    hook = with_hooks / ".git" / "hooks" / "post-merge"
    status_repo = root / "status"
    git(root, "clone", "-q", str(root / "upstream.git"), str(status_repo))
    cache = status_repo / ".git" / "cfd" / "manifest-cache.pickle"
    status_argv = [PYTHON, "-m", "cfd.cli.main", "status", "--json"]
    process(status_argv, status_repo)  # bytecode and page cache warm, as on a user's machine
    on, off, baseline, direct, status = [], [], [], [], []
    failed = {"baseline": 0, "hook": 0, "status": 0}
    output = ""
    for i in range(runs):
        for clone in (with_hooks, without):
            git(clone, "reset", "-q", "--hard", old)
        last_synced.write_text(old_blob + "\n")  # as after the previous sync
        start = time.perf_counter()
        output = git(with_hooks, "merge", "--ff-only", "-q", "origin/main")
        on.append((time.perf_counter() - start) * 1000)
        off.append(timed(lambda: git(without, "merge", "--ff-only", "-q", "origin/main")))
        # Interleaved, so load on the machine hits all three alike.
        ms, ok = process([PYTHON, "-c", TOMLLIB_BOTH, *map(str, versions)], root)  # the same interpreter
        (baseline if ok else []).append(ms)
        failed["baseline"] += not ok
        last_synced.write_text(old_blob + "\n")
        ms, ok = process([str(hook), "0"], with_hooks)
        ok = ok and not (with_hooks / ".git" / "cfd" / "pending.json").exists()
        (direct if ok else []).append(ms)
        failed["hook"] += not ok
        # Cold: the work tree's file changed (a new digest each run: a trailing blank line or
        # not, which the fast reader takes as it is; a comment would send it to tomllib), no cache.
        (status_repo / "pyproject.toml").write_text(new_text + "\n" * (i % 2))
        cache.unlink(missing_ok=True)
        ms, ok = process(status_argv, status_repo)
        (status if ok else []).append(ms)
        failed["status"] += not ok
    pending = with_hooks / ".git" / "cfd" / "pending.json"
    assert not pending.exists(), f"all models are present, yet the hook recorded some: {output}"
    size = len(new_text.encode())
    result: dict[str, object] = {
        f"manifest: {n_models} models, {workflows}x{refs} refs, {size / 1e6:.1f} MB; indexed models": indexed,
        "baseline: one python, tomllib parsing both versions": fmt(baseline, failed["baseline"]),
        "post-merge hook alone (shim + python)": fmt(direct, failed["hook"]),
        "cfd status --json, no manifest cache, file changed": fmt(status, failed["status"]),
        "git merge with hooks": fmt(on),
        "git merge without hooks": fmt(off),
        "hook wall time in the merge (median ms)": statistics.median(on) - statistics.median(off),
        **breakdown(with_hooks, old, old_blob),
    }
    if baseline and direct and status:
        base = statistics.median(baseline)
        result["ratios"] = (verdict("hook / tomllib-both", statistics.median(direct) / base, 0.15)
                            + "\n   " + verdict("cold status / tomllib-both", statistics.median(status) / base, 0.4))
    return result


def bench_startup(runs: int, pythons: list[str], repo: Path) -> None:
    for python in pythons:
        probe = "import sys; sys.exit(any('Editable' in getattr(f, '__name__', '') for f in sys.meta_path))"
        editable = subprocess.run([python, "-c", probe], capture_output=True).returncode == 1
        print(f"   {python} ({'editable' if editable else 'plain'} install)")
        for label, argv in (("python -c pass", [python, "-c", "pass"]),
                            ("cfd --version", [python, "-m", "cfd.cli.main", "--version"]),
                            ("hook with nothing to do (squash merge)", [python, "-P", "-m", "cfd.hooks.runtime", "post-merge", "1"])):
            times, bad = [], 0
            for _ in range(runs):
                ms, ok = process(argv, repo)
                (times if ok else []).append(ms)
                bad += not ok
            print(f"     {label:<40} {fmt(times, bad)}")


def breakdown(repo: Path, old: str, old_blob: str) -> dict[str, float]:
    """Where the time goes, in a fresh interpreter (imports included)."""
    code = f"""
import time, json, os
t0 = time.perf_counter()
from cfd.core.environment import open_environment
from cfd.core.manifest.diff import diff_manifest_bytes
from cfd.core.store.index import ModelIndex
from cfd.core.sync.missing import detect_missing_models
t1 = time.perf_counter()
from cfd.core.gitobjects import open_repo
t2 = time.perf_counter()
env = open_environment({str(repo)!r})
repo = open_repo(env.repo)
old, new = repo.read_blob(repo.blob_id({old!r})), repo.read_blob(repo.blob_id("HEAD"))
t3 = time.perf_counter()
diff = diff_manifest_bytes(old, new)
t4 = time.perf_counter()
with ModelIndex(env.index_path, env.models_dir, env.dialect) as index:
    report = detect_missing_models(diff.new, index, diff.hashes_to_check)
t5 = time.perf_counter()
ms = lambda a, b: round((b - a) * 1000, 1)
print(json.dumps({{"imports: cfd.core (ms)": ms(t0, t1), "import pygit2 (ms)": ms(t1, t2),
    "settings + read both blobs (ms)": ms(t2, t3), "differential diff (ms)": ms(t3, t4),
    "index check of the changed hashes (ms)": ms(t4, t5)}}))
"""
    import json

    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="pulls per measurement (default 20)")
    parser.add_argument("--big-runs", type=int, default=7, help="runs of the 10,000-model case (default 7, at least 5)")
    parser.add_argument("--shapes", choices=("target", "all"), default="target", help="also 475 workflows x 20 refs")
    parser.add_argument("--compare-python", action="append", default=[], help="another install's python for part 3")
    parser.add_argument("--dialects", nargs="+", choices=("comfygit", "comfydock"), default=["comfydock", "comfygit"],
                        help="manifest dialects of the 10,000-model case (default both)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--python-under-test", metavar="PYTHON",
                        help="measure the cfd of this Python (default: a plain install of this checkout, as users get)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cfd-bench-hooks-"))
    global PYTHON
    try:
        setup_env(root)
        PYTHON = args.python_under_test or plain_install(root)
        print(f"cfd under test: {PYTHON} ({'as given' if args.python_under_test else 'plain install of this checkout'})")
        print("1. pull not touching pyproject.toml")
        for key, value in bench_fast_path(root / "fast", args.runs).items():
            print(f"   {key}: {value:.1f}")
        shapes = [(10_000, 100, 10, d) for d in args.dialects]
        shapes += [(10_000, 475, 20, "comfydock")] if args.shapes == "all" else []
        for n, wf, refs, dialect in shapes:
            print(f"2. pull changing the manifest ({dialect}): {n} models, 5 % new, all present ({wf} workflows x {refs} refs)")
            for key, value in bench_big_change(root / f"big-{wf}-{dialect}", max(5, args.big_runs), n, wf, refs,
                                               dialect).items():
                print(f"   {key}: {value:.1f}" if isinstance(value, float) else f"   {key}: {value}")
        print("3. startup")
        pythons = [PYTHON, *([sys.executable] if sys.executable != PYTHON else []), *args.compare_python]
        bench_startup(max(5, args.runs), pythons, root / "fast" / "bob-hooks")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
