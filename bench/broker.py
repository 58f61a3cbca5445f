"""Benchmark ``podkit broker --mode tcp`` against HAProxy ``mode tcp`` in front of redis-server.

Run from the repository root (installs haproxy and redis-tools when missing):

    bench/broker.sh                       # 5 rounds, 1,000,000 requests per throughput test
    bench/broker.sh --quick               # 3 rounds, 500,000 requests, 2,000 paced GETs
    bench/broker.sh --rounds 7 --requests 2000000 --paced 10000
    bench/broker.sh --quick --splice-only # also the broker splicing from the first byte

redis-server and redis-benchmark share core 1; the forwarder under test gets core 0 (HAProxy
``nbthread 1``; the broker, one process). The three targets (redis direct, HAProxy, the
broker) run side by side for the whole benchmark and are measured in interleaved rounds, each
round in a rotated order, so a burst of load from elsewhere on the machine hits one round of
each target rather than all rounds of one. Every figure is the median over the rounds, with
the spread (lowest-highest) beside it; ratios are taken within a round (the targets of one
round ran seconds apart) and their median reported.

- Throughput: ``redis-benchmark -P 16 -c 50 -t set,get -n REQUESTS`` (pipelined); ops/s is
  the mean of SET/s and GET/s. The forwarder's CPU time per request (user + system, from
  /proc) is printed too: it does not depend on what else the machine runs nearly as much as
  ops/s does.
- Latency per hop: GETs paced at 1,000 per second on one connection (each sent on its
  schedule, not after the previous answer, so queueing shows), ``--paced`` of them per round;
  the added p99 is the forwarder's p99 minus the direct p99 of the same round. And
  ``redis-benchmark -c 1 -P 1`` (one request at a time), whose p99 is reported the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving_harness import (
    CORE_LOAD,
    CORE_UNDER_TEST,
    ensure_tools,
    find,
    free_port,
    pinned,
    process,
)

PACKAGES = {"haproxy": "haproxy", "redis-benchmark": "redis-tools", "redis-server": "redis-server"}
DIRECT, HAPROXY, BROKER = "direct", "HAProxy mode tcp (nbthread 1)", "podkit broker --mode tcp"
SPLICE_ONLY = "podkit broker --splice-above 0"
PACED_RATE = 1000  # GETs per second on one connection


def haproxy_conf(tmp: Path, port: int, upstream: int) -> Path:
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        textwrap.dedent(f"""
        global
            nbthread 1
            maxconn 4096
        defaults
            mode tcp
            timeout connect 2s
            timeout client 1h
            timeout server 1h
        frontend fe
            bind 127.0.0.1:{port}
            default_backend be
        backend be
            server redis 127.0.0.1:{upstream}
        """)
    )
    return conf


def broker_argv(port: int, env: Path, redis_port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "podkit", "broker", "--listen", f"127.0.0.1:{port}",
        "--env-from", f"file:{env}", "--map", f"bench=127.0.0.1:{redis_port}",
        "--log-level", "warning", *extra,
    ]  # fmt: skip


def bench(port: int, *args: str) -> dict[str, dict[str, float]]:
    argv = pinned(
        CORE_LOAD,
        [find("redis-benchmark") or "redis-benchmark", "-p", str(port), "--csv", *args],
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return {row["test"]: {k: float(v) for k, v in row.items() if k != "test"} for row in rows}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds used so far by ``pid`` (0 for none)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paced_p99(port: int, *, rate: int = PACED_RATE, count: int = 5000) -> tuple[float, float]:
    """p50 and p99 (ms) of GETs sent at ``rate`` per second on one connection, each request
    sent on its schedule (not after the previous answer), so queueing shows in the latency."""

    async def run() -> tuple[float, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        command = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"
        sent: list[float] = []
        latencies: list[float] = []

        async def receive() -> None:
            for index in range(count):
                line = await reader.readline()
                if line.startswith(b"$") and line[1:2] != b"-":
                    await reader.readexactly(int(line[1:]) + 2)
                latencies.append(time.perf_counter() - sent[index])

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for index in range(count):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(time.perf_counter())
            writer.write(command)
        await receiver
        writer.close()
        ordered = sorted(latencies)
        return ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000

    return asyncio.run(run())


@dataclass
class Figures:
    """One target's measurements, one entry per round."""

    ops: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)  # ops / HAProxy's ops, same round
    cpu_us: list[float] = field(default_factory=list)  # forwarder CPU per request
    c1_p99: list[float] = field(default_factory=list)
    c1_added: list[float] = field(default_factory=list)
    paced_p50: list[float] = field(default_factory=list)
    paced_p99: list[float] = field(default_factory=list)
    paced_added: list[float] = field(default_factory=list)


