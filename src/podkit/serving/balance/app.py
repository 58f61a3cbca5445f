"""``podkit balance``: the asyncio shell around the balancing core, on the HTTP engine.

Theory of operation. :class:`Balancer` is a handler for :class:`~podkit.engines.http.HTTPServer`.
For each request it asks the :class:`~podkit.serving.balance.EndpointPool` for an endpoint
(by policy and affinity key), forwards the request with the engine's
:class:`~podkit.engines.http.UpstreamPool`, reports the outcome (passive health) and, when
the attempt failed in a way that is safe to repeat, asks again excluding the endpoints already
tried — as long as ``retries`` and the :class:`~podkit.serving.balance.RetryBudget` allow.
An attempt is safe to repeat when its body can be sent again (none, or a small one kept whole
for that) and either nothing reached the backend (connection refused, no connection slot) or
the method is idempotent (RFC 9110 §9.2.2).

Beside the handler, :func:`open_balancer` runs in one task group: the active probe loop
(every ``interval`` it probes every endpoint concurrently and feeds the results to the pool),
the backends-file watcher (re-reads the file when its inode, size or mtime changes) and a
ticker that returns ejected endpoints to rotation on time. SIGHUP re-reads the file too.

An attempt counts against its backend (``in_flight``, which least-request and bounded loads
read) from the moment it is sent until its response body has finished streaming to the
client, failed, or been abandoned: :class:`~podkit.serving.balance._counted.CountedBody`
ends it.

With several workers (:func:`serve_balance_workers`) every worker process runs all of this on
its own; the parent's ``/backends`` is assembled from the workers' merged metric reports, and
its drain by hand is a command broadcast to every worker (and replayed to one started later).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from podkit.engines.errors import UpstreamError
from podkit.engines.http import (
    EMPTY_BODY,
    Forwarding,
    Request,
    Response,
    ServerLimits,
    Upstream,
    UpstreamPool,
    upstream_request_headers,
)
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.http.rules import add_via
from podkit.engines.workers import (
    DEFAULT_COMMAND_TIMEOUT,
    WorkerLink,
    WorkerPool,
    serve_workers,
    worker_link,
)
from podkit.errors import ConfigError, PodkitError
from podkit.runtime import Request as AdminRequest
from podkit.runtime import Response as AdminResponse
from podkit.runtime import Runtime
from podkit.runtime.files import serve_file_changes
from podkit.runtime.logging import get_logger
from podkit.runtime.metrics import LATENCY_BUCKETS
from podkit.serving._workers import Sample, merged_samples, reserve_port
from podkit.serving.balance._affinity import AffinityKey, IPNetwork
from podkit.serving.balance._backends_file import BackendSpec, normalise_url, read_backends_file
from podkit.serving.balance._direct import (
    CODE_LABELS,
    BackendTraffic,
    DirectBalance,
    attempt_answered,
)
from podkit.serving.balance._endpoint import Endpoint, EndpointState, HealthPolicy, Outcome
from podkit.serving.balance._hashing import DEFAULT_HASH_ALGORITHM, HashingRank
from podkit.serving.balance._pickers import (
    HashPicker,
    LeastRequestPicker,
    Picker,
    RoundRobinPicker,
)
from podkit.serving.balance._pool import EndpointPool, Transition
from podkit.serving.balance._retry import (
    DEFAULT_RETRY_MIN_PER_SECOND,
    DEFAULT_RETRY_RATIO,
    RetryBudget,
)

Policy = Literal["round-robin", "least-request", "hash"]
POLICIES: tuple[Policy, ...] = ("round-robin", "least-request", "hash")

DEFAULT_INTERVAL = 1.0  # probe period; Kubernetes' minimum periodSeconds
DEFAULT_PROBE_TIMEOUT = 1.0  # Kubernetes' timeoutSeconds default
DEFAULT_RETRIES = 2  # Envoy's and Linkerd's default of two retries per request
DEFAULT_TIMEOUT = 60.0  # silence allowed from a backend while it answers (nginx 60 s)
DEFAULT_CONNECT_TIMEOUT = 2.0  # a backend on a LAN connects in well under a millisecond
DEFAULT_WATCH_INTERVAL = 0.5  # how often the backends file is checked for a change
RETRY_BUFFER_BYTES = 64 * 1024  # request bodies up to this are kept so they can be re-sent
MAX_PROBE_BODY = 64 * 1024  # a probe answer is read (and dropped) up to this size
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class BalanceOptions:
    """Everything ``podkit balance`` is configured with (parsed and validated at the edge).

    Attributes:
        host, port: where to listen.
        backends: backends given on the command line.
        backends_file: a file of backends to watch (merged with ``backends``).
        probe: the path of the active readiness probe, or None for passive checks only.
        probe_timeout: seconds a probe may take.
        interval: seconds between probe rounds.
        policy: ``round-robin``, ``least-request`` or ``hash``.
        hash_on: what the ``hash`` policy hashes.
        hash_algorithm: the :mod:`podkit.hashing` algorithm (``ring``, ``rendezvous``, ``maglev``).
        bounded_load: the bounded-loads factor for ``hash``, or None.
        trusted_proxies: peers whose ``X-Forwarded-For`` is believed.
        retries: the most retries per request.
        retry_ratio, retry_min_per_second: the retry budget.
        retry_buffer_bytes: request bodies up to this size are kept whole so that a failed
            attempt can be sent again; larger ones stream and are not retried once attempted.
        health: rise, fall, ejection and slow-start thresholds.
        timeout: seconds of backend silence allowed while a response is awaited.
        connect_timeout: seconds to connect to a backend.
        source_address: the local address connections to backends (and probes) leave from.
        limits: the client-facing limits of the HTTP server (sizes, timeouts, connections).
        reuse_port: share the port with other worker processes (SO_REUSEPORT).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    backends: tuple[BackendSpec, ...] = ()
    backends_file: Path | None = None
    probe: str | None = None
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    interval: float = DEFAULT_INTERVAL
    policy: Policy = "round-robin"
    hash_on: AffinityKey = field(default_factory=lambda: AffinityKey("client-ip"))
    hash_algorithm: str = DEFAULT_HASH_ALGORITHM
    bounded_load: float | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    retries: int = DEFAULT_RETRIES
    retry_ratio: float = DEFAULT_RETRY_RATIO
    retry_min_per_second: float = DEFAULT_RETRY_MIN_PER_SECOND
    retry_buffer_bytes: int = RETRY_BUFFER_BYTES
    health: HealthPolicy = field(default_factory=HealthPolicy)
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    source_address: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
    reuse_port: bool = False


