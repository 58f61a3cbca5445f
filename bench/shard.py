"""Benchmark ``podkit shard`` against nutcracker (twemproxy) over the same shards.

Four redis-servers and four memcached servers; in front of them, one after the other,
nutcracker and ``podkit shard`` (and ``podkit shard --workers 2``), each pinned to core 0
(the two workers get cores 0 and 1). The load generators and the shards share core 1:

* Redis: ``redis-benchmark -P 16 -c 50 -t set,get`` (pipelines of 16), ops/s and p99;
* memcached: ``memcaslap`` (libmemcached-tools; 90 % get, 10 % set, 100-byte values), ops/s.

Rounds alternate the proxies and each figure is the median of the rounds, because the
machine is shared. Also prints the direct (no proxy) figure of one shard, for scale.

    .venv/bin/python bench/shard.py                 # 3 rounds, both protocols
    .venv/bin/python bench/shard.py --rounds 1 --requests 100000 --protocols redis
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from podkit.testing import (
    MemcachedServer,
    NutcrackerServer,
    PodkitProcess,
    RedisServer,
    free_port,
    wait_port,
)

CORE_PROXY = "0"
CORE_LOAD = "1"


@dataclass
class Figures:
    ops: list[float]
    p99_ms: list[float]

    def median_ops(self) -> float:
        return statistics.median(self.ops) if self.ops else 0.0

    def median_p99(self) -> float | None:
        return statistics.median(self.p99_ms) if self.p99_ms else None


def pin(pid: int, cores: str) -> None:
    subprocess.run(["taskset", "-apc", cores, str(pid)], capture_output=True, check=False)


def redis_benchmark(port: int, requests: int) -> tuple[float, float]:
    """ops/s (mean of SET and GET) and the worse p99 in ms."""
    out = subprocess.run(
        ["taskset", "-c", CORE_LOAD, "redis-benchmark", "-p", str(port), "-P", "16",
         "-c", "50", "-n", str(requests), "-t", "set,get", "-r", "100000", "--csv"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    rows = [line.replace('"', "").split(",") for line in out.splitlines()[1:] if line]
    ops = statistics.mean(float(row[1]) for row in rows)
    p99 = max(float(row[6]) for row in rows)
    return ops, p99


def memcaslap(port: int, seconds: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", CORE_LOAD, "memcaslap", "-s", f"127.0.0.1:{port}", "-T", "1",
         "-c", "64", "-t", f"{seconds}s", "-X", "100"],
        capture_output=True, text=True, check=False, timeout=seconds + 60,
    ).stdout  # fmt: skip
    match = re.search(r"TPS: (\d+)", out)
    return float(match.group(1)) if match else 0.0


@contextlib.contextmanager
def podkit_shard(protocol: str, servers: list[tuple[str, int]], workers: int) -> Iterator[int]:
    port = free_port()
    args = ["shard", "--protocol", protocol, "--listen", f"127.0.0.1:{port}", "--log-level",
            "warning", "--workers", str(workers)]  # fmt: skip
    for name, shard_port in servers:
        args += ["--shard", f"{name}=127.0.0.1:{shard_port}"]
    with PodkitProcess(*args) as proc:
        wait_port("127.0.0.1", port, timeout=30)
        pin(proc.pid, CORE_PROXY if workers == 1 else f"{CORE_PROXY},{CORE_LOAD}")
        yield port


@contextlib.contextmanager
def nutcracker(protocol: str, servers: list[tuple[str, int]]) -> Iterator[int]:
    named = [(name, "127.0.0.1", port) for name, port in servers]
    with NutcrackerServer(named, redis=protocol == "redis") as server:
        wait_port("127.0.0.1", server.port)
        assert server.process is not None
        pin(server.process.pid, CORE_PROXY)
        yield server.port


def run(protocol: str, rounds: int, requests: int, seconds: int) -> dict[str, Figures]:
    server_class = RedisServer if protocol == "redis" else MemcachedServer
    results = {
        name: Figures([], [])
        for name in ("nutcracker", "podkit shard", "podkit shard --workers 2", "direct")
    }
    with contextlib.ExitStack() as stack:
        shards = [stack.enter_context(server_class()) for _ in range(4)]
        for shard in shards:
            assert shard.process is not None
            pin(shard.process.pid, CORE_LOAD)
        servers = [(f"s{i}", s.port) for i, s in enumerate(shards)]

        def measure(name: str, port: int) -> None:
            if protocol == "redis":
                ops, p99 = redis_benchmark(port, requests)
                results[name].p99_ms.append(p99)
            else:
                ops = memcaslap(port, seconds)
            results[name].ops.append(ops)
            print(f"  {protocol} {name}: {ops:,.0f} ops/s", file=sys.stderr)

        for round_ in range(rounds):
            print(f"{protocol} round {round_ + 1}/{rounds}", file=sys.stderr)
            with nutcracker(protocol, servers) as port:
                measure("nutcracker", port)
            with podkit_shard(protocol, servers, 1) as port:
                measure("podkit shard", port)
            with podkit_shard(protocol, servers, 2) as port:
                measure("podkit shard --workers 2", port)
            measure("direct", shards[0].port)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400_000, help="per redis-benchmark run")
    parser.add_argument("--seconds", type=int, default=5, help="per memcaslap run")
    parser.add_argument("--protocols", default="redis,memcached")
    args = parser.parse_args()
    for protocol in args.protocols.split(","):
        results = run(protocol, args.rounds, args.requests, args.seconds)
        base = results["nutcracker"].median_ops() or 1.0
        print(f"\n{protocol} ({args.rounds} rounds, medians)")
        print("| proxy | ops/s | p99 | vs nutcracker |")
        print("|---|---|---|---|")
        for name, figures in results.items():
            p99 = figures.median_p99()
            shown = f"{p99:.2f} ms" if p99 is not None else "n/a"
            print(f"| {name} | {figures.median_ops():,.0f} | {shown} | "
                  f"{figures.median_ops() / base:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
