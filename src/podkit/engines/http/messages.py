"""Requests, responses and streaming bodies: what handlers receive and return.

Header fields are ``(name, value)`` pairs of ``bytes`` as on the wire (names keep their case;
compare with ``name.lower()``), so a proxy passes them through without decoding. Bodies are
either ``bytes`` or an async iterable of ``bytes`` chunks; the engine's own streams are
:class:`Body` objects with a bounded buffer: when the consumer falls behind, the producer's
socket stops being read (back-pressure), so a slow client never makes the proxy hold an
unbounded response.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from podkit.engines.http.rules import DEFAULT_BUFFER_BYTES, Headers, RequestFraming
from podkit.errors import RemoteProtocolError


class Body:
    """A stream of body bytes with a bounded buffer (``async for chunk in body``).

    The engine feeds it from a socket; a handler consumes it once, by iterating or with
    :meth:`read`. When more than ``high_water`` bytes wait unread, ``pause()`` is called (the
    socket stops being read) and ``resume()`` once the consumer caught up.

    Attributes:
        length: the declared length (Content-Length) when known, else None.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_done",
        "_error",
        "_high",
        "_on_close",
        "_on_first_read",
        "_pause",
        "_paused",
        "_resume",
        "_started",
        "_waiter",
        "length",
    )

    def __init__(
        self,
        *,
        length: int | None = None,
        high_water: int = DEFAULT_BUFFER_BYTES,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
        on_first_read: Callable[[], None] | None = None,
        on_close: Callable[[bool], None] | None = None,
    ) -> None:
        self.length = length
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._high = high_water
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._on_first_read = on_first_read
        self._on_close = on_close
        self._started = False
        self._closed = False

    @classmethod
    def from_bytes(cls, data: bytes) -> Body:
        """A finished body holding ``data``."""
        body = cls(length=len(data))
        if data:
            body._chunks.append(data)
            body._buffered = len(data)
        body._done = True
        return body

    # --- consumer side --------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= self._high // 2:
                    self._paused = False
                    if self._resume is not None:
                        self._resume()
                return chunk
            if self._error is not None:
                raise self._error
            if self._done or self._closed:
                raise StopAsyncIteration
            if not self._started:
                self._started = True
                if self._on_first_read is not None:
                    self._on_first_read()
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def read(self, limit: int | None = None) -> bytes:
        """The whole remaining body.

        Args:
            limit: the most bytes to accept.

        Raises:
            RemoteProtocolError: the body is longer than ``limit`` (status 413), or the sender
                broke off (status 400).
        """
        parts: list[bytes] = []
        size = 0
        async for chunk in self:
            size += len(chunk)
            if limit is not None and size > limit:
                self.close()
                raise RemoteProtocolError("body too large", status=413)
            parts.append(chunk)
        return b"".join(parts)

    @property
    def complete(self) -> bool:
        """All of the body is buffered: :meth:`take_all` returns it without waiting."""
        return self._done and self._error is None

    def take_all(self) -> list[bytes]:
        """The buffered chunks (all of them when :attr:`complete`), removed from the buffer."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self._resume is not None:
                self._resume()
        return chunks

    def close(self) -> None:
        """Stop consuming: drop what is buffered. The producer learns whether the body ended."""
        if self._closed:
            return
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback(self._done)

    async def aclose(self) -> None:
        """Same as :meth:`close` (for ``contextlib.aclosing`` and async-generator symmetry)."""
        self.close()

    # --- producer side (the engine) -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append ``data``; pauses the producer when the buffer is over its high-water mark."""
        if self._closed:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._buffered > self._high and not self._paused:
            self._paused = True
            if self._pause is not None:
                self._pause()

    def finish(self) -> None:
        """Mark the end of the body; the producer is no longer paused or resumed from here."""
        self._done = True
        self._pause = self._resume = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """End the body with an error the consumer raises after the buffered data."""
        if self._done:
            return
        self._error = exc
        self._done = True
        self._pause = self._resume = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return self._buffered

    @property
    def producer_paused(self) -> bool:
        """The producer is paused because the buffer is over its high-water mark."""
        return self._paused

    @property
    def finished(self) -> bool:
        """The producer is done (the whole body arrived, or it failed)."""
        return self._done


