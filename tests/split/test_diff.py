"""Response diffs: paths, ignored headers, noise from a second primary, bounds."""

from __future__ import annotations

import json

from podkit.ambassador.split import Captured, DiffBoard, DiffLimits, compare
from podkit.ambassador.split._diff import MAX_EXAMPLES, MAX_ROUTES, OTHER_PATH, OTHER_ROUTE


def answer(doc: object, status: int = 200, **headers: str) -> Captured:
    fields = (
        ("content-type", "application/json"),
        *((k.replace("_", "-"), v) for k, v in headers.items()),
    )
    return Captured(status, tuple(fields), json.dumps(doc).encode())


def test_equal_answers_have_no_difference() -> None:
    a = answer({"a": 1, "b": [1, 2]}, date="Mon")
    b = answer({"b": [1, 2], "a": 1}, date="Tue")
    assert compare(a, b, ignored_headers={"date"}) == []


def test_json_differences_are_named_by_path() -> None:
    a = answer({"user": {"name": "ann", "tags": ["x", "y"]}, "n": 1})
    b = answer({"user": {"name": "bob", "tags": ["x"]}, "n": 1.0, "extra": True}, 404)
    paths = {d.path for d in compare(a, b)}
    assert paths == {"status", "$.user.name", "$.user.tags.length", "$.n", "$.extra"}


def test_headers_compare_except_the_ignore_list() -> None:
    a = answer({}, x_version="1", server="a")
    b = answer({}, x_version="2", server="b")
    assert [d.path for d in compare(a, b, ignored_headers={"server"})] == ["header:x-version"]


def test_non_json_bodies_compare_whole() -> None:
    a = Captured(200, (), b"hello")
    b = Captured(200, (), b"world")
    assert [d.path for d in compare(a, b)] == ["body"]


def test_a_field_that_differs_between_primaries_is_noise() -> None:
    board = DiffBoard()
    primary = answer({"ts": 1, "price": 10})
    primary_b = answer({"ts": 2, "price": 10})
    candidate = answer({"ts": 3, "price": 10})
    result = board.record("GET /p", primary, candidate, primary_b)
    assert not result.regression
    candidate = answer({"ts": 4, "price": 11})
    result = board.record("GET /p", primary, candidate, primary_b)
    assert result.regression_paths == ["$.price"]
    stats = board.statistics()["routes"]["GET /p"]
    assert stats["compared"] == 2
    assert stats["paths"]["$.ts"]["noise"] == 2
    assert stats["paths"]["$.ts"]["regressions"] == 0
    assert stats["paths"]["$.price"]["regressions"] == 1
    assert stats["regression_rate"] == 0.5
    assert len(stats["examples"]) == 1


def test_memory_stays_bounded() -> None:
    board = DiffBoard()
    for i in range(MAX_ROUTES * 2):
        for _ in range(MAX_EXAMPLES + 3):
            board.record(f"GET /u/{i}", answer({"v": 1}), answer({"v": 2}))
    assert len(board.routes) == MAX_ROUTES
    assert OTHER_ROUTE in board.routes
    assert all(len(r.examples) <= MAX_EXAMPLES for r in board.routes.values())


def test_each_limit_bounds_what_the_board_keeps() -> None:
    limits = DiffLimits(max_routes=3, max_paths=2, examples=1, example_body=4)
    board = DiffBoard(limits=limits)
    for i in range(5):
        for _ in range(3):
            board.record(f"GET /u/{i}", answer({"a": 1, "b": 1}), answer({"a": 2, "b": 2}))
    assert set(board.routes) == {"GET /u/0", "GET /u/1", OTHER_ROUTE}
    route = board.statistics()["routes"]["GET /u/0"]
    assert set(route["paths"]) == {"$.a", OTHER_PATH}
    assert len(route["examples"]) == 1
    assert route["examples"][0]["primary"]["body"] == '{"a"...'
    assert board.statistics()["limits"]["max_routes"] == 3


def test_the_walk_stops_at_its_depth_and_difference_limits() -> None:
    deep = {"x": {"y": {"z": 1}}}
    other = {"x": {"y": {"z": 2}}}
    shallow = DiffLimits(max_depth=1)
    assert [d.path for d in compare(answer(deep), answer(other), limits=shallow)] == ["$.x"]
    assert [d.path for d in compare(answer(deep), answer(other))] == ["$.x.y.z"]
    many = DiffLimits(max_differences=3)
    a, b = answer({str(i): i for i in range(5)}), answer({str(i): -i - 1 for i in range(5)})
    assert [d.path for d in compare(a, b, limits=many)] == ["body"]


def test_a_board_can_keep_no_examples() -> None:
    board = DiffBoard(limits=DiffLimits(examples=0))
    board.record("GET /", answer({"v": 1}), answer({"v": 2}))
    assert board.statistics()["routes"]["GET /"]["examples"] == []
    assert board.regressions == 1


def test_limits_out_of_range_are_named() -> None:
    assert DiffLimits().problems() == []
    assert DiffLimits(max_routes=1, max_body=0).problems() == [
        ("max_routes", "expected 2-100000, got 1"),
        ("max_body", "expected 1-1073741824, got 0"),
    ]
