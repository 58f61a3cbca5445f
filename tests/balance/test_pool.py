"""The endpoint pool: membership updates, draining, ejection limits, picking with exclusions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.balance import (
    BackendSpec,
    EndpointPool,
    EndpointState,
    HealthPolicy,
    Outcome,
    RoundRobinPicker,
)

S = EndpointState
URLS = [f"http://127.0.0.1:{8000 + i}" for i in range(4)]


def pool(*, probed: bool = False, **policy: float) -> EndpointPool:
    return EndpointPool(RoundRobinPicker(), policy=HealthPolicy(**policy), probed=probed)  # type: ignore[arg-type]


def specs(*urls: str) -> list[BackendSpec]:
    return [BackendSpec(u) for u in urls]


def test_added_endpoints_are_unknown_until_probes_pass() -> None:
    p = pool(probed=True, rise=1)
    events = p.update(specs(*URLS[:2]), 0)
    assert [(e.url, e.source, e.target) for e in events] == [
        (URLS[0], None, S.UNKNOWN),
        (URLS[1], None, S.UNKNOWN),
    ]
    assert p.choose(now=0) is None
    assert p.probe_result(URLS[0], True, 1)[0].target is S.READY
    assert all(p.choose(now=1).url == URLS[0] for _ in range(3))  # type: ignore[union-attr]


def test_choose_skips_excluded_endpoints() -> None:
    p = pool()
    p.update(specs(*URLS[:3]), 0)
    for _ in range(5):
        chosen = p.choose(now=0, exclude=[URLS[0], URLS[1]])
        assert chosen is not None
        assert chosen.url == URLS[2]
    assert p.choose(now=0, exclude=URLS[:3]) is None


def test_removed_endpoint_drains_then_is_forgotten() -> None:
    p = pool()
    p.update(specs(*URLS[:2]), 0)
    busy = p.get(URLS[1])
    assert busy is not None
    p.begin(busy)
    events = p.update(specs(URLS[0]), 1)
    assert [(e.url, e.target) for e in events] == [(URLS[1], S.DRAINING)]
    assert URLS[1] in p
    assert all(p.choose(now=1).url == URLS[0] for _ in range(4))  # type: ignore[union-attr]
    events = p.end(busy, Outcome.SUCCESS, 2)
    assert [(e.url, e.target) for e in events] == [(URLS[1], None)]
    assert URLS[1] not in p


def test_an_idle_removed_endpoint_is_forgotten_at_once_and_can_come_back() -> None:
    p = pool()
    p.update(specs(*URLS[:2]), 0)
    p.update(specs(URLS[0]), 1)
    assert len(p) == 1
    p.update(specs(*URLS[:2]), 2)
    assert p.get(URLS[1]) is not None


def test_a_draining_endpoint_readded_before_it_drained_starts_over() -> None:
    p = pool()
    p.update(specs(*URLS[:2]), 0)
    busy = p.get(URLS[1])
    assert busy is not None
    p.begin(busy)
    p.update(specs(URLS[0]), 1)
    events = p.update([BackendSpec(URLS[0]), BackendSpec(URLS[1], 3)], 2)
    assert busy.state is S.READY  # unprobed: straight back to rotation
    assert busy.weight == 3
    assert [e.reason for e in events] == ["added back"]


def test_manual_drain_keeps_the_endpoint_until_undrained() -> None:
    p = pool()
    p.update(specs(*URLS[:2]), 0)
    assert p.drain(URLS[0], 1)[0].target is S.DRAINING
    p.update(specs(*URLS[:2]), 2)  # a reload does not undo a manual drain
    assert p.get(URLS[0]).state is S.DRAINING  # type: ignore[union-attr]
    assert URLS[0] in p
    assert p.undrain(URLS[0], 3)[0].target is S.READY
    assert p.drain(URLS[0], 4)
    assert p.drain(URLS[0], 4) == []


def test_at_most_half_the_pool_is_ejected() -> None:
    p = pool(eject_after=1)
    p.update(specs(*URLS), 0)
    for url in URLS:
        endpoint = p.get(url)
        assert endpoint is not None
        p.begin(endpoint)
        p.end(endpoint, Outcome.CONNECT_FAILURE, 1)
    states = [p.get(u).state for u in URLS]  # type: ignore[union-attr]
    assert states.count(S.EJECTED) == 2
    assert states.count(S.READY) == 2


def test_ejections_expire_back_into_rotation() -> None:
    p = pool(eject_after=1, base_ejection=5, max_ejection=5)
    p.update(specs(*URLS[:2]), 0)
    endpoint = p.get(URLS[0])
    assert endpoint is not None
    p.begin(endpoint)
    assert p.end(endpoint, Outcome.SERVER_ERROR, 0)[0].target is S.EJECTED
    assert p.expire_ejections(4.9) == []
    assert [e.target for e in p.expire_ejections(5.0)] == [S.READY]


def test_probe_results_for_unknown_or_draining_endpoints_are_ignored() -> None:
    p = pool(probed=True)
    assert p.probe_result("http://nowhere:1", True, 0) == []
    p.update(specs(URLS[0]), 0)
    p.drain(URLS[0], 0)
    assert p.probe_result(URLS[0], True, 0) == []
    assert p.probe_targets() == []


def test_statistics_count_ready_endpoints() -> None:
    p = pool(probed=True, rise=1)
    p.update(specs(*URLS[:3]), 0)
    p.probe_result(URLS[0], True, 0)
    stats = p.statistics(0)
    assert (stats.ready, stats.total) == (1, 3)
    assert stats.endpoints[0].effective_weight == 1.0
    assert stats.endpoints[1].effective_weight == 0.0


@given(st.lists(st.sets(st.sampled_from(URLS)), max_size=20))
def test_membership_always_matches_the_last_update_when_idle(history: list[set[str]]) -> None:
    """With nothing in flight, the pool holds exactly the configured endpoints."""
    p = pool()
    for now, urls in enumerate(history):
        p.update(specs(*sorted(urls)), now)
        assert {e.url for e in p.endpoints} == urls
        assert all(e.state is S.READY for e in p.endpoints)


def test_slow_start_spares_the_first_membership_but_ramps_later_additions() -> None:
    p = EndpointPool(RoundRobinPicker(), policy=HealthPolicy(rise=1, slow_start=10))
    p.update(specs(*URLS[:2]), 0)
    for url in URLS[:2]:
        p.probe_result(url, True, 0)
    p.update(specs(*URLS[:3]), 1)
    p.probe_result(URLS[2], True, 1)
    weights = {s.url: s.effective_weight for s in p.statistics(1).endpoints}
    assert weights == {URLS[0]: 1.0, URLS[1]: 1.0, URLS[2]: pytest.approx(0.1)}


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["update", "probe", "outcome", "drain", "undrain", "expire", "weight"]),
        st.sampled_from(URLS),
        st.booleans(),
    ),
    max_size=40,
)


@given(OPERATIONS)
def test_the_kept_candidate_tuple_always_equals_the_ready_endpoints(
    operations: list[tuple[str, str, bool]],
) -> None:
    """candidates() hands out one tuple until something changes; it is never stale."""
    p = pool(probed=True, rise=1, fall=1, eject_after=1)
    p.update(specs(*URLS), 0)
    weights = dict.fromkeys(URLS, 1)
    for now, (operation, url, flag) in enumerate(operations, start=1):
        if operation == "update":
            members = [u for u in URLS if u != url] if flag else URLS
            p.update([BackendSpec(u, weights[u]) for u in members], now)
        elif operation == "probe":
            p.probe_result(url, flag, now)
        elif operation == "outcome" and (endpoint := p.get(url)) is not None:
            p.begin(endpoint)
            p.end(endpoint, Outcome.SUCCESS if flag else Outcome.FAILURE, now)
        elif operation == "drain" and url in p:
            p.drain(url, now)
        elif operation == "undrain" and url in p:
            p.undrain(url, now)
        elif operation == "expire":
            p.expire_ejections(now + 1000)
        elif operation == "weight":
            weights[url] = 3 if flag else 1
            p.update([BackendSpec(u, weights[u]) for u in URLS], now)
        kept = p.candidates()
        assert kept is p.candidates()
        assert [e.url for e in kept] == [e.url for e in p.endpoints if e.available]
        assert [e.weight for e in kept] == [weights[e.url] for e in kept]
