"""The HTTP/1.1 server of the engine: one :class:`asyncio.Protocol` per client connection.

Theory of operation. llhttp (through httptools) parses the bytes as they arrive and calls back
into the connection; :func:`~podkit.engines.http.rules.check_request_head` decides framing and
refuses what is ambiguous before a handler sees anything. Each request gets a task that runs
the handler and writes its response; requests pipelined behind it wait in a queue and are
answered in order. Request bodies stream into a bounded :class:`Body` (reading pauses when it
is full); response bodies are written as they come, and the handler's stream is only pulled
again once the client's socket buffer drained (``pause_writing``/``resume_writing``).

Timeouts are deadlines on the connection (no timer per request): a ticker task checks them a
few times per second. A slow head is answered 408, a silent body 408, an idle keep-alive
connection is closed. Errors a handler raises that carry a ``status`` (``ProtocolError``,
:class:`~podkit.engines.errors.UpstreamError`) are answered with that status and a short body.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
import time
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from podkit.engines.errors import UpstreamError
from podkit.engines.http.access_log import AccessLog, AccessLogSettings, new_request_id
from podkit.engines.http.client import StaleConnection
from podkit.engines.http.messages import (
    EMPTY_BODY,
    Body,
    Handler,
    Request,
    Response,
    TLSInfo,
)
from podkit.engines.http.proxy import ProxyHandler
from podkit.engines.http.rules import (
    BodyMode,
    Headers,
    ServerLimits,
    add_via,
    check_request_head,
    error_response,
    origin_form,
    response_framing,
    response_head,
    status_line,
)
from podkit.errors import PodkitError, ProtocolError, RemoteProtocolError
from podkit.runtime.logging import get_logger
from podkit.runtime.metrics import LATENCY_BUCKETS

log = get_logger("podkit.engines.http")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The end of a response head after its Content-Length, by (keep_alive, http10), as
# response_head writes it.
_CONNECTION_LINES = {
    (True, False): b"\r\n",
    (True, True): b"Connection: keep-alive\r\n\r\n",
    (False, False): b"Connection: close\r\n\r\n",
    (False, True): b"Connection: close\r\n\r\n",
}
_METHODS: dict[bytes, str] = {}
_IDLE, _HEAD, _BODY, _LINGER = 1, 2, 3, 4  # what a connection's deadline is for
# After a refusal the client may still be sending; closing at once would make the kernel
# answer with a reset that can destroy the error response in flight, so the rest is read and
# dropped for a moment (nginx's lingering close, bounded by time as nginx's lingering_time
# is; the byte bound is well above a refused upload's usual size).
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server's counters (also exported as Prometheus metrics).

    Attributes:
        connections_open: client connections open now.
        connections_total: client connections accepted since start.
        requests_total: requests whose response was started or refused.
        responses: responses by status code.
        errors: refusals and failures by reason (``bad_request``, ``header_timeout``,
            ``upstream_connect``...), each also counted in ``responses`` under its status.
        latency_buckets: upper bounds (seconds) of the latency histogram.
        latency_counts: cumulative-free counts per bucket (the last one is ``+Inf``).
        latency_sum: the sum of latencies in seconds.
    """

    connections_open: int
    connections_total: int
    requests_total: int
    responses: dict[int, int]
    errors: dict[str, int]
    latency_buckets: tuple[float, ...]
    latency_counts: tuple[int, ...]
    latency_sum: float


@dataclass(slots=True)
class _Counters:
    connections_total: int = 0
    requests_total: int = 0
    responses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def response(self, status: int, seconds: float) -> None:
        self.requests_total += 1
        self.responses[status] = self.responses.get(status, 0) + 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


_REASONS = {
    400: "bad_request",
    408: "timeout",
    413: "body_too_large",
    414: "uri_too_long",
    417: "expectation_failed",
    503: "overloaded",
    431: "header_too_large",
    501: "not_implemented",
    505: "version_not_supported",
}


def _error_reason(exc: BaseException, status: int) -> str:
    if isinstance(exc, UpstreamError):
        name = type(exc).__name__
        return {
            "UpstreamConnectError": "upstream_connect",
            "UpstreamTimeout": "upstream_timeout",
            "UpstreamClosed": "upstream_closed",
            "NoUpstreamAvailable": "no_upstream",
        }.get(name, "upstream_error")
    return _REASONS.get(status, f"status_{status}")


