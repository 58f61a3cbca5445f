"""The asynchronous half of :mod:`podkit.engines.http.server`: its coroutines.

The server's protocol callbacks (parsing, the direct forwarding path, writing whole
responses) are plain synchronous methods in :mod:`~podkit.engines.http.server`, which may be
compiled to C (``scripts/build-native.sh``); the coroutines they start (the ordinary
per-request task, streaming, draining, starting and stopping the listener) live here and
always run as Python, so their exception and cancellation semantics are exactly CPython's.
Each is called through a method of the same name on the class it belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable
from typing import Any, cast

from podkit.engines._closing import finish_closing
from podkit.engines.errors import UpstreamError
from podkit.engines.http.messages import Body, Handler, Request, Response, close_body
from podkit.engines.http.rules import BodyMode, response_framing, response_head
from podkit.engines.http.server import (
    CLIENT_CLOSED,
    HTTPServer,
    _Connection,
    _error,
    _error_reason,
    _record_sni,
    _ServerCollector,
    _TLSAccept,
    log,
)
from podkit.errors import ListenError, PodkitError, ProtocolError, RemoteProtocolError


async def connection_drain(self: _Connection) -> None:
    while self.write_paused and not self.closed:
        self.drain_waiter = self.loop.create_future()
        try:
            await self.drain_waiter
        finally:
            self.drain_waiter = None
    if self.closed:
        raise ConnectionResetError("client closed the connection")


async def connection_finish_stream(
    self: _Connection, request: Request, response: Response, started: float
) -> None:
    try:
        await self._stream_response(
            request, response, self.stream_keep_alive, request.http_version == "1.0"
        )
        if not self.stream_keep_alive:
            self.must_close = True
    except asyncio.CancelledError:
        return
    except (ConnectionError, PodkitError, OSError):
        self.server.counters.error("response_aborted")
        if self.transport is not None:
            self.transport.abort()
        return
    finally:
        self._answered(request, response.status, started, response)
    self._next()


async def connection_respond(
    self: _Connection, request: Request, handler: Handler | None = None
) -> None:
    self.handler_started = True
    server = self.server
    started = self.loop.time()
    status = CLIENT_CLOSED  # until there is a response: the client may leave before it
    response: Response | None = None
    self.sent = 0
    try:
        try:
            response = await (handler or server.handler)(request)
            if request.upstream_start:
                request.upstream_time = self.loop.time() - request.upstream_start
        except asyncio.CancelledError:
            raise
        except (ProtocolError, UpstreamError) as exc:
            status = exc.status
            server.counters.error(_error_reason(exc, status))
            response = _error(status, exc, request)
        except Exception as exc:
            log.exception("handler failed", extra={"target": request.target})
            server.counters.error("handler_failed")
            response = _error(500, exc)
        status = response.status
        try:
            await self._write_response(request, response)
        except BaseException:
            # Not written whole: an unread upstream body must release its connection.
            await close_body(response.body)
            raise
    except asyncio.CancelledError:
        # The client went away; the handler's upstream work was cancelled with it.
        log.debug("client closed the connection", extra={"target": request.target})
        return
    except (ConnectionError, PodkitError, OSError) as exc:
        # the body stream broke after the head was sent: the client must see a truncation
        server.counters.error("response_aborted")
        log.debug("response aborted", extra={"target": request.target, "error": str(exc)})
        if self.transport is not None:
            self.transport.abort()
        return
    finally:
        self._answered(request, status, started, response)
    if self.tunnel is None:
        self._next()


async def connection_write_response(
    self: _Connection, request: Request, response: Response
) -> None:
    if self._write_whole(request, response):
        return
    keep_alive = self.stream_keep_alive
    await self._stream_response(request, response, keep_alive, request.http_version == "1.0")
    if not self.stream_keep_alive:
        self.must_close = True


async def connection_stream_response(
    self: _Connection, request: Request, response: Response, keep_alive: bool, http10: bool
) -> None:
    transport = self.transport
    assert transport is not None
    out = response.body
    assert not isinstance(out, bytes)
    length = out.length if isinstance(out, Body) else None
    mode, keep_alive = response_framing(
        request.method, response.status, length=length, http10=http10, keep_alive=keep_alive
    )
    self.stream_keep_alive = keep_alive
    transport.write(
        response_head(
            response.status,
            response.headers,
            mode=mode,
            length=length,
            keep_alive=keep_alive,
            http10=http10,
            reason=response.reason,
        )
    )
    sent = 0
    self.sent = 0
    try:
        async for chunk in out:
            if not chunk or mode is BodyMode.NONE:
                continue
            sent += len(chunk)
            self.sent = sent
            if mode is BodyMode.CHUNKED:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                transport.write(chunk)
            if self.write_paused or self.closed:
                await self._drain()
    finally:
        if isinstance(out, Body):
            out.close()
        else:
            aclose = getattr(out, "aclose", None)
            if aclose is not None:
                await aclose()
    if mode is BodyMode.CHUNKED:
        transport.write(b"0\r\n\r\n")
    elif mode is BodyMode.LENGTH and length is not None and sent != length:
        raise RemoteProtocolError("response body shorter or longer than its Content-Length")


async def server_aenter(self: HTTPServer) -> HTTPServer:
    await self.start()
    return self


async def server_aexit(self: HTTPServer, *exc_info: object) -> None:
    await self.aclose()


async def server_start(self: HTTPServer) -> None:
    """Documented on the HTTPServer method that calls it."""
    self.loop = asyncio.get_running_loop()
    if self.ssl is not None:
        _record_sni(self.ssl)
    # HTTPS: accepted as plain TCP and upgraded by _TLSAccept, so that a client counts from
    # accept and its handshake has a deadline of our own.
    factory: Callable[[], asyncio.Protocol] = (
        (lambda: _Connection(self)) if self.ssl is None else (lambda: _TLSAccept(self))
    )
    try:
        if self.sock is not None:
            self._server = await self.loop.create_server(factory, sock=self.sock, backlog=1024)
        else:
            self._server = await self.loop.create_server(
                factory,
                self.host,
                self.port,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
    except OSError as exc:
        reason = (
            "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        )
        raise ListenError(self.host, self.port, reason) from exc
    # uvloop's Server.sockets is a list where typeshed says tuple: read it untyped.
    sockets: Any = cast(Any, self._server).sockets
    self.port = int(sockets[0].getsockname()[1])
    if self._access_settings is not None and self.access_log is None:
        self.access_log = self._access_settings.open(self.name)
    self._ticker = self.loop.create_task(self._tick(), name=f"{self.name}-timeouts")
    if self._registry is not None:
        self._collector = _ServerCollector(self)
        self._registry.register(self._collector)


async def server_tick(self: HTTPServer) -> None:
    limits = self.limits
    interval = min(limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) / 4
    interval = max(0.02, min(interval, 1.0))
    while True:
        await asyncio.sleep(interval)
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_deadline(now)
        if self.access_log is not None:
            self.access_log.flush()


async def server_drain(self: HTTPServer, timeout: float) -> None:
    """Documented on the HTTPServer method that calls it."""
    self.draining = True
    if self._server is not None:
        self._server.close()
    for accept in list(self.handshaking):
        accept.abort()  # no request yet: nothing to finish
    for conn in list(self.connections):
        idle = conn.active is None and not conn.queue and conn.reading is None
        if idle and conn.tunnel is None and conn.transport is not None:
            conn.transport.close()
    if self.connections:
        self._all_closed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._all_closed.wait()
    await self.aclose()


async def server_aclose(self: HTTPServer) -> None:
    """Documented on the HTTPServer method that calls it."""
    self.draining = True
    if self._server is not None:
        self._server.close()
    for conn in list(self.connections):
        if conn.transport is not None:
            conn.transport.abort()
    for accept in list(self.handshaking):
        accept.abort()
    self.handshaking.clear()
    ticker, server, collector = self._ticker, self._server, self._collector
    self._ticker = self._server = self._collector = None
    try:
        await finish_closing(ticker, server, self._registry, collector)
    finally:
        if self._access_settings is not None and self.access_log is not None:
            self.access_log.close()
            self.access_log = None
        elif self.access_log is not None:
            self.access_log.flush()
