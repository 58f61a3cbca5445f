"""The upstream side of the engine: keep-alive connection pools and ``send``.

Theory of operation. :class:`UpstreamPool` keeps, per :class:`Upstream`, a stack of idle
connections (most recently used first, so a few warm connections serve a steady load and the
rest expire) and a count of busy ones. :meth:`UpstreamPool.send` takes a connection (or opens
one, waiting for a free slot at the per-upstream limit), writes the request head and body, and
returns as soon as the response head arrived: the body streams through a bounded
:class:`~podkit.engines.http.messages.Body` while the caller writes it on. The connection goes
back to the pool when the response ended and the upstream allowed keep-alive; a connection
whose response was abandoned half-way is closed, never reused.

Outcomes are exceptions a policy can act on (see :mod:`podkit.engines.errors`): connect
failure (nothing sent), timeout, upstream closed, no slot. A request on a reused connection
that the upstream had just closed (the keep-alive race) is retried once on a fresh connection
when its body can be sent again, because no byte of a response was seen.

Timeouts are deadlines checked by one ticker task per pool, not a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httptools
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from podkit._pickling import reduce_dataclass
from podkit.engines.errors import (
    UpstreamClosed,
    UpstreamError,
    UpstreamTimeout,
)
from podkit.engines.http.messages import EMPTY_BODY, Body, Handler, Request, Response
from podkit.engines.http.rules import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    HOP_BY_HOP,
    Forwarding,
    Headers,
    connection_tokens,
    forwarded_headers,
    forwarded_request_head,
    parse_content_length,
    response_has_body,
)
from podkit.errors import ConfigError, RemoteProtocolError

DEFAULT_CONNECT_TIMEOUT = 5.0  # a local upstream connects in microseconds; 5 s is a dead host
DEFAULT_RESPONSE_TIMEOUT = 60.0  # silence allowed while waiting for response bytes (nginx 60 s)
DEFAULT_IDLE_TIMEOUT = 30.0  # idle upstream connections closed after this (below common 60 s)
DEFAULT_MAX_CONNECTIONS_PER_UPSTREAM = 1024  # beyond it requests wait for a free connection
DEFAULT_MAX_IDLE_PER_UPSTREAM = 256  # idle connections kept per upstream (nginx keepalive N)


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream server, the key of its connection pool.

    Attributes:
        host: a host name or address.
        port: the TCP port.
        tls: connect with TLS (``https://``).
    """

    host: str
    port: int
    tls: bool = False
    _hash: int = field(init=False, compare=False, repr=False, default=0)
    _authority: str = field(init=False, compare=False, repr=False, default="")

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_dataclass(self)  # picklable when compiled (see podkit._pickling)

    def __post_init__(self) -> None:
        # The pool looks an upstream up on every request: hash it once.
        object.__setattr__(self, "_hash", hash((self.host, self.port, self.tls)))
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "_authority", f"{host}:{self.port}")

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def parse(cls, url: str) -> Upstream:
        """An upstream from ``http://host:port``, ``https://host[:port]`` or ``host:port``.

        Raises:
            ConfigError: the URL has another scheme, a path, or no port where one is needed.
        """
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(f"upstream {url!r}: scheme must be http or https")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"upstream {url!r}: expected scheme://host:port, without a path")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"upstream {url!r}: invalid port") from exc
        if not parts.hostname:
            raise ConfigError(f"upstream {url!r}: missing host")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        return cls(parts.hostname, port, parts.scheme == "https")

    @property
    def authority(self) -> str:
        """``host:port`` (IPv6 addresses in brackets)."""
        return self._authority

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}"


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a pool's counters.

    Attributes:
        open: connections open now (busy and idle).
        idle: idle connections now.
        requests: requests sent.
        reused: requests sent on a kept-alive connection.
        connects: connections opened.
        connect_errors: connections that failed to open.
        timeouts: responses that timed out.
        closed_early: responses the upstream broke off.
    """

    open: int
    idle: int
    requests: int
    reused: int
    connects: int
    connect_errors: int
    timeouts: int
    closed_early: int


class StaleConnection(Exception):
    """A reused connection closed before any response byte (the keep-alive race).

    A direct handler (:class:`~podkit.engines.http.proxy.ProxyHandler`) may also hand its
    sink one to send the request down the ordinary path; ``resume``, when given, is the
    handler that path calls instead of the server's own (a policy continuing what it began,
    e.g. with the backend it already picked).
    """

    def __init__(self, *args: object, resume: Handler | None = None) -> None:
        super().__init__(*args)
        self.resume = resume


class ResponseSink(Protocol):
    """Where :meth:`UpstreamPool.send_to` delivers the outcome of an exchange.

    Called synchronously from the connection's protocol callbacks, exactly once (``done()``
    turns true), with the response as soon as its head arrived (or whole, when its body came
    with it), or with the error :meth:`UpstreamPool.send` would raise. An
    :class:`asyncio.Future` is one.
    """

    def done(self) -> bool:
        """Whether the outcome was delivered already."""

    def set_result(self, response: Response, /) -> None:
        """The response (its body is bytes or a streaming :class:`Body`)."""

    def set_exception(self, exc: BaseException, /) -> None:
        """The exchange failed (an UpstreamError, or StaleConnection: send again)."""


class _HeadDone(Exception):
    """Raised from the parser callback to stop it after the head of a response to HEAD."""


@dataclass(slots=True)
class _Slot:
    idle: list[_UpstreamConnection] = field(default_factory=list)
    busy: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class _UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, upstream: Upstream) -> None:
        self.pool = pool
        self.upstream = upstream
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.deadline = 0.0
        self.timeout = 0.0
        self.uses = 0
        # the exchange in progress
        self.waiter: ResponseSink | None = None
        self.method = "GET"
        self.headers: Headers = []
        self.header_bytes = 0
        self.reason: bytes | None = None
        self.body: Body | None = None
        self.pending: Response | None = None
        self.pending_length: int | None = None
        self.pending_chunks: list[bytes] = []
        self.pending_size = 0
        self.got_bytes = False
        self.interim = False
        self.interim_for: Request | None = None  # whose client 1xx responses are relayed to
        self.until_close = False
        self.response_done = False
        self.request_done = False
        self.reusable = False
        # flow control and tunnel
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.client: asyncio.Transport | None = None
        self.early: bytes = b""
        self.tunnel = False

    # --- transport callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.uses > 1 and not self.got_bytes:
                waiter.set_exception(StaleConnection())
            else:
                waiter.set_exception(
                    UpstreamClosed(
                        "upstream closed the connection before a response",
                        upstream=self.upstream.authority,
                        request_sent=True,
                    )
                )
        body = self.body
        if body is not None and not body.finished:
            if self.until_close:
                body.finish()
            else:
                self.pool.counters["closed_early"] += 1
                body.fail(
                    UpstreamClosed(
                        "upstream closed the connection in the middle of a response",
                        upstream=self.upstream.authority,
                        request_sent=True,
                    )
                )
        if self.client is not None:
            client = self.client
            self.client = None
            with contextlib.suppress(Exception):
                if client.can_write_eof() and not client.is_closing():
                    client.write_eof()
            client.close()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.client is not None:
            self.client.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.client is not None:
            self.client.resume_reading()
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drain(self) -> Coroutine[Any, Any, None]:
        return _aio.connection_drain(self)

    def eof_received(self) -> bool | None:
        if self.tunnel and self.client is not None:
            if self.client.can_write_eof():
                self.client.write_eof()
            return True  # half-close: the client may still send
        return None

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            if self.client is not None:
                self.client.write(data)
            else:
                self.early += data
            return
        self.got_bytes = True
        if self.timeout:
            self.deadline = self.loop.time() + self.timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            self.early = data[exc.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadDone):
                self.parser = httptools.HttpResponseParser(self)
                self._message_complete(keep_alive=self._head_keep_alive)
            else:
                self._broken(str(exc.__context__ or exc))
        except httptools.HttpParserError as exc:
            self._broken(str(exc) or "malformed response")
            return
        if self.pending is not None and not self.closed:
            self._stream_pending()
        if self.in_head:
            # Counted on raw bytes rather than per field: cheaper, and it also bounds a field
            # that never ends.
            self.header_bytes += len(data)
            if self.header_bytes > self.pool.max_header_bytes:
                self._broken("response head too large")

    _head_keep_alive = False
    in_head = False

    def _broken(self, reason: str) -> None:
        error = UpstreamClosed(
            f"invalid response: {reason}", upstream=self.upstream.authority, request_sent=True
        )
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.body is not None and not self.body.finished:
            self.body.fail(error)
        self.abort()

    # --- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.header_bytes = 0  # raw bytes of this head, counted in data_received
        self.in_head = True
        self.reason = None

    def on_status(self, status: bytes) -> None:
        self.reason = status if self.reason is None else self.reason + status

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        if len(headers) > self.pool.max_header_count:
            raise RemoteProtocolError("upstream response has too many header fields", status=502)

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self.interim = True  # 100 Continue, 103 Early Hints: the final response follows
            request = self.interim_for
            # RFC 9110 §15.2: a proxy forwards 1xx responses, except a 100 Continue, which
            # answered our own request's expectation (the server sends the client its own).
            if status != 100 and request is not None and request.interim is not None:
                fields = [(n, v) for n, v in self.headers if n.lower() not in HOP_BY_HOP]
                request.interim(request, status, fields)
            return
        headers: Headers = []
        lines: list[bytes] = []  # the same fields minus Content-Length, as wire lines
        lengths: list[bytes] | None = None
        chunked = False
        relayable = status != 101
        named: set[bytes] | None = None
        for name, value in self.headers:
            lname = name.lower()
            if lname not in _RESPONSE_SPECIAL:
                headers.append((name, value))  # most fields: one set test
                lines += (name, b": ", value, b"\r\n")
                continue
            if lname in HOP_BY_HOP:
                if lname == b"connection":
                    tokens = connection_tokens(value)
                    named = tokens if named is None else named | tokens
                elif lname == b"transfer-encoding":
                    chunked = True
                    if value.strip(b" \t").lower() != b"chunked":
                        # Another coding (gzip, or "gzip, chunked") could be neither removed
                        # nor passed on faithfully: refuse the response, as nginx does.
                        raise RemoteProtocolError(
                            "upstream response has a transfer coding other than chunked",
                            status=502,
                        )
                if status != 101 or lname != b"upgrade":
                    continue
            elif lname == b"content-length":
                if lengths is None:
                    lengths = [value]
                else:
                    lengths.append(value)
            else:  # Via: the relay path adds its entry as a new field, so it needs none here
                relayable = False
            headers.append((name, value))
        if named and not named <= HOP_BY_HOP:  # "Connection: keep-alive" names nothing left
            named -= {b"upgrade"} if status == 101 else set()
            headers = [(n, v) for n, v in headers if n.lower() not in named]
            relayable = False
        length: int | None = None
        if lengths is not None and not chunked:
            first = lengths[0]
            if len(lengths) == 1 and first.isdigit() and len(first) < 19:
                length = int(first)  # the common case, without the general parser
            else:
                length = parse_content_length(lengths)
        response = Response(status, headers, EMPTY_BODY, reason=self.reason)
        if relayable:
            response.relay_fields = b"".join(lines)
        if status == 101:
            response.upgraded = _UpstreamTunnel(self)
        elif response_has_body(self.method, status):
            self.until_close = not chunked and length is None
            # Held back until this read is parsed: a body that completes in it is handed over
            # as bytes (no stream machinery for the common small response); otherwise
            # data_received turns it into a streaming Body.
            self.pending = response
            self.pending_length = length
            self.pending_chunks = []
            self.pending_size = 0
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self.method == "HEAD":
            self._head_keep_alive = self.parser.should_keep_alive()
            raise _HeadDone  # llhttp would wait for the Content-Length bytes of the GET

    def on_body(self, data: bytes) -> None:
        if self.body is not None:
            self.body.feed(data)
            return
        if self.pending is not None:
            self.pending_chunks.append(data)
            self.pending_size += len(data)
            if self.pending_size > self.pool.buffer_bytes:
                self._stream_pending()

    def _stream_pending(self) -> None:
        """Hand the held-back response over with a streaming Body holding what arrived."""
        response = self.pending
        assert response is not None
        self.pending = None
        body = self.body = Body(
            length=self.pending_length,
            high_water=self.pool.buffer_bytes,
            pause=self._pause_reading,
            resume=self._resume_reading,
            on_close=self._body_closed,
        )
        for chunk in self.pending_chunks:
            body.feed(chunk)
        self.pending_chunks = []
        response.body = body
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.parser.get_status_code() == 101:
            return  # the tunnel takes over
        self._message_complete(keep_alive=self.parser.should_keep_alive())

    def _message_complete(self, *, keep_alive: bool) -> None:
        self.response_done = True
        self.deadline = 0.0
        response = self.pending
        waiter = self.waiter
        if response is not None:
            self.pending = None
            chunks = self.pending_chunks
            self.pending_chunks = []
            response.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        body = self.body
        self.body = None
        if body is not None:
            body.finish()
        self.reusable = keep_alive and not self.until_close
        if self.request_done:
            self._release()
        # Delivered last: a synchronous sink may already send its next request on this
        # connection, which must then be back in the pool with this exchange finished.
        if response is not None and waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _release(self) -> None:
        self.waiter = None
        if self.reusable and not self.closed:
            # A connection is idle only while it is read: the next response on it (and the
            # upstream closing it) must be seen, whatever the last body's consumer did.
            self._resume_reading()
            self.pool._release(self)
        else:
            self.abort()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.response_done and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
            self.deadline = 0.0  # our client is slow, not the upstream: no timeout meanwhile

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
            if self.timeout and not self.response_done:
                self.deadline = self.loop.time() + self.timeout

    def _body_closed(self, finished: bool) -> None:
        if not finished and not self.response_done:
            self.abort()  # the rest of the response will not be read: this connection is spent

    def abandon_if_cancelled(self, waiter: asyncio.Future[Response]) -> None:
        if waiter.cancelled():
            self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
            if self.transport is not None:
                self.transport.abort()

    # --- the exchange ---------------------------------------------------------------------------

    def begin(
        self,
        method: str,
        timeout: float,
        sink: ResponseSink | None = None,
        request: Request | None = None,
    ) -> ResponseSink:
        self.uses += 1
        self.method = method
        self.interim_for = request
        self.got_bytes = False
        self.interim = False
        self.until_close = False
        self.response_done = False
        self.request_done = False
        self.reusable = False
        self.body = None
        self.pending = None
        self.timeout = timeout
        self.deadline = self.loop.time() + timeout if timeout else 0.0
        waiter = self.waiter = self.loop.create_future() if sink is None else sink
        return waiter

    def request_sent(self) -> None:
        self.request_done = True
        if self.response_done:
            self._release()

    def expire(self) -> None:
        error = UpstreamTimeout(
            "no response within the timeout", upstream=self.upstream.authority, request_sent=True
        )
        self.pool.counters["timeouts"] += 1
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.body is not None and not self.body.finished:
            self.body.fail(error)
        self.abort()


class _UpstreamTunnel:
    """The upstream half of a tunnel after ``101 Switching Protocols``."""

    def __init__(self, conn: _UpstreamConnection) -> None:
        self.conn = conn

    def attach(self, client: asyncio.Transport) -> bytes:
        conn = self.conn
        conn.deadline = 0.0
        conn.client = client
        conn.pool._detach(conn)
        early, conn.early = conn.early, b""
        if conn.closed:
            client.close()
        return early

    def write(self, data: bytes) -> None:
        if self.conn.transport is not None and not self.conn.closed:
            self.conn.transport.write(data)

    def write_eof(self) -> None:
        transport = self.conn.transport
        if transport is not None and not self.conn.closed and transport.can_write_eof():
            transport.write_eof()

    def pause_reading(self) -> None:
        if self.conn.transport is not None and not self.conn.closed:
            self.conn.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.conn.transport is not None and not self.conn.closed:
            self.conn.transport.resume_reading()

    def close(self) -> None:
        self.conn.client = None
        if self.conn.transport is not None:
            self.conn.transport.close()


def forwarded_head(
    request: Request, forwarding: Forwarding, upstream: Upstream, authority: bytes
) -> bytes:
    """The head of body-less ``request`` as it goes to ``upstream`` under ``forwarding``
    (``authority``: the Host value, ``upstream.authority`` IDNA-encoded): one pass over the
    fields in the common case, the general rules when ``Connection`` names end-to-end fields.
    What a direct path writes with :meth:`UpstreamPool.send_to`."""
    host = request.framing.host if request.framing is not None else None
    head = forwarded_request_head(
        request.method,
        request.target,
        request.headers,
        client_ip=request.client[0],
        scheme=request.scheme,
        host=host,
        http_version=request.http_version,
        forwarding=forwarding,
        authority=authority,
    )
    if head is None:
        head = _request_head(
            request, upstream_request_headers(request, forwarding), upstream, None, False
        )
    return head


def upstream_request_headers(request: Request, forwarding: Forwarding) -> Headers:
    """The fields to send upstream for ``request`` under ``forwarding`` (see
    :func:`~podkit.engines.http.rules.forwarded_headers`)."""
    host = request.framing.host if request.framing is not None else None
    return forwarded_headers(
        request.headers,
        client_ip=request.client[0],
        scheme=request.scheme,
        host=host,
        http_version=request.http_version,
        forwarding=forwarding,
    )


def _request_head(
    request: Request, headers: Headers, upstream: Upstream, body_length: int | None, chunked: bool
) -> bytes:
    parts = [
        request.method.encode("ascii"),
        b" ",
        request.target.encode("latin-1"),
        b" HTTP/1.1\r\n",
    ]
    append = parts.append
    has_host = False
    for name, value in headers:
        if len(name) == 4 and name.lower() == b"host":
            has_host = True
        parts += (name, b": ", value, b"\r\n")
    if not has_host:
        append(b"Host: " + upstream.authority.encode("idna") + b"\r\n")
    if chunked:
        append(b"Transfer-Encoding: chunked\r\n")
    elif body_length is not None:
        append(b"Content-Length: %d\r\n" % body_length)
    framing = request.framing
    if framing is not None and framing.upgrade is not None:
        append(b"Connection: upgrade\r\nUpgrade: " + framing.upgrade + b"\r\n")
    append(b"\r\n")
    return b"".join(parts)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Response fields on_headers_complete looks at; every other one is relayed as it is.
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length", b"via"}


class UpstreamPool:
    """Keep-alive connections to upstreams, and :meth:`send` to forward a request over one.

    Use as ``async with UpstreamPool() as pool:`` (a ticker task expires idle connections and
    enforces response timeouts).

    Args:
        connect_timeout: seconds to establish a connection (then :class:`UpstreamConnectError`).
        response_timeout: seconds of silence allowed while a response is awaited or streams
            (then :class:`UpstreamTimeout`); ``send(timeout=)`` overrides it per request.
        idle_timeout: idle connections older than this are closed.
        max_connections_per_upstream: busy plus idle connections per upstream; beyond it a
            request waits up to ``connect_timeout`` for one to free up (then
            :class:`NoUpstreamAvailable`).
        max_idle_per_upstream: idle connections kept per upstream.
        buffer_bytes: response bytes buffered before the upstream is no longer read.
        ssl: the client context for ``https`` upstreams (default: system trust store).
        registry: a Prometheus registry to export the pool's metrics to.
        source_address: the local IP address connections leave from (default: the
            system's choice).
    """

    def __init__(
        self,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        response_timeout: float = DEFAULT_RESPONSE_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections_per_upstream: int = DEFAULT_MAX_CONNECTIONS_PER_UPSTREAM,
        max_idle_per_upstream: int = DEFAULT_MAX_IDLE_PER_UPSTREAM,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        ssl: ssl_module.SSLContext | None = None,
        registry: CollectorRegistry | None = None,
        metrics_prefix: str = "podkit_upstream",
        source_address: str | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.source_address = source_address
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections_per_upstream
        self.max_idle = max_idle_per_upstream
        self.buffer_bytes = buffer_bytes
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count
        self.ssl = ssl
        self.metrics_prefix = metrics_prefix
        self.counters = {
            "requests": 0,
            "reused": 0,
            "connects": 0,
            "connect_errors": 0,
            "timeouts": 0,
            "closed_early": 0,
        }
        self._slots: dict[Upstream, _Slot] = {}
        self._busy: set[_UpstreamConnection] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._registry = registry
        self._collector: _PoolCollector | None = None
        self.loop: asyncio.AbstractEventLoop  # set by start()

    def __aenter__(self) -> Coroutine[Any, Any, UpstreamPool]:
        return _aio.pool_aenter(self)

    def __aexit__(self, *exc_info: object) -> Coroutine[Any, Any, None]:
        return _aio.pool_aexit(self, *exc_info)

    def start(self) -> Coroutine[Any, Any, None]:
        """Start the ticker (``async with`` does this)."""
        return _aio.pool_start(self)

    def aclose(self) -> Coroutine[Any, Any, None]:
        """Close every connection and stop the ticker."""
        return _aio.pool_aclose(self)

    def statistics(self) -> PoolStatistics:
        """A snapshot of the counters."""
        idle = sum(len(slot.idle) for slot in self._slots.values())
        c = self.counters
        return PoolStatistics(
            open=idle + len(self._busy),
            idle=idle,
            requests=c["requests"],
            reused=c["reused"],
            connects=c["connects"],
            connect_errors=c["connect_errors"],
            timeouts=c["timeouts"],
            closed_early=c["closed_early"],
        )

    def send_now(
        self, upstream: Upstream, request: Request, headers: Headers, timeout: float | None
    ) -> asyncio.Future[Response] | None:
        """Start a body-less request on an idle kept-alive connection, without awaiting.

        The engine's fast path for plain forwarding: returns the future of the response, or
        None when no idle connection is ready (then use :meth:`send`). The future fails with
        the same errors as :meth:`send`, or with a private "stale connection" error when the
        upstream had just closed the connection (send again with :meth:`send`). Cancelling
        the future abandons the exchange and closes the connection.
        """
        conn = self._take_idle(upstream)
        if conn is None:
            return None
        self.counters["requests"] += 1
        request.upstream = upstream.authority
        request.upstream_start = self.loop.time()
        head = _request_head(request, headers, upstream, None, False)
        waiter = self.loop.create_future()
        conn.begin(
            request.method, self.response_timeout if timeout is None else timeout, waiter, request
        )
        self._busy.add(conn)
        assert conn.transport is not None
        conn.transport.write(head)
        conn.request_sent()
        waiter.add_done_callback(conn.abandon_if_cancelled)
        return waiter

    def send_to(
        self,
        upstream: Upstream,
        request: Request,
        head: bytes,
        timeout: float | None,
        sink: ResponseSink,
    ) -> Callable[[], None] | None:
        """Start a body-less request on an idle kept-alive connection, without awaiting.

        The engine's fastest path: like :meth:`send_now`, but ``head`` is the complete request
        head as it goes upstream (:func:`~podkit.engines.http.rules.forwarded_request_head`)
        and the outcome goes to ``sink`` synchronously, without a future. Returns the function
        that abandons the exchange (closing the connection), or None when no idle connection
        is ready (then use :meth:`send`).
        """
        conn = self._take_idle(upstream)
        if conn is None:
            return None
        self.counters["requests"] += 1
        request.upstream = upstream.authority
        request.upstream_start = self.loop.time()
        conn.begin(
            request.method, self.response_timeout if timeout is None else timeout, sink, request
        )
        self._busy.add(conn)
        transport = conn.transport
        assert transport is not None
        transport.write(head)
        conn.request_sent()
        return conn.abort

    def send(
        self,
        upstream: Upstream,
        request: Request,
        *,
        headers: Headers | None = None,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """Send ``request`` to ``upstream``; return when the response head arrived.

        The body of the returned response streams from the upstream: read it, iterate it, hand
        it to the server, or ``await response.aclose()`` to abandon it (the connection is then
        closed instead of reused).

        Args:
            upstream: where to send it.
            request: method, target, fields and body (bytes, a :class:`Body` or any async
                iterable of bytes; streamed with chunked coding when its length is unknown).
            headers: the fields to send instead of ``request.headers``; they are sent as given
                (build them with :func:`~podkit.engines.http.rules.forwarded_headers` or
                :func:`~podkit.engines.http.rules.strip_hop_by_hop`). Without it, the request's
                own fields are sent minus hop-by-hop ones. Framing fields are always the pool's.
            timeout: seconds of upstream silence allowed (default: the pool's).

        Returns:
            The response; for a ``101`` its ``upgraded`` tunnel.

        Raises:
            UpstreamConnectError: the connection could not be opened (nothing was sent).
            NoUpstreamAvailable: the upstream's connection limit stayed full (nothing sent).
            UpstreamTimeout: no response (or part of it) within the timeout.
            UpstreamClosed: the upstream closed or sent an invalid response.
        """
        return _aio.pool_send(self, upstream, request, headers=headers, timeout=timeout)

    def _send_body(
        self, conn: _UpstreamConnection, body: AsyncIterable[bytes], chunked: bool
    ) -> Coroutine[Any, Any, None]:
        return _aio.pool_send_body(self, conn, body, chunked)

    # --- connections ----------------------------------------------------------------------------

    def _take_idle(self, upstream: Upstream) -> _UpstreamConnection | None:
        """The most recently used idle connection, without awaiting (the hot path)."""
        slot = self._slots.get(upstream)
        if slot is None:
            return None
        idle = slot.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                slot.busy += 1
                self.counters["reused"] += 1
                return conn
        return None

    def _acquire(self, upstream: Upstream) -> Coroutine[Any, Any, _UpstreamConnection]:
        return _aio.pool_acquire(self, upstream)

    def _connect(self, upstream: Upstream) -> Coroutine[Any, Any, _UpstreamConnection]:
        return _aio.pool_connect(self, upstream)

    def _release(self, conn: _UpstreamConnection) -> None:
        self._busy.discard(conn)
        slot = self._slots[conn.upstream]
        slot.busy -= 1
        if len(slot.idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        conn.waiter = None
        slot.idle.append(conn)
        self._wake(slot)

    def _forget(self, conn: _UpstreamConnection) -> None:
        """A connection closed: drop it from the idle list or the busy count."""
        slot = self._slots.get(conn.upstream)
        if slot is None:
            return
        if conn in self._busy:
            self._busy.discard(conn)
            slot.busy -= 1
            self._wake(slot)
        else:
            with contextlib.suppress(ValueError):
                slot.idle.remove(conn)

    def _detach(self, conn: _UpstreamConnection) -> None:
        """A connection became a tunnel: it no longer counts against the pool."""
        if conn in self._busy:
            self._busy.discard(conn)
            slot = self._slots[conn.upstream]
            slot.busy -= 1
            self._wake(slot)

    @staticmethod
    def _wake(slot: _Slot) -> None:
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _tick(self) -> Coroutine[Any, Any, None]:
        return _aio.pool_tick(self)

    def check_deadlines(self, now: float) -> None:
        """Expire timed-out exchanges and idle connections (the ticker calls this)."""
        for conn in list(self._busy):
            if conn.deadline and now > conn.deadline and not conn.tunnel:
                conn.expire()
        cutoff = now - self.idle_timeout
        for slot in self._slots.values():
            while slot.idle and slot.idle[0].idle_since < cutoff:
                slot.idle.pop(0).abort()


class _PoolCollector(Collector):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def collect(self) -> Iterable[Metric]:
        return pool_metrics([self.pool.statistics()], prefix=self.pool.metrics_prefix)


def pool_metrics(
    snapshots: Iterable[PoolStatistics], *, prefix: str = "podkit_upstream"
) -> Iterator[Metric]:
    """Prometheus metric families for one or more pools' statistics, summed."""
    snaps = list(snapshots)
    gauge = GaugeMetricFamily(
        f"{prefix}_connections", "Upstream connections open now, by state.", labels=["state"]
    )
    idle = sum(s.idle for s in snaps)
    gauge.add_metric(["idle"], idle)
    gauge.add_metric(["busy"], sum(s.open for s in snaps) - idle)
    yield gauge
    for attr, help_text in (
        ("requests", "Requests sent upstream."),
        ("reused", "Requests sent on a kept-alive connection."),
        ("connects", "Upstream connections opened."),
        ("connect_errors", "Upstream connections that failed to open."),
        ("timeouts", "Upstream responses that timed out."),
        ("closed_early", "Upstream responses broken off by the upstream."),
    ):
        counter = CounterMetricFamily(f"{prefix}_{attr}", help_text)
        counter.add_metric([], sum(getattr(s, attr) for s in snaps))
        yield counter


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS_PER_UPSTREAM",
    "DEFAULT_MAX_IDLE_PER_UPSTREAM",
    "DEFAULT_RESPONSE_TIMEOUT",
    "PoolStatistics",
    "Upstream",
    "UpstreamError",
    "UpstreamPool",
    "pool_metrics",
]

# The coroutines, kept in a module that always runs as Python (see its docstring); imported
# last because it imports this module's names.
from podkit.engines.http import _client_aio as _aio  # noqa: E402
