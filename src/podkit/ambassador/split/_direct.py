"""The split's per-request hot path: the direct handler, its attempts, the choice of an arm in
the common cases and the per-arm traffic counters. Synchronous only, so it can be compiled
(scripts/build-native.sh); the ordinary path (bodies, diffs, awaiting) stays in
:mod:`podkit.ambassador.split.app`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from podkit.ambassador.split._ramp import RampState
from podkit.ambassador.split._shadow import SAFE_METHODS, ShadowJob, ShadowMirror
from podkit.engines.errors import UpstreamError
from podkit.engines.http import Body, Request, Response, upstream_request_headers
from podkit.engines.http.client import ResponseSink, StaleConnection, forwarded_head
from podkit.engines.http.proxy import ProxyHandler
from podkit.runtime.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from podkit.ambassador.split.app import Splitter

CODE_LABELS = ("", "1xx", "2xx", "3xx", "4xx", "5xx", "error")


class ArmTraffic:
    """One arm's request counters and latency histogram, as plain numbers (the collector
    turns them into metric families at scrape time)."""

    def __init__(self) -> None:
        self.by_class = [0] * 7  # index 1..5: status class; 6: no response ("error")
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def answered(self, status: int, seconds: float) -> None:
        self.by_class[min(max(status // 100, 1), 5)] += 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def failed(self, seconds: float) -> None:
        self.by_class[6] += 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    @property
    def requests(self) -> int:
        return sum(self.by_class)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "status": {CODE_LABELS[i]: self.by_class[i] for i in range(1, 7)},
            "latency_sum": round(self.latency_sum, 6),
        }


def record(splitter: Splitter, arm: str, status: int | None, seconds: float) -> None:
    """Count one attempt on ``arm`` (``status`` None: no answer) and feed the ramp."""
    traffic = splitter.traffic.get(arm)
    if traffic is None:
        traffic = splitter.traffic[arm] = ArmTraffic()
    if status is None:
        traffic.failed(seconds)
    else:
        traffic.answered(status, seconds)
    ramp = splitter.ramp
    if ramp is not None and ramp.state is RampState.RAMPING:
        ramped = splitter.options.ramp
        if ramped is None:
            return
        code = 502 if status is None else status
        if arm == splitter.table.primary:
            ramp.observe("primary", code, seconds)
        elif arm == ramped.arm:
            ramp.observe("candidate", code, seconds)


def quick_arm(splitter: Splitter, request: Request) -> str | None:
    """The arm for ``request`` when no match rule applies and the sticky key, if any, is a
    header (the common cases, without decoding every header field); None otherwise."""
    table = splitter.table
    if table.routes:
        return None
    sticky = table.sticky
    if sticky is None:
        return table.arm_for_key(None)
    if sticky.source != "header":
        return None
    value = request.header(sticky.name)
    return table.arm_for_key(value.strip() or None if value is not None else None)


def mirrored(splitter: Splitter, request: Request) -> bool:
    """Whether a body-less ``request`` for the primary is to be mirrored (a skip is counted)."""
    shadow = splitter.shadow
    settings = splitter.options.shadow
    if shadow is None or settings is None:
        return False
    if request.method not in SAFE_METHODS and not settings.unsafe:
        shadow.count("skipped-unsafe")
        return False
    if settings.rate < 1.0 and splitter.rng.random() >= settings.rate:
        shadow.count("skipped-sampled-out")
        return False
    return True


def mirror_now(splitter: Splitter, shadow: ShadowMirror, request: Request, head: bytes) -> None:
    """Send the copy of a body-less ``request`` the primary has answered: at once, on an idle
    connection to the shadow, with the head the primary got (no task, no queue), when the
    concurrency bound and the rate leave room; dropped (counted) when they do not; queued
    for the workers when no connection is idle (they open one)."""
    if shadow.in_flight >= shadow.concurrency:
        shadow.count("dropped")
        return
    loop_time = shadow.pool.loop.time()
    if shadow.gap:
        ahead = shadow._next_send - loop_time
        if ahead > shadow.tolerance:
            shadow.count("dropped")
            return
    copy = Request(request.method, request.target, request.headers, b"")
    sink = ShadowSink(shadow)
    abort = shadow.pool.send_to(shadow.upstream, copy, head, shadow.timeout, sink)
    if abort is None:
        if shadow.queue.full():
            shadow.count("dropped")
            return
        shadow.offer(queued_job(splitter, request))
        return
    if shadow.gap:
        shadow._next_send = max(shadow._next_send, loop_time) + shadow.gap
    shadow.in_flight += 1
    shadow.sent_direct += 1
    shadow.count("sent")


def queued_job(splitter: Splitter, request: Request) -> ShadowJob:
    """The copy of a body-less ``request`` for the shadow's workers."""
    return ShadowJob(
        request.method,
        request.target,
        upstream_request_headers(request, splitter.forwarding),
        b"",
        route=f"{request.method} {request.path}",
        enqueued=splitter.clock(),
    )


