"""Shadow traffic: a copy of a request to another upstream, whose answer is compared, then
dropped; bounded so that it can never slow the primary path.

Theory of operation. The request handler decides (synchronously, on the hot path) whether a
request is mirrored: its method is safe or ``--shadow-unsafe`` was given, it falls in the
sampled fraction, and its body is small enough to keep whole. It then *offers* a job to a
bounded queue without waiting: when the queue is full the job is dropped and counted. A fixed
number of worker tasks (the concurrency bound), owned by :meth:`ShadowMirror.serve`'s task
group, take jobs and send them on a separate connection pool, each within the shadow's
timeout. Sends are spaced at least ``1 / max_rate`` apart: without that, workers that were
all free at once (at start, or after a stall of the shadow) send together, their answers come
back together from a shadow of steady latency, and each such burst of work holds up the
primary's requests that arrive during it — a stall that shows in the primary's p99. Nothing
the shadow does (slowness, errors, timeouts) reaches the client: its answer is read up to the
size limit, compared with the primary's when diffs are on, and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from podkit.ambassador.split._diff import MAX_DIFF_BODY, Captured
from podkit.engines.errors import UpstreamError
from podkit.engines.http import Body, Request, Upstream, UpstreamPool
from podkit.engines.http.rules import Headers
from podkit.errors import PodkitError
from podkit.runtime.logging import get_logger

DEFAULT_SHADOW_QUEUE = 1000  # jobs waiting for a worker; more are dropped (counted)
DEFAULT_SHADOW_CONCURRENCY = 32  # shadow requests in flight at once
DEFAULT_SHADOW_MAX_BODY = 1024 * 1024  # request bodies above this are not mirrored
DEFAULT_SHADOW_TIMEOUT = 5.0  # a shadow slower than this is abandoned (never seen by clients)
DEFAULT_SHADOW_MAX_RATE = 1000.0  # copies sent per second at most, evenly spaced (0: no cap)
MAX_SHADOW_RESPONSE = MAX_DIFF_BODY  # a shadow answer is read (for diffs) up to this size
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 §9.2.1

SKIP_REASONS = ("unsafe", "body", "sampled-out")
RESULTS = ("sent", "answered", "failed", "dropped", *(f"skipped-{r}" for r in SKIP_REASONS))


def _captured(status: int, headers: Headers, body: bytes) -> Captured:
    return Captured(
        status,
        tuple((n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in headers),
        body,
    )


@dataclass(slots=True)
class ShadowJob:
    """One mirrored request and, when diffs are on, the primary's answer to come."""

    method: str
    target: str
    headers: Headers
    body: bytes
    route: str
    primary: asyncio.Future[Captured | None] | None = None
    enqueued: float = 0.0

    def request(self) -> Request:
        return Request(self.method, self.target, list(self.headers), self.body)


DiffSink = Callable[[ShadowJob, Captured, Captured, Captured | None], None]


