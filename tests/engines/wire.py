"""A raw HTTP/1.1 client for engine tests: exact bytes in, parsed responses out.

Requests are written whole or one byte at a time; responses are read with their own framing
(Content-Length, chunked, or until close), so tests see exactly what a client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

READ_TIMEOUT = 10.0


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    version: str = "1.1"
    raw_head: bytes = b""
    chunked: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Client:
    """One client connection to ``127.0.0.1:port``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, data: bytes, *, bytewise: bool = False) -> None:
        if not bytewise:
            self.writer.write(data)
            await self.writer.drain()
            return
        for i in range(len(data)):
            self.writer.write(data[i : i + 1])
            await self.writer.drain()
            if i % 16 == 0:
                await asyncio.sleep(0)  # let the server see small pieces, not one coalesced read

    async def read_response(self, *, method: str = "GET") -> Reply:
        async with asyncio.timeout(READ_TIMEOUT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            version, status, *reason = lines[0].split(" ", 2)
            headers: list[tuple[str, str]] = []
            for line in lines[1:]:
                if line:
                    key, _, value = line.partition(":")
                    headers.append((key, value.strip()))
            reply = Reply(int(status), reason[0] if reason else "", headers, b"", version[5:])
            reply.raw_head = head
            code = reply.status
            if method == "HEAD" or code < 200 or code in (204, 304):
                return reply
            if (reply.header("transfer-encoding") or "").lower() == "chunked":
                reply.chunked = True
                reply.body = await self._read_chunked()
            elif reply.header("content-length") is not None:
                length = int(reply.header("content-length") or 0)
                reply.body = await self.reader.readexactly(length)
            else:
                reply.body = await self.reader.read()
            return reply

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            assert await self.reader.readexactly(2) == b"\r\n"

    async def closed_by_peer(self) -> bool:
        """True when the server closes the connection (EOF or reset) within the timeout."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                data = await self.reader.read(65536)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def exchange(port: int, data: bytes, *, bytewise: bool = False, method: str = "GET") -> Reply:
    """Send ``data`` on a new connection and read one response."""
    client = await Client.connect(port)
    try:
        await client.send(data, bytewise=bytewise)
        return await client.read_response(method=method)
    finally:
        await client.close()
