"""Shared helpers for the hashing tests: node names, key sets and every algorithm by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from podkit.hashing import ALGORITHMS, ShardingFunction, sharding_function

ALGORITHM_NAMES = list(ALGORITHMS)
WEIGHTED_ALGORITHMS = ["ring", "rendezvous", "maglev"]
# Algorithms whose movement on a node change is exactly minimal (Maglev's is only nearly so).
MINIMAL_MOVEMENT = ["ring", "rendezvous", "jump"]
SMALL_TABLE = 4099  # a prime table keeps Maglev builds fast inside property tests


def build(algorithm: str, nodes: list[str], **kwargs: Any) -> ShardingFunction:
    """Build ``algorithm`` over ``nodes``; Maglev gets a small table unless told otherwise."""
    if algorithm == "maglev":
        kwargs.setdefault("table_size", SMALL_TABLE)
    return sharding_function(algorithm, nodes, **kwargs)


def node_names(count: int) -> list[str]:
    return [f"10.0.0.{i}:11211" for i in range(count)]


def keys(count: int, prefix: str = "key") -> list[str]:
    return [f"{prefix}:{i}" for i in range(count)]


@pytest.fixture
def make() -> Callable[..., ShardingFunction]:
    return build
