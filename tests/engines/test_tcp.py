"""The TCP (L4) engine: bytes both ways, half-close, back-pressure, failures and timeouts,
against real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from podkit.engines.http import Upstream
from podkit.engines.tcp import SPLICE_AVAILABLE, TCPProxy
from podkit.testing import free_port

pytestmark = pytest.mark.asyncio


DATA_PATHS = {
    "raw": {"zero_copy": True},  # copies small reads, splices bulk ones
    "splice": {"zero_copy": True, "copy_bytes": 0},  # splices from the first byte
    "protocols": {"zero_copy": False},
}


@pytest.fixture(params=["raw", "splice", "protocols"] if SPLICE_AVAILABLE else ["protocols"])
def data_path(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each test runs on every data path: raw sockets (copy, then splice), splice from the
    first byte, and asyncio protocols."""
    return DATA_PATHS[request.param]


async def _reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read until the client half-closes, then answer with the digest and size, then close."""
    digest = hashlib.sha256()
    size = 0
    while chunk := await reader.read(1 << 16):
        digest.update(chunk)
        size += len(chunk)
    writer.write(f"{size} {digest.hexdigest()}".encode())
    await writer.drain()
    writer.close()


@pytest.fixture
async def digest_upstream() -> AsyncIterator[Upstream]:
    server = await asyncio.start_server(_reply_after_eof, "127.0.0.1", 0)
    yield Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def send_and_half_close(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


async def test_bytes_flow_both_ways_across_a_half_close(
    digest_upstream: Upstream, data_path: dict[str, Any]
) -> None:
    async with TCPProxy(digest_upstream, **data_path) as proxy:
        payload = b"hello, upstream"
        reply = await send_and_half_close(proxy.port, payload)
        assert reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
        stats = proxy.statistics()
        assert stats.bytes_in == len(payload)
        assert stats.bytes_out == len(reply)


async def test_a_bulk_transfer_arrives_intact(
    digest_upstream: Upstream, data_path: dict[str, Any]
) -> None:
    payload = bytes(range(256)) * (32 * 1024 * 4)  # 32 MiB
    async with TCPProxy(digest_upstream, **data_path) as proxy:
        reply = await send_and_half_close(proxy.port, payload)
    assert reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


async def test_the_upstream_speaks_first_and_the_client_half_closes_later(
    data_path: dict[str, Any],
) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        line = await reader.readline()
        writer.write(b"echo " + line)
        await writer.drain()
        assert await reader.read() == b""  # the client's FIN arrives as a FIN
        writer.write(b"bye\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    upstream = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async with TCPProxy(upstream, **data_path) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await reader.readline() == b"220 ready\r\n"
            writer.write(b"ping\r\n")
            assert await reader.readline() == b"echo ping\r\n"
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"bye\r\n"
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_client_that_does_not_read_pauses_the_upstream(data_path: dict[str, Any]) -> None:
    sent = 0
    blocked = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        block = b"x" * 65536
        try:
            while sent < 512 * 1024 * 1024:
                writer.write(block)
                sent += len(block)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    blocked.set()  # the proxy stopped reading us
                    await writer.drain()
        except ConnectionError:
            pass

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    upstream = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async with TCPProxy(upstream, **data_path) as proxy:
            _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=65536)
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            await asyncio.wait_for(blocked.wait(), 20)
            assert sent < 64 * 1024 * 1024  # socket buffers, not the whole stream
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_an_unreachable_upstream_closes_the_client_and_is_counted(
    data_path: dict[str, Any],
) -> None:
    async with TCPProxy(Upstream("127.0.0.1", free_port()), **data_path) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            data = await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            data = b""
        assert data == b""
        writer.close()
        assert proxy.statistics().connect_errors == 1


async def test_an_idle_connection_is_closed(
    digest_upstream: Upstream, data_path: dict[str, Any]
) -> None:
    async with TCPProxy(digest_upstream, idle_timeout=0.3, **data_path) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"a")
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            data = b""
        assert data == b""
        writer.close()
        assert proxy.statistics().idle_timeouts == 1


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_bytes_are_counted_while_the_connection_is_open(data_path: dict[str, Any]) -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    upstream = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async with TCPProxy(upstream, **data_path) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            for _ in range(3):  # small pipelined messages, each answered before the next
                writer.write(b"*1\r\n$4\r\nPING\r\n" * 16)
                await reader.readexactly(14 * 16)
            stats = proxy.statistics()
            assert (stats.connections_open, stats.bytes_in, stats.bytes_out) == (1, 672, 672)
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