def make_picker(options: BalanceOptions, *, rng: random.Random | None = None) -> Picker:
    """The picker for ``options.policy``."""
    if options.policy == "least-request":
        return LeastRequestPicker(rng=rng)
    if options.policy == "hash":
        return HashPicker(HashingRank(options.hash_algorithm), bounded_load=options.bounded_load)
    return RoundRobinPicker()


def _text(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]


class _PoolCollector(Collector):
    """Per-backend gauges read from the pool at scrape time (backends come and go)."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def collect(self) -> list[Metric]:
        stats = self.balancer.pool.statistics(self.balancer.clock())
        state = GaugeMetricFamily(
            "podkit_balance_backend_state",
            "State of each backend (1 for its current state).",
            labels=["backend", "state"],
        )
        in_flight = GaugeMetricFamily(
            "podkit_balance_backend_in_flight",
            "Requests in flight per backend.",
            labels=["backend"],
        )
        weight = GaugeMetricFamily(
            "podkit_balance_backend_weight",
            "Effective weight per backend (slow start included; 0 when out of rotation).",
            labels=["backend"],
        )
        ready = GaugeMetricFamily("podkit_balance_ready_backends", "Backends in rotation.")
        for snap in stats.endpoints:
            for s in EndpointState:
                state.add_metric([snap.url, s.value], 1.0 if snap.state is s else 0.0)
            in_flight.add_metric([snap.url], snap.in_flight)
            weight.add_metric([snap.url], snap.effective_weight)
        ready.add_metric([], stats.ready)
        return [state, in_flight, weight, ready, *self.balancer.traffic_metrics()]


class Balancer:
    """The request handler and control loops of ``podkit balance``.

    Args:
        options: the configuration.
        upstreams: the engine's connection pool for forwarding.
        probes: a separate pool for active probes (so probes never wait behind traffic).
        registry: where metrics are registered (None: no metrics).
        clock: monotonic seconds (injectable for tests).
        on_change: called after any endpoint changes state (e.g. to update readiness).
    """

    def __init__(
        self,
        options: BalanceOptions,
        *,
        upstreams: UpstreamPool,
        probes: UpstreamPool,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Balancer], None] | None = None,
    ) -> None:
        self.options = options
        self.upstreams = upstreams
        self.probes = probes
        self.clock = clock
        self.log = get_logger("balance")
        self.on_change = on_change
        self.pool = EndpointPool(
            make_picker(options), policy=options.health, probed=options.probe is not None
        )
        self.budget = RetryBudget(
            ratio=options.retry_ratio, min_per_second=options.retry_min_per_second
        )
        self.forwarding = Forwarding(trusted_proxies=options.trusted_proxies)
        self._upstream_cache: dict[str, Upstream] = {}
        self._traffic: dict[str, BackendTraffic] = {}
        self.direct: DirectBalance | None = None
        self._file_specs: list[BackendSpec] = []
        self.reloads = 0
        self.reload_errors = 0
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.m_probes = Counter(
            "podkit_balance_probes",
            "Active probe results per backend.",
            ["backend", "result"],
            registry=registry,
        )
        self.m_retries = Counter(
            "podkit_balance_retries", "Attempts retried on another backend.", registry=registry
        )
        self.m_budget_refused = Counter(
            "podkit_balance_retry_budget_exhausted",
            "Retries refused because the retry budget was empty.",
            registry=registry,
        )
        self.m_unavailable = Counter(
            "podkit_balance_no_backend",
            "Requests answered 503 because no backend was in rotation.",
            registry=registry,
        )
        self.m_transitions = Counter(
            "podkit_balance_transitions",
            "Backend state changes, by target state.",
            ["backend", "state"],
            registry=registry,
        )
        registry.register(_PoolCollector(self))

    # -- membership -------------------------------------------------------------------------

    def configured(self) -> list[BackendSpec]:
        """Command-line backends followed by the file's (the file wins on a duplicate URL)."""
        merged = {spec.url: spec for spec in self.options.backends}
        merged.update((spec.url, spec) for spec in self._file_specs)
        return list(merged.values())

    def apply(self, events: Sequence[Transition]) -> None:
        """Log and count state changes (the act half of decide-then-act)."""
        for event in events:
            target = event.target.value if event.target is not None else "forgotten"
            source = event.source.value if event.source is not None else "new"
            self.m_transitions.labels(event.url, target).inc()
            if event.target is None:
                self._traffic.pop(event.url, None)
            self.log.info(
                "backend state",
                extra={"backend": event.url, "from": source, "to": target, "reason": event.reason},
            )
        if events and self.on_change is not None:
            self.on_change(self)

    def reload(self) -> bool:
        """Re-read the backends file and update membership.

        Returns:
            True when the file was read; False (and the old membership kept) on an error.
        """
        if self.options.backends_file is None:
            self.apply(self.pool.update(self.configured(), self.clock()))
            return True
        try:
            specs = read_backends_file(self.options.backends_file)
        except ConfigError as exc:
            self.reload_errors += 1
            self.log.error(
                "backends file rejected; keeping the previous backends", extra={"error": str(exc)}
            )
            return False
        self._file_specs = specs
        self.reloads += 1
        self.apply(self.pool.update(self.configured(), self.clock()))
        return True

    # -- forwarding -------------------------------------------------------------------------

    def _upstream(self, url: str) -> Upstream:
        upstream = self._upstream_cache.get(url)
        if upstream is None:
            upstream = self._upstream_cache[url] = Upstream.parse(url)
        return upstream

    def affinity_key(self, request: Request) -> str | None:
        """The key the ``hash`` policy hashes for this request (None for other policies)."""
        if self.options.policy != "hash":
            return None
        if self.options.hash_on.source == "client-ip" and not self.options.trusted_proxies:
            return request.client[0]
        return self.options.hash_on.extract(
            request.client[0],
            _text(request.headers),
            trusted=self.options.trusted_proxies,
            target=request.target,
        )

    async def handle(self, request: Request) -> Response:
        """Forward one request to a backend, retrying where it is safe."""
        # Ejections end on the ticker (serve_ejection_timer), not per request: the hot path
        # stays free of scans over every endpoint.
        self.budget.deposit(self.clock())
        return await self._forward(request)

    async def _forward(
        self,
        request: Request,
        *,
        picked: tuple[Endpoint | None] | None = None,
        failed: tuple[Endpoint, UpstreamError] | None = None,
    ) -> Response:
        """The retry loop of :meth:`handle`; ``picked`` is the first attempt's backend when
        the direct path chose it already, ``failed`` the direct path's failed attempt."""
        idempotent = request.method in IDEMPOTENT_METHODS
        if request.body is not EMPTY_BODY and not isinstance(request.body, bytes):
            # A small body is kept whole so that a failed attempt can be sent again; a large
            # or unsized one streams and its request is not retried once attempted.
            length = request.header("content-length")
            limit = self.options.retry_buffer_bytes
            if length is not None and length.isdigit() and int(length) <= limit:
                request.body = await request.read(limit)
        replayable = request.body is EMPTY_BODY or isinstance(request.body, bytes)
        tried: list[str] = []
        last_error: UpstreamError | None = None
        if failed is not None:
            tried.append(failed[0].url)
            last_error = failed[1]
            if not self._may_retry(last_error, replayable, idempotent, len(tried)):
                return _failed(last_error)
        key = self.affinity_key(request) if picked is None else None
        headers = upstream_request_headers(request, self.forwarding)
        while True:
            if picked is not None:
                endpoint, picked = picked[0], None
            else:
                endpoint = self.pool.choose(now=self.clock(), key=key, exclude=tried)
            if endpoint is None:
                if last_error is not None:
                    return _failed(last_error)
                self.m_unavailable.inc()
                return Response.text(503, "no ready backend\n", headers=[(b"Retry-After", b"1")])
            tried.append(endpoint.url)
            try:
                return await self._attempt(endpoint, request, headers)
            except UpstreamError as exc:
                last_error = exc
                if not self._may_retry(exc, replayable, idempotent, len(tried)):
                    return _failed(exc)
                if key is None:
                    key = self.affinity_key(request)

    def _may_retry(
        self, exc: UpstreamError, replayable: bool, idempotent: bool, attempts: int
    ) -> bool:
        """Whether a failed attempt is sent again (counting the retry when it is)."""
        safe = replayable and (idempotent or not exc.request_sent)
        if not safe or attempts > self.options.retries:
            return False
        if not self.budget.try_withdraw(self.clock()):
            self.m_budget_refused.inc()
            return False
        self.m_retries.inc()
        return True

    async def _attempt(
        self, endpoint: Endpoint, request: Request, headers: list[tuple[bytes, bytes]]
    ) -> Response:
        self.pool.begin(endpoint)
        started = self.clock()
        try:
            response = await self.upstreams.send(
                self._upstream(endpoint.url), request, headers=headers, timeout=self.options.timeout
            )
        except UpstreamError as exc:
            self._attempt_failed(endpoint, exc)
            raise
        except BaseException:
            # Cancelled (the client left, or a forced stop): the backend is not to blame.
            self.apply(self.pool.end(endpoint, Outcome.ABANDONED, self.clock()))
            raise
        response = self._attempt_answered(endpoint, response, started)
        if self.forwarding.via:
            add_via(response.headers, http_version="1.1", via=self.forwarding.via)
        return response

    def traffic(self, url: str) -> BackendTraffic:
        """The request counters of the backend ``url`` (made on first use)."""
        traffic = self._traffic.get(url)
        if traffic is None:
            traffic = self._traffic[url] = BackendTraffic()
        return traffic

    def traffic_metrics(self) -> list[Metric]:
        """The per-backend request counters and latency histograms as metric families."""
        requests = CounterMetricFamily(
            "podkit_balance_requests",
            "Requests forwarded per backend, by status class (or error).",
            labels=["backend", "code"],
        )
        errors = CounterMetricFamily(
            "podkit_balance_errors",
            "Failed attempts per backend, by kind.",
            labels=["backend", "kind"],
        )
        latency = HistogramMetricFamily(
            "podkit_balance_request_seconds",
            "Time from sending a request to a backend until its response head arrived.",
            labels=["backend"],
        )
        for url, traffic in sorted(self._traffic.items()):
            for index in range(1, 7):
                requests.add_metric([url, CODE_LABELS[index]], traffic.by_class[index])
            for kind, count in sorted(traffic.errors.items()):
                errors.add_metric([url, kind], count)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(
                (*LATENCY_BUCKETS, float("inf")), traffic.latency_counts, strict=True
            ):
                cumulative += count
                buckets.append(
                    ("+Inf" if bound == float("inf") else repr(float(bound)), cumulative)
                )
            latency.add_metric([url], buckets, traffic.latency_sum)
        return [requests, errors, latency]

    def _attempt_failed(self, endpoint: Endpoint, exc: UpstreamError) -> None:
        """Report an attempt that got no response."""
        outcome = Outcome.FAILURE if exc.request_sent else Outcome.CONNECT_FAILURE
        traffic = self.traffic(endpoint.url)
        traffic.failed(outcome.value)
        traffic.by_class[6] += 1
        self.apply(self.pool.end(endpoint, outcome, self.clock()))

    def _attempt_answered(self, endpoint: Endpoint, response: Response, started: float) -> Response:
        """Report an attempt whose response head arrived; a streaming body ends it later."""
        return attempt_answered(self, endpoint, response, started)

    def direct_handler(self) -> DirectBalance:
        """:meth:`handle` as the server's direct path drives it (see :class:`DirectBalance`);
        the last one made is kept as ``self.direct`` (its counters say which path ran)."""
        self.direct = DirectBalance(self)
        return self.direct

    def _ender(self, endpoint: Endpoint, outcome: Outcome) -> Callable[[Outcome | None], None]:
        """What ends a streamed attempt: ``outcome`` unless the body says otherwise."""

        def end(override: Outcome | None) -> None:
            final = override or outcome
            if final is Outcome.FAILURE:
                self.traffic(endpoint.url).failed(final.value)
            events = self.pool.end(endpoint, final, self.clock())
            if events:
                self.apply(events)

        return end

    # -- active probes ----------------------------------------------------------------------

    async def probe(self, endpoint: Endpoint) -> bool:
        """Probe one endpoint: True when it answered 2xx or 3xx within the probe timeout."""
        assert self.options.probe is not None
        upstream = self._upstream(endpoint.url)
        request = Request(
            "GET",
            self.options.probe,
            [(b"Host", upstream.authority.encode()), (b"User-Agent", b"podkit-balance-probe")],
        )
        try:
            async with asyncio.timeout(self.options.probe_timeout):
                response = await self.probes.send(
                    upstream, request, timeout=self.options.probe_timeout
                )
                await response.read(MAX_PROBE_BODY)
        except (TimeoutError, PodkitError, OSError):
            return False
        return 200 <= response.status < 400

    async def probe_round(self) -> None:
        """Probe every endpoint once, concurrently, and record the results."""
        targets = self.pool.probe_targets()
        results: dict[str, bool] = {}

        async def one(endpoint: Endpoint) -> None:
            results[endpoint.url] = await self.probe(endpoint)

        async with asyncio.TaskGroup() as group:
            for endpoint in targets:
                group.create_task(one(endpoint))
        now = self.clock()
        for url, ok in results.items():
            self.m_probes.labels(url, "pass" if ok else "fail").inc()
            self.apply(self.pool.probe_result(url, ok, now))

    async def serve_probes(self) -> None:
        """Probe every ``interval`` until cancelled."""
        while True:
            started = self.clock()
            await self.probe_round()
            await asyncio.sleep(max(0.0, self.options.interval - (self.clock() - started)))

    async def serve_ejection_timer(self, period: float = 0.25) -> None:
        """Return ejected endpoints to rotation on time even without traffic."""
        while True:
            await asyncio.sleep(period)
            self.apply(self.pool.expire_ejections(self.clock()))

    async def serve_file_watch(self, *, interval: float = DEFAULT_WATCH_INTERVAL) -> None:
        """Re-read the backends file whenever it changes, until cancelled."""
        path = self.options.backends_file
        assert path is not None
        await serve_file_changes(path, self.reload, interval=interval)

    # -- admin ------------------------------------------------------------------------------

    def backends_view(self) -> dict[str, Any]:
        """The admin JSON: every backend with its state, weights and counters."""
        now = self.clock()
        stats = self.pool.statistics(now)
        budget = self.budget.statistics(now)
        return {
            "policy": self.options.policy,
            "ready": stats.ready,
            "total": stats.total,
            "backends": [
                {
                    "url": s.url,
                    "state": s.state.value,
                    "weight": s.weight,
                    "effective_weight": round(s.effective_weight, 3),
                    "in_flight": s.in_flight,
                    "requests": s.requests,
                    "errors": s.errors,
                    "ejections": s.ejections,
                    "ejected_for": (
                        round(max(0.0, s.ejected_until - now), 3)
                        if s.ejected_until is not None
                        else None
                    ),
                    "last_probe_ok": s.last_probe_ok,
                    "probe_passes": s.consecutive_probe_passes,
                    "probe_failures": s.consecutive_probe_failures,
                }
                for s in stats.endpoints
            ],
            "retry_budget": {
                "requests": budget.requests,
                "retries": budget.retries,
                "available": round(budget.available, 3),
                "refused": budget.refused,
            },
            "backends_file": {
                "path": str(self.options.backends_file) if self.options.backends_file else None,
                "reloads": self.reloads,
                "errors": self.reload_errors,
            },
        }

    async def admin_backends(self, request: AdminRequest) -> AdminResponse:
        """``GET /backends``: the JSON view of every backend."""
        return AdminResponse.json(200, json.dumps(self.backends_view(), indent=2) + "\n")

    async def admin_drain(self, request: AdminRequest) -> AdminResponse:
        """``POST /backends/drain?url=URL`` (or ``/backends/undrain``): drain by hand."""
        asked = drain_request(request)
        if isinstance(asked, AdminResponse):
            return asked
        url, undo = asked
        if not self.drain_backend(url, undo=undo):
            return AdminResponse.text(404, f"no backend {url}\n")
        return AdminResponse.json(200, json.dumps(self.backends_view(), indent=2) + "\n")

    def drain_backend(self, url: str, *, undo: bool = False) -> bool:
        """Drain (or undrain) one backend by hand. Returns False when it is unknown."""
        if url not in self.pool:
            return False
        now = self.clock()
        self.apply(self.pool.undrain(url, now) if undo else self.pool.drain(url, now))
        return True

    def set_drained_by_hand(self, urls: Sequence[str]) -> None:
        """Make exactly ``urls`` (those the pool knows) the backends drained by hand."""
        wanted = set(urls)
        for url in self.pool.drained_by_hand - wanted:
            self.drain_backend(url, undo=True)
        for url in wanted:
            self.drain_backend(url)

    def serve_worker_commands(self, link: WorkerLink) -> None:
        """As one worker of :func:`serve_balance_workers`: drain by hand when the parent says.

        ``drain`` (``{"url", "undo"}``) answers ``{"known": bool}``; ``drained`` (``{"urls"}``)
        sets the whole hand-drained set (the parent's replay to a worker started later).
        """

        def drain(payload: dict[str, Any]) -> dict[str, Any]:
            url = str(payload["url"])
            return {"known": self.drain_backend(url, undo=bool(payload.get("undo")))}

        def drained(payload: dict[str, Any]) -> dict[str, Any]:
            self.set_drained_by_hand([str(url) for url in payload.get("urls", [])])
            return {"drained": sorted(self.pool.drained_by_hand)}

        link.handle("drain", drain)
        link.handle("drained", drained)


