"""Binds :class:`~podkit.serving.balance.HashPicker` to :mod:`podkit.hashing`.

A sharding function is an immutable value built from a node set; the candidates of a request
change only when an endpoint's state or weight changes (or a retry excludes one), so the
functions are built once per distinct candidate set and kept in a small LRU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

from podkit.hashing import ALGORITHMS, ShardingFunction, sharding_function

DEFAULT_HASH_ALGORITHM = "ring"  # ketama: what HAProxy's "hash-type consistent" and nginx use
HASH_ALGORITHMS = tuple(a for a in ALGORITHMS if a != "jump")  # jump cannot name its nodes
MAX_CACHED_NODE_SETS = 64  # candidate sets seen at once: all-ready plus one per excluded node


class HashingRank:
    """Orders endpoint URLs for a key with a :mod:`podkit.hashing` algorithm.

    Args:
        algorithm: ``ring`` (ketama), ``rendezvous`` or ``maglev``.
    """

    def __init__(self, algorithm: str = DEFAULT_HASH_ALGORITHM) -> None:
        if algorithm not in HASH_ALGORITHMS:
            raise ValueError(f"unknown hash algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._functions: OrderedDict[tuple[tuple[str, float], ...], ShardingFunction] = (
            OrderedDict()
        )
        self._last: tuple[Mapping[str, float], ShardingFunction] | None = None

    def function(self, weights: Mapping[str, float]) -> ShardingFunction:
        """The sharding function over exactly these nodes and weights (cached).

        The same mapping object handed again is taken as unchanged (the picker hands one
        per candidate set), which saves sorting it on every request.
        """
        last = self._last
        if last is not None and last[0] is weights:
            return last[1]
        signature = tuple(sorted(weights.items()))
        function = self._functions.get(signature)
        if function is None:
            function = sharding_function(
                self.algorithm, [n for n, _ in signature], weights=dict(signature)
            )
            self._functions[signature] = function
            if len(self._functions) > MAX_CACHED_NODE_SETS:
                self._functions.popitem(last=False)
        else:
            self._functions.move_to_end(signature)
        self._last = (weights, function)
        return function

    def __call__(self, key: str, weights: Mapping[str, float]) -> Iterator[str]:
        return self.function(weights).iter_nodes(key)

    def first(self, key: str, weights: Mapping[str, float]) -> str:
        """The key's home among these nodes: the first node ``self(key, weights)`` yields."""
        return self.function(weights).pick(key)
