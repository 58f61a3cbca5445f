"""How many worker processes the backlog asks for (sans-IO: ``now`` is passed in).

The multi-worker pattern: the supervisor of ``podkit queue work --min N --max M`` reads the
queue's backlog (ready + leased items) every few seconds and asks :class:`Autoscaler` how many
workers should run. Scaling up is immediate, because a growing backlog is lost time; scaling
down waits until the smaller number has been enough for ``scale_down_after`` seconds, so a
short lull does not stop workers that are needed a moment later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SCALE_DOWN_AFTER = 30.0  # seconds a smaller pool must have sufficed before shrinking


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """Bounds and pace of the worker pool.

    Attributes:
        min_workers: workers that always run (0 allows scaling to zero).
        max_workers: the most workers ever started.
        items_per_worker: backlog one worker is expected to absorb (its concurrency).
        scale_down_after: seconds of lower demand before workers are stopped.
    """

    min_workers: int
    max_workers: int
    items_per_worker: int = 1
    scale_down_after: float = DEFAULT_SCALE_DOWN_AFTER

    def __post_init__(self) -> None:
        if self.min_workers < 0:
            raise ValueError("--min must not be negative")
        if self.max_workers < max(1, self.min_workers):
            raise ValueError("--max must be at least 1 and at least --min")
        if self.items_per_worker < 1:
            raise ValueError("items per worker must be at least 1")
        if self.scale_down_after < 0:
            raise ValueError("scale-down delay must not be negative")


class Autoscaler:
    """Turns backlog observations into a desired number of workers."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._low_since: float | None = None

    def wanted(self, demand: int) -> int:
        """Workers needed for ``demand`` items (ready + leased), within the bounds."""
        need = math.ceil(max(0, demand) / self.policy.items_per_worker)
        return max(self.policy.min_workers, min(self.policy.max_workers, need))

    def decide(self, *, demand: int, current: int, now: float) -> int:
        """The number of workers that should run now.

        Args:
            demand: ready plus leased items in the queue.
            current: workers running now.
            now: the current (monotonic) time in seconds.

        Returns:
            The target count: higher than ``current`` at once when the backlog grows, lower
            only after the lower target has held for ``scale_down_after`` seconds.
        """
        target = self.wanted(demand)
        if target >= current:
            self._low_since = None
            return target
        if self._low_since is None:
            self._low_since = now
        if now - self._low_since >= self.policy.scale_down_after:
            self._low_since = None
            return target
        return current