def drain_request(request: AdminRequest) -> tuple[str, bool] | AdminResponse:
    """The backend URL and whether to undrain, from ``POST /backends/(un)drain?url=URL``; or
    the error answer."""
    if request.method != "POST":
        return AdminResponse.text(405, "use POST\n", headers=[("Allow", "POST")])
    urls = request.query.get("url")
    if not urls:
        return AdminResponse.text(400, "give the backend as ?url=http://host:port\n")
    try:
        url = normalise_url(urls[0])
    except ConfigError as exc:
        return AdminResponse.text(400, f"{exc}\n")
    return url, request.path.endswith("/undrain")


def _failed(exc: UpstreamError) -> Response:
    """The answer when no attempt got a response: 502, 503 or 504 as the engine says."""
    return Response.text(exc.status, f"backend failed: {exc}\n")


@contextlib.asynccontextmanager
async def open_balancer(
    options: BalanceOptions,
    *,
    registry: CollectorRegistry | None = None,
    on_change: Callable[[Balancer], None] | None = None,
) -> AsyncIterator[Balancer]:
    """Run a :class:`Balancer` with its probe, watcher and ejection loops.

    Raises:
        ConfigError: the backends file cannot be read at start.
    """
    if options.backends_file is not None:
        read_backends_file(options.backends_file)  # fail fast with a clear error at start
    async with (
        UpstreamPool(
            connect_timeout=options.connect_timeout,
            response_timeout=options.timeout,
            registry=registry,
            metrics_prefix="podkit_balance_upstream",
            source_address=options.source_address,
        ) as upstreams,
        UpstreamPool(
            connect_timeout=options.probe_timeout,
            response_timeout=options.probe_timeout,
            max_idle_per_upstream=1,
            source_address=options.source_address,
        ) as probes,
    ):
        balancer = Balancer(
            options, upstreams=upstreams, probes=probes, registry=registry, on_change=on_change
        )
        balancer.reload()
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(balancer.serve_ejection_timer())]
            if options.probe is not None:
                tasks.append(group.create_task(balancer.serve_probes()))
            if options.backends_file is not None:
                tasks.append(group.create_task(balancer.serve_file_watch()))
            try:
                yield balancer
            finally:
                for task in tasks:
                    task.cancel()


