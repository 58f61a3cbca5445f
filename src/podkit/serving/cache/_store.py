"""The object store: responses by cache key and Vary variant, bounded by bytes (LRU).

Theory of operation. The primary key is the request's host and target (RFC 9111 §2). A
response that carries ``Vary`` is stored with the *secondary key*: the values the request
had for the named headers (§4.1), normalised so that ``a,b`` and ``a, b`` match. Several
variants live under one primary key; a lookup returns the most recently stored one whose
secondary key matches the new request.

Every object counts its body, its headers and a fixed overhead against ``max_bytes``; when a
new object does not fit, the least recently *used* objects are evicted until it does.
Objects larger than ``max_object`` are never stored (the caller streams them through).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from podkit.serving.cache._rules import Headers, header_values, vary_names

DEFAULT_MAX_SIZE = 256 * 1024 * 1024  # 256 MiB: Varnish's malloc default order of magnitude
DEFAULT_MAX_OBJECT = 8 * 1024 * 1024  # 8 MiB: larger bodies stream through uncached
OBJECT_OVERHEAD = 256  # bytes of bookkeeping per object, so empty bodies still cost something

VariantKey = tuple[tuple[str, str], ...]
# Where one object lives: its primary key, its variant, and whether it is a partial (206)
# response, kept beside the complete one of the same variant (RFC 9111 §3.3).
Slot = tuple[str, VariantKey, bool]


# Fields whose members are case-insensitive and whose order carries no meaning once each
# member keeps its own q-value (RFC 9110 §12.5): "en, de" and "DE,en" select one variant.
UNORDERED_FIELDS = frozenset({"accept-language", "accept-encoding"})


def normalise_field(values: Sequence[str], *, unordered: bool = False) -> str:
    """Combine a header's field lines into one comparable value (RFC 9111 §4.1).

    Args:
        values: the field lines.
        unordered: the members are case-insensitive and their order does not matter.
    """
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if unordered:
        parts = sorted("".join(part.lower().split()) for part in parts)
    return ",".join(parts)


def secondary_key(names: Sequence[str], request_headers: Headers) -> VariantKey:
    """The request's values for the headers a response varies on."""
    return tuple(
        (
            name,
            normalise_field(
                header_values(request_headers, name), unordered=name in UNORDERED_FIELDS
            ),
        )
        for name in names
    )


