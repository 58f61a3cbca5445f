"""The retry budget: a share of requests plus a floor, over a sliding window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.balance import RetryBudget


def test_the_floor_allows_retries_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1, window=10)
    assert sum(budget.try_withdraw(0.5) for _ in range(20)) == 10
    assert budget.refused == 10


def test_requests_add_a_share_of_a_retry_each() -> None:
    budget = RetryBudget(ratio=0.25, min_per_second=0, window=10)
    for _ in range(100):
        budget.deposit(1.0)
    assert sum(budget.try_withdraw(1.0) for _ in range(40)) == 25


def test_deposits_and_withdrawals_expire_after_the_window() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=5)
    for _ in range(3):
        budget.deposit(0.0)
    assert budget.try_withdraw(0.0)
    assert budget.statistics(4.9).available == 2
    assert budget.available(5.0) == 0
    assert not budget.try_withdraw(5.0)
    budget.deposit(100.0)
    assert budget.try_withdraw(100.0)


@given(st.lists(st.tuples(st.floats(0, 2), st.booleans()), max_size=300))
def test_retries_never_exceed_the_budget(seq: list[tuple[float, bool]]) -> None:
    """Every granted retry keeps the window's retries <= floor + ratio * requests.

    (Later, requests can age out of the window before the retries granted against them do,
    so the bound holds at the moment of each grant, which is when the budget decides.)
    """
    budget = RetryBudget(ratio=0.2, min_per_second=1, window=3)
    now = 0.0
    for step, is_retry in seq:
        now += step
        if is_retry:
            before = budget.statistics(now)
            granted = budget.try_withdraw(now)
            after = budget.statistics(now)
            if granted:
                assert after.retries == before.retries + 1
                assert after.retries <= 3 * 1 + 0.2 * after.requests
            else:
                assert before.available < 1.0
                assert after.retries == before.retries
        else:
            budget.deposit(now)