def backends_status(view: Mapping[str, Any]) -> dict[str, Any]:
    """The balancer's figures for ``GET /status``: backends ready out of all."""
    ready, total = int(view["ready"]), int(view["total"])
    return {
        "backends_ready": ready,
        "backends": total,
        "summary": f"backends {ready}/{total} ready",
    }


async def serve_balance(rt: Runtime, options: BalanceOptions) -> None:
    """Serve ``podkit balance`` inside the runtime until it drains."""
    from podkit.engines.http import HTTPServer

    def readiness(balancer: Balancer) -> None:
        if rt.draining.is_set():
            return
        if balancer.pool.candidates():
            rt.set_ready()
        else:
            rt.set_not_ready("no ready backend")

    async with open_balancer(options, registry=rt.registry, on_change=readiness) as balancer:

        def reload_backends() -> None:
            balancer.reload()

        rt.on_reload(reload_backends)
        rt.add_route("/backends", balancer.admin_backends)
        rt.add_status(lambda: backends_status(balancer.backends_view()))

        rt.add_route("/backends/drain", balancer.admin_drain)
        rt.add_route("/backends/undrain", balancer.admin_drain)
        link = worker_link()
        if link is not None:
            # One worker of serve_balance_workers: the parent's admin endpoint drains by hand
            # through its command channel. Registered before listening: a worker started
            # after a drain by hand applies it here, before it takes any request.
            balancer.serve_worker_commands(link)
        readiness(balancer)
        async with HTTPServer(
            balancer.direct_handler(),
            host=options.host,
            port=options.port,
            limits=options.limits,
            reuse_port=options.reuse_port,
            registry=rt.registry,
            metrics_prefix="podkit_balance_http",
            name="balance",
            access_log=options.access_log,
        ) as server:
            rt.on_reload(server.reopen_access_log)
            rt.log.info(
                "listening",
                extra={
                    "listen": f"{options.host}:{server.port}",
                    "policy": options.policy,
                    "backends": len(balancer.pool),
                },
            )
            await rt.wait_draining()
            await server.drain(rt.drain_timeout)


