"""A retry budget: retries may add at most a fixed share of load, plus a small floor.

Theory of operation (Finagle's ``RetryBudget``). Every request deposits ``ratio`` of a token;
every retry withdraws one; deposits expire after ``window`` seconds. A floor of
``min_per_second * window`` tokens lets a lightly loaded balancer still retry. When a backend
dies, the budget lets the first failures be retried on other backends, but a fleet-wide outage
cannot turn into a retry storm that multiplies the load by ``1 + retries``.

Time is kept in one-second buckets in a ring (``now`` is passed in), so the cost is constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_RETRY_RATIO = 0.2  # Finagle and Envoy: retries add at most 20% load
DEFAULT_RETRY_MIN_PER_SECOND = 10.0  # Finagle's floor: a quiet service may still retry
DEFAULT_RETRY_WINDOW = 10.0  # Finagle's ttl: deposits older than this expire


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    """A frozen view of the budget."""

    requests: int
    retries: int
    available: float
    refused: int


class RetryBudget:
    """Decides whether one more retry is allowed right now.

    Args:
        ratio: retries allowed per request (0.2 = 20%).
        min_per_second: retries per second allowed regardless of traffic.
        window: seconds that a deposit (request) or withdrawal (retry) counts for.
    """

    def __init__(
        self,
        *,
        ratio: float = DEFAULT_RETRY_RATIO,
        min_per_second: float = DEFAULT_RETRY_MIN_PER_SECOND,
        window: float = DEFAULT_RETRY_WINDOW,
    ) -> None:
        if ratio < 0 or min_per_second < 0 or window < 1:
            raise ValueError("need ratio >= 0, min_per_second >= 0 and window >= 1s")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._slots = math.ceil(window)
        self._requests = [0] * self._slots
        self._retries = [0] * self._slots
        self._stamp = [-1] * self._slots  # which absolute second each slot holds
        self.refused = 0
        # The slot of the current second and where that second ends: a deposit within it
        # is one comparison and one increment.
        self._current = 0
        self._current_end = -math.inf

    def _slot(self, now: float) -> int:
        second = math.floor(now)
        index = second % self._slots
        if self._stamp[index] != second:
            self._stamp[index] = second
            self._requests[index] = 0
            self._retries[index] = 0
        return index

    def _live(self, now: float) -> tuple[int, int]:
        oldest = math.floor(now) - self._slots + 1
        requests = retries = 0
        for i in range(self._slots):
            if self._stamp[i] >= oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        return requests, retries

    def available(self, now: float) -> float:
        """Tokens left: how many retries could be made now."""
        requests, retries = self._live(now)
        return self.min_per_second * self.window + self.ratio * requests - retries

    def deposit(self, now: float) -> None:
        """Count one original request."""
        if not self._current_end - 1.0 <= now < self._current_end:
            self._current = self._slot(now)
            self._current_end = math.floor(now) + 1.0
        self._requests[self._current] += 1

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget. Returns False (and counts a refusal) when empty."""
        if self.available(now) < 1.0:
            self.refused += 1
            return False
        self._retries[self._slot(now)] += 1
        return True

    def statistics(self, now: float) -> RetryBudgetStatistics:
        """A frozen snapshot of the budget."""
        requests, retries = self._live(now)
        return RetryBudgetStatistics(
            requests=requests,
            retries=retries,
            available=self.available(now),
            refused=self.refused,
        )
