"""Pickers: smooth weighted round-robin, power of two choices, hash affinity with bounded loads."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.balance import (
    Endpoint,
    HashPicker,
    HealthPolicy,
    LeastRequestPicker,
    RoundRobinPicker,
)


def ready(url: str, weight: int = 1, *, policy: HealthPolicy | None = None) -> Endpoint:
    return Endpoint(url, weight=weight, policy=policy or HealthPolicy(), now=0.0, probed=False)


def rendezvous(key: str, nodes: Mapping[str, float]) -> list[str]:
    """Unweighted highest-random-weight order, a reference ranking for these tests."""
    return sorted(nodes, key=lambda n: hashlib.sha256(f"{n}|{key}".encode()).digest(), reverse=True)


def test_smooth_round_robin_interleaves_like_nginx() -> None:
    a, b, c = ready("a", 5), ready("b"), ready("c")
    picker = RoundRobinPicker()
    order = "".join(picker.pick([a, b, c], now=0, key=None).url for _ in range(7))
    assert order == "aabacaa"


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_round_robin_is_exactly_proportional_over_one_cycle(weights: list[int]) -> None:
    """Over sum(weights) picks each endpoint is chosen exactly weight times."""
    endpoints = [ready(f"e{i}", w) for i, w in enumerate(weights)]
    picker = RoundRobinPicker()
    counts = Counter(picker.pick(endpoints, now=0, key=None).url for _ in range(sum(weights)))
    assert counts == {f"e{i}": w for i, w in enumerate(weights)}


def test_round_robin_skips_excluded_candidates_and_forgets_removed_ones() -> None:
    a, b = ready("a"), ready("b")
    picker = RoundRobinPicker()
    assert {picker.pick([a], now=0, key=None).url for _ in range(3)} == {"a"}
    picker.forget("a")
    picks = Counter(picker.pick([a, b], now=0, key=None).url for _ in range(10))
    assert picks == {"a": 5, "b": 5}


def test_round_robin_honours_slow_start() -> None:
    policy = HealthPolicy(rise=1, slow_start=10)
    old = ready("old", 1)
    new = Endpoint("new", policy=policy, now=0.0)
    new.probe_passed(0.0)  # ramps from 10% of its weight
    picker = RoundRobinPicker()
    counts = Counter(picker.pick([old, new], now=0.0, key=None).url for _ in range(110))
    assert counts["new"] == 10


def test_least_request_prefers_the_less_loaded_of_two() -> None:
    busy, idle = ready("busy"), ready("idle")
    for _ in range(5):
        busy.begin_request()
    picker = LeastRequestPicker(rng=random.Random(1))
    assert {picker.pick([busy, idle], now=0, key=None).url for _ in range(20)} == {"idle"}


def test_least_request_spreads_evenly_when_loads_are_equal() -> None:
    endpoints = [ready(f"e{i}") for i in range(4)]
    picker = LeastRequestPicker(rng=random.Random(7))
    counts = Counter(picker.pick(endpoints, now=0, key=None).url for _ in range(4000))
    assert min(counts.values()) > 800


def test_least_request_never_picks_the_most_loaded_of_many() -> None:
    """With P2C the single most loaded endpoint can only win a draw against an equal peer."""
    endpoints = [ready(f"e{i}") for i in range(5)]
    for i, endpoint in enumerate(endpoints):
        for _ in range(i):
            endpoint.begin_request()
    picker = LeastRequestPicker(rng=random.Random(3))
    picks = {picker.pick(endpoints, now=0, key=None).url for _ in range(200)}
    assert "e4" not in picks


def test_least_request_weighs_load_by_weight() -> None:
    big, small = ready("big", 4), ready("small", 1)
    for _ in range(2):
        big.begin_request()
    picker = LeastRequestPicker(rng=random.Random(0))
    assert picker.pick([big, small], now=0, key=None).url == "big"


def test_hash_affinity_is_stable_per_key() -> None:
    endpoints = [ready(f"http://b{i}") for i in range(3)]
    picker = HashPicker(rendezvous, bounded_load=None)
    for key in (f"10.0.0.{i}" for i in range(50)):
        first = picker.pick(endpoints, now=0, key=key)
        assert all(picker.pick(endpoints, now=0, key=key) is first for _ in range(3))


def test_removing_one_endpoint_moves_only_its_keys() -> None:
    endpoints = [ready(f"http://b{i}") for i in range(3)]
    picker = HashPicker(rendezvous, bounded_load=None)
    keys = [f"client-{i}" for i in range(600)]
    before = {k: picker.pick(endpoints, now=0, key=k).url for k in keys}
    after = {k: picker.pick(endpoints[:2], now=0, key=k).url for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "http://b2"}
    assert 100 < len(moved) < 300


def test_bounded_load_spills_a_hot_key_to_the_next_endpoint() -> None:
    endpoints = [ready(f"http://b{i}") for i in range(3)]
    picker = HashPicker(rendezvous, bounded_load=1.25)
    home = picker.pick(endpoints, now=0, key="hot")
    placed = []
    for _ in range(30):
        chosen = picker.pick(endpoints, now=0, key="hot")
        chosen.begin_request()
        placed.append(chosen.url)
    loads = [e.in_flight for e in endpoints]
    assert max(loads) <= 13  # ceil(1.25 * 30 / 3) + 1
    assert placed[0] == home.url
    assert len(set(placed)) == 3


@given(
    st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=6),
    st.floats(min_value=1.0, max_value=3.0),
)
def test_bounded_load_never_exceeds_its_capacity(loads: list[int], factor: float) -> None:
    """The chosen endpoint is below capacity whatever the current loads are."""
    endpoints = [ready(f"http://b{i}") for i in range(len(loads))]
    for endpoint, load in zip(endpoints, loads, strict=True):
        for _ in range(load):
            endpoint.begin_request()
    picker = HashPicker(rendezvous, bounded_load=factor)
    chosen = picker.pick(endpoints, now=0, key="k")
    capacity = picker.capacity(chosen, endpoints)
    assert capacity is not None
    assert chosen.in_flight < capacity


def test_hash_without_a_key_falls_back_to_round_robin() -> None:
    endpoints = [ready("a"), ready("b")]
    picker = HashPicker(rendezvous)
    assert [picker.pick(endpoints, now=0, key=None).url for _ in range(4)] == ["a", "b", "a", "b"]


@given(
    st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=100),
)
def test_round_robin_schedule_on_a_tuple_matches_scoring(weights: list[int], picks: int) -> None:
    """A candidate tuple takes the precomputed schedule; it yields exactly what scoring does."""
    endpoints = [ready(f"e{i}", w) for i, w in enumerate(weights)]
    scored, scheduled = RoundRobinPicker(), RoundRobinPicker()
    as_tuple = tuple(endpoints)
    expected = [scored.pick(list(endpoints), now=0, key=None).url for _ in range(picks)]
    assert [scheduled.pick(as_tuple, now=0, key=None).url for _ in range(picks)] == expected


def test_round_robin_schedule_waits_for_slow_start_to_end() -> None:
    policy = HealthPolicy(rise=1, slow_start=10)
    old = ready("old", 1)
    new = Endpoint("new", policy=policy, now=0.0)
    new.probe_passed(0.0)
    picker = RoundRobinPicker()
    both = (old, new)
    ramping = Counter(picker.pick(both, now=0.0, key=None).url for _ in range(110))
    assert ramping["new"] == 10  # still ramping: scored with the effective weights
    steady = Counter(picker.pick(both, now=10.0, key=None).url for _ in range(100))
    assert steady == {"old": 50, "new": 50}  # ramp over: the full-weight schedule


def test_least_request_draws_two_distinct_candidates_uniformly() -> None:
    endpoints = [ready(f"e{i}") for i in range(3)]
    endpoints[0].in_flight = 100  # loses every comparison it takes part in
    picker = LeastRequestPicker(rng=random.Random(5))
    counts = Counter(picker.pick(endpoints, now=0, key=None).url for _ in range(6000))
    # e0 never wins: a draw is never (e0, e0); e1 and e2 split evenly by symmetry
    assert "e0" not in counts
    assert abs(counts["e1"] - counts["e2"]) < 400