async def serve_balance_worker(rt: Runtime, options: BalanceOptions) -> None:
    """One worker process of ``podkit balance --workers N`` (see :func:`serve_balance_workers`)."""
    await serve_balance(rt, options)


def workers_backends_view(
    samples: Sequence[Sample], *, policy: str, workers: int
) -> dict[str, Any]:
    """The parent's ``/backends`` JSON, built from the workers' merged metrics.

    Every worker probes and ejects on its own, so each backend is listed with ``states``: how
    many workers see it in each state; ``state`` is the state they all agree on, or
    ``"mixed"``. Counters (``requests``, ``errors``, ``in_flight``, probe results) are sums
    over the workers; ``effective_weight`` is the workers' mean.
    """
    backends: dict[str, dict[str, Any]] = {}

    def entry(url: str) -> dict[str, Any]:
        found = backends.get(url)
        if found is None:
            found = backends[url] = {
                "url": url,
                "state": "unknown",
                "states": {},
                "effective_weight": 0.0,
                "in_flight": 0,
                "requests": 0,
                "errors": 0,
                "probes": {"pass": 0, "fail": 0},
            }
        return found

    for sample in samples:
        url = sample.labels.get("backend")
        if url is None:
            continue
        name, value = sample.name, sample.value
        if name == "podkit_balance_backend_state":
            if value > 0:
                counts = entry(url)["states"]
                counts[sample.labels["state"]] = counts.get(sample.labels["state"], 0) + int(value)
            else:
                entry(url)
        elif name == "podkit_balance_backend_weight":
            entry(url)["effective_weight"] += value
        elif name == "podkit_balance_backend_in_flight":
            entry(url)["in_flight"] += int(value)
        elif name == "podkit_balance_requests_total":
            entry(url)["requests"] += int(value)
        elif name == "podkit_balance_errors_total":
            entry(url)["errors"] += int(value)
        elif name == "podkit_balance_probes_total":
            probes = entry(url)["probes"]
            result = sample.labels.get("result", "")
            probes[result] = probes.get(result, 0) + int(value)
    listed = []
    for data in backends.values():
        states: dict[str, int] = data["states"]
        seen_by = sum(states.values())
        if len(states) == 1:
            data["state"] = next(iter(states))
        elif states:
            data["state"] = "mixed"
        data["effective_weight"] = round(data["effective_weight"] / seen_by, 3) if seen_by else 0.0
        listed.append(data)
    return {
        "policy": policy,
        "workers": workers,
        "ready": sum(1 for b in listed if b["state"] == EndpointState.READY.value),
        "total": len(listed),
        "backends": listed,
    }


