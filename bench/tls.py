"""Benchmark ``podkit tls`` against nginx as a TLS terminator in front of the same backend.

Run from the repository root (one command; installs nginx and wrk with apt-get when missing):

    .venv/bin/python bench/tls.py            # 10 s per measurement
    .venv/bin/python bench/tls.py --quick    # 3 s per measurement

An nginx backend answers a fixed 100-byte 200 over plain HTTP. In front of it, on the same
certificate (ECDSA P-256, made with the openssl CLI): nginx with one worker
(``ssl_protocols TLSv1.2 TLSv1.3``, upstream keep-alive) and ``podkit tls`` with one worker.
wrk (one thread) measures:

* keep-alive requests/s: 50 connections, each reused for every request;
* handshakes/s: 20 connections sending ``Connection: close``, so every request opens a new
  connection with a full TLS handshake.

With two cores the terminator under test is pinned to core 0, wrk and the backend to core 1.
``podkit tls --workers 2`` is measured too, unpinned (its second worker competes with wrk and
the backend).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from serving_harness import ensure_tools, find, free_port, pinned, process

BODY = "podkit-bench " + "x" * 86  # 100 bytes with the newline
PACKAGES = {"nginx": "nginx-light", "wrk": "wrk", "openssl": "openssl"}
CORE_UNDER_TEST = "0"
CORE_LOAD = "1"


def wait_ready(admin: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        time.sleep(0.1)
    raise SystemExit("the workers did not become ready")


def make_certificate(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            find("openssl") or "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
            "-days", "1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def nginx_conf(tmp: Path, name: str, server: str, upstream: str = "") -> Path:
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
            {upstream}
            server {{ {server} }}
        }}
        """)
    )
    return conf


def wrk(port: int, seconds: int, *, connections: int, close: bool) -> float:
    argv = [
        find("wrk") or "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        f"https://127.0.0.1:{port}/",
    ]  # fmt: skip
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(pinned(CORE_LOAD, argv), capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  warning: {errors.group(1)} non-2xx responses", file=sys.stderr)
    return float(match.group(1))


def measure(port: int, seconds: int) -> tuple[float, float]:
    wrk(port, 1, connections=10, close=False)  # warm up
    keepalive = wrk(port, seconds, connections=50, close=False)
    handshakes = wrk(port, seconds, connections=20, close=True)
    return keepalive, handshakes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per measurement")
    args = parser.parse_args()
    seconds = 3 if args.quick else 10
    ensure_tools(PACKAGES)
    nginx = find("nginx") or "nginx"
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="podkit-bench-tls-") as name:
        tmp = Path(name)
        cert, key = make_certificate(tmp)
        backend = free_port()
        backend_conf = nginx_conf(
            tmp,
            "backend",
            f"listen 127.0.0.1:{backend} backlog=4096; location / {{ default_type text/plain; "
            f'return 200 "{BODY}\\n"; }}',
        )
        with process(pinned(CORE_LOAD, [nginx, "-c", str(backend_conf)]), backend,
                     tmp / "backend.log"):  # fmt: skip
            port = free_port()
            terminator = nginx_conf(
                tmp,
                "terminator",
                f"listen 127.0.0.1:{port} ssl backlog=4096; ssl_certificate {cert}; "
                f"ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3; "
                "location / { proxy_pass http://backend; proxy_http_version 1.1; "
                'proxy_set_header Connection ""; proxy_set_header X-Forwarded-Proto https; }',
                upstream=f"upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}",
            )
            with process(pinned(CORE_UNDER_TEST, [nginx, "-c", str(terminator)]), port,
                         tmp / "terminator.log"):  # fmt: skip
                results["nginx (1 worker)"] = measure(port, seconds)
            port = free_port()
            podkit = [
                sys.executable, "-m", "podkit", "tls", "--listen", f"127.0.0.1:{port}",
                "--cert", str(cert), "--key", str(key),
                "--upstream", f"http://127.0.0.1:{backend}", "--log-level", "warning",
                "--access-log", "off",
            ]  # fmt: skip
            with process(pinned(CORE_UNDER_TEST, podkit), port, tmp / "podkit.log"):
                results["podkit tls (1 worker)"] = measure(port, seconds)
            # Two workers, not pinned: the second competes with wrk and the backend.
            port = free_port()
            podkit[podkit.index("--listen") + 1] = f"127.0.0.1:{port}"
            admin = free_port()
            two = [*podkit, "--workers", "2", "--admin", f"127.0.0.1:{admin}"]
            with process(two, port, tmp / "podkit2.log"):
                wait_ready(admin)  # every worker is accepting
                results["podkit tls (2 workers)"] = measure(port, seconds)
    print(f"{'terminator':<24}{'keep-alive req/s':>18}{'handshakes/s':>15}")
    for label, (keepalive, handshakes) in results.items():
        print(f"{label:<24}{keepalive:>18,.0f}{handshakes:>15,.0f}")
    ka_ratio = results["podkit tls (1 worker)"][0] / results["nginx (1 worker)"][0]
    hs_ratio = results["podkit tls (1 worker)"][1] / results["nginx (1 worker)"][1]
    print(f"podkit / nginx: keep-alive {ka_ratio:.2f}x, handshakes {hs_ratio:.2f}x")
    print(f"load average: {os.getloadavg()[0]:.2f}  cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
