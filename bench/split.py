"""Benchmark ``podkit split`` against ``podkit balance`` and nginx ``split_clients``, and its
shadow traffic against nginx ``mirror``.

Run from the repository root (installs nginx, wrk and the podkit whoami it needs):

    bench/split.sh                 # 3 interleaved rounds, 10 s per target and round
    bench/split.sh --quick         # 3 rounds of 3 s (a short form)
    bench/split.sh --rounds 5 --seconds 20

Each table is measured in rounds: every round runs each target once (started, warmed up for
1 s, measured, stopped) in a rotated order, so a burst of load from elsewhere on the machine
hits one round of each target rather than all rounds of one. Figures are medians over the
rounds with the spread (lowest-highest); a ratio is taken within each round (the targets of
one round ran seconds apart) and its median printed. The load average is printed at the
start, after each round and at the end.

Split: two backends (one nginx worker, two ports, a fixed ~100-byte 200) share core 1 with
wrk (one thread, 50 keep-alive connections, a Lua script giving each request an ``X-User``
among 10,000). Each front end gets core 0 and one process: ``podkit split`` 50/50 sticky on
``header:X-User``, ``podkit balance`` round-robin over the same two backends, and nginx
(1 worker) with ``split_clients "$http_x_user"`` choosing between two upstreams.

Shadow: the primary is the same nginx backend; the shadow answers after 200 ms: by default an
nginx that gives up on a socket that is never read after 200 ms and answers 200 (it costs
almost no CPU, so the load core's work is the same with the shadow on and off; only two cores
here), or with ``--shadow-server whoami`` a ``podkit whoami`` answering ``/delay/200``. The
primary's latency through ``podkit split`` with the shadow off and on (100 %), and through
nginx with and without ``mirror``, measured two ways:

- paced (the target's measure): ``--paced-rate`` requests per second (2,000) spread evenly
  over 16 keep-alive connections, so the front end is mostly idle and what the shadow adds
  to each answer shows; a connection that nginx holds shows in the latency of its next
  request (wrk2 is not assumed: a small uvloop client pinned to the load core; wrk's Lua
  ``delay`` fires its connections' timers together, in bursts);
- saturated: wrk with 4 connections, each waiting for its answer (the front end's core busy
  all the time, so any work the shadow adds shows in both throughput and latency).

Beside shadow off, a control: split not mirroring while wrk sends the shadow as much traffic
as split's copies (32 in flight). The shadow shares the load core with the client and the
primary, so its own work shows in the primary's latency whoever sends it; the ratio of the
shadow-on p99 to the control's is what split's mirroring adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from serving_harness import (
    CORE_LOAD,
    CORE_UNDER_TEST,
    Result,
    ensure_tools,
    find,
    free_port,
    nginx_backends_conf,
    parse_wrk,
    pinned,
    process,
    wrk_argv,
)

PACKAGES = {"nginx": "nginx-light", "wrk": "wrk"}
PACED_CONNECTIONS = 16
USERS_LUA = """
math.randomseed(7)
request = function()
  return wrk.format(nil, nil, {["X-User"] = "u" .. math.random(1, 10000)})
end
"""


def nginx_conf(tmp: Path, name: str, body: str) -> Path:
    conf = tmp / f"{name}.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {tmp}/{name}.pid;
        error_log {tmp}/{name}-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/{name}-body; proxy_temp_path {tmp}/{name}-proxy;
            fastcgi_temp_path {tmp}/{name}-fcgi; uwsgi_temp_path {tmp}/{name}-uwsgi;
            scgi_temp_path {tmp}/{name}-scgi;
            keepalive_requests 1000000;
        """)
        + textwrap.dedent(body)
        + "\n}\n"
    )
    return conf


