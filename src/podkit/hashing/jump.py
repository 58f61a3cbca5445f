"""Jump consistent hash (Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm",
2014), for numbered shards.

Theory of operation: a key's 64-bit hash seeds a linear congruential generator; the key jumps
forward from bucket 0 to bucket ``j`` with the probability that it would have stayed put when
the shard count grew from ``b + 1`` to ``j``, and the last jump below ``N`` is the answer. Going
from ``N`` to ``N + 1`` shards moves exactly the keys that land in the new shard, 1/(N+1) of
them, and nothing needs to be stored but ``N``; a lookup takes O(ln N) steps.

The paper's algorithm only grows or shrinks at the end. Removing another node leaves a
*tombstone* in its slot: a key that lands on one is re-hashed (splitmix64 of its state) and
jumps again over all slots until it reaches a live one, so only the removed node's keys move,
spread evenly over the others. Adding a node fills the first tombstone, else a new slot at the
end; trailing tombstones are dropped. Nodes given to the constructor are numbered in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self

from xxhash import xxh3_64_intdigest

from podkit.hashing._nodes import NodeSet
from podkit.hashing.interface import Key, NodeSetError, NoNodesError

_MASK64 = 0xFFFFFFFFFFFFFFFF
_LCG_MULTIPLIER = 2862933555777941757  # the paper's 64-bit LCG
_TWO_POW_31 = 2147483648.0
MAX_REHASH = 1000  # tombstone retries before a deterministic scan; ~(dead share)^1000 of keys
REPLICA_TRIES = 64  # salted re-picks for distinct replicas before the deterministic fill


def jump_hash(key: int, buckets: int) -> int:
    """Return the bucket in ``[0, buckets)`` of a 64-bit key, as the paper's C++ code does.

    Raises:
        ValueError: ``buckets`` is below 1.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, not {buckets}")
    key &= _MASK64
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * _LCG_MULTIPLIER + 1) & _MASK64
        # The paper divides first, then multiplies: the same rounding as its C++ code.
        j = int((b + 1) * (_TWO_POW_31 / ((key >> 33) + 1)))
    return b