def spread(values: list[float], fmt: str) -> str:
    """``median (lowest-highest)``, or ``-`` for no values."""
    if not values:
        return "-"
    med = format(statistics.median(values), fmt)
    if len(values) == 1:
        return med
    return f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 500,000 requests")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 3)")
    parser.add_argument("--requests", type=int, help="per throughput test (default 1,000,000)")
    parser.add_argument("--paced", type=int, help="paced GETs per round (default 5,000)")
    parser.add_argument(
        "--splice-only",
        action="store_true",
        help="also measure the broker splicing from the first byte (--splice-above 0)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    n = args.requests or (500_000 if args.quick else 1_000_000)
    paced_count = args.paced or (2_000 if args.quick else 5_000)
    if min(rounds, n, paced_count) < 1:
        parser.error("--rounds, --requests and --paced take a positive number")
    ensure_tools(PACKAGES)
    load_start = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load_start[0]:.2f} at start; "
        f"{rounds} rounds, {n:,} requests per throughput test, {paced_count:,} paced GETs"
    )
    with tempfile.TemporaryDirectory(prefix="podkit-bench-broker-") as tmpdir:
        tmp = Path(tmpdir)
        redis_port, ha_port, broker_port = free_port(), free_port(), free_port()
        (tmp / "env").write_text("bench\n")
        forwarders = {
            HAPROXY: (
                [find("haproxy") or "haproxy", "-db", "-f",
                 str(haproxy_conf(tmp, ha_port, redis_port))], ha_port),
            BROKER: (broker_argv(broker_port, tmp / "env", redis_port), broker_port),
        }  # fmt: skip
        if args.splice_only:
            port = free_port()
            argv = broker_argv(port, tmp / "env", redis_port, "--splice-above", "0")
            forwarders[SPLICE_ONLY] = (argv, port)
        redis_argv = [
            find("redis-server") or "redis-server", "--port", str(redis_port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        ports: dict[str, int] = {DIRECT: redis_port}
        pids: dict[str, int | None] = {DIRECT: None}
        figures = {name: Figures() for name in (DIRECT, *forwarders)}
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                process(pinned(CORE_LOAD, redis_argv), redis_port, tmp / "redis.log")
            )
            for name, (argv, port) in forwarders.items():
                proc = stack.enter_context(
                    process(pinned(CORE_UNDER_TEST, argv), port, tmp / f"{port}.log")
                )
                ports[name], pids[name] = port, proc.pid  # taskset execs the target
            names = list(figures)
            for port in ports.values():
                bench(port, "-n", "20000", "-P", "16", "-t", "set,get")  # warm-up
            for index in range(rounds):
                order = names[index % len(names) :] + names[: index % len(names)]
                ops: dict[str, float] = {}
                c1: dict[str, float] = {}
                paced: dict[str, tuple[float, float]] = {}
                for name in order:
                    port, pid = ports[name], pids[name]
                    before = cpu_seconds(pid)
                    tp = bench(port, "-n", str(n), "-P", "16", "-c", "50", "-t", "set,get")
                    used = cpu_seconds(pid) - before
                    ops[name] = (tp["SET"]["rps"] + tp["GET"]["rps"]) / 2
                    if pid is not None:
                        figures[name].cpu_us.append(used / (2 * n) * 1e6)
                    lat = bench(port, "-n", str(max(n // 100, 1000)), "-c", "1", "-t", "get")
                    c1[name] = lat["GET"]["p99_latency_ms"]
                    paced[name] = paced_p99(port, count=paced_count)
                for name in names:
                    fig = figures[name]
                    fig.ops.append(ops[name])
                    fig.ratio.append(ops[name] / ops[HAPROXY])
                    fig.c1_p99.append(c1[name])
                    fig.c1_added.append(c1[name] - c1[DIRECT])
                    fig.paced_p50.append(paced[name][0])
                    fig.paced_p99.append(paced[name][1])
                    fig.paced_added.append(paced[name][1] - paced[DIRECT][1])
                print(
                    f"round {index + 1}/{rounds} (load average {os.getloadavg()[0]:.2f}): "
                    + ", ".join(f"{name} {ops[name]:,.0f} ops/s" for name in names),
                    flush=True,
                )
    load_end = os.getloadavg()
    print(
        f"\nredis-benchmark -P 16 -c 50 -t set,get -n {n:,}: median (lowest-highest) of "
        f"{rounds} rounds"
    )
    print(f"{'target':32} {'ops/s':>28} {'/ HAProxy':>20} {'CPU µs/request':>20}")
    for name, fig in figures.items():
        print(
            f"{name:32} {spread(fig.ops, ',.0f'):>28} {spread(fig.ratio, '.2f'):>20} "
            f"{spread(fig.cpu_us, '.2f'):>20}"
        )
    print(
        f"\nlatency (ms), median (lowest-highest) of {rounds} rounds: {paced_count:,} GETs paced "
        f"at {PACED_RATE:,}/s on one connection, and redis-benchmark -c 1 -t get"
    )
    print(f"{'target':32} {'paced p50':>20} {'paced p99':>20} {'added p99':>20} "
          f"{'-c 1 p99':>20} {'added p99':>20}")  # fmt: skip
    for name, fig in figures.items():
        print(
            f"{name:32} {spread(fig.paced_p50, '.3f'):>20} {spread(fig.paced_p99, '.3f'):>20} "
            f"{spread(fig.paced_added, '.3f'):>20} {spread(fig.c1_p99, '.3f'):>20} "
            f"{spread(fig.c1_added, '.3f'):>20}"
        )
    print(
        f"\nload average (1, 5, 15 min): start {load_start[0]:.2f} {load_start[1]:.2f} "
        f"{load_start[2]:.2f}, end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}"
    )


if __name__ == "__main__":
    main()
