"""The interface every podkit sharding function shares, and the errors it raises.

A *sharding function* maps a key (``str`` or ``bytes``) to one of a set of named nodes. Every
implementation is an immutable value: changing the node set builds a new instance
(:meth:`ShardingFunction.with_node`, :meth:`ShardingFunction.without_node`), so a reader
holding the old one keeps a consistent view while a new one is published.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol, Self, TypeAlias, runtime_checkable

from podkit.errors import EXIT_USAGE, PodkitError

Key: TypeAlias = str | bytes
"""A key to shard: ``str`` (hashed as UTF-8) or ``bytes``."""


class HashingError(PodkitError):
    """Root of the errors raised by :mod:`podkit.hashing`."""


class NodeSetError(HashingError, ValueError):
    """A node set, a weight or an option cannot work (duplicate or unknown node, weight <= 0,
    a table size that is not prime...). The CLI reports it as a usage error (exit 2)."""

    exit_code = EXIT_USAGE


class NoNodesError(HashingError, LookupError):
    """A key was looked up in a sharding function that has no node."""

    def __init__(self, message: str = "the sharding function has no node") -> None:
        super().__init__(message)


@runtime_checkable
class ShardingFunction(Protocol):
    """What every sharding function offers (ring, rendezvous, jump, Maglev).

    Node names are free strings such as ``"10.0.0.1:11211"``. Lookups never depend on the
    process (no built-in ``hash()``), so every process that builds the same function from the
    same nodes and weights answers the same for every key.
    """

    algorithm: str
    """Short name of the algorithm: ``ring``, ``rendezvous``, ``jump`` or ``maglev``."""

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes, in the order they were given (and added)."""
        ...

    @property
    def weights(self) -> Mapping[str, float]:
        """The weight of each node (1 unless given)."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, node: object) -> bool: ...

    def pick(self, key: Key) -> str:
        """Return the node that owns ``key``.

        Raises:
            NoNodesError: the function has no node.
        """
        ...

    def pick_n(self, key: Key, n: int) -> list[str]:
        """Return up to ``n`` distinct nodes for ``key`` in preference order (replicas).

        The first is :meth:`pick`'s answer, and ``pick_n(key, m)`` is a prefix of
        ``pick_n(key, n)`` for ``m < n``. Fewer than ``n`` come back only when the function
        has fewer nodes.
        """
        ...

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Yield every node once, in ``key``'s preference order (lazily where possible)."""
        ...

    def pick_many(self, keys: Iterable[Key]) -> list[str]:
        """Return ``[pick(k) for k in keys]``, computed faster than one call per key."""
        ...

    def with_node(self, node: str, weight: float = 1) -> Self:
        """Return a copy with ``node`` added (minimal movement: only keys to ``node`` move).

        Raises:
            NodeSetError: ``node`` is already present, or the weight is invalid.
        """
        ...

    def without_node(self, node: str) -> Self:
        """Return a copy without ``node`` (only the keys it owned move).

        Raises:
            NodeSetError: ``node`` is not present.
        """
        ...
