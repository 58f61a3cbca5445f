"""Helpers of the split's tests: JSON upstreams and a splitter on the HTTP engine, in the
test's event loop, on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from podkit.ambassador.split.app import SplitOptions, Splitter, open_splitter
from podkit.engines.http import HTTPServer, Request, Response, Upstream, UpstreamPool


@dataclass
class JSONApp:
    """An upstream answering JSON ``{"name": ..., "path": ..., **extra()}``, counting hits."""

    name: str
    status: int = 200
    delay: float = 0.0
    extra: Callable[[], dict[str, Any]] = dict
    hits: int = 0
    bodies: list[bytes] = field(default_factory=list)

    async def __call__(self, request: Request) -> Response:
        self.hits += 1
        body = await request.read()
        if body:
            self.bodies.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        doc = {"name": self.name, "path": request.path, **self.extra()}
        return Response(
            self.status,
            [(b"Content-Type", b"application/json"), (b"X-Served-By", self.name.encode())],
            json.dumps(doc).encode(),
        )


@contextlib.asynccontextmanager
async def serve_app(handler: Callable[[Request], Awaitable[Response]]) -> AsyncIterator[str]:
    """Serve ``handler`` on a free loopback port; yields its URL."""
    async with HTTPServer(handler, host="127.0.0.1", port=0, name="test-app") as server:
        yield f"http://127.0.0.1:{server.port}"


@contextlib.asynccontextmanager
async def serve_splitter(options: SplitOptions) -> AsyncIterator[tuple[Splitter, int]]:
    """A splitter serving on a free port; yields it and the port."""
    async with (
        open_splitter(options, registry=CollectorRegistry()) as splitter,
        HTTPServer(splitter.direct_handler(), host="127.0.0.1", port=0, name="split") as server,
    ):
        yield splitter, server.port


@dataclass
class Client:
    """Requests to a local port over kept-alive connections."""

    pool: UpstreamPool
    port: int

    async def get(
        self,
        path: str = "/",
        *,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        fields = [
            (b"Host", b"split.test"),
            *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
        ]
        if body:
            fields.append((b"Content-Length", str(len(body)).encode()))
        response = await self.pool.send(
            Upstream("127.0.0.1", self.port), Request(method, path, fields, body)
        )
        data = await response.read()
        return (
            response.status,
            {k.decode().lower(): v.decode() for k, v in response.headers},
            data,
        )


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[Client]:
    async with UpstreamPool(max_connections_per_upstream=64) as pool:
        yield Client(pool, port)


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``predicate`` in the loop until it holds (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(q * len(ordered)) - 1)]
