"""Handlers the pipeline tests name in their pipeline files (tests.pipeline.handlers_for_tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from podkit.pipeline import Emit


def is_even(value: int) -> bool:
    return value % 2 == 0


def double(value: int) -> int:
    return value * 2


def explode(value: int) -> Iterator[int]:
    """A generator map: ``value`` copies of itself."""
    yield from [value] * value


def route(value: int) -> Iterator[Any]:
    """Splitter: small numbers to ``small``, big ones to ``big``; 0 to both."""
    if value == 0:
        yield 0
    elif value < 10:
        yield Emit("small", value)
    else:
        yield Emit("big", value)


def add(total: int, value: int) -> int:
    return total + value


def count_one(total: int, value: Any) -> int:
    return total + 1


def add_or_fail(total: int, value: int) -> int:
    if value == 13:
        raise ValueError("unlucky")
    return total + value


def fail_on_odd(value: int) -> int:
    if value % 2:
        raise RuntimeError(f"odd {value}")
    return value


def wrong_topic(value: int) -> Iterator[Any]:
    yield Emit("nowhere", value)


def add_n(total: int, value: dict[str, int]) -> int:
    """A reduce over ``{"n": ...}`` items: the sum of their ``n``."""
    return total + value["n"]


def explode_or_fail(value: int) -> Iterator[int]:
    """A generator map that yields, then fails, for 3: its partial outputs must be dropped."""
    yield value
    if value == 3:
        raise ValueError("three")
    yield value * 10


def flaky_split(value: int) -> Iterator[Any]:
    """A splitter that routes, then fails, for 3."""
    yield Emit("small", value)
    if value == 3:
        raise ValueError("three")
    yield Emit("big", value * 10)


_seen_once: set[Any] = set()


def fail_first_time(value: int) -> int:
    """A map that fails the first time it sees a value (in this process), then doubles it."""
    if value not in _seen_once:
        _seen_once.add(value)
        raise RuntimeError(f"first try {value}")
    return value * 2
