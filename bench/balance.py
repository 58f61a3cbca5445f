"""Benchmark ``podkit balance`` against HAProxy and nginx balancing the same three backends.

Run from the repository root (installs nginx, haproxy and wrk with apt-get when missing):

    bench/balance.sh            # 10 s per target
    bench/balance.sh --quick    # 3 s per target

Three backends (one nginx worker, three ports, a fixed ~100-byte 200) share core 1 with wrk
(one thread, 50 keep-alive connections). Each balancer gets core 0 and one worker/thread:
HAProxy (``nbthread 1``, roundrobin, ``http-reuse always``), nginx (1 worker, round-robin
upstream with keepalive) and ``podkit balance`` (round-robin; then least-request and hash).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
from pathlib import Path

from serving_harness import (
    CORE_LOAD,
    CORE_UNDER_TEST,
    Result,
    ensure_tools,
    find,
    free_port,
    nginx_backends_conf,
    pinned,
    print_table,
    process,
    wrk,
)

PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}


def nginx_balancer_conf(tmp: Path, port: int, backends: list[int]) -> Path:
    servers = " ".join(f"server 127.0.0.1:{b};" for b in backends)
    conf = tmp / "nginx-lb.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {tmp}/nginx-lb.pid;
        error_log {tmp}/nginx-lb-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/l-body; proxy_temp_path {tmp}/l-proxy;
            fastcgi_temp_path {tmp}/l-fcgi; uwsgi_temp_path {tmp}/l-uwsgi;
            scgi_temp_path {tmp}/l-scgi;
            keepalive_requests 1000000;
            upstream backend {{ {servers} keepalive 64; keepalive_requests 1000000; }}
            server {{
                listen 127.0.0.1:{port} backlog=4096;
                location / {{
                    proxy_pass http://backend;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                }}
            }}
        }}
        """)
    )
    return conf


def haproxy_conf(tmp: Path, port: int, backends: list[int]) -> Path:
    servers = "\n".join(f"    server s{i} 127.0.0.1:{b}" for i, b in enumerate(backends))
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        textwrap.dedent(f"""
        global
            nbthread 1
            maxconn 4096
        defaults
            mode http
            timeout connect 5s
            timeout client 60s
            timeout server 60s
            option http-keep-alive
        frontend fe
            bind 127.0.0.1:{port}
            default_backend be
        backend be
            balance roundrobin
            http-reuse always
        """)
        + servers
        + "\n"
    )
    return conf


def podkit_argv(port: int, backends: list[int], *extra: str) -> list[str]:
    flags = [a for b in backends for a in ("--backend", f"http://127.0.0.1:{b}")]
    return [
        sys.executable,
        "-m",
        "podkit",
        "balance",
        "--listen",
        f"127.0.0.1:{port}",
        "--access-log",
        "off",  # the peers run with access_log off
        "--log-level",
        "warning",
        *flags,
        *extra,
    ]


def run(tmp: Path, seconds: int, connections: int) -> list[Result]:
    backends = [free_port() for _ in range(3)]
    nginx = find("nginx") or "nginx"
    haproxy = find("haproxy") or "haproxy"
    results: list[Result] = []
    with process(
        pinned(CORE_LOAD, [nginx, "-c", str(nginx_backends_conf(tmp, backends))]),
        backends[-1],
        tmp / "backends.log",
    ):
        wrk("warm-up", backends[0], 1, connections)
        results.append(wrk("direct (one nginx backend)", backends[0], seconds, connections))
        targets: list[tuple[str, list[str]]] = []
        port = free_port()
        targets.append(
            ("HAProxy (nbthread 1)", [haproxy, "-db", "-f", str(haproxy_conf(tmp, port, backends))])
        )
        port2 = free_port()
        targets.append(
            ("nginx (1 worker)", [nginx, "-c", str(nginx_balancer_conf(tmp, port2, backends))])
        )
        port3, port4, port5 = free_port(), free_port(), free_port()
        targets.append(("podkit balance round-robin", podkit_argv(port3, backends)))
        targets.append(
            (
                "podkit balance least-request",
                podkit_argv(port4, backends, "--policy", "least-request"),
            )
        )
        targets.append(
            ("podkit balance hash (client-ip)", podkit_argv(port5, backends, "--policy", "hash"))
        )
        for (name, argv), listen in zip(targets, [port, port2, port3, port4, port5], strict=True):
            with process(pinned(CORE_UNDER_TEST, argv), listen, tmp / f"{listen}.log"):
                wrk("warm-up", listen, 1, connections)
                results.append(wrk(name, listen, seconds, connections))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs")
    parser.add_argument("--seconds", type=int, default=None, help="wrk duration per target")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    args = parser.parse_args()
    seconds = args.seconds or (3 if args.quick else 10)
    ensure_tools(PACKAGES)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="podkit-bench-balance-") as tmpdir:
        results = run(Path(tmpdir), seconds, args.connections)
    print_table(
        f"3 backends; wrk -t1 -c{args.connections} -d{seconds}s --latency (keep-alive)",
        results,
        ["HAProxy (nbthread 1)", "nginx (1 worker)"],
    )
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