class ShadowMirror:
    """The bounded queue and workers that send shadow copies.

    Args:
        upstream: the shadow.
        pool: the connection pool for shadow (and second-primary) requests.
        queue_size: jobs that may wait; more are dropped.
        concurrency: workers, hence shadow requests in flight.
        timeout: seconds one shadow exchange (and the wait for the primary's answer) may take.
        max_rate: copies sent per second at most, evenly spaced (0: no cap).
        primary_b: a second primary instance whose answer tells noise from regressions.
        on_diff: called with the job and the primary's, the shadow's and the second
            primary's answers, when the primary's answer was captured.
    """

    def __init__(
        self,
        upstream: Upstream,
        pool: UpstreamPool,
        *,
        queue_size: int = DEFAULT_SHADOW_QUEUE,
        concurrency: int = DEFAULT_SHADOW_CONCURRENCY,
        timeout: float = DEFAULT_SHADOW_TIMEOUT,
        primary_b: Upstream | None = None,
        on_diff: DiffSink | None = None,
        response_limit: int = MAX_SHADOW_RESPONSE,
        max_rate: float = DEFAULT_SHADOW_MAX_RATE,
    ) -> None:
        self.upstream = upstream
        self.response_limit = response_limit
        self.pool = pool
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=queue_size)
        self.concurrency = concurrency
        self.timeout = timeout
        self.primary_b = primary_b
        self.on_diff = on_diff
        self.counts: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self.in_flight = 0
        self.gap = 1.0 / max_rate if max_rate > 0 else 0.0
        # Sends sent at once by the direct path may run this far ahead of the even spacing
        # (the primary's own arrivals spread them; the workers are held to the spacing).
        self.tolerance = self.gap * (concurrency - 1)
        self._next_send = 0.0  # loop time of the next free send slot
        self._freed = asyncio.Event()  # set when a send ends (workers wait for room)
        self.sent_direct = 0
        self._draining: set[asyncio.Task[None]] = set()
        self.log = get_logger("split")

    def count(self, result: str) -> None:
        self.counts[result] = self.counts.get(result, 0) + 1

    def offer(self, job: ShadowJob) -> bool:
        """Queue ``job`` without waiting; False (counted as dropped) when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.count("dropped")
            if job.primary is not None and not job.primary.done():
                job.primary.cancel()
            return False
        return True

    async def serve(self) -> None:
        """Run the workers until cancelled."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.concurrency):
                group.create_task(self._work())

    def ended(self) -> None:
        """One send (a worker's or the direct path's) has ended."""
        self.in_flight -= 1
        self._freed.set()

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            if self.gap:
                await self._pace()
            while self.in_flight >= self.concurrency:
                # The direct path's sends count against the same bound.
                self._freed.clear()
                await self._freed.wait()
            self.in_flight += 1
            try:
                await self.run(job)
            finally:
                self.ended()
                self.queue.task_done()

    def drain(self, body: Body) -> None:
        """Read (and drop) the streaming answer to a directly sent copy, in a task."""
        task = asyncio.get_running_loop().create_task(self._drain(body))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, body: Body) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                size = 0
                async for chunk in body:
                    size += len(chunk)
                    if size > self.response_limit:
                        break
        except (TimeoutError, UpstreamError, PodkitError, OSError):
            self.count("failed")
        else:
            self.count("answered")
        finally:
            await body.aclose()
            self.ended()

    async def _pace(self) -> None:
        """Wait for the next send slot (slots are ``gap`` apart, taken in turn)."""
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next_send)
        self._next_send = slot + self.gap
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _fetch(self, upstream: Upstream, job: ShadowJob) -> Captured | None:
        try:
            response = await self.pool.send(upstream, job.request(), timeout=self.timeout)
            try:
                body = await response.read(self.response_limit)
            except PodkitError:
                await response.aclose()
                body = b""
        except (UpstreamError, PodkitError, OSError):
            return None
        return _captured(response.status, response.headers, body)

    async def run(self, job: ShadowJob) -> None:
        """Send one job (and compare its answer); every failure stays here, counted."""
        self.count("sent")
        shadow: Captured | None = None
        second: Captured | None = None
        try:
            async with asyncio.timeout(self.timeout):
                if self.primary_b is not None and job.primary is not None:
                    shadow, second = await asyncio.gather(
                        self._fetch(self.upstream, job), self._fetch(self.primary_b, job)
                    )
                else:
                    shadow = await self._fetch(self.upstream, job)
                primary = await job.primary if job.primary is not None else None
        except (TimeoutError, asyncio.CancelledError) as exc:
            # CancelledError here is the primary's future cancelled (no answer to compare);
            # the worker's own cancellation propagates.
            current = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and (
                current is None or current.cancelling()
            ):
                raise
            self.count("answered" if shadow is not None else "failed")
            return
        if shadow is None:
            self.count("failed")
            return
        self.count("answered")
        if primary is not None and self.on_diff is not None:
            self.on_diff(job, primary, shadow, second)

    async def wait_idle(self) -> None:
        """Return when every queued job has been handled."""
        with contextlib.suppress(asyncio.CancelledError):
            await self.queue.join()
