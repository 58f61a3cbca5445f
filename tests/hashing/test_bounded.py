"""Bounded loads: no node ever above c times its share, and keys stay home while they can."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podkit.hashing import (
    BoundedLoads,
    KetamaRing,
    MaglevTable,
    NodeSetError,
    NoNodesError,
    RendezvousHash,
)
from tests.hashing.conftest import ALGORITHM_NAMES, build, keys, node_names


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_no_node_exceeds_c_times_the_mean_when_every_key_is_assigned(algorithm: str) -> None:
    table = BoundedLoads(build(algorithm, node_names(10)), balance=1.25)
    sample = keys(20_000)
    for assigned, key in enumerate(sample, start=1):
        node = table.assign(key)
        assert table.loads[node] <= math.ceil(1.25 * assigned / 10)
    stats = table.statistics()
    assert stats.total == 20_000
    assert stats.peak <= math.ceil(1.25 * 20_000 / 10)
    assert stats.peak_to_mean <= 1.25


def test_a_key_goes_to_its_owner_while_the_owner_is_below_capacity() -> None:
    ring = KetamaRing(node_names(5))
    table = BoundedLoads(ring, balance=2.0)
    for key in keys(50):
        assert table.pick(key) == ring.pick(key)
        assert table.assign(key) == ring.pick(key)


def test_a_hot_key_spills_along_its_preference_order() -> None:
    """Assigning one key again and again fills its owner to the cap, then the next node..."""
    ring = KetamaRing(node_names(4))
    table = BoundedLoads(ring, balance=1.0)
    order = ring.pick_n("hot", 4)
    placed = [table.assign("hot") for _ in range(8)]
    # With c = 1 the capacity is ceil((m + 1) / 4): the owner takes the 1st, the next node
    # the 2nd, and so on, round the preference order.
    assert placed == order + order
    assert table.statistics().spilled == 6


def test_release_frees_capacity_for_the_owner_again() -> None:
    ring = KetamaRing(node_names(3))
    table = BoundedLoads(ring, balance=1.0)
    owner = ring.pick("k")
    first = [table.assign("k") for _ in range(3)]
    assert first[0] == owner
    table.release(owner)
    assert table.pick("k") == owner
    assert table.total == 2


def test_release_refuses_more_than_a_node_holds() -> None:
    table = BoundedLoads(KetamaRing(["a", "b"]))
    with pytest.raises(NodeSetError, match="holds 0"):
        table.release("a")
    with pytest.raises(NodeSetError, match="not present"):
        table.release("zz")


def test_removing_a_node_returns_its_items_and_adding_one_starts_empty() -> None:
    table = BoundedLoads(RendezvousHash(["a", "b", "c"]))
    for key in keys(30):
        table.assign(key)
    held = table.loads["b"]
    assert table.remove_node("b") == held
    assert "b" not in table.loads
    assert table.total == 30 - held
    table.add_node("d", weight=2)
    assert table.loads["d"] == 0
    assert "d" in table.function.nodes
    assert table.capacity("d") == math.ceil(1.25 * (table.total + 1) * 2 / 4)


def test_weights_scale_each_nodes_capacity() -> None:
    table = BoundedLoads(MaglevTable(["a", "b"], weights={"a": 1, "b": 3}), balance=1.0)
    for key in keys(400):
        table.assign(key)
    assert table.loads["a"] <= 100
    assert table.loads["b"] <= 300


@pytest.mark.parametrize("balance", [0.99, 0.0, -1.0, float("nan"), float("inf")])
def test_balance_below_one_is_refused(balance: float) -> None:
    with pytest.raises(NodeSetError, match="balance"):
        BoundedLoads(KetamaRing(["a"]), balance=balance)


def test_an_empty_table_says_it_has_no_node() -> None:
    with pytest.raises(NoNodesError):
        BoundedLoads(KetamaRing([])).assign("k")


@settings(max_examples=30, deadline=None)
@given(
    operations=st.lists(
        st.tuples(st.booleans(), st.text(alphabet="abcdef", max_size=3)), max_size=150
    ),
    balance=st.floats(min_value=1.0, max_value=3.0),
)
def test_every_assignment_respects_the_capacity_at_that_moment(
    operations: list[tuple[bool, str]], balance: float
) -> None:
    """Interleaved assigns and releases: the chosen node is below its cap when chosen."""
    table = BoundedLoads(KetamaRing(node_names(5)), balance=balance)
    live: Counter[str] = Counter()
    for assign, key in operations:
        if assign or not live:
            capacities = {node: table.capacity(node) for node in table.loads}
            before = dict(table.loads)
            node = table.assign(key)
            assert before[node] < capacities[node]
            live[node] += 1
        else:
            node = sorted(live)[0]
            table.release(node)
            live[node] -= 1
            if not live[node]:
                del live[node]
        assert dict(table.loads) == {n: live.get(n, 0) for n in node_names(5)}
        assert table.total == sum(live.values())


def test_loads_measured_elsewhere_can_be_set_and_steer_new_keys() -> None:
    ring = KetamaRing(node_names(4))
    table = BoundedLoads(ring, balance=1.25)
    owner = ring.pick("session:1")
    for node in node_names(4):
        table.set_load(node, 10)
    table.set_load(owner, 13)
    assert table.total == 43
    assert table.capacity(owner) == 14  # ceil(1.25 * 44 / 4)
    assert table.pick("session:1") == owner
    table.set_load(owner, 15)
    assert table.capacity(owner) == 15  # ceil(1.25 * 46 / 4): full
    assert table.pick("session:1") == ring.pick_n("session:1", 2)[1]
    with pytest.raises(NodeSetError, match="integer >= 0"):
        table.set_load(owner, -1)
    with pytest.raises(NodeSetError, match="not present"):
        table.set_load("zz", 1)