EMPTY_BODY = Body.from_bytes(b"")
"""A finished empty body, shared by every request that has none."""

BodyLike = bytes | AsyncIterable[bytes]


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What the TLS layer of a client connection says.

    Attributes:
        sni: the server name the client asked for (SNI), or None.
        version: the protocol version, e.g. ``"TLSv1.3"``.
        cipher: the cipher suite name.
        peer_subject: the client certificate's subject as ``"CN=a,O=b"``, or None without one.
        peer_cert: the client certificate as :meth:`ssl.SSLSocket.getpeercert` returns it.
    """

    sni: str | None
    version: str | None
    cipher: str | None
    peer_subject: str | None
    peer_cert: dict[str, Any] | None


InterimSink = Callable[["Request", int, Headers], None]
"""Relays an interim (1xx) response for a request to its client: ``(request, status, fields)``."""


class Request:
    """An HTTP request, as the server received it or as a policy builds it.

    Attributes:
        method: e.g. ``"GET"``.
        target: the request target as sent, e.g. ``"/a?b=1"``.
        headers: ``(name, value)`` byte pairs as received.
        body: a :class:`Body` from the server (``EMPTY_BODY`` when there is none); a policy
            may pass ``bytes`` or any async iterable of bytes to :meth:`UpstreamPool.send`.
        http_version: ``"1.1"`` or ``"1.0"``.
        client: the peer address ``(host, port)``.
        scheme: ``"https"`` when the server has an SSL context, else ``"http"``.
        tls: :class:`TLSInfo` for TLS connections, else None.
        framing: what the head said about body and upgrade (None for policy-built requests).
        keep_alive: whether the client's connection stays open after the response.
        request_id: the ``X-Request-Id`` the server found or gave it (empty when none).
        upstream: the ``host:port`` it was last sent to (None before), for the access log.
        upstream_start: the loop time it was last sent upstream (0.0 before).
        upstream_time: seconds from being sent upstream to the response head, or None.
        interim: set by the server for HTTP/1.1 clients: relays an interim (1xx) response
            to the client before the final one, called as ``interim(request, status,
            fields)``; the upstream pool calls it for each 1xx but ``100`` it receives.
    """

    __slots__ = (
        "body",
        "client",
        "framing",
        "headers",
        "http_version",
        "interim",
        "keep_alive",
        "method",
        "request_id",
        "scheme",
        "target",
        "tls",
        "upstream",
        "upstream_start",
        "upstream_time",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers | None = None,
        body: BodyLike = EMPTY_BODY,
        *,
        http_version: str = "1.1",
        client: tuple[str, int] = ("", 0),
        scheme: str = "http",
        tls: TLSInfo | None = None,
        framing: RequestFraming | None = None,
        keep_alive: bool = True,
    ) -> None:
        self.method = method
        self.target = target
        self.headers: Headers = headers if headers is not None else []
        self.body = body
        self.http_version = http_version
        self.client = client
        self.scheme = scheme
        self.tls = tls
        self.framing = framing
        self.keep_alive = keep_alive
        self.request_id = b""
        self.upstream: str | None = None
        self.upstream_start = 0.0
        self.upstream_time: float | None = None
        self.interim: InterimSink | None = None

    @property
    def path(self) -> str:
        """The target without its query string."""
        target = self.target
        cut = target.find("?")
        return target if cut < 0 else target[:cut]

    @property
    def query_string(self) -> str:
        """The part of the target after ``?`` (empty when none)."""
        _, _, query = self.target.partition("?")
        return query

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of field ``name`` (case-insensitive), decoded as latin-1."""
        lname = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == lname:
                return value.decode("latin-1")
        return default

    async def read(self, limit: int | None = None) -> bytes:
        """The whole request body (see :meth:`Body.read`)."""
        return await read_body(self.body, limit)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.http_version}>"


