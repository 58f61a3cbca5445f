"""A small HTTP/1.1 server for podkit's own endpoints: the admin endpoint and ``podkit whoami``.

It is deliberately simple (one request at a time per connection, request bodies read whole up
to a limit) and is not the data plane: proxies use :mod:`podkit.engines`. It still speaks
HTTP/1.1 properly: keep-alive, pipelined requests answered in order, chunked responses for
streamed bodies, HTTP/1.0 clients, HEAD, and a clean drain on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import httptools

from podkit.errors import ListenError
from podkit.runtime.logging import get_logger

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # whoami echoes bodies; admin takes tiny ones
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # nginx 8-32 KiB, HAProxy 16 KiB
DEFAULT_KEEPALIVE_TIMEOUT = 75.0  # nginx's keepalive_timeout default
_READ_CHUNK = 64 * 1024
# After a refusal the client may still be sending: closing at once would make the kernel
# answer with a reset that can destroy the error response before the client reads it, so
# the rest is read and dropped for a moment (nginx's lingering close; the engine does it too).
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024 * 1024

log = get_logger("podkit.runtime.http")


@dataclass(slots=True)
class Request:
    """One parsed HTTP request."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    client: tuple[str, int]
    http_version: str = "1.1"

    @property
    def path(self) -> str:
        return urlsplit(self.target).path or "/"

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return default


Body = bytes | AsyncIterator[bytes]


@dataclass(slots=True)
class Response:
    """A response: ``body`` is bytes (sent with Content-Length) or an async iterator (chunked)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""

    @classmethod
    def text(
        cls, status: int, text: str, *, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        hdrs = [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])]
        return cls(status, hdrs, text.encode())

    @classmethod
    def json(
        cls, status: int, payload: str, *, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        hdrs = [("Content-Type", "application/json"), *(headers or [])]
        return cls(status, hdrs, payload.encode())


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    """A request this server refuses, with the status to answer (400, 413, 431)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class _Parser:
    """Collects complete requests from bytes with httptools' llhttp."""

    def __init__(self, max_body: int, max_header: int) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.max_body = max_body
        self.max_header = max_header
        self.done: list[tuple[str, str, list[tuple[str, str]], bytes, str, bool]] = []
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self._header_bytes = 0

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = bytearray()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header:
            raise _BadRequest("request header too large", 431)
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.max_body:
            raise _BadRequest("request body too large", 413)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii")
        version = self.parser.get_http_version()
        self.done.append(
            (
                method,
                self._url.decode("latin-1"),
                self._headers,
                bytes(self._body),
                version,
                self.parser.should_keep_alive(),
            )
        )

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise _BadRequest("protocol upgrade is not supported here") from None
        except httptools.HttpParserCallbackError as exc:
            # A limit raised inside a callback: llhttp wraps it; answer with the limit's own.
            if isinstance(exc.__context__, _BadRequest):
                raise exc.__context__ from None
            raise _BadRequest("malformed request") from exc
        except httptools.HttpParserError as exc:
            raise _BadRequest(str(exc) or "malformed request") from exc


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


