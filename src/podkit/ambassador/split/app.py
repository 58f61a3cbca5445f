"""``podkit split``: the asyncio shell around the split, shadow, diff and ramp cores, on the
HTTP engine.

Theory of operation. :class:`Splitter` is a handler for :class:`~podkit.engines.http.HTTPServer`.
For each request the :class:`~podkit.ambassador.split.SplitTable` names an arm (a match rule,
the user's sticky point, or a random point); the request is forwarded to that arm with the
engine's :class:`~podkit.engines.http.UpstreamPool` and the outcome is counted per arm (status
class, latency histogram) and fed to the :class:`~podkit.ambassador.split.Ramp`. A request the
primary answers may also be offered to the :class:`~podkit.ambassador.split.ShadowMirror`
(without waiting); with ``--diff`` the primary's answer is captured for the comparison, whole
when it came with its head or is small and sized, teed as it streams otherwise.

Beside the handler, :func:`open_splitter` runs in one task group: the shadow workers, the ramp
ticker (which applies the ramp's weight) and the config-file watcher. SIGHUP re-reads the
config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from podkit.ambassador.split._assign import (
    PRIMARY,
    RouteRule,
    SplitTable,
    StickyKey,
    format_percent,
    parse_percent,
)
from podkit.ambassador.split._config import ArmSpec, TableSpec, read_split_config
from podkit.ambassador.split._diff import (
    DEFAULT_IGNORED_HEADERS,
    Captured,
    DiffBoard,
    DiffLimits,
)
from podkit.ambassador.split._direct import (
    CODE_LABELS,
    ArmTraffic,
    DirectSplit,
    mirrored,
    quick_arm,
)
from podkit.ambassador.split._direct import record as _record
from podkit.ambassador.split._ramp import (
    DEFAULT_MIN_REQUESTS,
    DEFAULT_P99_FLOOR,
    Ramp,
    RampDecision,
    RampState,
    RollbackRule,
)
from podkit.ambassador.split._shadow import (
    DEFAULT_SHADOW_CONCURRENCY,
    DEFAULT_SHADOW_MAX_BODY,
    DEFAULT_SHADOW_MAX_RATE,
    DEFAULT_SHADOW_QUEUE,
    DEFAULT_SHADOW_TIMEOUT,
    ShadowJob,
    ShadowMirror,
    _captured,
)
from podkit.engines.errors import UpstreamError
from podkit.engines.http import (
    EMPTY_BODY,
    Body,
    Forwarding,
    Request,
    Response,
    ServerLimits,
    Upstream,
    UpstreamPool,
    upstream_request_headers,
)
from podkit.engines.http.access_log import AccessLogSettings
from podkit.errors import ConfigError
from podkit.runtime import Request as AdminRequest
from podkit.runtime import Response as AdminResponse
from podkit.runtime import Runtime
from podkit.runtime.files import serve_file_changes
from podkit.runtime.logging import get_logger
from podkit.runtime.metrics import LATENCY_BUCKETS
from podkit.serving.balance._affinity import IPNetwork, client_ip

DEFAULT_CONNECT_TIMEOUT = 2.0  # an upstream on a LAN connects in well under a millisecond
DEFAULT_TIMEOUT = 60.0  # silence allowed from an arm while it answers (nginx 60 s)
DEFAULT_WATCH_INTERVAL = 0.5  # how often the config file is checked for a change
DEFAULT_RAMP_TICK = 0.25  # how often the ramp's rules are checked (breaches act at once)
MAX_ADMIN_BODY = 64 * 1024  # a POST /split/weights body above this is refused


@dataclass(frozen=True, slots=True)
class ShadowOptions:
    """Where and how requests are mirrored."""

    url: str
    rate: float = 1.0
    max_body: int = DEFAULT_SHADOW_MAX_BODY
    unsafe: bool = False
    queue: int = DEFAULT_SHADOW_QUEUE
    concurrency: int = DEFAULT_SHADOW_CONCURRENCY
    timeout: float = DEFAULT_SHADOW_TIMEOUT
    max_rate: float = DEFAULT_SHADOW_MAX_RATE


@dataclass(frozen=True, slots=True)
class RampOptions:
    """The progressive delivery of one arm."""

    steps: tuple[float, ...]
    every: float
    rules: tuple[RollbackRule, ...] = ()
    arm: str = "candidate"
    min_requests: int = DEFAULT_MIN_REQUESTS
    p99_floor: float = DEFAULT_P99_FLOOR


@dataclass(frozen=True, slots=True)
class SplitOptions:
    """Everything ``podkit split`` is configured with (parsed and validated at the edge).

    Attributes:
        host, port: where to listen.
        table: arms, weights, routes and sticky key (from flags or the config file).
        config: the YAML file the table came from (watched, re-read on SIGHUP), or None.
        shadow: mirroring, or None.
        diff: compare the shadow's answers with the primary's.
        primary_b: a second primary instance for noise, or None.
        diff_ignore_headers: header fields left out of comparisons.
        diff_limits: the bounds of the diffs' memory and work.
        ramp: progressive delivery, or None.
        trusted_proxies: peers whose ``X-Forwarded-*`` is kept and extended.
        timeout, connect_timeout: the arms' timeouts.
        source_address: the local address connections to the arms leave from.
        limits: the client-facing limits of the HTTP server.
        access_log: the access log's settings.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    table: TableSpec = field(default_factory=lambda: TableSpec(arms=()))
    config: Path | None = None
    shadow: ShadowOptions | None = None
    diff: bool = False
    primary_b: str | None = None
    diff_ignore_headers: frozenset[str] = DEFAULT_IGNORED_HEADERS
    diff_limits: DiffLimits = field(default_factory=DiffLimits)
    ramp: RampOptions | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    source_address: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)


