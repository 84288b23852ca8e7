"""Background write-back of a download's dirty pages."""

from __future__ import annotations

import os
import threading


class Flusher:
    """Writes a file's dirty pages back while the download goes on.

    Without it a multi-GB file sits in the page cache (the kernel waits for 10 % of
    RAM to be dirty) and the final fsync writes all of it, after the network is done.
    On Linux POSIX_FADV_DONTNEED starts write-back without forcing a journal commit
    (measured ~1.5x faster than periodic fdatasync here) and drops pages already
    written, so a 6 GB download does not evict everything else from the cache. When
    the file will be read back (a full-hash pass) the pages are kept: fdatasync.
    """

    def __init__(self, fd: int, keep_cached: bool) -> None:
        self.fd = fd
        self.drop = not keep_cached and hasattr(os, "posix_fadvise")
        self.wanted = threading.Event()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="cfd-flush", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        self.wanted.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)
        while True:
            self.wanted.wait()
            self.wanted.clear()
            if self.closing:
                return
            try:
                if self.drop:
                    os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
                else:
                    sync(self.fd)
            except OSError:
                return  # the final fsync reports real trouble

    def close(self) -> None:
        self.closing = True
        self.wanted.set()
        self.thread.join()