def _rehash(state: int) -> int:
    """splitmix64's finaliser of ``state + golden``: an independent next 64-bit key."""
    z = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class JumpHash(NodeSet):
    """Jump consistent hash over numbered slots; node ``i`` of the list is shard ``i``.

    Args:
        nodes: node names, numbered in the order given (shard 0 first).
        weights: accepted only when every weight is 1 (jump hash has no weights).

    Raises:
        NodeSetError: a name is repeated or empty, or a weight other than 1 is given.
    """

    algorithm = "jump"
    __slots__ = ("_index", "_size", "_slots")

    def __init__(
        self,
        nodes: Iterable[str | None],
        *,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if isinstance(nodes, str | bytes):
            raise NodeSetError(f"nodes is a list of names, not one string ({nodes!r})")
        slots = list(nodes)
        while slots and slots[-1] is None:
            slots.pop()
        super().__init__([node for node in slots if node is not None], weights=weights)
        heavy = sorted(node for node, weight in self._weights.items() if weight != 1.0)
        if heavy:
            raise NodeSetError(f"jump hash has no weights (weight given for {', '.join(heavy)})")
        self._slots: list[str | None] = slots
        self._size = len(slots)
        self._index = {node: i for i, node in enumerate(slots) if node is not None}

    @property
    def slots(self) -> tuple[str | None, ...]:
        """Shard number -> node, with ``None`` for a removed node's slot (a tombstone)."""
        return tuple(self._slots)

    def shard_of(self, node: str) -> int:
        """Return the shard number of ``node``.

        Raises:
            NodeSetError: ``node`` is not present.
        """
        try:
            return self._index[node]
        except KeyError:
            raise NodeSetError(f"node {node!r} is not present") from None

    def pick_shard(self, key: Key) -> int:
        """Return the shard number (slot) that owns ``key``.

        Raises:
            NoNodesError: there is no node.
        """
        return self._index[self.pick(key)]

    def pick(self, key: Key) -> str:
        """Return the node owning ``key``.

        Raises:
            NoNodesError: there is no node.
        """
        state = xxh3_64_intdigest(key.encode() if isinstance(key, str) else key)
        n = self._size
        # The paper's loop, inlined: this is the hot path of every lookup.
        k = state
        b, j = -1, 0
        while j < n:
            b = j
            k = (k * _LCG_MULTIPLIER + 1) & _MASK64
            j = int((b + 1) * (_TWO_POW_31 / ((k >> 33) + 1)))
        try:
            node = self._slots[b]
        except IndexError:
            raise NoNodesError from None
        if node is None:
            return self._after_tombstone(state)
        return node

    def _after_tombstone(self, state: int) -> str:
        slots, n = self._slots, self._size
        for _ in range(MAX_REHASH):
            state = _rehash(state)
            node = slots[jump_hash(state, n)]
            if node is not None:
                return node
        start = state % n
        for offset in range(n):
            node = slots[(start + offset) % n]
            if node is not None:
                return node
        raise NoNodesError  # unreachable: a trailing tombstone is always trimmed

    def pick_many(self, keys: Iterable[Key]) -> list[str]:
        """Return the owner of every key, in order."""
        slots, n, hash64 = self._slots, self._size, xxh3_64_intdigest
        if n == 0:
            if isinstance(keys, list | tuple) and not keys:
                return []
            raise NoNodesError
        out: list[str] = []
        append = out.append
        for key in keys:
            state = hash64(key.encode() if isinstance(key, str) else key)
            k = state
            b, j = -1, 0
            while j < n:
                b = j
                k = (k * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
                j = int((b + 1) * (2147483648.0 / ((k >> 33) + 1)))
            node = slots[b]
            append(self._after_tombstone(state) if node is None else node)
        return out

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Yield every node once: the owner, then salted re-picks, then the rest by slot.

        Replica ``i`` is the jump of the key's state re-hashed ``i`` times, skipping nodes
        already yielded; after ``REPLICA_TRIES`` re-hashes the remaining nodes follow in slot
        order from the last pick, so the list is always complete and deterministic.
        """
        if not self._index:
            return
        first = self.pick(key)
        yield first
        seen = {first}
        total = len(self._index)
        state = xxh3_64_intdigest(key.encode() if isinstance(key, str) else key)
        slot = self._index[first]
        for _ in range(REPLICA_TRIES):
            if len(seen) == total:
                return
            state = _rehash(state)
            slot = jump_hash(state, self._size)
            node = self._slots[slot]
            if node is not None and node not in seen:
                seen.add(node)
                yield node
        for offset in range(1, self._size + 1):
            node = self._slots[(slot + offset) % self._size]
            if node is not None and node not in seen:
                seen.add(node)
                yield node

    def options(self) -> dict[str, Any]:
        return {}

    def _identity(self) -> tuple[object, ...]:
        return tuple(self._slots)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._slots!r})"

    def with_node(self, node: str, weight: float = 1) -> Self:
        """Return a copy with ``node`` in the first empty slot, else in a new last slot.

        Raises:
            NodeSetError: ``node`` is already present, or ``weight`` is not 1.
        """
        if node in self._index:
            raise NodeSetError(f"node {node!r} is already present")
        if weight != 1:
            raise NodeSetError(f"jump hash has no weights (weight {weight!r} for {node!r})")
        slots = list(self._slots)
        try:
            slots[slots.index(None)] = node
        except ValueError:
            slots.append(node)
        return type(self)(slots)

    def without_node(self, node: str) -> Self:
        """Return a copy without ``node``; its slot becomes a tombstone unless it is the last.

        Raises:
            NodeSetError: ``node`` is not present.
        """
        slots = list(self._slots)
        slots[self.shard_of(node)] = None
        return type(self)(slots)
