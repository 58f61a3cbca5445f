"""A seeded simulation of skewed traffic over the router: how even is the load per shard?

Requests follow a Zipf law (rank ``k`` is asked with probability proportional to
``1 / k**s``) over a key space, the way cache traffic does (Breslau et al., "Web caching and
Zipf-like distributions", INFOCOM 1999). Used by the tests and ``bench/shard_hotkeys.py``.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from podkit.ambassador.shard._hotkeys import HotKeys
from podkit.ambassador.shard._router import ShardRouter


@dataclass(frozen=True, slots=True)
class LoadSpread:
    """Requests per shard after a simulation; ``peak`` is the busiest shard over the mean."""

    requests: tuple[int, ...]

    @property
    def peak(self) -> float:
        mean = sum(self.requests) / len(self.requests)
        return max(self.requests) / mean


def zipf_keys(count: int, *, keyspace: int, exponent: float = 0.99, seed: int = 0) -> list[bytes]:
    """``count`` keys drawn from ``keyspace`` keys with a Zipf law, reproducibly."""
    rng = random.Random(seed)
    weights = itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, keyspace + 1))
    ranks = rng.choices(range(keyspace), cum_weights=list(weights), k=count)
    return [b"key:%d" % rank for rank in ranks]


def simulate(
    keys: list[bytes], *, shards: int, hot_keys: bool, algorithm: str = "ring"
) -> LoadSpread:
    """Route every key as a read and count the requests each shard receives."""
    names = [f"shard-{i}" for i in range(shards)]
    router = ShardRouter(names, algorithm=algorithm, hot_keys=HotKeys(shards) if hot_keys else None)
    for key in keys:
        router.read_targets(key, 0.0)
    return LoadSpread(tuple(router.health[name].requests for name in names))