@dataclass(slots=True)
class StoredResponse:
    """A response kept by the cache, with the times RFC 9111's age calculation needs.

    Attributes:
        key: the primary cache key.
        status: the status code.
        headers: end-to-end response headers as received (hop-by-hop ones removed).
        body: the whole body.
        request_time: when the request that produced it was sent (epoch seconds).
        response_time: when it was received (epoch seconds).
        variant: the secondary key (empty without ``Vary``).
        omitted: lower-cased fields never sent when the response is served from the store
            (a qualified ``no-cache`` or ``private`` names them).
    """

    key: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    request_time: float
    response_time: float
    variant: VariantKey = ()
    omitted: frozenset[str] = frozenset()
    size: int = field(init=False)
    # Derived once from the (never mutated) headers: a hit must not re-parse dates and
    # directives. Filled in by CachePolicy on first use.
    derived: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.size = self.compute_size()
        self.derived = {}

    def compute_size(self) -> int:
        """Bytes this object counts against the cache's limit."""
        head = sum(len(n) + len(v) + 4 for n, v in self.headers)
        return len(self.body) + head + len(self.key) + OBJECT_OVERHEAD

    @property
    def partial(self) -> bool:
        """Whether this is a stored 206 (a part of the representation)."""
        return self.status == 206

    @property
    def slot(self) -> Slot:
        """Where the store keeps it."""
        return (self.key, self.variant, self.status == 206)

    @property
    def vary(self) -> tuple[str, ...]:
        """The header names this response varies on."""
        return tuple(name for name, _ in self.variant)

    def matches(self, request_headers: Headers) -> bool:
        """Whether this variant was selected by a request with these headers."""
        return secondary_key(self.vary, request_headers) == self.variant


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A frozen view of the store."""

    objects: int
    bytes: int
    max_bytes: int
    evictions: int


class ObjectStore:
    """Responses by primary key and variant, bounded by bytes with LRU eviction.

    Args:
        max_bytes: total bytes the objects may use.
        max_object: the largest object that may be stored.
    """

    def __init__(
        self, *, max_bytes: int = DEFAULT_MAX_SIZE, max_object: int = DEFAULT_MAX_OBJECT
    ) -> None:
        if max_bytes < 0 or max_object < 0:
            raise ValueError("sizes must be non-negative")
        self.max_bytes = max_bytes
        self.max_object = max_object
        self._lru: OrderedDict[Slot, StoredResponse] = OrderedDict()
        self._variants: dict[str, list[tuple[VariantKey, bool]]] = {}
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._variants

    def fits(self, size: int) -> bool:
        """Whether an object of ``size`` bytes (body and headers) may be stored at all."""
        return size <= self.max_object and size <= self.max_bytes

    def lookup(
        self, key: str, request_headers: Headers, *, partial: bool = False
    ) -> StoredResponse | None:
        """The most recently stored variant of ``key`` that matches the request (marks it used).

        Args:
            key: the primary key.
            request_headers: select the variant.
            partial: look for a stored 206 instead of a complete response.
        """
        for variant, is_partial in reversed(self._variants.get(key, ())):
            if is_partial != partial:
                continue
            slot = (key, variant, is_partial)
            entry = self._lru[slot]
            if entry.matches(request_headers):
                self._lru.move_to_end(slot)
                return entry
        return None

    def partial_of(self, entry: StoredResponse) -> StoredResponse | None:
        """The stored 206 of ``entry``'s variant, if any (not marked used)."""
        return self._lru.get((entry.key, entry.variant, True))

    def primary_keys(self) -> list[str]:
        """Every primary key with at least one stored variant."""
        return list(self._variants)

    def variants(self, key: str) -> list[StoredResponse]:
        """Every stored variant of ``key`` (oldest first), without marking them used."""
        return [self._lru[(key, v, p)] for v, p in self._variants.get(key, ())]

    def put(self, entry: StoredResponse) -> list[StoredResponse]:
        """Store ``entry``, replacing the object with the same secondary key (a complete
        response also replaces the partial one of its variant).

        Returns:
            The objects evicted to make room (not counting the one replaced). An entry that
            does not fit (see :meth:`fits`) is not stored and returned alone.
        """
        entry.size = entry.compute_size()
        slot = entry.slot
        self._remove(slot)
        if not entry.partial:
            self._remove((entry.key, entry.variant, True))
        if not self.fits(entry.size):
            return [entry]
        evicted = []
        while self._lru and self.bytes + entry.size > self.max_bytes:
            oldest = next(iter(self._lru))
            evicted.append(self._lru[oldest])
            self._remove(oldest)
            self.evictions += 1
        self._lru[slot] = entry
        self._variants.setdefault(entry.key, []).append((entry.variant, entry.partial))
        self.bytes += entry.size
        return evicted

    def replace(self, old: StoredResponse, new: StoredResponse) -> list[StoredResponse]:
        """Swap a stored object for its refreshed version (after a 304)."""
        self._remove(old.slot)
        return self.put(new)

    def _remove(self, slot: Slot) -> StoredResponse | None:
        entry = self._lru.pop(slot, None)
        if entry is None:
            return None
        self.bytes -= entry.size
        variants = self._variants[slot[0]]
        variants.remove((slot[1], slot[2]))
        if not variants:
            del self._variants[slot[0]]
        return entry

    def invalidate(self, key: str) -> int:
        """Remove every variant of ``key``. Returns how many objects were removed."""
        removed = 0
        for variant, partial in list(self._variants.get(key, ())):
            if self._remove((key, variant, partial)) is not None:
                removed += 1
        return removed

    def clear(self) -> int:
        """Remove everything. Returns how many objects were removed."""
        count = len(self._lru)
        self._lru.clear()
        self._variants.clear()
        self.bytes = 0
        return count

    def statistics(self) -> StoreStatistics:
        """A frozen snapshot of the store."""
        return StoreStatistics(
            objects=len(self._lru),
            bytes=self.bytes,
            max_bytes=self.max_bytes,
            evictions=self.evictions,
        )


def variant_for(request_headers: Headers, response_headers: Headers) -> VariantKey:
    """The secondary key under which a response to this request is stored."""
    return secondary_key(vary_names(response_headers), request_headers)
