"""Node-set bookkeeping shared by the sharding functions (validation, weights, copies)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from types import MappingProxyType
from typing import Any, Self

from podkit.hashing.interface import Key, NodeSetError

MAX_NODES = 100_000  # far above any real shard count; keeps table builds and scans bounded


def validate_weight(node: str, weight: float) -> float:
    """Return ``weight`` as a float, or raise :class:`NodeSetError` if it is not finite and > 0."""
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise NodeSetError(f"weight of node {node!r} must be a number, not {weight!r}")
    value = float(weight)
    if not math.isfinite(value) or value <= 0:
        raise NodeSetError(f"weight of node {node!r} must be a finite number > 0, not {weight!r}")
    return value


def normalise_nodes(
    nodes: Iterable[str], weights: Mapping[str, float] | None
) -> tuple[tuple[str, ...], dict[str, float]]:
    """Validate a node list and its weights; return the nodes and every node's weight.

    Raises:
        NodeSetError: a node is empty, not a string or repeated; a weight names an unknown
            node or is not a finite number > 0; there are more than ``MAX_NODES`` nodes.
    """
    if isinstance(nodes, str | bytes):
        raise NodeSetError(f"nodes is a list of names, not one string ({nodes!r})")
    listed = tuple(nodes)
    if len(listed) > MAX_NODES:
        raise NodeSetError(f"at most {MAX_NODES} nodes are supported, got {len(listed)}")
    seen: set[str] = set()
    for node in listed:
        if not isinstance(node, str) or not node:
            raise NodeSetError(f"a node name is a non-empty string, not {node!r}")
        if node in seen:
            raise NodeSetError(f"node {node!r} is listed twice")
        seen.add(node)
    given = dict(weights or {})
    unknown = sorted(set(given) - seen)
    if unknown:
        raise NodeSetError(f"weight given for unknown node(s): {', '.join(unknown)}")
    return listed, {node: validate_weight(node, given.get(node, 1.0)) for node in listed}


class NodeSet:
    """Base of the sharding functions: an immutable, validated list of weighted nodes.

    Subclasses implement ``pick``, ``pick_many`` and ``iter_nodes``; ``options()`` returns
    the keyword arguments that rebuild an equal instance from the node list.
    """

    algorithm = "?"
    __slots__ = ("_nodes", "_weights")

    def __init__(self, nodes: Iterable[str], *, weights: Mapping[str, float] | None = None) -> None:
        self._nodes, self._weights = normalise_nodes(nodes, weights)

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    @property
    def weights(self) -> Mapping[str, float]:
        return MappingProxyType(self._weights)

    def options(self) -> dict[str, Any]:
        """Keyword arguments (besides nodes and weights) that rebuild this instance."""
        return {}

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._weights

    def _identity(self) -> tuple[object, ...]:
        """What makes two instances of one class equal (the answers they give)."""
        return (tuple(self._weights.items()), tuple(sorted(self.options().items())))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, NodeSet)
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._identity()))

    def __repr__(self) -> str:
        extra = "".join(f", {name}={value!r}" for name, value in self.options().items())
        weighted = {n: w for n, w in self._weights.items() if w != 1.0}
        weights = f", weights={weighted!r}" if weighted else ""
        return f"{type(self).__name__}({list(self._nodes)!r}{weights}{extra})"

    def iter_nodes(self, key: Key) -> Iterator[str]:
        raise NotImplementedError

    def pick_n(self, key: Key, n: int) -> list[str]:
        """Return up to ``n`` distinct nodes for ``key``, in preference order.

        Raises:
            NodeSetError: ``n`` is negative.
        """
        if n < 0:
            raise NodeSetError(f"n must be >= 0, not {n}")
        return list(islice(self.iter_nodes(key), n))

    def with_node(self, node: str, weight: float = 1) -> Self:
        """Return a copy with ``node`` added with ``weight``.

        Raises:
            NodeSetError: ``node`` is already present or the weight is invalid.
        """
        if node in self._weights:
            raise NodeSetError(f"node {node!r} is already present")
        weights = dict(self._weights)
        weights[node] = weight
        return type(self)([*self._nodes, node], weights=weights, **self.options())

    def without_node(self, node: str) -> Self:
        """Return a copy without ``node``.

        Raises:
            NodeSetError: ``node`` is not present.
        """
        if node not in self._weights:
            raise NodeSetError(f"node {node!r} is not present")
        weights = {n: w for n, w in self._weights.items() if n != node}
        return type(self)([n for n in self._nodes if n != node], weights=weights, **self.options())
