"""Real memcached and redis-server shards and a ``podkit shard`` process in front of them."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podkit.ambassador.shard import _memcache as mc
from podkit.ambassador.shard import _resp as resp
from podkit.testing import MemcachedServer, PodkitProcess, RedisServer, free_port, wait_http

_OPEN: list[socket.socket] = []


def _close_connections() -> None:
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture(autouse=True)
def _connections_closed() -> Iterator[None]:
    """Close every test connection when its test ends."""
    yield
    _close_connections()


@pytest.fixture
def memcached_shards() -> Iterator[list[MemcachedServer]]:
    """Four memcached servers on free ports."""
    with contextlib.ExitStack() as stack:
        stack.callback(_close_connections)  # first, so servers stop with no client left
        servers = [stack.enter_context(MemcachedServer()) for _ in range(4)]
        for server in servers:
            # memcached takes about a second to stop on SIGTERM once it had clients; its
            # data is not needed afterwards.
            stack.callback(server.kill)
        yield servers


@pytest.fixture
def redis_shards() -> Iterator[list[RedisServer]]:
    """Four redis-servers on free ports."""
    with contextlib.ExitStack() as stack:
        stack.callback(_close_connections)
        yield [stack.enter_context(RedisServer()) for _ in range(4)]


class Proxy:
    """A running ``podkit shard``: its client port, admin port and process."""

    def __init__(self, process: PodkitProcess, port: int, admin: int) -> None:
        self.process = process
        self.port = port
        self.admin = admin

    def shards(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/shards", timeout=5) as r:
            document: dict[str, Any] = json.loads(r.read())
        return document

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
            return str(r.read().decode())


ProxyFactory = Callable[..., Proxy]


@pytest.fixture
def start_proxy() -> Iterator[ProxyFactory]:
    """Start ``podkit shard`` with the given shards and flags; stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(protocol: str, servers: list[Any], *flags: str) -> Proxy:
            port, admin = free_port(), free_port()
            args = ["shard", "--protocol", protocol, "--listen", f"127.0.0.1:{port}"]
            for index, server in enumerate(servers):
                args += ["--shard", f"s{index}=127.0.0.1:{server.port}"]
            args += ["--admin", f"127.0.0.1:{admin}", "--log-level", "warning", *flags]
            process = stack.enter_context(PodkitProcess(*args))
            wait_http("127.0.0.1", admin, "/readyz", timeout=20)
            return Proxy(process, port, admin)

        yield start
        _close_connections()


class MemcacheConn:
    """A blocking memcached text-protocol connection that reads replies by kind."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        _OPEN.append(self.sock)
        self.reader = mc.ReplyReader()

    def close(self) -> None:
        self.sock.close()

    def call(self, data: bytes, kinds: list[mc.ReplyKind]) -> list[mc.Reply]:
        """Send ``data`` and read one reply per kind, in order."""
        self.sock.sendall(data)
        replies: list[mc.Reply] = []
        while len(replies) < len(kinds):
            reply = self.reader.next_reply(kinds[len(replies)])
            if reply is not None:
                replies.append(reply)
                continue
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self.reader.feed(chunk)
        return replies

    def line(self, data: bytes) -> bytes:
        return self.call(data, [mc.ReplyKind.LINE])[0].raw

    def get(self, *keys: bytes) -> mc.Reply:
        return self.call(b"get " + b" ".join(keys) + b"\r\n", [mc.ReplyKind.VALUES])[0]

    def set(self, key: bytes, value: bytes) -> bytes:
        return self.line(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))


class RedisConn:
    """A blocking RESP2 connection."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        _OPEN.append(self.sock)
        self.reader = resp.ReplyReader()

    def close(self) -> None:
        self.sock.close()

    def pipeline(self, commands: list[list[bytes]]) -> list[bytes]:
        self.sock.sendall(b"".join(resp.encode_command(c) for c in commands))
        replies: list[bytes] = []
        while len(replies) < len(commands):
            reply = self.reader.next_reply()
            if reply is not None:
                replies.append(reply)
                continue
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self.reader.feed(chunk)
        return replies

    def call(self, *args: bytes) -> bytes:
        return self.pipeline([list(args)])[0]
