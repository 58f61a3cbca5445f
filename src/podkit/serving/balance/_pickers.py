"""Endpoint pickers: weighted round-robin, least-request (P2C) and hash affinity.

Theory of operation. A picker chooses one endpoint among the *candidates* the pool hands it
(the READY endpoints not yet tried by this request). Pickers hold only their own bookkeeping
and never read a clock or a global random source:

* :class:`RoundRobinPicker` is nginx's smooth weighted round-robin: each pick adds every
  candidate's effective weight to its running score, picks the highest and subtracts the total
  from the winner. Weights 5/1/1 give ``a a b a c a a`` rather than ``a a a a a b c``.
* :class:`LeastRequestPicker` is the power of two choices (Mitzenmacher): draw two distinct
  candidates with the injected random source and keep the one with fewer requests in flight
  per unit of weight. It avoids the herd that a global "least connections" scan causes.
* :class:`HashPicker` maps a request key (client IP, header, cookie) onto the candidates with
  a consistent hash from :mod:`podkit.hashing`, so when an endpoint joins or leaves only
  the keys that must move do (about 1/N). With bounded loads (Mirrokni, Thorup, Zadimoghaddam
  2018) an endpoint whose in-flight count exceeds ``c * average`` passes the key on to the next
  one, so one hot key cannot overload a replica.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from podkit.serving.balance._endpoint import Endpoint

DEFAULT_BOUNDED_LOAD = 1.25  # the paper's and HAProxy's hash-balance-factor 125
MAX_CYCLE = 4096  # longest precomputed round-robin schedule (the sum of the weights)


class Picker(Protocol):
    """Chooses one of ``candidates`` (never empty) for a request with affinity ``key``."""

    def pick(self, candidates: Sequence[Endpoint], *, now: float, key: str | None) -> Endpoint:
        """Return the chosen endpoint."""
        ...


class RoundRobinPicker:
    """nginx's smooth weighted round-robin over the candidates' effective weights.

    The schedule repeats every ``sum(weights)`` picks once no candidate is in slow start, so
    for a candidate *tuple* (the pool's READY set, the same object until something changes)
    it is computed once and then walked with an index; lists (a retry's candidates) and
    ramping weights take the scoring path.
    """

    def __init__(self) -> None:
        self._score: dict[str, float] = {}
        self._cycle_for: Sequence[Endpoint] | None = None
        self._cycle: list[Endpoint] = []
        self._next = 0

    def pick(self, candidates: Sequence[Endpoint], *, now: float, key: str | None) -> Endpoint:
        if candidates is self._cycle_for:
            index = self._next
            self._next = index + 1 if index + 1 < len(self._cycle) else 0
            return self._cycle[index]
        if type(candidates) is tuple and self._steady(candidates, now):
            self._cycle = _smooth_schedule(candidates)
            self._cycle_for = candidates
            self._next = 1 % len(self._cycle)
            return self._cycle[0]
        return self._scored(candidates, now)

    @staticmethod
    def _steady(candidates: Sequence[Endpoint], now: float) -> bool:
        return sum(e.weight for e in candidates) <= MAX_CYCLE and all(
            e.ramped(now) for e in candidates
        )

    def _scored(self, candidates: Sequence[Endpoint], now: float) -> Endpoint:
        total = 0.0
        best: Endpoint | None = None
        best_score = 0.0
        for endpoint in candidates:
            weight = endpoint.effective_weight(now)
            score = self._score.get(endpoint.url, 0.0) + weight
            self._score[endpoint.url] = score
            total += weight
            if best is None or score > best_score:
                best, best_score = endpoint, score
        assert best is not None, "pick() needs at least one candidate"
        self._score[best.url] = best_score - total
        return best

    def forget(self, url: str) -> None:
        """Drop the score of an endpoint that left the pool."""
        self._score.pop(url, None)


def _smooth_schedule(candidates: Sequence[Endpoint]) -> list[Endpoint]:
    """One period of smooth weighted round-robin over full weights (from zero scores)."""
    scores = [0] * len(candidates)
    weights = [e.weight for e in candidates]
    total = sum(weights)
    schedule = []
    for _ in range(total):
        best = 0
        for i, weight in enumerate(weights):
            scores[i] += weight
            if scores[i] > scores[best]:
                best = i
        scores[best] -= total
        schedule.append(candidates[best])
    return schedule


class LeastRequestPicker:
    """Power of two choices on in-flight requests per unit of effective weight.

    Args:
        rng: the random source (inject a seeded ``random.Random`` for repeatable tests).
    """

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def pick(self, candidates: Sequence[Endpoint], *, now: float, key: str | None) -> Endpoint:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        draw = self._rng.random
        first = int(draw() * count)
        second = int(draw() * (count - 1))
        if second >= first:
            second += 1  # two distinct candidates, each pair equally likely
        a, b = candidates[first], candidates[second]
        # +1 so that idle endpoints still compare by weight (0/w ties for every w).
        load_a = (a.in_flight + 1) / a.effective_weight(now)
        load_b = (b.in_flight + 1) / b.effective_weight(now)
        return a if load_a <= load_b else b


RankFunction = Callable[[str, Mapping[str, float]], Iterable[str]]
"""Orders node names (given with their weights) for a key, most preferred first: a consistent
hash's preference list, e.g. :class:`~podkit.serving.balance.HashingRank`."""


class HashPicker:
    """Consistent-hash affinity with optional bounded loads.

    Args:
        rank: orders endpoint URLs for a key (from :mod:`podkit.hashing`); the first entry is
            the key's home, the next ones its successors when the home is full or absent.
        bounded_load: the factor ``c`` of bounded loads (>= 1), or None for plain hashing.
            An endpoint of weight ``w`` may hold ``ceil(c * (m + 1) * w / W)`` requests in
            flight, ``m`` being the candidates' total and ``W`` their total weight.
        fallback: picks when a request has no key at all.
    """

    def __init__(
        self,
        rank: RankFunction,
        *,
        bounded_load: float | None = None,
        fallback: Picker | None = None,
    ) -> None:
        if bounded_load is not None and bounded_load < 1.0:
            raise ValueError("bounded_load must be at least 1.0")
        self._rank = rank
        # A rank that can name a key's home without ordering every node (HashingRank.first)
        # serves plain hashing with one lookup.
        self._first: Callable[[str, Mapping[str, float]], str] | None = getattr(rank, "first", None)
        self.bounded_load = bounded_load
        self._fallback: Picker = fallback if fallback is not None else RoundRobinPicker()
        # What pick() derives from a candidate tuple, kept while the pool hands the same one.
        self._derived_for: Sequence[Endpoint] | None = None
        self._by_url: dict[str, Endpoint] = {}
        self._weights: dict[str, float] = {}

    def capacity(self, endpoint: Endpoint, candidates: Sequence[Endpoint]) -> int | None:
        """How many requests ``endpoint`` may hold before keys spill over (None: unbounded)."""
        if self.bounded_load is None:
            return None
        placed = sum(e.in_flight for e in candidates) + 1  # +1: the request being placed
        total_weight = sum(e.weight for e in candidates)
        return max(1, math.ceil(self.bounded_load * placed * endpoint.weight / total_weight))

    def pick(self, candidates: Sequence[Endpoint], *, now: float, key: str | None) -> Endpoint:
        if key is None:
            return self._fallback.pick(candidates, now=now, key=None)
        if candidates is self._derived_for:
            by_url, weights = self._by_url, self._weights
        else:
            by_url = {e.url: e for e in candidates}
            weights = {e.url: float(e.weight) for e in candidates}
            if type(candidates) is tuple:
                self._derived_for, self._by_url, self._weights = candidates, by_url, weights
        if self.bounded_load is None and self._first is not None:
            return by_url[self._first(key, weights)]
        first: Endpoint | None = None
        for url in self._rank(key, weights):
            endpoint = by_url[url]
            first = first or endpoint
            capacity = self.capacity(endpoint, candidates)
            if capacity is None or endpoint.in_flight < capacity:
                return endpoint
        # Unreachable while c >= 1: the capacities sum to more than the requests in flight.
        assert first is not None, "pick() needs at least one candidate"
        return first