class _DirectExchange:
    """A request forwarded straight from the protocol callbacks: the upstream connection
    delivers its outcome here synchronously (no task, no future, no loop round-trip)."""

    __slots__ = ("abandon", "conn", "finished", "request", "started")

    def __init__(self, conn: _Connection, request: Request, started: float) -> None:
        self.conn = conn
        self.request = request
        self.started = started
        self.finished = False
        self.abandon: Callable[[], None] | None = None

    def done(self) -> bool:
        return self.finished

    def set_result(self, response: Response, /) -> None:
        if not self.finished:
            self.finished = True
            # The abandoner usually refers back to this exchange (it is the direct
            # handler's sink): dropping it keeps one exchange from becoming a reference
            # cycle that only the garbage collector would free.
            self.abandon = None
            self.conn._direct_done(self, response, None)

    def set_exception(self, exc: BaseException, /) -> None:
        if not self.finished:
            self.finished = True
            self.abandon = None
            self.conn._direct_done(self, None, exc)

    def cancel(self) -> bool:
        """The client went away: drop the exchange (its upstream connection is closed)."""
        if self.finished:
            return False
        self.finished = True
        if self.abandon is not None:
            self.abandon()
        self.conn._client_closed(self.request, self.started)
        return True


class _Rejection:
    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


# The short attribute names of RFC 4514, as X-Client-Subject style headers show them.
_RDN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "userId": "UID",
}


def _tls_info(transport: asyncio.BaseTransport) -> TLSInfo | None:
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    cert = sslobj.getpeercert()
    subject = None
    if cert:
        subject = ",".join(
            f"{_RDN_NAMES.get(key, key)}={value}"
            for rdn in cert.get("subject", ())
            for key, value in rdn
        )
    cipher = sslobj.cipher()
    return TLSInfo(
        sni=_SNI.get(sslobj),
        version=sslobj.version(),
        cipher=cipher[0] if cipher else None,
        peer_subject=subject,
        peer_cert=cert or None,
    )


# Server names from the SNI callback, by SSL object (the object does not keep the name itself).
_SNI: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _record_sni(context: ssl_module.SSLContext) -> None:
    previous = context.sni_callback
    if getattr(previous, "_podkit_records_sni", False):
        return

    def record(sslobj: Any, server_name: str | None, ctx: ssl_module.SSLContext) -> int | None:
        if server_name is not None:
            _SNI[sslobj] = server_name
        if previous is None:
            return None
        return previous(sslobj, server_name, ctx)  # type: ignore[arg-type]

    record._podkit_records_sni = True  # type: ignore[attr-defined]
    context.sni_callback = record


