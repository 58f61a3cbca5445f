"""Coalescing bookkeeping: one leader per key, followers share or fall back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podkit.serving.cache import CoalescingTable


def test_the_first_request_leads_and_the_others_follow() -> None:
    table: CoalescingTable[str] = CoalescingTable()
    flight, leader = table.join("k", 0)
    assert leader
    for _ in range(99):
        same, lead = table.join("k", 0)
        assert same is flight
        assert not lead
    assert table.finish(flight, "response") == 99
    assert flight.done
    assert flight.result == "response"
    stats = table.statistics()
    assert (stats.leaders, stats.followers, stats.shared, stats.open_flights) == (1, 99, 99, 0)


def test_after_a_flight_closes_the_next_request_leads_again() -> None:
    table: CoalescingTable[str] = CoalescingTable()
    first, _ = table.join("k", 0)
    table.join("k", 0)
    table.finish(first, None)
    second, leader = table.join("k", 1)
    assert leader
    assert second is not first
    assert second.number > first.number
    assert table.statistics().fallbacks == 1


def test_keys_do_not_share_flights() -> None:
    table: CoalescingTable[int] = CoalescingTable()
    assert table.join("a", 0)[1]
    assert table.join("b", 0)[1]
    assert len(table) == 2


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=100))
def test_each_open_key_has_exactly_one_leader(ops: list[tuple[str, bool]]) -> None:
    """Joins and finishes in any order never produce two leaders for one open key."""
    table: CoalescingTable[str] = CoalescingTable()
    open_flights: dict[str, object] = {}
    for key, finish in ops:
        if finish and key in open_flights:
            flight = open_flights.pop(key)
            table.finish(flight, "r")  # type: ignore[arg-type]
            continue
        flight, leader = table.join(key, 0)
        assert leader == (key not in open_flights)
        open_flights.setdefault(key, flight)
    assert len(table) == len(open_flights)
