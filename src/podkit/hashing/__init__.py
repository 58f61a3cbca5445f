"""podkit.hashing: sharding functions that are deterministic, uniform and measured.

Every algorithm is an immutable value with one interface (:class:`ShardingFunction`):
``pick(key)``, ``pick_n(key, n)`` for replicas, ``iter_nodes(key)``, ``pick_many(keys)`` for
bulk users, ``with_node(node, weight=1)`` / ``without_node(node)`` to change the node set,
and ``nodes`` / ``weights``. Keys are ``str`` (hashed as UTF-8) or ``bytes``; the key hash is
stable across processes and machines (see :mod:`podkit.hashing.keyhash`).

* :class:`KetamaRing`: libmemcached-compatible ketama ring (MD5, 160 points per server);
* :class:`RendezvousHash`: weighted highest-random-weight hashing;
* :class:`JumpHash`: Lamping & Veach jump consistent hash, for numbered shards;
* :class:`MaglevTable`: Maglev lookup table (prime size, default 65537);
* :class:`BoundedLoads`: a live-assignment table capping any node at ``c`` x its share.

Example::

    from podkit.hashing import KetamaRing
    ring = KetamaRing(["10.0.0.1:11211", "10.0.0.2:11211"])
    ring.pick("user:42")          # -> "10.0.0.1:11211", in every process
    bigger = ring.with_node("10.0.0.3:11211")   # moves only keys to the new node
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from podkit.hashing.bounded import DEFAULT_BALANCE, BoundedLoads, BoundedLoadsStatistics
from podkit.hashing.interface import (
    HashingError,
    Key,
    NodeSetError,
    NoNodesError,
    ShardingFunction,
)
from podkit.hashing.jump import JumpHash, jump_hash
from podkit.hashing.keyhash import KEY_HASH_NAME, encode_key, key_hash
from podkit.hashing.maglev import DEFAULT_TABLE_SIZE, MaglevTable
from podkit.hashing.rendezvous import RendezvousHash
from podkit.hashing.ring import POINTS_PER_SERVER, KetamaRing, ketama_key_point

ALGORITHMS: dict[str, type[KetamaRing | RendezvousHash | JumpHash | MaglevTable]] = {
    "ring": KetamaRing,
    "rendezvous": RendezvousHash,
    "jump": JumpHash,
    "maglev": MaglevTable,
}
"""Algorithm name (as ``podkit hash --algo`` takes it) -> class."""


def sharding_function(
    algorithm: str,
    nodes: Iterable[str],
    *,
    weights: Mapping[str, float] | None = None,
    **options: Any,
) -> ShardingFunction:
    """Build a sharding function by name.

    Args:
        algorithm: ``ring``, ``rendezvous``, ``jump`` or ``maglev``.
        nodes: node names (for ``jump``, numbered in this order).
        weights: optional weight per node (not for ``jump``).
        options: algorithm options, e.g. ``table_size=`` for ``maglev``.

    Raises:
        NodeSetError: unknown algorithm or option, or an invalid node set.
    """
    try:
        cls = ALGORITHMS[algorithm]
    except KeyError:
        known = ", ".join(ALGORITHMS)
        raise NodeSetError(f"unknown algorithm {algorithm!r} (known: {known})") from None
    try:
        function: ShardingFunction = cls(nodes, weights=weights, **options)
    except TypeError as exc:
        raise NodeSetError(f"{algorithm}: {exc}") from exc
    return function


__all__ = [
    "ALGORITHMS",
    "DEFAULT_BALANCE",
    "DEFAULT_TABLE_SIZE",
    "KEY_HASH_NAME",
    "POINTS_PER_SERVER",
    "BoundedLoads",
    "BoundedLoadsStatistics",
    "HashingError",
    "JumpHash",
    "KetamaRing",
    "Key",
    "MaglevTable",
    "NoNodesError",
    "NodeSetError",
    "RendezvousHash",
    "ShardingFunction",
    "encode_key",
    "jump_hash",
    "ketama_key_point",
    "key_hash",
    "sharding_function",
]
