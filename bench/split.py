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

Shadow: the primary is the same nginx backend; the shadow is a ``podkit whoami`` answering
``/delay/200`` after 200 ms. The primary's latency through ``podkit split`` with the shadow
off and on (100 %), and through nginx with and without ``mirror``, at a fixed request rate
(wrk2 is not assumed: wrk with 4 connections, each waiting for its answer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
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
    tmp: Path, targets: list[Target], rounds: int, measure: Callable[[str, int], Result]
) -> dict[str, list[Result]]:
    """Run each target once per round, in an order rotated every round."""
    results: dict[str, list[Result]] = {name: [] for name, _, _ in targets}
    for index in range(rounds):
        shift = index % len(targets)
        for name, argv, port in targets[shift:] + targets[:shift]:
            with process(pinned(CORE_UNDER_TEST, argv), port, tmp / f"{port}.log"):
                results[name].append(measure(name, port))
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
    header = f"{'target':34} {'req/s':>24} {'p50 ms':>20} {'p99 ms':>22}"
    header += "".join(f" {label:>20}" for label, _ in peers)
    if p99_peer is not None:
        header += f" {p99_peer[0]:>20}"
    print(header)
    for name, runs in results.items():
        line = (
            f"{name:34} {spread([r.rps for r in runs], ',.0f'):>24} "
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

        def measure(name: str, port: int) -> Result:
            run_wrk("warm-up", port, 1, connections, "-s", str(lua))
            return run_wrk(name, port, seconds, connections, "-s", str(lua))

        return in_rounds(tmp, targets, rounds, measure)


def shadow_run(tmp: Path, seconds: int, rounds: int) -> dict[str, list[Result]]:
    primary, shadow = free_port(), free_port()
    nginx = find("nginx") or "nginx"
    path = "/delay/200"  # the nginx primary answers any path at once; whoami waits 200 ms
    with (
        process(pinned(CORE_LOAD, [nginx, "-c", str(nginx_backends_conf(tmp, [primary]))]),
                primary, tmp / "primary.log"),
        process(pinned(CORE_LOAD, [sys.executable, "-m", "podkit", "whoami", "--listen",
                                   f"127.0.0.1:{shadow}", "--log-level", "warning"]),
                shadow, tmp / "shadow.log"),
    ):  # fmt: skip
        p1, p2, p3, p4 = free_port(), free_port(), free_port(), free_port()
        targets: list[Target] = [
            ("nginx, no mirror", [nginx, "-c", str(nginx_mirror(tmp, p1, primary, None))], p1),
            ("nginx mirror (200 ms shadow)",
             [nginx, "-c", str(nginx_mirror(tmp, p2, primary, shadow))], p2),
            ("podkit split, shadow off", podkit(
                "split", "--listen", f"127.0.0.1:{p3}",
                "--primary", f"http://127.0.0.1:{primary}"), p3),
            ("podkit split, shadow 100% (200 ms)", podkit(
                "split", "--listen", f"127.0.0.1:{p4}",
                "--primary", f"http://127.0.0.1:{primary}",
                "--shadow", f"http://127.0.0.1:{shadow}"), p4),
        ]  # fmt: skip

        def measure(name: str, port: int) -> Result:
            run_wrk("warm-up", port, 1, 4, path=path)
            return run_wrk(name, port, seconds, 4, path=path)

        return in_rounds(tmp, targets, rounds, measure)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--seconds", type=int, default=None, help="wrk duration per target")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (split)")
    parser.add_argument("--only", choices=["split", "shadow"], default=None)
    args = parser.parse_args()
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
            results = shadow_run(tmp, seconds, args.rounds)
            print_rounds(
                f"primary latency with a 200 ms shadow; wrk -t1 -c4 -d{seconds}s /delay/200",
                results,
                [("/ split off", "podkit split, shadow off"), ("/ nginx", "nginx, no mirror")],
                p99_peer=("p99 / split off", "podkit split, shadow off"),
            )
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end")


if __name__ == "__main__":
    main()
