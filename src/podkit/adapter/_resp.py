"""A minimal Redis client for the adapters: one connection, one command at a time (RESP2).

The health check sends ``PING`` (and ``ROLE``), the metrics adapter ``INFO ALL``; neither
needs pipelining, pub/sub or a pool, so the ``redis`` package (an optional extra) is not
required for them. Replies are parsed from the stream as RESP2 (simple strings, errors,
integers, bulk strings, arrays).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from podkit.errors import ConfigError, PodkitError

DEFAULT_REDIS_PORT = 6379
MAX_REPLY_BYTES = 64 * 1024 * 1024  # INFO ALL is a few KiB; a larger reply is not Redis


class RedisReplyError(PodkitError):
    """Redis answered a command with an error (``-ERR ...``) or broke the protocol."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where a Redis server is and how to log in (from ``redis://[user:pass@]host:port/db``)."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    query: str = ""

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Parse a ``redis://`` URL.

        Raises:
            ConfigError: not a redis URL, or a bad port or database number.
        """
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ConfigError(f"expected redis://HOST[:PORT][/DB], got {url!r}")
        try:
            port = parts.port or DEFAULT_REDIS_PORT
        except ValueError as exc:
            raise ConfigError(f"bad port in {url!r}") from exc
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigError(f"the database in {url!r} must be a number")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            query=parts.query,
        )


def encode_command(*args: str) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        if size > MAX_REPLY_BYTES:
            raise RedisReplyError(f"reply of {size} bytes is larger than {MAX_REPLY_BYTES}")
        data = await reader.readexactly(size + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [await _read_reply(reader) for _ in range(count)]
    raise RedisReplyError(f"not a Redis reply: {line[:40]!r}")


class RedisConnection:
    """One connection; ``async with open_redis(address) as conn: await conn.call("PING")``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def call(self, *args: str) -> Any:
        """Send one command and return its reply.

        Raises:
            RedisReplyError: the server answered with an error.
            OSError, asyncio.IncompleteReadError: the connection failed.
        """
        self._writer.write(encode_command(*args))
        await self._writer.drain()
        return await _read_reply(self._reader)

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


@contextlib.asynccontextmanager
async def open_redis(address: RedisAddress) -> AsyncIterator[RedisConnection]:
    """Connect, log in (``AUTH``) and select the database; the connection closes on exit."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    conn = RedisConnection(reader, writer)
    try:
        if address.password is not None:
            if address.username:
                await conn.call("AUTH", address.username, address.password)
            else:
                await conn.call("AUTH", address.password)
        if address.db:
            await conn.call("SELECT", str(address.db))
        yield conn
    finally:
        await conn.aclose()
