"""Engine fixtures: a real ``podkit whoami`` upstream and in-process engine proxies in front."""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from podkit.engines.http import (
    Forwarding,
    Handler,
    HTTPServer,
    ServerLimits,
    Upstream,
    UpstreamPool,
    proxy_handler,
)
from podkit.testing import PodkitProcess, free_port, wait_http


@dataclass
class Whoami:
    port: int
    process: PodkitProcess

    @property
    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port)

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/stats")
            data: dict[str, Any] = json.loads(conn.getresponse().read())
            return data
        finally:
            conn.close()

    def seen(self, path: str) -> int:
        """How many requests for ``path`` whoami has served."""
        return int(self.stats()["paths"].get(path, 0))


@pytest.fixture(scope="module")
def whoami() -> Iterator[Whoami]:
    """A real ``podkit whoami --name w1`` process on a free port, shared by a test module."""
    port = free_port()
    with PodkitProcess("whoami", "--listen", f"127.0.0.1:{port}", "--name", "w1") as proc:
        wait_http("127.0.0.1", port, "/ready")
        yield Whoami(port, proc)


@dataclass
class Proxy:
    port: int
    server: HTTPServer
    pool: UpstreamPool


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(whoami: Whoami) -> AsyncIterator[StartProxy]:
    """Start engine proxies in this test's loop (to whoami unless told otherwise)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *,
            limits: ServerLimits | None = None,
            upstream: Any = None,
            forwarding: Forwarding | None = None,
            timeout: float | None = None,
            handler: Callable[[Handler], Handler] | None = None,
            **pool_options: Any,
        ) -> Proxy:
            pool = await stack.enter_async_context(UpstreamPool(**pool_options))
            inner = proxy_handler(
                pool,
                upstream if upstream is not None else whoami.upstream,
                forwarding=forwarding,
                timeout=timeout,
            )
            outer = handler(inner) if handler is not None else inner
            server = await stack.enter_async_context(
                HTTPServer(outer, host="127.0.0.1", port=0, limits=limits)
            )
            return Proxy(server.port, server, pool)

        yield start


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Proxy:
    """An engine proxy with default limits in front of whoami."""
    return await start_proxy()
