"""Request coalescing bookkeeping: one origin fetch per missing object, others wait.

Theory of operation. The first request that misses on a key becomes the *leader* of a
flight and fetches from the origin; requests for the same key that arrive while the flight
is open become *followers*. When the leader finishes it publishes an outcome: a response the
followers may share (it was storable, so it may be served to anyone whose request selects
the same variant) or nothing (uncacheable, too large, or an error), in which case each
follower falls back to fetching for itself. Followers also give up waiting after a timeout
(the shell enforces it), so a stuck origin request cannot hold them forever.

The table holds only bookkeeping; the shell attaches its own wake-up primitive to each
flight.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_COALESCE_TIMEOUT = 5.0  # nginx proxy_cache_lock_timeout: 5 s


@dataclass(slots=True)
class Flight(Generic[T]):
    """One open origin fetch for a key.

    Attributes:
        key: what is being fetched.
        number: a unique id (a key can have many flights over time).
        started: when the leader started (caller's clock).
        followers: how many requests joined and wait.
        done: set once the leader published an outcome.
        result: the shareable response, or None when followers must fetch for themselves.
    """

    key: str
    number: int
    started: float
    followers: int = 0
    done: bool = False
    result: T | None = None
    waiter: object = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CoalescingStatistics:
    """A frozen view of the table."""

    open_flights: int
    leaders: int
    followers: int
    shared: int
    fallbacks: int


class CoalescingTable(Generic[T]):
    """Open flights by key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight[T]] = {}
        self._numbers = itertools.count(1)
        self.leaders = 0
        self.followers = 0
        self.shared = 0
        self.fallbacks = 0

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        """Whether a flight for ``key`` is open (a request could wait for it)."""
        return key in self._flights

    def join(self, key: str, now: float) -> tuple[Flight[T], bool]:
        """Join the open flight for ``key`` or open one.

        Returns:
            The flight and whether the caller leads it (True: fetch and :meth:`finish`).
        """
        flight = self._flights.get(key)
        if flight is not None:
            flight.followers += 1
            self.followers += 1
            return flight, False
        flight = Flight(key=key, number=next(self._numbers), started=now)
        self._flights[key] = flight
        self.leaders += 1
        return flight, True

    def finish(self, flight: Flight[T], result: T | None) -> int:
        """Close ``flight`` with its outcome (None: followers fetch for themselves).

        Returns:
            How many followers were waiting.
        """
        flight.done = True
        flight.result = result
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if result is None:
            self.fallbacks += flight.followers
        else:
            self.shared += flight.followers
        return flight.followers

    def statistics(self) -> CoalescingStatistics:
        """A frozen snapshot of the table."""
        return CoalescingStatistics(
            open_flights=len(self._flights),
            leaders=self.leaders,
            followers=self.followers,
            shared=self.shared,
            fallbacks=self.fallbacks,
        )
