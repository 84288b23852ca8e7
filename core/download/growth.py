"""How many ranged connections a batch should have: more while more pays, then no more.

CDNs and mirrors often cap each connection (a few MB/s to 50 MB/s each); there more
connections mean more speed, on an unthrottled link or a slow disk they only cost. So
the batch starts every ranged transfer with a few connections, measures the aggregate
rate over a window, and tries a step up (doubling). If the rate grew by a fair share
of what the extra connections could bring (PAYS), it keeps them and tries again, up
to the ceiling; if not, it gives the trial connections back and stops trying. When each
connection is already fast (ENOUGH_PER_CONNECTION), it does not try at all.

Decisions are batch-wide (the aggregate is what the user waits for, and the link and
the disk are shared); each transfer asks for its share (`claim`) and its connections
count in `active`. Nothing here does I/O: transfers call `tick` and follow the target.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

START = 4  # connections a ranged transfer begins with (the old fixed default)
WINDOW = 0.25  # seconds of bytes behind one decision (a few MB even at 50 MB/s)
# Each connection already this fast: no per-connection cap worth beating (CDNs cap at tens of
# MB/s). Past it the link or the disk is the limit, and the first windows measure the page
# cache, not the disk: more connections there only cost (a 2 GiB file on loopback was slower).
ENOUGH_PER_CONNECTION = 64 << 20
PAYS = 0.25  # a step must bring at least this share of the proportional gain (doubling: +25 %)


class Growth:
    """The batch's connection target, moved by measured aggregate rate."""

    def __init__(self, ceiling: int, batch_ceiling: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = max(1, ceiling)  # per file
        self.batch_ceiling = max(self.ceiling, batch_ceiling)
        self.start = min(START, self.ceiling)
        self.clock = clock
        self.lock = threading.Lock()
        self.active = 0  # ranged connections open (or granted) across the batch
        self.retiring = 0  # of those, asked to stop and not stopped yet
        self.target: int | None = None  # None: every transfer keeps its start count
        self.bytes = 0
        self.window_start: float | None = None
        self.base: tuple[float, int] | None = None  # (rate, connections) before the trial step
        self.settled = self.ceiling <= self.start  # nothing to try

    def counted(self, n: int) -> None:
        """Bytes arrived (any transfer of the batch): the aggregate rate."""
        with self.lock:
            if self.window_start is None:  # a window starts at the first byte, not at connection setup
                self.window_start = self.clock()
            self.bytes += n

    def joined(self, n: int) -> None:
        """A ranged transfer opened its first `n` connections."""
        with self.lock:
            self.active += n

    def left(self, retired: bool = False) -> None:
        """One connection ended (`retired`: because `claim` asked for fewer)."""
        with self.lock:
            self.active -= 1
            self.retiring -= retired

    def changed(self) -> None:
        """A transfer started or ended: a trial running now would compare unlike things."""
        with self.lock:
            if self.base is not None and not self.settled:
                self.target, self.base = None, None
            self.window_start, self.bytes = None, 0

    def tick(self) -> None:
        """Decide, once per window, whether to step up, keep, or step back."""
        with self.lock:
            if self.settled or self.window_start is None or self.active == 0:
                return
            now = self.clock()
            elapsed = now - self.window_start
            if elapsed < WINDOW:
                return
            rate = self.bytes / elapsed
            self.window_start, self.bytes = now, 0
            if self.base is None:
                self._step_up(rate)
                return
            base_rate, base_n = self.base
            added = max(self.active - self.retiring - base_n, 0)
            if added == 0:  # the step was not taken up yet (no work to split): look again
                return
            if rate >= base_rate * (1 + PAYS * added / base_n):
                self._step_up(rate)
            else:
                self.target, self.settled = base_n, True  # give the trial back; stop trying

    def _step_up(self, rate: float) -> None:
        room = self.batch_ceiling - self.active
        if room <= 0 or rate >= ENOUGH_PER_CONNECTION * self.active:
            self.settled = True
            return
        self.base = (rate, self.active)
        self.target = self.active + min(self.active, room)

    def claim(self, mine: int) -> int:
        """Connections a transfer that has `mine` should add (positive, already counted as open)
        or drop (negative: its connections stop at their next read and call `left(retired=True)`)."""
        with self.lock:
            if self.target is None:
                return 0
            effective = self.active - self.retiring
            if effective < self.target and mine < self.ceiling:
                grant = min(self.target - effective, self.ceiling - mine)
                self.active += grant
                return grant
            if effective > self.target and mine > 1:
                drop = min(effective - self.target, mine - 1)
                self.retiring += drop
                return -drop
            return 0