class _TLSAccept(asyncio.Protocol):
    """A client of an HTTPS server from accept until its TLS handshake completes.

    The listener accepts plain TCP; this protocol's ``connection_made`` counts the client
    against ``max_connections`` at once (one that never finishes its handshake still holds a
    socket), then puts the loop's own SSL protocol in front of a :class:`_Connection`, as
    ``create_server(ssl=...)`` would, with ``handshake_timeout`` as its deadline. The
    handshake's outcome ends the count here; the connection counts itself from then on.
    """

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        raw = cast(asyncio.Transport, transport)
        server.counters.connections_total += 1
        if server.open_connections() >= server.limits.max_connections or server.draining:
            server.counters.error("max_connections")
            raw.abort()  # nothing can be answered before the handshake
            return
        assert server.ssl is not None
        peer = raw.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        self.transport = raw
        server.handshaking.add(self)
        loop = server.loop
        handshake: asyncio.Future[None] = loop.create_future()
        handshake.add_done_callback(self._handshake_done)
        tls = _ssl_protocol_class(loop)(
            loop,
            _Connection(server),
            server.ssl,
            handshake,
            server_side=True,
            ssl_handshake_timeout=server.limits.handshake_timeout,
        )
        raw.set_protocol(tls)
        tls.connection_made(raw)

    def _handshake_done(self, handshake: asyncio.Future[None]) -> None:
        server = self.server
        server.handshaking.discard(self)
        if handshake.cancelled():
            return
        exc = handshake.exception()
        if exc is None:
            return
        if self.transport is not None:
            self.transport.abort()
        timed_out = "longer than" in str(exc) or isinstance(exc, TimeoutError)
        server.counters.error("tls_handshake_timeout" if timed_out else "tls_handshake")
        log.warning(
            "TLS handshake failed",
            extra={
                "client": self.client,
                "reason": "no handshake within the timeout"
                if timed_out
                else str(exc) or type(exc).__name__,
            },
        )

    def abort(self) -> None:
        """Close a client still in its handshake (the server stops)."""
        if self.transport is not None:
            self.transport.abort()


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The SSL protocol of ``loop``'s own kind (uvloop's compiled one under uvloop)."""
    module = type(loop).__module__
    if module.startswith("uvloop"):
        import uvloop.loop

        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    import asyncio.sslproto

    return asyncio.sslproto.SSLProtocol


class _Connection(asyncio.Protocol):
    """One client connection: parse, dispatch in order, write responses, tunnel after 101."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] = ("", 0)
        self.tls: TLSInfo | None = None
        self.scheme = "https" if server.ssl is not None else "http"
        # the request being parsed
        self.url = b""
        self.headers: Headers = []
        self.header_bytes = 0
        self.in_head = False
        self.head_raw = 0
        self.reading: Request | None = None
        self.body_received = 0
        # dispatch
        # the handler task, or a direct exchange
        self.active: asyncio.Future[Any] | _DirectExchange | None = None
        self.active_request: Request | None = None
        self.interim_sink = self._send_interim  # bound once, handed to every 1.1 request
        self.queue: deque[Request | _Rejection] = deque()
        self.must_close = False
        self.closed = False
        # flow control
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        # timeouts
        self.deadline = 0.0
        self.deadline_kind = _IDLE
        self.lingering = False
        self.linger_left = 0
        self.handler_started = False
        # upgrade
        self.upgrade_tail: bytes | None = None
        self.tunnel: Any = None
        self.sent = 0  # body bytes of the last response written (for the access log)

    # --- transport callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        server = self.server
        if server.ssl is None:
            server.counters.connections_total += 1  # HTTPS: counted at accept (_TLSAccept)
        if server.open_connections() >= self.limits.max_connections or server.draining:
            server.counters.error("max_connections")
            self.transport.write(error_response(503, "too many connections"))
            self.transport.close()
            self.closed = True
            return
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client = (str(peer[0]), int(peer[1]))
        if server.ssl is not None:
            self.tls = _tls_info(self.transport)
        self.deadline = self.loop.time() + self.limits.keepalive_timeout
        self.deadline_kind = _IDLE

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if not self.server.connections and self.server._all_closed is not None:
            self.server._all_closed.set()
        if self.reading is not None and isinstance(self.reading.body, Body):
            self.reading.body.fail(RemoteProtocolError("client closed the connection"))
        for item in self.queue:
            if isinstance(item, Request) and isinstance(item.body, Body):
                item.body.close()
        self.queue.clear()
        if self.active is not None:
            self.active.cancel()
        if self.tunnel is not None:
            self.tunnel.close()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drain(self) -> Coroutine[Any, Any, None]:
        return _aio.connection_drain(self)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel.write_eof()
            return True  # keep our sending half open: the upstream may still answer
        return None

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.lingering:
            self.linger_left -= len(data)
            if self.linger_left < 0 and self.transport is not None:
                self.transport.close()
            return
        if self.must_close and self.reading is None:
            return  # a refused request: ignore the rest
        if self.upgrade_tail is not None:
            self.upgrade_tail += data
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_tail = data[exc.args[0] :]
            self._pause_reading()
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolError):
                self._refuse(cause.status, str(cause))
            else:
                self._refuse(400, "malformed request")
            return
        except httptools.HttpParserError as exc:
            # The parser's words stay in the log; the client learns only that it was refused.
            log.debug("malformed request", extra={"client": self.client[0], "error": str(exc)})
            self._refuse(400, "malformed request")
            return
        if self.in_head:
            self.head_raw += len(data)
            if self.head_raw > self.limits.max_header_bytes + self.limits.max_uri_bytes:
                self._refuse(431, "request head too large")

    # --- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.in_head = True
        self.head_raw = 0
        self.deadline = self.loop.time() + self.limits.header_timeout
        self.deadline_kind = _HEAD

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_uri_bytes:
            raise RemoteProtocolError("request target too long", status=414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes:
            raise RemoteProtocolError("request header fields too large", status=431)
        if not self.in_head:
            # A trailer field of a chunked body: never merged into the header section (a
            # trailer could otherwise add Host or Authorization after the checks); dropped,
            # as RFC 9110 §6.5.1 allows.
            return
        if b"_" in name and not self.limits.underscores_in_headers:
            return  # X_Forwarded_For reads as X-Forwarded-For to CGI and WSGI apps
        self.headers.append((name, value))
        if len(self.headers) > self.limits.max_header_count:
            raise RemoteProtocolError("too many request header fields", status=431)

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method)
        if method is None:
            method = raw_method.decode("ascii")
            if len(_METHODS) < 64:
                _METHODS[raw_method] = method
        version = parser.get_http_version()
        if self.url[:1] != b"/":
            absolute = origin_form(self.url)
            if absolute is not None:
                # RFC 9112 §3.2.2: forwarded in origin-form, Host taken from the target.
                self.url, authority = absolute
                self.headers = [(n, v) for n, v in self.headers if n.lower() != b"host"]
                self.headers.append((b"Host", authority))
        framing = check_request_head(
            method, version, self.headers, max_body_bytes=self.limits.max_body_bytes
        )
        request_id = b""
        if self.server.request_ids:
            for name, value in self.headers:
                if len(name) == 12 and name.lower() == b"x-request-id":
                    request_id = value
                    break
            else:
                # Generated when absent, and sent upstream with the request's own fields.
                request_id = new_request_id()
                self.headers.append((b"X-Request-Id", request_id))
        body: Body = EMPTY_BODY
        if framing.chunked or framing.content_length:
            body = Body(
                length=framing.content_length,
                high_water=self.limits.buffer_bytes,
                pause=self._pause_reading,
                resume=self._resume_reading,
                on_first_read=self._send_continue if framing.expect_continue else None,
                on_close=self._request_body_closed,
            )
            self.deadline = self.loop.time() + self.limits.body_timeout
            self.deadline_kind = _BODY
        else:
            self.deadline = 0.0
        self.body_received = 0
        request = Request(
            method,
            self.url.decode("latin-1"),
            self.headers,
            body,
            http_version=version,
            client=self.client,
            scheme=self.scheme,
            tls=self.tls,
            framing=framing,
            keep_alive=parser.should_keep_alive(),
        )
        request.request_id = request_id
        if version == "1.1":
            request.interim = self.interim_sink  # HTTP/1.0 clients get no 1xx (RFC 9110 §15.2)
        self.reading = request
        if self.active is None and not self.queue:
            self._start(request)
            return
        queue = self.queue
        if len(queue) >= self.limits.max_pipeline:
            # Bounded: what one read delivered is parsed at once, so pausing alone is not enough.
            raise RemoteProtocolError("too many pipelined requests", status=503)
        queue.append(request)
        if len(queue) >= max(1, self.limits.max_pipeline // 4):
            self._pause_reading()  # resumed when the queue is empty again

    def on_body(self, data: bytes) -> None:
        self.body_received += len(data)
        if self.body_received > self.limits.max_body_bytes:
            raise RemoteProtocolError("request body too large", status=413)
        request = self.reading
        if request is not None:
            body = request.body
            assert isinstance(body, Body)
            body.feed(data)
            self.deadline = self.loop.time() + self.limits.body_timeout

    def on_message_complete(self) -> None:
        request = self.reading
        if request is not None:
            body = request.body
            if body is not EMPTY_BODY:
                assert isinstance(body, Body)
                body.finish()
            if self.deadline_kind == _BODY:
                self.deadline = 0.0
                self.deadline_kind = _IDLE
        self.reading = None

    # --- flow control helpers -------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()
            if self.deadline_kind == _BODY:
                self.deadline = 0.0  # the upstream is slow to take the body, not the client

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
            if self.deadline_kind == _BODY and self.reading is not None:
                self.deadline = self.loop.time() + self.limits.body_timeout

    def _send_continue(self) -> None:
        request = self.active_request
        if (
            self.body_received == 0
            and request is not None
            and request.http_version == "1.1"
            and self.transport is not None
            and not self.closed
        ):
            self.transport.write(_CONTINUE)

    def _send_interim(self, request: Request, status: int, fields: Headers) -> None:
        """Relay an upstream's 1xx (103 Early Hints, 102...) to the client, before the final
        response; not once another request is being answered or the client is gone."""
        if request is not self.active_request or self.closed or self.transport is None:
            return
        lines = [status_line(status)]
        lines += (name + b": " + value + b"\r\n" for name, value in fields)
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines))

    def _request_body_closed(self, finished: bool) -> None:
        if not finished:
            self.must_close = (
                True  # the rest of the body is unread: the next request's start is unknown
            )

    # --- refusals and timeouts ------------------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` once earlier responses are written, then close."""
        self.in_head = False
        self.deadline = 0.0
        reading = self.reading
        self.reading = None
        self.must_close = True
        self._pause_reading()
        if reading is not None and reading is self.active_request:
            if not self.handler_started and self.active is not None:
                # The head and the bad body arrived in one read: the handler never ran, so
                # nothing went upstream. Refuse as if the head itself were bad.
                self.active.cancel()
                self.active = None
                self.active_request = None
            else:
                # The handler is streaming this request's body: it learns of the refusal from
                # the body, and the status reaches the client as its error (if nothing was sent
                # yet); the upstream connection is dropped before the body is complete.
                assert isinstance(reading.body, Body)
                reading.body.fail(RemoteProtocolError(reason, status=status))
                return
        if reading is not None and reading in self.queue:
            self.queue.remove(reading)
        if self.active is None:
            self._write_refusal(status, reason)
        else:
            self.queue.append(_Rejection(status, reason))

    def _write_refusal(self, status: int, reason: str) -> None:
        counters = self.server.counters
        counters.error(_REASONS.get(status, f"status_{status}"))
        self.sent = 0
        self._answered(None, status, self.loop.time(), None)
        if self.transport is not None and not self.closed:
            self.transport.write(error_response(status, reason))
            self._close_gracefully()

    def _close_gracefully(self) -> None:
        """Send FIN, drop what the client still sends for a moment, then close."""
        transport = self.transport
        assert transport is not None
        if self.lingering or self.closed:
            return
        self.lingering = True
        self.linger_left = LINGER_BYTES
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.deadline = self.loop.time() + LINGER_SECONDS
        self.deadline_kind = _LINGER
        self.read_paused = False
        transport.resume_reading()

    def check_deadline(self, now: float) -> None:
        if self.deadline == 0.0 or now < self.deadline or self.closed:
            return
        kind = self.deadline_kind
        self.deadline = 0.0
        if kind == _LINGER:
            assert self.transport is not None
            self.transport.close()
        elif kind == _IDLE:
            if self.active is None and not self.queue:
                self.server.counters.error("keepalive_timeout")
                assert self.transport is not None
                self.transport.close()
        elif kind == _HEAD:
            self._refuse(408, "request head not received in time")
        else:
            self._refuse(408, "request body not received in time")

    # --- dispatch -------------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self.handler_started = False
        self.active_request = request
        direct = self.server.direct
        if (
            direct is not None
            and request.body is EMPTY_BODY
            and (request.framing is None or request.framing.upgrade is None)
        ):
            exchange = _DirectExchange(self, request, self.loop.time())
            self.handler_started = True
            self.active = exchange
            abandon = direct.start(request, exchange)
            if abandon is not None:
                # Plain forwarding on a kept-alive connection: no task, the upstream
                # connection hands the response over from its own callbacks.
                if not exchange.finished:
                    exchange.abandon = abandon
                return
            self.handler_started = False
        self.active = self.loop.create_task(self._respond(request))

    def _direct_done(
        self, exchange: _DirectExchange, result: Response | None, exc: BaseException | None
    ) -> None:
        if self.active is not exchange or self.closed:
            # the client went away
            if result is not None and isinstance(result.body, Body):
                result.body.close()  # an unread upstream body releases its connection
            return
        request = exchange.request
        started = exchange.started
        if isinstance(exc, StaleConnection):
            # The upstream had closed the kept-alive connection (or the direct handler chose
            # the ordinary path): the ordinary path sends it.
            self.active = self.loop.create_task(self._respond(request, exc.resume))
            return
        server = self.server
        direct = server.direct
        assert direct is not None
        via = None
        if result is not None:
            response = result
            via = direct.via  # added while the head is written (ProxyHandler.finish's work)
            if request.upstream_start:
                request.upstream_time = self.loop.time() - request.upstream_start
        elif exc is None:
            raise AssertionError("an exchange ends with a response or an error")
        elif isinstance(exc, ProtocolError | UpstreamError):
            server.counters.error(_error_reason(exc, exc.status))
            response = _error(exc.status, exc, request)
        else:
            log.error("forwarding failed", exc_info=exc, extra={"target": request.target})
            server.counters.error("handler_failed")
            response = _error(500, exc)
        try:
            if not self._write_whole(request, response, via):
                self.active = self.loop.create_task(self._finish_stream(request, response, started))
                return
        except (ConnectionError, PodkitError, OSError):
            if isinstance(response.body, Body):
                response.body.close()  # an unread upstream body releases its connection
            server.counters.error("response_aborted")
            if self.transport is not None:
                self.transport.abort()
            self._answered(request, response.status, started, response)
            return
        self._answered(request, response.status, started, response)
        if self.tunnel is None:
            self._next()

    def _client_closed(self, request: Request, started: float) -> None:
        """Count a request whose client left before its response (499, as nginx logs it)."""
        self.sent = 0
        self._answered(request, CLIENT_CLOSED, started, None)
        log.debug("client closed the connection", extra={"target": request.target})

    def _answered(
        self, request: Request | None, status: int, started: float, response: Response | None
    ) -> None:
        """Count an answered request and write its access-log line."""
        server = self.server
        duration = self.loop.time() - started
        server.counters.response(status, duration)
        access_log = server.access_log
        if access_log is not None:
            access_log.record(
                request,
                status,
                duration=duration,
                sent=self.sent,
                response=response,
                client=self.client[0],
            )

    def _finish_stream(
        self, request: Request, response: Response, started: float
    ) -> Coroutine[Any, Any, None]:
        return _aio.connection_finish_stream(self, request, response, started)

    def _next(self) -> None:
        self.active = None
        self.active_request = None
        if self.closed:
            return
        if self.must_close and not self.queue:
            self._close_gracefully()
            return
        if self.queue:
            item = self.queue.popleft()
            if isinstance(item, _Rejection):
                self._write_refusal(item.status, item.reason)
            else:
                self._start(item)
            return
        if self.reading is None and not self.in_head:
            self.deadline = self.loop.time() + self.limits.keepalive_timeout
            self.deadline_kind = _IDLE
        self._resume_reading()

    def _respond(
        self, request: Request, handler: Handler | None = None
    ) -> Coroutine[Any, Any, None]:
        return _aio.connection_respond(self, request, handler)

    def _write_whole(self, request: Request, response: Response, via: bytes | None = None) -> bool:
        """Write a response whose body is all here (or switch to a tunnel after a 101).

        Returns False, writing nothing, when the body must be streamed; the keep-alive
        decision is then left in ``stream_keep_alive`` for :meth:`_stream_response`.
        ``via`` is a ``Via`` entry to add to the response's fields.

        Raises:
            ConnectionResetError: the client is gone.
        """
        transport = self.transport
        assert transport is not None
        keep_alive = request.keep_alive and not self.must_close and not self.server.draining
        body = request.body
        if body is not EMPTY_BODY and isinstance(body, Body) and not body.finished:
            keep_alive = False  # unread request body: where the next request starts is unknown
        framing = request.framing
        if framing is not None and framing.upgrade is not None:
            if response.status == 101 and response.upgraded is not None:
                if via is not None:
                    add_via(response.headers, http_version="1.1", via=via)
                self._switch_to_tunnel(response)
                return True
            keep_alive = False
        if self.closed:
            raise ConnectionResetError("client closed the connection")
        out = response.body
        if isinstance(out, bytes):
            data = out
        elif isinstance(out, Body) and out.complete:
            chunks = out.take_all()
            data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        else:
            if via is not None:
                add_via(response.headers, http_version="1.1", via=via)
            self.stream_keep_alive = keep_alive
            return False
        http10 = request.http_version == "1.0"
        mode, keep_alive = response_framing(
            request.method, response.status, length=len(data), http10=http10, keep_alive=keep_alive
        )
        fields = response.relay_fields
        if via is not None and fields is not None and mode is BodyMode.LENGTH:
            # Plain forwarding: the upstream's fields were sorted and serialised by the pool
            # already; the same bytes response_head would write, without a second pass.
            transport.write(
                b"".join(
                    (
                        status_line(response.status, response.reason),
                        fields,
                        b"Via: %b\r\nContent-Length: %d\r\n" % (via, len(data)),
                        _CONNECTION_LINES[keep_alive, http10],
                        data,
                    )
                )
            )
            if isinstance(out, Body):
                out.close()
            if not keep_alive:
                self.must_close = True
            self.sent = len(data)
            return True
        head = response_head(
            response.status,
            response.headers,
            mode=mode,
            length=len(data),
            keep_alive=keep_alive,
            http10=http10,
            reason=response.reason,
            via=via,
        )
        transport.write(head + data if mode is not BodyMode.NONE and data else head)
        self.sent = len(data) if mode is not BodyMode.NONE else 0
        if isinstance(out, Body):
            out.close()
        if not keep_alive:
            self.must_close = True
        return True

    stream_keep_alive = False

    def _write_response(self, request: Request, response: Response) -> Coroutine[Any, Any, None]:
        return _aio.connection_write_response(self, request, response)

    def _stream_response(
        self, request: Request, response: Response, keep_alive: bool, http10: bool
    ) -> Coroutine[Any, Any, None]:
        return _aio.connection_stream_response(self, request, response, keep_alive, http10)

    def _switch_to_tunnel(self, response: Response) -> None:
        transport = self.transport
        assert transport is not None
        assert response.upgraded is not None
        # The framing rules would drop Connection; a 101 must say which protocol follows.
        head = response_head(
            101,
            [(n, v) for n, v in response.headers if n.lower() != b"upgrade"],
            mode=BodyMode.NONE,
            length=None,
            keep_alive=True,
            http10=False,
            reason=response.reason,
        )
        protocol = b"".join(
            b"Upgrade: " + v + b"\r\n" for n, v in response.headers if n.lower() == b"upgrade"
        )
        head = head[:-2] + b"Connection: upgrade\r\n" + protocol + b"\r\n"
        transport.write(head)
        upgraded = response.upgraded
        self.tunnel = upgraded
        self.deadline = 0.0
        early = upgraded.attach(transport)
        if early:
            transport.write(early)
        tail, self.upgrade_tail = self.upgrade_tail, None
        if tail:
            upgraded.write(tail)
        self._resume_reading()


