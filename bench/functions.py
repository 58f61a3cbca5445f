"""Functions: warm HTTP invocations against Starlette on uvicorn, cold starts, events per second.

1. Warm HTTP: the same trivial JSON function served by ``podkit functions serve`` (in its
   worker process, ``--isolation process --workers 1``, and in the server process,
   ``--isolation inline``) and by a Starlette app on uvicorn (one worker, no access log),
   loaded by wrk (one thread, keep-alive) pinned to the other core.
2. Cold start: the pool scales to zero after ``--idle 100ms``; each of N runs waits until the
   function has no worker, then times one request from the client (the server's own figure,
   ``podkit_functions_cold_start_seconds``, is printed beside it).
3. Events per second: one HTTP call emits N events (``emit`` concurrently), a subscriber in its
   worker process consumes them; the time from the call to the last ack, on SQLite and Redis.

Run from the repository root:  .venv/bin/python bench/functions.py
(installs starlette and uvicorn into this interpreter's environment when missing)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import session_cpu_seconds
from serving_harness import (
    CORE_UNDER_TEST,
    Result,
    find,
    free_port,
    pinned,
    print_table,
    process,
    wrk,
)

PEERS = {"starlette": "starlette", "uvicorn": "uvicorn"}

APP = """
from podkit.functions import emit, on_event, on_http

@on_http("GET /hello", workers=1, concurrency=256)
async def hello(request):
    return {"hello": "world"}

@on_http("GET /cold", idle="100ms", workers=1)
def cold(request):
    return {"cold": True}

@on_http("POST /burst")
async def burst(request):
    import asyncio
    n = request.json["n"]
    await asyncio.gather(*(emit("bench.tick", {"i": i}) for i in range(n)))
    return {"emitted": n}

@on_event("bench.tick", concurrency=64, workers=1)
async def tick(event):
    return None
"""

STARLETTE = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def hello(request):
    return JSONResponse({"hello": "world"})

app = Starlette(routes=[Route("/hello", hello)])
"""


