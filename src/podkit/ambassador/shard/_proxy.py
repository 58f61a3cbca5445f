"""The sharding proxy: the listener, the shards' upstream connections and the ticker.

:class:`ShardProxy` owns the tasks (connecting to shards, failing requests that waited past
``timeout``) and the state every connection shares: the router, the counters and the
connections to each shard. The protocols themselves, and how a request is split, routed and
answered, are in :mod:`._connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from podkit.ambassador.shard import _memcache as mc
from podkit.ambassador.shard import _resp as resp
from podkit.ambassador.shard._connections import (
    Counters,
    ProxyState,
    _MemcacheClient,
    _RedisClient,
    _Upstream,
)
from podkit.ambassador.shard._hotkeys import HotKeys
from podkit.ambassador.shard._router import (
    DEFAULT_FAIL_LIMIT,
    DEFAULT_REPLICAS,
    DEFAULT_RETRY_AFTER,
    ShardRouter,
    ShardState,
)
from podkit.errors import PodkitError
from podkit.runtime import HostPort

DEFAULT_TIMEOUT = 1.0  # a cache answers in well under a millisecond: a second is a dead shard
DEFAULT_CONNECT_TIMEOUT = 1.0  # loopback and LAN connects take microseconds
DEFAULT_SERVER_CONNECTIONS = 2  # per shard (and per worker); twemproxy's default is 1
DEFAULT_MAX_CONNECTIONS = 10_000  # client connections, below a default 'ulimit -n'
DEFAULT_MAX_PENDING = 4096  # replies a client may owe before its socket stops being read
DEFAULT_HOT_TTL = 30.0  # a hot key's extra copy lives at most this long: bounds staleness


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardSettings:
    """Everything ``podkit shard`` was told, validated."""

    listen: HostPort
    protocol: str
    shards: tuple[tuple[str, HostPort], ...]
    algorithm: str = "ring"
    key_hash: str = "md5"
    hash_tag: bytes = b""
    replicas: int = DEFAULT_REPLICAS
    fail_limit: int = DEFAULT_FAIL_LIMIT
    retry_after: float = DEFAULT_RETRY_AFTER
    hot_keys: bool = True
    hot_ttl: float = DEFAULT_HOT_TTL
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    server_connections: int = DEFAULT_SERVER_CONNECTIONS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pending: int = DEFAULT_MAX_PENDING
    max_key_bytes: int = 0  # 0: the protocol's default
    max_value_bytes: int = 0  # 0: the protocol's default

    def make_router(self) -> ShardRouter:
        hot = HotKeys(len(self.shards)) if self.hot_keys and len(self.shards) > 1 else None
        return ShardRouter(
            [name for name, _ in self.shards],
            algorithm=self.algorithm,
            key_hash=self.key_hash,
            hash_tag=self.hash_tag,
            replicas=self.replicas,
            fail_limit=self.fail_limit,
            retry_after=self.retry_after,
            hot_keys=hot,
        )


# -- the proxy --------------------------------------------------------------------------------


class ShardProxy:
    """The sharding proxy: a listener, the shards' upstream connections and a ticker.

    Use as ``async with ShardProxy(settings) as proxy:``; ``proxy.port`` is the bound port.
    """

    def __init__(
        self,
        settings: ShardSettings,
        *,
        reuse_port: bool = False,
        registry: CollectorRegistry | None = None,
        log: Any = None,
    ) -> None:
        self.settings = settings
        self.router = settings.make_router()
        self.addresses = dict(settings.shards)
        self.reuse_port = reuse_port
        self.registry = registry
        self.log = log
        memcache = settings.protocol == "memcached"
        self.max_key = settings.max_key_bytes or (
            mc.MAX_KEY_BYTES if memcache else resp.DEFAULT_MAX_KEY_BYTES
        )
        self.max_value = settings.max_value_bytes or (
            mc.DEFAULT_MAX_VALUE_BYTES if memcache else resp.DEFAULT_MAX_VALUE_BYTES
        )
        self.state: ProxyState | None = None
        self._server: asyncio.Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()
        self._collector: _ShardCollector | None = None
        self.port = 0

    @property
    def shared(self) -> ProxyState:
        """The state the connections share (set once the proxy is open)."""
        if self.state is None:
            raise PodkitError("the proxy is not open")
        return self.state

    @property
    def counters(self) -> Counters:
        return self.shared.counters

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def __aenter__(self) -> ShardProxy:
        settings = self.settings
        loop = self.loop
        state = self.state = ProxyState(
            self.router,
            [name for name, _ in settings.shards],
            memcache=settings.protocol == "memcached",
            server_connections=settings.server_connections,
            max_key=self.max_key,
            max_value=self.max_value,
            max_pending=settings.max_pending,
            max_connections=settings.max_connections,
            hot_ttl=settings.hot_ttl,
            clock=loop.time,
            call_soon=loop.call_soon,
            open_upstream=self._open_upstream,
            on_ejection=self._log_ejection,
        )
        factory = _MemcacheClient if settings.protocol == "memcached" else _RedisClient
        try:
            self._server = await loop.create_server(
                lambda: factory(state),
                settings.listen.host,
                settings.listen.port,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            raise PodkitError(
                f"shard: cannot listen on {settings.listen}: {exc.strerror or exc}"
            ) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._ticker = self._tasks.create_task(self._serve_timeouts(), name="shard-timeouts")
        if self.registry is not None:
            self._collector = _ShardCollector(self)
            self.registry.register(self._collector)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, close every connection and end the ticker."""
        if self._server is not None:
            self._server.close()
        state = self.state
        if state is not None:
            for client in list(state.clients):
                if client.transport is not None:
                    client.transport.abort()
            for conns in state.upstreams.values():
                for conn in conns:
                    if conn is None:
                        continue
                    conn.closed = True
                    if conn.task is not None:
                        conn.task.cancel()
                    if conn.transport is not None:
                        conn.transport.abort()
        if self._ticker is not None:
            self._ticker.cancel()
        try:
            await self._stack.aclose()
        finally:
            if self._collector is not None and self.registry is not None:
                with contextlib.suppress(KeyError):
                    self.registry.unregister(self._collector)
                self._collector = None

    async def drain(self, timeout: float) -> None:
        """Stop taking connections, close each client once it is owed no reply, and wait up
        to ``timeout`` for that."""
        state = self.shared
        state.draining = True
        if self._server is not None:
            self._server.close()
        state.idle = idle = asyncio.Event()
        for client in list(state.clients):
            client.flush()  # closes the clients that are owed nothing
        if state.clients:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await idle.wait()

    def set_shards(self, shards: list[tuple[str, HostPort]]) -> bool:
        """Route over another shard list from now on (a shards file changed).

        Shards that stay keep their health and connections; the connections of removed
        shards are closed (what they still owed is answered with an error). Returns False,
        changing nothing, when the list is the same.

        Raises:
            ValueError: the list is empty, repeats a name, or is shorter than ``replicas``.
        """
        addresses = dict(shards)
        if addresses == self.addresses:
            return False
        router = self.router.with_shards([name for name, _ in shards])
        state = self.shared
        moved = {n for n, a in self.addresses.items() if addresses.get(n) != a}
        self.router = state.router = router
        state.hot_possible = router.hot_keys is not None
        self.addresses = addresses
        per_shard = self.settings.server_connections
        for name in moved:
            for conn in state.upstreams.pop(name, []):
                if conn is not None:
                    conn.fail("shard removed from the shard list")
        for name in addresses:
            state.upstreams.setdefault(name, [None] * per_shard)
        state.schedule_flush()
        return True

    def _open_upstream(self, conn: _Upstream) -> None:
        address = self.addresses[conn.shard]
        assert self._tasks is not None
        conn.task = self._tasks.create_task(
            self._connect(conn, address.host, address.port), name=f"shard-connect-{conn.shard}"
        )

    async def _connect(self, conn: _Upstream, host: str, port: int) -> None:
        self.counters.upstream_connects += 1
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await self.loop.create_connection(lambda: conn, host, port)
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                conn.fail("connect timed out")
            else:
                conn.fail(f"connect failed: {exc.strerror or exc}")
            self.shared.schedule_flush()

    def _log_ejection(self, shard: str, reason: str) -> None:
        if self.log is not None:
            self.log.warning(
                "shard ejected",
                extra={"shard": shard, "reason": reason, "retry_after": self.settings.retry_after},
            )

    async def _serve_timeouts(self) -> None:
        """Fail the connections whose oldest request waited longer than ``timeout``."""
        timeout = self.settings.timeout
        interval = max(0.01, min(timeout / 4, 0.25))
        while True:
            await asyncio.sleep(interval)
            self.shared.expire(timeout)

    # -- reporting ----------------------------------------------------------------------

    def shards_document(self, *, hottest: int = 10) -> dict[str, Any]:
        """What ``GET /shards`` answers: every shard's state and share, the hottest keys."""
        now = self.loop.time()
        stats = self.router.statistics(now)
        total = sum(s.requests for s in stats) or 1
        settings = self.settings
        return {
            "protocol": settings.protocol,
            "algorithm": settings.algorithm,
            "hash": settings.key_hash,
            "hash_tag": settings.hash_tag.decode("latin-1"),
            "replicas": settings.replicas,
            "shards": [
                {
                    "name": s.name,
                    "address": str(self.addresses[s.name]),
                    "state": s.state,
                    "requests": s.requests,
                    "share": round(s.requests / total, 4),
                    "errors": s.errors,
                    "ejections": s.ejections,
                    "failures_in_a_row": s.failures_in_a_row,
                    "retry_in": None if s.retry_in is None else round(s.retry_in, 3),
                }
                for s in stats
            ],
            "hot_keys": [
                {
                    "key": h.key.decode("utf-8", "backslashreplace"),
                    "share": round(h.share, 4),
                    "copies": h.copies,
                }
                for h in self.router.hottest(hottest)
            ],
            "clients": len(self.shared.clients),
            "commands": self.counters.commands,
        }


