"""The Python cost of one proxied request, without sockets.

Run from the repository root:

    .venv/bin/python bench/proxy_hot_path.py              # 7 rounds of 30,000 requests
    .venv/bin/python bench/proxy_hot_path.py --profile    # one round under cProfile

The engine's client connection and upstream connection are driven with in-memory transports
on uvloop: a ``GET`` like wrk's goes in, the forwarded head comes out of the upstream side, an
nginx-like 100-byte response goes back in and the client's response comes out. What is timed
is the CPU time of that loop (``time.process_time``): the parsing, the header rules, the
pool and the dispatch, i.e. the user-space work per request that the socket benchmark
(``bench/proxy.py``) cannot separate from the kernel's. Three paths are measured: plain
forwarding (``proxy_handler`` with one upstream, the direct path), the same with a ``pick``
function (the ordinary path a policy takes: a task per request), and ``podkit balance``'s
direct path (round-robin over one backend: picking, in-flight and retry-budget accounting,
per-backend counters). The loop's own overhead (two event-loop turns) is printed beside them.
CPU time on a shared machine still varies with what else runs: compare medians of several
rounds, or count instructions, which do not vary:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python bench/proxy_hot_path.py --path balance --rounds 1 --requests 2000

(subtract a run with ``--requests 0`` and divide by 2,000). The first line printed says
whether the engine runs compiled (``scripts/build-native.sh``) or as pure Python.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from typing import Any

import uvloop

from podkit.engines.http import Handler, HTTPServer, Upstream, UpstreamPool, proxy_handler
from podkit.engines.http import client as client_module
from podkit.engines.http import server as server_module

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BODY = b"podkit-bench " + b"x" * 86 + b"\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 08:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n" + BODY
)


class MemoryTransport:
    """Collects what is written; the rest of the transport interface does nothing."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if key == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


async def written(transport: MemoryTransport) -> None:
    """Let the loop run (a few turns at most) until ``transport`` was written to."""
    for _ in range(100):
        if transport.written:
            return
        await asyncio.sleep(0)
    raise AssertionError("nothing was written")


PATHS = {
    "proxy": "proxy_handler, one upstream",
    "pick": "proxy_handler with pick",
    "balance": "balance, round-robin",
}


def make_handler(path: str, pool: UpstreamPool, probes: UpstreamPool) -> Handler:
    upstream = Upstream("127.0.0.1", 9000)
    if path == "proxy":
        return proxy_handler(pool, upstream)
    if path == "pick":
        return proxy_handler(pool, lambda _request: upstream)
    from podkit.serving.balance import BackendSpec
    from podkit.serving.balance.app import BalanceOptions, Balancer

    options = BalanceOptions(backends=(BackendSpec("http://127.0.0.1:9000"),))
    balancer = Balancer(options, upstreams=pool, probes=probes, registry=None)
    balancer.reload()
    return balancer.direct_handler()


async def one_round(requests: int, *, path: str, profile: bool) -> tuple[float, float]:
    """Microseconds of CPU per request, and per empty loop iteration (the harness)."""
    loop = asyncio.get_running_loop()
    async with UpstreamPool() as pool, UpstreamPool() as probes:
        upstream = Upstream("127.0.0.1", 9000)
        handler = make_handler(path, pool, probes)
        server = HTTPServer(handler)
        server.loop = loop
        upstream_side = client_module._UpstreamConnection(pool, upstream)
        upstream_transport = MemoryTransport()
        upstream_side.connection_made(upstream_transport)  # type: ignore[arg-type]
        pool._slots[upstream] = client_module._Slot(idle=[upstream_side])
        client_side = server_module._Connection(server)
        client_transport = MemoryTransport()
        client_side.connection_made(client_transport)  # type: ignore[arg-type]

        async def exchange() -> None:
            client_side.data_received(REQUEST)
            await written(upstream_transport)
            upstream_transport.written.clear()
            upstream_side.data_received(RESPONSE)
            await written(client_transport)
            assert client_transport.written[-1].endswith(BODY)
            client_transport.written.clear()

        for _ in range(1000):
            await exchange()
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        started = time.process_time()
        for _ in range(requests):
            await exchange()
        per_request = (time.process_time() - started) / max(1, requests) * 1e6
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        started = time.process_time()
        for _ in range(requests):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        harness = (time.process_time() - started) / max(1, requests) * 1e6
        server.connections.clear()
        return per_request, harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per path")
    parser.add_argument("--requests", type=int, default=30_000, help="requests per round")
    parser.add_argument("--profile", action="store_true", help="one round under cProfile")
    parser.add_argument("--path", choices=sorted(PATHS), action="append", help="paths to run")
    args = parser.parse_args()
    paths = args.path or list(PATHS)
    compiled = server_module.__file__ is not None and server_module.__file__.endswith(".so")
    print(f"engine: {'compiled' if compiled else 'pure Python'} ({server_module.__file__})")
    if args.profile:
        uvloop.run(one_round(args.requests, path=paths[0], profile=True))
        return
    print(f"{'path':32} {'median us/req':>14} {'min us/req':>11} {'harness us':>11}")
    for path in paths:
        name = PATHS[path]
        rounds = [
            uvloop.run(one_round(args.requests, path=path, profile=False))
            for _ in range(args.rounds)
        ]
        costs = [cost for cost, _ in rounds]
        harness = statistics.median(h for _, h in rounds)
        print(f"{name:32} {statistics.median(costs):14.1f} {min(costs):11.1f} {harness:11.1f}")


if __name__ == "__main__":
    main()
