"""``podkit hash bench``: balance, movement, lookup rate and memory of each algorithm.

For each algorithm and node count it builds the function over nodes named
``10.0.X.Y:11211``, looks up ``key:0`` .. ``key:K-1`` and reports:

* peak-to-mean load and the standard deviation of the load (as a share of the mean);
* the fraction of keys whose node changed when one node is added (ideal ``1/(N+1)``) and
  when one is removed (ideal ``1/N``; jump removes its last shard, the others a middle node);
* single lookups per second (``pick`` in a loop) and batch lookups per second (``pick_many``),
  each the fastest of many runs of ``CHUNK`` keys (five passes over the timed keys);
* the memory the built function holds (tracemalloc).

A bounded-loads row assigns every key through :class:`BoundedLoads` over the ring, and, when
``uhashring`` is installed, a peer row measures its ketama ring on the same keys.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from podkit.hashing import (
    ALGORITHMS,
    BoundedLoads,
    KetamaRing,
    ketama_key_point,
    sharding_function,
)
from podkit.hashing.interface import ShardingFunction

DEFAULT_KEYS = 1_000_000
DEFAULT_NODE_COUNTS = (10, 100)
DEFAULT_SINGLE_KEYS = 100_000  # enough for a stable per-call rate, a fraction of a second
DEFAULT_BALANCES = (1.25, 1.1)  # the library default, and one tight enough to engage at N=100
# Rates are the fastest of many short runs (CHUNK keys each, PASSES over the timed keys), as
# timeit does: other processes share the machine, and a short run can dodge them.
CHUNK = 2_000
PASSES = 5


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One line of the benchmark (fields ``None`` when not measured for that row)."""

    algorithm: str
    nodes: int
    keys: int
    peak_to_mean: float
    stdev_pct: float
    moved_add: float | None
    moved_remove: float | None
    ideal_add: float
    ideal_remove: float
    lookups_per_s: float
    batch_per_s: float | None
    memory_bytes: int | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_names(count: int) -> list[str]:
    """``count`` memcached-style node names: ``10.0.0.0:11211``, ``10.0.0.1:11211``..."""
    return [f"10.0.{i // 256}.{i % 256}:11211" for i in range(count)]


def _moved(before: Sequence[str], after: Sequence[str]) -> float:
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


def _balance(owners: Sequence[str], nodes: int) -> tuple[float, float]:
    counts = Counter(owners)
    loads = [*counts.values()] + [0] * (nodes - len(counts))
    mean = len(owners) / nodes
    return max(loads) / mean, 100.0 * statistics.pstdev(loads) / mean


def _chunks(keys: Sequence[str]) -> list[Sequence[str]]:
    return [keys[i : i + CHUNK] for i in range(0, len(keys), CHUNK)] * PASSES


def _rate(lookup: Callable[[str], object], keys: Sequence[str]) -> float:
    """Single lookups per second: the fastest of many short loops over ``CHUNK`` keys."""
    best = math.inf
    for chunk in _chunks(keys):
        start = time.perf_counter()
        for key in chunk:
            lookup(key)
        best = min(best, (time.perf_counter() - start) / len(chunk))
    return 1 / best


def _batch_rate(lookup: Callable[[Sequence[str]], object], keys: Sequence[str]) -> float:
    """Batch lookups per second: the fastest of many calls over ``CHUNK`` keys each."""
    best = math.inf
    for chunk in _chunks(keys):
        start = time.perf_counter()
        lookup(chunk)
        best = min(best, (time.perf_counter() - start) / len(chunk))
    return 1 / best


