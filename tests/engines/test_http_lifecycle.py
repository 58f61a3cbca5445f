"""Lifecycle of the HTTP engine: drain, upstream pool limits and idle expiry, abandoned bodies."""

from __future__ import annotations

import asyncio

import pytest

from podkit.engines.http import (
    HTTPServer,
    NoUpstreamAvailable,
    Request,
    UpstreamPool,
    proxy_handler,
)
from podkit.testing.net import wait_for

from .conftest import Whoami
from .wire import Client

pytestmark = pytest.mark.asyncio


def get(path: str) -> Request:
    return Request("GET", path, [(b"Host", b"a")])


async def test_drain_finishes_requests_in_flight_and_closes_idle_connections(
    whoami: Whoami,
) -> None:
    async with UpstreamPool() as pool:
        server = HTTPServer(proxy_handler(pool, whoami.upstream))
        await server.start()
        idle = await Client.connect(server.port)
        await idle.send(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await idle.read_response()).status == 200
        busy = await Client.connect(server.port)
        await busy.send(b"GET /delay/400 HTTP/1.1\r\nHost: a\r\n\r\n")
        # the slow request has taken the kept-alive upstream connection
        await asyncio.to_thread(
            wait_for, lambda: pool.statistics().idle == 0 and pool.statistics().open == 1
        )
        drained = asyncio.create_task(server.drain(10))
        assert await idle.closed_by_peer()
        reply = await busy.read_response()
        assert reply.status == 200
        assert reply.header("Connection") == "close"
        await drained
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)
        await idle.close()
        await busy.close()


async def test_idle_upstream_connections_expire(whoami: Whoami) -> None:
    async with UpstreamPool(idle_timeout=0.2) as pool:
        response = await pool.send(whoami.upstream, get("/status/200"))
        await response.read()
        assert pool.statistics().idle == 1
        await asyncio.to_thread(wait_for, lambda: pool.statistics().open == 0, timeout=5)


async def test_a_full_upstream_makes_requests_wait_then_fail_with_503(whoami: Whoami) -> None:
    async with UpstreamPool(max_connections_per_upstream=1, connect_timeout=0.3) as pool:
        slow = asyncio.create_task(pool.send(whoami.upstream, get("/delay/1500")))
        await asyncio.to_thread(wait_for, lambda: pool.statistics().open == 1)
        with pytest.raises(NoUpstreamAvailable) as caught:
            await pool.send(whoami.upstream, get("/status/200"))
        assert caught.value.status == 503
        assert not caught.value.request_sent
        await (await slow).read()


async def test_a_waiting_request_gets_the_connection_when_it_frees_up(whoami: Whoami) -> None:
    async with UpstreamPool(max_connections_per_upstream=1, connect_timeout=5) as pool:
        first = asyncio.create_task(pool.send(whoami.upstream, get("/delay/200")))
        second = asyncio.create_task(pool.send(whoami.upstream, get("/status/201")))
        one = await first
        await one.read()
        two = await second
        assert two.status == 201
        await two.read()
        stats = pool.statistics()
        assert stats.connects == 1
        assert stats.reused == 1


async def test_an_abandoned_response_body_closes_its_upstream_connection(whoami: Whoami) -> None:
    async with UpstreamPool() as pool:
        response = await pool.send(whoami.upstream, get("/bytes/10000000"))
        assert response.status == 200
        await response.aclose()
        assert pool.statistics().open == 0
        again = await pool.send(whoami.upstream, get("/status/200"))
        await again.read()
        assert pool.statistics().connects == 2
