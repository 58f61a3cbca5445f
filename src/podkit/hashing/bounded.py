"""Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam, "Consistent
Hashing with Bounded Loads", SODA 2018), as a sans-IO live-assignment table.

Theory of operation: with ``m`` items currently assigned over nodes of total weight ``W``, a
node of weight ``w`` may hold at most ``ceil(c * (m + 1) * w / W)`` items when one more is
placed (``c >= 1``, default 1.25). A new item walks its key's preference order in the
underlying sharding function (clockwise on a ring, by score for rendezvous...) and goes to the
first node below its capacity. No node therefore ever exceeds ``c`` times its fair share
(plus the rounding of one item), while most keys still land on their consistent-hash owner,
so affinity (sessions, caches) survives; for ``c = 1 + e`` the paper bounds the expected
number of items moved per update by ``O(1 / e**2)``.

The capacities always sum to more than ``m``, so a node below capacity always exists. The
object never reads a clock or a socket: the caller ``assign``s when a request or session
starts and ``release``s when it ends, and changes the node set with ``add_node`` and
``remove_node`` (the removed node's items are the caller's to re-assign).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

from podkit.hashing._nodes import validate_weight
from podkit.hashing.interface import Key, NodeSetError, NoNodesError, ShardingFunction

DEFAULT_BALANCE = 1.25  # 25% headroom per node: few keys spill, no node above 1.25x its share
MIN_BALANCE = 1.0  # below 1 the capacities cannot hold every item


@dataclass(frozen=True, slots=True)
class BoundedLoadsStatistics:
    """A snapshot of a :class:`BoundedLoads` table.

    Attributes:
        balance: the factor ``c``.
        total: items assigned now.
        loads: items per node.
        peak: the largest load.
        peak_to_mean: ``peak / (total / nodes)`` (0 when nothing is assigned).
        spilled: assignments so far that did not go to the key's first choice.
    """

    balance: float
    total: int
    loads: Mapping[str, int]
    peak: int
    peak_to_mean: float
    spilled: int


class BoundedLoads:
    """Live assignment of keys to nodes, no node above ``balance`` times its fair share.

    Args:
        function: the sharding function that gives each key's preference order.
        balance: the factor ``c >= 1`` (default 1.25).

    Raises:
        NodeSetError: ``balance`` is below 1 or not a finite number.
    """

    __slots__ = ("_balance", "_factors", "_function", "_loads", "_spilled", "_total")

    def __init__(self, function: ShardingFunction, *, balance: float = DEFAULT_BALANCE) -> None:
        try:
            value = validate_weight("<balance>", balance)
        except NodeSetError:
            raise NodeSetError(f"balance must be a finite number >= 1, not {balance!r}") from None
        if value < MIN_BALANCE:
            raise NodeSetError(f"balance must be >= {MIN_BALANCE}, not {balance!r}")
        self._balance = value
        self._function = function
        self._loads: dict[str, int] = dict.fromkeys(function.nodes, 0)
        self._total = 0
        self._spilled = 0
        self._factors: dict[str, tuple[int, int]] = {}
        self._refresh()

    def _refresh(self) -> None:
        # capacity(node) = ceil(c * (m + 1) * w / W), kept as an exact fraction p/q per node
        # so a float rounding never lets a node take one item more or less than its bound.
        weights = self._function.weights
        total = sum(Fraction(w) for w in weights.values())
        balance = Fraction(repr(self._balance))
        self._factors = {}
        for node, weight in weights.items():
            share = balance * Fraction(weight) / total
            self._factors[node] = (share.numerator, share.denominator)

    @property
    def function(self) -> ShardingFunction:
        """The underlying sharding function (replaced by ``add_node``/``remove_node``)."""
        return self._function

    @property
    def balance(self) -> float:
        """The factor ``c``."""
        return self._balance

    @property
    def total(self) -> int:
        """The number of items assigned now."""
        return self._total

    @property
    def loads(self) -> Mapping[str, int]:
        """Items per node now (a read-only view)."""
        return MappingProxyType(self._loads)

    def capacity(self, node: str) -> int:
        """Return how many items ``node`` may hold when the next item is placed.

        Raises:
            NodeSetError: ``node`` is not present.
        """
        try:
            numerator, denominator = self._factors[node]
        except KeyError:
            raise NodeSetError(f"node {node!r} is not present") from None
        return -(-(numerator * (self._total + 1)) // denominator)

    def pick(self, key: Key) -> str:
        """Return the node ``assign(key)`` would choose now, without assigning.

        Raises:
            NoNodesError: there is no node.
        """
        return self._choose(key)[0]

    def _choose(self, key: Key) -> tuple[str, bool]:
        first = self._function.pick(key)
        loads, factors, wanted = self._loads, self._factors, self._total + 1
        numerator, denominator = factors[first]
        if loads[first] * denominator < numerator * wanted:
            return first, False
        for node in self._function.iter_nodes(key):
            numerator, denominator = factors[node]
            # load < ceil(p * wanted / q)  <=>  load * q < p * wanted  (integers)
            if loads[node] * denominator < numerator * wanted:
                return node, True
        raise NoNodesError("every node is at capacity")  # unreachable for balance >= 1

    def assign(self, key: Key) -> str:
        """Assign one item with ``key``: return its node and count it in that node's load.

        Raises:
            NoNodesError: there is no node.
        """
        node, spilled = self._choose(key)
        self._loads[node] += 1
        self._total += 1
        self._spilled += spilled
        return node

    def release(self, node: str, count: int = 1) -> None:
        """Forget ``count`` items assigned to ``node`` (their requests or sessions ended).

        Raises:
            NodeSetError: ``node`` is not present or holds fewer than ``count`` items.
        """
        load = self._loads.get(node)
        if load is None:
            raise NodeSetError(f"node {node!r} is not present")
        if count < 0 or count > load:
            raise NodeSetError(f"cannot release {count} item(s) from {node!r}, which holds {load}")
        self._loads[node] = load - count
        self._total -= count

    def set_load(self, node: str, load: int) -> None:
        """Set ``node``'s load to a count measured elsewhere (e.g. open connections).

        Raises:
            NodeSetError: ``node`` is not present or ``load`` is negative.
        """
        current = self._loads.get(node)
        if current is None:
            raise NodeSetError(f"node {node!r} is not present")
        if isinstance(load, bool) or not isinstance(load, int) or load < 0:
            raise NodeSetError(f"load of {node!r} must be an integer >= 0, not {load!r}")
        self._loads[node] = load
        self._total += load - current

    def add_node(self, node: str, weight: float = 1) -> None:
        """Add ``node`` (load 0) to the underlying function.

        Raises:
            NodeSetError: ``node`` is already present or the weight is invalid.
        """
        validate_weight(node, weight)
        self._function = self._function.with_node(node, weight)
        self._loads[node] = 0
        self._refresh()

    def remove_node(self, node: str) -> int:
        """Remove ``node``; return how many items it held (now the caller's to re-assign).

        Raises:
            NodeSetError: ``node`` is not present.
        """
        self._function = self._function.without_node(node)
        dropped = self._loads.pop(node)
        self._total -= dropped
        self._refresh()
        return dropped

    def statistics(self) -> BoundedLoadsStatistics:
        """Return a frozen snapshot of the loads."""
        loads = dict(self._loads)
        peak = max(loads.values(), default=0)
        mean = self._total / len(loads) if loads else 0.0
        return BoundedLoadsStatistics(
            balance=self._balance,
            total=self._total,
            loads=MappingProxyType(loads),
            peak=peak,
            peak_to_mean=peak / mean if mean else 0.0,
            spilled=self._spilled,
        )
