"""Maglev: the paper's table population, near-perfect balance and small disruption."""

from __future__ import annotations

from collections import Counter

import pytest

from podkit.hashing import MaglevTable, NodeSetError
from podkit.hashing.keyhash import key_hash, node_hash128
from podkit.hashing.maglev import build_table, is_prime
from tests.hashing.conftest import keys, node_names


def reference_populate(nodes: list[str], size: int) -> list[int]:
    """The paper's Populate pseudocode (section 3.4), written as plainly as it reads there."""
    permutation = []
    for name in nodes:
        digest = node_hash128(name)
        offset = (digest & (2**64 - 1)) % size
        skip = (digest >> 64) % (size - 1) + 1
        permutation.append([(offset + j * skip) % size for j in range(size)])
    next_ = [0] * len(nodes)
    entry = [-1] * size
    n = 0
    while True:
        for i in range(len(nodes)):
            c = permutation[i][next_[i]]
            while entry[c] >= 0:
                next_[i] += 1
                c = permutation[i][next_[i]]
            entry[c] = i
            next_[i] += 1
            n += 1
            if n == size:
                return entry


def test_table_population_matches_the_papers_pseudocode() -> None:
    nodes = sorted(node_names(7))
    assert build_table(nodes, [1.0] * 7, 1009) == reference_populate(nodes, 1009)


def test_every_node_owns_m_over_n_slots_give_or_take_one() -> None:
    table = MaglevTable(node_names(100))
    counts = Counter(table.table)
    assert len(counts) == 100
    assert max(counts.values()) - min(counts.values()) <= 1


def test_a_key_is_owned_by_its_table_slot() -> None:
    function = MaglevTable(node_names(5), table_size=251)
    table = function.table
    for key in keys(300):
        assert function.pick(key) == table[key_hash(key) % 251]


def test_peak_to_mean_at_100_nodes_is_within_five_percent() -> None:
    """The table's slot shares are within 5%, and 500,000 keys land within 5% too."""
    function = MaglevTable(node_names(100))
    slots = Counter(function.table)
    assert max(slots.values()) / (function.table_size / 100) <= 1.05
    counts = Counter(function.pick_many(keys(500_000)))
    assert max(counts.values()) / 5_000 <= 1.05


def test_removing_a_node_moves_its_keys_and_few_others() -> None:
    """The removed node's keys all move; at most 2% of the other keys move with them."""
    nodes = node_names(20)
    before = MaglevTable(nodes)
    after = before.without_node(nodes[7])
    sample = keys(50_000)
    collateral = 0
    for old, new in zip(before.pick_many(sample), after.pick_many(sample), strict=True):
        if old == nodes[7]:
            assert new != nodes[7]
        elif new != old:
            collateral += 1
    assert collateral / len(sample) < 0.02


def test_weights_give_proportional_slot_counts() -> None:
    table = MaglevTable(["a", "b", "c"], weights={"a": 1, "b": 2, "c": 5})
    counts = Counter(table.table)
    for node, share in (("a", 1 / 8), ("b", 2 / 8), ("c", 5 / 8)):
        assert abs(counts[node] / table.table_size - share) < 0.01


@pytest.mark.parametrize("size", [0, 1, 4, 65536, 100])
def test_table_size_must_be_prime(size: int) -> None:
    with pytest.raises(NodeSetError, match="prime"):
        MaglevTable(["a"], table_size=size)


def test_table_size_must_hold_every_node() -> None:
    with pytest.raises(NodeSetError, match="smaller than the node count"):
        MaglevTable(node_names(10), table_size=7)


def test_prime_check() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(65537)
    assert not is_prime(65535)


def test_changed_node_sets_keep_the_table_size() -> None:
    function = MaglevTable(["a", "b"], table_size=101)
    assert function.with_node("c").table_size == 101
    assert function.without_node("a").table_size == 101
