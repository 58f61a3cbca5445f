"""Property tests shared by every algorithm: minimal movement, replica lists, batch, weights."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podkit.hashing import NodeSetError, NoNodesError, ShardingFunction
from tests.hashing.conftest import (
    ALGORITHM_NAMES,
    MINIMAL_MOVEMENT,
    WEIGHTED_ALGORITHMS,
    build,
    keys,
    node_names,
)

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

node_sets = st.lists(
    st.text(alphabet="abcdefghij0123456789.:-", min_size=1, max_size=12),
    min_size=1,
    max_size=12,
    unique=True,
)
key_lists = st.lists(st.one_of(st.text(max_size=20), st.binary(max_size=20)), max_size=40)


def owners(function: ShardingFunction, sample: list[str]) -> list[str]:
    return function.pick_many(sample)


@pytest.mark.parametrize("algorithm", MINIMAL_MOVEMENT)
@PROPERTY
@given(nodes=node_sets, new=st.text(alphabet="xyz", min_size=1, max_size=4))
def test_adding_a_node_moves_keys_only_to_that_node(
    algorithm: str, nodes: list[str], new: str
) -> None:
    before = build(algorithm, nodes)
    after = before.with_node(new)
    sample = keys(500)
    for old, now in zip(owners(before, sample), owners(after, sample), strict=True):
        assert now in (old, new)


@pytest.mark.parametrize("algorithm", MINIMAL_MOVEMENT)
@PROPERTY
@given(nodes=node_sets.filter(lambda n: len(n) >= 2), data=st.data())
def test_removing_a_node_moves_only_its_keys(
    algorithm: str, nodes: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(nodes))
    before = build(algorithm, nodes)
    after = before.without_node(gone)
    sample = keys(500)
    for old, now in zip(owners(before, sample), owners(after, sample), strict=True):
        if old != gone:
            assert now == old
        else:
            assert now != gone


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@PROPERTY
@given(nodes=node_sets, sample=key_lists, n=st.integers(min_value=0, max_value=15))
def test_replica_lists_are_distinct_stable_and_start_with_the_owner(
    algorithm: str, nodes: list[str], sample: list[str | bytes], n: int
) -> None:
    function = build(algorithm, nodes)
    for key in sample:
        replicas = function.pick_n(key, n)
        assert len(replicas) == min(n, len(nodes))
        assert len(set(replicas)) == len(replicas)
        assert set(replicas) <= set(nodes)
        if replicas:
            assert replicas[0] == function.pick(key)
        assert function.pick_n(key, n) == replicas
        assert function.pick_n(key, len(nodes))[: len(replicas)] == replicas
        assert sorted(function.iter_nodes(key)) == sorted(nodes)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@PROPERTY
@given(nodes=node_sets, sample=key_lists)
def test_batch_lookup_equals_one_lookup_per_key(
    algorithm: str, nodes: list[str], sample: list[str | bytes]
) -> None:
    function = build(algorithm, nodes)
    assert function.pick_many(sample) == [function.pick(k) for k in sample]
    assert function.pick_many(iter(sample)) == [function.pick(k) for k in sample]


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@PROPERTY
@given(nodes=node_sets, new=st.text(alphabet="xyz", min_size=1, max_size=4))
def test_adding_then_removing_a_node_restores_every_answer(
    algorithm: str, nodes: list[str], new: str
) -> None:
    function = build(algorithm, nodes)
    back = function.with_node(new).without_node(new)
    assert back == function
    sample = keys(300)
    assert back.pick_many(sample) == function.pick_many(sample)


@pytest.mark.parametrize("algorithm", ["ring", "rendezvous", "maglev"])
@PROPERTY
@given(nodes=node_sets, seed=st.randoms(use_true_random=False))
def test_the_order_nodes_are_listed_in_does_not_change_answers(
    algorithm: str, nodes: list[str], seed: object
) -> None:
    shuffled = list(nodes)
    seed.shuffle(shuffled)  # type: ignore[attr-defined]
    sample = keys(300)
    assert build(algorithm, nodes).pick_many(sample) == build(algorithm, shuffled).pick_many(sample)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_every_node_gets_a_fair_share_of_keys(algorithm: str) -> None:
    """With 10 nodes and 50,000 keys no node is more than 35% off its share (ring) or 8%."""
    function = (
        build(algorithm, node_names(10), table_size=65537)
        if algorithm == "maglev"
        else (build(algorithm, node_names(10)))
    )
    counts = Counter(function.pick_many(keys(50_000)))
    assert set(counts) == set(node_names(10))
    limit = 0.35 if algorithm == "ring" else 0.08
    for count in counts.values():
        assert abs(count / 5_000 - 1) < limit


@pytest.mark.parametrize("algorithm", WEIGHTED_ALGORITHMS)
def test_weights_set_each_node_share_within_tolerance(algorithm: str) -> None:
    """Weights 1, 2, 3, 4 give shares 10%, 20%, 30%, 40% of 60,000 keys, within 15% of each."""
    nodes = node_names(4)
    weights = {node: i + 1 for i, node in enumerate(nodes)}
    function = build(algorithm, nodes, weights=weights)
    counts = Counter(function.pick_many(keys(60_000)))
    for node, weight in weights.items():
        share = counts[node] / 60_000
        assert abs(share / (weight / 10) - 1) < 0.15, (node, share)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_an_empty_function_says_it_has_no_node(algorithm: str) -> None:
    function = build(algorithm, [])
    with pytest.raises(NoNodesError):
        function.pick("k")
    with pytest.raises(NoNodesError):
        function.pick_many(["k"])
    assert function.pick_many([]) == []
    assert function.pick_n("k", 3) == []
    assert function.with_node("a").pick("k") == "a"


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_invalid_node_sets_are_refused_with_a_reason(algorithm: str) -> None:
    with pytest.raises(NodeSetError, match="listed twice"):
        build(algorithm, ["a", "a"])
    with pytest.raises(NodeSetError, match="non-empty string"):
        build(algorithm, ["a", ""])
    function = build(algorithm, ["a", "b"])
    with pytest.raises(NodeSetError, match="already present"):
        function.with_node("a")
    with pytest.raises(NodeSetError, match="not present"):
        function.without_node("c")
    with pytest.raises(NodeSetError, match="unknown node"):
        build(algorithm, ["a"], weights={"z": 2})


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_every_algorithm_implements_the_sharding_function_interface(algorithm: str) -> None:
    function = build(algorithm, ["a", "b"])
    assert isinstance(function, ShardingFunction)
    assert function.algorithm == algorithm
    assert function.nodes == ("a", "b")
    assert dict(function.weights) == {"a": 1.0, "b": 1.0}
    assert len(function) == 2
    assert "a" in function
    assert "z" not in function


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_a_single_string_is_not_taken_for_a_list_of_nodes(algorithm: str) -> None:
    with pytest.raises(NodeSetError, match="not one string"):
        build(algorithm, "a,b")  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", WEIGHTED_ALGORITHMS)
def test_weights_must_be_positive_finite_numbers(algorithm: str) -> None:
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(NodeSetError, match="weight"):
            build(algorithm, ["a", "b"], weights={"a": bad})
