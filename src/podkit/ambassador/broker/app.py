"""``podkit broker``: the asyncio shell around :class:`BrokerTable`, on the TCP engine (or the
HTTP engine in ``http`` mode).

Theory of operation. One task reads the environment's name from its source and hands it to
the table; a change starts a new epoch (the TCP engine's :attr:`~podkit.engines.tcp.TCPProxy.epoch`
follows it), so new connections go to the new environment at once. For each older epoch a
drain task waits until its connections have ended, or ``drain_timeout`` passed, and then
closes the rest (counted). A probe task checks each upstream of the current environment with
a TCP connect every ``interval``. With Redis credentials for the environment, each new
upstream connection is authenticated before the client's bytes flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from podkit.ambassador.broker._auth import RedisCredentials, redis_auth
from podkit.ambassador.broker._core import BrokerTable, EnvChange, Health
from podkit.ambassador.broker._mapfile import read_map_file
from podkit.ambassador.broker._sources import DEFAULT_SOURCE_INTERVAL, EnvSource, serve_source
from podkit.engines.errors import NoUpstreamAvailable
from podkit.engines.http import (
    Forwarding,
    HTTPServer,
    Request,
    Response,
    ServerLimits,
    Upstream,
    UpstreamPool,
    upstream_request_headers,
)
from podkit.engines.http.access_log import AccessLogSettings
from podkit.engines.tcp import DEFAULT_COPY_BYTES, TCPProxy
from podkit.errors import ConfigError, PodkitError
from podkit.runtime import Request as AdminRequest
from podkit.runtime import Response as AdminResponse
from podkit.runtime import Runtime
from podkit.runtime.logging import get_logger

DEFAULT_INTERVAL = 1.0  # health checks per upstream; Kubernetes' minimum periodSeconds
DEFAULT_CHECK_TIMEOUT = 1.0  # one TCP connect check
DEFAULT_CONNECT_TIMEOUT = 2.0  # to an upstream on a LAN
DEFAULT_IDLE_TIMEOUT = 3600.0  # database connections idle for long in pools
DEFAULT_TIMEOUT = 60.0  # http mode: silence allowed from an upstream while it answers

Mode = Literal["tcp", "http"]


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Everything ``podkit broker`` is configured with (validated at the edge)."""

    host: str = "127.0.0.1"
    port: int = 0
    mode: Mode = "tcp"
    source: EnvSource = field(default_factory=lambda: EnvSource("env", "PODKIT_ENV"))
    default_env: str | None = None
    envs: Mapping[str, Sequence[Upstream]] = field(default_factory=dict)
    map_file: Path | None = None
    map_overrides: Mapping[str, Sequence[Upstream]] = field(default_factory=dict)
    redis_auth: Mapping[str, RedisCredentials] = field(default_factory=dict)
    rewrite_host: bool = False
    interval: float = DEFAULT_INTERVAL
    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    splice_above: int = DEFAULT_COPY_BYTES
    timeout: float = DEFAULT_TIMEOUT
    source_interval: float = DEFAULT_SOURCE_INTERVAL
    drain_timeout: float = 10.0
    source_address: str | None = None
    trusted_proxies: tuple[Any, ...] = ()
    limits: ServerLimits = field(default_factory=ServerLimits)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)


class _BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> list[Metric]:
        b = self.broker
        env = GaugeMetricFamily(
            "podkit_broker_environment", "The current environment (1).", labels=["environment"]
        )
        if b.table.environment is not None:
            env.add_metric([b.table.environment], 1.0)
        up = GaugeMetricFamily(
            "podkit_broker_upstream_up",
            "Health of the current environment's upstreams (1 up, 0 down, -1 unknown).",
            labels=["upstream"],
        )
        for u in b.table.current():
            health = b.table.health.get(u, Health.UNKNOWN)
            up.add_metric([u.authority], {Health.UP: 1.0, Health.DOWN: 0.0}.get(health, -1.0))
        epoch = GaugeMetricFamily("podkit_broker_epoch", "Environment changes so far.")
        epoch.add_metric([], b.table.epoch)
        counters = CounterMetricFamily(
            "podkit_broker_events",
            "Switches, connections closed at the end of a drain, failed authentications.",
            labels=["event"],
        )
        for name, value in sorted(b.counts.items()):
            counters.add_metric([name], value)
        return [env, up, epoch, counters]


