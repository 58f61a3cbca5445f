"""``podkit shard --protocol memcached`` in front of four real memcached servers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from podkit.ambassador.shard import Placement
from podkit.ambassador.shard._memcache import ReplyKind
from podkit.testing import MemcachedServer
from podkit.testing.net import wait_for

from .conftest import MemcacheConn, ProxyFactory

LINE, VALUES = ReplyKind.LINE, ReplyKind.VALUES
NAMES = ["s0", "s1", "s2", "s3"]


def test_a_get_of_100_keys_over_4_shards_returns_every_value_in_order(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards)
    conn = MemcacheConn(proxy.port)
    keys = [b"key:%d" % i for i in range(100)]
    for key in keys:
        assert conn.set(key, b"v-" + key) == b"STORED\r\n"
    reply = conn.get(*reversed(keys))
    assert [k for k, _ in reply.items] == list(reversed(keys))
    assert all(item.endswith(b"v-" + k + b"\r\n") for k, item in reply.items)
    # Each key sits on the shard the placement names, and every shard got some.
    placement = Placement(NAMES)
    held = dict.fromkeys(NAMES, 0)
    for name, server in zip(NAMES, memcached_shards, strict=True):
        direct = MemcacheConn(server.port)
        for key, _ in direct.get(*keys).items:
            assert placement.pick(key) == name
            held[name] += 1
    assert sum(held.values()) == 100
    assert all(count > 5 for count in held.values())


def test_a_pipeline_of_1000_commands_gets_1000_replies_in_order(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards)
    conn = MemcacheConn(proxy.port)
    wire, kinds, expected = [], [], []
    for i in range(500):
        value = b"%d" % i
        wire.append(b"set p%d 0 0 %d\r\n%s\r\n" % (i, len(value), value))
        kinds.append(LINE)
        expected.append(b"STORED\r\n")
        wire.append(b"get p%d\r\n" % i)
        kinds.append(VALUES)
        expected.append(b"VALUE p%d 0 %d\r\n%s\r\nEND\r\n" % (i, len(value), value))
    replies = conn.call(b"".join(wire), kinds)
    assert [r.raw for r in replies] == expected


def test_every_storage_command_and_noreply_work_through_the_proxy(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards)
    conn = MemcacheConn(proxy.port)
    assert conn.line(b"add a 1 0 1\r\n5\r\n") == b"STORED\r\n"
    assert conn.line(b"add a 1 0 1\r\n5\r\n") == b"NOT_STORED\r\n"
    assert conn.line(b"append a 0 0 1\r\n0\r\n") == b"STORED\r\n"
    assert conn.line(b"prepend a 0 0 1\r\n1\r\n") == b"STORED\r\n"
    assert conn.line(b"incr a 5\r\n") == b"155\r\n"
    assert conn.line(b"decr a 100\r\n") == b"55\r\n"
    assert conn.line(b"replace a 2 0 2\r\nhi\r\n") == b"STORED\r\n"
    assert conn.line(b"touch a 100\r\n") == b"TOUCHED\r\n"
    [gets] = conn.call(b"gets a\r\n", [VALUES])
    cas = gets.items[0][1].split(b"\r\n")[0].split()[-1]
    assert conn.line(b"cas a 0 0 2 %s\r\nyo\r\n" % cas) == b"STORED\r\n"
    assert conn.line(b"cas a 0 0 2 %s\r\nno\r\n" % cas) == b"EXISTS\r\n"
    # noreply: nothing comes back, the next reply is the version's.
    assert conn.line(b"set q 0 0 1 noreply\r\nz\r\ndelete a noreply\r\nversion\r\n").startswith(
        b"VERSION"
    )
    assert conn.get(b"a", b"q").items[0][0] == b"q"
    assert conn.line(b"delete q\r\n") == b"DELETED\r\n"
    assert conn.line(b"delete q\r\n") == b"NOT_FOUND\r\n"


def test_bad_requests_get_protocol_errors_and_the_connection_goes_on(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards, "--max-value-bytes", "1KiB")
    conn = MemcacheConn(proxy.port)
    assert conn.line(b"flush_all\r\n") == b"ERROR\r\n"
    assert conn.line(b"get " + b"k" * 251 + b"\r\n").startswith(b"CLIENT_ERROR")
    big = b"x" * 2000
    assert conn.line(b"set big 0 0 %d\r\n%s\r\n" % (len(big), big)) == (
        b"SERVER_ERROR object too large for cache\r\n"
    )
    assert conn.line(b"incr k notanumber\r\n").startswith(b"CLIENT_ERROR")
    assert conn.set(b"fine", b"yes") == b"STORED\r\n"
    # A data block that does not end where it says cannot be resynchronised: closed.
    conn.sock.sendall(b"set k 0 0 1\r\nxyz\r\n")
    assert conn.sock.recv(100) == b"CLIENT_ERROR bad data chunk\r\n"
    assert conn.sock.recv(100) == b""


def test_a_killed_shard_answers_server_error_for_its_keys_and_others_keep_working(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards, "--timeout", "500ms", "--retry-after", "1m")
    placement = Placement(NAMES)
    conn = MemcacheConn(proxy.port)
    keys = [b"k%d" % i for i in range(200)]
    for key in keys:
        conn.set(key, key)
    memcached_shards[2].kill()
    dead = [k for k in keys if placement.pick(k) == "s2"]
    alive = [k for k in keys if placement.pick(k) != "s2"]
    errors = 0
    for _ in range(3):  # under load: every key, three rounds, never a hang
        for key in keys:
            started = time.monotonic()
            reply = conn.get(key)
            assert time.monotonic() - started < 2.0
            if key in alive:
                assert reply.items[0][1].endswith(key + b"\r\n")
            elif reply.error:
                assert reply.raw.startswith(b"SERVER_ERROR shard s2 unavailable")
                errors += 1
            else:
                assert not reply.items  # ejected: its keys moved to the next shard (a miss)
    assert 1 <= errors < len(dead) * 3
    document = proxy.shards()
    assert document["shards"][2]["state"] == "ejected"
    assert document["shards"][2]["errors"] >= 2
    assert 'podkit_shard_state{shard="s2",state="ejected"} 1.0' in proxy.metrics()


def test_with_two_replicas_reads_survive_a_killed_shard(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards, "--replicas", "2", "--retry-after", "1m")
    conn = MemcacheConn(proxy.port)
    keys = [b"r%d" % i for i in range(200)]
    for key in keys:
        assert conn.set(key, key) == b"STORED\r\n"
    memcached_shards[1].kill()
    for _ in range(3):
        reply = conn.get(*keys)
        assert [k for k, _ in reply.items] == keys
        for key in keys:
            assert conn.get(key).items[0][1].endswith(key + b"\r\n")
    assert proxy.shards()["shards"][1]["state"] == "ejected"


def test_a_stopped_shard_times_out_with_server_error_never_a_hang(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards, "--timeout", "300ms")
    placement = Placement(NAMES)
    conn = MemcacheConn(proxy.port)
    key = next(b"t%d" % i for i in range(100) if placement.pick(b"t%d" % i) == "s0")
    other = next(b"t%d" % i for i in range(100) if placement.pick(b"t%d" % i) == "s1")
    conn.set(key, b"1")
    conn.set(other, b"2")
    process = memcached_shards[0].process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = conn.get(key)
        assert reply.raw.startswith(b"SERVER_ERROR shard s0 unavailable: no reply within")
        assert time.monotonic() - started < 2.0
        assert conn.get(other).items
    finally:
        os.kill(process.pid, signal.SIGCONT)


def test_two_proxies_place_every_key_alike(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    one = MemcacheConn(start_proxy("memcached", memcached_shards).port)
    two = MemcacheConn(start_proxy("memcached", memcached_shards).port)
    keys = [b"same:%d" % i for i in range(100)]
    for key in keys:
        one.set(key, key)
    assert [k for k, _ in two.get(*keys).items] == keys


def test_a_hot_key_is_copied_to_more_shards_listed_and_deleted_everywhere(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards)
    conn = MemcacheConn(proxy.port)
    assert conn.set(b"viral", b"cat") == b"STORED\r\n"
    batch = b"get viral\r\n" * 500
    for _ in range(6):
        replies = conn.call(batch, [VALUES] * 500)
        assert all(r.items[0][1] == b"VALUE viral 0 3\r\ncat\r\n" for r in replies)
    hot = proxy.shards()["hot_keys"]
    assert hot[0]["key"] == "viral"
    assert hot[0]["copies"] >= 2

    def holders() -> int:
        count = 0
        for server in memcached_shards:
            count += bool(MemcacheConn(server.port).get(b"viral").items)
        return count

    wait_for(lambda: holders() >= 2, timeout=5, what="copies of the hot key")
    assert conn.set(b"viral", b"dog") == b"STORED\r\n"
    replies = conn.call(batch, [VALUES] * 500)
    assert all(r.items[0][1] == b"VALUE viral 0 3\r\ndog\r\n" for r in replies)
    assert conn.line(b"delete viral\r\n") == b"DELETED\r\n"
    assert holders() == 0


def test_quit_closes_after_the_replies_before_it(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards)
    sock = MemcacheConn(proxy.port).sock
    sock.sendall(b"set a 0 0 1\r\nx\r\nquit\r\nget a\r\n")
    data = b""
    while chunk := sock.recv(100):
        data += chunk
    assert data == b"STORED\r\n"


def test_two_workers_share_the_port_and_the_admin_merges_their_shards(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards, "--workers", "2")
    conns = [MemcacheConn(proxy.port) for _ in range(8)]
    for i, conn in enumerate(conns):
        assert conn.set(b"w%d" % i, b"x") == b"STORED\r\n"
    keys = [b"w%d" % i for i in range(8)]
    assert [k for k, _ in conns[0].get(*keys).items] == keys

    def merged() -> bool:
        document = proxy.shards()
        return document.get("workers") == 2 and document["commands"] >= 9

    wait_for(merged, timeout=10, what="both workers in /shards")
    document = proxy.shards()
    assert sum(s["requests"] for s in document["shards"]) >= 16
    assert "podkit_shard_commands" in proxy.metrics()


def test_a_shards_file_is_followed_when_it_changes(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    shards_file = tmp_path / "shards.txt"
    # Discovery-file lines (SCHEME://HOST:PORT) are named after their address.
    lines = [f"memcached://127.0.0.1:{s.port}" for s in memcached_shards]
    shards_file.write_text("# shards\n" + "\n".join(lines[:3]) + "\n")
    proxy = start_proxy("memcached", [], "--shards-file", str(shards_file))
    assert [s["name"] for s in proxy.shards()["shards"]] == [line[12:] for line in lines[:3]]
    conn = MemcacheConn(proxy.port)
    keys = [b"f%d" % i for i in range(200)]
    for key in keys:
        conn.set(key, key)
    shards_file.write_text("\n".join(lines) + "\n")
    wait_for(lambda: len(proxy.shards()["shards"]) == 4, timeout=10, what="the fourth shard")
    # Only the keys the new shard took from the others moved (ketama): the rest still hit.
    placement = Placement([line[12:] for line in lines])
    reply = conn.get(*keys)
    found = {k for k, _ in reply.items}
    assert found == {k for k in keys if placement.pick(k) != lines[3][12:]}
    shards_file.write_text("not a shard line\n")
    proxy.process.signal(signal.SIGHUP)
    wait_for(lambda: "shards file not applied" in proxy.process.output(), timeout=10)
    assert len(proxy.shards()["shards"]) == 4


def test_meta_commands_are_routed_by_key(
    memcached_shards: list[MemcachedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy("memcached", memcached_shards)
    conn = MemcacheConn(proxy.port)
    meta = ReplyKind.META
    replies = conn.call(
        b"ms mk 2 T60 F5\r\nhi\r\nmg mk v f\r\nma cnt N0 J7 v\r\nma cnt v\r\n"
        b"md mk\r\nmg mk v\r\nmn\r\n",
        [meta, meta, meta, meta, meta, meta, LINE],
    )
    assert [r.raw for r in replies] == [
        b"HD\r\n",
        b"VA 2 f5\r\nhi\r\n",
        b"VA 1\r\n7\r\n",
        b"VA 1\r\n8\r\n",
        b"HD\r\n",
        b"EN\r\n",
        b"MN\r\n",
    ]
    assert conn.line(b"mg mk v q\r\n").startswith(b"CLIENT_ERROR meta flags q and b")
    # The key is where a text-protocol get finds it.
    conn.call(b"ms other 1\r\nx\r\n", [meta])
    assert conn.get(b"other").items[0][1] == b"VALUE other 0 1\r\nx\r\n"
