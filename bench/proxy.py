"""Benchmark ``podkit proxy`` against nginx and HAProxy on this machine.

Run from the repository root (one command; installs nginx, haproxy and wrk with apt-get when
they are missing):

    .venv/bin/python bench/proxy.py            # full run: 10 s per target, 1 GiB TCP transfer
    .venv/bin/python bench/proxy.py --quick    # 3 s per target, 256 MiB TCP transfer

HTTP: an nginx backend answers a fixed ~100-byte 200. wrk (keep-alive, 50 connections, one
thread) measures the backend direct, nginx as a proxy (1 worker, upstream keepalive), HAProxy
as a proxy (nbthread 1) and ``podkit proxy`` with 1 and 2 workers. With two cores: wrk and the
backend share core 1, the proxy under test gets core 0 (the 2-worker podkit run is not pinned:
its second worker competes with wrk and the backend). TCP: 1 GiB sent through loopback by a
Python source to a Python sink (both on core 1), direct, through ``podkit proxy --mode tcp``
and through HAProxy in ``mode tcp`` with splice (each proxy on core 0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

# One wrk parser for every serving benchmark (it reads p99 from the latency distribution, never
# from the thread-stats line's "99.xx%" column).
from serving_harness import (
    ensure_tools,
    find,
    free_port,
    parse_wrk,
    pinned,
    process,
    wrk_argv,
)

BODY = "podkit-bench " + "x" * 86 + "\n"  # 100 bytes
PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}
CORE_PROXY = "0"
CORE_LOAD = "1"


def nginx_backend_conf(tmp: Path, port: int) -> Path:
    conf = tmp / "backend.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {tmp}/backend.pid;
        error_log {tmp}/backend-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/b-body; proxy_temp_path {tmp}/b-proxy;
            fastcgi_temp_path {tmp}/b-fcgi; uwsgi_temp_path {tmp}/b-uwsgi;
            scgi_temp_path {tmp}/b-scgi;
            keepalive_requests 1000000;
            server {{
                listen 127.0.0.1:{port} backlog=4096;
                location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
            }}
        }}
        """)
    )
    return conf


def nginx_proxy_conf(tmp: Path, port: int, backend: int) -> Path:
    conf = tmp / "proxy-nginx.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {tmp}/proxy-nginx.pid;
        error_log {tmp}/proxy-nginx-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/p-body; proxy_temp_path {tmp}/p-proxy;
            fastcgi_temp_path {tmp}/p-fcgi; uwsgi_temp_path {tmp}/p-uwsgi;
            scgi_temp_path {tmp}/p-scgi;
            keepalive_requests 1000000;
            upstream backend {{ server 127.0.0.1:{backend}; keepalive 64;
                               keepalive_requests 1000000; }}
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


def haproxy_conf(tmp: Path, port: int, backend: int) -> Path:
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
            http-reuse always
            server s1 127.0.0.1:{backend}
        """)
    )
    return conf


def haproxy_tcp_conf(tmp: Path, port: int, backend: int) -> Path:
    conf = tmp / "haproxy-tcp.cfg"
    conf.write_text(
        textwrap.dedent(f"""
        global
            nbthread 1
            maxconn 4096
        defaults
            mode tcp
            timeout connect 5s
            timeout client 60s
            timeout server 60s
            option splice-auto
        frontend fe
            bind 127.0.0.1:{port}
            default_backend be
        backend be
            server s1 127.0.0.1:{backend}
        """)
    )
    return conf


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int = 0
    cpu_us: float | None = None  # CPU time of the target's processes per request


def session_cpu_seconds(session: int) -> float:
    """User plus system CPU seconds of every live process in ``session``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields after the name: state ppid pgrp session ...
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def wrk(name: str, port: int, seconds: int, connections: int, session: int | None = None) -> Result:
    argv = wrk_argv(port, seconds, connections)
    cpu_before = session_cpu_seconds(session) if session else 0.0
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu_after = session_cpu_seconds(session) if session else 0.0
    figures = parse_wrk(name, out)
    requests = figures.requests
    cpu = (cpu_after - cpu_before) * 1e6 / requests if session and requests else None
    return Result(name, figures.rps, figures.p50_ms, figures.p99_ms, requests, cpu)


def podkit_argv(port: int, upstream: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "podkit",
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        upstream,
        "--access-log",
        "off",  # the peers run with access_log off
        "--log-level",
        "warning",
        *extra,
    ]


