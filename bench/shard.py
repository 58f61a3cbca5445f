"""Benchmark ``podkit shard`` against nutcracker (twemproxy) over the same shards.

Four redis-servers and four memcached servers; in front of them, one after the other,
nutcracker and ``podkit shard`` (and ``podkit shard --workers 2``), each pinned to core 0
(the two workers get cores 0 and 1). The load generators and the shards share core 1:

* Redis: ``redis-benchmark -P 16 -c 50 -t set,get`` (pipelines of 16), ops/s and p99;
* memcached: ``memcaslap`` (libmemcached-tools; 90 % get, 10 % set, 100-byte values), ops/s,
  and this script's own pipelined loader (50 connections, 16 requests in flight on each,
  14 gets and 2 sets of 100 bytes per batch, as redis-benchmark -P 16 does), ops/s and p99.

Rounds alternate the proxies and each figure is the median of the rounds, because the
machine is shared. Also prints the direct (no proxy) figure of one shard, for scale.

    .venv/bin/python bench/shard.py                 # 3 rounds, both protocols
    .venv/bin/python bench/shard.py --rounds 1 --requests 100000 --protocols redis
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

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
    pipelined_ops: list[float] = field(default_factory=list)
    pipelined_p99_ms: list[float] = field(default_factory=list)

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


def _batches(count: int, depth: int, seed: int) -> list[tuple[bytes, int]]:
    """Pipelined memcached batches: (bytes, replies expected), 2 sets per 16 requests."""
    rng = random.Random(seed)
    value = b"x" * 100
    batches = []
    for _ in range(count):
        parts = []
        for i in range(depth):
            key = b"key:%d" % rng.randrange(100_000)
            if i % 8 == 7:
                parts.append(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
            else:
                parts.append(b"get %s\r\n" % key)
        batches.append((b"".join(parts), depth))
    return batches


def memcached_pipeline_load(port: int, seconds: float, connections: int, depth: int) -> None:
    """Run the pipelined loader; prints ``ops p99_ms`` (run in its own process)."""
    batches = _batches(64, depth, seed=port)
    selector = selectors.DefaultSelector()
    socks = []
    for index in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        state = {"batch": index % len(batches), "got": 0, "tail": b"", "sent": 0.0}
        selector.register(sock, selectors.EVENT_READ, state)
        socks.append((sock, state))
    latencies: list[float] = []
    done = 0
    started = time.perf_counter()
    deadline = started + seconds

    def send(sock: socket.socket, state: dict[str, Any]) -> None:
        state["batch"] = (state["batch"] + 1) % len(batches)
        state["got"] = 0
        state["sent"] = time.perf_counter()
        sock.sendall(batches[state["batch"]][0])

    for sock, state in socks:
        sock.setblocking(True)
        send(sock, state)
        sock.setblocking(False)
    while time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = cast(socket.socket, key.fileobj)
            state = key.data
            data = state["tail"] + sock.recv(1 << 16)
            # Replies end in "END\r\n" (get) or "STORED\r\n" (set); values are all "x".
            state["got"] += data.count(b"END\r\n") + data.count(b"STORED\r\n")
            state["tail"] = data[-8:]
            state["got"] -= state["tail"].count(b"END\r\n") + state["tail"].count(b"STORED\r\n")
            if (
                state["got"] + state["tail"].count(b"END\r\n") + state["tail"].count(b"STORED\r\n")
                >= batches[state["batch"]][1]
            ):
                latencies.append(time.perf_counter() - state["sent"])
                done += batches[state["batch"]][1]
                state["tail"] = b""
                sock.setblocking(True)
                send(sock, state)
                sock.setblocking(False)
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0
    print(f"{done / elapsed:.0f} {p99:.3f}")


def memcached_pipelined(port: int, seconds: int) -> tuple[float, float]:
    out = subprocess.run(
        ["taskset", "-c", CORE_LOAD, sys.executable, __file__, "--memcached-load", str(port),
         "--seconds", str(seconds)],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1])


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
                piped, p99 = memcached_pipelined(port, seconds)
                results[name].pipelined_ops.append(piped)
                results[name].pipelined_p99_ms.append(p99)
                print(f"  {protocol} {name}: pipelined {piped:,.0f} ops/s", file=sys.stderr)
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
    parser.add_argument("--memcached-load", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memcached_load:
        memcached_pipeline_load(args.memcached_load, args.seconds, connections=50, depth=16)
        return
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
        if protocol == "memcached":
            piped = {n: statistics.median(f.pipelined_ops) for n, f in results.items()}
            print("\npipelined loader (50 connections x 16 in flight)")
            print("| proxy | ops/s | p99 | vs nutcracker |")
            print("|---|---|---|---|")
            for name, figures in results.items():
                p99 = statistics.median(figures.pipelined_p99_ms)
                print(f"| {name} | {piped[name]:,.0f} | {p99:.2f} ms | "
                      f"{piped[name] / (piped['nutcracker'] or 1.0):.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