def _memory(build: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def bench_algorithm(
    algorithm: str, count: int, keys: Sequence[str], single_keys: Sequence[str]
) -> BenchRow:
    """Measure one algorithm at one node count."""
    nodes = node_names(count + 1)
    base_nodes, extra = nodes[:count], nodes[count]
    function: ShardingFunction = sharding_function(algorithm, base_nodes)
    memory = _memory(lambda: sharding_function(algorithm, base_nodes))
    owners = function.pick_many(keys)
    single_rate = _rate(function.pick, single_keys)
    batch_rate = _batch_rate(function.pick_many, single_keys)
    peak, stdev = _balance(owners, count)
    moved_add = _moved(owners, function.with_node(extra).pick_many(keys))
    victim = base_nodes[-1] if algorithm == "jump" else base_nodes[count // 2]
    moved_remove = _moved(owners, function.without_node(victim).pick_many(keys))
    return BenchRow(
        algorithm=algorithm,
        nodes=count,
        keys=len(keys),
        peak_to_mean=peak,
        stdev_pct=stdev,
        moved_add=moved_add,
        moved_remove=moved_remove,
        ideal_add=1 / (count + 1),
        ideal_remove=1 / count,
        lookups_per_s=single_rate,
        batch_per_s=batch_rate,
        memory_bytes=memory,
    )


def bench_bounded(count: int, keys: Sequence[str], balance: float) -> BenchRow:
    """Assign every key through bounded loads over the ketama ring; measure the caps."""
    table = BoundedLoads(KetamaRing(node_names(count)), balance=balance)
    assign = table.assign
    best = math.inf
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        start = time.perf_counter()
        for key in chunk:
            assign(key)
        best = min(best, (time.perf_counter() - start) / len(chunk))
    rate = 1 / best
    stats = table.statistics()
    loads = list(stats.loads.values())
    mean = stats.total / count
    return BenchRow(
        algorithm=f"bounded(ring,c={balance:g})",
        nodes=count,
        keys=len(keys),
        peak_to_mean=stats.peak_to_mean,
        stdev_pct=100.0 * statistics.pstdev(loads) / mean,
        moved_add=None,
        moved_remove=None,
        ideal_add=1 / (count + 1),
        ideal_remove=1 / count,
        lookups_per_s=rate,
        batch_per_s=None,
        memory_bytes=None,
        note=f"assign/s; {stats.spilled / len(keys):.2%} of keys placed past their owner",
    )


def bench_uhashring(count: int, keys: Sequence[str], single_keys: Sequence[str]) -> BenchRow | None:
    """Measure uhashring's ketama ring (the peer), or return None if it is not installed."""
    try:
        from uhashring import HashRing  # type: ignore[import-untyped]
    except ImportError:
        return None
    nodes = node_names(count + 1)
    base_nodes = nodes[:count]
    ring = HashRing(base_nodes, hash_fn="ketama")
    memory = _memory(lambda: HashRing(base_nodes, hash_fn="ketama"))
    get_node = ring.get_node
    single_rate = _rate(get_node, single_keys)
    owners = [get_node(key) for key in keys]
    peak, stdev = _balance(owners, count)
    ring = KetamaRing(base_nodes)
    points = {point for point, _ in ring.points}
    differ = [k for k, a, b in zip(keys, ring.pick_many(keys), owners, strict=True) if a != b]
    # uhashring takes the first point above a key's point, libmemcached (and podkit) the first
    # point at or above it: only a key exactly on a point can differ.
    on_point = sum(ketama_key_point(k) in points for k in differ)
    return BenchRow(
        algorithm="uhashring(ketama)",
        nodes=count,
        keys=len(keys),
        peak_to_mean=peak,
        stdev_pct=stdev,
        moved_add=None,
        moved_remove=None,
        ideal_add=1 / (count + 1),
        ideal_remove=1 / count,
        lookups_per_s=single_rate,
        batch_per_s=None,
        memory_bytes=memory,
        note=f"peer; {len(differ)} keys differ from ring ({on_point} exactly on a point)",
    )


def run_bench(
    *,
    key_count: int = DEFAULT_KEYS,
    node_counts: Sequence[int] = DEFAULT_NODE_COUNTS,
    algorithms: Sequence[str] = tuple(ALGORITHMS),
    balances: Sequence[float] = DEFAULT_BALANCES,
    single_count: int = DEFAULT_SINGLE_KEYS,
    peer: bool = True,
    progress: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Run the benchmark; call ``progress`` with each row as it is measured."""
    keys = [f"key:{i}" for i in range(key_count)]
    single_keys = keys[: min(single_count, key_count)]
    rows: list[BenchRow] = []

    def emit(row: BenchRow | None) -> None:
        if row is not None:
            rows.append(row)
            if progress is not None:
                progress(row)

    for count in node_counts:
        for algorithm in algorithms:
            emit(bench_algorithm(algorithm, count, keys, single_keys))
        for balance in balances:
            emit(bench_bounded(count, keys, balance))
        if peer:
            emit(bench_uhashring(count, keys, single_keys))
    return rows


HEADER = (
    f"{'algorithm':<22} {'N':>4} {'peak/mean':>9} {'stdev%':>7} {'moved+1':>8} {'ideal':>7}"
    f" {'moved-1':>8} {'ideal':>7} {'lookups/s':>11} {'batch/s':>11} {'memory':>9}  note"
)


def format_row(row: BenchRow) -> str:
    """One aligned text line for ``row`` (see ``HEADER``)."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    batch = "-" if row.batch_per_s is None else f"{row.batch_per_s:,.0f}"
    memory = "-" if row.memory_bytes is None else f"{row.memory_bytes / 1024:,.0f}KiB"
    return (
        f"{row.algorithm:<22} {row.nodes:>4} {row.peak_to_mean:>9.3f} {row.stdev_pct:>7.2f}"
        f" {pct(row.moved_add):>8} {pct(row.ideal_add):>7} {pct(row.moved_remove):>8}"
        f" {pct(row.ideal_remove):>7} {row.lookups_per_s:>11,.0f} {batch:>11} {memory:>9}"
        f"  {row.note}"
    ).rstrip()
