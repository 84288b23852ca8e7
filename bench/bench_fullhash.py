"""What recording every download's full BLAKE3 costs: the hash rate in the engine's 1 MiB pieces.

    python bench/bench_fullhash.py [--mib 512]

A single-stream download feeds each piece to the hash as it arrives (no second read); this is
the CPU that adds, per core and with the library's own threads (as core/download/fullhash.py uses it).
"""

from __future__ import annotations

import argparse
import os
import time

from blake3 import blake3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    args = parser.parse_args()
    piece = os.urandom(1 << 20)
    for label, threads in (("1 thread", 1), ("blake3.AUTO", blake3.AUTO)):
        digest = blake3(max_threads=threads)
        started = time.perf_counter()
        for _ in range(args.mib):
            digest.update(piece)
        digest.hexdigest()
        print(f"blake3 {label:12} {args.mib / (time.perf_counter() - started):7.0f} MiB/s over {args.mib} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
