"""The ramp core: promotion, holding on no data, rollback on a breach (time passed in)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podkit.ambassador.split import (
    IllegalRampTransition,
    Ramp,
    RampState,
    parse_rollback_rules,
    parse_steps,
)
from podkit.errors import ConfigError

STEPS = (0.05, 0.25, 0.5, 1.0)
RULES = parse_rollback_rules("5xx>1%,p99>1.5x")


def feed(
    ramp: Ramp,
    n: int,
    *,
    status: int = 200,
    seconds: float = 0.01,
    cand_status: int | None = None,
    cand_seconds: float | None = None,
) -> None:
    for _ in range(n):
        ramp.observe("primary", status, seconds)
        ramp.observe("candidate", cand_status or status, cand_seconds or seconds)


def test_a_healthy_candidate_walks_every_step_to_complete() -> None:
    ramp = Ramp(STEPS, 60, RULES, min_requests=20)
    assert ramp.start(0).weight == 0.05
    now = 0.0
    weights = [ramp.weight]
    while ramp.state is RampState.RAMPING:
        feed(ramp, 30)
        now += 60
        decision = ramp.tick(now)
        assert decision is not None
        weights.append(decision.weight)
    assert ramp.state is RampState.COMPLETE
    assert weights == [0.05, 0.25, 0.5, 1.0]
    assert [d.action for d in ramp.trace] == ["start", "promote", "promote", "complete"]


def test_a_candidate_answering_500_is_rolled_back_within_the_window() -> None:
    ramp = Ramp(STEPS, 60, RULES, min_requests=20)
    ramp.start(0)
    feed(ramp, 19, cand_status=500)
    assert ramp.tick(10) is None  # not enough data yet: no verdict either way
    feed(ramp, 1, cand_status=500)
    decision = ramp.tick(11)
    assert decision is not None
    assert decision.action == "rollback"
    assert decision.weight == 0.0
    assert "5xx 100%" in decision.reason
    assert ramp.state is RampState.ROLLED_BACK
    assert ramp.tick(1000) is None


def test_a_slow_candidate_breaches_p99_at_the_end_of_the_window() -> None:
    ramp = Ramp(STEPS, 60, RULES, min_requests=20)
    ramp.start(0)
    feed(ramp, 50, seconds=0.010, cand_seconds=0.050)
    assert ramp.tick(5) is None  # part of a window: the percentile waits for the whole
    decision = ramp.tick(60)
    assert decision is not None
    assert decision.action == "rollback"
    assert "p99" in decision.reason


def test_a_tiny_latency_difference_is_not_a_breach() -> None:
    ramp = Ramp(STEPS, 60, RULES, min_requests=20)
    ramp.start(0)
    feed(ramp, 50, seconds=0.0002, cand_seconds=0.0006)
    assert ramp.tick(5) is None


def test_low_traffic_holds_the_ramp_and_says_so() -> None:
    ramp = Ramp(STEPS, 60, RULES, min_requests=20)
    ramp.start(0)
    feed(ramp, 5)
    decision = ramp.tick(60)
    assert decision is not None
    assert decision.action == "hold"
    assert decision.weight == 0.05
    assert "5/20 candidate requests" in decision.reason
    assert ramp.state is RampState.RAMPING


def test_the_diff_rule_reads_compared_pairs() -> None:
    ramp = Ramp(STEPS, 60, parse_rollback_rules("diff>0.5%"), min_requests=20)
    ramp.start(0)
    for i in range(100):
        ramp.observe_diff(regression=i < 2)
    decision = ramp.tick(1)
    assert decision is not None
    assert decision.action == "rollback"
    assert "diff mismatch 2%" in decision.reason


def test_a_stopped_ramp_stays_stopped() -> None:
    ramp = Ramp(STEPS, 60, RULES)
    ramp.start(0)
    ramp.stop(1, "weight set by hand")
    assert ramp.state is RampState.STOPPED
    with pytest.raises(IllegalRampTransition):
        ramp.stop(2, "again")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 120.0),  # time step
            st.integers(0, 40),  # requests
            st.floats(0.0, 1.0),  # candidate failure probability
        ),
        max_size=30,
    ),
    st.integers(0, 2**32),
)
def test_ramp_invariants(script: list[tuple[float, int, float]], seed: int) -> None:
    """Weights only step up along the steps, a rollback is final and at 0, a promotion
    follows a window with enough data, and a hold never changes the weight."""
    rng = random.Random(seed)
    ramp = Ramp(STEPS, 60, RULES, min_requests=10)
    ramp.start(0.0)
    now = 0.0
    last = ramp.weight
    for dt, n, p_fail in script:
        for _ in range(n):
            ramp.observe("primary", 200, 0.01)
            ramp.observe("candidate", 500 if rng.random() < p_fail else 200, 0.01)
        now += dt
        window = (ramp.candidate.requests, ramp.primary.requests)
        decision = ramp.tick(now)
        if decision is None:
            assert ramp.weight == last
            continue
        if decision.action == "rollback":
            assert decision.weight == 0.0
            assert ramp.state is RampState.ROLLED_BACK
        elif decision.action == "hold":
            assert decision.weight == last
            assert min(window) < 10
        else:
            assert decision.action in ("promote", "complete")
            assert decision.weight > last
            assert STEPS.index(decision.weight) == STEPS.index(last) + 1
            assert min(window) >= 10
        last = decision.weight
        if ramp.state is not RampState.RAMPING:
            break
    if ramp.state is RampState.ROLLED_BACK:
        assert ramp.weight == 0.0


@pytest.mark.parametrize("text", ["5xx", "p99>fast", "p99>0.5x", "cpu>1%", "5xx>1%,5xx>2%"])
def test_bad_rules(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_rollback_rules(text)


def test_steps_must_increase() -> None:
    assert parse_steps("5%,25%,100%") == (0.05, 0.25, 1.0)
    with pytest.raises(ConfigError, match="increase"):
        parse_steps("50%,25%")
