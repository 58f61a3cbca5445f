"""The sans-IO core: item transitions, backoff with jitter, failure decisions, autoscaling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.batch.queue.scaling import Autoscaler, ScalePolicy
from podkit.batch.queue.states import (
    TRANSITIONS,
    DeadLetter,
    IllegalItemTransition,
    ItemEvent,
    ItemState,
    Retry,
    RetryPolicy,
    decide_expiry,
    decide_failure,
    transition,
)


def test_the_transition_table_allows_exactly_the_documented_moves() -> None:
    assert transition(ItemState.QUEUED, ItemEvent.LEASE) is ItemState.LEASED
    assert transition(ItemState.LEASED, ItemEvent.ACK) is ItemState.DONE
    assert transition(ItemState.LEASED, ItemEvent.NACK) is ItemState.FAILED
    assert transition(ItemState.LEASED, ItemEvent.EXPIRE) is ItemState.QUEUED
    assert transition(ItemState.FAILED, ItemEvent.DUE) is ItemState.QUEUED
    assert transition(ItemState.DEAD, ItemEvent.REQUEUE) is ItemState.QUEUED
    for state in ItemState:
        for event in ItemEvent:
            if (state, event) not in TRANSITIONS:
                with pytest.raises(IllegalItemTransition):
                    transition(state, event)


def test_done_is_final() -> None:
    assert not [event for (state, event) in TRANSITIONS if state is ItemState.DONE]


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(base=1.0, factor=2.0, cap=10.0, jitter=0.0)
    assert [policy.delay(n, rand=0.5) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


@given(
    attempt=st.integers(1, 10_000),
    rand=st.floats(0, 1, exclude_max=True),
    jitter=st.floats(0, 1),
)
def test_jittered_backoff_stays_between_its_bounds(
    attempt: int, rand: float, jitter: float
) -> None:
    policy = RetryPolicy(base=0.5, factor=3.0, cap=120.0, jitter=jitter)
    nominal = min(120.0, 0.5 * 3.0 ** min(attempt - 1, 64))
    delay = policy.delay(attempt, rand=rand)
    assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal + 1e-9


def test_invalid_retry_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(factor=0.5)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2)
    with pytest.raises(ValueError):
        RetryPolicy(base=-1)


@given(attempt=st.integers(1, 50), max_attempts=st.integers(1, 50))
def test_a_failure_retries_while_attempts_remain_and_dead_letters_after(
    attempt: int, max_attempts: int
) -> None:
    decision = decide_failure(
        attempt=attempt,
        max_attempts=max_attempts,
        now=100.0,
        policy=RetryPolicy(jitter=0.0),
        rand=0.0,
    )
    if attempt >= max_attempts:
        assert isinstance(decision, DeadLetter)
        assert decide_expiry(attempt=attempt, max_attempts=max_attempts) is ItemState.DEAD
    else:
        assert isinstance(decision, Retry)
        assert decision.visible_at > 100.0
        assert decide_expiry(attempt=attempt, max_attempts=max_attempts) is ItemState.QUEUED


def test_an_explicit_delay_replaces_the_backoff() -> None:
    decision = decide_failure(
        attempt=1, max_attempts=3, now=10.0, policy=RetryPolicy(), rand=0.3, delay=2.5
    )
    assert decision == Retry(visible_at=12.5)


def test_the_pool_scales_up_at_once_and_down_only_after_the_delay() -> None:
    scaler = Autoscaler(ScalePolicy(min_workers=1, max_workers=4, items_per_worker=2,
                                    scale_down_after=10.0))  # fmt: skip
    assert scaler.decide(demand=0, current=0, now=0.0) == 1
    assert scaler.decide(demand=5, current=1, now=1.0) == 3
    assert scaler.decide(demand=100, current=3, now=2.0) == 4
    assert scaler.decide(demand=0, current=4, now=3.0) == 4
    assert scaler.decide(demand=0, current=4, now=12.9) == 4
    assert scaler.decide(demand=0, current=4, now=13.0) == 1
    # a burst during the waiting period resets it
    assert scaler.decide(demand=0, current=4, now=20.0) == 4
    assert scaler.decide(demand=8, current=4, now=25.0) == 4
    assert scaler.decide(demand=0, current=4, now=31.0) == 4


@given(demand=st.integers(0, 10_000), lo=st.integers(0, 5), extra=st.integers(0, 20))
def test_the_wanted_pool_size_stays_within_bounds(demand: int, lo: int, extra: int) -> None:
    policy = ScalePolicy(min_workers=lo, max_workers=max(1, lo + extra), items_per_worker=3)
    wanted = Autoscaler(policy).wanted(demand)
    assert policy.min_workers <= wanted <= policy.max_workers


def test_invalid_pool_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        ScalePolicy(min_workers=3, max_workers=2)
    with pytest.raises(ValueError):
        ScalePolicy(min_workers=-1, max_workers=2)
