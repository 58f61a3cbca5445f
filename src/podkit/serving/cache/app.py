"""``podkit cache``: the asyncio shell around the cache core, on the HTTP engine.

Theory of operation. :class:`CachingProxy` is a handler for
:class:`~podkit.engines.http.HTTPServer`. For each request it asks
:class:`~podkit.serving.cache.CachePolicy` what to do (decide) and carries it out (act):

* a HIT is answered from the store, with ``Age`` (or a 304 when the client's validators
  match); ``X-Cache: HIT``;
* a MISS joins the :class:`~podkit.serving.cache.CoalescingTable`: the first request for a key
  fetches from the origin and streams the answer to its client as it arrives; when RFC 9111
  allows storing it, a :class:`_Tee` keeps a copy of the body as it passes and stores it
  once the body completed within ``max_object`` (an object that grows past it stops being
  copied and keeps streaming). The outcome is published to the requests that waited when
  the body completed: they share the stored object when their request selects the same
  variant, and otherwise (uncacheable, too large, origin error, or ``coalesce_timeout``
  passed) each fetches on its own. The fetch runs as a task of the cache's task group, and
  if the client that started it goes away while others wait, the rest of the body is read
  and stored in the background for them;
* a stale entry is revalidated with a conditional request (a 304 freshens it); within
  ``stale-while-revalidate`` it is served at once (``X-Cache: STALE``) while one background task
  revalidates; when the origin fails and ``stale-if-error`` allows, it is served stale too;
* unsafe methods are forwarded and, on success, invalidate the URL (RFC 9111 §4.4); ``PURGE``
  from an allowed address removes it.

Background revalidations are tasks of the task group :func:`open_cache` owns.

With several workers (:func:`serve_cache_workers`) each worker process is a whole cache with
its own store; the parent's ``/cache`` is assembled from the workers' merged metrics. A purge
(the parent's admin call, or ``PURGE`` taken by any worker) is broadcast to every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from podkit.engines.errors import UpstreamClosed, UpstreamError
from podkit.engines.http import (
    Body,
    Forwarding,
    Request,
    Response,
    ServerLimits,
    Upstream,
    UpstreamPool,
    strip_hop_by_hop,
    upstream_request_headers,
)
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.workers import (
    DEFAULT_COMMAND_TIMEOUT,
    CommandError,
    WorkerLink,
    WorkerPool,
    serve_workers,
    worker_link,
)
from podkit.runtime import Request as AdminRequest
from podkit.runtime import Response as AdminResponse
from podkit.runtime import Runtime
from podkit.runtime.logging import get_logger
from podkit.serving._workers import Sample, merged_samples, reserve_port
from podkit.serving.balance._affinity import IPNetwork
from podkit.serving.cache._coalesce import DEFAULT_COALESCE_TIMEOUT, CoalescingTable, Flight
from podkit.serving.cache._policy import (
    CACHEABLE_METHODS,
    ERROR_STATUSES,
    CachePolicy,
    LookupKind,
    cache_key,
)
from podkit.serving.cache._ranges import DEFAULT_MAX_RANGES, parse_range
from podkit.serving.cache._rules import DEFAULT_TARGETED
from podkit.serving.cache._store import (
    DEFAULT_MAX_OBJECT,
    DEFAULT_MAX_SIZE,
    ObjectStore,
    StoredResponse,
)

DEFAULT_TIMEOUT = 60.0  # origin silence allowed while a response is awaited (nginx 60 s)
DEFAULT_CONNECT_TIMEOUT = 5.0  # the engine's default
DEFAULT_PURGE_ALLOW = ("127.0.0.1/32", "::1/128")  # only the local host may purge by default
# Conditional and range fields of the client are answered by the cache itself; the origin is
# asked for the full representation (with the cache's own validators when revalidating).
CLIENT_CONDITIONALS = (
    b"if-none-match",
    b"if-modified-since",
    b"if-match",
    b"if-unmodified-since",
    b"if-range",
    b"range",
)


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """Everything ``podkit cache`` is configured with.

    Attributes:
        host, port: where to listen.
        upstream: the origin's URL.
        max_size: bytes the stored objects may use.
        max_object: the largest object stored (larger ones stream through).
        purge_allow: networks allowed to send ``PURGE``.
        coalesce_timeout: how long a request waits for a concurrent fetch of the same object.
        timeout: origin silence allowed while a response is awaited.
        connect_timeout: time to connect to the origin.
        source_address: the local address connections to the origin leave from.
        trusted_proxies: peers whose ``X-Forwarded-For`` is kept and extended.
        limits: the client-facing limits of the HTTP server (sizes, timeouts, connections).
        workers: how many processes serve the cache; above 1 this process is one of them:
            it shares the port (SO_REUSEPORT), has its own store, and leaves the hit-ratio
            gauge out of its metrics (ratios do not add up when the workers' are merged).
        workers_timeout: with several workers, how long a purge waits for each worker.
        targeted: targeted cache-control fields obeyed over ``Cache-Control`` (RFC 9213),
            by precedence; ``CDN-Cache-Control`` is always last.
        max_ranges: a ``Range`` with more ranges than this is answered with the whole body.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    upstream: str = "http://127.0.0.1:8000"
    max_size: int = DEFAULT_MAX_SIZE
    max_object: int = DEFAULT_MAX_OBJECT
    purge_allow: tuple[IPNetwork, ...] = field(
        default_factory=lambda: tuple(ipaddress.ip_network(n) for n in DEFAULT_PURGE_ALLOW)
    )
    coalesce_timeout: float = DEFAULT_COALESCE_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    source_address: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    limits: ServerLimits = field(default_factory=ServerLimits)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
    workers: int = 1
    workers_timeout: float = DEFAULT_COMMAND_TIMEOUT
    targeted: tuple[str, ...] = DEFAULT_TARGETED
    max_ranges: int = DEFAULT_MAX_RANGES


def _text(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]


def _bytes(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


class _Fetched:
    """An origin answer read whole (``body``) or still streaming (``response``)."""

    __slots__ = ("body", "entry", "headers", "pending", "response", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        body: bytes | None = None,
        response: Response | None = None,
        entry: StoredResponse | None = None,
        pending: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.response = response
        self.entry = entry  # set when the answer was storable (and so shareable)
        # The body streams through a _Tee that publishes the flight's outcome when it ends.
        self.pending = pending


class _Tee(Body):
    """The origin's body on its way to one client, copied for the store as it passes.

    A :class:`Body` subclass, so that the server keeps the origin's ``Content-Length``. The
    copy stops (and its memory is released) as soon as it exceeds ``limit``; the bytes keep
    flowing to the client. ``on_end`` is called exactly once: with the whole body when it
    completed within the limit, else with None (too large, origin broke off, or abandoned).
    Closing the tee before its end (the client went away) calls ``on_abandon``, which either
    reads the rest in the background or :meth:`abort` s.
    """

    __slots__ = (
        "_abandoned",
        "_ended",
        "_limit",
        "_on_abandon",
        "_on_end",
        "_parts",
        "_size",
        "_source",
    )

    def __init__(
        self,
        source: Body,
        *,
        limit: int,
        on_end: Callable[[bytes | None], None],
        on_abandon: Callable[[_Tee], None],
    ) -> None:
        super().__init__(length=source.length)
        self._source = source
        self._limit = limit
        self._parts: list[bytes] | None = []
        self._size = 0
        self._ended = False
        self._abandoned = False
        self._on_end: Callable[[bytes | None], None] | None = on_end
        self._on_abandon = on_abandon

    @property
    def copying(self) -> bool:
        """Whether the body is still being copied for the store."""
        return self._parts is not None

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = await self._source.__anext__()
        except StopAsyncIteration:
            self._ended = True
            parts = self._parts
            self._report(b"".join(parts) if parts is not None else None)
            raise
        except asyncio.CancelledError:
            raise  # the consumer was cancelled; close() decides what becomes of the rest
        except BaseException:
            self.abort()
            raise
        parts = self._parts
        if parts is not None:
            self._size += len(chunk)
            if self._size > self._limit:
                self._report(None)  # too large to store: stop copying, keep streaming
            else:
                parts.append(chunk)
        return chunk

    def _report(self, body: bytes | None) -> None:
        self._parts = None
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(body)

    def abort(self) -> None:
        """Stop here: drop the rest of the body (the origin connection is not reused)."""
        self._ended = True
        self._source.close()
        self._report(None)

    def close(self) -> None:
        """The consumer stops reading; before the end, ``on_abandon`` decides what follows."""
        if self._ended or self._abandoned:
            return
        self._abandoned = True
        self._on_abandon(self)

    async def aclose(self) -> None:
        """Same as :meth:`close`."""
        self.close()

    def __del__(self) -> None:
        # A response dropped without being sent or closed (its client was gone before the
        # head could be written) must still publish its flight, or requests would keep
        # joining a flight that never ends.
        if not self._ended and not self._abandoned:
            self.abort()


class _StoreCollector(Collector):
    def __init__(self, proxy: CachingProxy) -> None:
        self.proxy = proxy

    def collect(self) -> list[Metric]:
        store = self.proxy.store.statistics()
        hits, lookups = self.proxy.hits_and_lookups()
        objects = GaugeMetricFamily("podkit_cache_objects", "Objects stored.")
        objects.add_metric([], store.objects)
        size = GaugeMetricFamily("podkit_cache_bytes", "Bytes the stored objects use.")
        size.add_metric([], store.bytes)
        limit = GaugeMetricFamily("podkit_cache_max_bytes", "The store's byte limit.")
        limit.add_metric([], store.max_bytes)
        evictions = CounterMetricFamily("podkit_cache_evictions", "Objects evicted (LRU).")
        evictions.add_metric([], store.evictions)
        if self.proxy.options.workers > 1:
            return [objects, size, limit, evictions]
        ratio = GaugeMetricFamily(
            "podkit_cache_hit_ratio", "Share of cacheable requests answered from the store."
        )
        ratio.add_metric([], hits / lookups if lookups else 0.0)
        return [objects, size, limit, evictions, ratio]


class CachingProxy:
    """The request handler of ``podkit cache``.

    Args:
        options: the configuration.
        upstreams: the engine's connection pool.
        group: the task group that owns background revalidations.
        registry: where metrics are registered.
        clock: wall-clock seconds (RFC 9111 ages are wall-clock).
    """

    def __init__(
        self,
        options: CacheOptions,
        *,
        upstreams: UpstreamPool,
        group: asyncio.TaskGroup,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.upstreams = upstreams
        self.group = group
        self.clock = clock
        self.log = get_logger("cache")
        self.origin = Upstream.parse(options.upstream)
        self.store = ObjectStore(max_bytes=options.max_size, max_object=options.max_object)
        self.policy = CachePolicy(
            self.store, targeted=options.targeted, max_ranges=options.max_ranges
        )
        self.flights: CoalescingTable[_Fetched] = CoalescingTable()
        self.forwarding = Forwarding(trusted_proxies=options.trusted_proxies)
        self._revalidating: set[str] = set()
        # The channel to the parent when this is one of several workers: PURGE goes to all.
        self.peers: WorkerLink | None = None
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.m_requests = Counter(
            "podkit_cache_requests",
            "Requests by result (hit, miss, stale, pass).",
            ["result"],
            registry=registry,
        )
        self.m_origin = Counter(
            "podkit_cache_origin_requests",
            "Requests sent to the origin, by kind (fetch, validate, background, pass).",
            ["kind"],
            registry=registry,
        )
        self.m_coalesced = Counter(
            "podkit_cache_coalesced",
            "Requests that waited for another request's origin fetch, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.m_purges = Counter(
            "podkit_cache_purges", "Objects removed by PURGE or admin.", registry=registry
        )
        self.m_origin_errors = Counter(
            "podkit_cache_origin_errors", "Origin requests that failed.", registry=registry
        )
        self.results: dict[str, int] = {"hit": 0, "miss": 0, "stale": 0, "pass": 0}
        self._result_counters = {r: self.m_requests.labels(r) for r in self.results}
        registry.register(_StoreCollector(self))

    def hits_and_lookups(self) -> tuple[int, int]:
        """Requests answered from the store, and all cacheable requests."""
        r = self.results
        return r["hit"] + r["stale"], r["hit"] + r["stale"] + r["miss"]

    def _count(self, result: str) -> None:
        self.results[result] += 1
        self._result_counters[result].inc()

    # -- the handler ------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Answer one request from the store or the origin."""
        if request.method == "PURGE":
            if self.peers is not None:
                return await self._purge_everywhere(request, self.peers)
            return self._purge(request)
        response = await self._answer_request(request)
        # _tag appends X-Cache last on every answer.
        result = response.headers[-1][1] if response.headers else b"MISS"
        if request.method not in CACHEABLE_METHODS:
            self._count("pass")
        else:
            self._count("hit" if result == b"HIT" else "stale" if result == b"STALE" else "miss")
        return response

    async def _answer_request(self, request: Request) -> Response:
        host = request.header("host")
        key = cache_key(host, request.target)
        request_headers = _text(request.headers)
        lookup = self.policy.lookup(request.method, key, request_headers, self.clock())
        kind = lookup.kind
        if kind is LookupKind.PASS:
            return await self._pass(request, key, host)
        if kind is LookupKind.GATEWAY_TIMEOUT:
            return self._tag(Response.text(504, "not cached (only-if-cached)\n"), "MISS")
        if kind is LookupKind.HIT:
            assert lookup.entry is not None
            return self._serve(request, request_headers, lookup.entry, "HIT")
        if kind is LookupKind.STALE:
            assert lookup.entry is not None
            self._revalidate_later(request, key, lookup.entry)
            return self._serve(request, request_headers, lookup.entry, "STALE")
        if kind is LookupKind.VALIDATE:
            assert lookup.entry is not None
            return await self._validate(request, request_headers, key, lookup.entry)
        if request.method != "GET":
            return self._tag(await self._forward_plain(request, "pass"), "MISS")
        forwarded = self.policy.client_conditionals(request_headers)
        asked = request.header("range")
        ranges = parse_range(asked, max_ranges=self.policy.max_ranges)
        if ranges is not None and asked is not None:
            partial = self.policy.lookup_partial(key, request_headers, ranges, self.clock())
            if partial.kind is LookupKind.HIT and partial.entry is not None:
                return self._serve(request, request_headers, partial.entry, "HIT")
            forwarded.append(("Range", asked))
            if_range = request.header("if-range")
            if if_range is not None:
                forwarded.append(("If-Range", if_range))
        if forwarded and key not in self.flights:
            return await self._forwarded_miss(request, request_headers, key, forwarded)
        # A whole representation is on its way (or wanted): wait for it, then answer the
        # client's validators or Range from it (_serve).
        return await self._miss(request, request_headers, key)

    async def _forwarded_miss(
        self,
        request: Request,
        request_headers: list[tuple[str, str]],
        key: str,
        forwarded: list[tuple[str, str]],
    ) -> Response:
        """A miss that asks the origin for less than the whole representation: the client's
        own validators (a 304 is passed on, not stored) or its ``Range`` (a 206 is stored and
        combined with the stored part, RFC 9111 §3.4). A full answer is stored as any miss.
        Not coalesced: the answer may fit only this request."""
        try:
            fetched = await self._fetch(
                request, request_headers, key, kind="fetch", extra=forwarded
            )
        except UpstreamError as exc:
            return self._tag(Response.text(exc.status, f"origin failed: {exc}\n"), "MISS")
        if fetched.status == 304:
            return self._tag(Response(304, _bytes(fetched.headers)), "MISS")
        return self._answer(request, request_headers, fetched, "MISS")

    def _tag(self, response: Response, result: str) -> Response:
        response.headers = [(n, v) for n, v in response.headers if n.lower() != b"x-cache"]
        response.headers.append((b"X-Cache", result.encode()))
        return response

    def _serve(
        self,
        request: Request,
        request_headers: list[tuple[str, str]],
        entry: StoredResponse,
        result: str,
        *,
        fetched: bool = False,
    ) -> Response:
        """Answer from ``entry``; ``fetched`` when it is the answer this request fetched (its
        fields are then all sent, even those a reuse leaves out)."""
        age = str(int(self.policy.age(entry, self.clock())))
        if self.policy.not_modified(request_headers, entry):
            not_modified = [*self.policy.not_modified_headers(entry), ("Age", age)]
            return self._tag(Response(304, _bytes(not_modified)), result)
        if request.method == "GET" and request.header("range") is not None:
            ranged = self.policy.range_answer(
                entry, request_headers, boundary=secrets.token_hex(12)
            )
            if ranged is not None:
                fields = _bytes([*ranged.headers, ("Age", age)])
                return self._tag(Response(ranged.status, fields, ranged.body), result)
        slot = "wire_fetched" if fetched else "wire"
        wire: list[tuple[bytes, bytes]] | None = entry.derived.get(slot)
        if wire is None:
            left_out = {"age", "content-length"} | (set() if fetched else entry.omitted)
            wire = entry.derived[slot] = _bytes(
                [(n, v) for n, v in entry.headers if n.lower() not in left_out]
            )
        fields = [*wire, (b"Age", age.encode())]
        body = entry.body
        if request.method == "HEAD":
            # The length the GET would have (RFC 9110 §8.6); the engine sends no body.
            fields.append((b"Content-Length", str(len(body)).encode()))
            body = b""
        return self._tag(Response(entry.status, fields, body), result)

    def _forward_headers(
        self, request: Request, extra: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[bytes, bytes]]:
        fields = upstream_request_headers(request, self.forwarding)
        if request.method in ("GET", "HEAD"):
            fields = [(n, v) for n, v in fields if n.lower() not in CLIENT_CONDITIONALS]
        fields.extend(_bytes(extra))
        return fields

    async def _send(
        self, request: Request, kind: str, extra: Sequence[tuple[str, str]] = ()
    ) -> Response:
        self.m_origin.labels(kind).inc()
        try:
            return await self.upstreams.send(
                self.origin,
                request,
                headers=self._forward_headers(request, extra),
                timeout=self.options.timeout,
            )
        except UpstreamError:
            self.m_origin_errors.inc()
            raise

    async def _forward_plain(self, request: Request, kind: str) -> Response:
        try:
            return await self._send(request, kind)
        except UpstreamError as exc:
            return Response.text(exc.status, f"origin failed: {exc}\n")

    async def _pass(self, request: Request, key: str, host: str | None) -> Response:
        response = await self._forward_plain(request, "pass")
        invalidated = self.policy.invalidate_after(
            request.method, response.status, key, host, _text(response.headers)
        )
        if invalidated:
            self.log.debug("invalidated", extra={"keys": invalidated})
        return self._tag(response, "MISS")

    async def _fetch(
        self,
        request: Request,
        request_headers: list[tuple[str, str]],
        key: str,
        *,
        kind: str,
        extra: Sequence[tuple[str, str]] = (),
        flight: Flight[_Fetched] | None = None,
    ) -> _Fetched:
        """Fetch from the origin; store the answer when it is storable and fits.

        Returns when the response head arrived. A body already received whole is stored at
        once; one still arriving streams on through a :class:`_Tee` that stores it when it
        completed within ``max_object`` and then publishes ``flight``'s outcome
        (``pending``). Anything else streams through untouched.

        Raises:
            UpstreamError: the origin could not be reached or did not answer.
        """
        request_time = self.clock()
        response = await self._send(request, kind, extra)
        response_time = self.clock()
        fields = _text(strip_hop_by_hop(response.headers))
        status = response.status
        if status == 304 and extra:
            await response.aclose()
            return _Fetched(status, fields, body=b"")
        storable = self.policy.storability(request.method, request_headers, status, fields)
        body = response.body
        if not storable:
            return _Fetched(status, fields, response=response)
        if isinstance(body, Body) and body.complete:
            data: bytes | None = b"".join(body.take_all())
            body.close()
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, Body):
            data = None
            if body.length is not None and body.length > self.options.max_object:
                return _Fetched(status, fields, response=response)
        else:
            return _Fetched(status, fields, response=response)
        if data is not None:
            # Arrived with the head (the common case for small objects): store it now.
            if len(data) > self.options.max_object:
                return _Fetched(status, fields, response=Response(status, response.headers, data))
            entry = self._keep(
                key, request_headers, status, fields, data, request_time, response_time
            )
            return _Fetched(status, fields, body=data, entry=entry)
        assert isinstance(body, Body)

        def ended(data: bytes | None) -> None:
            entry = None
            if data is not None:
                entry = self._keep(
                    key, request_headers, status, fields, data, request_time, response_time
                )
            if flight is not None:
                shared = _Fetched(status, fields, entry=entry) if entry is not None else None
                self._publish(flight, shared)

        def abandoned(tee: _Tee) -> None:
            # The client left mid-body. Requests waiting on this flight still want the
            # object: read the rest for them, unless it can no longer be stored.
            if tee.copying and flight is not None and flight.followers and not flight.done:
                self.group.create_task(self._finish_copy(tee, key))
            else:
                tee.abort()

        response.body = _Tee(
            body, limit=self.options.max_object, on_end=ended, on_abandon=abandoned
        )
        return _Fetched(status, fields, response=response, pending=flight is not None)

    def _keep(
        self,
        key: str,
        request_headers: list[tuple[str, str]],
        status: int,
        fields: list[tuple[str, str]],
        body: bytes,
        request_time: float,
        response_time: float,
    ) -> StoredResponse:
        entry = self.policy.make_entry(
            key,
            request_headers,
            status,
            fields,
            body,
            request_time=request_time,
            response_time=response_time,
        )
        entry = self.policy.combined(entry)  # a 206 with the stored part of its variant
        evicted = self.policy.keep(entry)
        if evicted:
            self.log.debug("evicted", extra={"objects": len(evicted)})
        return entry

    async def _finish_copy(self, tee: _Tee, key: str) -> None:
        """Read the rest of an abandoned body into the store. Never raises (task group)."""
        try:
            async for _ in tee:
                if not tee.copying:
                    break
        except Exception as exc:
            self.log.warning("origin body failed", extra={"key": key, "error": str(exc)})
        finally:
            tee.abort()

    def _publish(self, flight: Flight[_Fetched], result: _Fetched | None) -> None:
        """Close ``flight`` with its outcome and wake the requests waiting on it."""
        if flight.done:
            return
        self.flights.finish(flight, result)
        if isinstance(flight.waiter, asyncio.Event):
            flight.waiter.set()

    def _answer(
        self,
        request: Request,
        request_headers: list[tuple[str, str]],
        fetched: _Fetched,
        result: str,
    ) -> Response:
        if fetched.entry is not None:
            return self._serve(request, request_headers, fetched.entry, result, fetched=True)
        if fetched.response is not None:
            return self._tag(fetched.response, result)
        return self._tag(
            Response(fetched.status, _bytes(fetched.headers), fetched.body or b""), result
        )

    async def _miss(
        self,
        request: Request,
        request_headers: list[tuple[str, str]],
        key: str,
        *,
        rejoin: bool = True,
    ) -> Response:
        flight, leader = self.flights.join(key, self.clock())
        if leader:
            return await self._lead(flight, request, request_headers, key)
        waiter = flight.waiter
        assert isinstance(waiter, asyncio.Event)
        try:
            async with asyncio.timeout(self.options.coalesce_timeout):
                await waiter.wait()
        except TimeoutError:
            self.m_coalesced.labels("timeout").inc()
        else:
            shared = flight.result
            if (
                shared is not None
                and shared.entry is not None
                and shared.entry.matches(request_headers)
            ):
                self.m_coalesced.labels("shared").inc()
                return self._serve(request, request_headers, shared.entry, "HIT")
            self.m_coalesced.labels("fallback").inc()
            if rejoin and shared is not None and shared.entry is not None:
                # Another variant (Vary) came back: requests for this variant coalesce again
                # among themselves, unless it was stored meanwhile.
                lookup = self.policy.lookup("GET", key, request_headers, self.clock())
                if lookup.kind is LookupKind.HIT and lookup.entry is not None:
                    return self._serve(request, request_headers, lookup.entry, "HIT")
                return await self._miss(request, request_headers, key, rejoin=False)
        try:
            fetched = await self._fetch(request, request_headers, key, kind="fetch")
        except UpstreamError as exc:
            return self._tag(Response.text(exc.status, f"origin failed: {exc}\n"), "MISS")
        return self._answer(request, request_headers, fetched, "MISS")

    async def _lead(
        self,
        flight: Flight[_Fetched],
        request: Request,
        request_headers: list[tuple[str, str]],
        key: str,
    ) -> Response:
        flight.waiter = asyncio.Event()
        # The fetch belongs to the cache's task group, not to this request: if the client
        # that led it goes away, the requests waiting on it still get the answer.
        fill = self.group.create_task(self._fill(flight, request, request_headers, key))
        try:
            outcome = await asyncio.shield(fill)
        except asyncio.CancelledError:
            fill.add_done_callback(self._close_unread)
            raise
        if isinstance(outcome, UpstreamError):
            return self._tag(Response.text(outcome.status, f"origin failed: {outcome}\n"), "MISS")
        return self._answer(request, request_headers, outcome, "MISS")

    async def _fill(
        self,
        flight: Flight[_Fetched],
        request: Request,
        request_headers: list[tuple[str, str]],
        key: str,
    ) -> _Fetched | UpstreamError:
        """Fetch for a flight and publish the outcome (now, or when a streamed body ends).

        Never raises an Exception: it runs in the task group, where one would stop every
        other task."""
        try:
            fetched = await self._fetch(request, request_headers, key, kind="fetch", flight=flight)
        except UpstreamError as exc:
            self._publish(flight, None)
            return exc
        except Exception as exc:  # a bug must not take the task group down with it
            self._publish(flight, None)
            self.log.exception("fetch failed", extra={"key": key})
            return UpstreamClosed(f"fetch failed: {exc!r}", request_sent=True)
        except BaseException:
            self._publish(flight, None)
            raise
        if not fetched.pending:
            self._publish(flight, fetched if fetched.entry is not None else None)
        return fetched

    def _close_unread(self, task: asyncio.Task[_Fetched | UpstreamError]) -> None:
        """Abandon the streamed answer of a fetch whose requester went away."""
        if task.cancelled():
            return
        outcome = task.result()
        if isinstance(outcome, _Fetched) and outcome.response is not None:
            self.group.create_task(outcome.response.aclose())

    async def _validate(
        self,
        request: Request,
        request_headers: list[tuple[str, str]],
        key: str,
        entry: StoredResponse,
    ) -> Response:
        validators = self.policy.conditional_headers(entry)
        try:
            fetched = await self._fetch(
                request, request_headers, key, kind="validate", extra=validators
            )
        except UpstreamError as exc:
            if self.policy.stale_if_error(entry, request_headers, self.clock()):
                return self._serve(request, request_headers, entry, "STALE")
            return self._tag(Response.text(exc.status, f"origin failed: {exc}\n"), "MISS")
        if fetched.status == 304 and validators:
            now = self.clock()
            fresh = self.policy.freshen(entry, fetched.headers, request_time=now, response_time=now)
            return self._serve(request, request_headers, fresh, "HIT")
        if request.method == "HEAD" and self.policy.head_updates(
            entry, fetched.status, fetched.headers
        ):
            # RFC 9111 §4.3.5: a 200 to HEAD that describes the stored response updates it.
            if fetched.response is not None:
                await fetched.response.aclose()
            now = self.clock()
            fresh = self.policy.freshen(entry, fetched.headers, request_time=now, response_time=now)
            return self._serve(request, request_headers, fresh, "HIT")
        if fetched.status in ERROR_STATUSES and self.policy.stale_if_error(
            entry, request_headers, self.clock()
        ):
            if fetched.response is not None:
                await fetched.response.aclose()
            return self._serve(request, request_headers, entry, "STALE")
        return self._answer(request, request_headers, fetched, "MISS")

    def _revalidate_later(self, request: Request, key: str, entry: StoredResponse) -> None:
        slot = f"{key}\x00{entry.variant!r}"
        if slot in self._revalidating:
            return
        self._revalidating.add(slot)
        copy = Request(
            "GET",
            request.target,
            list(request.headers),
            b"",
            http_version=request.http_version,
            client=request.client,
            scheme=request.scheme,
        )
        self.group.create_task(self._background(copy, key, entry, slot))

    async def _background(
        self, request: Request, key: str, entry: StoredResponse, slot: str
    ) -> None:
        try:
            request_headers = _text(request.headers)
            validators = self.policy.conditional_headers(entry)
            fetched = await self._fetch(
                request, request_headers, key, kind="background", extra=validators
            )
            if fetched.status == 304 and validators:
                now = self.clock()
                if self.store.lookup(key, request_headers) is entry:
                    self.policy.freshen(entry, fetched.headers, request_time=now, response_time=now)
            elif fetched.response is not None:
                body = fetched.response.body
                if isinstance(body, _Tee):
                    async for _ in body:  # nobody reads this answer: the tee stores it
                        if not body.copying:
                            break
                await fetched.response.aclose()
        except UpstreamError as exc:
            self.log.warning(
                "background revalidation failed", extra={"key": key, "error": str(exc)}
            )
        except Exception:  # a bug must not take the task group (and the cache) down
            self.log.exception("background revalidation failed", extra={"key": key})
        finally:
            self._revalidating.discard(slot)

    # -- purge ------------------------------------------------------------------------------

    def allowed_to_purge(self, address: str) -> bool:
        """Whether ``address`` may send PURGE."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.options.purge_allow)

    def purge(self, target: str, host: str | None = None) -> int:
        """Remove every stored variant of ``target`` (for ``host``, or for every host)."""
        if host is not None:
            removed = self.store.invalidate(cache_key(host, target))
        else:
            removed = sum(
                self.store.invalidate(k)
                for k in self.store.primary_keys()
                if k.endswith(target) and k[: len(k) - len(target)].find("/") == -1
            )
        self.m_purges.inc(removed)
        return removed

    def _purge(self, request: Request) -> Response:
        if not self.allowed_to_purge(request.client[0]):
            return Response.text(403, "PURGE not allowed from this address\n")
        removed = self.purge(request.target, request.header("host"))
        return _purged(removed)

    async def _purge_everywhere(self, request: Request, peers: WorkerLink) -> Response:
        """``PURGE`` in one worker of several: removed here, then (through the parent) from
        every other worker's store before the answer, which counts them all."""
        if not self.allowed_to_purge(request.client[0]):
            return Response.text(403, "PURGE not allowed from this address\n")
        target, host = request.target, request.header("host")
        removed = self.purge(target, host)
        try:
            answer = await peers.request("purge", {"target": target, "host": host})
        except (TimeoutError, CommandError, ConnectionError) as exc:
            reason = str(exc) or "no answer in time"
            return Response.text(
                503, f"purged {removed} here; the other workers did not confirm: {reason}\n"
            )
        removed += int(answer["purged"])
        if answer["missing"]:
            return Response.text(
                503, f"purged {removed}; not confirmed by {'; '.join(answer['missing'])}\n"
            )
        return _purged(removed)

    # -- admin ------------------------------------------------------------------------------

    def statistics_view(self) -> dict[str, Any]:
        """The admin JSON: store size, hit ratio and coalescing counters."""
        store = self.store.statistics()
        flights = self.flights.statistics()
        hits, lookups = self.hits_and_lookups()
        return {
            "upstream": self.options.upstream,
            "objects": store.objects,
            "bytes": store.bytes,
            "max_bytes": store.max_bytes,
            "max_object": self.options.max_object,
            "evictions": store.evictions,
            "requests": dict(self.results),
            "hit_ratio": round(hits / lookups, 4) if lookups else 0.0,
            "coalescing": {
                "open": flights.open_flights,
                "leaders": flights.leaders,
                "followers": flights.followers,
                "shared": flights.shared,
                "fallbacks": flights.fallbacks,
            },
            "revalidating": len(self._revalidating),
        }

    async def admin_cache(self, request: AdminRequest) -> AdminResponse:
        """``GET /cache``: the statistics as JSON."""
        return AdminResponse.json(200, json.dumps(self.statistics_view(), indent=2) + "\n")

    async def admin_purge(self, request: AdminRequest) -> AdminResponse:
        """``POST /purge?target=/path[&host=H]``: remove an object (every host without host=)."""
        asked = purge_request(request)
        if isinstance(asked, AdminResponse):
            return asked
        removed = self.purge(*asked)
        return AdminResponse.json(200, json.dumps({"purged": removed}) + "\n")

    def serve_worker_commands(self, link: WorkerLink) -> None:
        """As one worker of :func:`serve_cache_workers`: purge when the parent says
        (``purge``, ``{"target", "host"}`` answers ``{"purged": n}``), and have a client's
        ``PURGE`` reach the other workers through the parent."""

        def purge(payload: dict[str, Any]) -> dict[str, Any]:
            host = payload.get("host")
            return {"purged": self.purge(str(payload["target"]), str(host) if host else None)}

        link.handle("purge", purge)
        self.peers = link


def _purged(removed: int) -> Response:
    if not removed:
        return Response.text(404, "not cached\n")
    return Response.text(200, f"purged {removed}\n")


def purge_request(request: AdminRequest) -> tuple[str, str | None] | AdminResponse:
    """The target and host of ``POST /purge?target=/path[&host=H]``; or the error answer."""
    if request.method not in ("POST", "PURGE"):
        return AdminResponse.text(405, "use POST\n", headers=[("Allow", "POST")])
    targets = request.query.get("target")
    if not targets or not targets[0].startswith("/"):
        return AdminResponse.text(400, "give the object as ?target=/path\n")
    hosts = request.query.get("host")
    return targets[0], hosts[0] if hosts else None


@contextlib.asynccontextmanager
async def open_cache(
    options: CacheOptions, *, registry: CollectorRegistry | None = None
) -> AsyncIterator[CachingProxy]:
    """Run a :class:`CachingProxy` with its connection pool and background task group."""
    async with (
        UpstreamPool(
            connect_timeout=options.connect_timeout,
            response_timeout=options.timeout,
            registry=registry,
            metrics_prefix="podkit_cache_upstream",
            source_address=options.source_address,
        ) as upstreams,
        asyncio.TaskGroup() as group,
    ):
        yield CachingProxy(options, upstreams=upstreams, group=group, registry=registry)


def cache_status(view: Mapping[str, Any]) -> dict[str, Any]:
    """The cache's figures for ``GET /status``: hit ratio, lookups and objects stored."""
    requests = view["requests"]
    hits = int(requests.get("hit", 0)) + int(requests.get("stale", 0))
    lookups = hits + int(requests.get("miss", 0))
    ratio = float(view["hit_ratio"])
    return {
        "hit_ratio": ratio,
        "hits": hits,
        "lookups": lookups,
        "objects": int(view["objects"]),
        "summary": f"hit ratio {ratio:.0%} ({hits} of {lookups} lookups), "
        f"{int(view['objects'])} objects",
    }


async def serve_cache(rt: Runtime, options: CacheOptions) -> None:
    """Serve ``podkit cache`` inside the runtime until it drains."""
    from podkit.engines.http import HTTPServer

    async with open_cache(options, registry=rt.registry) as proxy:
        rt.add_route("/cache", proxy.admin_cache)
        rt.add_route("/purge", proxy.admin_purge)
        rt.add_status(lambda: cache_status(proxy.statistics_view()))
        link = worker_link()
        if link is not None:
            proxy.serve_worker_commands(link)  # one worker of serve_cache_workers
        async with HTTPServer(
            proxy.handle,
            host=options.host,
            port=options.port,
            limits=options.limits,
            reuse_port=options.workers > 1,
            registry=rt.registry,
            metrics_prefix="podkit_cache_http",
            name="cache",
            access_log=dataclasses.replace(options.access_log, cache_header="X-Cache"),
        ) as server:
            rt.on_reload(server.reopen_access_log)
            rt.log.info(
                "listening",
                extra={"listen": f"{options.host}:{server.port}", "upstream": options.upstream},
            )
            rt.set_ready()
            await rt.wait_draining()
            await server.drain(rt.drain_timeout)


async def serve_cache_worker(rt: Runtime, options: CacheOptions) -> None:
    """One worker process of ``podkit cache --workers N`` (see :func:`serve_cache_workers`)."""
    await serve_cache(rt, options)


def workers_cache_view(samples: Sequence[Sample], *, options: CacheOptions) -> dict[str, Any]:
    """The parent's ``/cache`` JSON, built from the workers' merged metrics.

    Sizes, object counts and counters are sums over the workers' stores; ``hit_ratio`` is
    computed from the summed request counts.
    """
    totals: dict[str, float] = {}
    requests = {"hit": 0, "miss": 0, "stale": 0, "pass": 0}
    coalesced = {"shared": 0, "fallback": 0, "timeout": 0}
    for sample in samples:
        if sample.name == "podkit_cache_requests_total":
            result = sample.labels.get("result", "")
            requests[result] = requests.get(result, 0) + int(sample.value)
        elif sample.name == "podkit_cache_coalesced_total":
            outcome = sample.labels.get("outcome", "")
            coalesced[outcome] = coalesced.get(outcome, 0) + int(sample.value)
        elif not sample.labels:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    hits = requests["hit"] + requests["stale"]
    lookups = hits + requests["miss"]
    return {
        "upstream": options.upstream,
        "workers": options.workers,
        "objects": int(totals.get("podkit_cache_objects", 0)),
        "bytes": int(totals.get("podkit_cache_bytes", 0)),
        "max_bytes": int(totals.get("podkit_cache_max_bytes", 0)),
        "max_object": options.max_object,
        "evictions": int(totals.get("podkit_cache_evictions_total", 0)),
        "requests": requests,
        "hit_ratio": round(hits / lookups, 4) if lookups else 0.0,
        "coalesced": coalesced,
    }


async def serve_cache_workers(rt: Runtime, options: CacheOptions) -> None:
    """Serve ``podkit cache`` in ``options.workers`` processes sharing the port, until the
    runtime drains (on :func:`podkit.engines.workers.serve_workers`: one admin endpoint,
    merged metrics, a worker that dies is started again). Each worker has its own store.

    Raises:
        PodkitError: the address cannot be bound, or a worker cannot be started.
    """
    pool = WorkerPool(timeout=options.workers_timeout)

    async def purge_all(
        target: str, host: str | None, exclude: int | None = None
    ) -> tuple[int, list[str], int]:
        """Purge from every worker (but ``exclude``): removed, the missing ones, answers."""
        answers = await pool.broadcast("purge", {"target": target, "host": host}, exclude=exclude)
        removed = sum(int(a.result["purged"]) for a in answers if a.ok)
        return removed, [a.describe() for a in answers if not a.ok], len(answers)

    async def forward_purge(index: int, payload: dict[str, Any]) -> dict[str, Any]:
        # A client's PURGE that one worker took: the others remove the object too.
        host = payload.get("host")
        removed, missing, _ = await purge_all(
            str(payload["target"]), str(host) if host else None, exclude=index
        )
        return {"purged": removed, "missing": missing}

    pool.on_request("purge", forward_purge)

    async def admin_cache(request: AdminRequest) -> AdminResponse:
        view = workers_cache_view(merged_samples(rt.registry, "podkit_cache_"), options=options)
        return AdminResponse.json(200, json.dumps(view, indent=2) + "\n")

    async def admin_purge(request: AdminRequest) -> AdminResponse:
        asked = purge_request(request)
        if isinstance(asked, AdminResponse):
            return asked
        removed, missing, asked_workers = await purge_all(*asked)
        if not asked_workers:
            return AdminResponse.text(503, "no worker is running to purge from; try again\n")
        if missing:
            return AdminResponse.text(
                503, f"purged {removed}; not confirmed by {'; '.join(missing)}\n"
            )
        body = {"purged": removed, "workers": asked_workers}
        return AdminResponse.json(200, json.dumps(body) + "\n")

    rt.add_route("/cache", admin_cache)
    rt.add_route("/purge", admin_purge)
    rt.add_status(
        lambda: cache_status(
            workers_cache_view(merged_samples(rt.registry, "podkit_cache_"), options=options)
        )
    )
    # Hold the port for the workers (bound with SO_REUSEPORT, never listening, so it takes
    # no connections): port 0 becomes one port every worker shares.
    with reserve_port(options.host, options.port) as port:
        shared = dataclasses.replace(options, port=port)
        rt.log.info(
            "starting workers",
            extra={"workers": options.workers, "listen": f"{options.host}:{port}"},
        )
        await serve_workers(
            rt,
            count=options.workers,
            main=serve_cache_worker,
            settings=shared,
            name="cache",
            pool=pool,
        )
