"""Jump consistent hash: the paper's algorithm, numbered shards and removal by tombstone."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podkit.hashing import JumpHash, NodeSetError, jump_hash, key_hash
from tests.hashing.conftest import keys


def reference_jump(key: int, num_buckets: int) -> int:
    """A line-by-line transcription of the paper's C++ JumpConsistentHash."""
    b, j = -1, 0
    while j < num_buckets:
        b = j
        key = (key * 2862933555777941757 + 1) % (1 << 64)
        j = int(float(b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


@settings(max_examples=300, deadline=None)
@given(key=st.integers(min_value=0, max_value=2**64 - 1), buckets=st.integers(1, 5000))
def test_jump_hash_matches_the_papers_code(key: int, buckets: int) -> None:
    assert jump_hash(key, buckets) == reference_jump(key, buckets)


@settings(max_examples=200, deadline=None)
@given(key=st.integers(min_value=0, max_value=2**64 - 1), buckets=st.integers(1, 1000))
def test_growing_by_one_bucket_moves_a_key_only_into_the_new_bucket(key: int, buckets: int) -> None:
    assert jump_hash(key, buckets + 1) in (jump_hash(key, buckets), buckets)


def test_jump_hash_agrees_with_values_published_by_other_implementations() -> None:
    """ClickHouse's jumpConsistentHash test answers, and the jump-consistent-hash package's."""
    cases = [
        ((1, 1), 0),
        ((42, 57), 43),
        ((256, 1024), 520),
        ((3735883980, 1), 0),
        ((3735883980, 666), 361),
        ((16045690984833335023, 255), 237),
    ]
    for (key, buckets), expected in cases:
        assert jump_hash(key, buckets) == expected


def test_jump_hash_refuses_zero_buckets() -> None:
    with pytest.raises(ValueError, match="buckets"):
        jump_hash(1, 0)


def test_nodes_are_numbered_in_the_order_listed() -> None:
    nodes = ["shard-a", "shard-b", "shard-c", "shard-d"]
    function = JumpHash(nodes)
    for key in keys(500):
        assert function.pick(key) == nodes[jump_hash(key_hash(key), 4)]
        assert function.pick_shard(key) == jump_hash(key_hash(key), 4)
    assert [function.shard_of(node) for node in nodes] == [0, 1, 2, 3]


def test_removing_a_middle_node_leaves_a_tombstone_and_moves_only_its_keys() -> None:
    nodes = [f"n{i}" for i in range(8)]
    before = JumpHash(nodes)
    after = before.without_node("n3")
    assert after.slots == ("n0", "n1", "n2", None, "n4", "n5", "n6", "n7")
    sample = keys(20_000)
    moved = Counter()
    for old, new in zip(before.pick_many(sample), after.pick_many(sample), strict=True):
        if old == "n3":
            moved[new] += 1
        else:
            assert new == old
    # The orphaned keys spread over all seven survivors.
    assert set(moved) == set(nodes) - {"n3"}
    assert min(moved.values()) > 0.5 * sum(moved.values()) / 7


def test_adding_a_node_fills_the_first_tombstone() -> None:
    function = JumpHash(["a", "b", "c", "d"]).without_node("b").without_node("c")
    assert function.slots == ("a", None, None, "d")
    refilled = function.with_node("x")
    assert refilled.slots == ("a", "x", None, "d")
    assert refilled.with_node("y").slots == ("a", "x", "y", "d")


def test_removing_the_last_node_shrinks_the_slots() -> None:
    function = JumpHash(["a", "b", "c"]).without_node("b").without_node("c")
    assert function.slots == ("a",)
    assert all(node == "a" for node in function.pick_many(keys(100)))


def test_jump_hash_has_no_weights() -> None:
    with pytest.raises(NodeSetError, match="no weights"):
        JumpHash(["a", "b"], weights={"a": 2})
    with pytest.raises(NodeSetError, match="no weights"):
        JumpHash(["a"]).with_node("b", weight=3)


def test_a_function_with_tombstones_is_not_equal_to_a_compact_one() -> None:
    assert JumpHash(["a", "b", "c"]).without_node("b") != JumpHash(["a", "c"])
    assert JumpHash(["a", "b", "c"]).without_node("b") == JumpHash(["a", None, "c"])
