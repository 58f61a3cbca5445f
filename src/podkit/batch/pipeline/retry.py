"""When a stage tries a failed item again: exponential backoff with jitter, capped.

Theory of operation. Attempt 1 runs at once; before retry ``k`` (attempt ``k + 1``) a worker
waits ``base(k) = min(max, initial * multiplier ** (k - 1))`` scaled by a random factor in
``[1/2, 1]`` ("equal jitter" in the AWS Architecture Blog's *Exponential Backoff and Jitter*):
the waits grow, never pass the cap, and workers that failed together spread out instead
of hitting a struggling service at the same moment. A worker retries the failed items of a
batch together, round by round, so a batch waits at most :meth:`RetryPolicy.worst_case`
however many of its items fail; that sum must fit in the lease (``topics.visibility``).

This module is sans-IO: the caller draws the random number and does the sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BACKOFF_MAX = 30.0  # seconds: the cap of one wait between attempts
DEFAULT_BACKOFF_MULTIPLIER = 2.0  # each wait doubles (before jitter)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a stage tries one item.

    Attributes:
        attempts: tries in all (1: no retry).
        initial: seconds before the first retry (0: retry at once).
        multiplier: growth of the wait from one retry to the next.
        cap: the longest wait.
    """

    attempts: int = 3
    initial: float = 0.0
    multiplier: float = DEFAULT_BACKOFF_MULTIPLIER
    cap: float = DEFAULT_BACKOFF_MAX

    def base(self, retry: int) -> float:
        """The wait before retry ``retry`` (1 is the first) before jitter."""
        if self.initial <= 0 or retry < 1:
            return 0.0
        # Bounded exponent: the cap is reached long before a float overflows.
        exponent = min(retry - 1, 64)
        return float(min(self.cap, self.initial * self.multiplier**exponent))

    def delay(self, retry: int, rand: float) -> float:
        """Seconds to wait before retry ``retry``, given ``rand`` uniform in ``[0, 1)``."""
        base = self.base(retry)
        return base / 2 + base / 2 * rand

    def worst_case(self) -> float:
        """The longest a batch can wait in all, over every retry."""
        return sum(self.base(k) for k in range(1, self.attempts))
