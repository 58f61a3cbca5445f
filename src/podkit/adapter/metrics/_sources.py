"""Where the metrics adapter reads from: one :class:`Source` per kind, each collecting into a
:class:`~podkit.adapter.metrics._exposition.MetricsPage` at scrape time.

A source that cannot be read raises :class:`SourceDown` with a short reason; the adapter
turns it into ``<prefix>_up 0`` on a page that is still valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any, Protocol

import httpx

from podkit.adapter._postgres import PostgresError, fetch_many, split_dsn
from podkit.adapter._resp import RedisAddress, RedisReplyError, open_redis
from podkit.adapter.metrics._exposition import MetricsPage
from podkit.adapter.metrics._mapping import MetricsMap, map_document, parse_output
from podkit.adapter.metrics._servers import (
    PG_ACTIVITY_QUERY,
    PG_SETTINGS_QUERY,
    PG_STAT_DATABASE_QUERY,
    haproxy_page,
    memcached_page,
    nginx_page,
    parse_memcached_stats,
    parse_redis_info,
    postgres_page,
    redis_page,
)
from podkit.adapter.metrics._statsd import MAX_PACKET_BYTES, StatsdAggregator, StatsdMap
from podkit.errors import PodkitError
from podkit.runtime.config import HostPort

DEFAULT_MAX_RESPONSE = 16 * 1024 * 1024  # a stats page, JSON document or command output
MAX_ERROR_OUTPUT = 4096  # of a command's standard error, for the reason on the page


class SourceDown(PodkitError):
    """The source could not be read; the message is the reason shown on the page."""


class Source(Protocol):
    """What the adapter scrapes."""

    namespace: str  # the default --prefix
    description: str
    mapped: bool

    async def start(self) -> None: ...

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None: ...

    async def aclose(self) -> None: ...


class _Base:
    namespace = ""
    description = ""
    mapped = False  # names come from a map file: the prefix is only the user's --prefix

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisSource(_Base):
    """``INFO ALL`` of a Redis server."""

    namespace = "redis"

    def __init__(self, url: str) -> None:
        self.address = RedisAddress.parse(url)
        self.description = f"redis://{self.address.host}:{self.address.port}"

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        try:
            async with open_redis(self.address) as conn:
                text = await conn.call("INFO", "ALL")
        except RedisReplyError as exc:
            raise SourceDown(f"redis: {exc}") from exc
        redis_page(page, parse_redis_info(str(text)), prefix=prefix)


class MemcachedSource(_Base):
    """memcached's ``stats``."""

    namespace = "memcached"

    def __init__(self, address: HostPort) -> None:
        self.address = address
        self.description = f"memcached {address.host}:{address.port}"

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
        try:
            writer.write(b"stats\r\n")
            await writer.drain()
            data = await reader.readuntil(b"END\r\n")
        except asyncio.LimitOverrunError as exc:
            raise SourceDown("memcached: stats reply too long") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        memcached_page(page, parse_memcached_stats(data.decode(errors="replace")), prefix=prefix)