async def serve_balance_workers(
    rt: Runtime,
    options: BalanceOptions,
    *,
    workers: int,
    workers_timeout: float = DEFAULT_COMMAND_TIMEOUT,
) -> None:
    """Serve ``podkit balance`` in ``workers`` processes sharing the port, until the runtime
    drains (on :func:`podkit.engines.workers.serve_workers`: one admin endpoint, merged
    metrics, a worker that dies is started again).

    ``POST /backends/drain|undrain?url=`` is broadcast to every worker, each answering within
    ``workers_timeout``; the parent keeps the backends drained by hand and replays them to a
    worker started later.

    Raises:
        PodkitError: the address cannot be bound, or a worker cannot be started.
    """
    pool = WorkerPool(timeout=workers_timeout)
    drained: set[str] = set()  # by hand, through this endpoint
    pool.replay_with(lambda: [("drained", {"urls": sorted(drained)})])

    def view() -> dict[str, Any]:
        samples = merged_samples(rt.registry, "podkit_balance_")
        return workers_backends_view(samples, policy=options.policy, workers=workers)

    async def admin_backends(request: AdminRequest) -> AdminResponse:
        return AdminResponse.json(200, json.dumps(view(), indent=2) + "\n")

    async def admin_drain(request: AdminRequest) -> AdminResponse:
        asked = drain_request(request)
        if isinstance(asked, AdminResponse):
            return asked
        url, undo = asked
        verb = "undrain" if undo else "drain"
        had = url in drained
        # Recorded first: a worker whose first report arrives meanwhile gets it by replay.
        if undo:
            drained.discard(url)
        else:
            drained.add(url)
        answers = await pool.broadcast("drain", {"url": url, "undo": undo})
        if not answers:
            return AdminResponse.text(503, f"no worker is running to {verb} {url}; try again\n")
        missing = [answer for answer in answers if not answer.ok]
        known = any(answer.ok and answer.result.get("known") for answer in answers)
        if not missing and not known:
            if had:
                drained.add(url)
            else:
                drained.discard(url)
            return AdminResponse.text(404, f"no backend {url}\n")
        if missing:
            names = "; ".join(answer.describe() for answer in missing)
            return AdminResponse.text(
                503,
                f"{verb} of {url} not confirmed by {names} (the others applied it, and workers "
                "started later will); send it again\n",
            )
        # Every worker reported its metrics just before answering: the view is current.
        return AdminResponse.json(200, json.dumps(view(), indent=2) + "\n")

    rt.add_route("/backends", admin_backends)
    rt.add_route("/backends/drain", admin_drain)
    rt.add_route("/backends/undrain", admin_drain)
    rt.add_status(lambda: backends_status(view()))
    # Hold the port for the workers (bound with SO_REUSEPORT, never listening, so it takes
    # no connections): port 0 becomes one port every worker shares.
    with reserve_port(options.host, options.port) as port:
        shared = dataclasses.replace(options, port=port, reuse_port=True)
        rt.log.info(
            "starting workers", extra={"workers": workers, "listen": f"{options.host}:{port}"}
        )
        await serve_workers(
            rt,
            count=workers,
            main=serve_balance_worker,
            settings=shared,
            name="balance",
            pool=pool,
        )
