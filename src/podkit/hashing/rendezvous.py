"""Rendezvous (highest random weight) hashing, weighted.

Theory of operation (Thaler & Ravishankar 1998; weighted form by Schindelhauer & Schomaker
2005, "logarithmic method"): every node scores every key with an independent hash, and the
key goes to the highest score. Removing a node only moves the keys it won (each to its
runner-up); adding one only takes the keys it now wins: movement is exactly minimal. With
weights, a node's score is ``-w / ln(u)`` where ``u`` in (0, 1) is its hash of the key, which
makes each node win with probability ``w / W``. A lookup costs one hash per node, O(N); the
preference list (replicas) is the nodes sorted by score.

The hash of key ``k`` for node ``n`` is XXH3-64 of ``k`` seeded with the node's own key hash,
so node scores are independent and stable across processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from math import log
from operator import add, mul, rshift, truediv

from xxhash import xxh3_64_intdigest

from podkit.hashing._nodes import NodeSet
from podkit.hashing.interface import Key, NoNodesError
from podkit.hashing.keyhash import key_hash

_UNIT = 2.0**-53  # 53-bit mantissa: (h >> 11 + 0.5) * 2**-53 is exact and strictly in (0, 1)


class RendezvousHash(NodeSet):
    """Weighted rendezvous (HRW) hashing over named nodes.

    Args:
        nodes: node names; the order only breaks exact score ties (never seen in practice).
        weights: optional weight per node (default 1): node ``i`` wins ``w_i / W`` of keys.

    Raises:
        NodeSetError: a name is repeated or empty, or a weight is not > 0.
    """

    algorithm = "rendezvous"
    __slots__ = ("_count", "_negative_weights", "_seeds", "_uniform")

    def __init__(self, nodes: Iterable[str], *, weights: Mapping[str, float] | None = None) -> None:
        super().__init__(nodes, weights=weights)
        self._seeds = [key_hash(node) for node in self._nodes]
        self._count = len(self._nodes)
        self._uniform = len(set(self._weights.values())) <= 1
        self._negative_weights = [-self._weights[node] for node in self._nodes]

    def _scores(self, data: bytes) -> Sequence[float]:
        n = self._count
        hashes = list(map(xxh3_64_intdigest, repeat(data, n), self._seeds))
        if self._uniform:
            return hashes
        # -w / ln(u) with u = ((h >> 11) + 0.5) * 2**-53, all in C-level maps.
        units = map(
            mul, map(add, map(rshift, hashes, repeat(11, n)), repeat(0.5, n)), repeat(_UNIT, n)
        )
        return list(map(truediv, self._negative_weights, map(log, units)))

    def pick(self, key: Key) -> str:
        """Return the node with the highest score for ``key``.

        Raises:
            NoNodesError: there is no node.
        """
        scores = self._scores(key.encode() if isinstance(key, str) else key)
        try:
            return self._nodes[scores.index(max(scores))]
        except ValueError:
            raise NoNodesError from None

    def pick_many(self, keys: Iterable[Key]) -> list[str]:
        """Return the owner of every key, in order."""
        nodes, scores_of = self._nodes, self._scores
        if not nodes:
            if isinstance(keys, list | tuple) and not keys:
                return []
            raise NoNodesError
        out: list[str] = []
        append = out.append
        for key in keys:
            scores = scores_of(key.encode() if isinstance(key, str) else key)
            append(nodes[scores.index(max(scores))])
        return out

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Yield every node once, by decreasing score for ``key``."""
        scores = self._scores(key.encode() if isinstance(key, str) else key)
        order = sorted(range(self._count), key=scores.__getitem__, reverse=True)
        return (self._nodes[i] for i in order)