class ShadowSink:
    """The outcome of one directly sent shadow copy: counted, then dropped."""

    def __init__(self, shadow: ShadowMirror) -> None:
        self.shadow = shadow
        self.ended = False

    def done(self) -> bool:
        return self.ended

    def set_result(self, response: Response, /) -> None:
        if self.ended:
            return
        self.ended = True
        body = response.body
        if isinstance(body, Body) and not body.finished:
            # A streaming answer: read (and dropped) by a task, up to the shadow's limit.
            self.shadow.drain(body)
        else:
            self.shadow.count("answered")
            self.shadow.ended()

    def set_exception(self, exc: BaseException, /) -> None:
        if self.ended:
            return
        self.ended = True
        self.shadow.count("failed")
        self.shadow.ended()


class DirectSplit(ProxyHandler):
    """:meth:`Splitter.handle` with the engine's direct path for the common case.

    The server calls :meth:`start` from its protocol callbacks for a body-less request. The
    arm is chosen and, if the pool has an idle kept-alive connection to it, the request is
    written at once and the outcome comes back through a :class:`DirectAttempt` (no task per
    request); a request for the primary is offered to the shadow when its answer's head
    arrives (with diffs on, the primary's body is captured: the ordinary path does that).
    Anything else goes down the ordinary path, with the arm already chosen.
    """

    def __init__(self, splitter: Splitter) -> None:
        # Not ProxyHandler.__init__: there is no one fixed upstream; only what the server's
        # direct path reads (start, via) and the ordinary call are provided.
        self._handle = splitter.handle
        self.splitter = splitter
        self.pool = splitter.upstreams
        self.forwarding = splitter.forwarding
        self.timeout = splitter.options.timeout
        via = splitter.forwarding.via
        self.via = splitter.forwarding.via_hop("1.1") if via else None
        self.sent = 0  # requests written on an idle connection from the server's callbacks

    def start(self, request: Request, sink: ResponseSink) -> Callable[[], None] | None:
        """Choose the arm and send ``request`` on an idle connection when one is ready;
        otherwise hand it to the ordinary path (see :meth:`ProxyHandler.start`)."""
        s = self.splitter
        arm = quick_arm(s, request)
        if arm is None:
            arm = s.arm_for(request)
        mirror = False
        if s.shadow is not None and arm == s.table.primary:
            if s.board is not None:
                sink.set_exception(StaleConnection(resume=_resume(s, arm, None, False)))
                return _nothing
            mirror = mirrored(s, request)
        upstream, authority = s.arm_target(arm)
        head = forwarded_head(request, self.forwarding, upstream, authority)
        attempt = DirectAttempt(s, arm, sink, s.clock(), request, head if mirror else None)
        abort = self.pool.send_to(upstream, request, head, self.timeout, attempt)
        if abort is None:
            # The ordinary path connects (and queues the copy when the primary answers).
            job = queued_job(s, request) if mirror else None
            sink.set_exception(StaleConnection(resume=_resume(s, arm, job, True)))
            return _nothing
        self.sent += 1
        attempt.abort = abort
        return attempt.abandon


def _nothing() -> None:
    """Abandoning an exchange already handed to the ordinary path: nothing to do."""


def _resume(
    splitter: Splitter, arm: str, job: ShadowJob | None, decided: bool
) -> Callable[[Request], Awaitable[Response]]:
    """Continue on the ordinary path with the arm chosen (when ``decided``, no copy is made
    there but ``job``, if any)."""

    def resume(request: Request) -> Awaitable[Response]:
        return splitter.forward(request, arm, job=job, shadow_decided=decided)

    return resume


class DirectAttempt:
    """The sink of one directly sent request: counts its outcome, passes it on, then sends
    its shadow copy (``head``: the head the primary got; None: not mirrored)."""

    def __init__(
        self,
        splitter: Splitter,
        arm: str,
        sink: ResponseSink,
        started: float,
        request: Request,
        head: bytes | None,
    ) -> None:
        self.splitter = splitter
        self.arm = arm
        self.sink = sink
        self.started = started
        self.request = request
        self.head = head
        self.ended = False
        self.abort: Callable[[], None] | None = None

    def done(self) -> bool:
        return self.ended

    def set_result(self, response: Response, /) -> None:
        if self.ended:
            return
        self.ended = True
        s = self.splitter
        record(s, self.arm, response.status, s.clock() - self.started)
        self.sink.set_result(response)
        self._offer()

    def set_exception(self, exc: BaseException, /) -> None:
        if self.ended:
            return
        self.ended = True
        s = self.splitter
        if isinstance(exc, StaleConnection):
            # The kept-alive connection had closed: the ordinary path sends it again (and
            # mirrors it when it is answered).
            job = queued_job(s, self.request) if self.head is not None else None
            resume = _resume(s, self.arm, job, True)
            self.head = None
            self.sink.set_exception(StaleConnection(resume=resume))
            return
        if isinstance(exc, UpstreamError):
            record(s, self.arm, None, s.clock() - self.started)
        self.sink.set_exception(exc)
        self._offer()

    def _offer(self) -> None:
        head = self.head
        shadow = self.splitter.shadow
        if head is not None and shadow is not None:
            self.head = None
            mirror_now(self.splitter, shadow, self.request, head)

    def abandon(self) -> None:
        """The client went away: its upstream connection is closed (and nothing mirrored)."""
        self.ended = True
        self.head = None
        if self.abort is not None:
            self.abort()
