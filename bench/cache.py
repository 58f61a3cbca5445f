"""Benchmark the hit path of ``podkit cache`` against Varnish and nginx ``proxy_cache``.

Run from the repository root (installs nginx, varnish and wrk with apt-get when missing):

    bench/cache.sh            # 10 s per target
    bench/cache.sh --quick    # 3 s per target

The origin (one nginx worker) answers a fixed ~100-byte 200 with ``Cache-Control:
max-age=3600``; it shares core 1 with wrk (one thread, 50 keep-alive connections). Each
cache gets core 0: Varnish (``-s malloc``, one thread pool), nginx (1 worker, ``proxy_cache``
in a temporary directory, so the page cache holds it) and ``podkit cache`` (one process).
Every cache is filled before the run, so the measured requests are hits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import urllib.request
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

PACKAGES = {"nginx": "nginx-light", "varnishd": "varnish", "wrk": "wrk"}
PATH = "/object"


def nginx_cache_conf(tmp: Path, port: int, origin: int) -> Path:
    conf = tmp / "nginx-cache.conf"
    # Workers write the cache files: as root, nginx would run them as an unprivileged user
    # that cannot write into this private temporary directory.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        textwrap.dedent(f"""
        {user}
        worker_processes 1;
        daemon off;
        pid {tmp}/nginx-cache.pid;
        error_log {tmp}/nginx-cache-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/c-body; proxy_temp_path {tmp}/c-proxy;
            fastcgi_temp_path {tmp}/c-fcgi; uwsgi_temp_path {tmp}/c-uwsgi;
            scgi_temp_path {tmp}/c-scgi;
            keepalive_requests 1000000;
            proxy_cache_path {tmp}/nginx-cache keys_zone=objects:10m max_size=256m;
            upstream origin {{ server 127.0.0.1:{origin}; keepalive 16; }}
            server {{
                listen 127.0.0.1:{port} backlog=4096;
                location / {{
                    proxy_cache objects;
                    proxy_cache_lock on;
                    proxy_pass http://origin;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    add_header X-Cache $upstream_cache_status;
                }}
            }}
        }}
        """)
    )
    return conf


def varnish_argv(tmp: Path, port: int, origin: int) -> list[str]:
    return [
        find("varnishd") or "varnishd",
        "-F",
        "-a",
        f"127.0.0.1:{port}",
        "-b",
        f"127.0.0.1:{origin}",
        "-s",
        "malloc,256m",
        "-n",
        str(tmp / "varnish"),
        "-p",
        "thread_pools=1",
        *(["-j", "none"] if os.geteuid() != 0 else []),
    ]


def podkit_argv(port: int, origin: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "podkit",
        "cache",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://127.0.0.1:{origin}",
        "--access-log",
        "off",  # the peers run with access_log off
        "--log-level",
        "warning",
    ]


def run(tmp: Path, seconds: int, connections: int) -> list[Result]:
    origin = free_port()
    nginx = find("nginx") or "nginx"
    results: list[Result] = []
    conf = nginx_backends_conf(tmp, [origin], headers='add_header Cache-Control "max-age=3600";')
    with process(pinned(CORE_LOAD, [nginx, "-c", str(conf)]), origin, tmp / "origin.log"):
        wrk("warm-up", origin, 1, connections, PATH)
        results.append(wrk("origin direct (nginx)", origin, seconds, connections, PATH))
        ports = [free_port() for _ in range(3)]
        targets = [
            ("Varnish (1 thread pool)", varnish_argv(tmp, ports[0], origin)),
            (
                "nginx proxy_cache (1 worker)",
                [nginx, "-c", str(nginx_cache_conf(tmp, ports[1], origin))],
            ),
            ("podkit cache", podkit_argv(ports[2], origin)),
        ]
        for (name, argv), listen in zip(targets, ports, strict=True):
            with process(pinned(CORE_UNDER_TEST, argv), listen, tmp / f"{listen}.log"):
                for _ in range(2):  # the first request fills the cache
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{listen}{PATH}").read()
                    except OSError as exc:
                        log = (tmp / f"{listen}.log").read_text()
                        raise SystemExit(f"{name}: {exc}\n{log}") from exc
                wrk("warm-up", listen, 1, connections, PATH)
                results.append(wrk(name, listen, seconds, connections, PATH))
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
    with tempfile.TemporaryDirectory(prefix="podkit-bench-cache-") as tmpdir:
        results = run(Path(tmpdir), seconds, args.connections)
    print_table(
        f"cache hits of one ~100-byte object; wrk -t1 -c{args.connections} -d{seconds}s "
        "--latency (keep-alive)",
        results,
        ["Varnish (1 thread pool)", "nginx proxy_cache (1 worker)"],
    )
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
