"""``Upgrade`` through the HTTP engine: after a 101 the connection is a byte tunnel both ways
(with half-close); an upgrade the upstream declines is an ordinary response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from podkit.engines.http import Upstream

from .conftest import StartProxy
from .wire import Client

pytestmark = pytest.mark.asyncio

UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _switching_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer 101 to an Upgrade, then echo bytes upper-cased; at the client's FIN say bye."""
    head = await reader.readuntil(b"\r\n\r\n")
    if b"upgrade: websocket" not in head.lower():
        writer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()
        writer.close()
        return
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nwelcome;"
    )
    await writer.drain()
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    writer.write(b";bye")
    await writer.drain()
    writer.close()


async def _declining(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
        await writer.drain()
        await reader.read()  # until the proxy closes its side
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def ws_upstream() -> AsyncIterator[Upstream]:
    server = await asyncio.start_server(_switching_echo, "127.0.0.1", 0)
    yield Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_a_websocket_upgrade_becomes_a_tunnel_with_half_close(
    start_proxy: StartProxy, ws_upstream: Upstream, bytewise: bool
) -> None:
    proxy = await start_proxy(upstream=ws_upstream)
    client = await Client.connect(proxy.port)
    await client.send(UPGRADE + b"early", bytewise=bytewise)
    reply = await client.read_response()
    assert reply.status == 101
    assert (reply.header("Upgrade") or "").lower() == "websocket"
    assert (reply.header("Connection") or "").lower() == "upgrade"
    assert reply.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    received = b""
    while b"EARLY" not in received:
        received += await asyncio.wait_for(client.reader.read(1024), 10)
    assert received == b"welcome;EARLY"
    await client.send(b" and more")
    client.writer.write_eof()
    rest = await asyncio.wait_for(client.reader.read(), 10)
    assert rest == b" AND MORE;bye"
    await client.close()


async def test_a_declined_upgrade_is_an_ordinary_response_and_the_connection_closes(
    start_proxy: StartProxy,
) -> None:
    server = await asyncio.start_server(_declining, "127.0.0.1", 0)
    try:
        proxy = await start_proxy(
            upstream=Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
        )
        client = await Client.connect(proxy.port)
        await client.send(UPGRADE)
        reply = await client.read_response()
        assert reply.status == 200
        assert reply.body == b"plain"
        assert reply.header("Connection") == "close"
        assert await client.closed_by_peer()
        await client.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_websocket_upgrade_through_whoami_is_refused_by_it_and_answered(
    start_proxy: StartProxy,
) -> None:
    """whoami does not speak WebSocket: its refusal reaches the client intact."""
    proxy = await start_proxy()
    client = await Client.connect(proxy.port)
    await client.send(UPGRADE)
    reply = await client.read_response()
    assert reply.status == 400
    await client.close()
