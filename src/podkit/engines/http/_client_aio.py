"""The asynchronous half of :mod:`podkit.engines.http.client`: its coroutines.

The pool's synchronous parts (the connection's protocol callbacks, taking and releasing
idle connections, the direct ``send_to`` path) are in :mod:`~podkit.engines.http.client`,
which may be compiled to C (``scripts/build-native.sh``); the coroutines (sending with a
body, connecting, waiting for a slot, the deadline ticker) live here and always run as
Python, so their exception and cancellation semantics are exactly CPython's. Each is called
through a method of the same name on the class it belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import AsyncIterable

from podkit.engines.errors import NoUpstreamAvailable, UpstreamClosed, UpstreamConnectError
from podkit.engines.http.client import (
    _BODY_METHODS,
    StaleConnection,
    Upstream,
    UpstreamPool,
    _PoolCollector,
    _request_head,
    _Slot,
    _UpstreamConnection,
)
from podkit.engines.http.messages import EMPTY_BODY, Body, Request, Response
from podkit.engines.http.rules import Headers, strip_hop_by_hop


async def connection_drain(self: _UpstreamConnection) -> None:
    while self.write_paused and not self.closed and not self.response_done:
        self.drain_waiter = self.loop.create_future()
        try:
            await self.drain_waiter
        finally:
            self.drain_waiter = None


async def pool_aenter(self: UpstreamPool) -> UpstreamPool:
    await self.start()
    return self


async def pool_aexit(self: UpstreamPool, *exc_info: object) -> None:
    await self.aclose()


async def pool_start(self: UpstreamPool) -> None:
    """Documented on the UpstreamPool method that calls it."""
    self.loop = asyncio.get_running_loop()
    self._ticker = self.loop.create_task(self._tick(), name="upstream-pool-timeouts")
    if self._registry is not None:
        self._collector = _PoolCollector(self)
        self._registry.register(self._collector)


async def pool_aclose(self: UpstreamPool) -> None:
    """Documented on the UpstreamPool method that calls it."""
    if self._ticker is not None:
        self._ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._ticker
        self._ticker = None
    for slot in self._slots.values():
        for conn in list(slot.idle):
            conn.abort()
        for waiter in slot.waiters:
            if not waiter.done():
                waiter.cancel()
    for conn in list(self._busy):
        conn.abort()
    if self._collector is not None and self._registry is not None:
        with contextlib.suppress(KeyError):
            self._registry.unregister(self._collector)
        self._collector = None


async def pool_send(
    self: UpstreamPool,
    upstream: Upstream,
    request: Request,
    *,
    headers: Headers | None = None,
    timeout: float | None = None,
) -> Response:
    """Documented on the UpstreamPool method that calls it."""
    fields = headers if headers is not None else strip_hop_by_hop(request.headers)
    body = request.body
    chunked = False
    length: int | None = None
    if body is EMPTY_BODY:
        body = b""
    elif isinstance(body, Body) and body.complete:
        # Arrived whole already (the common small upload): send it sized, in one write.
        body = b"".join(body.take_all())
        length = len(body)
    elif isinstance(body, bytes):
        length = len(body) if body or request.method in _BODY_METHODS else None
    elif isinstance(body, Body):
        length = body.length
        chunked = length is None
    else:
        chunked = True
    head = _request_head(request, fields, upstream, length, chunked)
    replayable = isinstance(body, bytes)
    wait = self.response_timeout if timeout is None else timeout
    attempts = 2 if replayable else 1
    for attempt in range(attempts):
        self.counters["requests"] += 1
        request.upstream = upstream.authority
        request.upstream_start = self.loop.time()
        conn = self._take_idle(upstream) or await self._acquire(upstream)
        waiter: asyncio.Future[Response] = self.loop.create_future()
        conn.begin(request.method, wait, waiter, request)
        self._busy.add(conn)
        try:
            assert conn.transport is not None
            if isinstance(body, bytes):
                conn.transport.write(head + body if body else head)
            else:
                conn.transport.write(head)
                await self._send_body(conn, body, chunked)
            conn.request_sent()
            return await waiter
        except StaleConnection:
            if attempt + 1 < attempts:
                continue
            raise UpstreamClosed(
                "upstream closed a kept-alive connection",
                upstream=upstream.authority,
                request_sent=True,
            ) from None
        except BaseException:
            if not waiter.done():
                waiter.cancel()
            conn.abort()
            raise
    raise AssertionError("unreachable")  # pragma: no cover


async def pool_send_body(
    self: UpstreamPool, conn: _UpstreamConnection, body: AsyncIterable[bytes], chunked: bool
) -> None:
    transport = conn.transport
    assert transport is not None
    async for chunk in body:
        if conn.closed or conn.response_done:
            # The upstream answered (or failed) before taking the whole body: stop sending,
            # and never reuse the connection.
            conn.reusable = False
            if isinstance(body, Body):
                body.close()
            return
        if not chunk:
            continue
        if chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            transport.write(chunk)
        if conn.write_paused:
            await conn.drain()
    if chunked and not conn.closed:
        transport.write(b"0\r\n\r\n")


async def pool_acquire(self: UpstreamPool, upstream: Upstream) -> _UpstreamConnection:
    slot = self._slots.get(upstream)
    if slot is None:
        slot = self._slots[upstream] = _Slot()
    conn = self._take_idle(upstream)
    if conn is not None:
        return conn
    if slot.busy >= self.max_connections:
        waiter = self.loop.create_future()
        slot.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await waiter
        except TimeoutError:
            raise NoUpstreamAvailable(
                f"all {self.max_connections} connections busy", upstream=upstream.authority
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                slot.waiters.remove(waiter)
        return await self._acquire(upstream)
    slot.busy += 1
    try:
        return await self._connect(upstream)
    except BaseException:
        slot.busy -= 1
        self._wake(slot)
        raise


async def pool_connect(self: UpstreamPool, upstream: Upstream) -> _UpstreamConnection:
    self.counters["connects"] += 1
    context: ssl_module.SSLContext | None = None
    if upstream.tls:
        if self.ssl is None:
            self.ssl = ssl_module.create_default_context()
        context = self.ssl
    try:
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await self.loop.create_connection(
                lambda: _UpstreamConnection(self, upstream),
                upstream.host,
                upstream.port,
                ssl=context,
                server_hostname=upstream.host if context is not None else None,
                local_addr=(self.source_address, 0) if self.source_address else None,
            )
    except TimeoutError as exc:
        self.counters["connect_errors"] += 1
        raise UpstreamConnectError(
            f"connect timed out after {self.connect_timeout:g}s", upstream=upstream.authority
        ) from exc
    except (OSError, ssl_module.SSLError) as exc:
        self.counters["connect_errors"] += 1
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UpstreamConnectError(
            f"connect failed: {reason}", upstream=upstream.authority
        ) from exc
    return conn


async def pool_tick(self: UpstreamPool) -> None:
    interval = max(0.02, min(self.response_timeout / 4, self.idle_timeout / 4, 0.5))
    while True:
        await asyncio.sleep(interval)
        self.check_deadlines(self.loop.time())
