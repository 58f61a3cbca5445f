"""Hash affinity through podkit.hashing: every algorithm, weights, minimal movement."""

from __future__ import annotations

from collections import Counter

import pytest

from podkit.serving.balance import Endpoint, HashingRank, HashPicker, HealthPolicy
from podkit.serving.balance._hashing import HASH_ALGORITHMS

URLS = [f"http://10.0.0.{i}:80" for i in range(1, 5)]


def ready(url: str, weight: int = 1) -> Endpoint:
    return Endpoint(url, weight=weight, policy=HealthPolicy(), now=0.0, probed=False)


@pytest.mark.parametrize("algorithm", HASH_ALGORITHMS)
def test_each_algorithm_ranks_every_node_once_and_moves_only_a_removed_nodes_keys(
    algorithm: str,
) -> None:
    rank = HashingRank(algorithm)
    weights = dict.fromkeys(URLS, 1.0)
    order = list(rank("user-1", weights))
    assert sorted(order) == sorted(URLS)
    picker = HashPicker(rank)
    endpoints = [ready(u) for u in URLS]
    keys = [f"k{i}" for i in range(800)]
    before = {k: picker.pick(endpoints, now=0, key=k).url for k in keys}
    after = {k: picker.pick(endpoints[1:], now=0, key=k).url for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == URLS[0]}
    assert 100 < len(moved) < 320


def test_weights_shift_the_share_of_keys() -> None:
    picker = HashPicker(HashingRank("rendezvous"))
    endpoints = [ready(URLS[0], 3), ready(URLS[1], 1)]
    counts = Counter(picker.pick(endpoints, now=0, key=f"k{i}").url for i in range(4000))
    assert 2700 < counts[URLS[0]] < 3300


def test_sharding_functions_are_cached_per_node_set() -> None:
    rank = HashingRank("ring")
    weights = dict.fromkeys(URLS, 1.0)
    assert rank.function(weights) is rank.function(dict(reversed(weights.items())))
    assert rank.function(weights) is not rank.function(dict.fromkeys(URLS[:2], 1.0))


def test_unknown_algorithms_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        HashingRank("jump")


@pytest.mark.parametrize("algorithm", ["ring", "rendezvous", "maglev"])
def test_first_is_the_head_of_the_preference_order(algorithm: str) -> None:
    """HashPicker's one-lookup path (first) agrees with the full order it stands for."""
    rank = HashingRank(algorithm)
    weights = {f"http://10.0.0.{i}:80": float(1 + i % 3) for i in range(7)}
    for n in range(2000):
        key = f"client-{n}"
        assert rank.first(key, weights) == next(iter(rank(key, weights)))
