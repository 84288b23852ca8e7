"""Download benchmark: cfd's engine side by side with curl, comfydock-core and aria2c.

Not part of pytest. Run:  python bench/bench_download.py [--size-mib 2048] [--runs 3]

Everything runs against the same loopback ModelServer, started in its own process
so that the server's threads do not share a GIL with the client under test:
  1. unthrottled: `curl -s -o FILE URL`, cfd (verification and fsync included),
     comfydock-core's ModelDownloader (if importable; set CFD_BENCH_COMFYDOCK_PYTHON
     to an interpreter that has comfydock-core installed);
  2. a server capping each connection (default 50 MB/s): `aria2c -x8` vs cfd with 8 connections;
  3. peak RSS of the cfd process (ru_maxrss);
  4. resume: cfd killed (SIGKILL) at 50 %, rerun; bytes the server sent / file size.
The source file is written in /tmp and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cfd.demo.content import write_model_file
from cfd.core.download.engine import staging_name
from cfd.core.state import models_state
from cfd.core.store.shorthash import short_hash_file

MIB = 1 << 20
_TESTS = Path(__file__).resolve().parent.parent / "tests"

_SERVER = r"""
import sys
sys.path.insert(0, sys.argv[3])  # tests/, for helpers.faults (the server with throttling)
from helpers.faults import ModelServer
srv = ModelServer().start()
srv.add_file("/m.safetensors", sys.argv[1])
if float(sys.argv[2]):
    srv.set_fault("/m.safetensors", throttle=float(sys.argv[2]))
print(srv.base_url, flush=True)
for line in sys.stdin:
    if line.strip() == "bytes":
        print(srv.bytes_sent(), flush=True)
    elif line.strip() == "reset":
        srv.reset_stats()
        print("ok", flush=True)
srv.stop()
"""

_CFD = r"""
import json, os, resource, sys, time
from cfd.core.download.engine import DownloadJob, DownloadOptions, download_models
a = json.loads(sys.argv[1])
os.makedirs(a["models"], exist_ok=True)  # cfd never creates the models dir
job = DownloadJob(a["key"], "m.safetensors", "checkpoints/m.safetensors", a["size"], (a["url"],), a["key"],
                  blake3=a.get("blake3"))
