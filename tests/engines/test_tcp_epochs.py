"""The TCP engine's epochs (closing the connections of an old epoch) and upstream handshake."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from podkit.engines.http import Upstream
from podkit.engines.tcp import SPLICE_AVAILABLE, TCPProxy


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


MODES = [False, *([True] if SPLICE_AVAILABLE else [])]


@pytest.mark.parametrize("zero_copy", MODES)
async def test_close_before_ends_only_older_epochs(zero_copy: bool) -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    upstream = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    async with server, TCPProxy(upstream, zero_copy=zero_copy) as proxy:
        old_r, old_w = await asyncio.open_connection("127.0.0.1", proxy.port)
        old_w.write(b"a")
        assert await old_r.readexactly(1) == b"a"
        proxy.epoch = 1
        new_r, new_w = await asyncio.open_connection("127.0.0.1", proxy.port)
        new_w.write(b"b")
        assert await new_r.readexactly(1) == b"b"
        assert proxy.count_before(1) == 1
        assert proxy.close_before(1) == 1
        with contextlib.suppress(ConnectionError):
            assert await old_r.read() == b""
        new_w.write(b"c")
        assert await new_r.readexactly(1) == b"c"
        assert proxy.count_before(1) == 0
        old_w.close()
        new_w.close()


@pytest.mark.parametrize("zero_copy", MODES)
async def test_a_handshake_runs_before_client_bytes_and_can_refuse(zero_copy: bool) -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    upstream = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    seen: list[Upstream] = []

    async def hello(up: Upstream, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        seen.append(up)
        await loop.sock_sendall(sock, b"hi")
        assert await loop.sock_recv(sock, 2) == b"hi"  # the echo of the handshake is eaten
        if len(seen) > 1:
            raise OSError("refused")

    async with server, TCPProxy(upstream, zero_copy=zero_copy, handshake=hello) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
        writer.close()
        assert proxy.statistics().connect_errors == 1
