"""``podkit.shard.ShardedClient`` over pymemcache and redis-py, placing keys like the proxy."""

from __future__ import annotations

import pytest

from podkit.ambassador.shard._memcache import ReplyKind
from podkit.shard import Placement, ShardedClient, ShardUnavailable
from podkit.testing import MemcachedServer, RedisServer

from .conftest import MemcacheConn, ProxyFactory, RedisConn

NAMES = ["s0", "s1", "s2", "s3"]


def _named(servers: list[MemcachedServer] | list[RedisServer]) -> dict[str, str]:
    return {f"s{i}": f"127.0.0.1:{s.port}" for i, s in enumerate(servers)}


def test_the_memcached_client_places_keys_where_the_proxy_reads_them(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    keys = [f"lib:{i}" for i in range(200)]
    with ShardedClient(_named(memcached_shards)) as client:
        for key in keys:
            assert client.set(key, key.encode())
        assert client.get_many(keys) == {k.encode(): k.encode() for k in keys}
        assert client.shard_for("lib:1") == Placement(NAMES).pick(b"lib:1")
        assert client.incr("lib:missing") is None
        assert client.delete("lib:0")
        assert client.get("lib:0") is None
    proxy = start_proxy("memcached", memcached_shards, "--hot-keys", "off")
    conn = MemcacheConn(proxy.port)
    reply = conn.call(
        b"get " + b" ".join(k.encode() for k in keys[1:]) + b"\r\n", [ReplyKind.VALUES]
    )
    assert len(reply[0].items) == len(keys) - 1


def test_the_redis_client_places_keys_where_the_proxy_reads_them(
    redis_shards: list[RedisServer], start_proxy: ProxyFactory
) -> None:
    keys = [f"lib:{i}" for i in range(200)]
    proxy = start_proxy("redis", redis_shards, "--hot-keys", "off")
    conn = RedisConn(proxy.port)
    conn.pipeline([[b"SET", k.encode(), b"p"] for k in keys])
    with ShardedClient(_named(redis_shards), protocol="redis") as client:
        assert client.get_many(keys) == {k.encode(): b"p" for k in keys}
        assert client.incr("counter", 5) == 5
    assert conn.call(b"GET", b"counter") == b"$1\r\n5\r\n"


def test_with_replicas_the_client_reads_through_a_killed_shard(
    memcached_shards: list[MemcachedServer],
) -> None:
    clock = [0.0]
    with ShardedClient(
        _named(memcached_shards), replicas=2, timeout=0.5, clock=lambda: clock[0]
    ) as client:
        keys = [f"r{i}" for i in range(100)]
        for key in keys:
            client.set(key, b"v")
        memcached_shards[2].kill()
        for _ in range(2):
            assert len(client.get_many(keys)) == 100
            assert all(client.get(k) == b"v" for k in keys)
        assert client.router.health["s2"].state.value == "ejected"


def test_without_replicas_a_dead_shard_is_a_podkit_error() -> None:
    with ShardedClient({"only": "127.0.0.1:1"}, timeout=0.2, connect_timeout=0.2) as client:
        with pytest.raises(ShardUnavailable) as caught:
            client.get("k")
        assert caught.value.shard == "only"
