"""Hot keys: how even is the load over the shards under Zipf traffic, with and without
``podkit shard``'s hot-key replication? A seeded simulation of the router (the same code the
proxy runs): Zipf(0.99) requests over 1,000,000 keys and 10 shards.

    .venv/bin/python bench/shard_hotkeys.py                        # 1,000,000 requests, ring
    .venv/bin/python bench/shard_hotkeys.py --requests 300000 --algorithms ring,maglev
"""

from __future__ import annotations

import argparse
import time

from podkit.ambassador.shard._simulate import simulate, zipf_keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--exponent", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--algorithms", default="ring")
    args = parser.parse_args()
    keys = zipf_keys(args.requests, keyspace=args.keys, exponent=args.exponent, seed=args.seed)
    print(
        f"Zipf({args.exponent}) over {args.keys:,} keys, {args.requests:,} requests, "
        f"{args.shards} shards, seed {args.seed}"
    )
    print("| algorithm | hot keys | busiest shard / mean | routing time |")
    print("|---|---|---|---|")
    for algorithm in args.algorithms.split(","):
        for hot in (False, True):
            started = time.perf_counter()
            spread = simulate(keys, shards=args.shards, hot_keys=hot, algorithm=algorithm)
            took = time.perf_counter() - started
            print(
                f"| {algorithm} | {'on' if hot else 'off'} | {spread.peak:.3f} | "
                f"{took / args.requests * 1e6:.2f} µs/request |"
            )


if __name__ == "__main__":
    main()