def ensure_peers() -> None:
    missing = [pkg for mod, pkg in PEERS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def get(url: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def serve_argv(tmp: Path, port: int, admin: int, backend: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "podkit", "functions", "serve", str(tmp / "app.py"),
        "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
        "--backend", backend, "--access-log", "off", "--log-level", "warning", *extra,
    ]  # fmt: skip


def warm_http(tmp: Path, seconds: int, connections: int, rounds: int) -> None:
    """Each target ``rounds`` times, interleaved (a busy machine slows all of them alike);
    the round with the median requests/s of each target is shown, with the median CPU time
    its processes (the server and its worker processes) spent per request: on a loaded
    machine CPU per request is the figure least moved by the others' load. Each server leads
    a session of its own (with the kernel's autogroup scheduling, a session shares the core
    as one: a server and its worker processes get the share of one process, as uvicorn
    does)."""
    runs: dict[str, list[Result]] = {}
    cpu: dict[str, list[float]] = {}
    uvicorn = [
        sys.executable, "-m", "uvicorn", "starlette_app:app", "--app-dir", str(tmp),
        "--host", "127.0.0.1", "--workers", "1", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    targets = [
        ("podkit functions (worker process)", ("--isolation", "process")),
        ("podkit functions (inline)", ("--isolation", "inline")),
        ("starlette on uvicorn", None),
    ]
    load = os.getloadavg()[0]
    for _ in range(rounds):
        for name, extra in targets:
            port, admin = free_port(), free_port()
            if extra is None:
                argv = pinned(CORE_UNDER_TEST, [*uvicorn, "--port", str(port)])
            else:
                backend = f"sqlite:///{tmp}/w.db"
                argv = pinned(CORE_UNDER_TEST, serve_argv(tmp, port, admin, backend, *extra))
            with process(argv, port, tmp / "serve.log") as proc:
                get(f"http://127.0.0.1:{port}/hello")  # start the worker: this run is warm
                before = session_cpu_seconds(proc.pid)  # the server leads its own session
                result = wrk(name, port, seconds, connections, "/hello")
                used = session_cpu_seconds(proc.pid) - before
                runs.setdefault(name, []).append(result)
                cpu.setdefault(name, []).append(used * 1e6 / max(1.0, result.rps * seconds))
    results = [sorted(r, key=lambda x: x.rps)[len(r) // 2] for r in runs.values()]
    print_table(
        f"Warm HTTP, trivial JSON function (wrk -t1 -c{connections} -d{seconds}s, "
        f"median of {rounds} interleaved rounds; load average {load:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end)",
        results,
        ["starlette on uvicorn"],
    )
    # each round runs the targets back to back: its ratios share the machine's load of the
    # moment, so their median moves less than the ratio of the medians
    peer_runs = runs["starlette on uvicorn"]
    print("Per round, against the Starlette run of the same round (median of the rounds):")
    print(f"  {'target':34} {'req/s ratio':>11} {'CPU us/req':>11} {'CPU ratio':>10}")
    for name, figures in runs.items():
        ratio = statistics.median(r.rps / p.rps for r, p in zip(figures, peer_runs, strict=True))
        used = statistics.median(cpu[name])
        cost = statistics.median(
            c / p for c, p in zip(cpu[name], cpu["starlette on uvicorn"], strict=True)
        )
        print(f"  {name:34} {ratio:11.2f} {used:11.1f} {cost:10.2f}")


def status(admin: int) -> dict[str, object]:
    body: dict[str, object] = json.loads(get(f"http://127.0.0.1:{admin}/status"))
    return body


def cold_metric(admin: int) -> tuple[float, float]:
    """Count and sum of the server's cold-start histogram of function ``cold``."""
    metrics = get(f"http://127.0.0.1:{admin}/metrics").decode()
    lines = [
        line for line in metrics.splitlines()
        if line.startswith("podkit_functions_cold_start_seconds_") and 'function="cold"' in line
    ]  # fmt: skip
    count = next(float(x.split()[-1]) for x in lines if "_count" in x)
    total = next(float(x.split()[-1]) for x in lines if "_sum" in x)
    return count, total


def cold_starts(tmp: Path, runs: int) -> None:
    port, admin = free_port(), free_port()
    argv = pinned(CORE_UNDER_TEST, serve_argv(tmp, port, admin, f"sqlite:///{tmp}/c.db"))
    client: list[float] = []
    with process(argv, port, tmp / "cold.log"):
        get(f"http://127.0.0.1:{port}/cold")  # the zygote is ready: each run is a worker start
        before = cold_metric(admin)
        for _ in range(runs):
            deadline = time.monotonic() + 10
            while status(admin)["workers"]["cold"] != 0:  # type: ignore[index]
                if time.monotonic() > deadline:
                    raise SystemExit("the pool did not scale to zero")
                time.sleep(0.02)
            started = time.perf_counter()
            get(f"http://127.0.0.1:{port}/cold")
            client.append((time.perf_counter() - started) * 1000)
        after = cold_metric(admin)
    count, total = after[0] - before[0], after[1] - before[1]
    client.sort()
    p99 = client[min(len(client) - 1, round(0.99 * (len(client) - 1)))]
    print(f"\nCold start from zero ({runs} runs, --idle 100ms)")
    print(f"  first answer, client side: p50 {statistics.median(client):.1f} ms  p99 {p99:.1f} ms"
          f"  max {client[-1]:.1f} ms")  # fmt: skip
    print(f"  worker start, server side: mean {total / count * 1000:.1f} ms over {count:.0f}")


async def _acked(url: str, queue: str) -> int:
    from podkit.queue import Queue

    async with Queue(url, queue) as q:
        return (await q.stats()).ack_total


def events(tmp: Path, backend: str, label: str, n: int) -> None:
    port, admin = free_port(), free_port()
    argv = pinned(CORE_UNDER_TEST, serve_argv(tmp, port, admin, backend))
    with process(argv, port, tmp / f"events-{label}.log"):
        get(f"http://127.0.0.1:{port}/hello")
        base = asyncio.run(_acked(backend, "fn.tick"))
        started = time.perf_counter()
        get(f"http://127.0.0.1:{port}/burst", json.dumps({"n": n}).encode())
        emitted = time.perf_counter() - started
        while asyncio.run(_acked(backend, "fn.tick")) - base < n:
            time.sleep(0.05)
        wall = time.perf_counter() - started
    print(f"  {label:8} {n} events: emitted in {emitted:.2f} s ({n / emitted:.0f}/s), "
          f"all handled in {wall:.2f} s ({n / wall:.0f} events/s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each target")
    parser.add_argument("--cold-runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--only", choices=["http", "cold", "events"], default=None)
    args = parser.parse_args()
    if find("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    ensure_peers()
    with tempfile.TemporaryDirectory(prefix="podkit-bench-functions-") as name:
        tmp = Path(name)
        (tmp / "app.py").write_text(textwrap.dedent(APP))
        (tmp / "starlette_app.py").write_text(textwrap.dedent(STARLETTE))
        if args.only in (None, "http"):
            warm_http(tmp, args.seconds, args.connections, args.rounds)
        if args.only in (None, "cold"):
            cold_starts(tmp, args.cold_runs)
        if args.only in (None, "events"):
            print(f"\nEvents per second (emit -> subscriber, {args.events} events)")
            events(tmp, f"sqlite:///{tmp}/events.db", "sqlite", args.events)
            from podkit.testing import RedisServer

            with RedisServer() as redis:
                events(tmp, redis.url, "redis", args.events)


if __name__ == "__main__":
    main()