# What a client is told of an upstream failure: the kind, never the address or the details
# (those go to the error log).
_UPSTREAM_REASONS = {502: "the upstream did not answer properly", 503: "no upstream available",
                     504: "the upstream did not answer in time"}  # fmt: skip


def _error(status: int, exc: BaseException, request: Request | None = None) -> Response:
    """The response for a failed exchange; an upstream failure is logged as a warning."""
    if isinstance(exc, UpstreamError):
        log.warning(
            "upstream failed",
            extra={
                "status": status,
                "upstream": exc.upstream,
                "reason": str(exc),
                "error": _error_reason(exc, status),
                "target": request.target if request is not None else None,
            },
        )
        text = _UPSTREAM_REASONS.get(status, "upstream error")
    elif isinstance(exc, ProtocolError):
        text = str(exc) or type(exc).__name__
    else:
        text = "internal error"
    return Response.text(status, f"{status} {_phrase(status)}: {text}\n")


CLIENT_CLOSED = 499  # nginx's code for a client that left before its response


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _ServerCollector(Collector):
    def __init__(self, server: HTTPServer) -> None:
        self.server = server

    def collect(self) -> Iterable[Metric]:
        return statistics_metrics([self.server.statistics()], prefix=self.server.metrics_prefix)


def statistics_metrics(
    snapshots: Iterable[ServerStatistics], *, prefix: str = "podkit_http"
) -> Iterator[Metric]:
    """Prometheus metric families for one or more servers' statistics, summed.

    Used by a server's own collector, and by a supervisor that merges its workers' snapshots.
    """
    snaps = list(snapshots)
    opened = GaugeMetricFamily(f"{prefix}_connections", "Client connections open now.")
    opened.add_metric([], sum(s.connections_open for s in snaps))
    yield opened
    accepted = CounterMetricFamily(
        f"{prefix}_connections_accepted", "Client connections accepted since start."
    )
    accepted.add_metric([], sum(s.connections_total for s in snaps))
    yield accepted
    responses = CounterMetricFamily(
        f"{prefix}_responses", "Responses sent (or refusals), by status code.", labels=["code"]
    )
    merged: dict[int, int] = {}
    for snap in snaps:
        for code, count in snap.responses.items():
            merged[code] = merged.get(code, 0) + count
    for code in sorted(merged):
        responses.add_metric([str(code)], merged[code])
    yield responses
    errors = CounterMetricFamily(
        f"{prefix}_errors",
        "Refused requests and failed responses, by reason (bad_request, timeout, "
        "header_too_large, upstream_connect, upstream_timeout, no_upstream...).",
        labels=["reason"],
    )
    merged_errors: dict[str, int] = {}
    for snap in snaps:
        for reason, count in snap.errors.items():
            merged_errors[reason] = merged_errors.get(reason, 0) + count
    for reason in sorted(merged_errors):
        errors.add_metric([reason], merged_errors[reason])
    yield errors
    latency = HistogramMetricFamily(
        f"{prefix}_request_duration_seconds",
        "Time from a request's head to the end of its response.",
    )
    if snaps:
        buckets = snaps[0].latency_buckets
        counts = [sum(s.latency_counts[i] for s in snaps) for i in range(len(buckets) + 1)]
        cumulative = 0
        points: list[tuple[str, float]] = []
        for bound, count in zip((*buckets, float("inf")), counts, strict=True):
            cumulative += count
            points.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        latency.add_metric([], points, sum(s.latency_sum for s in snaps))
    yield latency