def nginx_split(tmp: Path, port: int, a: int, b: int) -> Path:
    return nginx_conf(
        tmp,
        "split",
        f"""
        upstream arm_a {{ server 127.0.0.1:{a}; keepalive 64; }}
        upstream arm_b {{ server 127.0.0.1:{b}; keepalive 64; }}
        split_clients "$http_x_user" $arm {{ 50% arm_a; * arm_b; }}
        server {{
            listen 127.0.0.1:{port} backlog=4096;
            location / {{
                proxy_pass http://$arm;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
            }}
        }}
        """,
    )


def nginx_mirror(tmp: Path, port: int, primary: int, shadow: int | None) -> Path:
    mirror = "mirror /mirror;" if shadow is not None else ""
    mirror_location = (
        f"""
            location = /mirror {{
                internal;
                proxy_pass http://127.0.0.1:{shadow}$request_uri;
            }}"""
        if shadow is not None
        else ""
    )
    return nginx_conf(
        tmp,
        f"mirror-{port}",
        f"""
        upstream primary {{ server 127.0.0.1:{primary}; keepalive 64; }}
        server {{
            listen 127.0.0.1:{port} backlog=4096;
            location / {{
                {mirror}
                proxy_pass http://primary;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
            }}{mirror_location}
        }}
        """,
    )


def podkit(*args: str) -> list[str]:
    return [
        sys.executable, "-m", "podkit", *args,
        "--access-log", "off", "--log-level", "warning",
    ]  # fmt: skip


def run_wrk(
    name: str, port: int, seconds: int, connections: int, *extra: str, path: str = "/"
) -> Result:
    argv = wrk_argv(port, seconds, connections, path)
    argv[-1:-1] = list(extra)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    figures = parse_wrk(name, out)
    return Result(name, figures.rps, figures.p50_ms, figures.p99_ms, figures.non_2xx)


Target = tuple[str, list[str], int]  # name, argv, port


def in_rounds(
    tmp: Path, targets: list[Target], rounds: int, measure: Callable[[str, int, int], Result]
) -> dict[str, list[Result]]:
    """Run each target once per round, in an order rotated every round."""
    results: dict[str, list[Result]] = {name: [] for name, _, _ in targets}
    for index in range(rounds):
        shift = index % len(targets)
        for name, argv, port in targets[shift:] + targets[:shift]:
            with process(pinned(CORE_UNDER_TEST, argv), port, tmp / f"{port}.log") as proc:
                results[name].append(measure(name, port, proc.pid))
        print(
            f"round {index + 1}/{rounds} (load average {os.getloadavg()[0]:.2f}): "
            + ", ".join(f"{name} {runs[-1].rps:,.0f} req/s" for name, runs in results.items()),
            flush=True,
        )
    return results


def spread(values: list[float], fmt: str) -> str:
    """``median (lowest-highest)``."""
    med = format(statistics.median(values), fmt)
    if len(values) == 1:
        return med
    return f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def print_rounds(
    title: str,
    results: dict[str, list[Result]],
    peers: list[tuple[str, str]],
    *,
    p99_peer: tuple[str, str] | None = None,
) -> None:
    """Median req/s, p50 and p99 with their spread, and the median of per-round ratios of
    req/s to each peer (and of p99 to ``p99_peer``)."""
    print(f"\n{title}: median (lowest-highest) of {len(next(iter(results.values())))} rounds")
    header = f"{'target':42} {'req/s':>24} {'p50 ms':>20} {'p99 ms':>22}"
    header += "".join(f" {label:>20}" for label, _ in peers)
    if p99_peer is not None:
        header += f" {p99_peer[0]:>20}"
    print(header)
    for name, runs in results.items():
        line = (
            f"{name:42} {spread([r.rps for r in runs], ',.0f'):>24} "
            f"{spread([r.p50_ms for r in runs], '.2f'):>20} "
            f"{spread([r.p99_ms for r in runs], '.2f'):>22}"
        )
        for _, peer in peers:
            ratios = [r.rps / q.rps for r, q in zip(runs, results[peer], strict=True)]
            line += f" {spread(ratios, '.2f'):>20}"
        if p99_peer is not None:
            base = results[p99_peer[1]]
            ratios = [r.p99_ms / q.p99_ms for r, q in zip(runs, base, strict=True)]
            line += f" {spread(ratios, '.2f'):>20}"
        print(line)


