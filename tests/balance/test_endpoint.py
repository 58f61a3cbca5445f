"""The endpoint state machine: probes, passive ejection, slow start, membership."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.balance import (
    TRANSITIONS,
    Endpoint,
    EndpointState,
    HealthPolicy,
    IllegalTransition,
    Outcome,
)

S = EndpointState


def new(policy: HealthPolicy | None = None, *, probed: bool = True, weight: int = 1) -> Endpoint:
    return Endpoint(
        "http://127.0.0.1:1", weight=weight, policy=policy or HealthPolicy(), now=0.0, probed=probed
    )


def test_a_new_probed_endpoint_is_unknown_and_not_available() -> None:
    endpoint = new()
    assert endpoint.state is S.UNKNOWN
    assert not endpoint.available


def test_an_unprobed_endpoint_starts_ready() -> None:
    endpoint = new(HealthPolicy(slow_start=10), probed=False)
    assert endpoint.state is S.READY


def test_initial_endpoints_skip_the_ramp_only_on_their_first_entry() -> None:
    policy = HealthPolicy(rise=1, fall=1, slow_start=10)
    initial = Endpoint("http://a:1", policy=policy, now=0.0, initial=True)
    later = Endpoint("http://b:1", policy=policy, now=0.0)
    initial.probe_passed(0)
    later.probe_passed(0)
    assert initial.effective_weight(0) == 1.0
    assert later.effective_weight(0) == pytest.approx(0.1)
    initial.probe_failed(1)
    initial.probe_passed(2)
    assert initial.effective_weight(2) == pytest.approx(0.1)


def test_rise_passing_probes_bring_an_endpoint_into_rotation() -> None:
    endpoint = new(HealthPolicy(rise=3))
    assert not endpoint.probe_passed(1)
    assert not endpoint.probe_passed(2)
    assert endpoint.probe_passed(3)
    assert endpoint.state is S.READY


def test_a_failure_resets_the_rise_count() -> None:
    endpoint = new(HealthPolicy(rise=2))
    endpoint.probe_passed(1)
    endpoint.probe_failed(2)
    assert not endpoint.probe_passed(3)
    assert endpoint.probe_passed(4)


def test_fall_failing_probes_take_a_ready_endpoint_down() -> None:
    endpoint = new(HealthPolicy(rise=1, fall=3))
    endpoint.probe_passed(0)
    assert not endpoint.probe_failed(1)
    assert not endpoint.probe_failed(2)
    assert endpoint.probe_failed(3)
    assert endpoint.state is S.DOWN
    assert endpoint.probe_passed(4)
    assert endpoint.state is S.READY


def test_consecutive_request_failures_eject_for_a_growing_interval() -> None:
    policy = HealthPolicy(rise=1, eject_after=2, base_ejection=10, max_ejection=25)
    endpoint = new(policy)
    endpoint.probe_passed(0)
    durations = []
    now = 0.0
    for _ in range(4):
        endpoint.begin_request()
        assert not endpoint.end_request(Outcome.SERVER_ERROR, now)
        endpoint.begin_request()
        assert endpoint.end_request(Outcome.CONNECT_FAILURE, now)
        assert endpoint.state is S.EJECTED
        assert endpoint.ejected_until is not None
        durations.append(endpoint.ejected_until - now)
        assert not endpoint.ejection_expired(endpoint.ejected_until - 0.001)
        now = endpoint.ejected_until
        assert endpoint.ejection_expired(now)
        assert endpoint.state is S.READY
    assert durations == [10, 20, 25, 25]


def test_a_success_between_failures_prevents_ejection() -> None:
    endpoint = new(HealthPolicy(rise=1, eject_after=2))
    endpoint.probe_passed(0)
    for outcome in [Outcome.FAILURE, Outcome.SUCCESS, Outcome.FAILURE, Outcome.SUCCESS]:
        endpoint.begin_request()
        assert not endpoint.end_request(outcome, 1)
    assert endpoint.state is S.READY
    assert endpoint.errors == 2
    assert endpoint.requests == 4


def test_ejections_are_forgiven_after_healthy_time() -> None:
    policy = HealthPolicy(rise=1, eject_after=1, base_ejection=10, ejection_decay=30)
    endpoint = new(policy)
    endpoint.probe_passed(0)
    endpoint.begin_request()
    endpoint.end_request(Outcome.FAILURE, 0)
    endpoint.ejection_expired(10)
    endpoint.begin_request()
    endpoint.end_request(Outcome.FAILURE, 11)
    assert endpoint.ejected_until == 11 + 20
    endpoint.ejection_expired(31)
    endpoint.begin_request()
    endpoint.end_request(Outcome.FAILURE, 31 + 61)  # two decay periods: back to the first step
    assert endpoint.ejected_until == 92 + 10


def test_ejection_can_be_refused_by_the_pool() -> None:
    endpoint = new(HealthPolicy(rise=1, eject_after=1))
    endpoint.probe_passed(0)
    endpoint.begin_request()
    assert not endpoint.end_request(Outcome.FAILURE, 0, may_eject=False)
    assert endpoint.state is S.READY


def test_zero_eject_after_turns_passive_ejection_off() -> None:
    endpoint = new(HealthPolicy(rise=1, eject_after=0))
    endpoint.probe_passed(0)
    for _ in range(100):
        endpoint.begin_request()
        endpoint.end_request(Outcome.FAILURE, 0)
    assert endpoint.state is S.READY


def test_failing_probes_take_an_ejected_endpoint_down_and_cancel_the_timer() -> None:
    endpoint = new(HealthPolicy(rise=1, fall=1, eject_after=1))
    endpoint.probe_passed(0)
    endpoint.begin_request()
    endpoint.end_request(Outcome.FAILURE, 0)
    assert endpoint.probe_failed(1)
    assert endpoint.state is S.DOWN
    assert not endpoint.ejection_expired(1000)


def test_slow_start_ramps_linearly_from_a_floor_to_full_weight() -> None:
    endpoint = new(HealthPolicy(rise=1, slow_start=10), weight=4)
    endpoint.probe_passed(100)
    assert endpoint.effective_weight(100) == pytest.approx(0.4)
    assert endpoint.effective_weight(105) == pytest.approx(2.0)
    assert endpoint.effective_weight(110) == 4.0
    assert endpoint.effective_weight(500) == 4.0


def test_draining_and_restoring_an_endpoint() -> None:
    endpoint = new(HealthPolicy(rise=1))
    endpoint.probe_passed(0)
    endpoint.begin_request()
    assert endpoint.drain(1)
    assert not endpoint.drain(1)
    assert not endpoint.available
    assert not endpoint.drained
    endpoint.end_request(Outcome.SUCCESS, 2)
    assert endpoint.drained
    assert endpoint.restore(3)
    assert endpoint.state is S.UNKNOWN


def test_illegal_transitions_raise() -> None:
    endpoint = new()
    with pytest.raises(IllegalTransition, match="unknown -> ejected"):
        endpoint._move(S.EJECTED, 0)


def test_invalid_weight_and_policy_are_rejected() -> None:
    with pytest.raises(ValueError, match="weight"):
        new(weight=0)
    with pytest.raises(ValueError):
        HealthPolicy(rise=0)
    with pytest.raises(ValueError):
        HealthPolicy(base_ejection=10, max_ejection=5)


def test_the_transition_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(S)
    for source, targets in TRANSITIONS.items():
        assert source not in targets


events = st.lists(
    st.tuples(
        st.sampled_from(["pass", "fail", "ok", "error", "tick", "drain", "restore"]),
        st.floats(min_value=0, max_value=100),
    ),
    max_size=80,
)


@given(events)
def test_any_event_sequence_only_takes_legal_transitions(seq: list[tuple[str, float]]) -> None:
    """Whatever happens, every state change is in the table and counters stay sane."""
    policy = HealthPolicy(rise=2, fall=2, eject_after=2, base_ejection=5, max_ejection=20)
    endpoint = new(policy)
    now = 0.0
    for event, step in seq:
        now += step
        before = endpoint.state
        if event == "pass":
            endpoint.probe_passed(now)
        elif event == "fail":
            endpoint.probe_failed(now)
        elif event in ("ok", "error"):
            endpoint.begin_request()
            endpoint.end_request(Outcome.SUCCESS if event == "ok" else Outcome.FAILURE, now)
        elif event == "tick":
            endpoint.ejection_expired(now)
        elif event == "drain":
            endpoint.drain(now)
        else:
            endpoint.restore(now)
        assert endpoint.state is before or endpoint.state in TRANSITIONS[before]
        assert endpoint.in_flight == 0
        assert (endpoint.state is S.EJECTED) == (endpoint.ejected_until is not None)
        if endpoint.ejected_until is not None:
            assert endpoint.ejected_until - now <= policy.max_ejection


def test_probes_that_fail_then_pass_end_an_ejection_early() -> None:
    """A backend restarted during its ejection returns once probes see it recover."""
    endpoint = new(HealthPolicy(rise=2, fall=3, eject_after=1, base_ejection=30))
    endpoint.probe_passed(0)
    endpoint.probe_passed(0)
    endpoint.begin_request()
    endpoint.end_request(Outcome.CONNECT_FAILURE, 1)
    assert not endpoint.probe_passed(2)
    assert not endpoint.probe_passed(3)  # passing probes alone do not cut an ejection short
    assert endpoint.state is S.EJECTED
    endpoint.probe_failed(4)
    assert not endpoint.probe_passed(5)
    assert endpoint.probe_passed(6)
    assert endpoint.state is S.READY
    assert endpoint.ejected_until is None


def test_abandoned_requests_neither_count_as_errors_nor_reset_failures() -> None:
    endpoint = new(HealthPolicy(rise=1, eject_after=2))
    endpoint.probe_passed(0)
    endpoint.begin_request()
    endpoint.end_request(Outcome.FAILURE, 0)
    for _ in range(5):
        endpoint.begin_request()
        assert not endpoint.end_request(Outcome.ABANDONED, 0)
    assert (endpoint.errors, endpoint.request_failures, endpoint.in_flight) == (1, 1, 0)
    endpoint.begin_request()
    assert endpoint.end_request(Outcome.FAILURE, 0)
