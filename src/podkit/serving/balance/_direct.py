"""The balancer's per-request hot path: the direct handler, its attempts, and the per-backend
traffic counters. Synchronous only, so it can be compiled (scripts/build-native.sh); the
ordinary path (retries, bodies, awaiting) stays in :mod:`podkit.serving.balance.app`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from podkit.engines.errors import UpstreamError
from podkit.engines.http import Body, Request, Response, Upstream
from podkit.engines.http.client import ResponseSink, StaleConnection, forwarded_head
from podkit.engines.http.proxy import ProxyHandler
from podkit.runtime.metrics import LATENCY_BUCKETS
from podkit.serving.balance._counted import CountedBody
from podkit.serving.balance._endpoint import Endpoint, Outcome

if TYPE_CHECKING:
    from podkit.serving.balance.app import Balancer


class BackendTraffic:
    """One backend's request counters and latency histogram, as plain numbers.

    Updated on every attempt, so they are plain integers rather than Prometheus children (a
    labelled child takes a lock and several calls per update); the pool's collector turns
    them into metric families when /metrics is scraped.
    """

    def __init__(self) -> None:
        self.by_class = [0] * 7  # index 1..5: status class; 6: no response ("error")
        self.errors: dict[str, int] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def answered(self, status: int, seconds: float) -> None:
        self.by_class[min(max(status // 100, 1), 5)] += 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def failed(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


CODE_LABELS = ("", "1xx", "2xx", "3xx", "4xx", "5xx", "error")


def attempt_answered(
    balancer: Balancer, endpoint: Endpoint, response: Response, started: float
) -> Response:
    """Report an attempt whose response head arrived; a streaming body ends it later."""
    finished = balancer.clock()
    status = response.status
    traffic = balancer._traffic.get(endpoint.url)
    if traffic is None:
        traffic = balancer.traffic(endpoint.url)
    traffic.answered(status, finished - started)
    outcome = Outcome.SUCCESS
    if status >= 500:
        traffic.failed(Outcome.SERVER_ERROR.value)
        outcome = Outcome.SERVER_ERROR
    body = response.body
    if isinstance(body, Body) and not body.complete:
        # The attempt is in flight until its body has streamed (least-request and bounded
        # loads count it): the body's end ends it.
        response.body = CountedBody(body, balancer._ender(endpoint, outcome))
    else:
        events = balancer.pool.end(endpoint, outcome, finished)
        if events:
            balancer.apply(events)
    return response


class DirectBalance(ProxyHandler):
    """:meth:`Balancer.handle` with the engine's direct path for the common case.

    The server calls :meth:`start` from its protocol callbacks for a body-less request. The
    backend is picked once; when the pool has an idle kept-alive connection to it, the
    request is written at once and the outcome comes back through an :class:`DirectAttempt`
    (no task per request). Anything else (no ready backend, no idle connection, a stale
    connection, a failure to retry) goes down the ordinary path, which continues with the
    backend already picked (the engine's ``StaleConnection(resume=...)``), so the picker is
    still called exactly once per attempt.
    """

    def __init__(self, balancer: Balancer) -> None:
        # Not ProxyHandler.__init__: there is no one fixed upstream; only what the server's
        # direct path reads (start, via) and the ordinary call are provided.
        self._handle = balancer.handle
        self.balancer = balancer
        self.pool = balancer.upstreams
        self.forwarding = balancer.forwarding
        self.timeout = balancer.options.timeout
        via = balancer.forwarding.via
        self.via = balancer.forwarding.via_hop("1.1") if via else None
        # Per endpoint: its upstream and the Host value sent to it (endpoints are kept by
        # identity; one that left the pool and came back is a new object).
        self._targets: dict[Endpoint, tuple[Upstream, bytes]] = {}
        self._keyed = balancer.options.policy == "hash"
        # The common affinity key, the peer's address, read here rather than through the
        # balancer (which also handles X-Forwarded-For from trusted proxies, headers, cookies).
        self._by_peer = (
            self._keyed
            and balancer.options.hash_on.source == "client-ip"
            and not balancer.options.trusted_proxies
        )
        self.sent = 0  # requests written on an idle connection from the server's callbacks
        self.handed_over = 0  # requests this path handed to the ordinary path at once

    def _target(self, endpoint: Endpoint) -> tuple[Upstream, bytes]:
        upstream = self.balancer._upstream(endpoint.url)
        targets = self._targets
        if len(targets) > 4 * len(self.balancer.pool) + 16:
            targets.clear()  # forget endpoints that have left the pool
        target = targets[endpoint] = (upstream, upstream.authority.encode("idna"))
        return target

    def start(self, request: Request, sink: ResponseSink) -> Callable[[], None] | None:
        """Pick a backend for ``request`` and send it on an idle connection when one is
        ready (see :meth:`ProxyHandler.start`); otherwise hand it to the ordinary path."""
        balancer = self.balancer
        now = balancer.clock()
        balancer.budget.deposit(now)
        pool = balancer.pool
        candidates = pool.candidates()
        if not candidates:
            sink.set_exception(StaleConnection(resume=_resume(balancer, (None,))))
            self.handed_over += 1
            return _nothing
        key: str | None = None
        if self._by_peer:
            key = request.client[0]
        elif self._keyed:
            key = balancer.affinity_key(request)
        endpoint = pool.picker.pick(candidates, now=now, key=key)
        target = self._targets.get(endpoint)
        if target is None:
            target = self._target(endpoint)
        upstream, authority = target
        head = forwarded_head(request, self.forwarding, upstream, authority)
        attempt = DirectAttempt(balancer, endpoint, request, sink, now)
        abort = self.pool.send_to(upstream, request, head, self.timeout, attempt)
        if abort is None:
            # No idle connection to this backend: the ordinary path connects, with it.
            sink.set_exception(StaleConnection(resume=_resume(balancer, (endpoint,))))
            self.handed_over += 1
            return _nothing
        # Counted once sent: the outcome never arrives synchronously (the connection's
        # callbacks run from the event loop), and a request that was not sent here is
        # counted by the ordinary path instead.
        pool.begin(endpoint)
        self.sent += 1
        attempt.abort = abort
        return attempt.abandon


def _nothing() -> None:
    """Abandoning an exchange already handed to the ordinary path: nothing to do."""


def _resume(
    balancer: Balancer,
    picked: tuple[Endpoint | None] | None = None,
    failed: tuple[Endpoint, UpstreamError] | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    def resume(request: Request) -> Awaitable[Response]:
        return balancer._forward(request, picked=picked, failed=failed)

    return resume


class DirectAttempt:
    """The sink of one directly sent attempt: reports its outcome, then passes it on."""

    def __init__(
        self,
        balancer: Balancer,
        endpoint: Endpoint,
        request: Request,
        sink: ResponseSink,
        started: float,
    ) -> None:
        self.balancer = balancer
        self.endpoint = endpoint
        self.request = request
        self.sink = sink
        self.started = started
        self.ended = False
        self.abort: Callable[[], None] | None = None

    def done(self) -> bool:
        return self.ended

    def set_result(self, response: Response, /) -> None:
        if self.ended:
            return
        self.ended = True
        response = attempt_answered(self.balancer, self.endpoint, response, self.started)
        self.sink.set_result(response)  # the server adds Via as it writes the head

    def set_exception(self, exc: BaseException, /) -> None:
        if self.ended:
            return
        self.ended = True
        balancer = self.balancer
        endpoint = self.endpoint
        if isinstance(exc, StaleConnection):
            # The kept-alive connection had closed: the backend is not to blame, and the
            # ordinary path sends the request to it again (as UpstreamPool.send does).
            balancer.apply(balancer.pool.end(endpoint, Outcome.ABANDONED, balancer.clock()))
            resume = _resume(balancer, (endpoint,))
        elif isinstance(exc, UpstreamError):
            balancer._attempt_failed(endpoint, exc)
            resume = _resume(balancer, failed=(endpoint, exc))
        else:
            balancer.apply(balancer.pool.end(endpoint, Outcome.ABANDONED, balancer.clock()))
            self.sink.set_exception(exc)
            return
        # The retry decision (and the answer when there is none) is the ordinary path's.
        self.sink.set_exception(StaleConnection(resume=resume))

    def abandon(self) -> None:
        """The client went away: the backend is not to blame; its connection is closed."""
        if not self.ended:
            self.ended = True
            balancer = self.balancer
            balancer.apply(balancer.pool.end(self.endpoint, Outcome.ABANDONED, balancer.clock()))
        if self.abort is not None:
            self.abort()