class HTTPServer:
    """Serve a :data:`Handler` over HTTP/1.1 (and HTTPS when given an SSL context).

    Use as ``async with HTTPServer(handler, host=..., port=0) as server:``; ``server.port`` is
    the bound port.

    Args:
        handler: called once per request; its :class:`Response` is written back in order.
        host: the address to listen on.
        port: the port (0 picks a free one).
        limits: header, body, timeout and connection limits.
        ssl: a server-side SSL context for HTTPS; requests then carry :class:`TLSInfo`
            (an SNI-recording callback is chained onto the context's ``sni_callback``).
        reuse_port: set SO_REUSEPORT so several processes share the port.
        sock: an already bound listening socket to serve on (instead of host/port).
        registry: a Prometheus registry to export the server's metrics to.
        metrics_prefix: the metric name prefix.
        name: used in log lines and errors.
        access_log: where each answered request is logged: an :class:`AccessLog`, or the
            settings of one the server opens and closes itself (None: nowhere).
        request_ids: give each request without an ``X-Request-Id`` a new one (sent upstream
            with the request's fields and logged).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ServerLimits | None = None,
        ssl: ssl_module.SSLContext | None = None,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        registry: CollectorRegistry | None = None,
        metrics_prefix: str = "podkit_http",
        name: str = "http",
        access_log: AccessLog | AccessLogSettings | None = None,
        request_ids: bool = True,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.limits = limits or ServerLimits()
        self.ssl = ssl
        self.reuse_port = reuse_port
        self.sock = sock
        self.name = name
        self.metrics_prefix = metrics_prefix
        self.counters = _Counters()
        self.connections: set[_Connection] = set()
        self.handshaking: set[_TLSAccept] = set()  # HTTPS clients before their handshake
        # An AccessLog given is the caller's; one made from settings is opened by start()
        # and closed by aclose().
        self.access_log = access_log if isinstance(access_log, AccessLog) else None
        self._access_settings = access_log if isinstance(access_log, AccessLogSettings) else None
        self.request_ids = request_ids
        self.draining = False
        self.started_at = time.time()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._registry = registry
        self._collector: _ServerCollector | None = None
        self._all_closed: asyncio.Event | None = None
        # Plain forwarding (proxy_handler, one upstream) gets a path without a task per request.
        self.direct = handler if isinstance(handler, ProxyHandler) else None
        self.loop: asyncio.AbstractEventLoop  # set by start()

    def __aenter__(self) -> Coroutine[Any, Any, HTTPServer]:
        return _aio.server_aenter(self)

    def __aexit__(self, *exc_info: object) -> Coroutine[Any, Any, None]:
        return _aio.server_aexit(self, *exc_info)

    def start(self) -> Coroutine[Any, Any, None]:
        """Bind and start accepting.

        Raises:
            PodkitError: the address cannot be bound (in use, not local, no permission).
        """
        return _aio.server_start(self)

    def _tick(self) -> Coroutine[Any, Any, None]:
        return _aio.server_tick(self)

    def reopen_access_log(self) -> None:
        """Reopen the access log's file (after logrotate moved it; a SIGHUP hook)."""
        if self.access_log is not None:
            self.access_log.reopen()

    def open_connections(self) -> int:
        """Client connections open now, counting HTTPS clients still in their handshake."""
        return len(self.connections) + len(self.handshaking)

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters."""
        counters = self.counters
        return ServerStatistics(
            connections_open=self.open_connections(),
            connections_total=counters.connections_total,
            requests_total=counters.requests_total,
            responses=dict(counters.responses),
            errors=dict(counters.errors),
            latency_buckets=LATENCY_BUCKETS,
            latency_counts=tuple(counters.latency_counts),
            latency_sum=counters.latency_sum,
        )

    def drain(self, timeout: float) -> Coroutine[Any, Any, None]:
        """Stop accepting, let requests in progress finish (up to ``timeout``), then close.

        Idle keep-alive connections are closed at once; busy ones get ``Connection: close`` on
        their current response.
        """
        return _aio.server_drain(self, timeout)

    def aclose(self) -> Coroutine[Any, Any, None]:
        """Close the listener and every connection now."""
        return _aio.server_aclose(self)


__all__ = ["HTTPServer", "ServerStatistics", "statistics_metrics"]

# The coroutines, kept in a module that always runs as Python (see its docstring); imported
# last because it imports this module's names.
from podkit.engines.http import _server_aio as _aio  # noqa: E402
