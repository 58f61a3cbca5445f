"""``podkit shard --algo ring --hash md5`` places keys where nutcracker (twemproxy) does.

Both proxies run for real, each in front of its own four shards with the same names; 100,000
keys are written through each, then read back from every individual shard: each key must
sit on the shard of the same name behind both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from podkit.ambassador.shard._memcache import ReplyKind
from podkit.ambassador.shard._resp import array_items
from podkit.testing import MemcachedServer, NutcrackerServer, RedisServer, wait_port

from .conftest import MemcacheConn, ProxyFactory, RedisConn

KEYS = [b"user:%d:profile" % i for i in range(100_000)]
NAMES = ["alpha", "beta", "gamma", "delta"]
BATCH = 2000


@pytest.fixture
def memcached_pairs() -> Iterator[tuple[list[MemcachedServer], list[MemcachedServer]]]:
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(MemcachedServer()) for _ in range(8)]
        for server in servers:
            stack.callback(server.kill)
        yield servers[:4], servers[4:]


@pytest.fixture
def redis_pairs() -> Iterator[tuple[list[RedisServer], list[RedisServer]]]:
    with contextlib.ExitStack() as stack:
        yield (
            [stack.enter_context(RedisServer()) for _ in range(4)],
            [stack.enter_context(RedisServer()) for _ in range(4)],
        )


def _nutcracker(
    servers: list[MemcachedServer] | list[RedisServer], *, redis: bool
) -> NutcrackerServer:
    named = [(name, "127.0.0.1", s.port) for name, s in zip(NAMES, servers, strict=True)]
    return NutcrackerServer(named, redis=redis)


def _podkit_flags(servers: list[MemcachedServer] | list[RedisServer]) -> list[str]:
    flags = ["--algo", "ring", "--hash", "md5", "--hot-keys", "off"]
    for name, server in zip(NAMES, servers, strict=True):
        flags += ["--shard", f"{name}=127.0.0.1:{server.port}"]
    return flags


def _memcached_placement(servers: list[MemcachedServer]) -> dict[bytes, str]:
    where: dict[bytes, str] = {}
    for name, server in zip(NAMES, servers, strict=True):
        conn = MemcacheConn(server.port)
        for start in range(0, len(KEYS), BATCH):
            for key, _ in conn.get(*KEYS[start : start + BATCH]).items:
                where[key] = name
    return where


def _set_all_memcached(port: int) -> None:
    conn = MemcacheConn(port, timeout=60)
    for start in range(0, len(KEYS), BATCH):
        wire = b"".join(b"set %s 0 0 1\r\nx\r\n" % k for k in KEYS[start : start + BATCH])
        replies = conn.call(wire, [ReplyKind.LINE] * BATCH)
        assert {r.raw for r in replies} == {b"STORED\r\n"}


def test_memcached_keys_land_on_the_same_shards_as_with_nutcracker(
    memcached_pairs: tuple[list[MemcachedServer], list[MemcachedServer]],
    start_proxy: ProxyFactory,
) -> None:
    behind_nutcracker, behind_podkit = memcached_pairs
    with _nutcracker(behind_nutcracker, redis=False) as nutcracker:
        wait_port("127.0.0.1", nutcracker.port)
        _set_all_memcached(nutcracker.port)
    proxy = start_proxy("memcached", [], *_podkit_flags(behind_podkit))
    _set_all_memcached(proxy.port)
    theirs = _memcached_placement(behind_nutcracker)
    ours = _memcached_placement(behind_podkit)
    assert len(theirs) == len(KEYS)
    assert ours == theirs


def _redis_placement(servers: list[RedisServer]) -> dict[bytes, str]:
    where: dict[bytes, str] = {}
    for name, server in zip(NAMES, servers, strict=True):
        for item in array_items(RedisConn(server.port, timeout=60).call(b"KEYS", b"*")) or []:
            where[item.split(b"\r\n")[1]] = name
    return where


def _set_all_redis(port: int) -> None:
    conn = RedisConn(port, timeout=60)
    for start in range(0, len(KEYS), BATCH):
        replies = conn.pipeline([[b"SET", k, b"x"] for k in KEYS[start : start + BATCH]])
        assert set(replies) == {b"+OK\r\n"}


def test_redis_keys_land_on_the_same_shards_as_with_nutcracker(
    redis_pairs: tuple[list[RedisServer], list[RedisServer]], start_proxy: ProxyFactory
) -> None:
    behind_nutcracker, behind_podkit = redis_pairs
    with _nutcracker(behind_nutcracker, redis=True) as nutcracker:
        wait_port("127.0.0.1", nutcracker.port)
        _set_all_redis(nutcracker.port)
    proxy = start_proxy("redis", [], *_podkit_flags(behind_podkit))
    _set_all_redis(proxy.port)
    theirs = _redis_placement(behind_nutcracker)
    assert len(theirs) == len(KEYS)
    assert _redis_placement(behind_podkit) == theirs