class _HTTPSource(_Base):
    def __init__(self, url: str, *, max_bytes: int = DEFAULT_MAX_RESPONSE) -> None:
        self.url = url
        self.description = url
        self.max_bytes = max_bytes
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=True)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def fetch(self, timeout: float) -> str:
        assert self._client is not None, "start() first"
        try:
            async with self._client.stream("GET", self.url, timeout=timeout) as response:
                if response.status_code != 200:
                    raise SourceDown(f"{self.url} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise SourceDown(f"{self.url}: more than {self.max_bytes} bytes")
                return body.decode(response.encoding or "utf-8", errors="replace")
        except httpx.TimeoutException as exc:
            raise TimeoutError("timed out") from exc
        except httpx.HTTPError as exc:
            raise SourceDown(_http_reason(exc)) from exc


def _http_reason(exc: httpx.HTTPError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class NginxSource(_HTTPSource):
    """nginx's ``stub_status`` page."""

    namespace = "nginx"

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        text = await self.fetch(timeout)
        try:
            nginx_page(page, text, prefix=prefix)
        except ValueError as exc:
            raise SourceDown(str(exc)) from exc


class HAProxySource(_HTTPSource):
    """HAProxy's statistics as CSV (``;csv`` is added to the URL when it is missing)."""

    namespace = "haproxy"

    def __init__(self, url: str, *, max_bytes: int = DEFAULT_MAX_RESPONSE) -> None:
        if ";csv" not in url:
            base, sep, query = url.partition("?")
            url = base + ";csv" + (sep + query if sep else "")
        super().__init__(url, max_bytes=max_bytes)

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        text = await self.fetch(timeout)
        try:
            haproxy_page(page, text, prefix=prefix)
        except ValueError as exc:
            raise SourceDown(str(exc)) from exc


class JSONSource(_HTTPSource):
    """A JSON document from an HTTP endpoint, mapped by a map file."""

    namespace = "json"
    mapped = True

    def __init__(
        self, url: str, mapping: MetricsMap, *, max_bytes: int = DEFAULT_MAX_RESPONSE
    ) -> None:
        super().__init__(url, max_bytes=max_bytes)
        self.mapping = mapping
        self.skipped = 0

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        text = await self.fetch(timeout)
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise SourceDown(f"{self.url}: not JSON: {exc}") from exc
        self.skipped += map_document(page, document, self.mapping, prefix=prefix)


class PostgresSource(_Base):
    """pg_stat_database, pg_stat_activity and a few settings of a PostgreSQL server."""

    namespace = "pg"

    def __init__(self, dsn: str) -> None:
        self.dsn, _ = split_dsn(dsn, own=())
        parts = dsn.split("@")[-1]
        self.description = f"postgresql {parts.split('?')[0]}"

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        try:
            databases, activity, settings = await fetch_many(
                self.dsn,
                [PG_STAT_DATABASE_QUERY, PG_ACTIVITY_QUERY, PG_SETTINGS_QUERY],
                timeout=timeout,
            )
        except PostgresError as exc:
            raise SourceDown(str(exc)) from exc
        postgres_page(page, databases, activity, settings[0], prefix=prefix)


class CommandSource(_Base):
    """A command's output (JSON, or ``key=value`` lines), run at each scrape and mapped."""

    namespace = "command"
    mapped = True

    def __init__(
        self, command: str, mapping: MetricsMap, *, max_bytes: int = DEFAULT_MAX_RESPONSE
    ) -> None:
        self.max_bytes = max_bytes
        self.command = command
        self.mapping = mapping
        self.description = f"command {command!r}"
        self.skipped = 0

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    reading = group.create_task(
                        _read_bounded(proc.stdout, self.max_bytes, what="output")
                    )
                    errors = group.create_task(
                        _read_bounded(proc.stderr, MAX_ERROR_OUTPUT, what=None)
                    )
            except* SourceDown as failed:
                raise failed.exceptions[0] from None
            out, err = reading.result(), errors.result()
            await proc.wait()
        finally:
            if proc.returncode is None:  # timed out or too much output: stop the whole group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise SourceDown(f"exit status {proc.returncode}" + (f": {last[0]}" if last[0] else ""))
        document = parse_output(out.decode(errors="replace"))
        self.skipped += map_document(page, document, self.mapping, prefix=prefix)


async def _read_bounded(stream: asyncio.StreamReader, limit: int, *, what: str | None) -> bytes:
    """Everything ``stream`` gives, up to ``limit`` bytes: past it, ``what`` names the
    failure (or, when None, the rest is read and dropped)."""
    data = bytearray()
    while chunk := await stream.read(64 * 1024):
        if len(data) + len(chunk) > limit:
            if what is not None:
                raise SourceDown(f"{what} larger than {limit} bytes")
            data += chunk[: max(0, limit - len(data))]
            continue
        data += chunk
    return bytes(data)


class _StatsdProtocol(asyncio.DatagramProtocol):
    def __init__(self, aggregator: StatsdAggregator) -> None:
        self.aggregator = aggregator

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.aggregator.feed_packet(data[:MAX_PACKET_BYTES])


class StatsdSource(_Base):
    """statsd/DogStatsD over UDP, aggregated between scrapes."""

    namespace = "statsd"
    mapped = True

    def __init__(self, address: HostPort, mapping: StatsdMap, *, max_series: int) -> None:
        self.address = address
        self.aggregator = StatsdAggregator(mapping, max_series=max_series)
        self.description = f"statsd udp {address.host}:{address.port}"
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def port(self) -> int:
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _StatsdProtocol(self.aggregator),
                local_addr=(self.address.host, self.address.port),
            )
        except OSError as exc:
            raise PodkitError(
                f"statsd: cannot listen on udp {self.address.host}:{self.address.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._transport = transport

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def collect(self, page: MetricsPage, prefix: str, timeout: float) -> None:
        stats = self.aggregator.stats
        self.aggregator.render_into(page, prefix=prefix)
        ns = prefix or self.namespace
        page.add(f"{ns}_lines_total", stats.lines, type="counter", help="statsd lines received.")
        for reason, count in (
            ("malformed", stats.bad_lines),
            ("mapping", stats.dropped_by_map),
            ("series_limit", stats.dropped_over_limit),
            ("type_clash", stats.type_clashes),
        ):
            page.add(
                f"{ns}_lines_dropped_total",
                count,
                type="counter",
                help="statsd lines not turned into samples, by reason.",
                labels={"reason": reason},
            )
        page.add(f"{ns}_series", self.aggregator.series_count(), help="Distinct series held.")
