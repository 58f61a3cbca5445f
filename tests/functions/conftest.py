"""A function runner on a real backend with its routes served by the engine on a free port."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from podkit.engines.http import HTTPServer
from podkit.functions import FunctionApp, FunctionRunner, load_app
from podkit.testing import RedisServer


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store: a SQLite file, or a fresh redis-server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/functions.db"
    else:
        with RedisServer() as server:
            yield server.url


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/functions.db"


def write_app(directory: Path, source: str, name: str = "app.py") -> Path:
    """Write an app file (dedented) and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


class Served:
    """A runner, its deliveries and its HTTP server, with an HTTP client pointed at it."""

    def __init__(self, runner: FunctionRunner, client: httpx.AsyncClient) -> None:
        self.runner = runner
        self.client = client


@asynccontextmanager
async def serve_app(
    app: FunctionApp, backend: str, *, visibility: float = 5.0
) -> AsyncIterator[Served]:
    """Serve ``app`` (routes and deliveries) until the block ends."""
    async with (
        FunctionRunner(app, backend=backend, visibility=visibility) as runner,
        HTTPServer(runner.handle, host="127.0.0.1", port=0) as server,
    ):
        stop = asyncio.Event()
        deliveries = asyncio.create_task(runner.serve_deliveries(stop))
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{server.port}", timeout=10
            ) as client:
                yield Served(runner, client)
        finally:
            stop.set()
            await asyncio.wait_for(deliveries, 10)


async def wait_until(predicate: object, *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll an async or plain predicate until it is true (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


__all__ = ["Served", "load_app", "serve_app", "wait_until", "write_app"]
