"""Maglev hashing: a lookup table filled by per-node permutations (Eisenbud et al., "Maglev: A
Fast and Reliable Software Network Load Balancer", NSDI 2016, section 3.4).

Theory of operation: every node has a permutation of the table's ``M`` slots (``M`` prime),
``offset + j * skip mod M`` with ``offset = h1(name) mod M`` and
``skip = h2(name) mod (M - 1) + 1``. Nodes take turns claiming their next preferred free
slot until the table is full, so each node owns ``M / N`` slots give or take one (with
weights, each turn gives a node ``w / max(w)`` of a claim). A lookup is one hash and one list
index, O(1) whatever ``N`` is. The table is built in O(M log M).

Maglev trades a little disruption for that balance: when a node goes, its slots go to the
others, but the turn order shifts and a small share of other slots change owner too (the
paper measures this share and finds it small when ``M`` is much larger than ``N``). Use a
table size at least 100 times the node count for per-node imbalance under 1%, as the paper
advises; ``podkit hash bench`` prints the movement beside the ideal.

Nodes are placed in name order while filling, so the table depends only on the node set.
``h1`` and ``h2`` are the low and high halves of XXH3-128 of the node name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from xxhash import xxh3_64_intdigest

from podkit.hashing._nodes import NodeSet
from podkit.hashing.interface import Key, NodeSetError, NoNodesError
from podkit.hashing.keyhash import node_hash128

DEFAULT_TABLE_SIZE = 65537  # the paper's small table size: prime, about 650 slots/node at 100
MAX_TABLE_SIZE = 10_000_019  # largest supported (prime); 80 MiB of slots, seconds to build
_MASK64 = 0xFFFFFFFFFFFFFFFF


def is_prime(value: int) -> bool:
    """Return whether ``value`` is prime (trial division: table sizes are small)."""
    if value < 2:
        return False
    if value % 2 == 0:
        return value == 2
    divisor = 3
    while divisor * divisor <= value:
        if value % divisor == 0:
            return False
        divisor += 2
    return True


def build_table(nodes: list[str], weights: list[float], size: int) -> list[int]:
    """Return the Maglev table: slot -> index into ``nodes`` (the paper's Populate).

    Args:
        nodes: node names in fill order.
        weights: the weight of each node (> 0).
        size: the table size ``M``, a prime at least ``len(nodes)``.
    """
    count = len(nodes)
    if count == 0:
        return []
    positions: list[int] = []
    skips: list[int] = []
    for name in nodes:
        digest = node_hash128(name)
        positions.append((digest & _MASK64) % size)
        skips.append((digest >> 64) % (size - 1) + 1)
    table = [-1] * size
    filled = 0
    heaviest = max(weights)
    shares = [weight / heaviest for weight in weights]
    credit = [0.0] * count
    uniform = all(share == 1.0 for share in shares)
    while True:
        for i in range(count):
            if uniform:
                turns = 1
            else:
                credit[i] += shares[i]
                turns = int(credit[i])
                credit[i] -= turns
            for _ in range(turns):
                slot, skip = positions[i], skips[i]
                while table[slot] >= 0:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = i
                slot += skip
                positions[i] = slot - size if slot >= size else slot
                filled += 1
                if filled == size:
                    return table


class MaglevTable(NodeSet):
    """Maglev consistent hashing: O(1) lookups through a prime-sized table, weighted.

    Args:
        nodes: node names; the order does not matter.
        weights: optional weight per node (default 1); a node gets about ``w / W`` of slots.
        table_size: the table size ``M``, prime (default 65537), at least the node count.

    Raises:
        NodeSetError: a name is repeated or empty, a weight is not > 0, or the table size is
            not a prime in ``[node count, MAX_TABLE_SIZE]``.
    """

    algorithm = "maglev"
    __slots__ = ("_lookup", "_size")

    def __init__(
        self,
        nodes: Iterable[str],
        *,
        weights: Mapping[str, float] | None = None,
        table_size: int = DEFAULT_TABLE_SIZE,
    ) -> None:
        super().__init__(nodes, weights=weights)
        if isinstance(table_size, bool) or not isinstance(table_size, int):
            raise NodeSetError(f"table size must be an integer, not {table_size!r}")
        if not is_prime(table_size) or table_size > MAX_TABLE_SIZE:
            raise NodeSetError(
                f"table size must be a prime <= {MAX_TABLE_SIZE} (such as 65537), not {table_size}"
            )
        if table_size < len(self._nodes):
            raise NodeSetError(
                f"table size {table_size} is smaller than the node count {len(self._nodes)}"
            )
        self._size = table_size
        ordered = sorted(self._nodes)
        indices = build_table(ordered, [self._weights[n] for n in ordered], table_size)
        # The hot path indexes a list of names directly: no second indirection per lookup.
        self._lookup = [ordered[i] for i in indices]

    @property
    def table_size(self) -> int:
        """The table size ``M``."""
        return self._size

    @property
    def table(self) -> list[str]:
        """A copy of the table: slot -> node."""
        return list(self._lookup)

    def options(self) -> dict[str, Any]:
        return {"table_size": self._size}

    def pick(self, key: Key) -> str:
        """Return the node owning ``key``: ``table[key_hash(key) mod M]``.

        Raises:
            NoNodesError: there is no node.
        """
        try:
            return self._lookup[
                xxh3_64_intdigest(key.encode() if isinstance(key, str) else key) % self._size
            ]
        except IndexError:
            raise NoNodesError from None

    def pick_many(self, keys: Iterable[Key]) -> list[str]:
        """Return the owner of every key, in order."""
        lookup, size, hash64 = self._lookup, self._size, xxh3_64_intdigest
        if not lookup:
            if isinstance(keys, list | tuple) and not keys:
                return []
            raise NoNodesError
        return [lookup[hash64(k.encode() if isinstance(k, str) else k) % size] for k in keys]

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Yield every node once: the owner, then new owners met walking the table onward.

        A node with no slot (possible only with extreme weights) comes last, by name.
        """
        lookup, size = self._lookup, self._size
        if not lookup:
            return
        start = xxh3_64_intdigest(key.encode() if isinstance(key, str) else key) % size
        seen: set[str] = set()
        total = len(self._nodes)
        for offset in range(size):
            node = lookup[(start + offset) % size]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == total:
                    return
        yield from sorted(set(self._nodes) - seen)