def merge_shards_documents(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``/shards`` document from several workers' (counts added, worst state kept)."""
    if not documents:
        return {"shards": [], "hot_keys": []}
    merged: dict[str, Any] = copy.deepcopy(documents[0])
    rank = {"ready": 0, "probing": 1, "ejected": 2}
    for doc in documents[1:]:
        for mine, theirs in zip(merged["shards"], doc["shards"], strict=False):
            for field_ in ("requests", "errors", "ejections"):
                mine[field_] += theirs[field_]
            if rank.get(theirs["state"], 0) > rank.get(mine["state"], 0):
                mine["state"] = theirs["state"]
        merged["clients"] += doc["clients"]
        merged["commands"] += doc["commands"]
        merged["hot_keys"].extend(doc["hot_keys"])
    total = sum(s["requests"] for s in merged["shards"]) or 1
    for shard in merged["shards"]:
        shard["share"] = round(shard["requests"] / total, 4)
    heat: dict[str, dict[str, Any]] = {}
    for hot in merged["hot_keys"]:
        seen = heat.get(hot["key"])
        if seen is None or hot["share"] > seen["share"]:
            heat[hot["key"]] = hot
    merged["hot_keys"] = sorted(heat.values(), key=lambda h: -h["share"])[:10]
    merged["workers"] = len(documents)
    return merged


class _ShardCollector(Collector):
    def __init__(self, proxy: ShardProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterable[Metric]:
        return shard_metrics(self.proxy)


def shard_metrics(proxy: ShardProxy) -> Iterator[Metric]:
    """Prometheus metric families of one proxy."""
    prefix = "podkit_shard"
    now = proxy.loop.time()
    stats = proxy.router.statistics(now)
    requests = CounterMetricFamily(
        f"{prefix}_requests", "Requests routed to each shard.", labels=["shard"]
    )
    errors = CounterMetricFamily(
        f"{prefix}_errors", "Failures of each shard (refused, lost, timed out).", labels=["shard"]
    )
    ejections = CounterMetricFamily(
        f"{prefix}_ejections", "Times each shard was ejected.", labels=["shard"]
    )
    state = GaugeMetricFamily(
        f"{prefix}_state", "Each shard's state (1 for the current one).", labels=["shard", "state"]
    )
    for s in stats:
        requests.add_metric([s.name], s.requests)
        errors.add_metric([s.name], s.errors)
        ejections.add_metric([s.name], s.ejections)
        for each in ShardState:
            state.add_metric([s.name, each.value], 1 if each.value == s.state else 0)
    yield requests
    yield errors
    yield ejections
    yield state
    clients = GaugeMetricFamily(f"{prefix}_connections", "Client connections open now.")
    clients.add_metric([], len(proxy.shared.clients))
    yield clients
    counters = proxy.counters
    for attr, name, help_text in (
        ("connections_total", "connections_accepted", "Client connections accepted."),
        ("refused", "connections_refused", "Client connections refused at the limit."),
        ("commands", "commands", "Client requests read."),
        ("faults", "faults", "Malformed, unsupported or over-limit requests answered locally."),
        ("failures", "failed_requests", "Requests answered with an error for a failed shard."),
        ("timeouts", "timeouts", "Upstream connections failed for an unanswered request."),
        ("upstream_connects", "upstream_connects", "Upstream connections opened."),
        ("hot_fills", "hot_fills", "Hot-key copies written back to an extra shard."),
    ):
        counter = CounterMetricFamily(f"{prefix}_{name}", help_text)
        counter.add_metric([], getattr(counters, attr))
        yield counter
    hot = GaugeMetricFamily(f"{prefix}_hot_keys", "Keys kept on extra shards now.")
    hot.add_metric([], len(proxy.router.hot_keys._hot) if proxy.router.hot_keys else 0)
    yield hot
