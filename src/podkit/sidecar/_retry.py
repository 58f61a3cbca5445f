"""Retry schedules shared by the sidecars (sans-IO: the caller supplies randomness)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEFAULT_BACKOFF_INITIAL: Final = 0.1
DEFAULT_BACKOFF_MAX: Final = 5.0  # a peer that is back is used again within 5 s


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: ``initial * multiplier**attempt``, capped at
    ``maximum``, then spread by ``±jitter`` so that many shippers do not retry in step."""

    initial: float = DEFAULT_BACKOFF_INITIAL
    maximum: float = DEFAULT_BACKOFF_MAX
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, *, rand: float) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); ``rand`` is in [0, 1)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter + 2.0 * self.jitter * rand)
