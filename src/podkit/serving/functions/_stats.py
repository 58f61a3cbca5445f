"""The runner's figures: plain counters updated on the hot path, exported at scrape time.

Counting an invocation is a few integer additions; the Prometheus families are built only
when ``/metrics`` is read (as the engine's server does), so a busy function does not pay
for a lock per metric per call.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from podkit.runtime.metrics import LATENCY_BUCKETS


class Slots:
    """``limit`` invocations at once: take without waiting (HTTP) or wait for one (events).

    A sans-IO counter with a wake-up: :meth:`take_now` and :meth:`give` are plain calls;
    :meth:`take` waits on an asyncio event only when the slots are full.
    """

    def __init__(self, limit: int) -> None:
        import asyncio

        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    def take_now(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    async def take(self) -> None:
        while self.used >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += 1

    def give(self) -> None:
        self.used -= 1
        self._freed.set()

    def resize(self, limit: int) -> None:
        """Take ``limit`` at once from now on (the calls running over a lower one finish)."""
        self.limit = limit
        self._freed.set()


class FunctionStats(Collector):
    """Invocations, durations, publications and dead letters of every function."""

    def __init__(self, slots: Mapping[str, Slots], registry: CollectorRegistry | None) -> None:
        self.slots = slots
        self.invocations: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.published: dict[str, int] = {}
        self.dead: dict[tuple[str, str], int] = {}
        if registry is not None:
            registry.register(self)

    def invoked(self, function: str, trigger: str, outcome: str, seconds: float) -> None:
        key = (function, trigger, outcome)
        self.invocations[key] = self.invocations.get(key, 0) + 1
        if outcome == "rejected":
            return
        counts = self.latency.get(function)
        if counts is None:
            counts = self.latency[function] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.latency_sum[function] = 0.0
        counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[function] += seconds

    def publish(self, event_type: str) -> None:
        self.published[event_type] = self.published.get(event_type, 0) + 1

    def dead_lettered(self, function: str, reason: str) -> None:
        key = (function, reason)
        self.dead[key] = self.dead.get(key, 0) + 1

    def collect(self) -> Iterable[Metric]:
        invocations = CounterMetricFamily(
            "podkit_functions_invocations",
            "Invocations that finished, by function, trigger and outcome (ok, error, rejected).",
            labels=["function", "trigger", "outcome"],
        )
        for (function, trigger, outcome), count in sorted(self.invocations.items()):
            invocations.add_metric([function, trigger, outcome], count)
        yield invocations
        running = GaugeMetricFamily(
            "podkit_functions_running", "Invocations running now.", labels=["function"]
        )
        for name, slots in sorted(self.slots.items()):
            running.add_metric([name], slots.used)
        yield running
        duration = HistogramMetricFamily(
            "podkit_functions_duration_seconds",
            "Time from the start of an invocation to its result.",
            labels=["function"],
        )
        for name, counts in sorted(self.latency.items()):
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                points.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([name], points, self.latency_sum[name])
        yield duration
        published = CounterMetricFamily(
            "podkit_functions_events_published", "Events published, by type.", labels=["type"]
        )
        for event_type, count in sorted(self.published.items()):
            published.add_metric([event_type], count)
        yield published
        dead = CounterMetricFamily(
            "podkit_functions_dead_lettered",
            "Events and calls moved to the dead-letter set, by function and reason.",
            labels=["function", "reason"],
        )
        for (function, reason), count in sorted(self.dead.items()):
            dead.add_metric([function, reason], count)
        yield dead