def http_bench(tmp: Path, seconds: int, connections: int) -> list[Result]:
    backend = free_port()
    results: list[Result] = []
    nginx = find("nginx") or "nginx"
    haproxy = find("haproxy") or "haproxy"
    with process(
        pinned(CORE_LOAD, [nginx, "-c", str(nginx_backend_conf(tmp, backend))]),
        backend,
        tmp / "backend.log",
    ) as backend_proc:
        wrk("warm-up", backend, 1, connections)
        direct = wrk("direct (nginx backend)", backend, seconds, connections, backend_proc.pid)
        results.append(direct)
        targets: list[tuple[str, list[str] | None]] = []
        port = free_port()
        targets.append(
            ("nginx proxy (1 worker)", [nginx, "-c", str(nginx_proxy_conf(tmp, port, backend))])
        )
        port_h = free_port()
        targets.append(
            (
                "HAProxy (nbthread 1)",
                [haproxy, "-db", "-f", str(haproxy_conf(tmp, port_h, backend))],
            )
        )
        port_p1, port_p2 = free_port(), free_port()
        upstream = f"http://127.0.0.1:{backend}"
        targets.append(("podkit proxy (1 worker)", podkit_argv(port_p1, upstream)))
        targets.append(
            ("podkit proxy (2 workers)", podkit_argv(port_p2, upstream, "--workers", "2"))
        )
        ports = [port, port_h, port_p1, port_p2]
        for (name, argv), listen in zip(targets, ports, strict=True):
            assert argv is not None
            core = None if "2 workers" in name else CORE_PROXY
            with process(pinned(core, argv), listen, tmp / f"{listen}.log") as proc:
                wrk("warm-up", listen, 1, connections)
                results.append(wrk(name, listen, seconds, connections, proc.pid))
    return results


SINK = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(16)
buf = bytearray(1 << 20)
while True:
    conn, _ = srv.accept()
    total = 0
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        total += n
    conn.sendall(str(total).encode())
    conn.close()
"""


def tcp_transfer(port: int, size: int) -> float:
    """Seconds to send ``size`` bytes to the sink through ``port`` and get its count back."""
    source = textwrap.dedent(f"""
        import socket, time
        block = memoryview(bytes(1 << 20))
        start = time.perf_counter()
        conn = socket.create_connection(("127.0.0.1", {port}))
        left = {size}
        while left > 0:
            n = min(left, len(block))
            conn.sendall(block[:n])
            left -= n
        conn.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            data = conn.recv(64)
            if not data:
                break
            got += data
        elapsed = time.perf_counter() - start
        assert int(got) == {size}, got
        print(elapsed)
    """)
    out = subprocess.run(
        pinned(CORE_LOAD, [sys.executable, "-c", source]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip())


def tcp_bench(tmp: Path, size: int) -> list[tuple[str, float]]:
    sink = free_port()
    results: list[tuple[str, float]] = []
    with process(
        pinned(CORE_LOAD, [sys.executable, "-c", SINK, str(sink)]), sink, tmp / "sink.log"
    ):
        tcp_transfer(sink, 64 << 20)
        best = min(tcp_transfer(sink, size) for _ in range(3))
        results.append(("direct", size / best))
        port = free_port()
        argv = podkit_argv(port, f"127.0.0.1:{sink}", "--mode", "tcp")
        with process(pinned(CORE_PROXY, argv), port, tmp / "tcp.log"):
            tcp_transfer(port, 64 << 20)
            best = min(tcp_transfer(port, size) for _ in range(3))
            results.append(("podkit proxy --mode tcp", size / best))
        port = free_port()
        haproxy = [
            find("haproxy") or "haproxy",
            "-db",
            "-f",
            str(haproxy_tcp_conf(tmp, port, sink)),
        ]
        with process(pinned(CORE_PROXY, haproxy), port, tmp / "haproxy-tcp.log"):
            tcp_transfer(port, 64 << 20)
            best = min(tcp_transfer(port, size) for _ in range(3))
            results.append(("HAProxy mode tcp (splice)", size / best))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs and 256 MiB transfers")
    parser.add_argument("--seconds", type=int, default=None, help="wrk duration per target")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--skip-tcp", action="store_true", help="only the HTTP table")
    args = parser.parse_args()
    seconds = args.seconds or (3 if args.quick else 10)
    size = (256 << 20) if args.quick else (1 << 30)
    ensure_tools(PACKAGES)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="podkit-bench-") as tmpdir:
        tmp = Path(tmpdir)
        results = http_bench(tmp, seconds, args.connections)
        by_name = {r.name: r for r in results}
        haproxy = by_name["HAProxy (nbthread 1)"]
        nginx = by_name["nginx proxy (1 worker)"]
        print(f"\nHTTP: wrk -t1 -c{args.connections} -d{seconds}s --latency (keep-alive)")
        print(
            f"{'target':28} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'/HAProxy':>9} "
            f"{'/nginx':>7} {'CPU us/req':>11}"
        )
        for r in results:
            cpu = f"{r.cpu_us:11.1f}" if r.cpu_us is not None else f"{'':11}"
            print(
                f"{r.name:28} {r.rps:10.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
                f"{r.rps / haproxy.rps:9.2f} {r.rps / nginx.rps:7.2f} {cpu}"
            )
        if not args.skip_tcp:
            tcp = tcp_bench(tmp, size)
            direct = tcp[0][1]
            print(f"\nTCP: {size >> 20} MiB through loopback, best of 3")
            print(f"{'target':28} {'MiB/s':>10} {'/direct':>8}")
            for name, rate in tcp:
                print(f"{name:28} {rate / (1 << 20):10.0f} {rate / direct:8.2f}")
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
