"""The several-connection half of a Transfer: segments, work stealing, adaptive growth.

A large file on a server that honours ranges is split into MiB-aligned segments, each
fetched on its own connection; an idle connection takes over half of the biggest
remaining range (no slow tail), and growth.py decides batch-wide how many connections
pay. `Transfer` (segments.py) mixes this in; the single stream and the byte pump stay there.
"""

from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

import requests

from .growth import Growth
from .types import MIB, Cancelled, DiskError, Failure
from .session import content_length, parse_content_range


class Restart(Exception):
    """The server's copy changed or it answered a resume oddly: start this source over."""


class NoRanges(Exception):
    """The server ignored our Range request; carries its 200 response to stream instead."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__("no ranges")
        self.response = response


class Stopped(Exception):
    """A sibling segment failed; this one stops quietly."""


class Retire(Exception):
    """The batch has more connections than pay: this one hands its segment back and ends."""


class Segmented:
    """Methods of Transfer that run a file on several connections (they use its state)."""

    def _fetch_segments(self) -> None:
        self.stop.clear()
        pending = [i for i, (s, e, d) in enumerate(self.state.segments) if s + d < e]
        first: list[requests.Response] = []
        if not self.state.ranges_ok:
            try:
                self._with_retries(lambda: first.append(self._open_segment(pending[0], probe=True)))
            except NoRanges as exc:
                # The server ignores ranges: one stream from the start, on the response we have.
                self.state.segments = [[0, self.state.size or -1, 0]]
                self.file.save()
                box = [exc.response]
                self._with_retries(lambda: self._stream_single(box.pop() if box else None))
                return
            self.state.ranges_ok = True
        queue = list(pending)
        growth = self.batch.growth
        ceiling = 1 if self.single else growth.ceiling
        with ThreadPoolExecutor(max_workers=ceiling, thread_name_prefix="cfd-segment") as pool:
            futures = self._grow(pool, growth, queue, pending[0], first, min(growth.start, ceiling, len(pending)))
            growth.joined(len(futures))
            self._tell_connections()
            while True:
                done, running = wait(futures, timeout=0.1, return_when=FIRST_EXCEPTION)
                if any(f.exception() for f in done):
                    self.stop.set()
                    self.abort()
                    break
                if not running:
                    break
                if not self.single:
                    self._adapt(pool, growth, queue, futures)
        errors = [e for e in (f.exception() for f in futures) if e is not None and not isinstance(e, Stopped)]
        if errors:
            # The most telling first: a cancel, a disk error, a lying server, then a restart.
            order = (Cancelled, DiskError, Failure, Restart)
            raise min(errors, key=lambda e: next((i for i, k in enumerate(order) if isinstance(e, k)), len(order)))

    def _grow(self, pool: ThreadPoolExecutor, growth: Growth, queue: list[int], first_index: int,
              first: list[requests.Response], count: int) -> list[Future[None]]:
        with self.lock:
            self.connections += count
        return [pool.submit(self._worker, growth, queue, first_index, first) for _ in range(count)]

    def _adapt(self, pool: ThreadPoolExecutor, growth: Growth, queue: list[int], futures: list[Future[None]]) -> None:
        """Follow the batch's connection target: add connections while there is work to split, or retire some."""
        growth.tick()
        with self.lock:
            mine = self.connections - self.retire
        change = growth.claim(mine)
        if change > 0:
            useful = min(change, len(queue) + self._splittable())
            futures += self._grow(pool, growth, queue, -1, [], useful)
            for _ in range(change - useful):
                growth.left()
        elif change < 0:
            with self.lock:
                self.retire -= change
        if change:
            self._tell_connections()

    def _tell_connections(self) -> None:
        """The display's connection count, when the batch changed it (not as segments end one by one)."""
        hook = getattr(self.batch.callbacks, "on_file_connections", None)
        with self.lock:
            count = self.connections - self.retire
        if hook is not None and count > 0 and count != self.told:
            self.told = count
            hook(self.job.filename, count)

    def _worker(self, growth: Growth, queue: list[int], first_index: int, first: list[requests.Response]) -> None:
        """One connection: take the next pending segment; when none is left, split the biggest rest."""
        retired = False
        try:
            while True:
                with self.lock:
                    index = queue.pop(0) if queue else None
                if index is None:
                    index = self._steal()
                    if index is None:
                        return
                # Only the first pending segment may use the probe's response.
                box = first if index == first_index else []
                try:
                    self._with_retries(lambda: self._segment(index, box))
                except Retire:
                    with self.lock:
                        queue.insert(0, index)  # its rest goes to the next connection that is free
                    retired = True
                    return
        finally:
            with self.lock:
                self.connections -= 1
                if not retired and self.retire > 0:  # ended anyway: counts as the one asked to
                    self.retire -= 1
                    retired = True
            growth.left(retired)

    def _floor(self) -> int:
        return max(4 * MIB, self.options.segment_min // 2)  # a steal wastes what is in flight to the owner

    def _splittable(self) -> int:
        """How many more connections the remaining ranges could feed by splitting."""
        floor = self._floor()
        with self.lock:
            return sum((e - s - d) // (2 * floor) for s, e, d in self.state.segments if s + d < e)

    def _steal(self) -> int | None:
        """Split the segment with the most bytes left (its owner stops at the new end); aria2c does the same,
        so one slow connection does not leave a long tail."""
        floor = self._floor()
        with self.lock:
            segments = self.state.segments
            best = max(range(len(segments)), key=lambda i: segments[i][1] - segments[i][0] - segments[i][2])
            start, end, done = segments[best]
            if end - start - done < 2 * floor:
                return None
            middle = (start + done + (end - start - done) // 2) // MIB * MIB
            segments[best][1] = middle
            segments.append([middle, end, 0])
            if self.state.synced is not None:
                self.state.synced.append(0)
            self.file.save()
            return len(segments) - 1

    def _open_segment(self, index: int, probe: bool = False) -> requests.Response:
        start, end, done = self.state.segments[index]
        resp = self._request(start + done, end)
        if resp.status_code not in (200, 206) or (resp.status_code == 200 and not probe):
            resp.close()
            raise Restart(f"the server stopped honouring ranges ({resp.status_code})")
        if resp.status_code == 200:
            total = content_length(resp)
        else:
            parsed = parse_content_range(resp.headers.get("Content-Range"))
            total = parsed[2] if parsed else None
        try:
            self._check_body(resp, total, self.state.size)  # before other connections start
        except Failure:
            resp.close()
            raise
        if resp.status_code == 200:
            raise NoRanges(resp)
        return resp

    def _segment(self, index: int, first: list[requests.Response]) -> None:
        while True:
            start, end, done = self.state.segments[index]
            if start + done >= end:
                return
            self._halt()
            resp = first.pop() if first else self._open_segment(index)
            with self._tracked(resp):
                parsed = parse_content_range(resp.headers.get("Content-Range"))
                if parsed is not None and parsed[2] is not None:
                    self._check_body(resp, parsed[2], self.state.size)
                if parsed is None or parsed[0] != start + done or parsed[1] < parsed[0] or parsed[2] != self.state.size:
                    raise Restart("the server answered a range request with another range")
                self._check_range_length(content_length(resp), parsed)
                self._check_validator(resp)
                self._pump(resp, index, start + done, min(parsed[1] + 1, end), check_extra=False, shrinks=True)