class Upgraded(Protocol):
    """The upstream side of a connection switched to another protocol after a 101."""

    def attach(self, client: asyncio.Transport) -> bytes:
        """Send upstream bytes to ``client`` from now on; returns bytes that already arrived.

        When the client's socket buffer fills, the upstream is no longer read; when the
        upstream's fills, the client is paused (``client.pause_reading``).
        """

    def write(self, data: bytes) -> None:
        """Send client bytes upstream."""

    def write_eof(self) -> None:
        """The client finished sending (half-close)."""

    def pause_reading(self) -> None:
        """Stop reading the upstream (the client cannot take more now)."""

    def resume_reading(self) -> None:
        """Read the upstream again."""

    def close(self) -> None:
        """Close the upstream side."""


class Response:
    """An HTTP response returned by a handler (or by :meth:`UpstreamPool.send`, whose body is
    ``bytes`` when the whole response arrived with its head, else a streaming :class:`Body`).

    Attributes:
        status: the status code.
        headers: ``(name, value)`` byte pairs. Framing fields (Content-Length,
            Transfer-Encoding, Connection) are written by the server and ignored here, except a
            Content-Length on a response without body (HEAD, 304).
        body: ``bytes``, a :class:`Body`, or any async iterable of bytes (streamed: chunked for
            HTTP/1.1 clients unless ``body.length`` is known).
        reason: the reason phrase, or None for the standard one.
        upgraded: for a ``101`` from an upstream, the stream the server tunnels bytes through.
    """

    __slots__ = ("body", "headers", "reason", "relay_fields", "status", "upgraded")

    def __init__(
        self,
        status: int = 200,
        headers: Headers | None = None,
        body: BodyLike = b"",
        *,
        reason: bytes | None = None,
    ) -> None:
        self.status = status
        self.headers: Headers = headers if headers is not None else []
        self.body = body
        self.reason = reason
        self.upgraded: Upgraded | None = None
        # Set by the upstream pool: ``headers`` minus Content-Length as wire lines, for the
        # server's plain forwarding path, which relays them without a second pass. Only that
        # path reads it (no policy can have changed ``headers`` there).
        self.relay_fields: bytes | None = None

    @classmethod
    def text(cls, status: int, text: str, *, headers: Headers | None = None) -> Response:
        """A ``text/plain`` response."""
        fields: Headers = [(b"Content-Type", b"text/plain; charset=utf-8"), *(headers or [])]
        return cls(status, fields, text.encode())

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of field ``name`` (case-insensitive), decoded as latin-1."""
        lname = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == lname:
                return value.decode("latin-1")
        return default

    async def read(self, limit: int | None = None) -> bytes:
        """The whole response body (buffers it; see :meth:`Body.read`)."""
        return await read_body(self.body, limit)

    async def aclose(self) -> None:
        """Abandon the body (an upstream connection that did not finish is not reused)."""
        await close_body(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


Handler = Callable[[Request], Awaitable[Response]]
"""The one handler signature: a policy is a Handler that wraps another Handler."""


async def read_body(body: BodyLike, limit: int | None = None) -> bytes:
    """Buffer ``body`` whole.

    Raises:
        RemoteProtocolError: longer than ``limit`` (status 413).
    """
    if isinstance(body, bytes):
        if limit is not None and len(body) > limit:
            raise RemoteProtocolError("body too large", status=413)
        return body
    if isinstance(body, Body):
        return await body.read(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if limit is not None and size > limit:
            await close_body(body)
            raise RemoteProtocolError("body too large", status=413)
        parts.append(chunk)
    return b"".join(parts)


async def iter_body(body: BodyLike) -> AsyncIterator[bytes]:
    """The chunks of any body: ``bytes`` (one chunk, none when empty), a :class:`Body` or an
    async iterable."""
    if isinstance(body, bytes):
        if body:
            yield body
        return
    async for chunk in body:
        yield chunk


async def close_body(body: BodyLike) -> None:
    """Abandon a body: close a :class:`Body` or an async generator; bytes need nothing."""
    if isinstance(body, Body):
        body.close()
        return
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


__all__ = [
    "EMPTY_BODY",
    "Body",
    "BodyLike",
    "Handler",
    "Request",
    "Response",
    "TLSInfo",
    "Upgraded",
    "close_body",
    "iter_body",
    "read_body",
]