class _SplitCollector(Collector):
    """Per-arm, shadow, diff and ramp figures read at scrape time."""

    def __init__(self, splitter: Splitter) -> None:
        self.splitter = splitter

    def collect(self) -> list[Metric]:
        s = self.splitter
        requests = CounterMetricFamily(
            "podkit_split_requests",
            "Requests per arm, by status class (or error: no answer).",
            labels=["arm", "code"],
        )
        latency = HistogramMetricFamily(
            "podkit_split_request_seconds",
            "Time from sending a request to an arm until its response head arrived.",
            labels=["arm"],
        )
        weight = GaugeMetricFamily(
            "podkit_split_weight", "Each arm's share of split traffic (0..1).", labels=["arm"]
        )
        for name, share in s.table.shares().items():
            weight.add_metric([name], share)
        for name, traffic in sorted(s.traffic.items()):
            for index in range(1, 7):
                requests.add_metric([name, CODE_LABELS[index]], traffic.by_class[index])
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(
                (*LATENCY_BUCKETS, float("inf")), traffic.latency_counts, strict=True
            ):
                cumulative += count
                buckets.append(
                    ("+Inf" if bound == float("inf") else repr(float(bound)), cumulative)
                )
            latency.add_metric([name], buckets, traffic.latency_sum)
        found: list[Metric] = [requests, latency, weight]
        if s.shadow is not None:
            shadow = CounterMetricFamily(
                "podkit_split_shadow",
                "Shadow copies by result: sent, answered, failed, dropped (queue full), "
                "skipped-unsafe, skipped-body, skipped-sampled-out.",
                labels=["result"],
            )
            for result, count in sorted(s.shadow.counts.items()):
                shadow.add_metric([result], count)
            queued = GaugeMetricFamily("podkit_split_shadow_queued", "Shadow jobs waiting.")
            queued.add_metric([], s.shadow.queue.qsize())
            found += [shadow, queued]
        if s.board is not None:
            compared = CounterMetricFamily(
                "podkit_split_diff_compared", "Answers compared, per route.", labels=["route"]
            )
            regressions = CounterMetricFamily(
                "podkit_split_diff_regressions",
                "Compared answers with a difference that is not noise, per route.",
                labels=["route"],
            )
            paths = CounterMetricFamily(
                "podkit_split_diff_path",
                "Differences per route and path, by kind (mismatch, noise, regression).",
                labels=["route", "path", "kind"],
            )
            for route, counts in sorted(s.board.routes.items()):
                compared.add_metric([route], counts.compared)
                regressions.add_metric([route], counts.regressions)
                for path, p in sorted(counts.paths.items()):
                    paths.add_metric([route, path, "mismatch"], p.mismatches)
                    paths.add_metric([route, path, "noise"], p.noise)
                    paths.add_metric([route, path, "regression"], p.regressions)
            found += [compared, regressions, paths]
        if s.ramp is not None:
            state = GaugeMetricFamily(
                "podkit_split_ramp_state",
                "The ramp's state (1 for the current one).",
                labels=["state"],
            )
            for st in RampState:
                state.add_metric([st.value], 1.0 if s.ramp.state is st else 0.0)
            rollbacks = CounterMetricFamily(
                "podkit_split_ramp_rollbacks",
                "Ramps rolled back to weight 0, by breached rule (5xx, p99, diff).",
                labels=["rule"],
            )
            for rule, count in sorted(s.rollbacks.items()):
                rollbacks.add_metric([rule], count)
            found += [state, rollbacks]
        return found


