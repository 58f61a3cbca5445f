"""Fixtures of the cache's end-to-end tests: a scripted origin and ``podkit cache`` processes."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from podkit.runtime import Request, Response, SimpleHTTPServer
from podkit.testing import PodkitProcess, free_port, wait_port
from tests.balance.conftest import Backend, Reply, request


@dataclass
class Answer:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok\n"
    delay: float = 0.0
    echo: str | None = None  # answer with this request header's value instead of body
    # Streamed (chunked): ``body`` first, then ``rest`` once ``gate`` is set.
    gate: threading.Event | None = None
    rest: bytes = b""


async def _gated(answer: Answer, gate: threading.Event) -> AsyncIterator[bytes]:
    yield answer.body
    await asyncio.to_thread(gate.wait, 30)
    yield answer.rest


class ScriptedOrigin:
    """An HTTP origin whose answers the test sets per path; it counts and records requests."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.hits: Counter[str] = Counter()
        self.seen: list[dict[str, str]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    async def _handle(self, req: Request) -> Response:
        self.hits[req.path] += 1
        self.seen.append({k.lower(): v for k, v in req.headers} | {":method": req.method})
        answer = self.answers.get(req.path, Answer(404, [], b"no such path\n"))
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.gate is not None:
            return Response(answer.status, list(answer.headers), _gated(answer, answer.gate))
        if answer.echo is not None:
            body = f"{answer.echo}: {req.header(answer.echo)}\n".encode()
            return Response(answer.status, list(answer.headers), body)
        if answer.status == 200 and req.header("if-none-match"):
            etag = next((v for k, v in answer.headers if k.lower() == "etag"), None)
            if etag == req.header("if-none-match"):
                return Response(304, list(answer.headers), b"")
        return Response(answer.status, list(answer.headers), answer.body)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with SimpleHTTPServer(self._handle, "127.0.0.1", 0, name="origin") as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    def __enter__(self) -> ScriptedOrigin:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Cache:
    """A ``podkit cache`` process with its admin endpoint."""

    def __init__(self, upstream: str, *args: str) -> None:
        self.port = free_port()
        self.admin = free_port()
        self.process = PodkitProcess(
            "cache",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--upstream",
            upstream,
            "--admin",
            f"127.0.0.1:{self.admin}",
            "--log-level",
            "warning",
            *args,
        )

    def get(self, path: str, **kwargs: Any) -> Reply:
        return request(self.port, path, **kwargs)

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = request(self.admin, "/cache").json()
        return data


@pytest.fixture
def origin() -> Iterator[ScriptedOrigin]:
    with ScriptedOrigin() as server:
        yield server


@pytest.fixture
def whoami() -> Iterator[Backend]:
    backend = Backend("origin").start()
    yield backend
    backend.stop()


@pytest.fixture
def cache() -> Iterator[Callable[..., Cache]]:
    running: list[Cache] = []

    def start(upstream: str, *args: str) -> Cache:
        c = Cache(upstream, *args)
        c.process.start()
        wait_port("127.0.0.1", c.admin)
        wait_port("127.0.0.1", c.port)
        running.append(c)
        return c

    yield start
    for c in running:
        c.process.__exit__(None, None, None)


StartCache = Callable[..., Cache]


class RawOrigin:
    """An origin that answers each request with bytes the test writes by hand (then closes
    the connection when ``close`` says so): for what no HTTP library would send."""

    def __init__(self) -> None:
        self.replies: dict[str, tuple[bytes, bool]] = {}
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.hits[path] += 1
                reply, close = self.replies.get(path, (b"HTTP/1.1 404 Not Found\r\n\r\n", True))
                writer.write(reply)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        async with server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    def __enter__(self) -> RawOrigin:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def raw_origin() -> Iterator[RawOrigin]:
    with RawOrigin() as server:
        yield server
