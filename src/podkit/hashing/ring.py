"""A consistent-hash ring compatible with libmemcached's ketama.

Theory of operation (Karger et al. 1997; ketama, last.fm 2007; libmemcached's
``update_continuum``): every server is placed at many points of a 32-bit circle and a key
belongs to the first server point at or after the key's own point, wrapping at the top.
Adding a server only takes the arcs that end at its new points, so only the keys it now owns
move (about 1/(N+1) of them); removing one hands its arcs to the next points clockwise.

Compatibility, so podkit can sit beside existing memcached clients and twemproxy:

* a server named ``NAME`` gets ``POINTS_PER_SERVER`` (160) points: for ``i`` in
  ``0..39`` the MD5 digest of ``"NAME-i"`` gives four points, its bytes 0-3, 4-7, 8-11 and
  12-15 each read as a little-endian 32-bit number. Name servers as the other clients do:
  libmemcached uses ``host`` for port 11211 and ``host:port`` otherwise; twemproxy and
  uhashring use the configured name;
* weighted, a server with weight ``w`` out of a total ``W`` over ``N`` servers gets
  ``floor(40 * N * w / W) * 4`` points (libmemcached computes the same with a float and an
  epsilon; this computes it exactly);
* a key's point is the first four bytes of ``MD5(key)``, little-endian, and it belongs to the
  first point ``>=`` it (the binary search of libmemcached and twemproxy);
* two servers on one point (a 32-bit collision, rare) are ordered by name, so the ring does
  not depend on the order servers were listed.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import struct
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from fractions import Fraction
from typing import Any

from podkit.hashing._nodes import NodeSet
from podkit.hashing.interface import Key, NoNodesError

POINTS_PER_SERVER = 160  # libmemcached MEMCACHED_POINTS_PER_SERVER_KETAMA
POINTS_PER_HASH = 4  # one MD5 digest is four 32-bit points
HASHES_PER_SERVER = POINTS_PER_SERVER // POINTS_PER_HASH


def _load_md5() -> Callable[[bytes], Any]:
    # CPython's own MD5 (module _md5) skips OpenSSL's per-call context set-up: about 1.5x
    # faster on short keys, which is most of a ring lookup. Same digest either way.
    try:
        module = importlib.import_module("_md5")
    except ImportError:  # an interpreter built without it
        return hashlib.md5
    md5: Callable[[bytes], Any] = module.md5
    return md5


_md5 = _load_md5()
_first_u32 = struct.Struct("<I").unpack_from
_four_u32 = struct.Struct("<4I").unpack


def ketama_key_point(key: Key) -> int:
    """Return a key's point on the ketama circle: MD5 bytes 0-3, little-endian."""
    data = key.encode() if isinstance(key, str) else bytes(key)
    point: int = _first_u32(_md5(data).digest())[0]
    return point


def ketama_hash_count(weight: float, total_weight: float, server_count: int) -> int:
    """Return how many MD5 digests (four points each) a server of ``weight`` gets.

    ``floor(40 * N * w / W)``, computed exactly; 40 for every server when weights are equal.
    """
    exact = Fraction(HASHES_PER_SERVER * server_count) * Fraction(weight) / Fraction(total_weight)
    return math.floor(exact)


class KetamaRing(NodeSet):
    """A ketama-compatible consistent-hash ring (160 MD5 points per server, weighted).

    Args:
        nodes: server names such as ``"10.0.0.1:11211"``; the order does not matter.
        weights: optional weight per server (default 1); a server's share of the points is
            its share of the total weight, as libmemcached's weighted ketama gives.

    Raises:
        NodeSetError: a name is repeated or empty, or a weight is not > 0.
    """

    algorithm = "ring"
    __slots__ = ("_owners", "_points")

    def __init__(self, nodes: Iterable[str], *, weights: Mapping[str, float] | None = None) -> None:
        super().__init__(nodes, weights=weights)
        total = sum(self._weights.values())
        count = len(self._nodes)
        placed: list[tuple[int, str]] = []
        for node in self._nodes:
            hashes = ketama_hash_count(self._weights[node], total, count)
            for i in range(hashes):
                digest = _md5(f"{node}-{i}".encode()).digest()
                placed.extend((point, node) for point in _four_u32(digest))
        placed.sort()
        self._points = [point for point, _ in placed]
        # One extra owner past the end: a key above the last point wraps to the first one,
        # without a branch in the lookup.
        self._owners = [node for _, node in placed]
        if placed:
            self._owners.append(placed[0][1])

    @property
    def points(self) -> list[tuple[int, str]]:
        """The continuum: ``(point, server)`` pairs in ascending point order."""
        return list(zip(self._points, self._owners, strict=False))

    def pick(self, key: Key) -> str:
        """Return the server owning ``key`` (first point at or after the key's MD5 point).

        Raises:
            NoNodesError: the ring is empty.
        """
        try:
            data = key.encode() if isinstance(key, str) else key
            return self._owners[bisect_left(self._points, _first_u32(_md5(data).digest())[0])]
        except IndexError:
            raise NoNodesError from None

    def pick_many(self, keys: Iterable[Key]) -> list[str]:
        """Return the owner of every key, in order (one call for many keys)."""
        if not self._points:
            if isinstance(keys, list | tuple) and not keys:
                return []
            raise NoNodesError
        points, owners, md5, first_u32, search = (
            self._points,
            self._owners,
            _md5,
            _first_u32,
            bisect_left,
        )
        return [
            owners[
                search(points, first_u32(md5(k.encode() if isinstance(k, str) else k).digest())[0])
            ]
            for k in keys
        ]

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Yield every server once, walking the ring clockwise from ``key``'s point.

        Servers without points (a tiny weight) come last, by name.
        """
        if not self._nodes:
            return
        points, owners = self._points, self._owners
        start = bisect_left(points, ketama_key_point(key))
        seen: set[str] = set()
        size = len(points)
        for offset in range(size):
            node = owners[(start + offset) % size]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self._nodes):
                    return
        yield from sorted(set(self._nodes) - seen)