class SimpleHTTPServer:
    """Serve ``handler`` on ``host:port`` until drained or closed.

    Use as ``async with SimpleHTTPServer(handler, host, port) as server:``; ``server.port`` is
    the bound port (useful with port 0).
    """

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        name: str = "http",
        reuse_port: bool = False,
        max_body: int = DEFAULT_MAX_BODY_BYTES,
        max_header: int = DEFAULT_MAX_HEADER_BYTES,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        server_header: str | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.name = name
        self.reuse_port = reuse_port
        self.max_body = max_body
        self.max_header = max_header
        self.keepalive_timeout = keepalive_timeout
        self.server_header = server_header
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()
        self._draining = False

    async def __aenter__(self) -> SimpleHTTPServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind and start accepting.

        Raises:
            PodkitError: the address cannot be bound (in use, not local, no permission).
        """
        try:
            self._server = await asyncio.start_server(
                self._on_connection,
                self.host,
                self.port,
                reuse_port=self.reuse_port or None,
                limit=self.max_header * 2,
            )
        except OSError as exc:
            reason = (
                "address already in use"
                if exc.errno == errno.EADDRINUSE
                else exc.strerror or str(exc)
            )
            raise ListenError(self.host, self.port, reason) from exc
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let requests in progress finish (up to ``timeout``), close idle ones."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks - self._busy):
            task.cancel()
        if self._busy:
            _, pending = await asyncio.wait(list(self._busy), timeout=timeout)
            for task in pending:
                task.cancel()
        await self.aclose()

    async def aclose(self) -> None:
        """Close the listener and every connection now."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            self._busy.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername") or ("", 0)
        client = (str(peer[0]), int(peer[1]))
        parser = _Parser(self.max_body, self.max_header)
        while not self._draining:
            if not parser.done:
                data = await asyncio.wait_for(reader.read(_READ_CHUNK), self.keepalive_timeout)
                if not data:
                    return
                try:
                    parser.feed(data)
                except _BadRequest as exc:
                    await self._send_error(writer, exc)
                    await _linger(reader, writer)
                    return
                continue
            method, target, headers, body, version, keep_alive = parser.done.pop(0)
            request = Request(method, target, headers, body, client, version)
            self._busy.add(task)
            try:
                try:
                    response = await self.handler(request)
                except Exception:
                    log.exception("handler failed", extra={"path": request.path})
                    response = Response.text(500, "internal error\n")
                keep_alive = keep_alive and not self._draining
                await self._send(writer, request, response, keep_alive)
            finally:
                self._busy.discard(task)
            if not keep_alive:
                return

    async def _send_error(self, writer: asyncio.StreamWriter, error: _BadRequest) -> None:
        body = f"{error}\n".encode()
        writer.write(
            _status_line(error.status)
            + b"Content-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _send(
        self, writer: asyncio.StreamWriter, request: Request, response: Response, keep_alive: bool
    ) -> None:
        head = [_status_line(response.status)]
        # A streamed body whose handler names its length is sent with that Content-Length;
        # the framing fields are otherwise this server's own.
        length: int | None = None
        for key, value in response.headers:
            lkey = key.lower()
            if lkey == "content-length":
                if value.isdigit() and not isinstance(response.body, bytes):
                    length = int(value)
                continue
            if lkey in ("transfer-encoding", "connection", "keep-alive"):
                continue
            head.append(f"{key}: {value}\r\n".encode("latin-1"))
        if self.server_header:
            head.append(f"Server: {self.server_header}\r\n".encode("latin-1"))
        no_body = request.method == "HEAD" or response.status in (204, 304) or response.status < 200
        streamed = not isinstance(response.body, bytes)
        http10 = request.http_version == "1.0"
        if streamed and http10 and length is None:
            keep_alive = False  # a 1.0 client learns the end of a streamed body from the close
        if isinstance(response.body, bytes):
            if response.status not in (204, 304) and response.status >= 200:
                head.append(f"Content-Length: {len(response.body)}\r\n".encode())
        elif length is not None:
            head.append(f"Content-Length: {length}\r\n".encode())
        elif not http10 and not no_body:
            head.append(b"Transfer-Encoding: chunked\r\n")
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        elif http10:
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if isinstance(response.body, bytes):
            writer.write(b"".join(head) + (b"" if no_body else response.body))
            await writer.drain()
            return
        writer.write(b"".join(head))
        chunked = not http10 and not no_body and length is None
        async for chunk in response.body:
            if no_body or not chunk:
                continue
            if chunked:
                writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                writer.write(chunk)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send FIN, then read and drop what the client still sends, up to ``LINGER_SECONDS``
    and ``LINGER_BYTES`` (the caller closes the connection after)."""
    if not writer.can_write_eof():
        return
    writer.write_eof()
    left = LINGER_BYTES
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_SECONDS):
            while left > 0:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    return
                left -= len(data)