options = DownloadOptions(allow_private_networks=True, connections=a["connections"])
start = time.perf_counter()
out = download_models([job], models_dir=a["models"], index_path=a["index"], options=options)[0]
print(json.dumps({"ok": out.success, "error": out.error, "engine_s": time.perf_counter() - start,
                  "fetched": out.bytes_fetched, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

_COMFYDOCK = r"""
import json, sys, time
from pathlib import Path
from comfydock_core.repositories.model_repository import ModelRepository
from comfydock_core.services.model_downloader import DownloadRequest, ModelDownloader
a = json.loads(sys.argv[1])
models = Path(a["models"])
downloader = ModelDownloader(ModelRepository(Path(a["index"]), models), None, models_dir=models)
start = time.perf_counter()
result = downloader.download(DownloadRequest(url=a["url"], target_path=models / "checkpoints" / "m.safetensors"))
print(json.dumps({"ok": result.success, "error": result.error, "engine_s": time.perf_counter() - start}))
"""


class Server:
    """A ModelServer in its own process; asks it for bytes sent over stdin."""

    def __init__(self, source: Path, throttle: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(source), str(throttle), str(_TESTS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip() + "/m.safetensors"

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def bytes_sent(self) -> int:
        return int(self._ask("bytes"))

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Bench:
    def __init__(self, work: Path, source: Path, size: int, key: str) -> None:
        self.work, self.source, self.size, self.key = work, source, size, key
        self.out = work / "out"

    def clean(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        os.sync()  # the previous run's dirty pages must not slow the next one

    def timed(self, command: list[str]) -> float:
        self.clean()
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    def cfd_args(self, url: str, connections: int, blake3: str | None = None) -> str:
        return json.dumps({"key": self.key, "size": self.size, "url": url, "connections": connections, "blake3": blake3,
                           "models": str(self.out / "models"), "index": str(self.out / "models.db")})

    def cfd(self, url: str, connections: int, blake3: str | None = None) -> dict:
        self.clean()
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _CFD, self.cfd_args(url, connections, blake3)],
                              check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        result = json.loads(done.stdout)
        if not result["ok"]:
            raise SystemExit(f"cfd failed: {result['error']}")
        result["wall_s"] = wall
        return result

    def comfydock(self, python: str, url: str) -> dict | None:
        self.clean()
        args = json.dumps({"url": url, "models": str(self.out / "models"), "index": str(self.out / "cd.db")})
        start = time.perf_counter()
        done = subprocess.run([python, "-c", _COMFYDOCK, args], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"  note: comfydock-core run failed: {done.stderr.strip().splitlines()[-1:]}")
            return None
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["wall_s"] = wall
        return result

    def resume_after_kill(self, server: Server, connections: int) -> tuple[int, int]:
        """Kill cfd at 50 %, rerun; returns (bytes sent by the server, bytes in the first run)."""
        self.clean()
        server.reset()
        sidecar = models_state(self.out / "models").staging / f"{staging_name(self.key)}.json"
        child = subprocess.Popen([sys.executable, "-c", _CFD, self.cfd_args(server.url, connections)],
                                 stdout=subprocess.DEVNULL)
        while child.poll() is None:
            try:
                done = sum(seg[2] for seg in json.loads(sidecar.read_text())["segments"])
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= self.size // 2:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        child.wait()
        first = server.bytes_sent()
        done = subprocess.run([sys.executable, "-c", _CFD, self.cfd_args(server.url, connections)],
                              check=True, capture_output=True, text=True)
        if not json.loads(done.stdout)["ok"]:
            raise SystemExit(f"cfd resume failed: {done.stdout}")
        return server.bytes_sent(), first


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:7.0f} MB/s ({seconds:5.2f} s)"


def comfydock_python() -> str | None:
    for python in (os.environ.get("CFD_BENCH_COMFYDOCK_PYTHON"), sys.executable):
        if python and subprocess.run([python, "-c", "import comfydock_core.services.model_downloader"],
                                     capture_output=True).returncode == 0:
            return python
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--throttle", type=float, default=50e6, help="bytes/s per connection for the capped run")
    args = parser.parse_args()
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="cfd-bench-", dir="/tmp"))
    try:
        source = write_model_file(work / "src.bin", seed=7, size=size)
        bench = Bench(work, source, size, short_hash_file(source))
        print(f"file: {size / MIB:.0f} MiB, runs: {args.runs} (medians), cpus: {os.cpu_count()}")
        unthrottled(bench, args.runs)
        capped(bench, args.runs, args.throttle)
        resume(bench)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def unthrottled(bench: Bench, runs: int) -> None:
    """Tools take turns in each round, so the (noisy) disk's drift hits them alike."""
    size = bench.size
    server = Server(bench.source)
    python = comfydock_python()
    curl: list[float] = []
    cfd4: list[dict] = []
    cfd1: list[dict] = []
    cd: list[float] = []
    try:
        print("\n== unthrottled loopback ==")
        for _ in range(runs):
            curl.append(bench.timed(["curl", "-s", "-o", str(bench.out / "curl.bin"), server.url]))
            cfd4.append(bench.cfd(server.url, 4))
            cfd1.append(bench.cfd(server.url, 1))
            if python is not None:
                result = bench.comfydock(python, server.url)
                if result and result["ok"]:
                    cd.append(result["engine_s"])
        full = bench.cfd(server.url, 4, blake3=blake3_of(bench.source))
    finally:
        server.stop()
    curl_s = statistics.median(curl)
    engine = statistics.median(r["engine_s"] for r in cfd4)
    wall = statistics.median(r["wall_s"] for r in cfd4)
    engine1 = statistics.median(r["engine_s"] for r in cfd1)
    rss = max(r["maxrss_kb"] for r in cfd4 + cfd1 + [full]) / 1024
    print(f"curl -o             {rate(size, curl_s)}   runs: {', '.join(f'{t:.2f}' for t in curl)} s")
    print(f"cfd (4 conns)       {rate(size, engine)}  = {curl_s / engine:.2f} x curl   runs: "
          f"{', '.join(format(r['engine_s'], '.2f') for r in cfd4)} s")
    print(f"  (process wall incl. Python start and imports: {rate(size, wall)} = {curl_s / wall:.2f} x curl)")
    print(f"cfd (1 conn)        {rate(size, engine1)}  = {curl_s / engine1:.2f} x curl")
    print(f"cfd + full blake3   {rate(size, full['engine_s'])}  = {curl_s / full['engine_s']:.2f} x curl (one run)")
    print(f"cfd peak RSS        {rss:.0f} MB")
    if python is None:
        print("comfydock-core      not installed (pip install comfydock-core==1.0.11, or set CFD_BENCH_COMFYDOCK_PYTHON); skipped")
    elif cd:
        cd_s = statistics.median(cd)
        print(f"comfydock-core      {rate(size, cd_s)}  = {curl_s / cd_s:.2f} x curl; cfd = {cd_s / engine:.2f} x comfydock-core")


def blake3_of(path: Path) -> str:
    from blake3 import blake3

    digest = blake3(max_threads=blake3.AUTO)
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def capped(bench: Bench, runs: int, throttle: float) -> None:
    size = bench.size
    print(f"\n== server capping each connection at {throttle / 1e6:.0f} MB/s ==")
    server = Server(bench.source, throttle)
    aria = shutil.which("aria2c")
    aria_runs: list[float] = []
    cfd_runs: list[float] = []
    try:
        for _ in range(runs):
            if aria is not None:
                aria_runs.append(bench.timed([aria, "-x8", "-s8", "-q", "--allow-overwrite=true", "--auto-file-renaming=false",
                                              "-d", str(bench.out), "-o", "aria.bin", server.url]))
            cfd_runs.append(bench.cfd(server.url, 8)["engine_s"])
    finally:
        server.stop()
    engine = statistics.median(cfd_runs)
    if aria is None:
        print("aria2c -x8          not installed (apt-get install -y aria2); skipped")
        print(f"cfd (8 conns)       {rate(size, engine)}")
        return
    aria_s = statistics.median(aria_runs)
    print(f"aria2c -x8          {rate(size, aria_s)}")
    print(f"cfd (8 conns)       {rate(size, engine)} = {aria_s / engine:.2f} x aria2c")


def resume(bench: Bench) -> None:
    print("\n== resume after SIGKILL at 50 % (server capped at 200 MB/s per connection, 4 connections) ==")
    server = Server(bench.source, 200e6)
    try:
        total, first = bench.resume_after_kill(server, 4)
        print(f"first run sent      {first / MIB:.0f} MiB; both runs {total / MIB:.0f} MiB = {total / bench.size:.3f} x file size")
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