def _text(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]


class Splitter:
    """The request handler and control loops of ``podkit split``.

    Args:
        options: the configuration.
        upstreams: the engine's connection pool for the arms.
        shadows: the pool for shadow copies (so they never take the arms' connections).
        registry: where metrics are registered (None: none).
        clock: monotonic seconds (injectable for tests).
        rng: the random source of unsticky requests and shadow sampling.
    """

    def __init__(
        self,
        options: SplitOptions,
        *,
        upstreams: UpstreamPool,
        shadows: UpstreamPool | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.upstreams = upstreams
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.log = get_logger("split")
        self.forwarding = Forwarding(trusted_proxies=options.trusted_proxies)
        self.spec = options.table
        self.table = self._build(options.table)
        self.arm_urls: dict[str, Upstream] = {a.name: Upstream.parse(a.url) for a in self.spec.arms}
        self._targets: dict[str, tuple[Upstream, bytes]] = {}
        self.traffic: dict[str, ArmTraffic] = {a.name: ArmTraffic() for a in self.spec.arms}
        self.reloads = 0
        self.reload_errors = 0
        self.rollbacks: dict[str, int] = {}
        self.board: DiffBoard | None = (
            DiffBoard(options.diff_ignore_headers, limits=options.diff_limits)
            if options.diff
            else None
        )
        self.shadow: ShadowMirror | None = None
        if options.shadow is not None:
            assert shadows is not None
            self.shadow = ShadowMirror(
                Upstream.parse(options.shadow.url),
                shadows,
                queue_size=options.shadow.queue,
                concurrency=options.shadow.concurrency,
                timeout=options.shadow.timeout,
                primary_b=Upstream.parse(options.primary_b) if options.primary_b else None,
                on_diff=self._diffed if options.diff else None,
                response_limit=options.diff_limits.max_body,
                max_rate=options.shadow.max_rate,
            )
        self.ramp: Ramp | None = None
        if options.ramp is not None:
            r = options.ramp
            self.ramp = Ramp(
                r.steps, r.every, r.rules, min_requests=r.min_requests, p99_floor=r.p99_floor
            )
        self._needs_text = bool(self.table.routes) or (
            self.table.sticky is not None and self.table.sticky.source != "client-ip"
        )
        if registry is not None:
            registry.register(_SplitCollector(self))

    def _build(self, spec: TableSpec) -> SplitTable:
        return SplitTable(
            [a.name for a in spec.arms],
            spec.weights,
            routes=spec.routes,
            sticky=spec.sticky,
            rng=self.rng,
        )

    # -- configuration ----------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file and apply its arms, weights, routes and sticky key.

        Returns:
            True when it was applied; False (the previous table kept) on an error.
        """
        path = self.options.config
        if path is None:
            return True
        try:
            spec = read_split_config(path)
            table = self._build(spec)
            urls = {a.name: Upstream.parse(a.url) for a in spec.arms}
        except ConfigError as exc:
            self.reload_errors += 1
            self.log.error("config rejected; keeping the previous one", extra={"error": str(exc)})
            return False
        if self.ramp is not None and self.ramp.state is RampState.RAMPING:
            arm = self.options.ramp.arm if self.options.ramp else ""
            if arm in table.weights:
                table.set_weights({arm: self.table.weights.get(arm, self.ramp.weight)})
        self.spec, self.table, self.arm_urls = spec, table, urls
        self._targets = {}
        for name in urls:
            self.traffic.setdefault(name, ArmTraffic())
        self._needs_text = bool(table.routes) or (
            table.sticky is not None and table.sticky.source != "client-ip"
        )
        self.reloads += 1
        self.log.info(
            "config applied",
            extra={"weights": {k: format_percent(v) for k, v in table.shares().items()}},
        )
        return True

    def set_weights(self, weights: Mapping[str, float], *, by: str = "admin") -> dict[str, float]:
        """Change weights at run time; a hand-set weight of the ramped arm stops the ramp.

        Raises:
            ConfigError: an unknown arm or weights above 100 %.
        """
        result = self.table.set_weights(weights)
        ramp = self.ramp
        if (
            ramp is not None
            and self.options.ramp is not None
            and self.options.ramp.arm in weights
            and ramp.state is RampState.RAMPING
        ):
            ramp.stop(self.clock(), f"weight set by {by}")
        self.log.info(
            "weights changed",
            extra={"by": by, "weights": {k: format_percent(v) for k, v in result.items()}},
        )
        return result

    # -- forwarding -------------------------------------------------------------------------

    def arm_for(self, request: Request) -> str:
        """The arm that answers ``request``."""
        arm = quick_arm(self, request)  # the common cases, without decoding every field
        if arm is not None:
            return arm
        table = self.table
        sticky = table.sticky
        trusted = self.options.trusted_proxies
        headers = _text(request.headers) if self._needs_text or trusted else []
        client = request.client[0]
        if trusted and sticky is not None:
            # Behind a trusted proxy the user's address is in X-Forwarded-For.
            client = client_ip(client, headers, trusted=trusted)
        return table.assign(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=headers,
            client=client,
        ).arm

    def record(self, arm: str, status: int | None, seconds: float) -> None:
        """Count one attempt (``status`` None: no answer) and feed the ramp."""
        _record(self, arm, status, seconds)

    def arm_target(self, arm: str) -> tuple[Upstream, bytes]:
        """``arm``'s upstream and the Host value sent to it (kept until a reload)."""
        target = self._targets.get(arm)
        if target is None:
            upstream = self.arm_urls[arm]
            target = self._targets[arm] = (upstream, upstream.authority.encode("idna"))
        return target

    async def _shadow_job(self, request: Request) -> ShadowJob | None:
        """The shadow copy of ``request``, or None when it is not mirrored (counted)."""
        shadow = self.shadow
        settings = self.options.shadow
        assert shadow is not None
        assert settings is not None
        if not mirrored(self, request):
            return None
        if shadow.queue.full():
            # Seen before the copy is made (and its body read): a copy that would be
            # dropped costs the primary path one check.
            shadow.count("dropped")
            return None
        body = b""
        if request.body is not EMPTY_BODY:
            if isinstance(request.body, bytes):
                body = request.body
            else:
                length = request.header("content-length")
                if length is None or not length.isdigit() or int(length) > settings.max_body:
                    shadow.count("skipped-body")
                    return None
                body = request.body = await request.read(settings.max_body)
            if len(body) > settings.max_body:
                shadow.count("skipped-body")
                return None
        # The same fields the primary gets, Host included: the shadow sees the same request.
        headers = upstream_request_headers(request, self.forwarding)
        primary = asyncio.get_running_loop().create_future() if self.board is not None else None
        return ShadowJob(
            request.method,
            request.target,
            headers,
            body,
            route=f"{request.method} {request.path}",
            primary=primary,
            enqueued=self.clock(),
        )

    async def handle(self, request: Request) -> Response:
        """Forward one request to its arm (and mirror it when it is the primary's)."""
        return await self.forward(request, self.arm_for(request))

    def direct_handler(self) -> DirectSplit:
        """:meth:`handle` as the server's direct path drives it (see :class:`DirectSplit`)."""
        return DirectSplit(self)

    async def forward(
        self,
        request: Request,
        arm: str,
        *,
        job: ShadowJob | None = None,
        shadow_decided: bool = False,
    ) -> Response:
        """Forward ``request`` to ``arm`` (chosen already), mirroring it when it is the
        primary's and a shadow is set (``shadow_decided``: as ``job`` says, decided by the
        direct path)."""
        if not shadow_decided and self.shadow is not None and arm == self.table.primary:
            job = await self._shadow_job(request)
        headers = upstream_request_headers(request, self.forwarding)
        started = self.clock()
        try:
            response = await self.upstreams.send(
                self.arm_urls[arm], request, headers=headers, timeout=self.options.timeout
            )
        except UpstreamError as exc:
            self.record(arm, None, self.clock() - started)
            if job is not None and job.primary is not None:
                job.primary.set_result(None)
                self.shadow.offer(job)  # type: ignore[union-attr]
            return Response.text(exc.status, f"{arm} failed: {exc}\n")
        self.record(arm, response.status, self.clock() - started)
        if job is not None:
            if job.primary is not None:
                response = await self._capture(response, job.primary)
            assert self.shadow is not None
            self.shadow.offer(job)
        return response

    async def _capture(self, response: Response, into: asyncio.Future[Captured | None]) -> Response:
        """Hand the primary's answer to a diff: whole when it is at hand or small and sized;
        teed as it streams to the client otherwise (never larger than ``diff_limits.max_body``)."""
        limit = self.options.diff_limits.max_body
        body = response.body
        if isinstance(body, bytes):
            into.set_result(_captured(response.status, response.headers, body))
            return response
        length = response.header("content-length")
        if length is not None and length.isdigit():
            if int(length) > limit:
                into.set_result(None)
                return response
            data = await response.read(limit)
            into.set_result(_captured(response.status, response.headers, data))
            response.body = data
            return response
        if not isinstance(body, Body):
            into.set_result(None)
            return response
        status, fields = response.status, response.headers

        async def tee() -> AsyncIterator[bytes]:
            kept: list[bytes] = []
            size = 0
            complete = False
            try:
                async for chunk in body:
                    if size <= limit:
                        kept.append(chunk)
                        size += len(chunk)
                    yield chunk
                complete = True
            finally:
                if not into.done():
                    ok = complete and size <= limit
                    into.set_result(_captured(status, fields, b"".join(kept)) if ok else None)

        response.body = tee()
        return response

    def _diffed(
        self, job: ShadowJob, primary: Captured, shadow: Captured, second: Captured | None
    ) -> None:
        assert self.board is not None
        result = self.board.record(
            job.route, primary, shadow, second, request=f"{job.method} {job.target}"
        )
        if self.ramp is not None and self.ramp.state is RampState.RAMPING:
            self.ramp.observe_diff(result.regression)

    # -- ramp -------------------------------------------------------------------------------

    def apply_ramp(self, decision: RampDecision | None) -> None:
        """Set the ramped arm's weight as the ramp decided, and say why."""
        if decision is None or self.options.ramp is None:
            return
        arm = self.options.ramp.arm
        self.table.set_weights({arm: decision.weight})
        if decision.action == "rollback":
            for rule in decision.rules:
                self.rollbacks[rule] = self.rollbacks.get(rule, 0) + 1
            self.log.error(
                "ramp rolled back",
                extra={"arm": arm, "weight": format_percent(0.0), "reason": decision.reason},
            )
        else:
            self.log.info(
                f"ramp {decision.action}",
                extra={
                    "arm": arm,
                    "weight": format_percent(decision.weight),
                    "reason": decision.reason,
                },
            )

    async def serve_ramp(self, *, period: float = DEFAULT_RAMP_TICK) -> None:
        """Start the ramp and check it every ``period`` until cancelled."""
        assert self.ramp is not None
        self.apply_ramp(self.ramp.start(self.clock()))
        while True:
            await asyncio.sleep(min(period, self.ramp.every / 4))
            self.apply_ramp(self.ramp.tick(self.clock()))

    async def serve_config_watch(self, *, interval: float = DEFAULT_WATCH_INTERVAL) -> None:
        """Re-read the config file whenever it changes, until cancelled."""
        path = self.options.config
        assert path is not None
        await serve_file_changes(path, self.reload, interval=interval)

    # -- admin ------------------------------------------------------------------------------

    def split_view(self) -> dict[str, Any]:
        """The ``GET /split`` JSON: arms with weights and counts, routes, ramp, shadow."""
        shares = self.table.shares()
        view: dict[str, Any] = {
            "primary": self.table.primary,
            "sticky": str(self.table.sticky) if self.table.sticky else None,
            "arms": [
                {
                    "name": a.name,
                    "url": a.url,
                    "weight": format_percent(shares.get(a.name, 0.0)),
                    **self.traffic.get(a.name, ArmTraffic()).as_json(),
                }
                for a in self.spec.arms
            ],
            "routes": [str(r) for r in self.table.routes],
            "ramp": self.ramp.statistics(self.clock()) if self.ramp is not None else None,
            "config": {
                "path": str(self.options.config) if self.options.config else None,
                "reloads": self.reloads,
                "errors": self.reload_errors,
            },
        }
        if self.shadow is not None and self.options.shadow is not None:
            view["shadow"] = {
                "url": self.options.shadow.url,
                "rate": format_percent(self.options.shadow.rate),
                "queued": self.shadow.queue.qsize(),
                "in_flight": self.shadow.in_flight,
                "sent_direct": self.shadow.sent_direct,
                **self.shadow.counts,
            }
        else:
            view["shadow"] = None
        return view

    async def admin_split(self, request: AdminRequest) -> AdminResponse:
        """``GET /split``."""
        return AdminResponse.json(200, json.dumps(self.split_view(), indent=2) + "\n")

    async def admin_weights(self, request: AdminRequest) -> AdminResponse:
        """``POST /split/weights`` with ``{"candidate": "20%"}`` (or ``?candidate=20%``)."""
        if request.method != "POST":
            return AdminResponse.text(405, "use POST\n", headers=[("Allow", "POST")])
        if len(request.body) > MAX_ADMIN_BODY:
            return AdminResponse.text(413, f"body above {MAX_ADMIN_BODY} bytes\n")
        asked: dict[str, Any] = {k: v[0] for k, v in request.query.items() if v}
        if request.body.strip():
            try:
                loaded = json.loads(request.body)
            except ValueError:
                return AdminResponse.text(400, 'expected JSON such as {"candidate": "20%"}\n')
            if not isinstance(loaded, dict):
                return AdminResponse.text(400, 'expected JSON such as {"candidate": "20%"}\n')
            asked.update(loaded)
        if not asked:
            return AdminResponse.text(400, 'give weights such as {"candidate": "20%"}\n')
        try:
            weights = {
                str(arm): parse_percent(value, field=f"weights.{arm}")
                for arm, value in asked.items()
            }
            self.set_weights(weights)
        except ConfigError as exc:
            return AdminResponse.text(400, f"{exc}\n")
        return AdminResponse.json(200, json.dumps(self.split_view(), indent=2) + "\n")

    async def admin_diff(self, request: AdminRequest) -> AdminResponse:
        """``GET /diff``."""
        if self.board is None:
            return AdminResponse.text(404, "diffs are off: start with --diff\n")
        return AdminResponse.json(200, json.dumps(self.board.statistics(), indent=2) + "\n")


@contextlib.asynccontextmanager
async def open_splitter(
    options: SplitOptions,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Splitter]:
    """Run a :class:`Splitter` with its shadow workers, ramp ticker and config watcher."""
    async with contextlib.AsyncExitStack() as stack:
        upstreams = await stack.enter_async_context(
            UpstreamPool(
                connect_timeout=options.connect_timeout,
                response_timeout=options.timeout,
                registry=registry,
                metrics_prefix="podkit_split_upstream",
                source_address=options.source_address,
            )
        )
        shadows = None
        if options.shadow is not None:
            shadows = await stack.enter_async_context(
                UpstreamPool(
                    connect_timeout=min(options.connect_timeout, options.shadow.timeout),
                    response_timeout=options.shadow.timeout,
                    max_connections_per_upstream=options.shadow.concurrency,
                    source_address=options.source_address,
                )
            )
        splitter = Splitter(
            options, upstreams=upstreams, shadows=shadows, registry=registry, clock=clock
        )
        async with asyncio.TaskGroup() as group:
            tasks: list[asyncio.Task[None]] = []
            if splitter.shadow is not None:
                tasks.append(group.create_task(splitter.shadow.serve()))
            if splitter.ramp is not None:
                tasks.append(group.create_task(splitter.serve_ramp()))
            if options.config is not None:
                tasks.append(group.create_task(splitter.serve_config_watch()))
            try:
                yield splitter
            finally:
                for task in tasks:
                    task.cancel()


async def serve_split(rt: Runtime, options: SplitOptions) -> None:
    """Serve ``podkit split`` inside the runtime until it drains."""
    from podkit.engines.http import HTTPServer

    async with open_splitter(options, registry=rt.registry) as splitter:

        def reload_config() -> None:
            splitter.reload()

        rt.on_reload(reload_config)
        rt.add_route("/split", splitter.admin_split)
        rt.add_route("/split/weights", splitter.admin_weights)
        rt.add_route("/diff", splitter.admin_diff)
        rt.add_status(
            lambda: {
                "weights": {k: format_percent(v) for k, v in splitter.table.shares().items()},
                "summary": ", ".join(
                    f"{k} {format_percent(v)}" for k, v in splitter.table.shares().items()
                ),
            }
        )
        async with HTTPServer(
            splitter.direct_handler(),
            host=options.host,
            port=options.port,
            limits=options.limits,
            registry=rt.registry,
            metrics_prefix="podkit_split_http",
            name="split",
            access_log=options.access_log,
        ) as server:
            rt.on_reload(server.reopen_access_log)
            rt.log.info(
                "listening",
                extra={
                    "listen": f"{options.host}:{server.port}",
                    "arms": [a.name for a in splitter.spec.arms],
                    "weights": {k: format_percent(v) for k, v in splitter.table.shares().items()},
                },
            )
            rt.set_ready()
            await rt.wait_draining()
            await server.drain(rt.drain_timeout)


__all__ = [
    "PRIMARY",
    "ArmSpec",
    "RampOptions",
    "RouteRule",
    "ShadowOptions",
    "SplitOptions",
    "Splitter",
    "StickyKey",
    "open_splitter",
    "serve_split",
]