def paced_client(port: int, path: str, rate: float, seconds: float) -> None:
    """Send ``rate`` GETs per second for ``seconds`` over :data:`PACED_CONNECTIONS` keep-alive
    connections, each on its schedule (requests spread evenly, not in bursts); print the
    count, rate, p50 and p99 (ms) as JSON.

    A latency runs from the moment the request was written (a client waking late from its
    timer would otherwise be counted as the server's time); a connection whose previous
    answer was late sends late; a server that holds a connection (nginx's mirror) answers its
    next request late, and that wait is in the answer's latency. Requests still unsent 5 s
    after the end count as late as they are then."""
    connections = PACED_CONNECTIONS

    async def one(index: int, start: float, latencies: list[float], statuses: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        gap = connections / rate
        total = int(seconds * rate / connections)
        give_up = start + seconds + 5.0
        for n in range(total):
            due = start + index / rate + n * gap
            now = time.perf_counter()
            if now > give_up:
                latencies.extend(now - (start + index / rate + m * gap) for m in range(n, total))
                break
            if due > now:
                await asyncio.sleep(due - now)
            writer.write(request)
            sent = time.perf_counter()
            head = await reader.readuntil(b"\r\n\r\n")
            statuses.append(int(head[9:12]))
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
        writer.close()

    async def run() -> None:
        latencies: list[float] = []
        statuses: list[int] = []
        start = time.perf_counter() + 0.05
        await asyncio.gather(*(one(i, start, latencies, statuses) for i in range(connections)))
        ordered = sorted(latencies)
        figures = {
            "rps": len(ordered) / (time.perf_counter() - start),
            "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
            "non_2xx": sum(1 for s in statuses if not 200 <= s < 400),
        }
        print(json.dumps(figures))

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


def run_paced(name: str, port: int, path: str, rate: float, seconds: float) -> Result:
    """:func:`paced_client` in its own process on the load core."""
    argv = [sys.executable, __file__, "--paced-client", str(port), path, str(rate), str(seconds)]
    out = subprocess.run(pinned(CORE_LOAD, argv), capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    return Result(name, figures["rps"], figures["p50_ms"], figures["p99_ms"], figures["non_2xx"])


def print_p99_ratio(results: dict[str, list[Result]], base: str, name: str) -> None:
    """The median of per-round p99 ratios of ``name`` to ``base``."""
    ratios = [r.p99_ms / q.p99_ms for r, q in zip(results[name], results[base], strict=True)]
    print(f"p99 of {name!r} / p99 of {base!r}: {spread(ratios, '.2f')}")


def split_run(tmp: Path, seconds: int, connections: int, rounds: int) -> dict[str, list[Result]]:
    a, b = free_port(), free_port()
    nginx = find("nginx") or "nginx"
    lua = tmp / "users.lua"
    lua.write_text(USERS_LUA)
    with process(
        pinned(CORE_LOAD, [nginx, "-c", str(nginx_backends_conf(tmp, [a, b]))]),
        b,
        tmp / "backends.log",
    ):
        p1, p2, p3 = free_port(), free_port(), free_port()
        targets: list[Target] = [
            ("nginx split_clients (1 worker)", [nginx, "-c", str(nginx_split(tmp, p1, a, b))], p1),
            ("podkit balance round-robin", podkit(
                "balance", "--listen", f"127.0.0.1:{p2}",
                "--backend", f"http://127.0.0.1:{a}", "--backend", f"http://127.0.0.1:{b}"), p2),
            ("podkit split 50% sticky header", podkit(
                "split", "--listen", f"127.0.0.1:{p3}", "--primary", f"http://127.0.0.1:{a}",
                "--candidate", f"http://127.0.0.1:{b}", "--weight", "50%",
                "--sticky", "header:X-User"), p3),
        ]  # fmt: skip

        def measure(name: str, port: int, pid: int) -> Result:
            run_wrk("warm-up", port, 1, connections, "-s", str(lua))
            return run_wrk(name, port, seconds, connections, "-s", str(lua))

        return in_rounds(tmp, targets, rounds, measure)


# The control: the shadow's own traffic (as many requests as podkit split mirrors to it: 32
# in flight, each 200 ms) sent by wrk, with podkit split not mirroring. The shadow shares the
# load core with the client and the primary (two cores here), so its work shows in the
# primary's latency whoever sends it: this target tells that from what split itself adds.
CONTROL = "podkit split, shadow off, its load by wrk"


@contextlib.contextmanager
def shadow_load(port: int, path: str, seconds: int, on: bool) -> Iterator[None]:
    """While the block runs (when ``on``): 32 connections to the shadow, one request each
    in flight."""
    if not on:
        yield
        return
    argv = wrk_argv(port, seconds, 32, path)
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL) as load:
        try:
            yield
        finally:
            load.wait(seconds + 10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slow_nginx(tmp: Path, port: int, silent: int) -> Path:
    """An nginx that answers every request 200 after 200 ms, for almost no CPU: it passes
    the request to ``silent`` (a socket that is never read), gives up after 200 ms and
    answers from ``error_page``."""
    return nginx_conf(
        tmp,
        "slow",
        f"""
        server {{
            listen 127.0.0.1:{port} backlog=4096;
            error_log /dev/null crit;
            location / {{
                proxy_pass http://127.0.0.1:{silent};
                proxy_connect_timeout 200ms;
                proxy_read_timeout 200ms;
                error_page 502 504 =200 @late;
            }}
            location @late {{ return 200 "late\n"; }}
        }}
        """,
    )


def shadow_run(
    tmp: Path,
    seconds: int,
    rounds: int,
    paced_rate: float,
    cpu_us: dict[str, list[float]],
    shadow_server: str,
) -> tuple[dict[str, list[Result]], dict[str, list[Result]]]:
    primary, shadow = free_port(), free_port()
    nginx = find("nginx") or "nginx"
    path = "/delay/200"  # the nginx primary answers any path at once; the shadow waits 200 ms
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4096)  # never accepted: connections wait in its backlog, then are refused
    if shadow_server == "nginx":
        shadow_argv = [nginx, "-c", str(slow_nginx(tmp, shadow, silent.getsockname()[1]))]
    else:
        shadow_argv = [sys.executable, "-m", "podkit", "whoami", "--listen",
                       f"127.0.0.1:{shadow}", "--log-level", "warning"]  # fmt: skip
    with (
        silent,
        process(pinned(CORE_LOAD, [nginx, "-c", str(nginx_backends_conf(tmp, [primary]))]),
                primary, tmp / "primary.log"),
        process(pinned(CORE_LOAD, shadow_argv), shadow, tmp / "shadow.log"),
    ):  # fmt: skip
        p1, p2, p3, p4, p5 = (free_port() for _ in range(5))
        cpu_us.clear()
        targets: list[Target] = [
            ("nginx, no mirror", [nginx, "-c", str(nginx_mirror(tmp, p1, primary, None))], p1),
            ("nginx mirror (200 ms shadow)",
             [nginx, "-c", str(nginx_mirror(tmp, p2, primary, shadow))], p2),
            ("podkit split, shadow off", podkit(
                "split", "--listen", f"127.0.0.1:{p3}",
                "--primary", f"http://127.0.0.1:{primary}"), p3),
            (CONTROL, podkit(
                "split", "--listen", f"127.0.0.1:{p5}",
                "--primary", f"http://127.0.0.1:{primary}"), p5),
            ("podkit split, shadow 100% (200 ms)", podkit(
                "split", "--listen", f"127.0.0.1:{p4}",
                "--primary", f"http://127.0.0.1:{primary}",
                "--shadow", f"http://127.0.0.1:{shadow}"), p4),
        ]  # fmt: skip

        paced: dict[str, list[Result]] = {name: [] for name, _, _ in targets}
        cpu_us.update({name: [] for name, _, _ in targets})

        def measure(name: str, port: int, pid: int) -> Result:
            run_paced("warm-up", port, path, paced_rate, 1)
            with shadow_load(shadow, path, seconds + 1, name == CONTROL):
                before = cpu_seconds(pid)
                result = run_paced(name, port, path, paced_rate, seconds)
                used = cpu_seconds(pid) - before
            paced[name].append(result)
            cpu_us[name].append(used / max(1.0, result.rps * seconds) * 1e6)
            with shadow_load(shadow, path, seconds + 1, name == CONTROL):
                return run_wrk(name, port, seconds, 4, path=path)

        return paced, in_rounds(tmp, targets, rounds, measure)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--seconds", type=int, default=None, help="wrk duration per target")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (split)")
    parser.add_argument("--only", choices=["split", "shadow"], default=None)
    parser.add_argument(
        "--paced-rate", type=float, default=2000, help="paced requests/s (shadow; 2,000)"
    )
    parser.add_argument(
        "--shadow-server",
        choices=["nginx", "whoami"],
        default="nginx",
        help="the 200 ms shadow: nginx timing out on a silent socket (almost no CPU on the "
        "load core) or podkit whoami's /delay/200 (a Python server, whose work competes with "
        "the load generator)",
    )
    parser.add_argument("--paced-client", nargs=4, metavar=("PORT", "PATH", "RATE", "SECONDS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.paced_client:
        port, path, rate, secs = args.paced_client
        paced_client(int(port), path, float(rate), float(secs))
        return
    seconds = args.seconds or (3 if args.quick else 10)
    if args.rounds < 1 or seconds < 1:
        parser.error("--rounds and --seconds take a positive number")
    ensure_tools(PACKAGES)
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at start; {args.rounds} rounds of {seconds} s per target"
    )
    with tempfile.TemporaryDirectory(prefix="podkit-bench-split-") as tmpdir:
        tmp = Path(tmpdir)
        if args.only in (None, "split"):
            results = split_run(tmp, seconds, args.connections, args.rounds)
            print_rounds(
                f"2 backends, X-User among 10,000; wrk -t1 -c{args.connections} -d{seconds}s",
                results,
                [
                    ("/ balance", "podkit balance round-robin"),
                    ("/ nginx", "nginx split_clients (1 worker)"),
                ],
            )
        if args.only in (None, "shadow"):
            cpu_us: dict[str, list[float]] = {}
            paced, results = shadow_run(
                tmp, seconds, args.rounds, args.paced_rate, cpu_us, args.shadow_server
            )
            print_rounds(
                f"primary latency with a 200 ms shadow; {args.paced_rate:,.0f} paced requests/s "
                f"on {PACED_CONNECTIONS} connections for {seconds}s",
                paced,
                [],
                p99_peer=("p99 / split off", "podkit split, shadow off"),
            )
            print_p99_ratio(paced, CONTROL, "podkit split, shadow 100% (200 ms)")
            print("front end's CPU per paced request, µs: median (lowest-highest)")
            for name, values in cpu_us.items():
                print(f"  {name:42} {spread(values, '.1f')}")
            print_rounds(
                f"primary latency with a 200 ms shadow; wrk -t1 -c4 -d{seconds}s /delay/200",
                results,
                [("/ split off", "podkit split, shadow off"), ("/ nginx", "nginx, no mirror")],
                p99_peer=("p99 / split off", "podkit split, shadow off"),
            )
            print_p99_ratio(results, CONTROL, "podkit split, shadow 100% (200 ms)")
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end")


if __name__ == "__main__":
    main()
