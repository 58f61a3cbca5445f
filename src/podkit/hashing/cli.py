"""``podkit hash``: look keys up in a sharding function, and ``podkit hash bench``.

``podkit hash --algo ring|rendezvous|jump|maglev [--bounded-load C] --nodes a,b,c KEY...``
prints ``KEY NODE`` per key, in the order given (``-`` reads keys from stdin, one per line).
``podkit hash bench`` measures every algorithm (see :mod:`podkit.hashing._bench`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from podkit.cli import BytesArgument, PodkitGroup
from podkit.hashing import (
    ALGORITHMS,
    DEFAULT_TABLE_SIZE,
    BoundedLoads,
    NodeSetError,
    ShardingFunction,
    sharding_function,
)
from podkit.hashing._bench import (
    DEFAULT_BALANCES,
    DEFAULT_KEYS,
    DEFAULT_SINGLE_KEYS,
    HEADER,
    BenchRow,
    format_row,
    run_bench,
)
from podkit.hashing.keyhash import KEY_HASH_NAME

MAX_BENCH_KEYS = 100_000_000  # ~8 GiB of key strings: beyond that the bench measures swap


class HashGroup(PodkitGroup):
    """``podkit hash``: its own options and keys, unless the first word names a subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            # "podkit hash bench ...": the lookup options keep their defaults and the rest of
            # the words belong to the subcommand.
            super().parse_args(ctx, [])
            # click >= 8.2 keeps the subcommand word in _protected_args, 8.1 in protected_args.
            slot = "_protected_args" if hasattr(ctx, "_protected_args") else "protected_args"
            setattr(ctx, slot, [args[0]])
            ctx.args = args[1:]
            return ctx.args
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(
            ctx.command_path, "[OPTIONS] --nodes A,B,... KEY...  |  bench [OPTIONS]"
        )


