"""Benchmark ``podkit broker --mode tcp`` against HAProxy ``mode tcp`` in front of redis-server.

Run from the repository root (installs haproxy and redis-tools when missing):

    bench/broker.sh            # 100,000 requests per test
    bench/broker.sh --quick    # 20,000

redis-server and redis-benchmark share core 1; the forwarder under test gets core 0 (HAProxy
``nbthread 1``; the broker, one process, splice(2) forwarding). Throughput: ``redis-benchmark
-P 16 -t set,get`` (pipelined, 50 clients). Latency per hop: ``redis-benchmark -c 1 -P 1``
(one request at a time) direct and through each forwarder, and GETs paced at 1,000 per
second on one connection (each sent on its schedule, 5,000 of them); the added p99 is the
forwarder's p99 minus the direct p99.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import textwrap
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


def bench(port: int, *args: str) -> dict[str, dict[str, float]]:
    argv = pinned(
        CORE_LOAD,
        [find("redis-benchmark") or "redis-benchmark", "-p", str(port), "--csv", *args],
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return {row["test"]: {k: float(v) for k, v in row.items() if k != "test"} for row in rows}


def paced_p99(port: int, *, rate: int = 1000, count: int = 5000) -> tuple[float, float]:
    """p50 and p99 (ms) of GETs sent at ``rate`` per second on one connection, each request
    sent on its schedule (not after the previous answer), so queueing shows in the latency."""
    import asyncio
    import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 requests per test")
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
    ensure_tools(PACKAGES)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="podkit-bench-broker-") as tmpdir:
        tmp = Path(tmpdir)
        redis_port, ha_port, broker_port = free_port(), free_port(), free_port()
        (tmp / "env").write_text("bench\n")
        targets = {
            "direct": None,
            "HAProxy mode tcp (nbthread 1)": (
                [find("haproxy") or "haproxy", "-db", "-f",
                 str(haproxy_conf(tmp, ha_port, redis_port))], ha_port),
            "podkit broker --mode tcp": (
                [sys.executable, "-m", "podkit", "broker", "--listen", f"127.0.0.1:{broker_port}",
                 "--env-from", f"file:{tmp / 'env'}", "--map", f"bench=127.0.0.1:{redis_port}",
                 "--log-level", "warning"], broker_port),
        }  # fmt: skip
        results: dict[str, tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]] = {}
        paced: dict[str, tuple[float, float]] = {}
        redis_argv = [
            find("redis-server") or "redis-server", "--port", str(redis_port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        with process(pinned(CORE_LOAD, redis_argv), redis_port, tmp / "redis.log"):
            for name, spec in targets.items():
                if spec is None:
                    port = redis_port
                    ctx = None
                else:
                    argv, port = spec
                    ctx = process(pinned(CORE_UNDER_TEST, argv), port, tmp / f"{port}.log")
                    ctx.__enter__()
                try:
                    bench(port, "-n", "2000", "-t", "get")  # warm-up
                    throughput = bench(port, "-n", str(n), "-P", "16", "-t", "set,get")
                    latency = bench(port, "-n", str(n // 10), "-c", "1", "-t", "get")
                    paced[name] = paced_p99(port)
                    results[name] = (throughput, latency)
                finally:
                    if ctx is not None:
                        ctx.__exit__(None, None, None)
    direct_p99 = results["direct"][1]["GET"]["p99_latency_ms"]
    ha = results["HAProxy mode tcp (nbthread 1)"][0]
    print(f"\nredis-benchmark -P 16 -c 50 -n {n} (ops/s), and -c 1 GET latency (ms)")
    print(f"{'target':32} {'SET/s':>10} {'GET/s':>10} {'/HAProxy':>9} "
          f"{'GET req/s c1':>13} {'p50':>6} {'p99':>6} {'added p99':>9}")  # fmt: skip
    for name, (tp, lat) in results.items():
        ratio = (tp["SET"]["rps"] + tp["GET"]["rps"]) / (ha["SET"]["rps"] + ha["GET"]["rps"])
        get = lat["GET"]
        print(
            f"{name:32} {tp['SET']['rps']:10.0f} {tp['GET']['rps']:10.0f} {ratio:9.2f} "
            f"{get['rps']:13.0f} {get['p50_latency_ms']:6.3f} {get['p99_latency_ms']:6.3f} "
            f"{get['p99_latency_ms'] - direct_p99:9.3f}"
        )
    print("\n1,000 GET/s paced on one connection, 5,000 requests (ms)")
    print(f"{'target':32} {'p50':>7} {'p99':>7} {'added p99':>10}")
    for name, (p50, p99) in paced.items():
        print(f"{name:32} {p50:7.3f} {p99:7.3f} {p99 - paced['direct'][1]:10.3f}")
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
