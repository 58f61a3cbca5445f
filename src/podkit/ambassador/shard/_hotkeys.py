"""Hot keys: a bounded top-K sketch of key heat and how many shards a hot key is kept on.

Theory of operation. Key heat is counted with the space-saving algorithm (Metwally, Agrawal
and El Abbadi, "Efficient computation of frequent and top-k elements in data streams",
ICDT 2005) in a batched form: counters are kept in a dict that may grow to twice
``capacity``; when it does, the ``capacity`` largest survive and the largest dropped count
becomes the *floor*, the count a newly seen key starts from (space-saving's "replace the
minimum, inherit its count"). A key's count therefore never under-states its true count and
over-states it by at most the floor, which for a skewed workload is far below the counts
that matter. Memory is bounded by ``2 * capacity`` counters whatever the number of keys, and
the cost per request is one dict update plus an amortised ``O(log capacity)``.

Heat fades: every ``decay_every`` requests all counts (and the total) are halved, so the hot
set follows the traffic (a key that went viral an hour ago is cold again).

A key is *hot* when it was counted at least ``MIN_COUNT`` times and its share of the
requests is at least twice ``COPY_SHARE`` of one shard's mean share (``1 / shards``); it is
then kept on ``ceil(share * shards / COPY_SHARE)`` shards (at most all of them), its first
shards in the sharding function's preference order, so every process picks the same ones.
The router sends each read of a hot key to the least loaded of its copies and each write to
all of them.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_CAPACITY = 1024  # keys tracked; a key with a share above 1/1024 is always among them
DEFAULT_DECAY_EVERY = 200_000  # requests between halvings: heat has a half-life of this many
REFRESH_EVERY = 1000  # requests between recomputing the hot set from the sketch
COPY_SHARE = 0.1  # a hot key's copy carries at most this fraction of a shard's mean load
MIN_COUNT = 64  # a key seen fewer times than this (after decay) is never hot: noise
REMEMBERED = 4096  # hot keys whose copies are remembered after they cool (for deletes)


@dataclass(frozen=True, slots=True)
class HotKey:
    """One hot key: its estimated share of requests and how many shards hold it."""

    key: bytes
    share: float
    copies: int


class SpaceSaving:
    """A bounded top-K counter (space-saving, batched; see the module docstring).

    Args:
        capacity: the number of keys kept after each compaction.
    """

    __slots__ = ("capacity", "counts", "floor", "total")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        self.counts: dict[bytes, float] = {}
        self.floor = 0.0
        self.total = 0.0

    def add(self, key: bytes, count: float = 1.0) -> None:
        counts = self.counts
        current = counts.get(key)
        if current is None:
            counts[key] = self.floor + count
            if len(counts) >= 2 * self.capacity:
                self._compact()
        else:
            counts[key] = current + count
        self.total += count

    def _compact(self) -> None:
        keep = heapq.nlargest(self.capacity + 1, self.counts.items(), key=lambda kv: kv[1])
        self.floor = max(self.floor, keep[-1][1])
        self.counts = dict(keep[:-1])

    def decay(self, factor: float = 0.5) -> None:
        """Multiply every count (and the total) by ``factor``."""
        self.counts = {k: v * factor for k, v in self.counts.items() if v * factor >= 1.0}
        self.floor *= factor
        self.total *= factor

    def estimate(self, key: bytes) -> float:
        """The key's count: exact or over by at most ``floor``; ``floor`` for keys not kept."""
        return self.counts.get(key, self.floor)

    def top(self, n: int) -> list[tuple[bytes, float]]:
        """The ``n`` largest counts, largest first."""
        return heapq.nlargest(n, self.counts.items(), key=lambda kv: kv[1])


class HotKeys:
    """Which keys are hot and on how many shards each is kept.

    Args:
        shards: the number of shards.
        capacity: keys tracked by the sketch.
        decay_every: requests between halvings of every count.
        copy_share: a copy carries at most this fraction of a shard's mean load.
    """

    def __init__(
        self,
        shards: int,
        *,
        capacity: int = DEFAULT_CAPACITY,
        decay_every: int = DEFAULT_DECAY_EVERY,
        copy_share: float = COPY_SHARE,
    ) -> None:
        self.shards = shards
        self.sketch = SpaceSaving(capacity)
        self.decay_every = decay_every
        self.copy_share = copy_share
        self._seen = 0
        self._hot: dict[bytes, int] = {}
        self._remembered: OrderedDict[bytes, int] = OrderedDict()

    def record(self, key: bytes) -> None:
        """Count one request for ``key``."""
        self.sketch.add(key)
        self._seen += 1
        if self._seen % REFRESH_EVERY == 0:
            if self._seen % self.decay_every == 0:
                self.sketch.decay()
            self._refresh()

    def _refresh(self) -> None:
        sketch = self.sketch
        total = sketch.total
        hot: dict[bytes, int] = {}
        if total > 0 and self.shards > 1:
            unit = self.copy_share / self.shards  # one copy's share of all requests
            for key, count in sketch.counts.items():
                if count < MIN_COUNT or count < 2 * unit * total:
                    continue
                # Under-count by the sketch's error so a key is never hot on noise alone.
                share = (count - sketch.floor) / total
                copies = min(self.shards, math.ceil(share / unit))
                if copies >= 2:
                    hot[key] = copies
        for key, copies in hot.items():
            self._remembered[key] = max(copies, self._remembered.pop(key, 0))
        while len(self._remembered) > REMEMBERED:
            self._remembered.popitem(last=False)
        self._hot = hot

    def copies(self, key: bytes) -> int:
        """The number of shards ``key`` is read from (1 for a cold key)."""
        return self._hot.get(key, 1)

    def delete_copies(self, key: bytes) -> int:
        """The number of shards a delete of ``key`` must reach: every shard that may hold a
        copy, including copies made while the key was hot and not expired yet."""
        return max(self._hot.get(key, 1), self._remembered.get(key, 1))

    def hottest(self, n: int = 10) -> list[HotKey]:
        """The ``n`` keys with the most requests, hottest first."""
        total = self.sketch.total or 1.0
        return [
            HotKey(key, count / total, self._hot.get(key, 1)) for key, count in self.sketch.top(n)
        ]