class _KeysArgument(BytesArgument):
    """The KEY... words; left out of subcommand paths ("podkit hash bench", not "... KEY...")."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        # Only subcommand paths ask for these: the group writes its own usage line.
        return []


def _parse_nodes(value: str) -> list[str]:
    nodes = [part.strip() for part in value.split(",")]
    if any(not node for node in nodes):
        raise click.BadParameter(f"empty node name in {value!r}", param_hint="'--nodes'")
    return nodes


def _parse_weights(values: tuple[str, ...]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in values:
        node, sep, number = item.rpartition("=")
        try:
            weight = float(number)
        except ValueError:
            weight = math.nan
        if not sep or not node or not math.isfinite(weight) or weight <= 0:
            raise click.BadParameter(
                f"expected NODE=WEIGHT with a weight > 0, got {item!r}", param_hint="'--weight'"
            )
        weights[node] = weight
    return weights


def _keys(words: tuple[str, ...]) -> Iterator[bytes]:
    """The keys as the bytes given: a key is hashed as it is, even when it is not UTF-8."""
    for word in words:
        if word == "-":
            for line in sys.stdin.buffer:
                yield line.rstrip(b"\r\n")
        else:
            yield os.fsencode(word)


@click.group(
    "hash",
    cls=HashGroup,
    invoke_without_command=True,
    context_settings={"allow_interspersed_args": True},
)
@click.option(
    "--algo",
    type=click.Choice(list(ALGORITHMS)),
    default="ring",
    show_default=True,
    help="Sharding algorithm: ketama ring, rendezvous (HRW), jump (numbered shards), maglev.",
)
@click.option(
    "--nodes",
    metavar="A,B,...",
    help="Comma-separated node names (free strings such as 10.0.0.1:11211); "
    "for jump, numbered in this order.",
)
@click.option(
    "--weight",
    "weights",
    metavar="NODE=W",
    multiple=True,
    help="Weight of a node (repeatable; default 1; not for jump).",
)
@click.option(
    "--bounded-load",
    "bounded_load",
    type=float,
    metavar="C",
    default=None,
    show_default="off",
    help="Cap every node at C x its share (C >= 1, e.g. 1.25): the keys are assigned in "
    "order as live items, each to the first node of its preference order below the cap.",
)
@click.option(
    "--table-size",
    type=int,
    default=DEFAULT_TABLE_SIZE,
    show_default=True,
    help="Maglev lookup-table size (a prime, at least 100 x the node count for 1% balance).",
)
@click.argument("words", metavar="KEY...", nargs=-1, cls=_KeysArgument)
@click.pass_context
def command(
    ctx: click.Context,
    algo: str,
    nodes: str | None,
    weights: tuple[str, ...],
    bounded_load: float | None,
    table_size: int,
    words: tuple[str, ...],
) -> None:
    """Print the node of each KEY, one "KEY NODE" line per key in the order given.

    KEY "-" reads keys from standard input, one per line. Put "--" before keys that start
    with "-". Keys are hashed as the bytes given (UTF-8 text, or any bytes) with the stable
    key hash (xxh3-64; the ring uses MD5 as ketama does), so every process and machine gives
    the same answer.

    Example: podkit hash --algo maglev --nodes 10.0.0.1:11211,10.0.0.2:11211 user:1 user:2
    """
    if ctx.invoked_subcommand is not None:
        return
    if nodes is None:
        if not words:
            click.echo(ctx.get_help())
            ctx.exit(0)
        raise click.UsageError("--nodes is required to look keys up", ctx=ctx)
    if not words:
        raise click.UsageError("give at least one KEY (or - to read keys from stdin)", ctx=ctx)
    options: dict[str, Any] = {}
    if algo == "maglev":
        options["table_size"] = table_size
    elif table_size != DEFAULT_TABLE_SIZE:
        raise click.UsageError("--table-size applies to --algo maglev only", ctx=ctx)
    try:
        function: ShardingFunction = sharding_function(
            algo, _parse_nodes(nodes), weights=_parse_weights(weights), **options
        )
        table = None if bounded_load is None else BoundedLoads(function, balance=bounded_load)
    except NodeSetError as exc:
        raise click.UsageError(str(exc), ctx=ctx) from exc
    keys = list(_keys(words))
    owners = function.pick_many(keys) if table is None else [table.assign(k) for k in keys]
    out = sys.stdout.buffer
    for key, node in zip(keys, owners, strict=True):
        out.write(key + b" " + node.encode() + b"\n")
    out.flush()


@command.command("bench")
@click.option(
    "--keys",
    "key_count",
    type=click.IntRange(1, MAX_BENCH_KEYS),
    default=DEFAULT_KEYS,
    show_default=True,
    help="Keys to place (key:0, key:1, ...).",
)
@click.option(
    "--node-counts",
    default="10,100",
    show_default=True,
    metavar="N,N,...",
    help="Node counts to measure.",
)
@click.option(
    "--algo",
    "algorithms",
    default=",".join(ALGORITHMS),
    show_default=True,
    metavar="A,B,...",
    help="Algorithms to measure.",
)
@click.option(
    "--balance",
    "balances",
    default=",".join(f"{c:g}" for c in DEFAULT_BALANCES),
    show_default=True,
    metavar="C,C,...",
    help="Factors c (>= 1) of the bounded-loads rows (over the ring).",
)
@click.option(
    "--single-keys",
    type=click.IntRange(1, MAX_BENCH_KEYS),
    default=DEFAULT_SINGLE_KEYS,
    show_default=True,
    help="Keys timed for lookups/s and batch/s (fastest run of 2,000 keys, 5 passes).",
)
@click.option(
    "--peer/--no-peer",
    default=True,
    show_default=True,
    help="Also measure uhashring's ketama ring, if installed.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: an aligned table; json: one object per line.",
)
def bench(
    key_count: int,
    node_counts: str,
    algorithms: str,
    balances: str,
    single_keys: int,
    peer: bool,
    output_format: str,
) -> None:
    """Measure balance, movement on add/remove, lookups/s and memory of each algorithm.

    Columns: peak/mean load, load standard deviation (% of mean), keys moved when one node
    is added (moved+1, ideal 1/(N+1)) and removed (moved-1, ideal 1/N), single lookups per
    second, batch lookups per second (pick_many), memory of the built function.
    """
    try:
        counts = [int(part) for part in node_counts.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected numbers such as 10,100, got {node_counts!r}", param_hint="'--node-counts'"
        ) from None
    if any(count < 1 or count > 10_000 for count in counts):
        raise click.BadParameter("node counts are 1..10000", param_hint="'--node-counts'")
    try:
        factors = [float(part) for part in balances.split(",")]
    except ValueError:
        factors = [math.nan]
    if not all(math.isfinite(c) and c >= 1.0 for c in factors):
        raise click.BadParameter(
            f"expected factors >= 1 such as 1.25,1.1, got {balances!r}", param_hint="'--balance'"
        )
    names = [part.strip() for part in algorithms.split(",")]
    unknown = [name for name in names if name not in ALGORITHMS]
    if unknown:
        raise click.BadParameter(
            f"unknown algorithm(s) {', '.join(unknown)} (known: {', '.join(ALGORITHMS)})",
            param_hint="'--algo'",
        )

    def show(row: BenchRow) -> None:
        if output_format == "json":
            click.echo(json.dumps(row.as_dict()))
        else:
            click.echo(format_row(row))

    if output_format == "text":
        click.echo(
            f"# {key_count:,} keys; key hash {KEY_HASH_NAME} (ring: ketama MD5); "
            f"python {sys.version.split()[0]}"
        )
        click.echo(HEADER)
    run_bench(
        key_count=key_count,
        node_counts=counts,
        algorithms=names,
        balances=factors,
        single_count=single_keys,
        peer=peer,
        progress=show,
    )
