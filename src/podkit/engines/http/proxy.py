"""The forwarding handler: the innermost layer every HTTP pattern wraps.

``proxy_handler(pool, pick)`` turns a request into the request an upstream should see
(hop-by-hop fields removed, ``X-Forwarded-*`` and ``Via`` added), sends it over the pool and
returns the streaming response. Policies wrap it (or call :meth:`UpstreamPool.send` themselves
when they need their own retry loop); outcomes reach them as the response or as an
:class:`~podkit.engines.errors.UpstreamError`, which the server answers with its status.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from podkit.engines.errors import NoUpstreamAvailable, UpstreamError
from podkit.engines.http.client import (
    ResponseSink,
    Upstream,
    UpstreamPool,
    forwarded_head,
    upstream_request_headers,
)
from podkit.engines.http.messages import Handler, Request, Response
from podkit.engines.http.rules import (
    Forwarding,
    add_via,
)

UpstreamChoice = Upstream | None
Pick = Callable[[Request], UpstreamChoice | Awaitable[UpstreamChoice]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one forwarded request, for passive health and latency tracking.

    Attributes:
        upstream: where it was sent.
        status: the response status, or None when an error came instead.
        error: the :class:`UpstreamError`, or None.
        seconds: time until the response head (or the error).
        request_sent: whether any byte of the request reached the upstream.
    """

    upstream: Upstream
    status: int | None
    error: UpstreamError | None
    seconds: float
    request_sent: bool


def proxy_handler(
    pool: UpstreamPool,
    upstream: Upstream | Pick,
    *,
    forwarding: Forwarding | None = None,
    timeout: float | None = None,
    retries: int = 0,
    observe: Callable[[Outcome], None] | None = None,
) -> Handler:
    """A handler that forwards each request to an upstream and returns its response.

    Args:
        pool: the connection pool to send through.
        upstream: one upstream, or ``pick(request)`` returning the upstream for a request
            (sync or async; ``None`` means none is available: 503).
        forwarding: the X-Forwarded-* / Via policy (default :class:`Forwarding()`).
        timeout: response timeout per request (default: the pool's).
        retries: how many more upstreams to try (calling ``pick`` again) when the request
            provably never reached the upstream (:class:`UpstreamConnectError`, or no free
            connection). Requests that may have been processed are never retried here.
        observe: called with an :class:`Outcome` after every attempt.

    Returns:
        The handler. Upstream failures propagate as :class:`UpstreamError` (502, 503, 504).
    """
    policy = forwarding if forwarding is not None else Forwarding()
    via = policy.via_hop("1.1") if policy.via else None
    fixed = upstream if isinstance(upstream, Upstream) else None
    pick = None if isinstance(upstream, Upstream) else upstream
    clock = time.monotonic

    async def choose(request: Request) -> Upstream:
        if fixed is not None:
            return fixed
        assert pick is not None
        chosen = pick(request)
        if inspect.isawaitable(chosen):
            chosen = await chosen
        if chosen is None:
            raise NoUpstreamAvailable()
        return chosen

    async def handle(request: Request) -> Response:
        headers = upstream_request_headers(request, policy)
        attempt = 0
        while True:
            target = fixed if fixed is not None else await choose(request)
            started = clock() if observe is not None else 0.0
            try:
                response = await pool.send(target, request, headers=headers, timeout=timeout)
            except UpstreamError as exc:
                if observe is not None:
                    observe(Outcome(target, None, exc, clock() - started, exc.request_sent))
                if exc.request_sent or attempt >= retries:
                    raise
                attempt += 1
                continue
            if observe is not None:
                observe(Outcome(target, response.status, None, clock() - started, True))
            if via:
                add_via(response.headers, http_version="1.1", via=via)
            return response

    if fixed is None or observe is not None or retries:
        return handle
    return ProxyHandler(handle, pool, fixed, policy, timeout, via)


class ProxyHandler:
    """The handler :func:`proxy_handler` returns for one fixed upstream without observers.

    It is an ordinary :data:`Handler`; the server also recognises it and forwards body-less
    requests on an idle upstream connection straight from its protocol callbacks, without a
    task per request (:meth:`start`). Wrapping it in a policy turns that path off.
    """

    def __init__(
        self,
        handle: Handler,
        pool: UpstreamPool,
        upstream: Upstream,
        forwarding: Forwarding,
        timeout: float | None,
        via: bytes | None,
    ) -> None:
        self._handle = handle
        self.pool = pool
        self.upstream = upstream
        self.authority = upstream.authority.encode("idna")
        self.forwarding = forwarding
        self.timeout = timeout
        self.via = via

    def __call__(self, request: Request) -> Awaitable[Response]:
        return self._handle(request)

    def start(self, request: Request, sink: ResponseSink) -> Callable[[], None] | None:
        """Send body-less ``request`` now if an idle connection is ready, its outcome going to
        ``sink`` (see :meth:`UpstreamPool.send_to`); returns the function that abandons it,
        or None."""
        head = forwarded_head(request, self.forwarding, self.upstream, self.authority)
        return self.pool.send_to(self.upstream, request, head, self.timeout, sink)

    def finish(self, response: Response) -> Response:
        """What ``handle`` does to a response before returning it."""
        if self.via:
            add_via(response.headers, http_version="1.1", via=self.via)
        return response


__all__ = ["Outcome", "Pick", "ProxyHandler", "proxy_handler", "upstream_request_headers"]
