"""The ketama ring agrees with an independent ketama implementation (uhashring) key for key."""

from __future__ import annotations

import hashlib
from bisect import bisect_left

from uhashring import HashRing

from podkit.hashing import KetamaRing, ketama_key_point
from podkit.hashing.ring import ketama_hash_count
from tests.hashing.conftest import keys

SERVERS = [f"10.0.{i // 4}.{i}:{11211 + i % 3}" for i in range(10)]
WEIGHTS = {server: 1 + (i * 7) % 5 for i, server in enumerate(SERVERS)}


def _compare(ours: KetamaRing, theirs: HashRing, sample: list[str]) -> None:
    """Every key maps to the same server; a key exactly on a point follows libmemcached."""
    points = [point for point, _ in ours.points]
    mine = ours.pick_many(sample)
    disagreements = 0
    for key, server in zip(sample, mine, strict=True):
        expected = theirs.get_node(key)
        if server != expected:
            # uhashring takes the first point *above* the key's point, libmemcached the first
            # point at or above it: they differ only for a key that lands exactly on a point.
            point = ketama_key_point(key)
            assert points[bisect_left(points, point)] == point, key
            disagreements += 1
    assert disagreements <= 2


def test_ring_agrees_with_uhashring_ketama_on_100000_keys() -> None:
    ours = KetamaRing(SERVERS)
    theirs = HashRing(SERVERS, hash_fn="ketama")
    assert ours.points == theirs.get_points()
    _compare(ours, theirs, keys(100_000))


def test_weighted_ring_agrees_with_uhashring_weighted_ketama_on_100000_keys() -> None:
    ours = KetamaRing(SERVERS, weights=WEIGHTS)
    theirs = HashRing({s: {"weight": w} for s, w in WEIGHTS.items()}, hash_fn="ketama")
    assert ours.points == theirs.get_points()
    _compare(ours, theirs, keys(100_000, prefix="session"))


def test_each_server_gets_160_points_from_md5_of_name_dash_index() -> None:
    """Points are MD5("NAME-i") read as four little-endian 32-bit numbers, 40 digests each."""
    ring = KetamaRing(["cache-a:11211", "cache-b:11211"])
    expected: list[tuple[int, str]] = []
    for server in ("cache-a:11211", "cache-b:11211"):
        for i in range(40):
            digest = hashlib.md5(f"{server}-{i}".encode()).digest()
            expected.extend(
                (int.from_bytes(digest[j : j + 4], "little"), server) for j in range(0, 16, 4)
            )
    assert ring.points == sorted(expected)


def test_a_key_belongs_to_the_first_point_at_or_after_its_md5_point() -> None:
    ring = KetamaRing(["a", "b", "c"])
    points = ring.points
    for key in keys(2_000):
        digest = hashlib.md5(key.encode()).digest()
        point = int.from_bytes(digest[:4], "little")
        assert ketama_key_point(key) == point
        later = [server for p, server in points if p >= point]
        assert ring.pick(key) == (later[0] if later else points[0][1])


def test_a_key_exactly_on_a_server_point_belongs_to_that_server_like_libmemcached() -> None:
    """Key "a-7" hashes to server a's first point of digest 7, so a owns it (point >= key)."""
    ring = KetamaRing(["a", "b", "c"])
    for server in ("a", "b", "c"):
        for i in range(40):
            assert ring.pick(f"{server}-{i}") == server


def test_weighted_point_counts_follow_libmemcached_formula() -> None:
    """floor(40 * N * w / W) digests: weights 1 and 3 over 2 servers give 20 and 60."""
    assert ketama_hash_count(1, 4, 2) == 20
    assert ketama_hash_count(3, 4, 2) == 60
    assert ketama_hash_count(1, 3, 3) == 40
    ring = KetamaRing(["a", "b"], weights={"a": 1, "b": 3})
    counts = {"a": 0, "b": 0}
    for _, server in ring.points:
        counts[server] += 1
    assert counts == {"a": 80, "b": 240}


def test_ring_walk_visits_servers_in_clockwise_order() -> None:
    ring = KetamaRing(["a", "b", "c", "d"])
    points = ring.points
    values = [p for p, _ in points]
    for key in keys(200):
        start = bisect_left(values, ketama_key_point(key))
        clockwise: list[str] = []
        for i in range(len(points)):
            server = points[(start + i) % len(points)][1]
            if server not in clockwise:
                clockwise.append(server)
        assert list(ring.iter_nodes(key)) == clockwise
