"""Hedged requests: a slow replica is hedged around within the 5 % budget; the loser is
cancelled; replica choice and the budget as pure cores."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from podkit.errors import ConfigError
from podkit.serving.search import InjectDelay
from podkit.serving.search._hedge import MIN_SAMPLES, HedgeBudget, LatencyWindow, ShardReplicas

from .conftest import VOCABULARY, build, generated_corpus, leaves_and_root


async def test_slow_replicas_are_hedged_around_within_the_budget(tmp_path: Path) -> None:
    """Both replicas hold 3 % of answers 100 ms (so the p95 is a fast answer): hedges are
    sent and win, at most 5 % of the requests."""
    index = build(tmp_path, generated_corpus(300), 1)[0]
    slow = InjectDelay.parse("100ms@3%")
    registry = CollectorRegistry()
    rng = random.Random(5)
    async with leaves_and_root(
        [[index, index]], inject={(0, 0): slow, (0, 1): slow}, registry=registry, deadline=5.0
    ) as (root, apps):
        for _ in range(400):
            result = await root.search(rng.choice(VOCABULARY[:40]), 5)
            assert not result.degraded
        replicas = root.shards[0].replicas
        assert [r.in_flight for r in replicas] == [0, 0]  # losers were cancelled, not leaked

    def sample(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    name = "podkit_search_shard_requests_total"
    requests = sum(
        registry.get_sample_value(name, {"shard": "0", "outcome": o}) or 0.0
        for o in ("answered", "failed", "timed_out")
    )
    sent = sample("podkit_search_hedges_sent_total")
    won = sample("podkit_search_hedges_won_total")
    assert sent >= 1
    assert won >= 1
    assert sent <= 0.05 * requests + 1
    assert sum(app.injected for app in apps[0]) >= 1


async def test_without_replicas_or_with_hedging_off_nothing_is_hedged(tmp_path: Path) -> None:
    """--hedge off sends each leaf request once."""
    index = build(tmp_path, generated_corpus(100), 1)[0]
    registry = CollectorRegistry()
    async with leaves_and_root([[index, index]], registry=registry, hedge="off") as (root, _):
        for word in VOCABULARY[:60]:
            await root.search(word)
    assert (registry.get_sample_value("podkit_search_hedges_sent_total") or 0.0) == 0


def test_the_budget_allows_five_hedges_per_hundred_requests() -> None:
    """Finagle-style budget with no floor: 5 % of requests over the window."""
    budget = HedgeBudget(0.05)
    assert not budget.try_hedge(0.0)
    for _ in range(100):
        budget.request(1.0)
    assert sum(budget.try_hedge(1.5) for _ in range(10)) == 5
    assert budget.statistics().refused == 6


def test_the_p95_needs_enough_samples() -> None:
    """No hedging on noise: fewer than MIN_SAMPLES give no quantile."""
    window = LatencyWindow()
    for i in range(MIN_SAMPLES - 1):
        window.add(i / 1000)
    assert window.quantile(0.95) is None
    for _ in range(300):  # the window keeps the last 256: the early ones are gone
        window.add(0.001)
    assert window.quantile(0.95) == 0.001


def test_replica_choice_prefers_fast_and_idle_replicas() -> None:
    """Cost is latency times (1 + in flight) cubed; a busy fast replica loses to an idle one."""
    shard = ShardReplicas(0, ["http://a:1", "http://b:1"], rng=random.Random(0))
    a, b = shard.replicas
    a.started()
    a.finished(0.001)
    b.started()
    b.finished(0.004)
    picks = [shard.choose() for _ in range(200)]
    assert picks.count(a) > 180
    a.started()  # (1 + 1) ** 3 * 1 ms = 8 ms > 4 ms
    picks = [shard.choose() for _ in range(200)]
    assert picks.count(b) > 180
    assert shard.choose(exclude=b) is a


@pytest.mark.parametrize("text", ["10x", "x@5%", "0.5x@5%", "10x@150%", "fast@5%"])
def test_bad_inject_delays_are_refused(text: str) -> None:
    """--inject-delay takes FACTORx@PERCENT% or DURATION@PERCENT%."""
    with pytest.raises(ConfigError, match="--inject-delay"):
        InjectDelay.parse(text)


def test_inject_delay_forms() -> None:
    """10x@5% is a factor of the median; 50ms@5% a fixed delay."""
    assert InjectDelay.parse("10x@5%") == InjectDelay(0.05, factor=10.0)
    assert InjectDelay.parse("50ms@100%").delay(random.Random(0), 0.0) == 0.05
    assert InjectDelay.parse("10x@100%").delay(random.Random(0), 0.002) == pytest.approx(0.018)
