"""The router core: placement, hash tags, replicas, ejection and hot keys (``now`` passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.ambassador.shard._hotkeys import HotKeys, SpaceSaving
from podkit.ambassador.shard._router import (
    TRANSITIONS,
    IllegalTransition,
    Placement,
    ShardHealth,
    ShardRouter,
    ShardState,
    hash_tag_key,
)
from podkit.ambassador.shard._simulate import simulate, zipf_keys
from podkit.hashing import KetamaRing

SHARDS = ["a", "b", "c", "d"]


@given(st.binary(max_size=64))
def test_ring_md5_places_keys_like_the_ketama_ring(key: bytes) -> None:
    assert Placement(SHARDS).pick(key) == KetamaRing(SHARDS).pick(key)


@pytest.mark.parametrize("algorithm", ["ring", "maglev", "jump", "rendezvous"])
@pytest.mark.parametrize("key_hash", ["md5", "fnv1a_64", "crc32", "xxh3"])
def test_every_algorithm_and_hash_is_deterministic_and_orders_every_shard(
    algorithm: str, key_hash: str
) -> None:
    one = Placement(SHARDS, algorithm=algorithm, key_hash=key_hash)
    two = Placement(list(SHARDS), algorithm=algorithm, key_hash=key_hash)
    for i in range(200):
        key = b"k%d" % i
        assert one.pick(key) == two.pick(key)
        order = list(one.order(key))
        assert sorted(order) == sorted(SHARDS)
        assert order[0] == one.pick(key)


def test_fnv1a_64_is_twemproxys_32_bit_form() -> None:
    from podkit.ambassador.shard._router import KEY_POINT

    # twemproxy's hash_fnv1a_64 of "foo" (uint32 arithmetic, truncated constants).
    value = 0x84222325
    for byte in b"foo":
        value = ((value ^ byte) * 0x1B3) & 0xFFFFFFFF
    assert KEY_POINT["fnv1a_64"](b"foo") == value


def test_hash_tags_hash_only_the_tagged_part() -> None:
    assert hash_tag_key(b"user:{42}:name", b"{}") == b"42"
    assert hash_tag_key(b"user:{}:name", b"{}") == b"user:{}:name"
    assert hash_tag_key(b"plain", b"{}") == b"plain"
    router = ShardRouter(SHARDS, hash_tag=b"{}")
    assert router.shard_of(b"user:{42}:name") == router.shard_of(b"x{42}y")


def test_a_shard_is_ejected_after_the_fail_limit_and_probed_after_retry_after() -> None:
    router = ShardRouter(SHARDS, fail_limit=2, retry_after=30.0)
    key = next(b"k%d" % i for i in range(100) if router.shard_of(b"k%d" % i) == "a")
    assert router.read_targets(key, 0.0) == ["a"]
    assert not router.record_failure("a", 1.0)
    assert router.read_targets(key, 1.0) == ["a"]  # one failure: still READY
    assert router.record_failure("a", 2.0)
    [other] = router.read_targets(key, 3.0)
    assert other != "a"
    assert router.health["a"].state is ShardState.EJECTED
    assert router.read_targets(key, 32.0) == ["a"]  # retry due: probing
    assert router.health["a"].state is ShardState.PROBING
    router.record_failure("a", 32.5)
    assert router.health["a"].state is ShardState.EJECTED
    assert router.read_targets(key, 40.0) != ["a"]
    assert router.read_targets(key, 63.0) == ["a"]
    router.record_success("a", 63.1)
    assert router.health["a"].state is ShardState.READY
    assert router.read_targets(key, 63.2) == ["a"]


def test_a_success_resets_the_failures_in_a_row() -> None:
    router = ShardRouter(SHARDS, fail_limit=2)
    router.record_failure("a", 0.0)
    router.record_success("a", 0.1)
    assert not router.record_failure("a", 0.2)
    assert router.health["a"].state is ShardState.READY


def test_the_state_machine_refuses_transitions_it_does_not_have() -> None:
    assert (ShardState.EJECTED, "fail-limit") not in TRANSITIONS
    health = ShardHealth("a", state=ShardState.EJECTED)
    with pytest.raises(IllegalTransition):
        health._go("fail-limit")


def test_replicas_write_to_the_first_distinct_shards_and_read_the_first() -> None:
    router = ShardRouter(SHARDS, replicas=2)
    for i in range(50):
        key = b"k%d" % i
        writes = router.write_targets(key, 0.0)
        assert len(set(writes)) == 2
        assert writes == router.placement.first(key, 2)
        assert router.read_targets(key, 0.0) == writes


def test_with_every_shard_ejected_there_is_no_target() -> None:
    router = ShardRouter(["a"], fail_limit=1)
    router.record_failure("a", 0.0)
    assert router.read_targets(b"k", 1.0) == []


def test_the_sketch_keeps_the_heavy_hitters_within_its_bound() -> None:
    sketch = SpaceSaving(capacity=16)
    for i in range(20_000):
        sketch.add(b"hot" if i % 4 == 0 else b"cold%d" % i)
    assert len(sketch.counts) < 32
    [(key, count)] = sketch.top(1)
    assert key == b"hot"
    assert 5000 <= count <= 5000 + sketch.floor


def test_a_hot_key_is_kept_on_more_shards_and_its_deletes_reach_them_all() -> None:
    hot = HotKeys(4)
    router = ShardRouter(SHARDS, hot_keys=hot)
    for i in range(5000):
        router.read_targets(b"viral" if i % 2 else b"k%d" % i, 0.0)
    assert hot.copies(b"viral") >= 2
    writes = router.write_targets(b"viral", 0.0)
    assert writes == router.placement.first(b"viral", hot.copies(b"viral"))
    assert router.hottest(1)[0].key == b"viral"
    reads = {router.read_targets(b"viral", 0.0)[0] for _ in range(200)}
    assert reads == set(writes)
    assert router.hot_copy(b"viral", writes[-1])
    assert not router.hot_copy(b"viral", writes[0])


def test_zipf_traffic_is_spread_within_15_percent_of_the_mean_with_hot_keys() -> None:
    """Zipf(0.99) over 1,000,000 keys and 10 shards (seeded): the busiest shard's share."""
    keys = zipf_keys(300_000, keyspace=1_000_000, seed=7)
    without = simulate(keys, shards=10, hot_keys=False)
    with_hot = simulate(keys, shards=10, hot_keys=True)
    assert with_hot.peak <= 1.15, with_hot
    assert without.peak > with_hot.peak
