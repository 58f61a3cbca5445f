"""Hedged requests and replica choice for the root (sans-IO; time is passed in).

Theory of operation (Dean and Barroso, "The Tail at Scale", CACM 2013, "hedged requests";
Suresh et al., "C3: Cutting Tail Latency in Cloud Data Stores via Adaptive Replica
Selection", NSDI 2015). For each shard the root keeps the latencies of its last answers;
a request that has not answered by that shard's live p95 is sent to another replica too,
and the first answer wins. Hedges draw on a budget (Finagle's retry budget with a ratio of
5 % and no floor), so when everything is slow they stop by themselves instead of doubling
the load. A replica is chosen by the lowest ``latency * (1 + in flight) ** 3``: C3's cubic
penalty on queued work, with an exponentially weighted latency; replicas never measured
go first, and one request in twenty goes to a random replica so that one that was slow
once is measured again rather than shunned for good.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from podkit.serving.balance import RetryBudget

DEFAULT_HEDGE_RATIO = 0.05  # the cap: hedges add at most 5 % requests
HEDGE_WINDOW = 10.0  # seconds of traffic the budget counts (Finagle's ttl)
LATENCY_SAMPLES = 256  # answers per shard the live p95 is taken over
MIN_SAMPLES = 20  # below this a p95 is noise: no hedging yet
HEDGE_QUANTILE = 0.95  # the "live p95"
EWMA_WEIGHT = 0.2  # weight of the newest latency in a replica's average
EXPLORE_SHARE = 0.05  # requests sent to a random replica, so a once-slow one is measured again


@dataclass(frozen=True, slots=True)
class HedgeStatistics:
    """Hedges sent, won (the hedge answered first) and refused by the budget."""

    sent: int
    won: int
    refused: int


class LatencyWindow:
    """The last ``size`` latencies of one shard, and a quantile of them."""

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._sorted: list[float] | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._sorted = None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank), or None with fewer than MIN_SAMPLES samples."""
        if len(self._samples) < MIN_SAMPLES:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        rank = max(0, math.ceil(q * len(self._sorted)) - 1)
        return self._sorted[rank]


class Replica:
    """One replica of a shard: its URL, latency average and requests in flight."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latency: float | None = None
        self.in_flight = 0
        self.failures = 0

    def cost(self) -> float:
        latency = 0.0 if self.latency is None else self.latency
        return latency * (1 + self.in_flight) ** 3 + self.failures

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, seconds: float | None) -> None:
        """One request ended: with its latency, or None when it failed or was cancelled."""
        self.in_flight -= 1
        if seconds is None:
            return
        self.failures = 0
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency += EWMA_WEIGHT * (seconds - self.latency)

    def failed(self) -> None:
        # A failing replica sorts last until it answers again.
        self.failures += 1


class ShardReplicas:
    """The replicas of one shard, the shard's live latency, and which replica to use next."""

    def __init__(self, shard: int, urls: Sequence[str], *, rng: random.Random) -> None:
        if not urls:
            raise ValueError("a shard needs at least one replica")
        self.shard = shard
        self.replicas = [Replica(url) for url in urls]
        self.window = LatencyWindow()
        self._rng = rng

    def choose(self, exclude: Replica | None = None) -> Replica | None:
        """The replica with the lowest cost (ties at random; see EXPLORE_SHARE), not ``exclude``."""
        candidates = [r for r in self.replicas if r is not exclude]
        if not candidates:
            return None
        if len(candidates) > 1 and self._rng.random() < EXPLORE_SHARE:
            return self._rng.choice(candidates)
        best = min(r.cost() for r in candidates)
        return self._rng.choice([r for r in candidates if r.cost() == best])

    def hedge_delay(self) -> float | None:
        """When to hedge a request to this shard: its live p95, or None (too few samples or
        no second replica)."""
        if len(self.replicas) < 2:
            return None
        return self.window.quantile(HEDGE_QUANTILE)


class HedgeBudget:
    """How many hedges may be sent: ``ratio`` of the leaf requests over the last window."""

    def __init__(self, ratio: float = DEFAULT_HEDGE_RATIO) -> None:
        self._budget = RetryBudget(ratio=ratio, min_per_second=0.0, window=HEDGE_WINDOW)
        self.sent = 0
        self.won = 0

    def request(self, now: float) -> None:
        """Count one first (non-hedge) leaf request."""
        self._budget.deposit(now)

    def try_hedge(self, now: float) -> bool:
        """Take one hedge from the budget; False when it is empty."""
        if self._budget.try_withdraw(now):
            self.sent += 1
            return True
        return False

    def statistics(self) -> HedgeStatistics:
        return HedgeStatistics(self.sent, self.won, self._budget.refused)