class Broker:
    """The table, its source, probes and drains; the TCP or HTTP front end is attached by
    :func:`open_broker`."""

    def __init__(
        self,
        options: BrokerOptions,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.clock = clock
        self.log = get_logger("broker")
        self.table = BrokerTable(options.envs)
        self.counts = {"switches": 0, "drain_closed": 0, "auth_failures": 0, "unknown_env": 0}
        self.tcp: TCPProxy | None = None
        self.changed = asyncio.Event()
        self._pending: list[EnvChange] = []
        self.draining_epochs: dict[int, float] = {}
        if registry is not None:
            registry.register(_BrokerCollector(self))

    # -- environment ------------------------------------------------------------------------

    def on_environment(self, name: str | None) -> None:
        """The source reported ``name`` (None or empty: the default environment, if any)."""
        if name is None or not name.strip():
            name = self.options.default_env
        change = self.table.set_environment(name)
        if change is None:
            return
        if self.table.unknown_environment is not None:
            self.counts["unknown_env"] += 1
            self.log.error(
                "unknown environment: new connections are refused",
                extra={"environment": name, "known": sorted(self.table.envs)},
            )
        self._apply(change)

    def _apply(self, change: EnvChange) -> None:
        self.counts["switches"] += 1
        if self.tcp is not None:
            self.tcp.epoch = change.epoch
        self.log.info(
            "environment changed",
            extra={
                "from": change.previous,
                "to": change.current,
                "epoch": change.epoch,
                "upstreams": [u.authority for u in self.table.current()],
                "reason": change.reason,
            },
        )
        self._pending.append(change)
        self.changed.set()

    def reload(self) -> bool:
        """Re-read the map file (``--map`` entries still win); a change of the current
        environment's upstreams starts a new epoch.

        Returns:
            True when the map was applied; False (the previous one kept) on an error.
        """
        path = self.options.map_file
        if path is None:
            return True
        try:
            envs = read_map_file(path, http=self.options.mode == "http")
            envs.update({k: tuple(v) for k, v in self.options.map_overrides.items()})
            change = self.table.set_map(envs)
        except ConfigError as exc:
            self.log.error("map file rejected; keeping the previous map", extra={"error": str(exc)})
            return False
        if change is not None:
            self._apply(change)
        return True

    def pick(self, client: tuple[str, int] | None = None) -> Upstream | None:
        """The upstream for a new connection, or None (closed) when the environment has none."""
        return self.table.pick()

    async def handshake(self, upstream: Upstream, sock: Any) -> None:
        """Authenticate a new upstream connection when its environment has credentials."""
        env = self.table.environment
        credentials = self.options.redis_auth.get(env) if env is not None else None
        if credentials is None:
            return
        try:
            await redis_auth(sock, credentials, upstream)
        except PodkitError as exc:
            self.counts["auth_failures"] += 1
            self.log.error(
                "upstream refused AUTH", extra={"upstream": upstream.authority, "error": str(exc)}
            )
            raise

    # -- loops ------------------------------------------------------------------------------

    async def serve_source(self) -> None:
        await serve_source(
            self.options.source, self.on_environment, interval=self.options.source_interval
        )

    async def serve_drains(self) -> None:
        """After each change, close the older epochs' connections once the drain timeout
        passed (or as soon as they have all ended)."""
        async with asyncio.TaskGroup() as group:
            while True:
                await self.changed.wait()
                self.changed.clear()
                changes, self._pending = self._pending, []
                for change in changes:
                    if self.tcp is not None:
                        self.draining_epochs[change.epoch] = self.clock()
                        group.create_task(self._drain(change.epoch))

    async def _drain(self, epoch: int) -> None:
        tcp = self.tcp
        assert tcp is not None
        deadline = self.clock() + self.options.drain_timeout
        try:
            while self.clock() < deadline:
                if not tcp.count_before(epoch):
                    break
                await asyncio.sleep(min(0.05, self.options.drain_timeout))
            closed = tcp.close_before(epoch)
            if closed:
                self.counts["drain_closed"] += closed
                self.log.info(
                    "old connections closed after the drain timeout",
                    extra={"epoch": epoch, "closed": closed},
                )
        finally:
            self.draining_epochs.pop(epoch, None)

    async def check(self, upstream: Upstream) -> bool:
        """One TCP health check: a connection opens within the check timeout."""
        try:
            async with asyncio.timeout(self.options.check_timeout):
                _, writer = await asyncio.open_connection(upstream.host, upstream.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def serve_checks(self) -> None:
        """Check the current environment's upstreams every ``interval`` until cancelled."""
        while True:
            targets = self.table.probe_targets()
            results = await asyncio.gather(*(self.check(u) for u in targets))
            for upstream, ok in zip(targets, results, strict=True):
                changed = self.table.probe_result(upstream, ok)
                if changed is not None:
                    self.log.info(
                        "upstream health",
                        extra={
                            "upstream": upstream.authority,
                            "from": changed[0].value,
                            "to": changed[1].value,
                        },
                    )
            await asyncio.sleep(self.options.interval)

    # -- admin ------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The ``GET /broker`` JSON."""
        data = self.table.statistics()
        data["mode"] = self.options.mode
        data["source"] = str(self.options.source)
        data["events"] = dict(self.counts)
        if self.tcp is not None:
            stats = self.tcp.statistics()
            data["connections_open"] = stats.connections_open
            data["connections_draining"] = self.tcp.count_before(self.table.epoch)
        data["redis_auth"] = sorted(self.options.redis_auth)
        return data

    async def admin_broker(self, request: AdminRequest) -> AdminResponse:
        return AdminResponse.json(200, json.dumps(self.view(), indent=2) + "\n")


@contextlib.asynccontextmanager
async def open_broker(
    options: BrokerOptions, *, registry: CollectorRegistry | None = None
) -> AsyncIterator[tuple[Broker, int]]:
    """Run the broker (source, checks, drains) and its front end; yields it and the port."""
    broker = Broker(options, registry=registry)
    async with contextlib.AsyncExitStack() as stack:
        if options.mode == "tcp":
            tcp = await stack.enter_async_context(
                TCPProxy(
                    broker.pick,
                    host=options.host,
                    port=options.port,
                    connect_timeout=options.connect_timeout,
                    idle_timeout=options.idle_timeout,
                    copy_bytes=options.splice_above,
                    max_connections=options.limits.max_connections,
                    registry=registry,
                    metrics_prefix="podkit_broker_tcp",
                    name="broker",
                    source_address=options.source_address,
                    handshake=broker.handshake if options.redis_auth else None,
                )
            )
            broker.tcp = tcp
            tcp.epoch = broker.table.epoch
            port = tcp.port
        else:
            pool = await stack.enter_async_context(
                UpstreamPool(
                    connect_timeout=options.connect_timeout,
                    response_timeout=options.timeout,
                    registry=registry,
                    metrics_prefix="podkit_broker_upstream",
                    source_address=options.source_address,
                )
            )
            forwarding = Forwarding(trusted_proxies=options.trusted_proxies)

            async def handle(request: Request) -> Response:
                upstream = broker.pick()
                if upstream is None:
                    raise NoUpstreamAvailable()
                headers = upstream_request_headers(request, forwarding)
                if options.rewrite_host:
                    host = upstream.authority.encode("idna")
                    headers = [(n, host if n.lower() == b"host" else v) for n, v in headers]
                return await pool.send(upstream, request, headers=headers)

            server = await stack.enter_async_context(
                HTTPServer(
                    handle,
                    host=options.host,
                    port=options.port,
                    limits=options.limits,
                    registry=registry,
                    metrics_prefix="podkit_broker_http",
                    name="broker",
                    access_log=options.access_log,
                )
            )
            port = server.port
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(broker.serve_source()),
                group.create_task(broker.serve_checks()),
                group.create_task(broker.serve_drains()),
            ]
            try:
                yield broker, port
            finally:
                for task in tasks:
                    task.cancel()


async def serve_broker(rt: Runtime, options: BrokerOptions) -> None:
    """Serve ``podkit broker`` inside the runtime until it drains."""
    async with open_broker(options, registry=rt.registry) as (broker, port):
        rt.add_route("/broker", broker.admin_broker)

        def reload_map() -> None:
            broker.reload()

        rt.on_reload(reload_map)
        rt.add_status(
            lambda: {
                "environment": broker.table.environment,
                "summary": f"environment {broker.table.environment or 'unset'}",
            }
        )
        rt.log.info(
            "listening",
            extra={
                "listen": f"{options.host}:{port}",
                "mode": options.mode,
                "source": str(options.source),
            },
        )
        rt.set_ready()
        await rt.wait_draining()
        if broker.tcp is not None:
            await broker.tcp.drain(rt.drain_timeout)
