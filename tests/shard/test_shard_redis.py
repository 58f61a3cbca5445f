"""``podkit shard --protocol redis`` in front of four real redis-servers."""

from __future__ import annotations

import threading
import time

import pytest

from podkit.ambassador.shard import Placement
from podkit.ambassador.shard._resp import array_items, bulk, integer
from podkit.testing import RedisServer
from podkit.testing.net import wait_for

from .conftest import ProxyFactory, RedisConn

NAMES = ["s0", "s1", "s2", "s3"]


def test_mget_of_100_keys_over_4_shards_returns_every_value_in_order(
    redis_shards: list[RedisServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("redis", redis_shards)
    conn = RedisConn(proxy.port)
    keys = [b"key:%d" % i for i in range(100)]
    assert conn.call(b"MSET", *[part for k in keys for part in (k, b"v-" + k)]) == b"+OK\r\n"
    items = array_items(conn.call(b"MGET", *reversed(keys), b"missing"))
    assert items == [bulk(b"v-" + k) for k in reversed(keys)] + [b"$-1\r\n"]
    placement = Placement(NAMES)
    counts = []
    for name, server in zip(NAMES, redis_shards, strict=True):
        held = array_items(RedisConn(server.port).call(b"KEYS", b"*")) or []
        names = [h.split(b"\r\n")[1] for h in held]
        assert all(placement.pick(k) == name for k in names)
        counts.append(len(names))
    assert sum(counts) == 100
    assert min(counts) > 5
    assert conn.call(b"EXISTS", *keys[:10], b"missing", keys[0]) == integer(11)
    assert conn.call(b"TOUCH", *keys[:10]) == integer(10)
    assert conn.call(b"DEL", *keys[:50], b"missing") == integer(50)
    assert conn.call(b"UNLINK", *keys) == integer(50)


def test_a_pipeline_of_1000_commands_gets_1000_replies_in_order(
    redis_shards: list[RedisServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("redis", redis_shards)
    conn = RedisConn(proxy.port)
    commands: list[list[bytes]] = []
    expected: list[bytes] = []
    for i in range(250):
        key = b"p%d" % i
        commands += [[b"SET", key, b"%d" % i], [b"INCR", key], [b"GET", key], [b"PING"]]
        expected += [b"+OK\r\n", integer(i + 1), bulk(b"%d" % (i + 1)), b"+PONG\r\n"]
    assert conn.pipeline(commands) == expected


def test_local_unsupported_and_cross_shard_commands(
    redis_shards: list[RedisServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        "redis",
        redis_shards,
        "--hash-tag",
        "{}",
        "--max-value-bytes",
        "1KiB",
        "--max-key-bytes",
        "100",
    )
    conn = RedisConn(proxy.port)
    assert conn.call(b"PING") == b"+PONG\r\n"
    assert conn.call(b"ECHO", b"hi") == bulk(b"hi")
    assert conn.call(b"SELECT", b"0") == b"+OK\r\n"
    assert conn.call(b"SELECT", b"3").startswith(b"-ERR SELECT")
    assert conn.call(b"KEYS", b"*") == b"-ERR unsupported command 'KEYS' (podkit shard)\r\n"
    assert conn.call(b"FLUSHALL").startswith(b"-ERR unsupported command 'FLUSHALL'")
    assert conn.call(b"GET").startswith(b"-ERR wrong number of arguments")
    # Keys on two shards cannot be renamed; one hash tag puts them on one shard.
    placement = Placement(NAMES)
    a, b = (
        b"a",
        next(b"b%d" % i for i in range(50) if placement.pick(b"b%d" % i) != placement.pick(b"a")),
    )
    conn.call(b"SET", a, b"1")
    assert conn.call(b"RENAME", a, b).startswith(b"-ERR RENAME keys are on different shards")
    conn.call(b"SET", b"{user1}:a", b"1")
    assert conn.call(b"RENAME", b"{user1}:a", b"{user1}:b") == b"+OK\r\n"
    assert conn.call(b"GET", b"{user1}:b") == bulk(b"1")
    conn.call(b"SADD", b"{u}:x", b"1", b"2")
    conn.call(b"SADD", b"{u}:y", b"2", b"3")
    assert array_items(conn.call(b"SINTER", b"{u}:x", b"{u}:y")) == [bulk(b"2")]
    assert conn.call(b"EVAL", b"return redis.call('GET', KEYS[1])", b"1", b"{user1}:b") == bulk(
        b"1"
    )
    # A value over the limit is refused and the connection goes on.
    assert conn.call(b"SET", b"big", b"x" * 2000).startswith(b"-ERR value too large")
    assert conn.call(b"SET", b"k" * 200, b"v").startswith(b"-ERR key too long")
    assert conn.call(b"GET", b"big") == b"$-1\r\n"
    # Inline commands work too.
    conn.sock.sendall(b"PING\r\n")
    assert conn.sock.recv(100) == b"+PONG\r\n"
    assert conn.call(b"QUIT") == b"+OK\r\n"
    assert conn.sock.recv(100) == b""


def test_a_killed_shard_answers_err_for_its_keys_and_others_keep_working(
    redis_shards: list[RedisServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("redis", redis_shards, "--timeout", "500ms", "--retry-after", "1m")
    placement = Placement(NAMES)
    conn = RedisConn(proxy.port)
    keys = [b"k%d" % i for i in range(200)]
    conn.pipeline([[b"SET", k, k] for k in keys])
    redis_shards[3].kill()
    errors = 0
    for _ in range(3):
        started = time.monotonic()
        replies = conn.pipeline([[b"GET", k] for k in keys])
        assert time.monotonic() - started < 2.0
        for key, reply in zip(keys, replies, strict=True):
            if placement.pick(key) != "s3":
                assert reply == bulk(key)
            elif reply.startswith(b"-"):
                assert reply.startswith(b"-ERR shard s3 unavailable")
                errors += 1
            else:
                assert reply == b"$-1\r\n"
    assert errors >= 1
    assert proxy.shards()["shards"][3]["state"] == "ejected"


def test_with_two_replicas_reads_survive_a_killed_shard(
    redis_shards: list[RedisServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("redis", redis_shards, "--replicas", "2", "--retry-after", "1m")
    conn = RedisConn(proxy.port)
    keys = [b"r%d" % i for i in range(200)]
    assert set(conn.pipeline([[b"SET", k, k] for k in keys])) == {b"+OK\r\n"}
    redis_shards[0].kill()
    for _ in range(3):
        assert conn.pipeline([[b"GET", k] for k in keys]) == [bulk(k) for k in keys]
        assert array_items(conn.call(b"MGET", *keys)) == [bulk(k) for k in keys]
    assert proxy.shards()["shards"][0]["state"] == "ejected"


def test_a_hot_key_is_spread_and_its_copies_follow_writes(
    redis_shards: list[RedisServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("redis", redis_shards)
    conn = RedisConn(proxy.port)
    conn.call(b"SET", b"viral", b"cat")
    for _ in range(6):
        assert set(conn.pipeline([[b"GET", b"viral"]] * 500)) == {bulk(b"cat")}
    assert proxy.shards()["hot_keys"][0]["copies"] >= 2
    conn.call(b"SET", b"viral", b"dog")
    assert set(conn.pipeline([[b"GET", b"viral"]] * 500)) == {bulk(b"dog")}
    assert conn.call(b"DEL", b"viral") == integer(1)
    for server in redis_shards:
        assert RedisConn(server.port).call(b"EXISTS", b"viral") == integer(0)


def _hammer(
    port: int, keys: list[bytes], stop: threading.Event, replies: list[list[bytes]]
) -> None:
    conn = RedisConn(port, timeout=5.0)  # a hang would fail the pipeline with a timeout
    while not stop.is_set():
        replies.append(conn.pipeline([[b"GET", k] for k in keys]))


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_shard_killed_under_concurrent_load_never_hangs_a_client(
    redis_shards: list[RedisServer], start_proxy: ProxyFactory, replicas: int
) -> None:
    """Four clients pipeline reads while a shard is killed: every pipeline is answered in
    full; without replicas only the dead shard's keys get -ERR (or, once it is ejected, the
    next shard's nil); with two replicas every read finds its value."""
    proxy = start_proxy(
        "redis", redis_shards, "--replicas", str(replicas), "--timeout", "500ms",
        "--retry-after", "1m",
    )  # fmt: skip
    keys = [b"load%d" % i for i in range(100)]
    RedisConn(proxy.port).pipeline([[b"SET", k, k] for k in keys])
    stop = threading.Event()
    results: list[list[list[bytes]]] = [[] for _ in range(4)]
    threads = [
        threading.Thread(target=_hammer, args=(proxy.port, keys, stop, results[i]))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(r) >= 3 for r in results), timeout=20, what="load running")
        redis_shards[1].kill()
        seen = [len(r) for r in results]
        wait_for(
            lambda: all(len(r) >= s + 5 for r, s in zip(results, seen, strict=True)),
            timeout=30,
            what="pipelines answered after the kill",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    placement = Placement(NAMES)
    moved = 0
    for result in results:
        for replies in result:
            assert len(replies) == len(keys)
            for key, reply in zip(keys, replies, strict=True):
                if replicas == 2 or placement.pick(key) != "s1":
                    assert reply == bulk(key)  # never an error, never lost
                elif reply.startswith(b"-"):
                    assert reply.startswith(b"-ERR shard s1 unavailable")
                else:  # before the kill its value; once s1 is ejected, the next shard's nil
                    assert reply in (bulk(key), b"$-1\r\n")
                    moved += reply == b"$-1\r\n"
    if replicas == 1:
        assert moved > 0
    assert proxy.shards()["shards"][1]["state"] == "ejected"
