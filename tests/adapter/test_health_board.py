"""The health board: check states, readiness and the Kubernetes-style listing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podkit.adapter.health import CheckResult, CheckState, HealthBoard
from podkit.errors import ConfigError


def board(required: list[str] | None = None) -> HealthBoard:
    return HealthBoard([("db", "postgresql://h/db"), ("cache", "redis://h")], required=required)


def test_a_fresh_board_is_not_ready_until_every_check_has_passed() -> None:
    b = board()
    assert not b.ready()
    b.record("db", CheckResult(True, 0.01), 100.0)
    assert not b.ready()
    b.record("cache", CheckResult(True, 0.01), 100.0)
    assert b.ready()


def test_one_failing_required_check_makes_the_board_not_ready_and_says_why() -> None:
    b = board()
    b.record("db", CheckResult(True, 0.01), 100.0)
    b.record("cache", CheckResult(False, 0.2, "connection refused"), 101.0)
    assert not b.ready()
    assert b.reason() == "failing: cache"
    assert b.verbose() == ("[+]db ok\n[-]cache failed: connection refused\nreadyz check failed\n")
    assert b.ready(exclude=["cache"])


def test_checks_outside_ready_requires_are_listed_but_do_not_count() -> None:
    b = board(required=["db"])
    b.record("db", CheckResult(True, 0.01), 100.0)
    b.record("cache", CheckResult(False, 0.01, "down"), 100.0)
    assert b.ready()
    assert b.verbose() == "[+]db ok\nreadyz check passed\n"
    assert not b.status("cache").required


def test_since_moves_only_when_the_state_changes() -> None:
    b = board()
    assert b.record("db", CheckResult(True, 0.01), 100.0)
    assert not b.record("db", CheckResult(True, 0.01), 105.0)
    status = b.status("db")
    assert (status.state, status.since, status.last_run, status.runs) == (
        CheckState.PASSING,
        100.0,
        105.0,
        2,
    )
    assert b.record("db", CheckResult(False, 1.0, "timed out after 1s"), 110.0)
    status = b.status("db")
    assert (status.state, status.since, status.failures, status.last_error) == (
        CheckState.FAILING,
        110.0,
        1,
        "timed out after 1s",
    )


def test_duplicate_names_and_unknown_required_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unique: a"):
        HealthBoard([("a", "tcp://h:1"), ("a", "tcp://h:2")])
    with pytest.raises(ConfigError, match="unknown checks: nope"):
        HealthBoard([("a", "tcp://h:1")], required=["nope"])


@given(st.lists(st.tuples(st.sampled_from(["db", "cache"]), st.booleans()), max_size=40))
def test_ready_is_exactly_every_required_check_passing_on_its_last_result(
    results: list[tuple[str, bool]],
) -> None:
    """Whatever the order of results, readiness is decided by each check's last one."""
    b = board()
    last: dict[str, bool] = {}
    for now, (name, ok) in enumerate(results):
        b.record(name, CheckResult(ok, 0.0, None if ok else "x"), float(now))
        last[name] = ok
    assert b.ready() == (last.get("db", False) and last.get("cache", False))
