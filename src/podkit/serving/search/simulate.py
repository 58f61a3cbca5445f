"""A seeded latency simulator of scatter/gather, with no sockets: the Tail at Scale effect.

Theory of operation (Dean and Barroso, "The Tail at Scale", CACM 2013). Each leaf answers in
a time drawn from a lognormal body plus, with a small probability, a hiccup many times
longer (a GC pause, a compaction, a noisy neighbour). A root that waits for all N leaves
answers as late as the slowest of them, so with N = 100 and a 1 % hiccup rate about
``1 - 0.99**100 = 63 %`` of queries meet one. Three strategies are compared on the same draws:

* ``wait-all``: the answer comes when the last leaf answered;
* ``hedged``: a leaf request not answered by the hedge delay (the p95 of one leaf) is sent to
  a replica whose time is drawn independently; the leaf's time is the first of the two.
  Hedges are counted against a budget share of the requests, as the root's are;
* ``cut-off``: the answer comes when ``coverage`` of the leaves answered (the rest are left
  out and reported), as ``--min-coverage`` with a deadline allows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MEDIAN = 0.010  # 10 ms: the paper's typical leaf
DEFAULT_SIGMA = 0.25  # spread of the lognormal body
DEFAULT_HICCUP_RATE = 0.01  # the paper's "one in a hundred" slow leaf requests
DEFAULT_HICCUP_FACTOR = 10.0  # the 10x slow leaf
DEFAULT_COVERAGE = 0.99  # answer once 99 % of the leaves did


@dataclass(frozen=True, slots=True)
class LeafModel:
    """How long one leaf takes: lognormal around ``median``, times ``hiccup_factor`` with
    probability ``hiccup_rate``."""

    median: float = DEFAULT_MEDIAN
    sigma: float = DEFAULT_SIGMA
    hiccup_rate: float = DEFAULT_HICCUP_RATE
    hiccup_factor: float = DEFAULT_HICCUP_FACTOR

    def draw(self, rng: random.Random) -> float:
        seconds = rng.lognormvariate(math.log(self.median), self.sigma)
        if rng.random() < self.hiccup_rate:
            seconds *= self.hiccup_factor
        return seconds


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Latency quantiles (seconds) of each strategy for one number of leaves.

    Attributes:
        leaves: leaves per query.
        queries: queries simulated.
        wait_all: (p50, p99, p99.9) waiting for every leaf.
        hedged: (p50, p99, p99.9) with hedging at ``hedge_delay``.
        cut_off: (p50, p99, p99.9) answering at ``coverage`` of the leaves.
        hedge_delay: the hedge delay used (one leaf's p95).
        extra_requests: hedges sent over leaf requests.
        coverage: the share of leaves the cut-off waits for.
    """

    leaves: int
    queries: int
    wait_all: tuple[float, float, float]
    hedged: tuple[float, float, float]
    cut_off: tuple[float, float, float]
    hedge_delay: float
    extra_requests: float
    coverage: float


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by nearest rank of sorted ``values``."""
    rank = max(0, math.ceil(q * len(values)) - 1)
    return values[rank]


def _summary(values: list[float]) -> tuple[float, float, float]:
    values.sort()
    return (quantile(values, 0.5), quantile(values, 0.99), quantile(values, 0.999))


def leaf_quantile(model: LeafModel, q: float, *, seed: int = 0, samples: int = 100_000) -> float:
    """One leaf's latency quantile, estimated from ``samples`` draws."""
    rng = random.Random(seed)
    return quantile(sorted(model.draw(rng) for _ in range(samples)), q)


def simulate(
    leaves: int,
    queries: int,
    *,
    model: LeafModel | None = None,
    hedge_quantile: float = 0.95,
    hedge_budget: float = 0.05,
    coverage: float = DEFAULT_COVERAGE,
    seed: int = 1,
) -> SimulationResult:
    """Simulate ``queries`` queries over ``leaves`` leaves with the three strategies.

    The same leaf draws serve every strategy, so the comparison is paired. Hedges beyond
    ``hedge_budget`` of the requests sent so far are not sent (the leaf keeps its first time).
    """
    model = model or LeafModel()
    rng = random.Random(seed)
    delay = leaf_quantile(model, hedge_quantile, seed=seed + 1)
    need = max(1, math.ceil(coverage * leaves))
    wait_all: list[float] = []
    hedged: list[float] = []
    cut_off: list[float] = []
    requests = hedges = 0
    for _ in range(queries):
        times = [model.draw(rng) for _ in range(leaves)]
        requests += leaves
        wait_all.append(max(times))
        best = []
        for first in times:
            if first > delay and hedges + 1 <= hedge_budget * requests:
                hedges += 1
                best.append(min(first, delay + model.draw(rng)))
            else:
                best.append(first)
        hedged.append(max(best))
        times.sort()
        cut_off.append(times[need - 1])
    return SimulationResult(
        leaves=leaves,
        queries=queries,
        wait_all=_summary(wait_all),
        hedged=_summary(hedged),
        cut_off=_summary(cut_off),
        hedge_delay=delay,
        extra_requests=hedges / requests if requests else 0.0,
        coverage=coverage,
    )
