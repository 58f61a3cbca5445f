"""The split table: weights, sticky points, match rules."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podkit.ambassador.split import RouteRule, SplitTable, StickyKey, parse_percent
from podkit.errors import ConfigError

USERS = [f"user-{i}" for i in range(5000)]


def cookie(user: str) -> list[tuple[str, str]]:
    return [("Cookie", f"theme=dark; user={user}")]


def placement(table: SplitTable) -> dict[str, str]:
    return {u: table.assign(method="GET", path="/", headers=cookie(u)).arm for u in USERS}


def test_sticky_share_is_close_to_the_weight() -> None:
    table = SplitTable(
        ["primary", "candidate"], {"candidate": 0.1}, sticky=StickyKey.parse("cookie:user")
    )
    share = list(placement(table).values()).count("candidate") / len(USERS)
    assert share == pytest.approx(0.10, abs=0.015)


def test_a_user_stays_on_one_arm_under_the_same_weights() -> None:
    table = SplitTable(
        ["primary", "candidate"], {"candidate": 0.3}, sticky=StickyKey.parse("cookie:user")
    )
    assert placement(table) == placement(table)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_raising_the_weight_moves_users_only_from_primary_to_candidate(a: float, b: float) -> None:
    low, high = sorted((a, b))
    sticky = StickyKey.parse("header:X-User")
    table = SplitTable(["primary", "candidate"], {"candidate": low}, sticky=sticky)
    users = USERS[:500]
    before = {u: table.assign(method="GET", path="/", headers=[("X-User", u)]).arm for u in users}
    table.set_weights({"candidate": high})
    after = {u: table.assign(method="GET", path="/", headers=[("X-User", u)]).arm for u in users}
    for user in users:
        if before[user] == "candidate":
            assert after[user] == "candidate"
    moved = {u for u in users if before[u] != after[u]}
    assert all(before[u] == "primary" and after[u] == "candidate" for u in moved)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(0, 2**32))
def test_unsticky_requests_split_by_weight(weight: float, seed: int) -> None:
    table = SplitTable(["primary", "candidate"], {"candidate": weight}, rng=random.Random(seed))
    n = 4000
    hits = sum(table.assign(method="GET", path="/").arm == "candidate" for _ in range(n))
    assert hits / n == pytest.approx(weight, abs=0.04)


def test_a_request_without_the_sticky_key_is_split_on_its_own() -> None:
    table = SplitTable(
        ["primary", "candidate"],
        {"candidate": 0.5},
        sticky=StickyKey.parse("cookie:user"),
        rng=random.Random(1),
    )
    assignment = table.assign(method="GET", path="/", headers=[])
    assert assignment.reason == "random"


def test_route_rules_win_over_weights_in_order() -> None:
    table = SplitTable(
        ["primary", "candidate", "green"],
        {"candidate": 0.0, "green": 0.0},
        routes=[
            RouteRule.parse("header:X-Canary=1 -> candidate"),
            RouteRule.parse("path:/beta -> green"),
            RouteRule.parse("cookie:tester -> green"),
            RouteRule.parse("query:arm=c -> candidate"),
        ],
    )

    def arm(path: str = "/", query: str = "", headers: list[tuple[str, str]] | None = None) -> str:
        return table.assign(method="GET", path=path, query=query, headers=headers or []).arm

    assert arm(headers=[("x-canary", "1")]) == "candidate"
    assert arm(headers=[("X-Canary", "0")]) == "primary"
    assert arm("/beta/x", headers=[("X-Canary", "1")]) == "candidate"
    assert arm("/beta/x") == "green"
    assert arm(headers=[("Cookie", "tester=yes")]) == "green"
    assert arm(query="a=1&arm=c") == "candidate"
    assert arm() == "primary"


def test_several_candidates_own_consecutive_ranges() -> None:
    table = SplitTable(["primary", "a", "b"], {"a": 0.2, "b": 0.3})
    assert table.arm_at(0.1) == "a"
    assert table.arm_at(0.4) == "b"
    assert table.arm_at(0.6) == "primary"
    assert table.shares() == pytest.approx({"primary": 0.5, "a": 0.2, "b": 0.3})


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"candidate": 0.7, "green": 0.4}, "more than 100%"),
        ({"nobody": 0.1}, "no arm 'nobody'"),
        ({"primary": 0.1}, "takes what the other arms leave"),
    ],
)
def test_bad_weights_are_refused_and_change_nothing(
    weights: dict[str, float], message: str
) -> None:
    table = SplitTable(["primary", "candidate", "green"], {"candidate": 0.1})
    with pytest.raises(ConfigError, match=message):
        table.set_weights(weights)
    assert table.weights == {"candidate": 0.1, "green": 0.0}


def test_a_route_to_an_unknown_arm_is_refused() -> None:
    with pytest.raises(ConfigError, match="names arm 'blue'"):
        SplitTable(["primary", "candidate"], routes=[RouteRule.parse("path:/ -> blue")])


@pytest.mark.parametrize(
    ("text", "value"),
    [("10%", 0.1), ("0.1", 0.1), ("12.5 %", 0.125), ("100%", 1.0), (10, 0.1), (0.25, 0.25)],
)
def test_percentages(text: str | float, value: float) -> None:
    assert parse_percent(text, field="w") == pytest.approx(value)


@pytest.mark.parametrize("text", ["ten", "101%", "-1%", "nan"])
def test_bad_percentages(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_percent(text, field="--weight")


@pytest.mark.parametrize(
    "text", ["header:X -> ", "header:X", "banana:1 -> candidate", "path:x -> c"]
)
def test_bad_routes(text: str) -> None:
    with pytest.raises(ConfigError):
        RouteRule.parse(text)


def test_sticky_key_forms() -> None:
    assert str(StickyKey.parse("cookie:user")) == "cookie:user"
    assert StickyKey.parse("client-ip").extract("10.0.0.1", []) == "10.0.0.1"
    assert StickyKey.parse("header:X-User").extract("10.0.0.1", [("x-user", " u1 ")]) == "u1"
    with pytest.raises(ConfigError):
        StickyKey.parse("ip")
